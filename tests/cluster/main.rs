//! The host against the real control plane: kube-apiserver, etcd,
//! kube-scheduler and the resourceclaim controller at 1.37.2, built from Go
//! modules and started by `tests/k8s/up.sh`, with the chart
//! (`deploy/chart/dra-wasm-host`) installed by real Helm (values:
//! `tests/cluster/values.yaml`).
//!
//! The host runs as in the DaemonSet: claims from the API server, credentials
//! of the chart's ServiceAccount in a token bound to a Pod on the
//! host's Node, so RBAC and the admission policy are enforced for real.
//! Claims are allocated by the real scheduler. The kubelet side is the
//! kubelet's own plugin manager and DRA manager (k8s.io/kubernetes v1.37.2,
//! tests/peers/kubelet, `RealNode`), in `real_kubelet` and in every test here
//! but four, which keep the tonic test kubelet (`dra_test_support::kubelet`,
//! through `cluster_node`):
//! - calls the kubelet's code never sends: claims not allocated, of a replaced
//!   UID or missing (`unallocated_replaced_and_missing_claims_...`), and calls
//!   while the API server is down (`the_api_server_goes_away_...`: the DRA
//!   manager reads each claim from the API server before calling);
//! - a host's first publication (`slices_of_the_example_...`: generation 1;
//!   `a_restarted_host_...`: its creates): the kubelet's code deletes the
//!   node's slices when it starts, and the host publishes them again
//!   (generation 2), which these would race with.
//!
//! One control plane serves all tests of this binary (each test has its own
//! Nodes and namespaces); the outage test starts one of its own.

#[allow(dead_code, reason = "the e2e suite's helpers; this binary uses a part of them")]
#[path = "../e2e/common.rs"]
mod common;
mod real_kubelet;

use common::*;
use dra_test_support::claims::uid;
use dra_test_support::configmap::ConfigMapDir;
use dra_test_support::controlplane::{ControlPlane, HOST_NAMESPACE, HOST_SERVICE_ACCOUNT};
use dra_test_support::gpus::{self, Injector};
use dra_test_support::helm;
use dra_test_support::host::{DriverSpec, HostEnv};
use dra_test_support::kubelet::ClaimRef;
use dra_test_support::kubelet_peer::{self, KubeletPeer};
use dra_test_support::netlab::{self, Lab, is_root};
use real_kubelet::RealNode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const GPU: &str = "gpu.example.com";
const NET: &str = "net.example.com";
/// Long enough for the scheduler and controllers on a busy 2-core machine.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a test that needs root runs: as root yes; otherwise it fails
/// clearly, or is skipped loudly with `DRA_SKIP_ROOT_TESTS=1`.
fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("DRA_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        println!("SKIPPED cluster::{test}: needs root (DRA_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!("cluster::{test} needs root (device nodes, links); run as root or set DRA_SKIP_ROOT_TESTS=1 to skip");
}

fn example_driver(devices: u32) -> DriverSpec {
    DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config(&format!("devices = {devices}"))
}

/// The GPU guest on `n` simulated H100s, shared by memory, unhealthy GPUs tainted.
fn gpu_driver(dir: &Path, n: u32) -> (DriverSpec, gpus::Simulated) {
    let sim = gpus::Simulated::new(dir, n).unwrap();
    let spec = DriverSpec::new(GPU, &guest("gpu_driver.wasm"))
        .extra(&format!("taint_unhealthy = true\n{}", sim.driver_toml))
        .config("sharing = { defaultMemory = \"5Gi\", memoryStep = \"5Gi\" }");
    (spec, sim)
}

/// What a node shows when a test fails: the host's log, and where the
/// kubelet's own code is the node's kubelet, its events and log too.
trait Diagnose {
    fn diagnose(&self) -> String;
}

impl Diagnose for Node {
    fn diagnose(&self) -> String {
        format!("host log:\n{}", self.host.log())
    }
}

impl Diagnose for RealNode {
    fn diagnose(&self) -> String {
        self.context()
    }
}

/// Poll `check` until it gives a value; the panic names `what` and shows
/// the node's logs.
async fn until<T>(what: &str, node: &impl Diagnose, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out ({timeout:?}) waiting for {what}\n{}",
            node.diagnose()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first stored slice of `driver` on the node, once the host published it.
async fn published(cp: &ControlPlane, n: &ClusterNode, driver: &str) -> Value {
    until(&format!("{driver}'s slice"), &n.node, CLUSTER_TIMEOUT, || {
        slices_of(cp, driver, &n.name).pop()
    })
    .await
}

/// A namespace for one test, with its default ServiceAccount (Pods need it).
fn namespace(cp: &ControlPlane, name: &str) {
    cp.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}).to_string())
        .unwrap();
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    while cp.kubectl(&["get", "serviceaccount", "default", "-n", name]).is_err() {
        assert!(Instant::now() < deadline, "no default ServiceAccount in {name}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A Pod pinned to `node` by its hostname label (the scheduler still does
/// the placing and the allocating), with `claims` as (name in the pod,
/// `resourceClaimName` or `resourceClaimTemplateName`, the object's name).
fn pod(namespace: &str, name: &str, node: &str, claims: &[(&str, &str, &str)]) -> String {
    let resource_claims: Vec<Value> = claims
        .iter()
        .map(|(n, field, object)| json!({"name": n, *field: object}))
        .collect();
    let container_claims: Vec<Value> = claims.iter().map(|(n, _, _)| json!({"name": n})).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"claims": container_claims}}],
            "resourceClaims": resource_claims,
        },
    })
    .to_string()
}

/// A ResourceClaim with one request for `count` devices of `class`, with
/// optional capacity requests and opaque config parameters.
fn claim(
    namespace: &str,
    name: &str,
    class: &str,
    count: u32,
    capacity: Option<Value>,
    config: Option<(&str, Value)>,
) -> String {
    let mut exactly = json!({"deviceClassName": class, "allocationMode": "ExactCount", "count": count});
    if let Some(c) = capacity {
        exactly["capacity"] = json!({"requests": c});
    }
    let mut spec = json!({"devices": {"requests": [{"name": "dev", "exactly": exactly}]}});
    if let Some((driver, parameters)) = config {
        spec["devices"]["config"] = json!([{"opaque": {"driver": driver, "parameters": parameters}}]);
    }
    json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
    .to_string()
}

/// A ResourceClaimTemplate with one request for a device of `class`.
fn claim_template(namespace: &str, name: &str, class: &str) -> String {
    json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"spec": {"devices": {"requests": [{"name": "dev", "exactly": {"deviceClassName": class}}]}}},
    })
    .to_string()
}

/// Wait until the scheduler has found the Pod unschedulable (its
/// PodScheduled condition False, reason Unschedulable).
async fn unschedulable(cp: &ControlPlane, node: &impl Diagnose, namespace: &str, pod: &str) {
    let what = format!("the scheduler to find {namespace}/{pod} unschedulable");
    until(&what, node, CLUSTER_TIMEOUT, || {
        let p = cp.get(&["pod", pod, "-n", namespace]).ok()?;
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled")?
            .clone();
        (c["status"] == "False" && c["reason"] == "Unschedulable").then_some(())
    })
    .await;
}

/// The claim once the scheduler has allocated it; on a timeout the panic
/// says why the scheduler did not (the Pods' PodScheduled conditions).
async fn allocated(cp: &ControlPlane, node: &impl Diagnose, namespace: &str, name: &str) -> Value {
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    loop {
        if let Ok(c) = cp.get(&["resourceclaim", name, "-n", namespace])
            && c["status"]["allocation"].is_object()
        {
            return c;
        }
        if Instant::now() > deadline {
            let pods = cp.get(&["pods", "-n", namespace]).unwrap_or_default();
            let why: Vec<String> = pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}: {}", p["metadata"]["name"], p["status"]["conditions"]))
                .collect();
            panic!(
                "the scheduler did not allocate {namespace}/{name} in {CLUSTER_TIMEOUT:?}\npods: {why:#?}\n{}",
                node.diagnose()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn reference(claim: &Value) -> ClaimRef {
    let m = &claim["metadata"];
    ClaimRef::new(
        m["namespace"].as_str().unwrap(),
        m["name"].as_str().unwrap(),
        m["uid"].as_str().unwrap(),
    )
}

/// The devices the kubelet's DRA manager stored in its checkpoint for claim
/// `uid` and `driver`: those of the host's NodePrepareResources answer
/// (`PoolName`, `DeviceName`, `ShareID`, `CDIDeviceIDs`).
fn kubelet_devices(n: &RealNode, uid: &str, driver: &str) -> Vec<Value> {
    let checkpoint = kubelet_peer::checkpoint(&n.env.kubelet_root).unwrap();
    let claim = checkpoint
        .get(uid)
        .unwrap_or_else(|| panic!("claim {uid} not in the kubelet's checkpoint: {checkpoint:#?}"));
    claim["DriverState"][driver]["Devices"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no devices of {driver} for claim {uid}: {claim}"))
}

/// The published slice of `driver` on the node of the kubelet's own code.
async fn published_on(cp: &ControlPlane, n: &RealNode, driver: &str) -> Value {
    until(&format!("{driver}'s slice"), n, CLUSTER_TIMEOUT, || {
        slices_of(cp, driver, &n.name).pop()
    })
    .await
}

/// (driver, pool, device, shareID) of each allocation result.
fn results(claim: &Value) -> Vec<(String, String, String, Option<String>)> {
    claim["status"]["allocation"]["devices"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["driver"].as_str().unwrap().to_owned(),
                r["pool"].as_str().unwrap().to_owned(),
                r["device"].as_str().unwrap().to_owned(),
                r["shareID"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The inventory `guest validate` prints for the host's config: per driver,
/// device name → device.
fn inventory(env: &HostEnv) -> BTreeMap<String, BTreeMap<String, Value>> {
    let out = std::process::Command::new(binary())
        .args(["guest", "validate", "--config"])
        .arg(&env.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(driver, d)| {
            let devices = d["pools"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|p| p["devices"].as_array().unwrap().iter())
                .map(|dev| (dev["name"].as_str().unwrap().to_owned(), dev.clone()))
                .collect();
            (driver.clone(), devices)
        })
        .collect()
}

/// Every device of the stored slices, by name.
fn stored_devices(slices: &[Value]) -> BTreeMap<String, Value> {
    slices
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().unwrap().iter())
        .map(|d| (d["name"].as_str().unwrap().to_owned(), d.clone()))
        .collect()
}

// --- the chart ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_and_its_admission_policy_type_checks_without_warnings() {
    let cp = control_plane().await;
    // The shared set-up installed the chart with real Helm: the release is
    // deployed and every object it rendered exists in the API server.
    let kubeconfig = cp.kubeconfig.to_str().unwrap();
    let status = helm::run(
        &[
            "status",
            "dra-wasm-host",
            "-n",
            HOST_NAMESPACE,
            "--kubeconfig",
            kubeconfig,
            "-o",
            "json",
        ],
        None,
    )
    .unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["info"]["status"], "deployed", "{status}");
    let manifest = helm::run(
        &[
            "get",
            "manifest",
            "dra-wasm-host",
            "-n",
            HOST_NAMESPACE,
            "--kubeconfig",
            kubeconfig,
        ],
        None,
    )
    .unwrap();
    let objects = helm::yaml_to_json(&manifest).unwrap();
    assert!(objects.len() >= 12, "{objects:?}");
    for o in &objects {
        let kind = o["kind"].as_str().unwrap();
        let name = o["metadata"]["name"].as_str().unwrap();
        let mut args = vec!["get", kind, name, "-o", "name"];
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            args.extend_from_slice(&["-n", ns]);
        }
        cp.kubectl(&args).unwrap_or_else(|e| panic!("{kind}/{name}: {e}"));
    }
    // The workload examples in deploy/ (Pods and templates in `default`):
    // the API server accepts them (a server-side dry run, so no Pod
    // competes for devices).
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for file in ["example.yaml", "net-example.yaml"] {
        let path = deploy.join(file);
        cp.kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            path.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    // The API server compiles and type-checks the policy's CEL in the
    // background and reports it in status.typeChecking.
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    let policy = loop {
        let p = cp
            .get(&["validatingadmissionpolicy", "dra-wasm-host-resourceslices"])
            .unwrap();
        if p["status"]["observedGeneration"] == p["metadata"]["generation"] && p["status"]["typeChecking"].is_object() {
            break p;
        }
        assert!(Instant::now() < deadline, "no type checking reported: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let warnings = &policy["status"]["typeChecking"]["expressionWarnings"];
    assert!(
        warnings.is_null() || warnings.as_array().is_some_and(|w| w.is_empty()),
        "the admission policy's CEL has type warnings: {warnings}"
    );
    let conditions = policy["status"]["conditions"].as_array().cloned().unwrap_or_default();
    assert!(conditions.iter().all(|c| c["status"] != "False"), "{conditions:?}");
}

/// What an operator does with the chart, end to end: `helm install` with a
/// guest given as a file, a host run from exactly what was installed (the
/// rendered host.toml and the guests ConfigMap, at the paths the DaemonSet
/// mounts them, mapped into the test's directory as the kubelet maps
/// volumes) registers and publishes its slices; `helm upgrade` with a new
/// build of the guest reaches the host as the kubelet's ConfigMap volume
/// update does, and the host swaps it in without a restart. A control
/// plane of its own: the shared one has a release without guest files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_runs_from_what_helm_installed_and_helm_upgrade_swaps_its_guest() {
    use base64::Engine as _;
    const FAULTY: &str = "faulty.dra.dev";
    let b64 = base64::engine::general_purpose::STANDARD;
    let cp = tokio::task::block_in_place(ControlPlane::start).unwrap();
    let work = tempfile::tempdir().unwrap();
    let values = work.path().join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "hosts:\n  - name: main\n    drivers:\n      - name: {FAULTY}\n        guest: faulty.wasm\n        config:\n          devices: 2\n"
        ),
    )
    .unwrap();
    let guest_file = |build: &str| {
        let path = work.path().join(format!("{build}.b64"));
        std::fs::write(&path, b64.encode(std::fs::read(guest(build)).unwrap())).unwrap();
        format!("guests.files.faulty\\.wasm={}", path.display())
    };
    let kubeconfig = cp.kubeconfig.to_str().unwrap().to_owned();
    let chart = helm::chart_dir();
    let release = |verb: &str, extra: &[&str]| {
        let mut args = vec![
            verb,
            "dra-wasm-host",
            chart.to_str().unwrap(),
            "-n",
            HOST_NAMESPACE,
            "--kubeconfig",
            &kubeconfig,
        ];
        args.extend_from_slice(extra);
        helm::run(&args, None).unwrap_or_else(|e| panic!("{e:#}"))
    };
    let v1 = guest_file("faulty_driver.wasm");
    release(
        "install",
        &["--create-namespace", "-f", values.to_str().unwrap(), "--set-file", &v1],
    );

    // What the DaemonSet's pod would see.
    let config_map = cp
        .get(&["configmap", "dra-wasm-host-config", "-n", HOST_NAMESPACE])
        .unwrap();
    let host_toml = config_map["data"]["host.toml"].as_str().unwrap().to_owned();
    let guests = |cp: &ControlPlane| {
        let cm = cp
            .get(&["configmap", "dra-wasm-host-guests", "-n", HOST_NAMESPACE])
            .unwrap();
        b64.decode(cm["binaryData"]["faulty.wasm"].as_str().unwrap()).unwrap()
    };
    let node_name = "chart-node";
    cp.create_node(node_name).unwrap();
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    env.node_name = node_name.to_owned();
    let token = cp.host_kubeconfig(node_name, &env.dir().join("kubeconfig")).unwrap();
    env.use_kubeconfig(&token);
    env.env.push(("NODE_NAME".into(), node_name.into()));
    let guests_dir = env.dir().join("guests");
    let mut volume = ConfigMapDir::create(&guests_dir, &[("faulty.wasm", &guests(&cp))]).unwrap();
    // The pod's mounts, mapped into the test's directory; the probe and
    // metrics servers on free loopback ports instead of the pod's own IP.
    let local = host_toml
        .replace("\"/var/lib/kubelet\"", &format!("{:?}", env.kubelet_root))
        .replace("\"/var/run/cdi\"", &format!("{:?}", env.cdi_dir))
        .replace("\"/var/cache/dra-wasm-host\"", &format!("{:?}", env.cache_dir))
        .replace("/etc/dra-wasm-host/guests/", &format!("{}/", guests_dir.display()))
        .replace("0.0.0.0:51515", "127.0.0.1:0")
        .replace("0.0.0.0:9400", "127.0.0.1:0");
    assert_ne!(local, host_toml, "the rendered paths are the ones the DaemonSet mounts");
    std::fs::write(&env.config_path, &local).unwrap();
    // The kubelet's own plugin manager registers the host.
    let kubelet_log = env.dir().join("kubelet.log");
    let kubelet_kubeconfig = cp.kubelet_kubeconfig(node_name, env.dir()).unwrap();
    let kubelet = KubeletPeer::start(&env.kubelet_root, &kubelet_kubeconfig, node_name, &kubelet_log)
        .await
        .unwrap();
    let mut host = env.start(&binary()).unwrap();
    kubelet.wait_driver(FAULTY, START_TIMEOUT).await.unwrap_or_else(|e| {
        panic!(
            "{e:#}\nhost.toml:\n{local}\nkubelet events: {:#?}\nkubelet log:\n{}\nhost log:\n{}",
            kubelet.events(),
            kubelet.log(),
            host.log()
        )
    });
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    while slices_of(&cp, FAULTY, node_name).is_empty() {
        assert!(Instant::now() < deadline, "no slices published:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = host.pid();

    // A new build of the guest, through Helm, then the kubelet's volume update.
    let v2 = guest_file("faulty_next.wasm");
    release("upgrade", &["--reuse-values", "--set-file", &v2]);
    let new_guest = guests(&cp);
    assert_eq!(new_guest, std::fs::read(guest("faulty_next.wasm")).unwrap());
    volume.update(&[("faulty.wasm", &new_guest)]).unwrap();
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    while !host.log().contains("guest swapped") {
        assert!(Instant::now() < deadline, "no swap:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(host.log().contains("0.2.0"), "the new build serves:\n{}", host.log());
    assert!(host.try_status().unwrap().is_none(), "the host kept running");
    assert_eq!(host.pid(), pid);
}

// --- ResourceSlices -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_of_the_example_gpu_and_macvlan_guests_are_stored_as_the_inventory_and_owned_by_the_node() {
    if !need_root("slices_of_the_example_gpu_and_macvlan_guests_are_stored_as_the_inventory_and_owned_by_the_node") {
        return;
    }
    let cp = control_plane().await;
    let lab = Lab::new(2);
    let parents = lab.parents.clone();
    let n = cluster_node(cp, "cp-inventory", |env| {
        let dir = env.dir();
        let (gpu, sim) = gpu_driver(dir, 4);
        let granted: Vec<&str> = parents.iter().map(String::as_str).collect();
        let net = netlab::macvlan_driver(
            NET,
            &guest("macvlan_driver.wasm"),
            &granted,
            &netlab::parent_config(&parents),
        );
        (vec![example_driver(300), gpu, net], sim.tables)
    })
    .await;
    let inventory = inventory(&n.node.env);
    for (driver, slice_count) in [(DRIVER, 3), (GPU, 1), (NET, 1)] {
        let slices = until(&format!("{driver}'s slices"), &n.node, CLUSTER_TIMEOUT, || {
            let s = slices_of(cp, driver, &n.name);
            (s.len() == slice_count && stored_devices(&s).len() == inventory[driver].len()).then_some(s)
        })
        .await;
        for s in &slices {
            let owner = &s["metadata"]["ownerReferences"][0];
            assert_eq!(
                (&owner["apiVersion"], &owner["kind"], &owner["name"], &owner["uid"]),
                (&json!("v1"), &json!("Node"), &json!(n.name), &json!(n.uid)),
                "{driver}: {owner}"
            );
            assert_eq!(owner["controller"], true);
            assert_eq!(s["metadata"]["ownerReferences"].as_array().unwrap().len(), 1);
            let name = s["metadata"]["name"].as_str().unwrap();
            assert!(
                name.starts_with("0000") && name.contains(&format!("-{driver}-{}-", n.name)),
                "{name}"
            );
            assert_eq!(s["spec"]["pool"]["name"], n.name.as_str());
            assert_eq!(s["spec"]["pool"]["generation"], 1);
            assert_eq!(s["spec"]["pool"]["resourceSliceCount"], slice_count);
            assert_eq!(
                s["metadata"]["managedFields"][0]["manager"], "dra-wasm-host",
                "{driver}: written by the host itself"
            );
        }
        // What the API server stored (after its defaulting) is what the guest declared.
        let stored = stored_devices(&slices);
        for (name, declared) in &inventory[driver] {
            let got = &stored[name];
            for field in ["attributes", "capacity", "allowMultipleAllocations"] {
                assert_eq!(got.get(field), declared.get(field), "{driver} {name} {field}");
            }
        }
        if driver == DRIVER {
            let mut sizes: Vec<usize> = slices
                .iter()
                .map(|s| s["spec"]["devices"].as_array().unwrap().len())
                .collect();
            sizes.sort();
            assert_eq!(sizes, [44, 128, 128]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_edited_slice_is_repaired() {
    let cp = control_plane().await;
    let n = RealNode::start(cp, "cp-repair", |_| (vec![example_driver(4)], String::new())).await;
    let first = published_on(cp, &n, DRIVER).await;
    let name = first["metadata"]["name"].as_str().unwrap().to_owned();

    // Deleted (as the kubelet does after losing the plugin): created again.
    cp.kubectl(&["delete", "resourceslice", &name]).unwrap();
    let restored = until("the deleted slice restored", &n, CLUSTER_TIMEOUT, || {
        slices_of(cp, DRIVER, &n.name)
            .pop()
            .filter(|s| s["metadata"]["name"] != name.as_str())
    })
    .await;
    assert_eq!(restored["spec"]["devices"], first["spec"]["devices"]);

    // Edited by someone else: the host's watch sees it and writes it back.
    let restored_name = restored["metadata"]["name"].as_str().unwrap().to_owned();
    let mut edited = restored["spec"]["devices"].clone();
    edited[0]["attributes"]["model"] = json!({"string": "edited"});
    cp.kubectl(&[
        "patch",
        "resourceslice",
        &restored_name,
        "--type=merge",
        "-p",
        &json!({"spec": {"devices": edited}}).to_string(),
    ])
    .unwrap();
    until("the edited slice repaired", &n, CLUSTER_TIMEOUT, || {
        let s = slices_of(cp, DRIVER, &n.name).pop()?;
        (s["spec"]["devices"] == first["spec"]["devices"]).then_some(())
    })
    .await;
}

/// The writes to ResourceSlices that the host on `node` made since its
/// `from`-th request, as (verb, name).
fn slice_writes(cp: &ControlPlane, node: &str, from: usize) -> Vec<(String, String)> {
    cp.requests_of(node)
        .into_iter()
        .skip(from)
        .filter(|r| r.is_write() && r.resource == "resourceslices")
        .map(|r| (r.verb, r.name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_with_the_same_inventory_writes_nothing() {
    let cp = control_plane().await;
    let mut n = cluster_node(cp, "cp-restart", |_| (vec![example_driver(300)], String::new())).await;
    until("3 slices", &n.node, CLUSTER_TIMEOUT, || {
        (slices_of(cp, DRIVER, &n.name).len() == 3).then_some(())
    })
    .await;
    let creates = slice_writes(cp, &n.name, 0);
    assert_eq!(creates.len(), 3, "{creates:?}");
    assert!(creates.iter().all(|(verb, _)| verb == "create"), "{creates:?}");

    n.node.host.terminate(Duration::from_secs(20)).unwrap();
    let before = cp.requests_of(&n.name).len();
    n.node.restart().await;
    // The new process lists its slices (its first sync) ...
    until("the restarted host's first sync", &n.node, CLUSTER_TIMEOUT, || {
        cp.requests_of(&n.name)[before..]
            .iter()
            .any(|r| r.verb == "list" && r.resource == "resourceslices")
            .then_some(())
    })
    .await;
    // ... whose writes, if any, would follow at once: it makes none.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        slice_writes(cp, &n.name, before),
        [],
        "the same inventory again is not written"
    );
}

// --- the node restriction (RBAC and the admission policy) -------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_may_write_only_its_own_nodes_slices_and_claim_statuses() {
    let cp = control_plane().await;
    let a = RealNode::start(cp, "cp-node-a", |_| (vec![example_driver(2)], String::new())).await;
    let b = RealNode::start(cp, "cp-node-b", |_| (vec![example_driver(2)], String::new())).await;
    // Each host's own writes succeed: both nodes' slices are published.
    let slice_a = until("node A's slice", &a, CLUSTER_TIMEOUT, || {
        slices_of(cp, DRIVER, &a.name).pop()
    })
    .await;
    let slice_b = until("node B's slice", &b, CLUSTER_TIMEOUT, || {
        slices_of(cp, DRIVER, &b.name).pop()
    })
    .await;
    assert_eq!(slice_a["spec"]["nodeName"], a.name.as_str());

    // With node A's credentials, node B's slices cannot be created, changed or deleted.
    let as_a = |args: &[&str], stdin: Option<&str>| cp.kubectl_as(&a.host_kubeconfig, args, stdin);
    let mut forged = json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": "forged-for-b"},
        "spec": {"driver": DRIVER, "nodeName": b.name, "pool": {"name": b.name, "generation": 1, "resourceSliceCount": 1},
                 "devices": [{"name": "forged"}]},
    });
    let refused = as_a(&["create", "-f", "-"], Some(&forged.to_string()))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("may only modify ResourceSlices of that node") && refused.contains(&b.name),
        "{refused}"
    );
    let mut changed = slice_b.clone();
    changed["spec"]["devices"][0]["attributes"]["model"] = json!({"string": "forged"});
    let refused = as_a(&["replace", "-f", "-"], Some(&changed.to_string()))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("may only modify ResourceSlices of that node"),
        "{refused}"
    );
    let b_name = slice_b["metadata"]["name"].as_str().unwrap();
    let refused = as_a(&["delete", "resourceslice", b_name], None)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("may only modify ResourceSlices of that node"),
        "{refused}"
    );
    // The same object for its own node is fine (then removed again).
    forged["metadata"]["name"] = json!("own-node-a");
    forged["spec"]["nodeName"] = json!(a.name);
    forged["spec"]["driver"] = json!("other.example.com");
    forged["spec"]["pool"]["name"] = json!("other");
    as_a(&["create", "-f", "-"], Some(&forged.to_string())).unwrap();
    as_a(&["delete", "resourceslice", "own-node-a"], None).unwrap();

    // Claims allocated by the scheduler on node A and on node B.
    let ns = "cp-restriction";
    namespace(cp, ns);
    for (claim_name, node) in [("on-a", &a.name), ("on-b", &b.name)] {
        cp.apply(&claim(ns, claim_name, DRIVER, 1, None, None)).unwrap();
        cp.apply(&pod(ns, claim_name, node, &[("dev", "resourceClaimName", claim_name)]))
            .unwrap();
    }
    let on_a = allocated(cp, &a, ns, "on-a").await;
    let on_b = allocated(cp, &b, ns, "on-b").await;
    // The status write as the host makes it: a replace of the claim's status
    // (an update of `resourceclaims/status`, the only verb the chart grants).
    let with_status = |claim: &Value| {
        let (driver, pool, device, _) = results(claim).remove(0);
        let mut claim = claim.clone();
        claim["status"]["devices"] = json!([{"driver": driver, "pool": pool, "device": device,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Test", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]);
        claim.to_string()
    };
    let replace_status = |kubeconfig: &Path, claim: &Value| {
        cp.kubectl_as(
            kubeconfig,
            &["replace", "--subresource=status", "-f", "-"],
            Some(&with_status(claim)),
        )
    };
    let refused = replace_status(&a.host_kubeconfig, &on_b).unwrap_err().to_string();
    assert!(
        refused.contains("changing status.devices requires") && refused.contains("resourceclaims/driver"),
        "{refused}"
    );
    replace_status(&a.host_kubeconfig, &on_a).expect("node A's host may write its own claim's status");

    // Node B's host, with its own token, is allowed what A was refused.
    replace_status(&b.host_kubeconfig, &on_b).unwrap();
    let whoami = cp
        .kubectl_as(&a.host_kubeconfig, &["auth", "whoami", "-o", "json"], None)
        .unwrap();
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(
        whoami["status"]["userInfo"]["username"],
        format!("system:serviceaccount:{HOST_NAMESPACE}:{HOST_SERVICE_ACCOUNT}")
    );
    assert_eq!(
        whoami["status"]["userInfo"]["extra"]["authentication.kubernetes.io/node-name"][0],
        a.name.as_str()
    );
}

// --- the scheduler allocates, the host prepares --------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_allocates_from_our_slices_and_the_host_prepares_those_claims() {
    let cp = control_plane().await;
    let n = RealNode::start(cp, "cp-sched", |_| (vec![example_driver(4)], String::new())).await;
    published_on(cp, &n, DRIVER).await;
    let ns = "cp-sched";
    namespace(cp, ns);
    // A claim of its own and one from a template (the resourceclaim controller makes it).
    cp.apply(&claim(ns, "two-gpus", DRIVER, 2, None, None)).unwrap();
    cp.apply(&claim_template(ns, "one-gpu", DRIVER)).unwrap();
    cp.apply(&pod(
        ns,
        "workload",
        &n.name,
        &[
            ("two", "resourceClaimName", "two-gpus"),
            ("one", "resourceClaimTemplateName", "one-gpu"),
        ],
    ))
    .unwrap();
    let scheduled = until("the pod bound to the node", &n, CLUSTER_TIMEOUT, || {
        let p = cp.get(&["pod", "workload", "-n", ns]).ok()?;
        let generated = p["status"]["resourceClaimStatuses"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "one")?["resourceClaimName"]
            .as_str()?
            .to_owned();
        (p["spec"]["nodeName"] == n.name.as_str()).then_some((p, generated))
    })
    .await;
    let (pod_object, generated) = scheduled;
    let two = allocated(cp, &n, ns, "two-gpus").await;
    let one = allocated(cp, &n, ns, &generated).await;
    for c in [&two, &one] {
        let reserved = &c["status"]["reservedFor"][0];
        assert_eq!(reserved["name"], "workload");
        assert_eq!(reserved["uid"], pod_object["metadata"]["uid"]);
    }
    let mut devices: Vec<String> = [&two, &one]
        .iter()
        .flat_map(|c| results(c))
        .map(|(driver, pool, device, _)| {
            assert_eq!((driver.as_str(), pool.as_str()), (DRIVER, n.name.as_str()));
            device
        })
        .collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices.len(), 3, "three different devices: {devices:?}");

    // The kubelet's DRA manager prepares the Pod's claims (one claim error
    // fails its PrepareResources): the host reads them from the API server.
    let containers = n
        .kubelet()
        .prepare(ns, "workload")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources: {e:#}\n{}", n.context()));
    let mut handed = Vec::new();
    for c in [&two, &one] {
        let uid = c["metadata"]["uid"].as_str().unwrap();
        // What the kubelet stored from the host's answer for this claim.
        let answered = kubelet_devices(&n, uid, DRIVER);
        let mut prepared: Vec<String> = answered
            .iter()
            .map(|d| d["DeviceName"].as_str().unwrap().to_owned())
            .collect();
        prepared.sort();
        let mut allocated: Vec<String> = results(c).into_iter().map(|r| r.2).collect();
        allocated.sort();
        assert_eq!(prepared, allocated, "the host prepared what the scheduler allocated");
        for d in &answered {
            assert_eq!(d["PoolName"], n.name.as_str(), "{d}");
            let device = d["DeviceName"].as_str().unwrap();
            assert_eq!(
                d["CDIDeviceIDs"],
                json!([format!("k8s.{DRIVER}/device={uid}_{device}")]),
                "{d}"
            );
            handed.push(format!("k8s.{DRIVER}/device={uid}_{device}"));
        }
    }
    // The container gets those CDI IDs from the kubelet (GetResources).
    let mut got = containers["c"].clone();
    got.sort();
    handed.sort();
    assert_eq!(got, handed, "the CDI IDs the runtime is handed");
    n.kubelet()
        .unprepare(ns, "workload")
        .await
        .unwrap_or_else(|e| panic!("UnprepareResources: {e:#}\n{}", n.context()));
    let left = kubelet_peer::checkpoint(&n.env.kubelet_root).unwrap();
    assert!(left.is_empty(), "both claims unprepared: {left:#?}");
}

/// Through the tonic test kubelet: the kubelet's DRA manager checks a
/// claim's allocation, reservation and UID itself and never sends these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unallocated_replaced_and_missing_claims_are_each_their_own_error() {
    let cp = control_plane().await;
    let n = cluster_node(cp, "cp-claims", |_| (vec![example_driver(2)], String::new())).await;
    published(cp, &n, DRIVER).await;
    let ns = "cp-claims";
    namespace(cp, ns);
    // Allocated by the scheduler for a Pod; another claim no Pod uses (never allocated).
    cp.apply(&claim(ns, "allocated", DRIVER, 1, None, None)).unwrap();
    cp.apply(&pod(
        ns,
        "allocated",
        &n.name,
        &[("dev", "resourceClaimName", "allocated")],
    ))
    .unwrap();
    cp.apply(&claim(ns, "unallocated", DRIVER, 1, None, None)).unwrap();
    let allocated = allocated(cp, &n.node, ns, "allocated").await;
    let unallocated = cp.get(&["resourceclaim", "unallocated", "-n", ns]).unwrap();
    // The kubelet's reference to an older claim of the same name (deleted and created again).
    let replaced = ClaimRef::new(ns, "allocated", &uid(0xbad));
    let missing = ClaimRef::new(ns, "missing", &uid(0xbad + 1));
    let answer = n
        .node
        .plugin
        .prepare(&[
            reference(&allocated),
            reference(&unallocated),
            replaced.clone(),
            missing.clone(),
        ])
        .await
        .unwrap();
    assert_eq!(answer.len(), 4, "one entry per claim");
    assert_eq!(answer[allocated["metadata"]["uid"].as_str().unwrap()].error, "");
    let error = |uid: &str| answer[uid].error.clone();
    let e = error(unallocated["metadata"]["uid"].as_str().unwrap());
    assert!(e.contains("not allocated"), "{e}");
    let e = error(&replaced.uid);
    assert!(e.contains("got replaced"), "{e}");
    let e = error(&missing.uid);
    assert!(e.contains("not found"), "{e}");
}

/// The DeviceClasses of the chart's GPU example select the H100 the GPU
/// guest publishes (the simulated one is docs/gpu.md's H100 80GB: 81559Mi,
/// compute capability 9.0), as the real scheduler evaluates their CEL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gpu_examples_device_classes_select_an_h100() {
    if !need_root("the_gpu_examples_device_classes_select_an_h100") {
        return;
    }
    let cp = control_plane().await;
    let example = helm::chart_dir().join("examples/gpu.yaml");
    let rendered = helm::template(&["-f", example.to_str().unwrap()]).unwrap();
    let all = helm::all_of(&rendered, "DeviceClass");
    // The MIG class selects partitions, which a GPU without MIG mode has
    // none of: the scheduler test of MIG allocates through the same class
    // (tests/cluster/values.yaml holds it, checked equal here).
    let (mig, classes): (Vec<_>, Vec<_>) = all.into_iter().partition(|c| {
        c["spec"]["selectors"][0]["cel"]["expression"]
            .as_str()
            .is_some_and(|e| e.contains("'mig'"))
    });
    let tested: Value = helm::yaml_to_json(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster/values.yaml"))
            .unwrap(),
    )
    .unwrap()
    .remove(0);
    let tested_mig = tested["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["drivers"].as_array().into_iter().flatten())
        .flat_map(|d| d["deviceClasses"].as_array().into_iter().flatten())
        .find(|c| c["name"] == "mig.gpu.example.com")
        .expect("the cluster values' MIG class");
    assert_eq!(mig.len(), 1, "{mig:?}");
    assert_eq!(
        mig[0]["spec"]["selectors"][0]["cel"]["expression"], tested_mig["expression"],
        "the example's MIG class is the one the MIG scheduler test allocates through"
    );
    assert!(classes.len() >= 2, "{classes:?}");
    let n = RealNode::start(cp, "cp-h100", |env| {
        let (spec, sim) = gpu_driver(env.dir(), 1);
        (vec![spec], sim.tables)
    })
    .await;
    published_on(cp, &n, GPU).await;
    let ns = "cp-h100";
    namespace(cp, ns);
    for (i, class) in classes.iter().enumerate() {
        // Under a name of the test's own: the release owns the chart's classes.
        let name = format!("example-{}", class["metadata"]["name"].as_str().unwrap());
        let mut class = (*class).clone();
        class["metadata"] = json!({"name": name});
        cp.apply(&class.to_string()).unwrap();
        let claim_name = format!("by-class-{i}");
        cp.apply(&claim(ns, &claim_name, &name, 1, None, None)).unwrap();
        cp.apply(&pod(
            ns,
            &claim_name,
            &n.name,
            &[("gpu", "resourceClaimName", &claim_name)],
        ))
        .unwrap();
        let c = allocated(cp, &n, ns, &claim_name).await;
        // Each claim gets a share (the 5Gi default) of the one GPU.
        assert_eq!(results(&c).remove(0).2, "gpu-0", "{name} selects the H100: {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_claims_share_one_gpu_through_consumable_capacity() {
    if !need_root("two_claims_share_one_gpu_through_consumable_capacity") {
        return;
    }
    let cp = control_plane().await;
    let n = RealNode::start(cp, "cp-share", |env| {
        let dir = env.dir();
        let (spec, sim) = gpu_driver(dir, 1);
        (vec![spec], sim.tables)
    })
    .await;
    published_on(cp, &n, GPU).await;
    let ns = "cp-share";
    namespace(cp, ns);
    for name in ["share-a", "share-b"] {
        cp.apply(&claim(ns, name, GPU, 1, Some(json!({"memory": "10Gi"})), None))
            .unwrap();
        cp.apply(&pod(ns, name, &n.name, &[("gpu", "resourceClaimName", name)]))
            .unwrap();
    }
    let a = allocated(cp, &n, ns, "share-a").await;
    let b = allocated(cp, &n, ns, "share-b").await;
    let (ra, rb) = (results(&a).remove(0), results(&b).remove(0));
    assert_eq!(
        (ra.2.as_str(), rb.2.as_str()),
        ("gpu-0", "gpu-0"),
        "one GPU, two claims"
    );
    let (share_a, share_b) = (ra.3.expect("a shareID"), rb.3.expect("a shareID"));
    assert_ne!(share_a, share_b);
    assert_eq!(
        a["status"]["allocation"]["devices"]["results"][0]["consumedCapacity"]["memory"],
        "10Gi"
    );

    // The kubelet's DRA manager prepares each Pod (a claim error fails it).
    for (pod, claim, share) in [("share-a", &a, &share_a), ("share-b", &b, &share_b)] {
        let containers = n
            .kubelet()
            .prepare(ns, pod)
            .await
            .unwrap_or_else(|e| panic!("PrepareResources of {pod}: {e:#}\n{}", n.context()));
        let uid = claim["metadata"]["uid"].as_str().unwrap();
        // What the kubelet stored from the host's answer.
        let d = kubelet_devices(&n, uid, GPU);
        assert_eq!(d[0]["ShareID"], share.as_str(), "the shareID reaches the host: {d:?}");
        let ids = d[0]["CDIDeviceIDs"].as_array().unwrap();
        assert!(
            ids[0].as_str().unwrap().ends_with(&format!("_gpu-0_{share}")),
            "{ids:?}"
        );
        assert_eq!(json!(containers["c"]), json!(ids), "the CDI IDs the runtime is handed");
        let spec_path = n.env.cdi_dir.join(format!("k8s.{GPU}-device_{uid}.json"));
        let spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
        let env = spec["devices"][0]["containerEdits"]["env"].to_string();
        assert!(env.contains("=10240M"), "the share's memory limit: {env}");
    }
}

/// A claim for one MIG partition of profile `profile` (any placement), of
/// the class of MIG partitions (tests/cluster/values.yaml).
fn mig_claim(namespace: &str, name: &str, profile: &str) -> String {
    let expression = format!("device.attributes['{GPU}'].profile == '{profile}'");
    json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": [{"name": "mig", "exactly": {
            "deviceClassName": format!("mig.{GPU}"),
            "selectors": [{"cel": {"expression": expression}}],
        }}]}},
    })
    .to_string()
}

/// One simulated H100 with MIG mode on: the real scheduler allocates its
/// partitions from our slices by their counters. A 4g.40gb (memory slices
/// 0-3) and a 3g.40gb (only placeable at 4-7 then) both fit; a 1g.10gb
/// on top would exceed the GPU's memory slices and is not allocated. The
/// kubelet's DRA manager prepares the two, each getting the MIG device
/// prepare made; unprepare destroys them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_allocates_mig_partitions_within_the_gpus_counters() {
    if !need_root("the_scheduler_allocates_mig_partitions_within_the_gpus_counters") {
        return;
    }
    let cp = control_plane().await;
    let n = RealNode::start(cp, "cp-mig", |env| {
        let sim = gpus::Simulated::with(env.dir(), 1, |_| json!({"migEnabled": true})).unwrap();
        let spec = DriverSpec::new(GPU, &guest("gpu_driver.wasm")).extra(&sim.driver_toml);
        (vec![spec], sim.tables)
    })
    .await;
    // The counters, in a slice of their own, and the partitions consuming them.
    let counters = until("the GPU's counter set in a slice", &n, CLUSTER_TIMEOUT, || {
        slices_of(cp, GPU, &n.name)
            .into_iter()
            .find_map(|s| s["spec"]["sharedCounters"].as_array().cloned())
    })
    .await;
    assert_eq!(counters[0]["name"], "gpu-0", "{counters:?}");
    assert_eq!(counters[0]["counters"].as_object().unwrap().len(), 9);
    let devices = until("the GPU's partitions in a slice", &n, CLUSTER_TIMEOUT, || {
        let all: Vec<Value> = slices_of(cp, GPU, &n.name)
            .into_iter()
            .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
            .collect();
        (all.len() == 19).then_some(all)
    })
    .await;
    let part = devices.iter().find(|d| d["name"] == "gpu-0-mig-1g10gb-3").unwrap();
    assert_eq!(part["consumesCounters"][0]["counterSet"], "gpu-0", "{part}");

    let ns = "cp-mig";
    namespace(cp, ns);
    for (name, profile) in [("four", "4g.40gb"), ("three", "3g.40gb")] {
        cp.apply(&mig_claim(ns, name, profile)).unwrap();
        cp.apply(&pod(ns, name, &n.name, &[("gpu", "resourceClaimName", name)]))
            .unwrap();
    }
    let four = allocated(cp, &n, ns, "four").await;
    let three = allocated(cp, &n, ns, "three").await;
    assert_eq!(results(&four)[0].2, "gpu-0-mig-4g40gb-0");
    assert_eq!(results(&three)[0].2, "gpu-0-mig-3g40gb-4", "the placement left");

    // Every memory slice is taken: one more partition exceeds the counters.
    cp.apply(&mig_claim(ns, "one-more", "1g.10gb")).unwrap();
    cp.apply(&pod(
        ns,
        "one-more",
        &n.name,
        &[("gpu", "resourceClaimName", "one-more")],
    ))
    .unwrap();
    unschedulable(cp, &n, ns, "one-more").await;
    let one_more = cp.get(&["resourceclaim", "one-more", "-n", ns]).unwrap();
    assert!(one_more["status"]["allocation"].is_null(), "{one_more}");

    // Prepared by the kubelet's DRA manager: each gets a MIG device of its own.
    let mut uuids = Vec::new();
    for (pod, claim) in [("four", &four), ("three", &three)] {
        n.kubelet()
            .prepare(ns, pod)
            .await
            .unwrap_or_else(|e| panic!("PrepareResources of {pod}: {e:#}\n{}", n.context()));
        let uid = claim["metadata"]["uid"].as_str().unwrap();
        let spec_path = n.env.cdi_dir.join(format!("k8s.{GPU}-device_{uid}.json"));
        let spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
        let env = &spec["devices"][0]["containerEdits"]["env"];
        let uuid = env
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e.as_str()?.split_once("_UUID=MIG-").map(|(_, u)| u.to_owned()))
            .unwrap_or_else(|| panic!("no MIG UUID for {pod}: {env}"));
        uuids.push(uuid);
    }
    assert_ne!(uuids[0], uuids[1]);
    for pod in ["four", "three"] {
        n.kubelet()
            .unprepare(ns, pod)
            .await
            .unwrap_or_else(|e| panic!("UnprepareResources of {pod}: {e:#}\n{}", n.context()));
    }
    let destroyed = n.host.log().matches("simulated MIG device destroyed").count();
    assert_eq!(destroyed, 2, "{}", n.context());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_gpu_is_tainted_and_the_scheduler_leaves_it_alone() {
    if !need_root("an_unhealthy_gpu_is_tainted_and_the_scheduler_leaves_it_alone") {
        return;
    }
    let cp = control_plane().await;
    let mut events = None;
    let n = RealNode::start(cp, "cp-taint", |env| {
        let dir = env.dir();
        let (spec, sim) = gpu_driver(dir, 2);
        events = Some(sim.events.clone());
        (vec![spec], sim.tables)
    })
    .await;
    published_on(cp, &n, GPU).await;
    let mut inject = Injector::connect(&events.unwrap()).await.unwrap();
    let before = cp.requests_of(&n.name).len();
    inject.xid(0, 79).await.unwrap();
    let slice = until("gpu-0 tainted in the stored slice", &n, CLUSTER_TIMEOUT, || {
        let s = slices_of(cp, GPU, &n.name).pop()?;
        s["spec"]["devices"][0]["taints"].is_array().then_some(s)
    })
    .await;
    assert_eq!(slice["spec"]["devices"][0]["name"], "gpu-0");
    assert_eq!(slice["spec"]["devices"][0]["taints"][0]["effect"], "NoSchedule");
    assert!(slice["spec"]["devices"][1]["taints"].is_null());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let name = slice["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(
        slice_writes(cp, &n.name, before),
        [("update".to_owned(), name)],
        "one update of the changed slice, nothing else"
    );

    let ns = "cp-taint";
    namespace(cp, ns);
    // Two whole GPUs cannot be had while one is tainted ...
    cp.apply(&claim(ns, "both", GPU, 2, None, None)).unwrap();
    cp.apply(&pod(ns, "both", &n.name, &[("gpu", "resourceClaimName", "both")]))
        .unwrap();
    unschedulable(cp, &n, ns, "both").await;
    let both = cp.get(&["resourceclaim", "both", "-n", ns]).unwrap();
    assert!(both["status"]["allocation"].is_null(), "{both}");
    // ... and one GPU is the healthy one.
    cp.apply(&claim(ns, "one", GPU, 1, None, None)).unwrap();
    cp.apply(&pod(ns, "one", &n.name, &[("gpu", "resourceClaimName", "one")]))
        .unwrap();
    let one = allocated(cp, &n, ns, "one").await;
    assert_eq!(results(&one)[0].2, "gpu-1");
}

// --- status.devices and Events -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macvlan_network_data_written_by_the_host_is_what_the_api_server_stores() {
    if !need_root("macvlan_network_data_written_by_the_host_is_what_the_api_server_stores") {
        return;
    }
    let cp = control_plane().await;
    let lab = Lab::new(1);
    let parents = lab.parents.clone();
    let n = RealNode::start(cp, "cp-net", |_| {
        let granted: Vec<&str> = parents.iter().map(String::as_str).collect();
        let spec = netlab::macvlan_driver(
            NET,
            &guest("macvlan_driver.wasm"),
            &granted,
            &netlab::parent_config(&parents),
        );
        (vec![spec], String::new())
    })
    .await;
    published_on(cp, &n, NET).await;
    let ns = "cp-net";
    namespace(cp, ns);
    cp.apply(&claim(
        ns,
        "nic",
        "macvlan.net.example.com",
        1,
        Some(json!({"bandwidth": "100M"})),
        None,
    ))
    .unwrap();
    cp.apply(&pod(ns, "nic", &n.name, &[("nic", "resourceClaimName", "nic")]))
        .unwrap();
    let c = allocated(cp, &n, ns, "nic").await;
    // The kubelet's DRA manager prepares the Pod (a claim error fails it).
    n.kubelet()
        .prepare(ns, "nic")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources: {e:#}\n{}", n.context()));
    let stored = until("status.devices stored", &n, CLUSTER_TIMEOUT, || {
        let c = cp.get(&["resourceclaim", "nic", "-n", ns]).ok()?;
        c["status"]["devices"].get(0).cloned().map(|d| (c, d))
    })
    .await;
    let (object, device) = stored;
    let (driver, pool, name, share) = results(&c).remove(0);
    assert_eq!(
        (device["driver"].as_str(), device["pool"].as_str()),
        (Some(driver.as_str()), Some(pool.as_str()))
    );
    assert_eq!(device["device"], name.as_str());
    assert_eq!(device["shareID"].as_str(), share.as_deref());
    let net = &device["networkData"];
    assert!(net["interfaceName"].is_string(), "{device}");
    let ip = net["ips"][0].as_str().unwrap_or_default();
    assert!(
        ip.starts_with("192.0.2."),
        "an address of the parent's subnet: {device}"
    );
    assert!(net["hardwareAddress"].is_string(), "{device}");
    assert_eq!(device["conditions"][0]["type"], "Ready");
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["subresource"] == "status")
        .map(|f| f["manager"].as_str().unwrap())
        .collect();
    assert!(managers.contains(&"dra-wasm-host"), "{managers:?}");

    // Unprepare removes the host's entry again.
    n.kubelet()
        .unprepare(ns, "nic")
        .await
        .unwrap_or_else(|e| panic!("UnprepareResources: {e:#}\n{}", n.context()));
    until("status.devices removed", &n, CLUSTER_TIMEOUT, || {
        let c = cp.get(&["resourceclaim", "nic", "-n", ns]).ok()?;
        c["status"]["devices"]
            .as_array()
            .is_none_or(|d| d.is_empty())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prepare_is_a_warning_event_on_the_claim() {
    let cp = control_plane().await;
    let n = RealNode::start(cp, "cp-events", |_| (vec![example_driver(2)], String::new())).await;
    published_on(cp, &n, DRIVER).await;
    let ns = "cp-events";
    namespace(cp, ns);
    // A config the example guest refuses: time slicing settings for space partitioning.
    let bad = json!({"sharing": {"strategy": "SpacePartitioning", "timeSlicing": {"interval": "Long"}}});
    cp.apply(&claim(ns, "bad-config", DRIVER, 1, None, Some((DRIVER, bad))))
        .unwrap();
    cp.apply(&pod(
        ns,
        "bad-config",
        &n.name,
        &[("dev", "resourceClaimName", "bad-config")],
    ))
    .unwrap();
    let c = allocated(cp, &n, ns, "bad-config").await;
    let uid = c["metadata"]["uid"].as_str().unwrap().to_owned();
    // The kubelet's DRA manager fails the Pod's PrepareResources with the
    // claim's error from the host's answer.
    let error = match n.kubelet().prepare(ns, "bad-config").await {
        Ok(containers) => panic!("PrepareResources succeeded: {containers:?}\n{}", n.context()),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("NodePrepareResources failed for ResourceClaim bad-config") && error.contains("timeSlicing"),
        "{error}"
    );
    let event = until("the Warning Event", &n, CLUSTER_TIMEOUT, || {
        let list = cp.get(&["events", "-n", ns]).ok()?;
        list["items"]
            .as_array()?
            .iter()
            .find(|e| e["involvedObject"]["uid"] == uid.as_str())
            .cloned()
    })
    .await;
    let o = &event["involvedObject"];
    assert_eq!(o["kind"], "ResourceClaim");
    assert_eq!(o["apiVersion"], "resource.k8s.io/v1");
    assert_eq!(
        (o["namespace"].as_str(), o["name"].as_str()),
        (Some(ns), Some("bad-config"))
    );
    assert_eq!(event["type"], "Warning");
    assert!(event["message"].as_str().unwrap().contains("timeSlicing"), "{event}");
    assert_eq!(event["source"]["host"], n.name.as_str());
}

// --- the API server goes away --------------------------------------------------

/// Through the tonic test kubelet: the kubelet's DRA manager reads each
/// claim from the API server before it calls the host, so it cannot call
/// during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_goes_away_and_comes_back() {
    // A control plane of its own: this test stops it.
    let cp = tokio::task::block_in_place(|| {
        let cp = ControlPlane::start().unwrap();
        cp.install_chart().unwrap();
        cp
    });
    let n = cluster_node(&cp, "cp-outage", |_| (vec![example_driver(2)], String::new())).await;
    published(&cp, &n, DRIVER).await;
    let ns = "cp-outage";
    namespace(&cp, ns);
    cp.apply(&claim(ns, "before", DRIVER, 1, None, None)).unwrap();
    cp.apply(&pod(ns, "before", &n.name, &[("dev", "resourceClaimName", "before")]))
        .unwrap();
    let before = allocated(&cp, &n.node, ns, "before").await;
    let before_uid = before["metadata"]["uid"].as_str().unwrap().to_owned();
    let first = n.node.plugin.prepare(&[reference(&before)]).await.unwrap();
    assert_eq!(first[&before_uid].error, "");

    tokio::task::block_in_place(|| cp.stop_api_server()).unwrap();
    // Meanwhile: a claim in the checkpoint is answered from it; a new one
    // fails with an error that says why; the host stays up.
    let again = n.node.plugin.prepare(&[reference(&before)]).await.unwrap();
    assert_eq!(again[&before_uid].error, "");
    assert_eq!(again[&before_uid].devices, first[&before_uid].devices);
    let unknown = ClaimRef::new(ns, "during", &uid(0xdead));
    let during = n.node.plugin.prepare(std::slice::from_ref(&unknown)).await.unwrap();
    let error = &during[&unknown.uid].error;
    assert!(
        error.contains("API server") || error.contains("connect"),
        "names what failed: {error}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut n = n;
    assert!(
        n.node.host.try_status().unwrap().is_none(),
        "the host keeps running:\n{}",
        n.node.host.log()
    );

    tokio::task::block_in_place(|| cp.start_api_server()).unwrap();
    // Afterwards the host's slice watch is back: a deleted slice is restored.
    let slice = until("the slice after the outage", &n.node, CLUSTER_TIMEOUT, || {
        slices_of(&cp, DRIVER, &n.name).pop()
    })
    .await;
    let name = slice["metadata"]["name"].as_str().unwrap().to_owned();
    cp.kubectl(&["delete", "resourceslice", &name]).unwrap();
    until("the slice restored after the outage", &n.node, CLUSTER_TIMEOUT, || {
        slices_of(&cp, DRIVER, &n.name)
            .pop()
            .filter(|s| s["metadata"]["name"] != name.as_str())
    })
    .await;
    // The claim prepared before is still unprepared normally.
    let unprepared = n.node.plugin.unprepare(&[reference(&before)]).await.unwrap();
    assert_eq!(unprepared[&before_uid], "");
    assert!(
        n.node.host.try_status().unwrap().is_none(),
        "the host keeps running:\n{}",
        n.node.host.log()
    );
}
