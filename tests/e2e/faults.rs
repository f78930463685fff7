//! Guests that loop, exhaust memory, trap or return malicious output fail
//! only their own claim; the host keeps serving.
//!
//! The tonic test kubelet calls the host: one call holding a runaway or
//! malicious claim beside a good one, each claim's own error read from the
//! answer; the kubelet's DRA manager stops at a Pod's first claim error.

use crate::common::*;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::host::DriverSpec;
use std::time::{Duration, Instant};

const FAULTY: &str = "faulty.dra.dev";

async fn faulty_node() -> Node {
    let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 4");
    Node::start(vec![spec], "call_timeout_ms = 1000\nmemory_limit_mib = 32").await
}

fn claim(name: &str, n: u64) -> Claim {
    Claim::new("default", name, &uid(n)).device(FAULTY, "faulty", "dev-0", "dev")
}

/// Where this driver's CDI spec of a claim would be (`Node::cdi_spec_path`
/// is the example driver's).
fn spec_path(node: &Node, uid: &str) -> std::path::PathBuf {
    node.env.cdi_dir.join(format!("k8s.{FAULTY}-device_{uid}.json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guests_fail_only_their_claim() {
    let mut node = faulty_node().await;
    let cases = [
        (claim("loop-forever", 1), "did not finish within 1s"),
        (claim("oom-hoard", 2), "memory limit of 33554432 bytes"),
        (claim("trap-now", 3), "trapped"),
        (claim("stack-overflow", 4), "trapped"),
    ];
    let good = claim("healthy", 5);
    let mut all: Vec<Claim> = cases.iter().map(|(c, _)| c.clone()).collect();
    all.push(good.clone());
    node.claims.put(&all).unwrap();

    // One call holding every kind of failure and one good claim.
    let started = Instant::now();
    let answer = node
        .plugin
        .prepare(&all.iter().map(Claim::reference).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the deadline bounds the call: {:?}",
        started.elapsed()
    );
    assert_eq!(answer.len(), all.len());
    for (c, expected) in &cases {
        let e = &answer[&c.uid].error;
        assert!(e.contains(expected), "{}: {e:?} should contain {expected:?}", c.name);
        assert!(!spec_path(&node, &c.uid).exists());
    }
    assert_eq!(answer[&good.uid].error, "");
    assert!(
        spec_path(&node, &good.uid).exists(),
        "the path is right: the good claim has its spec"
    );
    assert_eq!(answer[&good.uid].devices[0].device_name, "dev-0");

    // Each failure alone, then a healthy call: the host keeps serving, and
    // a poisoned instance is never reused.
    for (c, expected) in &cases {
        let a = node.plugin.prepare(&[c.reference()]).await.unwrap();
        assert!(a[&c.uid].error.contains(expected), "{}: {:?}", c.name, a[&c.uid].error);
        let ok = node.plugin.prepare(&[good.reference()]).await.unwrap();
        assert_eq!(ok[&good.uid].error, "", "after {}", c.name);
    }
    assert!(node.host.try_status().unwrap().is_none(), "host is still running");
    let log = node.host.log();
    assert!(log.contains("guest instance dropped after a trap"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_guest_output_is_rejected() {
    let mut node = faulty_node().await;
    let cases = [
        (claim("unallocated-device", 11), "not allocated to this claim"),
        (claim("escape-mount", 12), "not in mount_host_paths"),
        (claim("bigstate", 13), "bytes of state"),
        (claim("badenv", 14), "environment variable name"),
    ];
    let all: Vec<Claim> = cases.iter().map(|(c, _)| c.clone()).collect();
    node.claims.put(&all).unwrap();
    let answer = node
        .plugin
        .prepare(&all.iter().map(Claim::reference).collect::<Vec<_>>())
        .await
        .unwrap();
    for (c, expected) in &cases {
        let e = &answer[&c.uid].error;
        assert!(e.starts_with("guest output rejected"), "{}: {e}", c.name);
        assert!(e.contains(expected), "{}: {e:?} should contain {expected:?}", c.name);
        assert!(!spec_path(&node, &c.uid).exists());
        let record = node.env.kubelet_root.join("plugins").join(FAULTY).join("claims");
        assert!(!record.join(format!("{}.json", c.uid)).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_whose_init_fails_stops_the_start_with_a_clear_error() {
    let env = dra_test_support::host::HostEnv::new(&cache_dir()).unwrap();
    let _claims = dra_test_support::claims::ClaimsFile::new(&env.claims_path).unwrap();
    env.write_config(
        &[DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("failInit = true")],
        "",
    )
    .unwrap();
    let mut host = env.start(&binary()).unwrap();
    let status = host.wait_exit(START_TIMEOUT).unwrap();
    assert!(!status.success());
    let log = host.log();
    assert!(log.contains("failInit is set"), "{log}");
    assert!(log.contains(FAULTY), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_guest_is_a_start_error_and_a_corrupt_checkpoint_record_is_quarantined() {
    let env = dra_test_support::host::HostEnv::new(&cache_dir()).unwrap();
    let _claims = dra_test_support::claims::ClaimsFile::new(&env.claims_path).unwrap();
    let garbage = env.dir().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm this is not a component").unwrap();
    env.write_config(&[DriverSpec::new(DRIVER, &garbage)], "").unwrap();
    let mut host = env.start(&binary()).unwrap();
    assert!(!host.wait_exit(START_TIMEOUT).unwrap().success());
    assert!(
        host.log().contains("is not a valid WebAssembly component"),
        "{}",
        host.log()
    );
    assert!(host.log().contains("garbage.wasm"), "{}", host.log());

    let checkpoint = env.kubelet_root.join("plugins").join(DRIVER).join("claims");
    std::fs::create_dir_all(&checkpoint).unwrap();
    let bad = checkpoint.join(format!("{}.json", uid(7)));
    std::fs::write(&bad, b"{\"kind\":\"DraWasmHostClaimCheckpoint\",\"vers").unwrap();
    env.write_config(&[DriverSpec::new(DRIVER, &guest("example_driver.wasm"))], "")
        .unwrap();
    // One unreadable record never takes the driver down (issue 14): the
    // host starts, names the file, and moves it aside unchanged.
    let mut host = env.start(&binary()).unwrap();
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    while !host.log().contains("plugin sockets open") {
        assert!(host.try_status().unwrap().is_none(), "the host exited:\n{}", host.log());
        assert!(std::time::Instant::now() < deadline, "{}", host.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = host.log();
    assert!(
        log.contains("quarantined") && log.contains(&bad.display().to_string()),
        "{log}"
    );
    assert!(!bad.exists());
    let quarantine = checkpoint.with_file_name("claims-quarantine");
    let moved: Vec<_> = std::fs::read_dir(&quarantine).unwrap().flatten().collect();
    assert_eq!(moved.len(), 1, "never silently dropped");
    assert_eq!(
        std::fs::read(moved[0].path()).unwrap(),
        b"{\"kind\":\"DraWasmHostClaimCheckpoint\",\"vers"
    );
    host.terminate(std::time::Duration::from_secs(20)).unwrap();
}
