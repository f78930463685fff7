//! Guest instances, seen from outside the real binary: a memory spike does
//! not stay in the host's RSS, instances are bounded by `max_instances`, and
//! guests that loop do not hold the threads other calls need.
//!
//! The tonic test kubelet calls the host: batches of spike claims in one call
//! and concurrent calls on cue, measured against the host's RSS and
//! threads; the kubelet's code sends one call per driver per Pod when it
//! decides to.

use crate::common::*;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::host::{DriverSpec, HostEnv, http_get};
use std::time::Duration;

const FAULTY: &str = "faulty.dra.dev";

fn claim(name: &str, n: u64) -> Claim {
    Claim::new("default", name, &uid(n)).device(FAULTY, "faulty", "dev-0", "dev")
}

/// The faulty guest on a host serving metrics; returns the node and the port.
async fn faulty_node(runtime: &str) -> (Node, u16) {
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    let port = env.enable_metrics().unwrap();
    let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 1");
    (Node::start_in(env, vec![spec], runtime, "").await, port)
}

/// The sum of a metric's samples whose line starts with `series`.
async fn metric(port: u16, series: &str) -> f64 {
    let text = http_get(port, "/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    dra_test_support::bench::status_kib(pid, field).unwrap()
}

/// Eight instances each grow their linear memory by 48 MiB at once and the
/// calls succeed: afterwards the host's RSS is back near where it was,
/// because an instance that grew past what an idle one may keep is dropped
/// rather than pooled (issue 15: 62 → 431 MiB, for good, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_spike_does_not_stay_in_the_hosts_rss() {
    const SPIKE_MIB: u64 = 48;
    const INSTANCES: u64 = 8;
    let (mut node, port) = faulty_node("memory_limit_mib = 64\nmax_instances = 8").await;
    let normal: Vec<Claim> = (0..INSTANCES).map(|i| claim(&format!("normal-{i}"), 100 + i)).collect();
    let spikes: Vec<Claim> = (0..INSTANCES)
        .map(|i| claim(&format!("spike-{SPIKE_MIB}-{i}"), 200 + i))
        .collect();
    let all: Vec<Claim> = normal.iter().chain(&spikes).cloned().collect();
    node.claims.put(&all).unwrap();
    let refs = |claims: &[Claim]| claims.iter().map(Claim::reference).collect::<Vec<_>>();

    // Warm up: ordinary calls, so that the pool, the allocator and the
    // caches are where a serving host has them.
    for _ in 0..3 {
        let a = node.plugin.prepare(&refs(&normal)).await.unwrap();
        assert!(a.values().all(|r| r.error.is_empty()), "{a:?}");
        node.plugin.unprepare(&refs(&normal)).await.unwrap();
    }
    let pid = node.host.pid();
    let before = status_kib(pid, "VmRSS");

    // The spike: eight claims in one call, prepared concurrently, each on
    // its own instance (each call holds its memory for a while and yields).
    let a = node.plugin.prepare(&refs(&spikes)).await.unwrap();
    for c in &spikes {
        assert_eq!(a[&c.uid].error, "", "{}", c.name);
    }
    let peak = status_kib(pid, "VmHWM");
    let after = status_kib(pid, "VmRSS");
    let dropped = metric(
        port,
        "dra_host_guest_instances_dropped_total{driver=\"faulty.dra.dev\",reason=\"memory\"}",
    )
    .await;
    eprintln!("host RSS before the spike {before} kB, peak {peak} kB, after {after} kB; {dropped} instances dropped");

    // The spike was real: at least half the instances held their memory at once.
    assert!(
        peak >= before + INSTANCES / 2 * SPIKE_MIB * 1024,
        "the spike did not happen: RSS {before} kB before, high-water mark {peak} kB"
    );
    // And it is gone: within the 10 %, plus 4 MiB of slack for the
    // host's own allocations during the call.
    let bound = before + before / 10 + 4 * 1024;
    assert!(
        after <= bound,
        "host RSS after the spike is {after} kB, more than {bound} kB (before: {before} kB, peak: {peak} kB)"
    );
    assert_eq!(dropped as u64, INSTANCES, "every grown instance is dropped");

    // The guest still serves, on fresh instances.
    let ok = node.plugin.prepare(&refs(&normal)).await.unwrap();
    assert!(ok.values().all(|r| r.error.is_empty()), "{ok:?}");
}

/// Never more instances than `max_instances`, however many calls come at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_bounded_by_max_instances() {
    let (mut node, port) = faulty_node("max_instances = 2").await;
    // Each holds its instance for a while (1 MiB: pooled afterwards).
    let claims: Vec<Claim> = (0..6).map(|i| claim(&format!("spike-1-{i}"), 300 + i)).collect();
    node.claims.put(&claims).unwrap();
    let a = node
        .plugin
        .prepare(&claims.iter().map(Claim::reference).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(a.values().all(|r| r.error.is_empty()), "{a:?}");
    let created = metric(
        port,
        "dra_host_guest_instances_created_total{driver=\"faulty.dra.dev\"}",
    )
    .await;
    assert!(
        (1.0..=2.0).contains(&created),
        "{created} instances were created for six concurrent calls with max_instances = 2"
    );
}

/// Guest code runs on the host's async workers; a guest that loops must
/// yield them. Four looping calls (more than the host has workers on a
/// 2-core machine) are in progress while an ordinary call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_guests_do_not_hold_the_threads_other_calls_need() {
    let (mut node, _port) = faulty_node("call_timeout_ms = 30000").await;
    let loops: Vec<Claim> = (0..4).map(|i| claim(&format!("loop-{i}"), 400 + i)).collect();
    let good = claim("healthy", 410);
    let mut all = loops.clone();
    all.push(good.clone());
    node.claims.put(&all).unwrap();

    let looping = {
        let plugin = node.plugin.clone();
        let refs: Vec<_> = loops.iter().map(Claim::reference).collect();
        tokio::spawn(async move { plugin.prepare(&refs).await })
    };
    // Until the loops are running (the test kubelet's call is in flight and
    // the host took the claims' locks, nothing more to wait on).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let a = node.plugin.prepare(&[good.reference()]).await.unwrap();
        assert_eq!(a[&good.uid].error, "");
        node.plugin.unprepare(&[good.reference()]).await.unwrap();
    }
    assert!(
        !looping.is_finished(),
        "the looping calls ended before the ordinary ones (their deadline is 30 s): {:?}",
        looping.await
    );
    assert!(node.host.try_status().unwrap().is_none(), "host is still running");
}
