//! Generated host bindings for the `dra:driver` WIT package (the `driver-host`
//! world: every import a guest may be granted, and the `device-driver`
//! export). Nothing hand-written lives here.

wasmtime::component::bindgen!({
    world: "driver-host",
    path: "../wit",
    // Inventories are compared to republish slices only when they change.
    additional_derives: [PartialEq],
    // Guest calls run on the calling task (see `instance.rs`).
    exports: { default: async },
    // Imports that block (netlink, NVML) are async so that they run on the
    // blocking pool while the async worker serves other calls, and so that
    // the call's deadline covers them. `log` only formats a line.
    imports: {
        "dra:driver/net": async,
        "dra:driver/nvml": async,
    },
});

pub use dra::driver::types;
