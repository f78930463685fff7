//! End-to-end tests: the real `dra-wasm-host` binary, real Unix sockets, the
//! test kubelet, and guest components built from `guests/` and `tests/guests/`.

mod common;
mod faults;
mod gpu;
mod lifecycle;
mod prepare;
mod registration;
