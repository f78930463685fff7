//! A loaded guest component and its pool of initialised instances.
//!
//! Instances are disposable: an instance is created from the component's
//! `InstancePre`, gets `init`, serves calls one at a time, and is dropped
//! after any trap (a trapped instance is poisoned), when its linear memory
//! grew past [`Limits::pooled_memory_bytes`], or when more instances are idle
//! than needed. Nothing durable lives in an instance.
//!
//! # Where guest code runs
//!
//! A call runs on the task that makes it, with wasmtime's async support: the
//! guest executes on a fiber stack inside the call's `Future::poll`, so the
//! common call, a few microseconds of guest code, costs no thread hop and no
//! system call. (Each call used to hop to tokio's blocking pool and back and
//! wake the epoch thread: about 75 µs per call, most of a prepare's CPU
//! outside the durable write; docs/benchmarks.md has the profile.)
//!
//! What keeps a guest from holding the host's threads:
//! - at every epoch tick ([`Runtime::busy`] keeps the clock running while
//!   calls run) guest code checks the call's deadline: past it, the guest
//!   traps (`Trap::Interrupt`, a timeout); otherwise it yields to the async
//!   runtime and continues, so a looping guest takes one tick of a worker
//!   thread at a time;
//! - host imports that block (netlink, NVML) are async and run on the
//!   blocking pool; they wait for it only until the same deadline, then trap
//!   the guest ([`super::DeadlinePassed`], a timeout too).
//!
//! The deadline is an `Instant` in the store, checked at ticks; no timer is
//! registered per call (a `tokio::time::timeout` around each call cost a
//! timer-wheel insert and removal under the time driver's lock, contended
//! between the workers, for a deadline that almost never fires).
//!
//! The alternatives were dedicated guest threads fed by a channel (still a
//! futex wake-up and a context switch each way per call, like the blocking
//! pool) and plain synchronous calls on the worker (no way to keep a looping
//! guest from holding a worker until its deadline).

use super::engine::{Limits, Runtime};
use super::error::{DeadlinePassed, Export, GuestError, LimitExceeded};
use crate::guest_text as text;
use crate::imports::log::GuestLog;
use crate::imports::{Imports, ImportsView};
use crate::metrics::Metrics;
use crate::model;
use crate::wit::{Answer, Driver, DriverPre};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};

/// Per-store data: what the host imports of one instance see.
pub struct StoreState {
    limiter: GuestLimiter,
    pub(crate) log: GuestLog,
    pub(crate) imports: Imports,
    /// When the current call must end (set for each call).
    pub(crate) deadline: Instant,
    /// The claim whose `prepare` or `unprepare` is running (`None` in every
    /// other call): the only claim the `net` import acts for, so that a
    /// guest cannot create, configure or release another claim's links and
    /// addresses. Cleared for each call, set by [`super::Guest::prepare`]
    /// and [`super::Guest::unprepare`].
    pub(crate) claim: Option<String>,
}

impl StoreState {
    /// What the host imports see of this store ([`ImportsView`]): their
    /// state and the call's scope.
    pub(crate) fn imports_view(&mut self) -> ImportsView<'_> {
        ImportsView {
            imports: &self.imports,
            log: &mut self.log,
            deadline: self.deadline,
            claim: self.claim.as_deref(),
        }
    }
}

struct GuestLimiter {
    memory_bytes: usize,
    table_elements: usize,
    /// The largest size any of the instance's memories reached, bytes.
    /// Linear memory never shrinks, so this is what the instance holds.
    memory_peak: usize,
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
        self.memory_peak = self.memory_peak.max(desired);
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
    bindings: Driver,
    calls: u64,
}

/// Everything needed to create instances of one component for one driver.
pub struct LoadedGuest {
    pub(crate) path: PathBuf,
    pub(crate) digest: String,
    pub(crate) info: model::DriverInfo,
    pre: DriverPre<StoreState>,
    ctx: model::InitContext,
    limits: Limits,
    imports: Imports,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    idle: Mutex<Vec<Instance>>,
    slots: Semaphore,
}

/// Recycle an instance after this many calls, bounding how much a guest's
/// heap can fragment or leak across calls.
const MAX_CALLS_PER_INSTANCE: u64 = 10_000;

/// Why an instance was not returned to the pool after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retire {
    /// It trapped (timeouts and limits included): it is poisoned.
    Trap,
    /// Its memory grew past what an idle instance may keep.
    Memory,
    /// It served [`MAX_CALLS_PER_INSTANCE`] calls.
    Recycled,
}

impl Retire {
    fn as_str(self) -> &'static str {
        match self {
            Retire::Trap => "trap",
            Retire::Memory => "memory",
            Retire::Recycled => "recycled",
        }
    }
}

impl LoadedGuest {
    /// Create the first instance (running `init`) and keep it warm. The
    /// returned guest has passed `init`; callers run any further self-test.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn new(
        path: PathBuf,
        digest: String,
        pre: DriverPre<StoreState>,
        ctx: model::InitContext,
        limits: Limits,
        imports: Imports,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, GuestError> {
        let mut guest = Self {
            path,
            digest,
            info: model::DriverInfo {
                name: String::new(),
                version: String::new(),
            },
            pre,
            ctx,
            slots: Semaphore::new(limits.max_instances.max(1)),
            limits,
            imports,
            runtime,
            metrics,
            idle: Mutex::new(Vec::new()),
        };
        let (instance, info) = guest.instantiate().await?;
        guest.info = info;
        guest.idle.get_mut().unwrap_or_else(|p| p.into_inner()).push(instance);
        Ok(Arc::new(guest))
    }

    /// Run `f` on an idle (or new) instance under the call deadline.
    pub(crate) async fn call<R, F>(&self, export: Export, f: F) -> Result<R, GuestError>
    where
        F: AsyncFnOnce(&Driver, &mut Store<StoreState>) -> Answer<R>,
    {
        let _permit = self.slots.acquire().await.map_err(|_| GuestError::ShuttingDown)?;
        let started = Instant::now();
        let result = self.call_on_instance(export, f).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.metrics
            .guest_call(&self.ctx.driver_name, export.as_str(), outcome, started.elapsed());
        result
    }

    async fn call_on_instance<R, F>(&self, export: Export, f: F) -> Result<R, GuestError>
    where
        F: AsyncFnOnce(&Driver, &mut Store<StoreState>) -> Answer<R>,
    {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut instance = match idle {
            Some(i) => i,
            None => self.instantiate().await?.0,
        };
        let _busy = self.runtime.busy();
        let state = instance.store.data_mut();
        state.log.begin_call();
        state.claim = None;
        state.deadline = Instant::now() + self.limits.call_timeout;
        instance.store.set_epoch_deadline(1);
        let result = f(&instance.bindings, &mut instance.store).await;
        instance.calls += 1;
        let result = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(driver_error(export, e)),
            Err(e) => Err(self.classify(export, e, &mut instance.store)),
        };
        let retire = if result.as_ref().err().is_some_and(GuestError::poisons_instance) {
            Some(Retire::Trap)
        } else if instance.store.data().limiter.memory_peak > self.limits.pooled_memory_bytes {
            Some(Retire::Memory)
        } else if instance.calls >= MAX_CALLS_PER_INSTANCE {
            Some(Retire::Recycled)
        } else {
            None
        };
        match retire {
            None => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < self.limits.max_instances {
                    idle.push(instance);
                }
            }
            Some(reason) => {
                match reason {
                    Retire::Trap => tracing::warn!(
                        driver = %self.ctx.driver_name, guest = %self.info.name, export = %export,
                        "guest instance dropped after a trap; the next call gets a fresh one"
                    ),
                    Retire::Memory => tracing::debug!(
                        driver = %self.ctx.driver_name, guest = %self.info.name, export = %export,
                        memory_bytes = instance.store.data().limiter.memory_peak,
                        pooled_memory_bytes = self.limits.pooled_memory_bytes,
                        "guest instance dropped: its memory grew past what an idle instance may keep"
                    ),
                    Retire::Recycled => {}
                }
                self.metrics
                    .guest_instance_dropped(&self.ctx.driver_name, reason.as_str());
                // Dropping the store unmaps the instance's linear memory.
                drop(instance);
            }
        }
        result
    }

    /// Create an instance and run `init` on it, under the call deadline.
    async fn instantiate(&self) -> Result<(Instance, model::DriverInfo), GuestError> {
        let engine = self.runtime.engine();
        let state = StoreState {
            limiter: GuestLimiter {
                memory_bytes: self.limits.memory_bytes,
                table_elements: self.limits.table_elements,
                memory_peak: 0,
            },
            log: GuestLog::new(Arc::from(self.ctx.driver_name.as_str())),
            imports: self.imports.clone(),
            deadline: Instant::now() + self.limits.call_timeout,
            claim: None,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        // At every epoch tick: past the call's deadline the guest traps;
        // before it, the guest lets the worker thread's other tasks run.
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
            }
        });
        store.set_epoch_deadline(1);
        let _busy = self.runtime.busy();
        let started = async {
            let bindings = self.pre.instantiate_async(&mut store).await?;
            let info = bindings.call_init(&mut store, &self.ctx).await?;
            wasmtime::Result::Ok((bindings, info))
        }
        .await;
        let (bindings, info) = match started {
            Ok((bindings, Ok(info))) => (bindings, info),
            Ok((_, Err(e))) => return Err(driver_error(Export::Init, e)),
            Err(e) => return Err(self.classify(Export::Init, e, &mut store)),
        };
        self.metrics.guest_instance_created(&self.ctx.driver_name);
        // The guest's own words for itself reach log fields, metric labels
        // and Events.
        let info = model::DriverInfo {
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
        if err.downcast_ref::<DeadlinePassed>().is_some() {
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

    /// The `dra:driver` version the component is bound to, e.g. `0.2.0`.
    pub fn contract_version(&self) -> &'static str {
        self.pre.version()
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
    /// the first calls after a swap do not each pay for `init`.
    pub(crate) async fn warm(&self, n: usize) -> Result<(), GuestError> {
        let n = n.min(self.limits.max_instances);
        while self.idle_instances() < n {
            let (instance, _) = self.instantiate().await?;
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(instance);
        }
        Ok(())
    }
}

/// A guest's own error, with its message bounded and made inert.
fn driver_error(export: Export, e: model::DriverError) -> GuestError {
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
