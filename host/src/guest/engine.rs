//! The process-wide wasmtime engine: one compiler configuration, one epoch
//! clock, one compile cache for every driver's guest.

use super::cache::CompileCache;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// Linear memory an instance may hold and still go back to the pool,
    /// bytes. An instance whose memory grew past this during a call is
    /// dropped after it, so that a spike does not stay in the host's RSS.
    pub pooled_memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            table_elements: 20_000,
            max_instances: 8,
            pooled_memory_bytes: POOLED_MEMORY_BYTES,
        }
    }
}

/// Default [`Limits::pooled_memory_bytes`]: 8 MiB.
///
/// A Rust guest starts with 17 wasm pages, 1.06 MiB of linear memory (1 MiB
/// of shadow stack plus its data; all four guests in this repository do), and
/// the example guest never grows past that while serving, so 8 MiB leaves a
/// guest seven times that for its own heap, and bounds what idle instances
/// keep at 8 MiB × `max_instances` (64 MiB with the default 8;
/// docs/operations.md sizes the DaemonSet's memory from it).
pub const POOLED_MEMORY_BYTES: usize = 8 << 20;

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
    /// `tick` is how often running guest code yields to the host's async
    /// runtime, and so the granularity of call deadlines.
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

    /// Keeps the epoch clock running while the guard lives.
    pub(crate) fn busy(&self) -> BusyGuard {
        self.ticker.enter()
    }

    /// Whether the epoch clock is parked (no guest code ran for a while).
    #[cfg(test)]
    pub(crate) fn ticker_parked(&self) -> bool {
        self.ticker.parked.load(Ordering::SeqCst)
    }
}

/// How long the epoch clock keeps ticking after the last guest call ended.
///
/// Waking the clock's thread costs a futex wake-up and a context switch; on
/// the kubelet's busy paths calls come every millisecond or so, and waking
/// the thread for each of them (as an earlier design did) cost more than
/// the guest call itself. Lingering one second keeps those calls free of
/// any system call, and an idle host still parks the thread: nothing wakes
/// up periodically while no guest code runs (invariant 7).
const LINGER: Duration = Duration::from_secs(1);

/// Advances the engine's epoch every `tick` while guest code may be running
/// and for [`LINGER`] after, then parks until the next call.
struct EpochTicker {
    tick: Duration,
    /// Calls in progress.
    active: AtomicUsize,
    /// A call began since the clock's last tick.
    recent: AtomicBool,
    /// The clock's thread is parked (or about to park) on `wake`.
    parked: AtomicBool,
    wake: Condvar,
    lock: Mutex<()>,
}

impl EpochTicker {
    fn start(engine: EngineWeak, tick: Duration) -> std::io::Result<Arc<Self>> {
        let ticker = Arc::new(Self {
            tick,
            active: AtomicUsize::new(0),
            recent: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            wake: Condvar::new(),
            lock: Mutex::new(()),
        });
        let linger_ticks = LINGER.as_nanos().div_ceil(tick.as_nanos().max(1)).max(1) as u64;
        let t = Arc::clone(&ticker);
        std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            let mut idle_ticks = 0u64;
            loop {
                if idle_ticks >= linger_ticks {
                    t.park();
                    idle_ticks = 0;
                }
                std::thread::sleep(t.tick);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return, // the engine is gone: so is every guest
                }
                let began = t.recent.swap(false, Ordering::SeqCst);
                if began || t.active.load(Ordering::SeqCst) > 0 {
                    idle_ticks = 0;
                } else {
                    idle_ticks += 1;
                }
            }
        })?;
        Ok(ticker)
    }

    /// Wait until a call begins.
    fn park(&self) {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // Published before `active` is read: a call that begins after this
        // store sees `parked` and wakes the thread (both orders SeqCst).
        self.parked.store(true, Ordering::SeqCst);
        let _guard = self
            .wake
            .wait_while(guard, |_| self.active.load(Ordering::SeqCst) == 0)
            .unwrap_or_else(|p| p.into_inner());
        self.parked.store(false, Ordering::SeqCst);
    }

    fn enter(self: &Arc<Self>) -> BusyGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.recent.store(true, Ordering::Relaxed);
        // The common case, the clock already ticking, costs no system call.
        if self.parked.load(Ordering::SeqCst) {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_one();
        }
        BusyGuard(Arc::clone(self))
    }
}

pub(crate) struct BusyGuard(Arc<EpochTicker>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The clock parks once calls stop, a call wakes it, and it never parks
    /// while a call runs (the call's deadline and yields depend on it): an
    /// idle host has no periodic wake-up, a busy one no wake-up per call.
    #[test]
    fn the_epoch_clock_runs_while_calls_run_then_lingers_and_parks() {
        let runtime = Runtime::new(CompileCache::new(None).unwrap(), Duration::from_millis(1)).unwrap();
        let limit = LINGER * 20;
        wait_until("parking after start", limit, || runtime.ticker_parked());
        let busy = runtime.busy();
        wait_until("waking for a call", limit, || !runtime.ticker_parked());
        std::thread::sleep(LINGER + Duration::from_millis(300));
        assert!(!runtime.ticker_parked(), "the clock parked while a call was running");
        drop(busy);
        wait_until("parking after the last call", limit, || runtime.ticker_parked());
    }
}
