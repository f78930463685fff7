//! End-to-end tests: the real `dra-wasm-host` binary, real Unix sockets, the
//! test kubelet, and guest components built from `guests/` and `tests/guests/`.

mod api;
mod cdi_runtime;
mod chart;
mod common;
mod deadlines;
mod faults;
mod gpu;
mod guest_text;
mod harness;
mod instances;
mod inventory;
mod kubelet_clients;
mod lifecycle;
mod manifests;
mod net;
mod nodestate;
mod policy;
mod prepare;
mod quickstart;
mod registration;
mod rolling;
mod swap;
mod versions;
mod wire;
