//! Host bindings for `dra:driver@0.2.0` (the `driver-host` world: every
//! import a guest may be granted, and the `device-driver` export): the
//! `bindgen!` output here, nothing hand-written beside it; `convert.rs`
//! converts its records to and from the host's types; `imports.rs` adapts
//! the host's capabilities (`log`, `nvml`, `net`) to its host traits and
//! links them.

wasmtime::component::bindgen!({
    world: "driver-host",
    path: "../wit/v0.2",
    // Inventories are compared to republish slices only when they change.
    additional_derives: [PartialEq],
    // Guest calls run on the calling task (see `instance.rs`).
    exports: { default: async },
    // Imports that block (netlink, NVML) are async so that they run on the
    // blocking pool while the async worker serves other calls, and trappable
    // so that they can end the call when its deadline passes meanwhile.
    // `log` only formats a line.
    imports: {
        "dra:driver/net@0.2.0": async | trappable,
        "dra:driver/nvml@0.2.0": async | trappable,
    },
});

pub use dra::driver::types;

mod convert;
pub(crate) mod imports;
