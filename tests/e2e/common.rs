//! Shared set-up for the end-to-end tests.

use dra_test_support::claims::ClaimsFile;
use dra_test_support::controlplane::ControlPlane;
use dra_test_support::host::{DriverSpec, HostEnv, HostProcess};
use dra_test_support::kubelet::{Plugin, TestKubelet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DRIVER: &str = "example.dra.dev";
pub const POOL: &str = "test-node";
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The example guest built with today's SDK: `dra:driver@0.2.0`.
pub const EXAMPLE: &str = "example_driver.wasm";
/// The same driver built with the frozen 0.1 SDK (tests/guests/v0.1):
/// `dra:driver@0.1.0`, as a vendor's guest built before 0.2 is.
pub const EXAMPLE_V0_1: &str = "example_driver_v0_1.wasm";

/// How long the whole suite may run before the watchdog ends it.
const SUITE_LIMIT: Duration = Duration::from_secs(15 * 60);

/// End the process if the suite runs past [`SUITE_LIMIT`]: a test that
/// hangs must fail CI with the names of the tests still running (libtest
/// prints them after 60 s), not run out CI's clock in silence. Started by the
/// helpers every test uses ([`binary`], [`guest`], [`cache_dir`]).
fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(SUITE_LIMIT);
            eprintln!(
                "e2e watchdog: the suite has run for {SUITE_LIMIT:?}; a test hangs \
                 (see the tests that have been 'running for over 60 seconds' above)"
            );
            std::process::exit(124);
        });
    });
}

pub fn binary() -> PathBuf {
    watchdog();
    PathBuf::from(env!("CARGO_BIN_EXE_dra-wasm-host"))
}

pub fn guest(file: &str) -> PathBuf {
    watchdog();
    PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join(file)
}

/// Compiled guests are shared by all tests of a run: each guest compiles once.
pub fn cache_dir() -> PathBuf {
    watchdog();
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-cache")
}

/// A node with the tonic test kubelet and one running host: for calls the
/// kubelet's own code cannot be made to send (each user's module doc says
/// which); see tests/src/kubelet.rs for the list.
pub struct Node {
    pub env: HostEnv,
    pub kubelet: TestKubelet,
    pub claims: ClaimsFile,
    pub host: HostProcess,
    pub plugin: Plugin,
    drivers: Vec<DriverSpec>,
    runtime: String,
    tables: String,
}

impl Node {
    /// The example guest with `devices` simulated devices.
    pub async fn example(devices: u32) -> Node {
        Node::example_build(EXAMPLE, devices).await
    }

    /// One build of the example guest ([`EXAMPLE`], [`EXAMPLE_V0_1`]) with
    /// `devices` simulated devices.
    pub async fn example_build(file: &str, devices: u32) -> Node {
        let spec = DriverSpec::new(DRIVER, &guest(file)).config(&format!("devices = {devices}"));
        Node::start(vec![spec], "").await
    }

    pub async fn start(drivers: Vec<DriverSpec>, runtime: &str) -> Node {
        Self::start_in(
            HostEnv::new(&cache_dir()).expect("temporary node"),
            drivers,
            runtime,
            "",
        )
        .await
    }

    /// Start in a prepared environment, with extra top-level config `tables`.
    pub async fn start_in(env: HostEnv, drivers: Vec<DriverSpec>, runtime: &str, tables: &str) -> Node {
        let claims = ClaimsFile::new(&env.claims_path).expect("claims file");
        env.write_config_with(&drivers, runtime, tables).expect("config");
        let kubelet = TestKubelet::start(&env.kubelet_root).expect("test kubelet");
        let host = env.start(&binary()).expect("host");
        let plugin = wait_registered(&kubelet, &host, &drivers[0].name).await;
        Node {
            env,
            kubelet,
            claims,
            host,
            plugin,
            drivers,
            runtime: runtime.to_owned(),
            tables: tables.to_owned(),
        }
    }

    /// kill -9 the host and start it again on the same state.
    pub async fn crash_and_restart(&mut self) {
        self.host.kill9().expect("kill -9");
        self.restart().await;
    }

    /// Start the host again (after it stopped) and wait for registration.
    pub async fn restart(&mut self) {
        self.env
            .write_config_with(&self.drivers, &self.runtime, &self.tables)
            .expect("config");
        self.host = self.env.start(&binary()).expect("host");
        // The previous registration socket is replaced: wait for the new one.
        self.plugin = wait_registered(&self.kubelet, &self.host, &self.drivers[0].name).await;
    }

    pub fn cdi_spec_path(&self, uid: &str) -> PathBuf {
        self.env.cdi_dir.join(format!("k8s.{DRIVER}-device_{uid}.json"))
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.env.kubelet_root.join("plugins").join(DRIVER).join("claims")
    }
}

/// The claim records in a checkpoint directory: the files a host loads
/// (`<uid>.json`), not the hidden spare files it keeps for reuse.
pub fn checkpoint_records(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The claim record in a checkpoint file, unwrapped from its envelope.
pub fn read_record(path: &Path) -> serde_json::Value {
    let envelope: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(envelope["kind"], "DraWasmHostClaimCheckpoint", "{envelope}");
    envelope["claim"].clone()
}

/// Write `record` for `driver` into a checkpoint file, in a well-formed
/// envelope (its checksum matches): what a host would have written.
pub fn write_record(path: &Path, driver: &str, record: &serde_json::Value) {
    let raw = serde_json::to_string(record).unwrap();
    let envelope = format!(
        r#"{{"kind":"DraWasmHostClaimCheckpoint","version":1,"driver":"{driver}","checksum":{},"claim":{raw}}}"#,
        crc32fast::hash(raw.as_bytes())
    );
    std::fs::write(path, envelope).unwrap();
}

/// Wait (at most 20 s) until `check` gives a value; the panic names `what`
/// and shows the host's log.
pub async fn eventually<T>(what: &str, node: &Node, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}\nhost log:\n{}",
            node.host.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_registered(kubelet: &TestKubelet, host: &HostProcess, driver: &str) -> Plugin {
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(p) = kubelet.plugin(driver) {
            // After a restart, the kubelet may still hold the dead instance's
            // registration until the new socket shows up: check the new one answers.
            if p.prepare(&[]).await.is_ok() {
                return p;
            }
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "driver {driver} did not register; kubelet events {:?}\nhost log:\n{}",
                kubelet.events(),
                host.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// --- hosts on the real control plane (tests/k8s) --------------------------------

/// The shared control plane, from a blocking thread (it may be starting).
pub async fn control_plane() -> &'static ControlPlane {
    tokio::task::block_in_place(ControlPlane::shared)
}

/// A Node object, a host on it with that node's credentials, and the test kubelet.
pub struct ClusterNode {
    pub name: String,
    pub uid: String,
    /// The host's credentials, for acting as that node's host.
    #[allow(dead_code, reason = "tests/cluster acts as a node's host; the e2e tests do not")]
    pub kubeconfig: PathBuf,
    pub node: Node,
}

/// A Node object `name` and a host on it, authenticated as the DaemonSet's
/// pod would be (a token bound to a Pod on that Node); `setup` prepares the
/// host's environment (files in its directory, metrics) and returns its
/// drivers and extra top-level config tables.
/// A Node object `name` and a host environment for it, with the chart's
/// credentials for that node: (environment, Node UID, kubeconfig).
pub fn cluster_env(cp: &ControlPlane, name: &str) -> (HostEnv, String, PathBuf) {
    let node_uid = cp.create_node(name).unwrap();
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    env.node_name = name.to_owned();
    let kubeconfig = cp.host_kubeconfig(name, &env.dir().join("kubeconfig")).unwrap();
    env.use_kubeconfig(&kubeconfig);
    (env, node_uid, kubeconfig)
}

/// The other pod of a rolling update, as far as the node-wide lock goes: its
/// own open file description of `<plugin dir>/serialize.lock`.
pub struct OtherPod(std::fs::File);

impl OtherPod {
    pub fn open(plugin_dir: &Path) -> Self {
        Self(std::fs::File::open(plugin_dir.join("serialize.lock")).unwrap())
    }

    /// Take the lock without waiting; false when the host holds it.
    pub fn try_lock(&self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor `self` keeps open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    pub fn unlock(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

pub async fn cluster_node(
    cp: &ControlPlane,
    name: &str,
    setup: impl FnOnce(&mut HostEnv) -> (Vec<DriverSpec>, String),
) -> ClusterNode {
    let (mut env, node_uid, kubeconfig) = cluster_env(cp, name);
    let (drivers, tables) = setup(&mut env);
    let node = Node::start_in(env, drivers, "", &tables).await;
    ClusterNode {
        name: name.to_owned(),
        uid: node_uid,
        kubeconfig,
        node,
    }
}

/// The slices of `driver` on `node`, as the API server stores them.
pub fn slices_of(cp: &ControlPlane, driver: &str, node: &str) -> Vec<serde_json::Value> {
    let list = cp
        .get(&[
            "resourceslices",
            &format!("--field-selector=spec.driver={driver},spec.nodeName={node}"),
        ])
        .unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}
