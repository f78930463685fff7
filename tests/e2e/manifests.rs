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

#[test]
fn deploy_manifests_and_the_guests_configmap_are_valid_kubernetes_1_37() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");

    let out = Command::new(binary())
        .args(["guest", "configmap"])
        .arg(guest("example_driver.wasm"))
        .arg(guest("gpu_driver.wasm"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("guests-configmap.yaml");
    std::fs::write(&cm, &out.stdout).unwrap();
    files.push(cm);
    validate(&files);

    // Past the 1 MiB limit: a clear refusal.
    let big = dir.path().join("big.wasm");
    let mut bytes = b"\0asm".to_vec();
    bytes.resize(900 << 10, 0);
    std::fs::write(&big, bytes).unwrap();
    let out = Command::new(binary())
        .args(["guest", "configmap"])
        .arg(&big)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 1048576"));
}

/// The `host.toml` key of a ConfigMap manifest (a `|` literal block).
fn host_toml(manifest: &str) -> String {
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "host.toml: |").skip(1);
    let first = lines.next().expect("host.toml block");
    let indent = first.len() - first.trim_start().len();
    std::iter::once(first)
        .chain(lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent))
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn deployed_config_is_accepted_by_the_host_and_the_daemonset_uses_rolling_update_mode() {
    let manifest = std::fs::read_to_string(deploy_dir().join("config.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(&path, host_toml(&manifest)).unwrap();
    let config = dra_wasm_host::config::Config::load(&path).unwrap_or_else(|e| panic!("deploy/config.yaml: {e}"));
    assert!(config.hot_swap.enabled);
    assert_eq!(config.hot_swap.probation_calls, 50);
    assert!(!config.drivers.is_empty());

    let ds = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).unwrap();
    assert!(ds.contains("- --rolling-update-uid=$(POD_UID)"), "{ds}");
    assert!(ds.contains("name: POD_UID") && ds.contains("fieldPath: metadata.uid"));
    assert!(ds.contains("maxSurge: 1"));
}

/// The GPU block that deploy/config.yaml keeps commented out (the worked
/// NVIDIA example) loads as it is once uncommented, policy included.
#[test]
fn the_commented_gpu_section_of_the_deployed_config_is_accepted() {
    let manifest = std::fs::read_to_string(deploy_dir().join("config.yaml")).unwrap();
    let toml = host_toml(&manifest);
    let (active, commented) = toml.split_once("Uncomment from here:").expect("the GPU block's marker");
    let gpu: String = commented
        .lines()
        .map(|l| l.trim_start().trim_start_matches('#').strip_prefix(' ').unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let active: String = active
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(&path, format!("{active}\n{gpu}\n")).unwrap();
    let config = dra_wasm_host::config::Config::load(&path).unwrap_or_else(|e| panic!("the GPU block: {e}\n{gpu}"));
    let d = config
        .drivers
        .iter()
        .find(|d| d.name == "gpu.example.com")
        .expect("the GPU driver");
    assert_eq!(d.policy.device_nodes.len(), 4);
    assert_eq!(d.policy.device_root, Path::new("/host"));
    assert!(d.policy.mount_host_paths[0].matches("/run/nvidia/driver/usr/lib64/libcuda.so.580.159.04"));
    let ds = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).unwrap();
    assert!(ds.contains("mountPath: /host/dev") && ds.contains("path: /dev"), "{ds}");

    // With both drivers.
    guest_memory_fits_the_daemonset(&config, &ds);
}

/// The networking example's config grants `net` on the NICs it names, and
/// its DaemonSet (host network, so both pods of an update share the metrics
/// port) runs in rolling-update mode.
#[test]
fn net_example_config_is_accepted_by_the_host() {
    let manifest = std::fs::read_to_string(deploy_dir().join("net-example.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(&path, host_toml(&manifest)).unwrap();
    let config = dra_wasm_host::config::Config::load(&path).unwrap_or_else(|e| panic!("deploy/net-example.yaml: {e}"));
    let driver = &config.drivers[0];
    let net = driver.net.as_ref().expect("a [drivers.net] section");
    assert_eq!(net.parents, ["eth1", "eth2"]);
    assert!(config.metrics_addr.is_some());
    assert!(manifest.contains("hostNetwork: true") && manifest.contains("hostPID: true"));
    assert!(
        manifest.contains("- --rolling-update-uid\n            - $(POD_UID)"),
        "{manifest}"
    );
    guest_memory_fits_the_daemonset(&config, &manifest);
}

/// The guests' worst-case memory (docs/operations.md: 40 MiB + the sum over
/// drivers of 2 × max_instances × memory_limit_mib) fits the DaemonSet's
/// memory limit: a spike traps a guest call instead of getting the whole
/// node agent killed.
fn guest_memory_fits_the_daemonset(config: &dra_wasm_host::config::Config, daemonset: &str) {
    let limit_mib: u64 = daemonset
        .lines()
        .skip_while(|l| l.trim() != "limits:")
        .find_map(|l| l.trim().strip_prefix("memory: "))
        .and_then(|m| m.strip_suffix("Mi"))
        .and_then(|m| m.parse().ok())
        .expect("the DaemonSet's memory limit, in Mi");
    let r = &config.runtime;
    let worst_mib = 40 + config.drivers.len() as u64 * 2 * r.max_instances as u64 * r.memory_limit_mib;
    assert!(
        worst_mib <= limit_mib,
        "{} driver(s) × 2 × {} instances × {} MiB + 40 MiB = {worst_mib} MiB, over the DaemonSet's {limit_mib} MiB",
        config.drivers.len(),
        r.max_instances,
        r.memory_limit_mib
    );
}

/// The slices the host published, as the real API server (tests/k8s)
/// accepted and stores them, also pass the upstream schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_resource_slices_are_valid_kubernetes_1_37() {
    const GPU: &str = "gpu.dra.dev";
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
        ];
        let tables = format!("[nvml.simulated]\ngpus = {gpus_file:?}\nevents_socket = {events:?}\n");
        (drivers, tables)
    })
    .await;
    n.node.kubelet.wait_for_plugin(GPU, START_TIMEOUT).await.unwrap();
    Injector::connect(&events).await.unwrap().xid(1, 79).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let slices = loop {
        let s: Vec<_> = [DRIVER, GPU].iter().flat_map(|d| slices_of(cp, d, &n.name)).collect();
        let tainted = s
            .iter()
            .any(|x| x["spec"]["driver"] == GPU && x["spec"]["devices"][1]["taints"].is_array());
        if s.len() == 3 && tainted {
            break s;
        }
        assert!(Instant::now() < deadline, "slices: {s:#?}\n{}", n.node.host.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
