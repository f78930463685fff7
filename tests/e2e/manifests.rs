//! Everything an operator applies, and every ResourceSlice the host
//! generates, validated against the Kubernetes 1.37 schemas with
//! `kubernetes-validate` (installed by tests/run.sh).

use crate::common::*;
use dra_test_support::gpus::{self, Injector};
use dra_test_support::host::DriverSpec;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Validate files against the 1.37 schemas (also used for the Events the host creates).
pub fn validate(files: &[PathBuf]) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.37.0"])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("kubernetes-validate is not installed ({e}); tests/run.sh installs it: pip install kubernetes-validate==1.37.0"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let passed = text.matches(" passed ").count();
    assert!(passed >= files.len(), "expected every file to pass:\n{text}");
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The workload examples in `deploy/` and the guests ConfigMap that `guest
/// configmap` makes (the chart's renderings: tests/e2e/chart.rs).
#[test]
fn the_examples_and_the_guests_configmap_are_valid_kubernetes_1_37() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");

    let out = Command::new(binary())
        .args(["guest", "configmap"])
        .arg(guest("example_driver.wasm"))
        .arg(guest("gpu_driver.wasm"))
        .arg(guest("macvlan_driver.wasm"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("guests-configmap.yaml");
    std::fs::write(&cm, &out.stdout).unwrap();
    files.push(cm);
    validate(&files);
}

/// The API server limits a ConfigMap to 1 MiB of keys and *decoded* values
/// (binaryData counts bytes, not base64): 900 KiB of guest fits, though its
/// base64 (1.2 MB) would not; 1.1 MiB is refused, saying by how much.
#[test]
fn the_guests_configmap_limit_counts_decoded_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = |name: &str, size: usize| {
        let path = dir.path().join(name);
        let mut bytes = b"\0asm".to_vec();
        bytes.resize(size, 0);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let fits = wasm("fits.wasm", 900 << 10);
    let out = Command::new(binary())
        .args(["guest", "configmap"])
        .arg(&fits)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let big = wasm("big.wasm", 1100 << 10);
    let out = Command::new(binary())
        .args(["guest", "configmap"])
        .arg(&big)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("at most 1048576") && stderr.contains("1126408"),
        "{stderr}"
    );
}

/// The slices the host published, as the real API server (tests/k8s)
/// accepted and stores them, also pass the upstream schema; and the 0.2
/// fields (shared counters in a slice of their own, counter consumption,
/// binding conditions) are stored, not dropped as a server without the
/// features would drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_resource_slices_are_valid_kubernetes_1_37() {
    const GPU: &str = "gpu.dra.dev";
    const PARTS: &str = "parts.dra.dev";
    let cp = control_plane().await;
    let mut events = PathBuf::new();
    let n = cluster_node(cp, "e2e-schema", |env| {
        let gpus_file = env.dir().join("gpus.json");
        gpus::write_gpus_file(&gpus_file, 3).unwrap();
        events = env.dir().join("events.sock");
        let drivers = vec![
            DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 130"),
            // Shared GPUs (request policy) with a taint on an unhealthy one.
            DriverSpec::new(GPU, &guest("gpu_driver.wasm"))
                .extra("grants = [\"nvml\"]\ntaint_unhealthy = true\n")
                .config("sharing = {}\ncdi = { mode = \"base-spec\", kind = \"nvidia.com/gpu\" }"),
            // A partitionable card (0.2): counters, consumption, binding conditions.
            DriverSpec::new(PARTS, &guest("faulty_driver.wasm")).config("devices = 1\ninventory = \"partitioned\""),
        ];
        let tables = format!("[nvml.simulated]\ngpus = {gpus_file:?}\nevents_socket = {events:?}\n");
        (drivers, tables)
    })
    .await;
    n.node.kubelet.wait_for_plugin(GPU, START_TIMEOUT).await.unwrap();
    Injector::connect(&events).await.unwrap().xid(1, 79).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let slices = loop {
        let s: Vec<_> = [DRIVER, GPU, PARTS]
            .iter()
            .flat_map(|d| slices_of(cp, d, &n.name))
            .collect();
        let tainted = s
            .iter()
            .any(|x| x["spec"]["driver"] == GPU && x["spec"]["devices"][1]["taints"].is_array());
        if s.len() == 5 && tainted {
            break s;
        }
        assert!(Instant::now() < deadline, "slices: {s:#?}\n{}", n.node.host.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let parts: Vec<&serde_json::Value> = slices.iter().filter(|s| s["spec"]["driver"] == PARTS).collect();
    let counters = parts
        .iter()
        .find(|s| s["spec"]["sharedCounters"].is_array())
        .unwrap_or_else(|| panic!("a slice with the shared counters, stored: {parts:#?}"));
    assert!(
        counters["spec"]["devices"].is_null(),
        "counters in a slice of their own"
    );
    assert_eq!(counters["spec"]["sharedCounters"][0]["name"], "card-0");
    assert_eq!(
        counters["spec"]["sharedCounters"][0]["counters"]["memory"]["value"],
        "8Gi"
    );
    let devices = parts
        .iter()
        .find(|s| s["spec"]["devices"].is_array())
        .expect("a slice with the devices");
    let half = devices["spec"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "card-0-half-1")
        .unwrap_or_else(|| panic!("{devices:#}"));
    assert_eq!(half["consumesCounters"][0]["counterSet"], "card-0");
    assert_eq!(half["consumesCounters"][0]["counters"]["memory"]["value"], "4Gi");
    assert_eq!(half["bindingConditions"], serde_json::json!(["example.com/attached"]));
    assert_eq!(
        half["bindingFailureConditions"],
        serde_json::json!(["example.com/failed"])
    );
    assert_eq!(half["bindsToNode"], true);

    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = slices
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let path = dir.path().join(format!("slice-{i}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(s).unwrap()).unwrap();
            path
        })
        .collect();
    validate(&files);
}
