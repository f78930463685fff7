//! A loaded guest component and its pool of initialised instances.
//!
//! Instances are disposable: an instance is created from the component's
//! `InstancePre`, gets `init`, serves calls one at a time, and is dropped
//! after any trap (a trapped instance is poisoned) or when more instances are
//! idle than needed. Nothing durable lives in an instance.

use super::bindings::{DriverHost as Host, DriverHostPre as HostPre, types};
use super::engine::{Limits, Runtime};
use super::error::{Export, GuestError, LimitExceeded};
use super::text;
use crate::imports::Imports;
use crate::imports::log::GuestLog;
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;
use wasmtime::{ResourceLimiter, Store, Trap};

/// Per-store data: what the host imports of one instance see.
pub struct StoreState {
    limiter: GuestLimiter,
    pub(crate) log: GuestLog,
    pub(crate) imports: Imports,
}

struct GuestLimiter {
    memory_bytes: usize,
    table_elements: usize,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // An error (rather than `Ok(false)`) traps at the growth itself,
            // so the call fails with a precise, typed reason.
            return Err(wasmtime::Error::new(LimitExceeded::Memory {
                limit: self.memory_bytes,
                requested: desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(wasmtime::Error::new(LimitExceeded::Table {
                limit: self.table_elements,
                requested: desired,
            }));
        }
        Ok(true)
    }

    // A driver component is one or two core modules; these bounds leave room
    // and stop a crafted component from multiplying its footprint.
    fn instances(&self) -> usize {
        32
    }
    fn tables(&self) -> usize {
        32
    }
    fn memories(&self) -> usize {
        4
    }
}

struct Instance {
    store: Store<StoreState>,
    bindings: Host,
    calls: u64,
}

/// Everything needed to create instances of one component for one driver.
pub struct LoadedGuest {
    pub(crate) path: PathBuf,
    pub(crate) digest: String,
    pub(crate) info: types::DriverInfo,
    pre: HostPre<StoreState>,
    ctx: types::InitContext,
    limits: Limits,
    imports: Imports,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    idle: Mutex<Vec<Instance>>,
    slots: Arc<Semaphore>,
}

/// Recycle an instance after this many calls, bounding how much a guest's
/// heap can fragment or leak across calls.
const MAX_CALLS_PER_INSTANCE: u64 = 10_000;

impl LoadedGuest {
    /// Create the first instance (running `init`) and keep it warm. The
    /// returned guest has passed `init`; callers run any further self-test.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        path: PathBuf,
        digest: String,
        pre: HostPre<StoreState>,
        ctx: types::InitContext,
        limits: Limits,
        imports: Imports,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, GuestError> {
        let mut guest = Self {
            path,
            digest,
            info: types::DriverInfo {
                name: String::new(),
                version: String::new(),
            },
            pre,
            ctx,
            slots: Arc::new(Semaphore::new(limits.max_instances.max(1))),
            limits,
            imports,
            runtime,
            metrics,
            idle: Mutex::new(Vec::new()),
        };
        let (instance, info) = guest.instantiate()?;
        guest.info = info;
        guest.idle.get_mut().unwrap_or_else(|p| p.into_inner()).push(instance);
        Ok(Arc::new(guest))
    }

    /// Run `f` on an idle (or new) instance under the call deadline, on a
    /// blocking thread: guest code never runs on the async reactor.
    pub(crate) async fn call<R, F>(self: &Arc<Self>, export: Export, f: F) -> Result<R, GuestError>
    where
        R: Send + 'static,
        F: FnOnce(&Host, &mut Store<StoreState>) -> wasmtime::Result<Result<R, types::DriverError>> + Send + 'static,
    {
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| GuestError::Runtime("guest is shutting down".into()))?;
        let this = Arc::clone(self);
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.call_blocking(export, f)
        })
        .await
        .map_err(|e| GuestError::Runtime(format!("guest call thread failed: {e}")))?;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.metrics
            .guest_call(&self.ctx.driver_name, export.as_str(), outcome, started.elapsed());
        result
    }

    fn call_blocking<R, F>(&self, export: Export, f: F) -> Result<R, GuestError>
    where
        F: FnOnce(&Host, &mut Store<StoreState>) -> wasmtime::Result<Result<R, types::DriverError>>,
    {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut instance = match idle {
            Some(i) => i,
            None => self.instantiate()?.0,
        };
        let _busy = self.runtime.busy();
        instance.store.data_mut().log.begin_call();
        instance
            .store
            .set_epoch_deadline(self.runtime.deadline_ticks(self.limits.call_timeout));
        let result = f(&instance.bindings, &mut instance.store);
        instance.calls += 1;
        let result = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(driver_error(export, e)),
            Err(e) => Err(self.classify(export, e, &mut instance.store)),
        };
        let reusable = result.as_ref().err().is_none_or(|e| !e.poisons_instance());
        if reusable && instance.calls < MAX_CALLS_PER_INSTANCE {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.limits.max_instances {
                idle.push(instance);
            }
        } else if !reusable {
            tracing::warn!(
                driver = %self.ctx.driver_name, guest = %self.info.name, export = %export,
                "guest instance dropped after a trap; the next call gets a fresh one"
            );
        }
        result
    }

    /// Create an instance and run `init` on it.
    fn instantiate(&self) -> Result<(Instance, types::DriverInfo), GuestError> {
        let engine = self.runtime.engine();
        let state = StoreState {
            limiter: GuestLimiter {
                memory_bytes: self.limits.memory_bytes,
                table_elements: self.limits.table_elements,
            },
            log: GuestLog::new(Arc::from(self.ctx.driver_name.as_str())),
            imports: self.imports.clone(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        let _busy = self.runtime.busy();
        store.set_epoch_deadline(self.runtime.deadline_ticks(self.limits.call_timeout));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(Export::Init, e, &mut store))?;
        store.set_epoch_deadline(self.runtime.deadline_ticks(self.limits.call_timeout));
        let info = match bindings.dra_driver_device_driver().call_init(&mut store, &self.ctx) {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => return Err(driver_error(Export::Init, e)),
            Err(e) => return Err(self.classify(Export::Init, e, &mut store)),
        };
        self.metrics.guest_instance_created(&self.ctx.driver_name);
        // The guest's own words for itself reach log fields, metric labels
        // and Events.
        let info = types::DriverInfo {
            name: text::bounded(&info.name, text::IDENTITY_BYTES),
            version: text::bounded(&info.version, text::IDENTITY_BYTES),
        };
        Ok((
            Instance {
                store,
                bindings,
                calls: 0,
            },
            info,
        ))
    }

    fn classify(&self, export: Export, err: wasmtime::Error, store: &mut Store<StoreState>) -> GuestError {
        if let Some(limit) = err.downcast_ref::<LimitExceeded>() {
            return GuestError::Limit {
                export,
                limit: limit.clone(),
            };
        }
        if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
            return GuestError::Timeout {
                export,
                timeout: self.limits.call_timeout,
            };
        }
        // The answer and the log line get the cause in a few words; the
        // whole error, wasm backtrace included, goes to the debug log, on one
        // line (function names come from the guest's name section).
        let mut message = trap_cause(&err);
        if let Some(said) = store.data_mut().log.take_last_error() {
            message.push_str(&format!(
                " (guest logged: {})",
                text::bounded(&said, text::QUOTED_BYTES)
            ));
        }
        tracing::debug!(
            driver = %self.ctx.driver_name, export = %export,
            details = %text::bounded(&format!("{err:?}"), 16 << 10),
            "guest trap details"
        );
        GuestError::Trap { export, message }
    }

    /// Instances currently idle in the pool.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Instances this guest is using now: idle ones plus those serving a call.
    pub(crate) fn instances_in_use(&self) -> usize {
        let busy = self.limits.max_instances.max(1) - self.slots.available_permits();
        self.idle_instances() + busy
    }

    /// Fill the idle pool up to `n` instances (at most the limit), so that
    /// the first calls after a swap do not each pay for `init`. Blocking.
    pub(crate) fn warm(&self, n: usize) -> Result<(), GuestError> {
        let n = n.min(self.limits.max_instances);
        while self.idle_instances() < n {
            let (instance, _) = self.instantiate()?;
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(instance);
        }
        Ok(())
    }
}

/// A guest's own error, with its message bounded and made inert.
fn driver_error(export: Export, e: types::DriverError) -> GuestError {
    GuestError::Driver {
        export,
        kind: e.kind,
        message: text::bounded(&e.message, text::MESSAGE_BYTES),
    }
}

/// Why a guest call trapped, in a few words an operator can act on.
///
/// A Rust guest that panics either reaches `unreachable` (`panic = "abort"`
/// with a panic hook that logs) or, with the standard library's panic hook,
/// first reads `RUST_BACKTRACE` from the environment and writes the message
/// to stderr: `wasi:cli` is linked as traps (guests get no environment or
/// stdio), so that reads as a panic too. Deep recursion in such a guest
/// overflows its stack in linear memory before wasm's own call stack.
fn trap_cause(err: &wasmtime::Error) -> String {
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::UnreachableCodeReached => "guest panicked".to_owned(),
            Trap::StackOverflow => "stack overflow".to_owned(),
            // Rust and C keep their stack in linear memory, below the data:
            // running off its end is an access below address 0.
            Trap::MemoryOutOfBounds => {
                "out-of-bounds memory access (in a Rust or C guest, usually a stack overflow)".to_owned()
            }
            Trap::IntegerDivisionByZero => "integer division by zero".to_owned(),
            other => {
                let text = other.to_string();
                text.strip_prefix("wasm trap: ").unwrap_or(&text).to_owned()
            }
        };
    }
    let root = err.root_cause().to_string();
    if let Some(import) = root
        .strip_prefix("unknown import: `")
        .and_then(|rest| rest.split('`').next())
    {
        return if import.starts_with("wasi:cli/") || import.starts_with("wasi:io/") {
            format!(
                "guest panicked, or used stdio or the environment, which guests are not given (it called {}; guests log through dra:driver/log)",
                text::quoted(import)
            )
        } else {
            format!(
                "guest called {}, which this host provides only as a trap",
                text::quoted(import)
            )
        };
    }
    let first_line = root.lines().next().unwrap_or_default();
    text::bounded(first_line, text::QUOTED_BYTES)
}
