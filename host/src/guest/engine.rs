//! The process-wide wasmtime engine: one compiler configuration, one epoch
//! clock, one compile cache for every driver's guest.

use super::cache::CompileCache;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use wasmtime::{Config, Engine, EngineWeak, OptLevel};

/// Limits every guest store gets.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Upper bound on one call's wall-clock time.
    pub call_timeout: Duration,
    /// Linear memory per instance, bytes.
    pub memory_bytes: usize,
    /// Table elements per table.
    pub table_elements: usize,
    /// Instances of one guest alive at once (calls beyond this wait).
    pub max_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            table_elements: 20_000,
            max_instances: 8,
        }
    }
}

/// Engine, epoch ticker and compile cache, shared by all guests.
pub struct Runtime {
    engine: Engine,
    ticker: Arc<EpochTicker>,
    cache: CompileCache,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("tick", &self.ticker.tick)
            .field("cache", &self.cache)
            .finish()
    }
}

impl Runtime {
    /// `tick` is the epoch granularity: deadlines are rounded up to it.
    pub fn new(cache: CompileCache, tick: Duration) -> anyhow::Result<Arc<Self>> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true)
            // Wasm backtraces name guest functions in trap messages.
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(20));
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let ticker = EpochTicker::start(engine.weak(), tick)?;
        Ok(Arc::new(Self { engine, ticker, cache }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// Epoch ticks that cover `timeout` (at least one).
    pub(crate) fn deadline_ticks(&self, timeout: Duration) -> u64 {
        let tick = self.ticker.tick.as_nanos().max(1);
        (timeout.as_nanos().div_ceil(tick) as u64).max(1)
    }

    /// Keeps the epoch clock running while the guard lives.
    pub(crate) fn busy(&self) -> BusyGuard {
        self.ticker.enter()
    }
}

/// Advances the engine's epoch every `tick`, but only while some guest code
/// may be running: an idle host does not wake up at all.
struct EpochTicker {
    tick: Duration,
    active: AtomicUsize,
    wake: Condvar,
    lock: Mutex<()>,
}

impl EpochTicker {
    fn start(engine: EngineWeak, tick: Duration) -> std::io::Result<Arc<Self>> {
        let ticker = Arc::new(Self {
            tick,
            active: AtomicUsize::new(0),
            wake: Condvar::new(),
            lock: Mutex::new(()),
        });
        let t = Arc::clone(&ticker);
        std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            loop {
                {
                    let guard = t.lock.lock().unwrap_or_else(|p| p.into_inner());
                    let _guard = t
                        .wake
                        .wait_while(guard, |_| t.active.load(Ordering::Acquire) == 0)
                        .unwrap_or_else(|p| p.into_inner());
                }
                std::thread::sleep(t.tick);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return, // the engine is gone: so is every guest
                }
            }
        })?;
        Ok(ticker)
    }

    fn enter(self: &Arc<Self>) -> BusyGuard {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_one();
        }
        BusyGuard(Arc::clone(self))
    }
}

pub(crate) struct BusyGuard(Arc<EpochTicker>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}
