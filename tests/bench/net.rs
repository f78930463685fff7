//! The macvlan guest on the `net` imports, through the release binary, with
//! real netlink: a prepare of two shares of one NIC, and the CDI hook that
//! attaches a prepared link to its pod.
//!
//! Run as root: `cargo bench --bench net` (options after `--`:
//! `--iterations N`). It creates a veth pair as the parent NIC and two
//! network namespaces as pods (names `dwt…`), and removes them at the end,
//! also when it fails.
//!
//! One iteration: `NodePrepareResources` for two claims, each a share of the
//! NIC (guest `prepare` → two macvlans created over netlink, addresses from
//! the host's IPAM, CDI specs, checkpoint, `status.devices` written to the
//! test API server) → the createRuntime hook run as a container runtime runs
//! it, for the first claim's pod (the real binary: connect to the host's
//! attach socket; the host moves the link into the pod, renames it, adds the
//! address and the default route, sets it up, adds the egress limit) → the
//! same hook again (a second container of that pod: nothing to move) → the
//! hook for the second claim → `NodeUnprepareResources` for both.
//!
//! The API client's rate limit is raised for the run (see below); with the
//! default one, back-to-back iterations measure the limiter.
//!
//! The tonic test kubelet calls the host: a latency as the kubelet's socket sees
//! it; the Go kubelet peer would time itself behind its JSON-lines pipe.

use dra_test_support::apiserver::TestApiServer;
use dra_test_support::bench::{Latencies, arg};
use dra_test_support::host::HostEnv;
use dra_test_support::kubelet::TestKubelet;
use dra_test_support::netlab::{self, Lab};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DRIVER: &str = "net.dra.dev";
const NODE_UID: &str = "6a1b2c3d-0000-4000-8000-0000000000ee";
const WARMUP: usize = 5;

fn main() {
    if !netlab::is_root() {
        eprintln!("cargo bench --bench net needs root: it creates a veth pair and network namespaces");
        std::process::exit(1);
    }
    let iterations = arg("--iterations", 200usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(iterations));
}

#[derive(Default)]
struct Samples {
    prepare: Vec<Duration>,
    attach: Vec<Duration>,
    repeated: Vec<Duration>,
    unprepare: Vec<Duration>,
    /// Starting the hook's program and nothing else (`--version`): the part
    /// of an attach that is the runtime's exec, not the host.
    exec: Vec<Duration>,
}

async fn run(iterations: usize) {
    // Quiet logs unless asked (`DRA_TEST_LOG=debug`): the bench measures the host, not its log volume.
    if std::env::var_os("DRA_TEST_LOG").is_none() {
        // SAFETY: set before any other thread of this process reads the environment.
        unsafe { std::env::set_var("DRA_TEST_LOG", "warn") };
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_dra-wasm-host"));
    let mut lab = Lab::new(1);
    let parent = lab.parents[0].clone();
    let api = TestApiServer::start().await.expect("test API server");
    api.put_node("test-node", NODE_UID);
    let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut env = HostEnv::new(&target_tmp.join("bench-guest-cache")).expect("node layout");
    env.use_api_server(&api).expect("kubeconfig");
    let guest = PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join("macvlan_driver.wasm");
    let spec = netlab::macvlan_driver(DRIVER, &guest, &[&parent], &netlab::parent_config(&lab.parents));
    // The API client's rate limit (default 5 requests/s after a burst of 10,
    // as client-go's) would pace back-to-back iterations at 200 ms per
    // request (6 per prepare of 2 claims): raised, so that what is measured
    // is the prepare.
    env.write_config_with(&[spec], "", "[kubernetes]\nqps = 10000.0\nburst = 10000\n")
        .expect("config");
    let kubelet = TestKubelet::start(&env.kubelet_root).expect("test kubelet");
    let mut host = env.start(binary).expect("host");
    let plugin = kubelet
        .wait_for_plugin(DRIVER, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.log()));

    let claims = [
        netlab::share_claim(DRIVER, "test-node", "a", 1, &parent, 901, "200M"),
        netlab::share_claim(DRIVER, "test-node", "b", 2, &parent, 902, "300M"),
    ];
    for c in &claims {
        api.put_claim(c.to_json());
    }
    let refs: Vec<_> = claims.iter().map(|c| c.reference()).collect();
    let pods = [lab.pod(), lab.pod()];

    let mut s = Samples::default();
    for i in 0..WARMUP + iterations {
        let record = i >= WARMUP;
        let t = Instant::now();
        let answer = plugin.prepare(&refs).await.expect("prepare");
        let prepare = t.elapsed();
        for c in &claims {
            assert_eq!(answer[&c.uid].error, "", "prepare failed\nhost log:\n{}", host.log());
        }
        let mut attach = Vec::new();
        let mut repeated = None;
        for (c, (_, pid)) in claims.iter().zip(&pods) {
            let spec_path = env.cdi_dir.join(format!("k8s.{DRIVER}-device_{}.json", c.uid));
            let spec = serde_json::from_slice(&std::fs::read(&spec_path).expect("CDI spec")).expect("CDI JSON");
            let (path, args) = netlab::cdi_hook(&spec);
            let t = Instant::now();
            let (ok, out) = netlab::run_hook(&path, &args, *pid);
            attach.push(t.elapsed());
            assert!(ok && out.contains("\"moved\":true"), "{out}\nhost log:\n{}", host.log());
            if repeated.is_none() {
                let t = Instant::now();
                let (ok, out) = netlab::run_hook(&path, &args, *pid);
                repeated = Some(t.elapsed());
                assert!(ok && out.contains("\"moved\":false"), "{out}");
            }
        }
        let t = Instant::now();
        let gone = plugin.unprepare(&refs).await.expect("unprepare");
        let unprepare = t.elapsed();
        assert!(gone.values().all(String::is_empty), "{gone:?}");
        let t = Instant::now();
        let version = std::process::Command::new(binary)
            .arg("--version")
            .output()
            .expect("hook program");
        let exec = t.elapsed();
        assert!(version.status.success());
        if record {
            s.prepare.push(prepare);
            s.attach.extend(attach);
            s.repeated.extend(repeated);
            s.unprepare.push(unprepare);
            s.exec.push(exec);
        }
    }

    println!(
        "macvlan guest over real netlink, {} build, {iterations} iterations (1 veth parent, 2 pods)",
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    let report = |what: &str, samples: &[Duration]| {
        println!("  {what}: {}", Latencies::of(samples).expect("samples"));
    };
    report(
        "prepare of 2 shares (macvlans + IPAM + CDI + checkpoint + status)",
        &s.prepare,
    );
    report("hook attach (exec + move, rename, address, route, tbf)", &s.attach);
    report("repeated hook (second container: nothing to move)", &s.repeated);
    report(
        "unprepare of 2 shares (links deleted, addresses released)",
        &s.unprepare,
    );
    report("of which exec of the hook program alone (--version)", &s.exec);
    host.terminate(Duration::from_secs(20)).expect("clean stop");
}
