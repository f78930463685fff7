//! Write a Kubernetes DRA driver for [dra-wasm-host] as a WebAssembly
//! component.
//!
//! The host owns everything that talks to Kubernetes (the kubelet's sockets,
//! ResourceSlices, ResourceClaim status, CDI files, the checkpoint). A driver
//! decides what is specific to its hardware: which devices exist
//! ([`Driver::inventory`]), what a container needs to use one
//! ([`Driver::prepare`]), how to undo that ([`Driver::unprepare`]), and what
//! an event on the node means for device health ([`Driver::on_event`]).
//!
//! ```
//! use dra_driver_sdk::*;
//!
//! struct MyDriver { pool: String }
//!
//! impl Driver for MyDriver {
//!     type Config = NoParameters;      // `[drivers.config]` from the host config
//!     type ClaimConfig = NoParameters; // opaque parameters of claims
//!
//!     fn init(ctx: &InitContext, _: NoParameters) -> Result<Self> {
//!         Ok(MyDriver { pool: ctx.node_name.clone() })
//!     }
//!     fn inventory(&self) -> Result<Vec<Pool>> {
//!         Ok(vec![Pool::new(&self.pool, vec![Device::new("dev-0")])])
//!     }
//!     fn prepare(&self, claim: Claim<NoParameters>) -> Result<PreparedClaim> {
//!         let devices = claim.devices.iter()
//!             .map(|a| PreparedDevice::new(a).edits(ContainerEdits::default().env("MY_DEVICE", &a.device)))
//!             .collect();
//!         Ok(PreparedClaim { devices, state: vec![] })
//!     }
//! }
//!
//! export_driver!(MyDriver);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`); test its logic natively with [`Instance`]. The WIT contract
//! (package `dra:driver@0.2.0`, the repository's `wit/v0.2/driver.wit`) is
//! generated into this crate only; a driver never sees it. A component built
//! with this SDK exports `dra:driver/device-driver@0.2.0`; hosts that serve
//! 0.2 load it (`dra-wasm-host guest inspect` shows the version).
//!
//! Host capabilities beyond logging are features, each one a capability the
//! operator must grant the driver: `nvml` (module `nvml`, GPUs) and `net`
//! (module `net`, links and addresses). A driver that does not use one does not
//! import it, so it loads under the plain `driver` world with no grants.
//!
//! The SDK's version is written into every component built with
//! [`export_driver!`] (custom section `dra-driver-sdk`), where
//! `dra-wasm-host guest inspect` reads it.
//!
//! [dra-wasm-host]: https://github.com/dra-wasm-host/dra-wasm-host

mod claim;
mod error;
mod health;
mod instance;
mod inventory;
pub mod log;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "nvml")]
pub mod nvml;
mod prepared;
mod quantity;
pub mod state;

#[cfg(target_arch = "wasm32")]
mod export;

/// Generated from the crate's copy of the host's WIT (`wit/driver.wit`,
/// inside the crate so that it can be published; `tests/wit.rs` keeps it
/// identical to the repository's `wit/v0.2/driver.wit`), for the union world `driver-host`: a
/// component imports only what it calls (the component linker drops the
/// rest), and the `nvml` and `net` features decide what a driver can call.
/// Private: drivers use the re-exports below.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "driver-host",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_driver_host",
        additional_derives: [PartialEq, Eq],
    });
}

// The WIT records a driver works with, where no better Rust type exists
// (Zed's extension API does the same): listed one by one, so that the rest
// of the bindings stays private.
pub use bindings::dra::driver::types::{
    AllocatedDevice, Attribute, AttributeValue, BindingConditions, Capacity, CapacityRange, Claim as AllocatedClaim,
    ClaimRef, Condition, ConditionStatus, ConfigSource, ContainerEdits, Counter, CounterConsumption, CounterSet,
    Device, DeviceHealth, DeviceMetadata, DeviceNode, DeviceStatus, EnvVar, Event, GpuEvent, GpuEventKind,
    HealthStatus, Hook, HookStage, InitContext, LinkEvent, Mount, NetDevice, NetworkData, NodeResource, OpaqueConfig,
    Pool, PreparedClaim, PreparedDevice, RequestPolicy, Taint, TaintEffect,
};
pub use claim::{Allocation, Claim, NoParameters, ShareId};
pub use error::{Error, ErrorKind, Result};
pub use instance::Instance;
pub use quantity::{Quantity, QuantityError};

use serde::de::DeserializeOwned;

/// This SDK's version, as `guest inspect` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A DRA driver. Register the type with [`export_driver!`].
///
/// An instance is created by `init` and may be dropped at any time (a trap,
/// a timeout, a hot swap): keep nothing in it that `unprepare` needs, return
/// it as the prepared claim's [`state`](PreparedClaim::state) instead. The
/// host may run several instances side by side.
pub trait Driver: Sized + 'static {
    /// The driver's configuration, deserialized from `[drivers.config]` in
    /// the host config (an empty config is `{}`). An error is an
    /// `InvalidConfig` that names the field.
    type Config: DeserializeOwned;

    /// The opaque parameters of a claim (`config[].opaque.parameters` for
    /// this driver, from the DeviceClass and the claim). For each allocated
    /// device the configs that apply to its request are merged key by key,
    /// the claim's over the class's, and deserialized into this type:
    /// [`Allocation::config`]. Use [`NoParameters`] for a driver that takes
    /// none (any parameter is an error naming it), `serde::de::IgnoredAny`
    /// for one that ignores them (they are not even parsed).
    type ClaimConfig: DeserializeOwned + 'static;

    /// Called once per instance before any other call.
    fn init(ctx: &InitContext, config: Self::Config) -> Result<Self>;

    /// The devices this node offers. Called at start, after a swap, and
    /// when the host republishes.
    fn inventory(&self) -> Result<Vec<Pool>>;

    /// Prepare a claim's devices for a pod: one [`PreparedDevice`] per
    /// allocated device. The host checks the answer (only allocated devices,
    /// edits within the operator's policy) before anything is written.
    fn prepare(&self, claim: Claim<Self::ClaimConfig>) -> Result<PreparedClaim>;

    /// Undo `prepare`. `state` is what `prepare` returned, or empty when the
    /// host has no record of the claim. Must succeed when there is nothing
    /// left to undo. The default undoes nothing: right for drivers whose
    /// `prepare` changes nothing on the node.
    fn unprepare(&self, claim: &ClaimRef, state: &[u8]) -> Result<()> {
        let _ = (claim, state);
        Ok(())
    }

    /// Map an event to device health changes (empty: nothing changed). The
    /// default ignores every event.
    fn on_event(&self, event: Event) -> Result<Vec<DeviceHealth>> {
        let _ = event;
        Ok(Vec::new())
    }
}

/// Make `$driver` (a type implementing [`Driver`]) the component's
/// `dra:driver/device-driver` export.
///
/// It owns what every driver needs and none should write: the instance
/// slot, the panic hook (a panic's message goes to the host's log before
/// the instance traps), the mapping of [`Error`]s to the WIT's
/// `driver-error`, the driver's name and version (the crate's package name
/// and version, recorded in the host's checkpoint with each claim), and the
/// `dra-driver-sdk` custom section naming this SDK's version. Built
/// natively it only checks that `$driver` implements [`Driver`].
#[macro_export]
macro_rules! export_driver {
    ($driver:ty) => {
        const _: fn() = || {
            fn implements_driver<D: $crate::Driver>() {}
            implements_driver::<$driver>();
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct Package;

            impl $crate::__private::Package for Package {
                type Driver = $driver;
                const NAME: &'static str = env!("CARGO_PKG_NAME");
                const VERSION: &'static str = env!("CARGO_PKG_VERSION");
            }

            type Component = $crate::__private::Export<Package>;
    $crate::__export_driver_host_impl!(Component with_types_in $crate::__private::bindings);

            #[unsafe(link_section = "dra-driver-sdk")]
            #[used]
            static SDK_VERSION: [u8; $crate::VERSION.len()] = $crate::__private::version_bytes();
        };
    };
}

/// What [`export_driver!`] expands to refers to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings;
    #[cfg(target_arch = "wasm32")]
    pub use crate::export::{Export, Package};

    /// [`crate::VERSION`] as bytes, for the custom section.
    pub const fn version_bytes<const N: usize>() -> [u8; N] {
        let v = crate::VERSION.as_bytes();
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            out[i] = v[i];
            i += 1;
        }
        out
    }
}
