//! The kubelet's own DRA code drives the host: `tests/peers/kubelet`, the
//! plugin manager (`pkg/kubelet/pluginmanager`) and DRA manager
//! (`pkg/kubelet/cm/dra`, with the DRA plugin manager and client of
//! `pkg/kubelet/cm/dra/plugin` under it) of k8s.io/kubernetes v1.37.2,
//! started as the kubelet starts them, on the host's kubelet root. Pods and
//! claims are real objects of the shared control plane, claims allocated by
//! the real scheduler; the peer reads them as the kubelet does, with a
//! kubelet's credentials (`system:node:<name>`), so the Node authorizer
//! decides what it may read and delete.
//!
//! The CDI device IDs the DRA manager hands the runtime (`GetResources`)
//! are injected by the CDI library as containerd does (`cdi-inject`,
//! tests/peers/go/cdi) and the OCI spec is checked. No test kubelet runs on
//! these nodes: the peer is the node's only kubelet.

use super::*;
use dra_test_support::cdi;
use dra_test_support::host::{HostEnv, HostProcess, http_get};
use dra_test_support::kubelet_peer::KubeletPeer;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The methods of the DRA service, as the host's metrics name them.
const PREPARE: &str = "NodePrepareResources";
const UNPREPARE: &str = "NodeUnprepareResources";

/// `cdi-inject`, built by tests/peers/go/build.sh (as the e2e tests build it).
fn cdi_inject() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubelet-peer-go");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/go/build.sh");
            let run = std::process::Command::new("bash")
                .arg(&script)
                .arg(&out)
                .output()
                .map_err(|e| e.to_string())?;
            if !run.status.success() {
                return Err(String::from_utf8_lossy(&run.stderr).into_owned());
            }
            Ok(out.join("cdi-inject"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("tests/peers/go/build.sh failed: {e}"))
}

/// A Node with a host on it and the kubelet's own code as its kubelet.
pub(super) struct RealNode {
    pub(super) name: String,
    /// The host's credentials (the chart's ServiceAccount, bound to this Node).
    pub(super) host_kubeconfig: PathBuf,
    pub(super) env: HostEnv,
    pub(super) host: HostProcess,
    kubelet: Option<KubeletPeer>,
    drivers: Vec<DriverSpec>,
    runtime: String,
    tables: String,
    metrics_port: u16,
}

impl RealNode {
    /// Node `name`, a host with the drivers `setup` returns (and metrics),
    /// then the kubelet peer, which must register every driver.
    pub(super) async fn start(
        cp: &ControlPlane,
        name: &str,
        setup: impl FnOnce(&mut HostEnv) -> (Vec<DriverSpec>, String),
    ) -> RealNode {
        Self::start_with(cp, name, &[], "", setup).await
    }

    /// [`Self::start`], with extra arguments of the host's `run` and the body
    /// of its config's `[runtime]` table.
    async fn start_with(
        cp: &ControlPlane,
        name: &str,
        args: &[&str],
        runtime: &str,
        setup: impl FnOnce(&mut HostEnv) -> (Vec<DriverSpec>, String),
    ) -> RealNode {
        cp.create_node(name).unwrap();
        let mut env = HostEnv::new(&cache_dir()).unwrap();
        env.node_name = name.to_owned();
        let kubeconfig = cp.host_kubeconfig(name, &env.dir().join("kubeconfig")).unwrap();
        env.use_kubeconfig(&kubeconfig);
        let metrics_port = env.enable_metrics().unwrap();
        let (drivers, tables) = setup(&mut env);
        env.write_config_with(&drivers, runtime, &tables).unwrap();
        let host = env.start_with_args(&binary(), args).unwrap();
        let mut node = RealNode {
            name: name.to_owned(),
            host_kubeconfig: kubeconfig,
            env,
            host,
            kubelet: None,
            drivers,
            runtime: runtime.to_owned(),
            tables,
            metrics_port,
        };
        node.start_kubelet(cp).await;
        node
    }

    pub(super) fn kubelet(&self) -> &KubeletPeer {
        self.kubelet.as_ref().expect("the kubelet peer runs")
    }

    /// `kill -9` the host and start it again on the same state.
    fn restart_host(&mut self) {
        self.host.kill9().unwrap();
        self.env
            .write_config_with(&self.drivers, &self.runtime, &self.tables)
            .unwrap();
        self.host = self.env.start(&binary()).unwrap();
    }

    /// Start the kubelet peer on the node's kubelet root and wait until its
    /// DRA plugin manager has every driver and its start-up wipe of the
    /// node's ResourceSlices is done (what a test sees of the slices from
    /// then on is what the host published again).
    async fn start_kubelet(&mut self, cp: &ControlPlane) {
        let log = self.env.dir().join("kubelet.log");
        let wiped = format!(
            "\"Deleted ResourceSlices\" logger=\"DRA registration handler.startup\" fieldSelector=\"spec.nodeName={}\"",
            self.name
        );
        let wipes_before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(&wiped)
            .count();
        let kubeconfig = cp.kubelet_kubeconfig(&self.name, self.env.dir()).unwrap();
        let peer = KubeletPeer::start(&self.env.kubelet_root, &kubeconfig, &self.name, &log)
            .await
            .unwrap();
        for d in &self.drivers {
            if let Err(e) = peer.wait_driver(&d.name, START_TIMEOUT).await {
                panic!(
                    "the kubelet's plugin manager did not register {}: {e:#}\nevents: {:#?}\nkubelet log:\n{}\nhost log:\n{}",
                    d.name,
                    peer.events(),
                    tail(&peer.log()),
                    self.host.log()
                );
            }
        }
        self.kubelet = Some(peer);
        self.until("the kubelet's start-up wipe of the node's slices", || {
            (self.kubelet().log().matches(&wiped).count() > wipes_before).then_some(())
        })
        .await;
    }

    /// What to show when something fails: the peer's events and both logs.
    pub(super) fn context(&self) -> String {
        let (events, log) = match &self.kubelet {
            Some(k) => (format!("{:#?}", k.events()), tail(&k.log())),
            None => ("(no kubelet)".into(), String::new()),
        };
        format!(
            "kubelet events: {events}\nkubelet log:\n{log}\nhost log:\n{}",
            tail(&self.host.log())
        )
    }

    /// How many `method` calls for `driver` the host answered OK (its
    /// `dra_grpc_operations_duration_seconds` histogram, the kubelet's own).
    async fn calls(&self, driver: &str, method: &str) -> u64 {
        let text = http_get(self.metrics_port, "/metrics").await.unwrap();
        let series = format!(
            "dra_grpc_operations_duration_seconds_count{{driver_name=\"{driver}\",method_name=\"/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/{method}\",grpc_status_code=\"OK\"}}"
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
    }

    /// Poll until `check` gives a value; the panic shows the context.
    pub(super) async fn until<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out ({CLUSTER_TIMEOUT:?}) waiting for {what}\n{}",
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The CDI spec files in the host's CDI directory.
    fn cdi_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.env.cdi_dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl RealNode {
    /// The errors the kubelet's code logged (klog's `E` lines), but those
    /// matching one of `expected`.
    fn kubelet_errors(&self, expected: &[&str]) -> Vec<String> {
        self.kubelet()
            .log()
            .lines()
            .filter(|l| l.starts_with('E') && l[1..].starts_with(|c: char| c.is_ascii_digit()))
            .filter(|l| !expected.iter().any(|e| l.contains(e)))
            .map(str::to_owned)
            .collect()
    }

    /// Each CDI spec file with its modification time.
    fn cdi_mtimes(&self) -> BTreeMap<String, std::time::SystemTime> {
        self.cdi_files()
            .into_iter()
            .map(|f| {
                let m = std::fs::metadata(self.env.cdi_dir.join(&f))
                    .unwrap()
                    .modified()
                    .unwrap();
                (f, m)
            })
            .collect()
    }
}

/// The last 150 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(150)..].join("\n")
}

/// Wait until the scheduler bound `pod` to the node and allocated each of
/// its claims; the claims, by their name in the pod.
async fn scheduled(cp: &ControlPlane, node: &RealNode, ns: &str, pod: &str) -> BTreeMap<String, Value> {
    node.until(&format!("pod {ns}/{pod} bound with its claims"), || {
        let p = cp.get(&["pod", pod, "-n", ns]).ok()?;
        (p["spec"]["nodeName"] == node.name.as_str()).then_some(())?;
        let wanted = p["spec"]["resourceClaims"].as_array()?.len();
        let statuses = p["status"]["resourceClaimStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut claims = BTreeMap::new();
        for rc in p["spec"]["resourceClaims"].as_array()? {
            let name = rc["name"].as_str()?.to_owned();
            let object = match rc["resourceClaimName"].as_str() {
                Some(n) => n.to_owned(),
                None => statuses.iter().find(|s| s["name"] == name.as_str())?["resourceClaimName"]
                    .as_str()?
                    .to_owned(),
            };
            let c = cp.get(&["resourceclaim", &object, "-n", ns]).ok()?;
            c["status"]["allocation"].is_object().then_some(())?;
            claims.insert(name, c);
        }
        (claims.len() == wanted).then_some(claims)
    })
    .await
}

/// The CDI device IDs the host gives for a claim's allocation results
/// (`k8s.<driver>/device=<claim uid>_<device>[_<share ID>]`), the shape
/// tests/e2e/prepare.rs and tests/e2e/gpu.rs pin.
fn expected_ids(claim: &Value) -> Vec<String> {
    let uid = claim["metadata"]["uid"].as_str().unwrap();
    results(claim)
        .into_iter()
        .map(|(driver, _, device, share)| match share {
            Some(share) => format!("k8s.{driver}/device={uid}_{device}_{share}"),
            None => format!("k8s.{driver}/device={uid}_{device}"),
        })
        .collect()
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// Registration through the real plugin watcher, then a Pod with three
/// claims on two drivers of one host (two example claims, one of them from
/// a template, and a GPU) prepared by the DRA manager: one
/// NodePrepareResources per driver, the CDI IDs GetResources hands the
/// runtime are those of the allocation, the CDI library injects them, and
/// UnprepareResources removes every spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelets_dra_manager_prepares_a_pod_across_two_drivers_of_one_host() {
    if !need_root("the_kubelets_dra_manager_prepares_a_pod_across_two_drivers_of_one_host") {
        return;
    }
    let cp = control_plane().await;
    let node = RealNode::start(cp, "rk-two", |env| {
        let (gpu, sim) = gpu_driver(env.dir(), 2);
        (vec![example_driver(4), gpu], sim.tables)
    })
    .await;

    // Registration: what the plugin watcher handed the DRA manager.
    let events = node.kubelet().events();
    for d in [DRIVER, GPU] {
        let endpoint = node.env.kubelet_root.join("plugins").join(d).join("dra.sock");
        let registered = events
            .iter()
            .find(|e| e["event"] == "register" && e["driver"] == d)
            .unwrap_or_else(|| panic!("no registration of {d}\n{}", node.context()));
        assert_eq!(registered["error"], "", "{d}: {registered}");
        assert_eq!(registered["endpoint"], endpoint.to_str().unwrap(), "{d}: {registered}");
        assert_eq!(
            registered["versions"],
            json!([
                "v1.DRAPlugin",
                "v1beta1.DRAPlugin",
                "v1.DRAResourceHealth",
                "v1alpha1.DRAResourceHealth"
            ]),
            "{d}: {registered}"
        );
    }
    // The kubelet wipes its node's slices when it starts (allowed to, as
    // this node, by the Node authorizer); the host puts them back.
    let wiped = format!(
        "\"Deleted ResourceSlices\" logger=\"DRA registration handler.startup\" fieldSelector=\"spec.nodeName={}\"",
        node.name
    );
    node.until("the kubelet's start-up wipe of the node's slices", || {
        node.kubelet().log().contains(&wiped).then_some(())
    })
    .await;
    for d in [DRIVER, GPU] {
        node.until(&format!("{d}'s slice after the kubelet started"), || {
            slices_of(cp, d, &node.name).pop()
        })
        .await;
    }

    let ns = "rk-two";
    namespace(cp, ns);
    cp.apply(&claim(ns, "two", DRIVER, 2, None, None)).unwrap();
    cp.apply(&claim(ns, "gpu", GPU, 1, None, None)).unwrap();
    cp.apply(&claim_template(ns, "one", DRIVER)).unwrap();
    cp.apply(&pod(
        ns,
        "workload",
        &node.name,
        &[
            ("two", "resourceClaimName", "two"),
            ("one", "resourceClaimTemplateName", "one"),
            ("gpu", "resourceClaimName", "gpu"),
        ],
    ))
    .unwrap();
    let claims = scheduled(cp, &node, ns, "workload").await;
    let want: Vec<String> = claims.values().flat_map(expected_ids).collect();
    assert_eq!(want.len(), 4, "{claims:#?}");

    let containers = node
        .kubelet()
        .prepare(ns, "workload")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources: {e:#}\n{}", node.context()));
    let ids = &containers["c"];
    assert_eq!(sorted(ids), sorted(&want), "the CDI IDs the kubelet hands the runtime");
    assert_eq!(node.calls(DRIVER, PREPARE).await, 1, "one call for both example claims");
    assert_eq!(node.calls(GPU, PREPARE).await, 1);

    // The runtime's view of those IDs.
    let oci = cdi::inject(&cdi_inject(), &node.env.cdi_dir, ids)
        .unwrap_or_else(|e| panic!("the CDI library refused the kubelet's IDs {ids:?}: {e}"));
    let env: BTreeSet<&str> = oci["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for c in ["two", "one"] {
        let claim = &claims[c];
        let uid = claim["metadata"]["uid"].as_str().unwrap();
        for (_, _, device, _) in results(claim) {
            let index = device.strip_prefix("gpu-").unwrap();
            assert!(env.contains(format!("GPU_DEVICE_{index}={device}").as_str()), "{env:?}");
            assert!(
                env.contains(format!("GPU_DEVICE_{index}_RESOURCE_CLAIM={uid}").as_str()),
                "{env:?}"
            );
        }
    }
    let gpu = &results(&claims["gpu"])[0].2;
    let minor: i64 = gpu.strip_prefix("gpu-").unwrap().parse().unwrap();
    let nodes: Vec<(String, i64, i64)> = oci["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_owned(),
                d["major"].as_i64().unwrap(),
                d["minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        nodes.contains(&(format!("/dev/nvidia{minor}"), 195, minor)),
        "{nodes:?}"
    );
    assert!(nodes.contains(&("/dev/nvidiactl".to_owned(), 195, 255)), "{nodes:?}");

    node.kubelet()
        .unprepare(ns, "workload")
        .await
        .unwrap_or_else(|e| panic!("UnprepareResources: {e:#}\n{}", node.context()));
    assert_eq!(node.calls(DRIVER, UNPREPARE).await, 1);
    assert_eq!(node.calls(GPU, UNPREPARE).await, 1);
    assert_eq!(node.cdi_files(), Vec::<String>::new(), "every CDI spec removed");
    let errors = node.kubelet_errors(&[]);
    assert!(errors.is_empty(), "the kubelet's code logged errors: {errors:#?}");
    let err = node.kubelet().resources(ns, "workload").await.unwrap_err();
    assert!(
        err.to_string().contains("unable to get claim info"),
        "the kubelet forgot the claims: {err:#}"
    );
}

/// The kubelet killed and started again on its checkpoint: before any new
/// prepare its DRA manager hands the runtime the same CDI IDs; the next
/// PrepareResources calls the driver again (a claim restored from the
/// checkpoint is not marked prepared), which answers the same IDs from its
/// own checkpoint without preparing anything twice; UnprepareResources after
/// the restart reaches the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_restarted_on_its_checkpoint_gives_the_same_cdi_ids() {
    let cp = control_plane().await;
    let mut node = RealNode::start(cp, "rk-restart", |env| {
        // The host says when it answers from its checkpoint (debug).
        env.log_filter = Some("info,dra_wasm_host::driver=debug".into());
        (vec![example_driver(4)], String::new())
    })
    .await;
    let ns = "rk-restart";
    namespace(cp, ns);
    cp.apply(&claim(ns, "a", DRIVER, 1, None, None)).unwrap();
    cp.apply(&claim(ns, "b", DRIVER, 2, None, None)).unwrap();
    cp.apply(&pod(
        ns,
        "p",
        &node.name,
        &[("a", "resourceClaimName", "a"), ("b", "resourceClaimName", "b")],
    ))
    .unwrap();
    let claims = scheduled(cp, &node, ns, "p").await;
    let before = node
        .kubelet()
        .prepare(ns, "p")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources: {e:#}\n{}", node.context()));
    let want: Vec<String> = claims.values().flat_map(expected_ids).collect();
    assert_eq!(sorted(&before["c"]), sorted(&want));
    assert_eq!(node.calls(DRIVER, PREPARE).await, 1);
    let checkpoint = node.env.kubelet_root.join("dra_manager_state");
    assert!(
        checkpoint.exists(),
        "the DRA manager's checkpoint {}",
        checkpoint.display()
    );

    let written = node.cdi_mtimes();
    assert_eq!(written.len(), 2, "{written:?}");
    node.kubelet.take().unwrap().kill9().await.unwrap();
    node.start_kubelet(cp).await;
    let restored = node
        .kubelet()
        .resources(ns, "p")
        .await
        .unwrap_or_else(|e| panic!("GetResources after the restart: {e:#}\n{}", node.context()));
    // GetResources walks a map of the container's claims: the same IDs, in
    // any order.
    assert_eq!(
        sorted(&restored["c"]),
        sorted(&before["c"]),
        "the same CDI IDs from the checkpoint"
    );
    let again = node
        .kubelet()
        .prepare(ns, "p")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources after the restart: {e:#}\n{}", node.context()));
    assert_eq!(sorted(&again["c"]), sorted(&before["c"]));
    assert_eq!(
        node.calls(DRIVER, PREPARE).await,
        2,
        "the restarted DRA manager prepares its checkpoint's claims again"
    );
    let log = node.host.log();
    assert_eq!(node.cdi_mtimes(), written, "the CDI specs were not written again");
    assert_eq!(
        log.matches("claim already prepared; answering from the checkpoint")
            .count(),
        2,
        "the repeated call answered from the host's checkpoint:\n{log}"
    );
    assert_eq!(node.cdi_files().len(), 2, "{:?}", node.cdi_files());
    cdi::inject(&cdi_inject(), &node.env.cdi_dir, &again["c"])
        .unwrap_or_else(|e| panic!("the CDI library refused {:?}: {e}", again["c"]));

    node.kubelet()
        .unprepare(ns, "p")
        .await
        .unwrap_or_else(|e| panic!("UnprepareResources: {e:#}\n{}", node.context()));
    assert_eq!(node.calls(DRIVER, UNPREPARE).await, 1);
    assert_eq!(node.cdi_files(), Vec::<String>::new());
    let errors = node.kubelet_errors(&[]);
    assert!(errors.is_empty(), "the kubelet's code logged errors: {errors:#?}");
}

/// Wait until the kubelet's health cache has the single device of the
/// pod's container (claim `gpu`) in `state`, as the kubelet would write it
/// into the Pod's status (`allocatedResourcesStatus`): the entry.
async fn wait_health(node: &RealNode, ns: &str, pod: &str, resource_id: &str, state: &str) -> Value {
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    loop {
        let health = node.kubelet().health(ns, pod).await.unwrap();
        let status = &health["c"];
        let resources = status[0]["resources"].as_array().cloned().unwrap_or_default();
        if let [entry] = resources.as_slice()
            && entry["health"] == state
        {
            assert_eq!(status[0]["name"], "claim:gpu", "{health:?}");
            assert_eq!(entry["resourceID"], resource_id, "the resource is the first CDI ID");
            return entry.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{resource_id} not {state} in the kubelet's health cache: {health:?}\n{}",
            node.context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The health stream into the kubelet's health cache: the pod's GPU is
/// Healthy in its container's allocatedResourcesStatus, an Xid makes it
/// Unhealthy (and the DRA manager asks for the pod's status to be updated),
/// and after the host is killed and started again the stream comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xid_marks_the_pods_gpu_unhealthy_in_the_kubelets_health_cache() {
    if !need_root("an_xid_marks_the_pods_gpu_unhealthy_in_the_kubelets_health_cache") {
        return;
    }
    let cp = control_plane().await;
    let mut events_socket = None;
    let mut node = RealNode::start(cp, "rk-health", |env| {
        let (gpu, sim) = gpu_driver(env.dir(), 2);
        events_socket = Some(sim.events.clone());
        (vec![gpu], sim.tables)
    })
    .await;
    let events_socket = events_socket.unwrap();
    let ns = "rk-health";
    namespace(cp, ns);
    cp.apply(&claim(ns, "gpu", GPU, 1, None, None)).unwrap();
    cp.apply(&pod(ns, "p", &node.name, &[("gpu", "resourceClaimName", "gpu")]))
        .unwrap();
    let claims = scheduled(cp, &node, ns, "p").await;
    let device = results(&claims["gpu"])[0].2.clone();
    let index: u32 = device.strip_prefix("gpu-").unwrap().parse().unwrap();
    let ids = node
        .kubelet()
        .prepare(ns, "p")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources: {e:#}\n{}", node.context()))["c"]
        .clone();
    let pod_uid = cp.get(&["pod", "p", "-n", ns]).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();

    wait_health(&node, ns, "p", &ids[0], "Healthy").await;

    let mut inject = Injector::connect(&events_socket).await.unwrap();
    inject.xid(index, 79).await.unwrap();
    let unhealthy = wait_health(&node, ns, "p", &ids[0], "Unhealthy").await;
    assert!(
        unhealthy["message"].as_str().is_some_and(|m| m.contains("79")),
        "the Xid in the message: {unhealthy}"
    );
    // Written into the Pod's status as this node, as the status manager
    // does: the API server accepts it and stores what the cache holds.
    node.kubelet()
        .write_health(ns, "p")
        .await
        .unwrap_or_else(|e| panic!("writing the pod's status: {e:#}\n{}", node.context()));
    let stored =
        cp.get(&["pod", "p", "-n", ns]).unwrap()["status"]["containerStatuses"][0]["allocatedResourcesStatus"].clone();
    assert_eq!(stored[0]["name"], "claim:gpu", "{stored}");
    assert_eq!(
        stored[0]["resources"][0], unhealthy,
        "the stored status is the cache's: {stored}"
    );
    let updated =
        node.kubelet().events().iter().any(|e| {
            e["event"] == "health-update" && e["pods"].as_array().is_some_and(|p| p.contains(&json!(pod_uid)))
        });
    assert!(
        updated,
        "the DRA manager asked for pod {pod_uid}'s status update\n{}",
        node.context()
    );

    // The host killed and started again: the kubelet's plugin manager
    // registers it again and the health stream comes back.
    node.restart_host();
    node.until("the restarted host registered again", || {
        let n = node
            .kubelet()
            .events()
            .iter()
            .filter(|e| e["event"] == "register" && e["driver"] == GPU)
            .count();
        (n >= 2).then_some(())
    })
    .await;
    wait_health(&node, ns, "p", &ids[0], "Healthy").await;
    node.kubelet()
        .unprepare(ns, "p")
        .await
        .unwrap_or_else(|e| panic!("UnprepareResources: {e:#}\n{}", node.context()));
    assert_eq!(node.cdi_files(), Vec::<String>::new());
    // kill -9 cuts the stream: the one error the kubelet's code logs.
    let errors =
        node.kubelet_errors(&["\"Error receiving from WatchResources stream\" err=\"rpc error: code = Unavailable"]);
    assert!(errors.is_empty(), "the kubelet's code logged errors: {errors:#?}");
}

/// A rolling update of the host (two pods of the DaemonSet, sockets named
/// with each pod's UID) as the kubelet's plugin manager sees it: both
/// register, calls go to the newest, the old one's socket going away
/// deregisters only it, and a claim the old one prepared is unprepared
/// through the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_of_the_host_registers_both_and_the_kubelet_calls_the_newest() {
    const OLD: &str = "0b4c6a2e-6f0e-4d6b-9a57-1c1a3e0d9f21";
    const NEW: &str = "7d1f2c3b-2a4e-4c5d-8e6f-9a0b1c2d3e51";
    let cp = control_plane().await;
    let mut node = RealNode::start_with(cp, "rk-rolling", &["--rolling-update-uid", OLD], "", |_| {
        (vec![example_driver(4)], String::new())
    })
    .await;
    let plugin_dir = node.env.kubelet_root.join("plugins").join(DRIVER);
    let endpoint = |uid: &str| plugin_dir.join(format!("dra-{uid}.sock")).to_str().unwrap().to_owned();
    let registered = |node: &RealNode, uid: &str| {
        node.kubelet()
            .events()
            .iter()
            .any(|e| e["event"] == "register" && e["endpoint"] == endpoint(uid).as_str() && e["error"] == "")
    };
    assert!(registered(&node, OLD), "the old pod's socket\n{}", node.context());

    let ns = "rk-rolling";
    namespace(cp, ns);
    cp.apply(&claim(ns, "a", DRIVER, 1, None, None)).unwrap();
    cp.apply(&claim(ns, "b", DRIVER, 1, None, None)).unwrap();
    cp.apply(&pod(ns, "p1", &node.name, &[("a", "resourceClaimName", "a")]))
        .unwrap();
    cp.apply(&pod(ns, "p2", &node.name, &[("b", "resourceClaimName", "b")]))
        .unwrap();
    scheduled(cp, &node, ns, "p1").await;
    scheduled(cp, &node, ns, "p2").await;
    node.kubelet()
        .prepare(ns, "p1")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources p1: {e:#}\n{}", node.context()));

    let mut new = node
        .env
        .start_with_args(&binary(), &["--rolling-update-uid", NEW])
        .unwrap();
    node.until("the new pod's socket registered", || {
        registered(&node, NEW).then_some(())
    })
    .await;
    // The DRA plugin manager prefers the newest connected instance: wait
    // for its gRPC connection to the new one (its log says so).
    let connected = format!(
        "\"Connection changed\" logger=\"DRA registration handler\" driverName=\"{DRIVER}\" endpoint=\"{}\" connected=true",
        endpoint(NEW)
    );
    node.until("the kubelet's connection to the new pod", || {
        node.kubelet().log().contains(&connected).then_some(())
    })
    .await;
    node.kubelet()
        .prepare(ns, "p2")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources p2: {e:#}\n{}", node.context()));
    let prepared_by = |log: &str, claim: &str| {
        log.contains(&format!(
            "claim.name={claim}}}: dra_wasm_host::driver::claims: claim prepared"
        ))
    };
    assert!(prepared_by(&node.host.log(), "a"), "the old instance prepared a");
    assert!(
        prepared_by(&new.log(), "b"),
        "the kubelet calls the newest instance:\nnew host log:\n{}\n{}",
        new.log(),
        node.context()
    );

    // The old pod stops: only its registration goes.
    node.host.terminate(Duration::from_secs(30)).unwrap();
    node.until("the old pod's socket deregistered", || {
        node.kubelet()
            .events()
            .iter()
            .any(|e| e["event"] == "deregister" && e["endpoint"] == endpoint(OLD).as_str())
            .then_some(())
    })
    .await;
    let deregistered: Vec<Value> = node
        .kubelet()
        .events()
        .into_iter()
        .filter(|e| e["event"] == "deregister")
        .collect();
    assert_eq!(deregistered.len(), 1, "{deregistered:?}");
    for p in ["p1", "p2"] {
        node.kubelet().unprepare(ns, p).await.unwrap_or_else(|e| {
            panic!(
                "UnprepareResources {p}: {e:#}\nnew host log:\n{}\n{}",
                new.log(),
                node.context()
            )
        });
    }
    assert_eq!(
        node.cdi_files(),
        Vec::<String>::new(),
        "the new instance unprepared both"
    );
    assert!(
        !slices_of(cp, DRIVER, &node.name).is_empty(),
        "the driver's slices stay while an instance is registered"
    );
    let errors = node.kubelet_errors(&[]);
    assert!(errors.is_empty(), "the kubelet's code logged errors: {errors:#?}");
    new.terminate(Duration::from_secs(30)).unwrap();
}

/// The whole node path of a macvlan claim: the kubelet's DRA manager
/// prepares it, the CDI library injects the IDs GetResources hands the
/// runtime, and the createRuntime hook of that OCI spec, run as runc runs
/// it, moves the interface into the pod with the address the host wrote to
/// `status.devices`; UnprepareResources takes it away again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_macvlan_claim_prepared_by_the_kubelet_attaches_through_the_hook_in_the_oci_spec() {
    if !need_root("a_macvlan_claim_prepared_by_the_kubelet_attaches_through_the_hook_in_the_oci_spec") {
        return;
    }
    let cp = control_plane().await;
    let mut lab = Lab::new(1);
    let parents = lab.parents.clone();
    let node = RealNode::start(cp, "rk-net", |_| {
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
    let ns = "rk-net";
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
    cp.apply(&pod(ns, "nic", &node.name, &[("nic", "resourceClaimName", "nic")]))
        .unwrap();
    scheduled(cp, &node, ns, "nic").await;
    let ids = node
        .kubelet()
        .prepare(ns, "nic")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources: {e:#}\n{}", node.context()))["c"]
        .clone();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let device = node
        .until("status.devices stored", || {
            cp.get(&["resourceclaim", "nic", "-n", ns]).ok()?["status"]["devices"]
                .get(0)
                .cloned()
        })
        .await;
    let interface = device["networkData"]["interfaceName"].as_str().unwrap().to_owned();
    let address = device["networkData"]["ips"][0].as_str().unwrap().to_owned();

    let oci = cdi::inject(&cdi_inject(), &node.env.cdi_dir, &ids)
        .unwrap_or_else(|e| panic!("the CDI library refused the kubelet's IDs {ids:?}: {e}"));
    let hooks = oci["hooks"]["createRuntime"].as_array().cloned().unwrap_or_default();
    assert_eq!(hooks.len(), 1, "{}", oci["hooks"]);
    let path = hooks[0]["path"].as_str().unwrap();
    let args: Vec<String> = hooks[0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let (pod_ns, pid) = lab.pod();
    let (ok, out) = netlab::run_hook(path, &args, pid);
    assert!(ok, "the hook from the OCI spec failed: {out}\n{}", node.context());
    let addrs = netlab::ip_json(&["-n", &pod_ns, "addr", "show", "dev", &interface]);
    let got: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .unwrap_or_else(|| panic!("no {interface} in pod {pod_ns}: {addrs}"))
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(got, [address], "{interface} in pod {pod_ns}: {addrs}");

    node.kubelet()
        .unprepare(ns, "nic")
        .await
        .unwrap_or_else(|e| panic!("UnprepareResources: {e:#}\n{}", node.context()));
    assert!(
        !netlab::ip(&["-n", &pod_ns, "link", "show", "dev", &interface])
            .status
            .success(),
        "{interface} removed from pod {pod_ns}"
    );
    assert_eq!(node.cdi_files(), Vec::<String>::new());
    let errors = node.kubelet_errors(&[]);
    assert!(errors.is_empty(), "the kubelet's code logged errors: {errors:#?}");
}

/// A DeviceClass named after `driver`, a fault-injection guest
/// (tests/guests/faulty) on one node: deploy/ has none for it. The guest's
/// pool is named `faulty` on every node, so each test gives it a driver
/// name of its own (a pool spread over two nodes is no pool the scheduler
/// allocates from).
fn faulty_class(cp: &ControlPlane, driver: &str) {
    let class = json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
        "metadata": {"name": driver},
        "spec": {"selectors": [{"cel": {"expression": format!("device.driver == '{driver}'")}}]},
    });
    cp.apply(&class.to_string()).unwrap();
}

/// A hot swap of the guest (a ConfigMap update) while the kubelet's DRA
/// manager prepares pods: no PrepareResources fails, the swap is invisible
/// to the kubelet (no deregistration, no new registration), pods prepared
/// after it get the new build's edits in their OCI spec, and a pod prepared
/// by the old build is unprepared by the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_while_the_kubelet_prepares_pods_fails_no_call() {
    const FAULTY: &str = "swap.faulty.dra.dev";
    const KEY: &str = "faulty.wasm";
    let read = |file: &str| std::fs::read(guest(file)).unwrap();
    let cp = control_plane().await;
    let mut guests = None;
    let node = RealNode::start(cp, "rk-swap", |env| {
        let dir = dra_test_support::configmap::ConfigMapDir::create(
            &env.dir().join("guests"),
            &[(KEY, &read("faulty_driver.wasm"))],
        )
        .unwrap();
        let spec = DriverSpec::new(FAULTY, &dir.path(KEY)).config("devices = 8");
        guests = Some(dir);
        (vec![spec], "[hot_swap]\ndebounce_ms = 20\n".to_owned())
    })
    .await;
    let mut guests = guests.unwrap();
    faulty_class(cp, FAULTY);
    let ns = "rk-swap";
    namespace(cp, ns);
    let pods: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    for p in &pods {
        cp.apply(&claim(ns, p, FAULTY, 1, None, None)).unwrap();
        cp.apply(&pod(ns, p, &node.name, &[("dev", "resourceClaimName", p)]))
            .unwrap();
    }
    for p in &pods {
        scheduled(cp, &node, ns, p).await;
    }
    let version_of = |ids: &[String]| {
        let oci = cdi::inject(&cdi_inject(), &node.env.cdi_dir, ids)
            .unwrap_or_else(|e| panic!("the CDI library refused {ids:?}: {e}"));
        oci["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e.as_str()?.strip_prefix("FAULTY_VERSION=").map(str::to_owned))
            .unwrap_or_else(|| panic!("no FAULTY_VERSION in {oci}"))
    };
    let first = node
        .kubelet()
        .prepare(ns, "p0")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources p0: {e:#}\n{}", node.context()));
    assert_eq!(version_of(&first["c"]), "0.1.0");

    // The swap, while the kubelet prepares and unprepares p1..p4 in turn,
    // until a round after the swap: every call succeeds, and the OCI specs
    // show the old build before and the new one after.
    let swapped = std::sync::atomic::AtomicBool::new(false);
    let started = std::sync::atomic::AtomicUsize::new(0);
    let load = async {
        let (mut failures, mut versions, mut calls) = (Vec::new(), BTreeSet::new(), 0);
        let mut last_round = false;
        while !last_round {
            last_round = swapped.load(std::sync::atomic::Ordering::SeqCst);
            for p in &pods[1..5] {
                match node.kubelet().prepare(ns, p).await {
                    Ok(c) => {
                        versions.insert(version_of(&c["c"]));
                    }
                    Err(e) => failures.push(format!("prepare {p}: {e:#}")),
                }
                if let Err(e) = node.kubelet().unprepare(ns, p).await {
                    failures.push(format!("unprepare {p}: {e:#}"));
                }
                calls += 2;
                started.store(calls, std::sync::atomic::Ordering::SeqCst);
            }
        }
        (failures, versions, calls)
    };
    let swap = async {
        // Only once the load has made calls with the old build.
        while started.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        guests.update(&[(KEY, &read("faulty_next.wasm"))]).unwrap();
        node.until("the guest swapped", || {
            node.host.log().contains("guest swapped").then_some(())
        })
        .await;
        swapped.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let ((failures, versions, calls), ()) = tokio::join!(load, swap);
    assert!(failures.is_empty(), "{failures:#?}\n{}", node.context());
    println!("hot swap under the kubelet's calls: {calls} calls, none failed");
    assert_eq!(
        versions,
        BTreeSet::from(["0.1.0".to_owned(), "0.2.0".to_owned()]),
        "{calls} calls across the swap"
    );
    let last = node
        .kubelet()
        .prepare(ns, "p5")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources p5: {e:#}\n{}", node.context()));
    assert_eq!(version_of(&last["c"]), "0.2.0", "prepared after the swap");
    let events = node.kubelet().events();
    let registrations = events.iter().filter(|e| e["event"] == "register").count();
    assert_eq!(registrations, 1, "the swap is invisible to the kubelet: {events:#?}");
    assert!(!events.iter().any(|e| e["event"] == "deregister"), "{events:#?}");

    for p in &pods {
        node.kubelet()
            .unprepare(ns, p)
            .await
            .unwrap_or_else(|e| panic!("UnprepareResources {p}: {e:#}\n{}", node.context()));
    }
    assert_eq!(
        node.cdi_files(),
        Vec::<String>::new(),
        "the new build unprepared the old one's claims"
    );
    let errors = node.kubelet_errors(&[]);
    assert!(errors.is_empty(), "the kubelet's code logged errors: {errors:#?}");
}

/// The host killed in the middle of the kubelet's NodePrepareResources (the
/// faulty guest spins on a claim named `loop…`): that PrepareResources
/// fails; after the host is started again the kubelet registers it anew,
/// UnprepareResources of the pod whose prepare never finished succeeds, as
/// does that of a pod prepared before the kill, and neither a CDI spec nor
/// a checkpoint record is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_killed_during_the_kubelets_prepare_then_both_pods_unprepare() {
    const FAULTY: &str = "kill.faulty.dra.dev";
    let cp = control_plane().await;
    let mut node = RealNode::start_with(cp, "rk-kill", &[], "call_timeout_ms = 30000", |_| {
        let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 4");
        (vec![spec], String::new())
    })
    .await;
    faulty_class(cp, FAULTY);
    let ns = "rk-kill";
    namespace(cp, ns);
    for (p, c) in [("done", "fine"), ("stuck", "loop-forever")] {
        cp.apply(&claim(ns, c, FAULTY, 1, None, None)).unwrap();
        cp.apply(&pod(ns, p, &node.name, &[("dev", "resourceClaimName", c)]))
            .unwrap();
    }
    scheduled(cp, &node, ns, "done").await;
    scheduled(cp, &node, ns, "stuck").await;
    node.kubelet()
        .prepare(ns, "done")
        .await
        .unwrap_or_else(|e| panic!("PrepareResources done: {e:#}\n{}", node.context()));

    let prepare = node.kubelet().prepare(ns, "stuck");
    let kill = async {
        // Once the kubelet's DRA client has sent the call (its log says so)
        // and the guest spins on it, kill -9, well inside the 30 s deadline.
        let calling = "\"Calling NodePrepareResources rpc\"";
        node.until("the kubelet's NodePrepareResources call of loop-forever", || {
            let log = node.kubelet().log();
            log.lines()
                .any(|l| l.contains(calling) && l.contains("loop-forever"))
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        node.host.log()
    };
    let (result, log_before_kill) = tokio::join!(prepare, async {
        let log = kill.await;
        // SAFETY: kill(2) on the host process this test started and has not reaped.
        unsafe { libc::kill(node.host.pid() as libc::pid_t, libc::SIGKILL) };
        log
    });
    let err = result.expect_err("PrepareResources of a pod whose driver died in the call");
    // The call itself broke (gRPC Unavailable), rather than the guest's
    // deadline answering an error for the claim.
    let err = format!("{err:#}");
    assert!(
        err.contains("NodePrepareResources: rpc error: code = Unavailable"),
        "the kubelet's error: {err}\nhost log before the kill:\n{log_before_kill}"
    );

    let registrations = |node: &RealNode| {
        node.kubelet()
            .events()
            .iter()
            .filter(|e| e["event"] == "register" && e["driver"] == FAULTY)
            .count()
    };
    assert_eq!(registrations(&node), 1);
    node.restart_host();
    node.until("the restarted host registered again", || {
        (registrations(&node) >= 2).then_some(())
    })
    .await;
    node.kubelet().wait_driver(FAULTY, START_TIMEOUT).await.unwrap();
    for p in ["stuck", "done"] {
        node.kubelet()
            .unprepare(ns, p)
            .await
            .unwrap_or_else(|e| panic!("UnprepareResources {p}: {e:#}\n{}", node.context()));
    }
    assert_eq!(node.cdi_files(), Vec::<String>::new(), "no CDI spec left");
    let records = checkpoint_records(&node.env.kubelet_root.join("plugins").join(FAULTY).join("claims"));
    assert_eq!(
        records,
        Vec::<String>::new(),
        "no checkpoint record left\n{}",
        node.host.log()
    );
    let errors =
        node.kubelet_errors(&["\"Error receiving from WatchResources stream\" err=\"rpc error: code = Unavailable"]);
    assert!(errors.is_empty(), "the kubelet's code logged errors: {errors:#?}");
}
