//! The guest contract: the host's bindings of the `dra:driver` WIT package,
//! one submodule per WIT version (today only [`v0_1`], `dra:driver@0.1.0`).
//!
//! It depends on nothing in the crate but the host's domain types it
//! converts into (`claim`), so that the capability implementations
//! (`imports`), the state files (`state`) and the guest runtime (`guest`) can
//! all name the contract without depending on each other. The re-exports
//! below are the version the host serves.

pub mod v0_1;

pub use v0_1::dra::driver::log as bindings_log;
pub use v0_1::dra::driver::net as bindings_net;
pub use v0_1::dra::driver::nvml as bindings_nvml;
pub use v0_1::types;
