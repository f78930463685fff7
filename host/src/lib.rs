//! dra-wasm-host: a Kubernetes DRA driver host that runs hardware-specific
//! logic as sandboxed WebAssembly components.
//!
//! | module | owns |
//! |---|---|
//! | [`kubelet`] | registration socket, DRA socket (DRAPlugin v1/v1beta1), gRPC liveness |
//! | [`kube`] | ResourceClaims: where they come from, what part is this driver's |
//! | [`model`] | the host's own types for what guests are told and answer: inventory, claims, prepared claims, events, health |
//! | [`wit`] | the guest contract: the `bindgen!` output, one submodule per WIT version, and its conversions to and from [`model`] |
//! | [`guest_text`] | text a guest wrote, bounded and escaped on its way into answers, logs, Events, metrics |
//! | [`guest`] | wasmtime engine, compile cache, instance pool, limits and deadlines, the swappable guest handle |
//! | [`imports`] | host implementations of WIT imports (`log`; `nvml`, `net` when granted) |
//! | [`state`] | checkpoint of prepared claims, CDI spec files, durable file writes |
//! | [`health`] | current device health per driver, fanned out to the kubelet's health streams |
//! | [`policy`] | what guest output the host accepts |
//! | [`driver`] | the prepare/unprepare flow across all of the above |
//! | [`node`] | the composition root: drivers assembled from the config (`run`, `guest run`, `guest validate`) |
//! | [`claim`], [`config`], [`metrics`], [`error`] | shared claim types, the config file, Prometheus metrics, how errors are printed (each cause once) |

pub mod claim;
pub mod config;
pub mod driver;
pub mod error;
pub mod guest;
pub mod guest_text;
pub mod health;
pub mod imports;
pub mod kube;
pub mod kubelet;
pub mod metrics;
pub mod model;
pub mod node;
pub mod policy;
pub mod resource_rules;
pub mod state;
pub mod wit;

#[cfg(test)]
mod fuzzing;
#[cfg(test)]
mod module_cycles;

/// Folder holding the guest components built with this host (example and
/// test guests), set by the build script.
pub const BUILT_GUESTS_DIR: &str = env!("DRA_GUEST_DIR");

/// The example guest, embedded so that `dra-wasm-host demo` needs no files.
pub const EXAMPLE_GUEST: &[u8] = include_bytes!(concat!(env!("DRA_GUEST_DIR"), "/example_driver.wasm"));
