//! Generated host bindings for the `dra:driver` WIT package (the `driver-host`
//! world: every import a guest may be granted, and the `device-driver`
//! export). Nothing hand-written lives here.

wasmtime::component::bindgen!({
    world: "driver-host",
    path: "../wit",
});

pub use dra::driver::types;
