//! Guest components: loading (compile or cached), capability checks, limits
//! and deadlines, and the swappable handle every driver calls through.
//!
//! A guest is loaded once into a [`LoadedGuest`] (compiled component, linked
//! `InstancePre`, pool of instances). A driver holds a [`Guest`], which points
//! at the current `LoadedGuest` through one atomic pointer: replacing the
//! component is a pointer swap, calls in flight finish on the one they
//! started with.

mod cache;
mod engine;
mod error;
mod inspect;
mod instance;
mod watch;

pub use cache::{CacheOutcome, CompileCache, digest};
pub use engine::{Limits, Runtime};
pub use error::{DeadlinePassed, DriverErrorKind, Export, GuestError, LimitExceeded};
pub use inspect::{Inspection, inspect};
pub use instance::{LoadedGuest, StoreState};
pub use watch::{GuestFileWatcher, WatchError};

use crate::claim::ClaimRef;
use crate::guest_text as text;
use crate::imports::{Grant, Imports};
use crate::metrics::Metrics;
use crate::model;
use crate::state::checkpoint::GuestIdentity;
use crate::wit::{Answer, Driver, DriverPre};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use wasmtime::component::Linker;
use wasmtime::component::types::ComponentItem;

/// What to load for a driver.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub path: PathBuf,
    pub ctx: model::InitContext,
    pub limits: Limits,
    /// Host imports granted to this guest (logging is always granted).
    pub imports: Imports,
}

/// The guest a driver calls through; its component can be replaced at run time.
///
/// A replacement ([`Guest::replace`]) is loaded and self-tested off the
/// request path, then published with one pointer swap: calls in flight finish
/// on the component they started with, new calls go to the new one. The
/// previous component is kept while the new one is on probation (its first
/// [`ErrorBudget::calls`] calls); if too many of those fail the host swaps
/// back by itself and reports a [`Rollback`].
pub struct Guest {
    current: ArcSwap<LoadedGuest>,
    budget: ErrorBudget,
    probation: Mutex<Option<Probation>>,
    /// Digest of the last file that failed to load, so that the same bad
    /// file is not loaded again on every unrelated change in its directory.
    rejected: Mutex<Option<String>>,
    rollbacks: mpsc::UnboundedSender<Rollback>,
    rollbacks_rx: Mutex<Option<mpsc::UnboundedReceiver<Rollback>>>,
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

/// How many of a new component's first calls may fail before the host
/// returns to the previous one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorBudget {
    /// Calls the new component is on probation for.
    pub calls: u64,
    /// Failed calls tolerated among them; one more rolls back.
    pub failures: u64,
}

impl Default for ErrorBudget {
    fn default() -> Self {
        Self { calls: 50, failures: 5 }
    }
}

struct Probation {
    previous: Arc<LoadedGuest>,
    candidate: Arc<LoadedGuest>,
    calls: u64,
    failures: u64,
}

/// The host went back to the previous component after the new one spent its
/// error budget.
#[derive(Clone, Debug)]
pub struct Rollback {
    pub from: GuestIdentity,
    pub to: GuestIdentity,
    pub calls: u64,
    pub failures: u64,
    /// The last failure that counted against the budget.
    pub last_error: String,
}

/// What loading a guest reports besides the guest itself.
#[derive(Debug)]
pub struct LoadReport {
    pub cache: CacheOutcome,
    pub duration: std::time::Duration,
    /// The inventory the guest returned during its self-test.
    pub inventory: Vec<model::Pool>,
}

/// The outcome of [`Guest::replace`].
#[derive(Debug)]
pub enum Replaced {
    /// The file holds the component already serving (or one that was
    /// rejected before): nothing was loaded.
    Unchanged,
    /// The new component passed its self-test and now serves new calls.
    Swapped {
        from: GuestIdentity,
        to: GuestIdentity,
        report: LoadReport,
    },
}

impl Guest {
    /// Load, link, instantiate and self-test (`init` + `inventory`) a guest.
    pub async fn load(
        runtime: &Arc<Runtime>,
        metrics: &Arc<Metrics>,
        spec: &GuestSpec,
    ) -> Result<(Self, LoadReport), GuestError> {
        let (loaded, report) = load_component(runtime, metrics, spec).await?;
        let (rollbacks, rx) = mpsc::unbounded_channel();
        Ok((
            Self {
                current: ArcSwap::new(loaded),
                budget: ErrorBudget::default(),
                probation: Mutex::new(None),
                rejected: Mutex::new(None),
                rollbacks,
                rollbacks_rx: Mutex::new(Some(rx)),
            },
            report,
        ))
    }

    /// Use `budget` for components swapped in from now on.
    pub fn with_error_budget(mut self, budget: ErrorBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The component currently serving calls.
    pub fn current(&self) -> Arc<LoadedGuest> {
        self.current.load_full()
    }

    /// Rollbacks the guest performed, for whoever reports them (one taker).
    pub fn take_rollbacks(&self) -> Option<mpsc::UnboundedReceiver<Rollback>> {
        lock(&self.rollbacks_rx).take()
    }

    /// Load the component at `spec.path` and, if it passes the same checks
    /// and self-test as at start, make it the one serving calls.
    ///
    /// Unchanged content (same SHA-256 as the serving component, or as the
    /// last rejected file) loads nothing. On any error the serving component
    /// stays. The replaced component is kept for a rollback until the new one
    /// has served its probation.
    pub async fn replace(
        &self,
        runtime: &Arc<Runtime>,
        metrics: &Arc<Metrics>,
        spec: &GuestSpec,
    ) -> Result<Replaced, GuestError> {
        let bytes = tokio::fs::read(&spec.path).await.map_err(|source| GuestError::Read {
            path: spec.path.clone(),
            source,
        })?;
        let new_digest = digest(&bytes);
        if new_digest == self.current.load().digest || lock(&self.rejected).as_deref() == Some(new_digest.as_str()) {
            return Ok(Replaced::Unchanged);
        }
        let (loaded, report) = match load_bytes(runtime, metrics, spec, bytes).await {
            Ok(ok) => ok,
            Err(e) => {
                *lock(&self.rejected) = Some(new_digest);
                return Err(e);
            }
        };
        // Give the new component as many ready instances as the old one is
        // using, off the request path, so that the calls right after the
        // switch do not queue behind `init`.
        let wanted = self.current.load().instances_in_use();
        if let Err(e) = loaded.warm(wanted).await {
            *lock(&self.rejected) = Some(new_digest);
            return Err(e);
        }
        let from = self.identity();
        let previous = self.current.swap(Arc::clone(&loaded));
        *lock(&self.probation) = (self.budget.calls > 0).then(|| Probation {
            previous,
            candidate: loaded,
            calls: 0,
            failures: 0,
        });
        *lock(&self.rejected) = None;
        Ok(Replaced::Swapped {
            from,
            to: self.identity(),
            report,
        })
    }

    /// Identity of the current component, as recorded in the checkpoint.
    pub fn identity(&self) -> GuestIdentity {
        identity(&self.current.load())
    }

    /// The `dra:driver` version the current component is bound to, e.g. `0.2.0`.
    pub fn contract_version(&self) -> &'static str {
        self.current.load().contract_version()
    }

    pub async fn inventory(&self) -> Result<Vec<model::Pool>, GuestError> {
        self.call(Export::Inventory, async |b, store| b.call_inventory(store).await)
            .await
    }

    /// Prepare a claim; also says which component prepared it (the one the
    /// checkpoint must record, even if a swap happened meanwhile).
    pub async fn prepare(&self, claim: model::Claim) -> Result<(model::PreparedClaim, GuestIdentity), GuestError> {
        let guest = self.current();
        let result = guest
            .call(Export::Prepare, async move |b, store| {
                store.data_mut().claim = Some(claim.reference.uid.clone());
                b.call_prepare(store, claim).await
            })
            .await;
        self.observe(&guest, result.as_ref().err());
        result.map(|prepared| (prepared, identity(&guest)))
    }

    pub async fn unprepare(&self, claim: ClaimRef, state: Vec<u8>) -> Result<(), GuestError> {
        self.call(Export::Unprepare, async move |b, store| {
            store.data_mut().claim = Some(claim.uid.clone());
            b.call_unprepare(store, &claim, &state).await
        })
        .await
    }

    pub async fn on_event(&self, event: model::Event) -> Result<Vec<model::DeviceHealth>, GuestError> {
        self.call(Export::OnEvent, async move |b, store| {
            b.call_on_event(store, event).await
        })
        .await
    }

    /// Call the current component and count the outcome against its budget
    /// while it is on probation.
    async fn call<R, F>(&self, export: Export, f: F) -> Result<R, GuestError>
    where
        F: AsyncFnOnce(&Driver, &mut wasmtime::Store<StoreState>) -> Answer<R>,
    {
        let guest = self.current();
        let result = guest.call(export, f).await;
        self.observe(&guest, result.as_ref().err());
        result
    }

    fn observe(&self, guest: &Arc<LoadedGuest>, error: Option<&GuestError>) {
        let mut probation = lock(&self.probation);
        let Some(p) = probation.as_mut() else { return };
        if !Arc::ptr_eq(&p.candidate, guest) {
            return;
        }
        p.calls += 1;
        if let Some(e) = error.filter(|e| e.is_guest_fault()) {
            p.failures += 1;
            if p.failures > self.budget.failures {
                let p = probation.take().expect("checked above");
                self.current.store(Arc::clone(&p.previous));
                let rollback = Rollback {
                    from: identity(&p.candidate),
                    to: identity(&p.previous),
                    calls: p.calls,
                    failures: p.failures,
                    last_error: crate::error::chain(e),
                };
                // Do not load the failed file again until it changes.
                *lock(&self.rejected) = Some(p.candidate.digest.clone());
                let _ = self.rollbacks.send(rollback);
                return;
            }
        }
        if p.calls >= self.budget.calls {
            // Probation served: the previous component is dropped once its
            // last call in flight ends.
            *probation = None;
        }
    }
}

fn identity(g: &LoadedGuest) -> GuestIdentity {
    GuestIdentity {
        name: g.info.name.clone(),
        version: g.info.version.clone(),
        digest: g.digest.clone(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Load a component into a new [`LoadedGuest`] and run its self-test. Used
/// at start and for every replacement, so both go through the same checks.
pub async fn load_component(
    runtime: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
    spec: &GuestSpec,
) -> Result<(Arc<LoadedGuest>, LoadReport), GuestError> {
    let bytes = tokio::fs::read(&spec.path).await.map_err(|source| GuestError::Read {
        path: spec.path.clone(),
        source,
    })?;
    load_bytes(runtime, metrics, spec, bytes).await
}

async fn load_bytes(
    runtime: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
    spec: &GuestSpec,
    bytes: Vec<u8>,
) -> Result<(Arc<LoadedGuest>, LoadReport), GuestError> {
    let started = Instant::now();
    let (runtime2, spec2) = (Arc::clone(runtime), spec.clone());
    // Compiling (or loading the cached compilation) and linking are CPU
    // work of tens of milliseconds: off the async workers.
    let (pre, digest, cache) = tokio::task::spawn_blocking(move || link(&runtime2, &spec2, &bytes))
        .await
        .map_err(GuestError::LoadThread)??;
    let loaded = LoadedGuest::new(
        spec.path.clone(),
        digest,
        pre,
        spec.ctx.clone(),
        spec.limits.clone(),
        spec.imports.clone(),
        Arc::clone(runtime),
        Arc::clone(metrics),
    )
    .await?;
    let inventory = loaded
        .call(Export::Inventory, async |b, store| b.call_inventory(store).await)
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

/// Compile (or load from the cache), check the imports against the grants,
/// and link: everything about a component short of running it.
fn link(
    runtime: &Arc<Runtime>,
    spec: &GuestSpec,
    bytes: &[u8],
) -> Result<(DriverPre<StoreState>, String, CacheOutcome), GuestError> {
    let engine = runtime.engine();
    let digest = digest(bytes);
    let (component, outcome) = runtime
        .cache()
        .load(engine, &digest, bytes)
        .map_err(|e| GuestError::Compile {
            path: spec.path.clone(),
            source: e.into(),
        })?;

    let mut linker: Linker<StoreState> = Linker::new(engine);
    crate::wit::add_log(&mut linker, StoreState::imports_view).map_err(|e| GuestError::Link {
        what: "log",
        source: e.into(),
    })?;
    for import in component.component_type().imports(engine) {
        let (name, item) = import;
        check_import(&spec.path, name, &item.ty, &spec.imports)?;
    }
    crate::wit::add_granted(&mut linker, &spec.imports, StoreState::imports_view).map_err(|e| GuestError::Link {
        what: "host imports",
        source: e.into(),
    })?;
    // What is left are WASI interfaces that Rust's standard library links
    // (stdio, environment, exit): calling one traps. See `check_import`.
    linker
        .define_unknown_imports_as_traps(&component)
        .map_err(|e| GuestError::Link {
            what: "unknown imports as traps",
            source: e.into(),
        })?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| GuestError::Incompatible {
            path: spec.path.clone(),
            source: e.into(),
        })?;
    let pre = DriverPre::new(pre).map_err(|e| GuestError::Incompatible {
        path: spec.path.clone(),
        source: e.into(),
    })?;
    Ok((pre, digest, outcome))
}

/// The package whose interfaces a guest may import.
pub(crate) const PACKAGE: &str = "dra:driver/";

/// Decide whether a guest may have an import, before anything is linked.
///
/// - `dra:driver/*` interfaces need their grant (`log` and `types` are free).
/// - `wasi:cli/*` and `wasi:io/*` are linked by Rust's standard library in
///   every wasip2 component; they are provided as traps, so a guest that
///   prints to stdout traps instead of writing anywhere.
/// - Everything else (filesystem, sockets, clocks, random, HTTP, other
///   packages) is refused at load time with the import's name.
pub(crate) fn check_import(path: &Path, name: &str, item: &ComponentItem, imports: &Imports) -> Result<(), GuestError> {
    let refuse = |reason: String| {
        Err(GuestError::NotGranted {
            path: path.to_owned(),
            import: text::bounded(name, text::QUOTED_BYTES),
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
