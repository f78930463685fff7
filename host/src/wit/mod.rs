//! The guest contract: the host's bindings of the `dra:driver` WIT package,
//! one submodule per WIT version ([`v0_1`] for `dra:driver@0.1.0`, [`v0_2`]
//! for `dra:driver@0.2.0`), and the one boundary where generated types meet
//! the host's own. Both versions are served side by side: a component is
//! bound to the version its `device-driver` export names, and its imports
//! resolve against that version's interfaces (the linker holds both).
//!
//! Nothing outside this module names a generated type. A guest is called
//! through [`DriverPre`] and [`Driver`], which take and return the host's
//! types ([`crate::model`], [`crate::claim::ClaimRef`]); the capabilities'
//! WIT host traits (`log`, `nvml`, `net`) are implemented here as adapters
//! over the host-typed capability code in `imports`. Each version's
//! `convert.rs` is the one place its records are converted. A new version
//! is a new submodule, a new variant of [`DriverPre`] and [`Driver`], and its
//! linking in [`add_log`] and [`add_granted`]; what its records share with
//! older versions comes from [`shared`]'s macros, written once.

mod shared;
pub mod v0_1;
pub mod v0_2;

use crate::claim::ClaimRef;
use crate::imports::{Imports, ImportsView};
use crate::model::{Claim, DeviceHealth, DriverError, DriverInfo, Event, InitContext, Pool, PreparedClaim};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{AsContext, AsContextMut};

/// A component linked against one supported version of the contract, ready
/// to be instantiated.
pub enum DriverPre<T: 'static> {
    V0_1(v0_1::DriverHostPre<T>),
    V0_2(v0_2::DriverHostPre<T>),
}

/// The versions of the contract this host serves, newest first.
pub const VERSIONS: &[&str] = &["0.2.0", "0.1.0"];

/// The interface every guest exports, without its version.
pub const DRIVER_EXPORT: &str = "dra:driver/device-driver";

/// The versions of [`DRIVER_EXPORT`] a component exports, in its export
/// order (`None`: exported without a version).
pub fn exported_versions(component: &Component) -> Vec<Option<String>> {
    component
        .component_type()
        .exports(component.engine())
        .filter_map(|(name, _)| match name.strip_prefix(DRIVER_EXPORT)? {
            "" => Some(None),
            rest => Some(Some(rest.strip_prefix('@')?.to_owned())),
        })
        .collect()
}

impl<T: Send + 'static> DriverPre<T> {
    /// Bind the linked component to the version its `device-driver` export
    /// names (newest first). An error says which `device-driver` the
    /// component exports, if any, and names the versions this host serves.
    pub fn new(pre: InstancePre<T>) -> wasmtime::Result<Self> {
        let v0_2 = match v0_2::DriverHostPre::new(pre.clone()) {
            Ok(p) => return Ok(Self::V0_2(p)),
            Err(e) => e,
        };
        let v0_1 = match v0_1::DriverHostPre::new(pre.clone()) {
            Ok(p) => return Ok(Self::V0_1(p)),
            Err(e) => e,
        };
        let served = VERSIONS.join(", ");
        let exported = exported_versions(pre.component());
        // A served version that did not bind: its functions differ from this
        // host's (a pre-release of that version, or a hand-written WIT).
        let mismatch = [("0.2.0", &v0_2), ("0.1.0", &v0_1)]
            .into_iter()
            .find(|(v, _)| exported.iter().any(|e| e.as_deref() == Some(*v)));
        Err(match (mismatch, exported.is_empty()) {
            (Some((version, why)), _) => {
                wasmtime::format_err!("the component's `{DRIVER_EXPORT}@{version}` does not match this host's: {why:#}")
            }
            (None, true) => wasmtime::format_err!(
                "the component exports no `{DRIVER_EXPORT}` interface (this host serves versions {served})"
            ),
            (None, false) => {
                let names: Vec<String> = exported
                    .iter()
                    .map(|v| match v {
                        Some(v) => format!("`{DRIVER_EXPORT}@{v}`"),
                        None => format!("`{DRIVER_EXPORT}` without a version"),
                    })
                    .collect();
                wasmtime::format_err!(
                    "the component exports {}, a version this host does not serve (it serves {served}): \
                     build it with an SDK of a served version, or run a host that serves its version",
                    names.join(" and ")
                )
            }
        })
    }

    /// The contract version the component was bound to.
    pub fn version(&self) -> &'static str {
        match self {
            Self::V0_1(_) => "0.1.0",
            Self::V0_2(_) => "0.2.0",
        }
    }

    pub async fn instantiate_async(&self, store: impl AsContextMut<Data = T>) -> wasmtime::Result<Driver> {
        match self {
            Self::V0_1(pre) => Ok(Driver::V0_1(pre.instantiate_async(store).await?)),
            Self::V0_2(pre) => Ok(Driver::V0_2(pre.instantiate_async(store).await?)),
        }
    }
}

/// One instance's `device-driver` exports, called with the host's types.
pub enum Driver {
    V0_1(v0_1::DriverHost),
    V0_2(v0_2::DriverHost),
}

/// The same call on whichever version's bindings `$driver` holds: the
/// versions' export functions have the same names and the host's types
/// convert into each version's records.
macro_rules! each_version {
    ($driver:expr, $b:ident => $call:expr) => {
        match $driver {
            Driver::V0_1($b) => $call,
            Driver::V0_2($b) => $call,
        }
    };
}

/// A guest call's outcome: a trap (`Err`), or what the guest answered.
pub type Answer<R> = wasmtime::Result<Result<R, DriverError>>;

fn answer<W, R: From<W>, E: Into<DriverError>>(r: wasmtime::Result<Result<W, E>>) -> Answer<R> {
    Ok(r?.map(R::from).map_err(Into::into))
}

impl Driver {
    pub async fn call_init<S>(&self, store: S, ctx: &InitContext) -> Answer<DriverInfo>
    where
        S: AsContextMut,
        <S as AsContext>::Data: Send,
    {
        each_version!(self, b => answer(b.dra_driver_device_driver().call_init(store, &ctx.into()).await))
    }

    pub async fn call_inventory<S>(&self, store: S) -> Answer<Vec<Pool>>
    where
        S: AsContextMut,
        <S as AsContext>::Data: Send,
    {
        each_version!(self, b => Ok(b
                .dra_driver_device_driver()
                .call_inventory(store)
                .await?
                .map(|pools| pools.into_iter().map(Pool::from).collect())
                .map_err(Into::into)))
    }

    pub async fn call_prepare<S>(&self, store: S, claim: Claim) -> Answer<PreparedClaim>
    where
        S: AsContextMut,
        <S as AsContext>::Data: Send,
    {
        each_version!(self, b => answer(b.dra_driver_device_driver().call_prepare(store, &claim.into()).await))
    }

    pub async fn call_unprepare<S>(&self, store: S, claim: &ClaimRef, state: &[u8]) -> Answer<()>
    where
        S: AsContextMut,
        <S as AsContext>::Data: Send,
    {
        each_version!(self, b => answer(
            b.dra_driver_device_driver()
                .call_unprepare(store, &claim.into(), state)
                .await,
        ))
    }

    pub async fn call_on_event<S>(&self, store: S, event: Event) -> Answer<Vec<DeviceHealth>>
    where
        S: AsContextMut,
        <S as AsContext>::Data: Send,
    {
        each_version!(self, b => Ok(b
                .dra_driver_device_driver()
                .call_on_event(store, &event.into())
                .await?
                .map(|reports| reports.into_iter().map(DeviceHealth::from).collect())
                .map_err(Into::into)))
    }
}

/// Link `dra:driver/log` of every version, which every guest gets, with the imports' narrow
/// view of the store.
pub fn add_log<T: Send + 'static>(linker: &mut Linker<T>, view: fn(&mut T) -> ImportsView<'_>) -> wasmtime::Result<()> {
    v0_1::imports::add_log(linker, view)?;
    v0_2::imports::add_log(linker, view)
}

/// Link the capabilities the driver's configuration grants (`nvml`, `net`),
/// in every version.
pub fn add_granted<T: Send + 'static>(
    linker: &mut Linker<T>,
    imports: &Imports,
    view: fn(&mut T) -> ImportsView<'_>,
) -> wasmtime::Result<()> {
    v0_1::imports::add_granted(linker, imports, view)?;
    v0_2::imports::add_granted(linker, imports, view)
}
