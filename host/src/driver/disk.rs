//! Where a claim's file work (CDI spec, checkpoint record, each with its
//! fsyncs) runs: inline when it is the only claim operation in flight, on
//! tokio's blocking pool, bounded, otherwise.

use super::OperationError;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Run a claim's file writes and removals (each with its fsyncs) without
/// holding up the async workers while the disk works.
///
/// Why: a durable write waits on the disk for most of its time. Run on the
/// async workers (two on a small node), at most two claims' fsyncs were in
/// flight, while the disk completes concurrent ones together: on the 2-core
/// test machine one thread did 1,473 write+remove pairs/s and 16 threads
/// 5,008 (docs/benchmarks.md, "Durable writes off the async workers").
///
/// How: a claim operation that is the only one in flight does its file
/// work inline, on its worker: a lone kubelet call pays no thread hop, and
/// the other worker stays free. When others are in flight it goes to tokio's
/// blocking pool (a wake-up of a pool thread), so that their fsyncs are in
/// flight together. Measured against the alternatives (one run each, release):
/// always hopping cost one caller's prepare 1.07× its p50 and 1.17× the host
/// CPU; never hopping capped 16 callers at 1,334 pairs/s (2,939 when every
/// operation hopped); letting one operation at a time run inline whatever
/// else was in flight did 0.84× the pairs/s of always hopping at 1.19× the
/// CPU per pair (the other worker then steals the blocked one's tasks).
///
/// At most [`DISK_WORK_IN_FLIGHT`] run on the pool at once; the rest wait
/// their turn on the async side.
///
/// Either way the work, once started, runs to its end even when the caller
/// is dropped (an inline run is one poll; a blocking task cannot be
/// cancelled once started), so an abandoned call never leaves a file
/// half-done; a caller dropped while it waits for its turn has touched no
/// file (and the kubelet's calls are not dropped: `kubelet::plugin`'s
/// `Detachable` finishes them). A panic in the work resumes in the caller.
/// Its tracing span is the caller's.
pub(super) async fn durably<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OperationError> + Send + 'static,
) -> Result<T, OperationError> {
    if ClaimOperation::in_flight() <= 1 {
        return work();
    }
    let _turn = DISK_WORK.acquire().await.map_err(|_| OperationError::ShuttingDown)?;
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(work)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(OperationError::ShuttingDown),
    }
}

/// How many claims' file work [`durably`] runs on the blocking pool at once,
/// process-wide.
///
/// Why a bound: without one, N concurrent claim operations start N pool
/// threads each waiting in fsync — up to tokio's 512, the pool the NVML and
/// netlink imports share — and the disk gains little past 16 in flight (the
/// throughput bench's disk alone: 4,700–6,100 pairs/s with 16 threads,
/// 5,115 with 64). Measured at 64 callers against no bound (two runs,
/// release): 1.01× and 0.99× the pairs/s, prepare p99 0.56× and 0.54×, host
/// CPU per pair 0.95× and 0.96×; a bound of 8 did 0.86× the pairs/s of 16.
const DISK_WORK_IN_FLIGHT: usize = 16;

static DISK_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(DISK_WORK_IN_FLIGHT);

/// One claim's prepare or unprepare in flight, counted process-wide (all
/// drivers share the async workers) for [`durably`].
pub(super) struct ClaimOperation;

static CLAIM_OPERATIONS: AtomicUsize = AtomicUsize::new(0);

impl ClaimOperation {
    pub(super) fn start() -> Self {
        CLAIM_OPERATIONS.fetch_add(1, Ordering::AcqRel);
        ClaimOperation
    }

    fn in_flight() -> usize {
        CLAIM_OPERATIONS.load(Ordering::Acquire)
    }
}

impl Drop for ClaimOperation {
    fn drop(&mut self) {
        CLAIM_OPERATIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use futures_util::future::join_all;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_work_leaves_the_worker_when_other_operations_are_in_flight() {
        let worker = std::thread::current().id();
        // Two operations in flight (other tests' may add more, never fewer).
        let (_a, _b) = (ClaimOperation::start(), ClaimOperation::start());
        let ran_on = durably(|| Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(ran_on, worker, "with others in flight the work must not block a worker");
        // A panic in the work is the caller's panic, as it was inline.
        let panicked =
            std::panic::AssertUnwindSafe(durably(|| -> Result<(), OperationError> { panic!("disk on fire") }))
                .catch_unwind()
                .await;
        let message = panicked.expect_err("the panic reaches the caller");
        assert_eq!(message.downcast_ref::<&str>(), Some(&"disk on fire"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_work_on_the_pool_is_bounded() {
        // 3× the bound of operations at once, each holding its pool thread
        // as an fsync would: never more than the bound run together, and
        // every one of them completes.
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let _in_flight = (ClaimOperation::start(), ClaimOperation::start());
        let works = (0..3 * DISK_WORK_IN_FLIGHT).map(|i| {
            tokio::spawn(durably(move || {
                let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                MOST.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                RUNNING.fetch_sub(1, Ordering::SeqCst);
                Ok(i)
            }))
        });
        let done: Vec<usize> = join_all(works)
            .await
            .into_iter()
            .map(|r| r.expect("task").expect("work"))
            .collect();
        assert_eq!(done, (0..3 * DISK_WORK_IN_FLIGHT).collect::<Vec<_>>());
        let most = MOST.load(Ordering::SeqCst);
        assert!(
            most <= DISK_WORK_IN_FLIGHT,
            "{most} ran at once, the bound is {DISK_WORK_IN_FLIGHT}"
        );
        assert!(most > 1, "the work ran one at a time");
    }
}
