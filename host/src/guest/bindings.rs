//! Generated host bindings for the `dra:driver` WIT package (the `driver-host`
//! world: every import a guest may be granted, and the `device-driver`
//! export). Nothing hand-written lives here.

wasmtime::component::bindgen!({
    world: "driver-host",
    path: "../wit",
    // Inventories are compared to republish slices only when they change.
    additional_derives: [PartialEq],
});

pub use dra::driver::types;
