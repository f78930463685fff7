//! Hot swap of a driver's guest through its file, as a ConfigMap update does
//! it, while the kubelet keeps calling: no call fails, calls after a swap use
//! the new guest, claims prepared before a swap unprepare after it, bad
//! guests never replace the good one, and a guest that fails its first calls
//! is rolled back.
//!
//! The two guest builds are `faulty_driver.wasm` (0.1.0) and
//! `faulty_next.wasm` (0.2.0): one source, each build's CDI edits carry its
//! version in `FAULTY_VERSION`, and each build's `unprepare` checks that the
//! state it gets back is the claim's.
//!
//! The tonic test kubelet calls the host: continuous calls from several
//! connections during swaps, each answer's build version read; the kubelet's
//! own code under a swap is in tests/cluster/real_kubelet.rs.

use crate::common::*;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::configmap::ConfigMapDir;
use dra_test_support::host::{DriverSpec, HostEnv, http_get};
use dra_test_support::kubelet::Plugin;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const FAULTY: &str = "faulty.dra.dev";
const KEY: &str = "faulty.wasm";
const V1: &str = "0.1.0";
const V2: &str = "0.2.0";

fn build(version: &str) -> Vec<u8> {
    let file = if version == V1 {
        "faulty_driver.wasm"
    } else {
        "faulty_next.wasm"
    };
    std::fs::read(guest(file)).unwrap()
}

struct SwapNode {
    node: Node,
    guests: ConfigMapDir,
    metrics_port: u16,
}

/// A host serving the faulty guest from a ConfigMap-style directory, with
/// `devices` devices and `config` added to the guest config.
async fn swap_node(devices: u32, config: &str, hot_swap: &str) -> SwapNode {
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    let metrics_port = env.enable_metrics().unwrap();
    let guests = ConfigMapDir::create(&env.dir().join("guests"), &[(KEY, &build(V1))]).unwrap();
    let spec = DriverSpec::new(FAULTY, &guests.path(KEY)).config(&format!("devices = {devices}\n{config}"));
    let node = Node::start_in(
        env,
        vec![spec],
        "call_timeout_ms = 2000",
        &format!("[hot_swap]\ndebounce_ms = 20\n{hot_swap}\n"),
    )
    .await;
    SwapNode {
        node,
        guests,
        metrics_port,
    }
}

impl SwapNode {
    fn cdi_spec(&self, uid: &str) -> PathBuf {
        self.node.env.cdi_dir.join(format!("k8s.{FAULTY}-device_{uid}.json"))
    }

    fn checkpoint_record(&self, uid: &str) -> String {
        let path = self
            .node
            .env
            .kubelet_root
            .join("plugins")
            .join(FAULTY)
            .join("claims")
            .join(format!("{uid}.json"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn log_count(&self, needle: &str) -> usize {
        self.node.host.log().matches(needle).count()
    }

    /// Wait until the host has logged `needle` `n` times.
    async fn wait_log(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "host did not log {needle:?} {n} times within {timeout:?}; log:\n{}",
                self.node.host.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").await.unwrap()
    }
}

fn claim(name: &str, n: u64, device: u32) -> Claim {
    Claim::new("default", name, &uid(n)).device(FAULTY, "faulty", &format!("dev-{device}"), "dev")
}

/// The `FAULTY_VERSION` a prepared claim's CDI spec carries.
fn version_in(spec: &Path) -> Option<String> {
    let text = std::fs::read_to_string(spec).ok()?;
    let at = text.find("FAULTY_VERSION=")? + "FAULTY_VERSION=".len();
    Some(text[at..].split('"').next()?.to_owned())
}

/// One prepare or unprepare the load made.
struct Call {
    started: Instant,
    /// When its answer came back.
    ended: Instant,
    /// For a prepare: the version in the claim's CDI edits.
    version: Option<String>,
    error: Option<String>,
}

/// Prepare, read the version, unprepare; again and again until `stop`.
async fn load_worker(plugin: Plugin, claims: Vec<Claim>, cdi_dir: PathBuf, stop: Arc<AtomicBool>) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = &claims[i % claims.len()];
        i += 1;
        let started = Instant::now();
        let (version, error) = match plugin.prepare(&[c.reference()]).await {
            Ok(a) if a[&c.uid].error.is_empty() => {
                let spec = cdi_dir.join(format!("k8s.{FAULTY}-device_{}.json", c.uid));
                match version_in(&spec) {
                    Some(v) => (Some(v), None),
                    None => (None, Some(format!("no FAULTY_VERSION in {}", spec.display()))),
                }
            }
            Ok(a) => (None, Some(format!("prepare {}: {}", c.name, a[&c.uid].error))),
            Err(e) => (None, Some(format!("prepare {}: {e}", c.name))),
        };
        calls.push(Call {
            started,
            ended: Instant::now(),
            version,
            error,
        });
        let started = Instant::now();
        let error = match plugin.unprepare(&[c.reference()]).await {
            Ok(a) if a[&c.uid].is_empty() => None,
            Ok(a) => Some(format!("unprepare {}: {}", c.name, a[&c.uid])),
            Err(e) => Some(format!("unprepare {}: {e}", c.name)),
        };
        calls.push(Call {
            started,
            ended: Instant::now(),
            version: None,
            error,
        });
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_fail_no_call() {
    const WORKERS: u64 = 12;
    const PER_WORKER: u64 = 4;
    const SWAPS: usize = 20;
    let mut sn = swap_node((WORKERS * PER_WORKER + 1) as u32, "", "").await;

    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for w in 0..WORKERS {
        let claims: Vec<Claim> = (0..PER_WORKER)
            .map(|i| {
                let n = w * PER_WORKER + i;
                claim(&format!("load-{n}"), 1000 + n, n as u32)
            })
            .collect();
        all.extend(claims.clone());
        per_worker.push(claims);
    }
    // One claim held prepared across each swap.
    let held = claim("held", 999, (WORKERS * PER_WORKER) as u32);
    all.push(held.clone());
    sn.node.claims.put(&all).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let workers: Vec<_> = per_worker
        .into_iter()
        .map(|claims| {
            tokio::spawn(load_worker(
                sn.node.plugin.clone(),
                claims,
                sn.node.env.cdi_dir.clone(),
                Arc::clone(&stop),
            ))
        })
        .collect();

    // (update started, swap seen, version now serving)
    let mut swaps: Vec<(Instant, Instant, &str)> = Vec::new();
    let mut serving = V1;
    for k in 0..SWAPS {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // A claim prepared by the guest about to be replaced...
        let a = sn.node.plugin.prepare(&[held.reference()]).await.unwrap();
        assert_eq!(a[&held.uid].error, "", "swap {k}: held claim");
        assert_eq!(version_in(&sn.cdi_spec(&held.uid)).as_deref(), Some(serving));
        assert!(
            sn.checkpoint_record(&held.uid)
                .contains(&format!("\"version\":\"{serving}\""))
        );

        let next = if serving == V1 { V2 } else { V1 };
        let update = Instant::now();
        sn.guests.update(&[(KEY, &build(next))]).unwrap();
        sn.wait_log("guest swapped", k + 1, Duration::from_secs(20)).await;
        swaps.push((update, Instant::now(), next));
        serving = next;

        // ... is unprepared by the new one, from the checkpointed state.
        let u = sn.node.plugin.unprepare(&[held.reference()]).await.unwrap();
        assert_eq!(u[&held.uid], "", "swap {k}: unprepare after the swap");
        assert!(!sn.cdi_spec(&held.uid).exists());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for w in workers {
        calls.extend(w.await.unwrap());
    }
    let elapsed = load_started.elapsed();

    let failed: Vec<&String> = calls.iter().filter_map(|c| c.error.as_ref()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed, first: {:?}\nhost log:\n{}",
        failed.len(),
        calls.len(),
        failed.first(),
        sn.node.host.log()
    );
    // The rate is reported, not asserted (it depends on what else the
    // machine runs); `cargo bench --bench swap` measures it on a release build.
    let rate = calls.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{} calls in {elapsed:?} ({rate:.0}/s) across {SWAPS} swaps",
        calls.len()
    );

    // Every prepare that started after a swap was seen, and was answered
    // before the next file update, ran on the new build. (One that started
    // before the update but was answered after it may have reached the host
    // after the next swap: under load, tens of milliseconds pass between a
    // call's start and the host's handling of it.)
    for (i, (_, seen, version)) in swaps.iter().enumerate() {
        let until = swaps.get(i + 1).map(|s| s.0);
        let in_window: Vec<&Call> = calls
            .iter()
            .filter(|c| c.version.is_some() && c.started >= *seen && until.is_none_or(|u| c.ended < u))
            .collect();
        assert!(!in_window.is_empty(), "no prepare ran after swap {i}");
        for c in in_window {
            assert_eq!(c.version.as_deref(), Some(*version), "a prepare after swap {i}");
        }
    }
    let versions: std::collections::HashSet<_> = calls.iter().filter_map(|c| c.version.as_deref()).collect();
    assert!(versions.contains(V1) && versions.contains(V2));

    let text = sn.metrics().await;
    let swapped = format!("dra_host_guest_swaps_total{{driver=\"{FAULTY}\",result=\"swapped\"}} {SWAPS}");
    assert!(text.contains(&swapped), "missing {swapped:?} in\n{text}");
    assert!(!text.contains("result=\"rejected\""), "{text}");
    assert!(text.contains(&format!("dra_host_guest_info{{driver=\"{FAULTY}\",guest=\"faulty-")));
}

/// The empty component: valid, but it exports no `dra:driver` interface.
const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_guests_never_replace_the_good_one() {
    // The 0.2.0 build loops in `inventory` (its self-test).
    let mut sn = swap_node(2, "faultVersion = \"0.2.0\"\nfault = \"inventory-loop\"", "").await;
    let c = claim("steady", 1, 0);
    sn.node.claims.put(std::slice::from_ref(&c)).unwrap();
    let example = std::fs::read(guest("example_driver.wasm")).unwrap();
    let gpu = std::fs::read(guest("gpu_driver.wasm")).unwrap();
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "garbage bytes",
            b"this is not wasm",
            "is not a valid WebAssembly component",
        ),
        (
            "wrong world",
            EMPTY_COMPONENT,
            "does not implement a supported dra:driver version",
        ),
        ("ungranted import", &gpu, "imports dra:driver/nvml"),
        // Its config has keys the example guest does not know: `init` fails.
        ("init error", &example, "guest init failed"),
        (
            "a guest that loops",
            &build(V2),
            "guest inventory did not finish within 2s",
        ),
    ];
    for (i, (what, bytes, expected)) in cases.iter().enumerate() {
        sn.guests.update(&[(KEY, bytes)]).unwrap();
        sn.wait_log("new guest refused", i + 1, Duration::from_secs(30)).await;
        let log = sn.node.host.log();
        let refusal = log.lines().filter(|l| l.contains("new guest refused")).nth(i).unwrap();
        assert!(refusal.contains(expected), "{what}: {refusal}");
        // The good guest still serves, unchanged.
        let a = sn.node.plugin.prepare(&[c.reference()]).await.unwrap();
        assert_eq!(a[&c.uid].error, "", "{what}");
        assert_eq!(version_in(&sn.cdi_spec(&c.uid)).as_deref(), Some(V1), "{what}");
        assert_eq!(sn.node.plugin.unprepare(&[c.reference()]).await.unwrap()[&c.uid], "");
    }
    assert_eq!(sn.log_count("guest swapped"), 0);
    let text = sn.metrics().await;
    let rejected = format!("dra_host_guest_swaps_total{{driver=\"{FAULTY}\",result=\"rejected\"}} 5");
    assert!(text.contains(&rejected), "missing {rejected:?} in\n{text}");
    assert!(text.contains("guest=\"faulty-driver\",version=\"0.1.0\""), "{text}");

    // The good build again: unchanged content, nothing is loaded.
    sn.guests.update(&[(KEY, &build(V1))]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sn.log_count("guest swapped") + sn.log_count("new guest refused"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_traps_in_its_self_test_is_refused() {
    let mut sn = swap_node(2, "faultVersion = \"0.2.0\"\nfault = \"inventory-trap\"", "").await;
    sn.guests.update(&[(KEY, &build(V2))]).unwrap();
    sn.wait_log("new guest refused", 1, Duration::from_secs(30)).await;
    assert!(
        sn.node.host.log().contains("guest inventory trapped"),
        "{}",
        sn.node.host.log()
    );
    let c = claim("after-trap", 1, 0);
    sn.node.claims.put(std::slice::from_ref(&c)).unwrap();
    assert_eq!(
        sn.node.plugin.prepare(&[c.reference()]).await.unwrap()[&c.uid].error,
        ""
    );
    assert_eq!(version_in(&sn.cdi_spec(&c.uid)).as_deref(), Some(V1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_failing_its_first_calls_is_rolled_back() {
    // 0.2.0 passes its self-test but traps in every prepare; 2 failures of
    // its first 10 calls are tolerated, the third rolls back.
    let mut sn = swap_node(
        8,
        "faultVersion = \"0.2.0\"\nfault = \"prepare-trap\"",
        "probation_calls = 10\nmax_failed_calls = 2",
    )
    .await;
    let claims: Vec<Claim> = (0..6).map(|i| claim(&format!("c{i}"), 10 + i, i as u32)).collect();
    sn.node.claims.put(&claims).unwrap();

    sn.guests.update(&[(KEY, &build(V2))]).unwrap();
    sn.wait_log("guest swapped", 1, Duration::from_secs(30)).await;
    for c in &claims[..3] {
        let a = sn.node.plugin.prepare(&[c.reference()]).await.unwrap();
        assert!(a[&c.uid].error.contains("trapped"), "{}", a[&c.uid].error);
    }
    sn.wait_log("rolled back to the previous guest", 1, Duration::from_secs(10))
        .await;
    for c in &claims[3..] {
        let a = sn.node.plugin.prepare(&[c.reference()]).await.unwrap();
        assert_eq!(a[&c.uid].error, "", "after the rollback");
        assert_eq!(version_in(&sn.cdi_spec(&c.uid)).as_deref(), Some(V1));
    }
    let text = sn.metrics().await;
    for expected in [
        format!("dra_host_guest_swaps_total{{driver=\"{FAULTY}\",result=\"swapped\"}} 1"),
        format!("dra_host_guest_swaps_total{{driver=\"{FAULTY}\",result=\"rolled_back\"}} 1"),
        "guest=\"faulty-driver\",version=\"0.1.0\"".to_owned(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    }
    // The rolled-back file is not loaded again while it stays the same.
    sn.guests.update(&[(KEY, &build(V2))]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sn.log_count("guest swapped"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_are_reported_as_kubernetes_events() {
    // The real API server (tests/k8s), with the host's own credentials.
    let cp = control_plane().await;
    let mut guests = None;
    let n = cluster_node(cp, "e2e-swap-events", |env| {
        let dir = ConfigMapDir::create(&env.dir().join("guests"), &[(KEY, &build(V1))]).unwrap();
        let spec = DriverSpec::new(FAULTY, &dir.path(KEY)).config("devices = 2");
        guests = Some(dir);
        (vec![spec], "[hot_swap]\ndebounce_ms = 20\n".to_owned())
    })
    .await;
    let mut guests = guests.unwrap();
    let node = &n.node;

    guests.update(&[(KEY, b"not a component")]).unwrap();
    eventually("the refusal", node, || {
        node.host.log().contains("new guest refused").then_some(())
    })
    .await;
    guests.update(&[(KEY, &build(V2))]).unwrap();
    let events = eventually("two events", node, || {
        let list = cp.get(&["events", "-n", "default"]).ok()?;
        let ours: Vec<serde_json::Value> = list["items"]
            .as_array()?
            .iter()
            .filter(|e| e["involvedObject"]["name"] == n.name.as_str())
            .cloned()
            .collect();
        (ours.len() >= 2).then_some(ours)
    })
    .await;
    let by_reason = |r: &str| events.iter().find(|e| e["reason"] == r).cloned();
    let rejected = by_reason("GuestRejected").expect("a GuestRejected event");
    assert_eq!(rejected["type"], "Warning");
    assert_eq!(rejected["involvedObject"]["kind"], "Node");
    assert_eq!(rejected["involvedObject"]["name"], n.name.as_str());
    assert_eq!(rejected["involvedObject"]["uid"], n.uid.as_str());
    assert!(
        rejected["message"]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component")
    );
    let swapped = by_reason("GuestSwapped").expect("a GuestSwapped event");
    assert_eq!(swapped["type"], "Normal");
    assert!(
        swapped["message"].as_str().unwrap().contains("faulty-next 0.2.0"),
        "{swapped}"
    );
}

/// `guest inspect` and `guest validate FILE`: what an operator runs before
/// updating the ConfigMap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_inspect_and_validate_a_candidate() {
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .output()
            .expect("run the binary")
    };
    let gpu = guest("gpu_driver.wasm");
    let out = run(&["guest", "inspect", gpu.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["world"], "gpu-driver");
    assert_eq!(v["witVersion"], "0.2.0");
    assert_eq!(v["grantsNeeded"], serde_json::json!(["nvml"]));
    assert_eq!(v["compatible"], true);
    assert_eq!(v["fitsConfigmap"], true);
    assert_eq!(v["sizeBytes"], std::fs::metadata(&gpu).unwrap().len());
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert!(
        v["exports"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("dra:driver/device-driver@0.2.0"))
    );

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, EMPTY_COMPONENT).unwrap();
    let out = run(&["guest", "inspect", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["compatible"], false);
    assert!(v["problem"].as_str().unwrap().contains("does not implement"), "{v}");

    // validate FILE: the candidate is loaded with the driver's config and
    // self-tested; a candidate whose self-test fails is an error.
    let env = HostEnv::new(&cache_dir()).unwrap();
    let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm"))
        .config("devices = 3\nfaultVersion = \"0.2.0\"\nfault = \"init\"");
    env.write_config(&[spec], "").unwrap();
    let config = env.config_path.to_str().unwrap();
    let out = run(&["guest", "validate", "--config", config]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[FAULTY]["guest"]["version"], V1);
    assert_eq!(v[FAULTY]["pools"][0]["devices"].as_array().unwrap().len(), 3);
    let next = guest("faulty_next.wasm");
    let out = run(&["guest", "validate", next.to_str().unwrap(), "--config", config]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("build 0.2.0 was asked to fail init"), "{stderr}");
}
