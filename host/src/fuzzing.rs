//! The fuzz driver shared by the property-based fuzz tests (test builds only).
//!
//! Each trust boundary has a `fuzz_*` test next to the code it exercises:
//! the checkpoint decoder (`state::checkpoint`), the conversion of
//! ResourceClaim JSON into the guest's claim (`kube::allocation`), the
//! `DRAPlugin` request handlers (`kubelet::plugin`), and the HTTP/2 frame
//! and header rewriting in front of the kubelet's sockets
//! (`kubelet::connection`). They run on the stable toolchain with
//! `proptest` generating inputs (structured ones and raw bytes) and
//! shrinking any failure to a small reproducer.
//!
//! How long they run is set by the environment:
//! - default: [`DEFAULT_CASES`] inputs per target (part of the normal suite);
//! - `DRA_FUZZ_CASES=N`: N inputs per target;
//! - `DRA_FUZZ_SECONDS=S`: batches of inputs until S seconds have passed
//!   (`.ci/run` gives each target a bounded time; the long run in
//!   docs/benchmarks.md gives it hours).
//!
//! Each target prints one line: `fuzz <target>: <inputs> inputs, 0 failures,
//! <seconds> s`. A failure panics with the shrunk input.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::time::{Duration, Instant};

/// Inputs per target in an ordinary test run.
pub const DEFAULT_CASES: u32 = 256;
/// Inputs per batch in a time-bounded run.
const BATCH: u32 = 500;

/// Run `test` on inputs from `strategy` as the environment asks (see the
/// module docs). `cost` scales the default case count down for targets
/// whose inputs are expensive (1 = full count).
pub fn fuzz<S: Strategy>(target: &str, cost: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let seconds = std::env::var("DRA_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let cases = std::env::var("DRA_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(DEFAULT_CASES / cost.max(1));
    let started = Instant::now();
    let mut tried: u64 = 0;
    let mut run = |n: u32| {
        let mut runner = TestRunner::new(Config {
            cases: n,
            failure_persistence: None,
            // Shrinking is bounded so that a failure reports in reasonable time.
            max_shrink_iters: 4_096,
            ..Config::default()
        });
        match runner.run(&strategy, &test) {
            Ok(()) => tried += u64::from(n),
            Err(TestError::Fail(reason, input)) => {
                panic!("fuzz {target}: failed after {tried}+ inputs: {reason}\nshrunk input: {input:#?}")
            }
            Err(TestError::Abort(reason)) => panic!("fuzz {target}: aborted: {reason}"),
        }
    };
    match seconds {
        Some(s) => {
            let budget = Duration::from_secs(s);
            while started.elapsed() < budget {
                run(BATCH / cost.max(1));
            }
        }
        None => run(cases),
    }
    println!(
        "fuzz {target}: {tried} inputs, 0 failures, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
