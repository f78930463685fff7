//! Guest components: loading (compile or cached), capability checks, limits
//! and deadlines, and the swappable handle every driver calls through.
//!
//! A guest is loaded once into a [`LoadedGuest`] (compiled component, linked
//! `InstancePre`, pool of instances). A driver holds a [`Guest`], which points
//! at the current `LoadedGuest` through one atomic pointer: replacing the
//! component is a pointer swap, calls in flight finish on the one they
//! started with.

mod bindings;
mod cache;
mod engine;
mod error;
mod instance;

pub use bindings::dra::driver::log as bindings_log;
pub use bindings::dra::driver::nvml as bindings_nvml;
pub use bindings::types;
pub use cache::{CacheOutcome, CompileCache, digest};
pub use engine::{Limits, Runtime};
pub use error::{Export, GuestError, LimitExceeded};
pub use instance::{LoadedGuest, StoreState};

use crate::imports::{Grant, Imports};
use crate::metrics::Metrics;
use crate::state::checkpoint::GuestIdentity;
use arc_swap::ArcSwap;
use bindings::{DriverHostPre as HostPre, dra};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{HasSelf, Linker};

/// What to load for a driver.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub path: PathBuf,
    pub ctx: types::InitContext,
    pub limits: Limits,
    /// Host imports granted to this guest (logging is always granted).
    pub imports: Imports,
}

/// The guest a driver calls through; its component can be replaced at run time.
pub struct Guest {
    current: ArcSwap<LoadedGuest>,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.current.load();
        f.debug_struct("Guest")
            .field("path", &g.path)
            .field("digest", &g.digest)
            .finish()
    }
}

/// What loading a guest reports besides the guest itself.
#[derive(Debug)]
pub struct LoadReport {
    pub cache: CacheOutcome,
    pub duration: std::time::Duration,
    /// The inventory the guest returned during its self-test.
    pub inventory: Vec<types::Pool>,
}

impl Guest {
    /// Load, link, instantiate and self-test (`init` + `inventory`) a guest.
    pub async fn load(
        runtime: &Arc<Runtime>,
        metrics: &Arc<Metrics>,
        spec: &GuestSpec,
    ) -> Result<(Self, LoadReport), GuestError> {
        let (loaded, report) = load_component(runtime, metrics, spec).await?;
        Ok((
            Self {
                current: ArcSwap::new(loaded),
            },
            report,
        ))
    }

    /// The component currently serving calls.
    pub fn current(&self) -> Arc<LoadedGuest> {
        self.current.load_full()
    }

    /// Replace the component; calls already running finish on the old one.
    pub fn swap(&self, new: Arc<LoadedGuest>) -> Arc<LoadedGuest> {
        self.current.swap(new)
    }

    /// Identity of the current component, as recorded in the checkpoint.
    pub fn identity(&self) -> GuestIdentity {
        let g = self.current.load();
        GuestIdentity {
            name: g.info.name.clone(),
            version: g.info.version.clone(),
            digest: g.digest.clone(),
        }
    }

    pub async fn inventory(&self) -> Result<Vec<types::Pool>, GuestError> {
        self.current()
            .call(Export::Inventory, |b, store| {
                b.dra_driver_device_driver().call_inventory(store)
            })
            .await
    }

    pub async fn prepare(&self, claim: types::Claim) -> Result<types::PreparedClaim, GuestError> {
        self.current()
            .call(Export::Prepare, move |b, store| {
                b.dra_driver_device_driver().call_prepare(store, &claim)
            })
            .await
    }

    pub async fn unprepare(&self, claim: types::ClaimRef, state: Vec<u8>) -> Result<(), GuestError> {
        self.current()
            .call(Export::Unprepare, move |b, store| {
                b.dra_driver_device_driver().call_unprepare(store, &claim, &state)
            })
            .await
    }

    pub async fn on_event(&self, event: types::Event) -> Result<Vec<types::DeviceHealth>, GuestError> {
        self.current()
            .call(Export::OnEvent, move |b, store| {
                b.dra_driver_device_driver().call_on_event(store, &event)
            })
            .await
    }
}

/// Load a component into a new [`LoadedGuest`] and run its self-test. Used
/// at start and for every replacement, so both go through the same checks.
pub async fn load_component(
    runtime: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
    spec: &GuestSpec,
) -> Result<(Arc<LoadedGuest>, LoadReport), GuestError> {
    let started = Instant::now();
    let bytes = tokio::fs::read(&spec.path).await.map_err(|source| GuestError::Read {
        path: spec.path.clone(),
        source,
    })?;
    let (runtime2, metrics2, spec2) = (Arc::clone(runtime), Arc::clone(metrics), spec.clone());
    let (loaded, cache) = tokio::task::spawn_blocking(move || link(&runtime2, &metrics2, &spec2, &bytes))
        .await
        .map_err(|e| GuestError::Runtime(format!("guest load thread failed: {e}")))??;
    let inventory = loaded
        .call(Export::Inventory, |b, store| {
            b.dra_driver_device_driver().call_inventory(store)
        })
        .await?;
    Ok((
        loaded,
        LoadReport {
            cache,
            duration: started.elapsed(),
            inventory,
        },
    ))
}

fn link(
    runtime: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
    spec: &GuestSpec,
    bytes: &[u8],
) -> Result<(Arc<LoadedGuest>, CacheOutcome), GuestError> {
    let engine = runtime.engine();
    let digest = digest(bytes);
    let (component, outcome) = runtime
        .cache()
        .load(engine, &digest, bytes)
        .map_err(|e| GuestError::Compile {
            path: spec.path.clone(),
            message: format!("{e:#}"),
        })?;

    let mut linker: Linker<StoreState> = Linker::new(engine);
    dra::driver::log::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
        .map_err(|e| GuestError::Runtime(format!("linking log: {e:#}")))?;
    for import in component.component_type().imports(engine) {
        let (name, item) = import;
        check_import(&spec.path, name, &item.ty, &spec.imports)?;
    }
    crate::imports::add_granted(&mut linker, &spec.imports)
        .map_err(|e| GuestError::Runtime(format!("linking host imports: {e:#}")))?;
    // What is left are WASI interfaces that Rust's standard library links
    // (stdio, environment, exit): calling one traps. See `check_import`.
    linker
        .define_unknown_imports_as_traps(&component)
        .map_err(|e| GuestError::Runtime(format!("linking: {e:#}")))?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| GuestError::Incompatible {
            path: spec.path.clone(),
            message: format!("{e:#}"),
        })?;
    let pre = HostPre::new(pre).map_err(|e| GuestError::Incompatible {
        path: spec.path.clone(),
        message: format!("{e:#}"),
    })?;
    let loaded = LoadedGuest::new(
        spec.path.clone(),
        digest,
        pre,
        spec.ctx.clone(),
        spec.limits.clone(),
        spec.imports.clone(),
        Arc::clone(runtime),
        Arc::clone(metrics),
    )?;
    Ok((loaded, outcome))
}

/// The package whose interfaces a guest may import.
const PACKAGE: &str = "dra:driver/";

/// Decide whether a guest may have an import, before anything is linked.
///
/// - `dra:driver/*` interfaces need their grant (`log` and `types` are free).
/// - `wasi:cli/*` and `wasi:io/*` are linked by Rust's standard library in
///   every wasip2 component; they are provided as traps, so a guest that
///   prints to stdout traps instead of writing anywhere.
/// - Everything else (filesystem, sockets, clocks, random, HTTP, other
///   packages) is refused at load time with the import's name.
fn check_import(path: &Path, name: &str, item: &ComponentItem, imports: &Imports) -> Result<(), GuestError> {
    let refuse = |reason: String| {
        Err(GuestError::NotGranted {
            path: path.to_owned(),
            import: name.to_owned(),
            reason,
        })
    };
    if let Some(rest) = name.strip_prefix(PACKAGE) {
        let interface = rest.split('@').next().unwrap_or(rest);
        return match interface {
            "types" | "log" => Ok(()),
            other => match Grant::for_interface(other) {
                Some(grant) if imports.grants(grant) => Ok(()),
                Some(grant) => refuse(format!(
                    "this driver's configuration does not grant (add \"{}\" to the driver's grants)",
                    grant.as_str()
                )),
                None => refuse("is not an interface this host provides".into()),
            },
        };
    }
    if !matches!(item, ComponentItem::ComponentInstance(_)) {
        return refuse("is not an interface instance".into());
    }
    if name.starts_with("wasi:cli/") || name.starts_with("wasi:io/") {
        return Ok(());
    }
    refuse("this host never grants (guests get no WASI filesystem, network, clocks or randomness)".into())
}
