//! The kubelet's side of the wire, spoken by clients this project did not
//! write, against the real binary.
//!
//! The test kubelet (tests/src/kubelet.rs) is a tonic client: it agrees with
//! the host about everything, including the `:authority` it sends. The real
//! kubelet is grpc-go, and dials the plugin sockets in ways that put the
//! socket path, percent-encoded, into `:authority` (grpc-go before 1.57,
//! in kubelets before 1.29, sent it raw). These tests run:
//!
//! - grpc-go 1.82.1, the version k8s.io/kubernetes v1.37.2 requires, with the
//!   kubelet's own stubs (k8s.io/kubelet v0.37.2): the Go module in
//!   tests/peers/go/, built by its build.sh into the target directory,
//!   dialing exactly as the kubelet's plugin watcher
//!   (`grpc.DialContext(path)`), the DRA plugin client of kubelets 1.31-1.33
//!   (`grpc.Dial(endpoint)`) and that of 1.34+ (`grpc.NewClient("unix:"…)`)
//!   do; it also runs forcing the raw path (`grpc.WithAuthority`) that
//!   grpc-go before 1.57 sent, which HTTP/2 servers refuse outright;
//! - Python grpcio (gRPC C-core): tests/peers/python/kubelet_peer.py, with
//!   default channel options and with the percent-encoded path.
//!
//! Each peer is the only kubelet of its host (no test kubelet runs, so
//! nothing else registers the plugin). Each prints one JSON line per call;
//! a failure names the client, the dial and the call, with the gRPC error,
//! the client's output and the host's log. A last test checks, with a probe
//! server that records the bytes, that each client really sends the
//! `:authority` it is meant to reproduce.
//!
//! grpcio is installed by tests/run.sh; the grpc-go programs need Go >= 1.26
//! and the Go module proxy (or a module cache that holds go.sum's modules).
//! Where a client is missing the tests fail and say so, unless `DRA_SKIP_REAL_CLIENTS=1` asks to skip them,
//! which each skipped test prints.

use crate::common::*;
use dra_test_support::claims::{Claim, ClaimsFile, uid};
use dra_test_support::host::{DriverSpec, HostEnv, HostProcess};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Devices of the example guest in these tests (each health message lists them all).
const DEVICES: u64 = 2;
/// A peer's whole run; its own deadlines (at most 45 s a call) end it sooner.
const PEER_TIMEOUT: Duration = Duration::from_secs(200);
const INSTALL_HINT: &str = "the grpc-go peer (tests/peers/go/build.sh) needs Go >= 1.26 on PATH or at \
     /usr/local/go/bin/go and the Go module proxy (GOPROXY) for the modules in its go.sum; \
     run tests/run.sh for the pinned grpcio/grpcio-tools/protobuf; \
     or set DRA_SKIP_REAL_CLIENTS=1 to skip these tests";

/// Whether to skip: only when `DRA_SKIP_REAL_CLIENTS=1` asks to, loudly.
pub(crate) fn skipped(test: &str) -> bool {
    let skip = std::env::var("DRA_SKIP_REAL_CLIENTS").as_deref() == Ok("1");
    if skip {
        println!("SKIPPED kubelet_clients::{test}: real grpc-go/grpcio clients not run (DRA_SKIP_REAL_CLIENTS=1)");
    }
    skip
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The programs tests/peers/go/build.sh builds.
#[derive(Clone)]
pub(crate) struct GoPrograms {
    /// The grpc-go kubelet peer.
    pub(crate) peer: PathBuf,
    /// The server that records what a client sends.
    probe: PathBuf,
    /// The container runtime's CDI injection (tests/e2e/cdi_runtime.rs).
    pub(crate) cdi_inject: PathBuf,
    /// A workload's decoding of a device metadata file (tests/e2e/cdi_runtime.rs).
    pub(crate) metadata_decode: PathBuf,
}

/// The grpc-go programs, built once per test run.
pub(crate) async fn go_programs() -> GoPrograms {
    static BUILT: OnceLock<Result<GoPrograms, String>> = OnceLock::new();
    let built = tokio::task::spawn_blocking(|| {
        BUILT
            .get_or_init(|| {
                let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubelet-peer-go");
                let script = repo_root().join("tests/peers/go/build.sh");
                let run = std::process::Command::new("bash")
                    .arg(&script)
                    .arg(&out)
                    .output()
                    .map_err(|e| format!("running {}: {e}", script.display()))?;
                if !run.status.success() {
                    return Err(format!(
                        "{} failed ({}):\n{}{}",
                        script.display(),
                        run.status,
                        String::from_utf8_lossy(&run.stdout),
                        String::from_utf8_lossy(&run.stderr)
                    ));
                }
                Ok(GoPrograms {
                    peer: out.join("kubelet-peer"),
                    probe: out.join("authority-probe"),
                    cdi_inject: out.join("cdi-inject"),
                    metadata_decode: out.join("metadata-decode"),
                })
            })
            .clone()
    })
    .await
    .expect("building the grpc-go programs");
    built.unwrap_or_else(|e| panic!("the grpc-go kubelet peer could not be built: {e}\n{INSTALL_HINT}"))
}

/// The grpcio peer's script, once `python3` can import grpcio and grpc_tools.
fn python_peer() -> PathBuf {
    let check = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    match check {
        Ok(out) if out.status.success() => repo_root().join("tests/peers/python/kubelet_peer.py"),
        Ok(out) => panic!(
            "python3 cannot import grpc and grpc_tools: {}\n{INSTALL_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("running python3: {e}\n{INSTALL_HINT}"),
    }
}

/// A host with the example guest and one allocated claim, and no kubelet:
/// the peer under test is the only one.
struct BareNode {
    env: HostEnv,
    host: HostProcess,
    claim: Claim,
}

impl BareNode {
    async fn start() -> BareNode {
        let env = HostEnv::new(&cache_dir()).expect("temporary node");
        let mut claims = ClaimsFile::new(&env.claims_path).expect("claims file");
        let claim = Claim::new("default", "peer", &uid(7)).device(DRIVER, POOL, "gpu-1", "gpu");
        claims.put(std::slice::from_ref(&claim)).expect("claims");
        let spec = DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config(&format!("devices = {DEVICES}"));
        env.write_config(&[spec], "").expect("config");
        let mut host = env.start(&binary()).expect("host");
        // The registration socket is bound after the DRA socket: both serve.
        let registration = registration_socket(&env);
        let deadline = Instant::now() + START_TIMEOUT;
        while !registration.exists() {
            if let Ok(Some(status)) = host.try_status() {
                panic!("host exited ({status}) before serving; log:\n{}", host.log());
            }
            assert!(
                Instant::now() < deadline,
                "no registration socket after {START_TIMEOUT:?}; host log:\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        BareNode { env, host, claim }
    }

    fn registration_socket(&self) -> PathBuf {
        registration_socket(&self.env)
    }

    fn dra_socket(&self) -> PathBuf {
        self.env.kubelet_root.join("plugins").join(DRIVER).join("dra.sock")
    }

    fn claim_arg(&self) -> String {
        format!("{}/{}/{}", self.claim.namespace, self.claim.name, self.claim.uid)
    }

    fn cdi_id(&self) -> String {
        format!("k8s.{DRIVER}/device={}_gpu-1", self.claim.uid)
    }

    fn cdi_spec(&self) -> PathBuf {
        self.env
            .cdi_dir
            .join(format!("k8s.{DRIVER}-device_{}.json", self.claim.uid))
    }
}

fn registration_socket(env: &HostEnv) -> PathBuf {
    env.kubelet_root
        .join("plugins_registry")
        .join(format!("{DRIVER}-reg.sock"))
}

/// What a peer printed: one JSON object per step.
pub(crate) struct PeerRun {
    /// Names the peer in failure messages, e.g. "grpc-go pre-1.34 DRA dial".
    what: String,
    steps: Vec<Value>,
    output: String,
    host_log: String,
}

impl PeerRun {
    /// The step's line, after checking it (and every step before it) succeeded.
    pub(crate) fn ok(&self, step: &str) -> &Value {
        let failed = self.steps.iter().find(|s| s["ok"] != Value::Bool(true));
        let found = self.steps.iter().find(|s| s["step"] == step);
        match (found, failed) {
            (Some(line), None) => line,
            (_, Some(f)) => panic!(
                "{} ({}, {} dial): {} failed: {}\n{}",
                self.what,
                f["client"].as_str().unwrap_or("?"),
                f["dial"].as_str().unwrap_or("?"),
                f["step"].as_str().unwrap_or("?"),
                f["error"].as_str().unwrap_or("?"),
                self.context()
            ),
            (None, None) => panic!(
                "{}: the client stopped before the call {step:?}\n{}",
                self.what,
                self.context()
            ),
        }
    }

    pub(crate) fn context(&self) -> String {
        format!(
            "client output:\n{}\nhost log:\n{}",
            self.output.trim_end(),
            self.host_log
        )
    }
}

/// Run a peer to its end (or [`PEER_TIMEOUT`]) and collect its steps.
/// `host`: the host it talks to, whose log failure messages show.
pub(crate) async fn run_peer(what: &str, program: &Path, args: &[&str], host: Option<&HostProcess>) -> PeerRun {
    let host_log = || host.map(HostProcess::log).unwrap_or_else(|| "(no host)".into());
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: starting {}: {e}", program.display()));
    let out = tokio::time::timeout(PEER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: still running after {PEER_TIMEOUT:?}; host log:\n{}",
                host_log()
            )
        })
        .unwrap_or_else(|e| panic!("{what}: waiting for the client: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let output = format!("{stdout}{}(exit: {})", String::from_utf8_lossy(&out.stderr), out.status);
    let steps = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    PeerRun {
        what: what.to_owned(),
        steps,
        output,
        host_log: host_log(),
    }
}

/// The DRA calls' answers, the same whichever client made them.
fn check_dra_steps(run: &PeerRun, node: &BareNode, service: &str, health: &str) {
    let want = [node.cdi_id()];
    let first = run.ok(&format!("{service}.NodePrepareResources"));
    assert_eq!(first["cdi_device_ids"], serde_json::json!(want), "{}", run.context());
    let again = run.ok(&format!("{service}.NodePrepareResources (repeated)"));
    assert_eq!(again["cdi_device_ids"], serde_json::json!(want), "{}", run.context());
    run.ok(&format!("{service}.NodeUnprepareResources"));
    assert!(
        !node.cdi_spec().exists(),
        "{}: unprepare left {}",
        run.what,
        node.cdi_spec().display()
    );
    let watched = run.ok(&format!("{health}.NodeWatchResources"));
    assert_eq!(watched["devices"], DEVICES, "{}", run.context());
}

/// Registration as the plugin watcher does it, answers checked.
fn check_registration(run: &PeerRun, node: &BareNode) {
    let info = run.ok("GetInfo");
    assert_eq!(info["type"], "DRAPlugin", "{}", run.context());
    assert_eq!(info["name"], DRIVER, "{}", run.context());
    assert_eq!(
        info["endpoint"],
        node.dra_socket().to_str().unwrap(),
        "{}",
        run.context()
    );
    assert_eq!(
        info["supported_versions"],
        serde_json::json!([
            "v1.DRAPlugin",
            "v1beta1.DRAPlugin",
            "v1.DRAResourceHealth",
            "v1alpha1.DRAResourceHealth"
        ]),
        "{}",
        run.context()
    );
    run.ok("NotifyRegistrationStatus");
    assert!(
        run.host_log.contains("kubelet registered the plugin"),
        "{}: the host did not record the registration\n{}",
        run.what,
        run.context()
    );
}

/// A 1.34+ kubelet end to end: the plugin watcher registers the plugin
/// (`grpc.DialContext(socketPath, …)` with no authority: grpc-go puts the
/// socket path, percent-encoded, in `:authority`), then the DRA plugin client dials the
/// endpoint GetInfo answered as 1.34+ does and prepares, prepares again,
/// unprepares and reads the v1 health stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_plugin_watcher_dial_registers() {
    if skipped("grpc_go_plugin_watcher_dial_registers") {
        return;
    }
    let go = go_programs().await;
    let node = BareNode::start().await;
    let registration = node.registration_socket();
    let claim = node.claim_arg();
    let args = [
        "-registration",
        registration.to_str().unwrap(),
        "-dial",
        "new-client",
        "-claim",
        &claim,
    ];
    let run = run_peer("grpc-go plugin watcher dial", &go.peer, &args, Some(&node.host)).await;
    check_registration(&run, &node);
    check_dra_steps(&run, &node, "v1", "v1");
}

/// A 1.32/1.33 kubelet end to end: the plugin watcher's registration, then
/// the DRA dial of kubelets 1.31-1.33, `grpc.Dial(endpoint, …)` with a bare
/// path, so `:authority` is the socket path, percent-encoded (as grpc-go
/// 1.65/1.68 in those kubelets sends it). 1.32 and 1.33 talked v1beta1 and
/// had no health stream; the v1alpha1 stream is read through the same dial
/// to cover a server-streaming call with this authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_pre_1_34_dra_dial() {
    if skipped("grpc_go_pre_1_34_dra_dial") {
        return;
    }
    let go = go_programs().await;
    let node = BareNode::start().await;
    let registration = node.registration_socket();
    let claim = node.claim_arg();
    let args = [
        "-registration",
        registration.to_str().unwrap(),
        "-dial",
        "pre-1.34",
        "-service",
        "v1beta1",
        "-health",
        "v1alpha1",
        "-claim",
        &claim,
    ];
    let run = run_peer("grpc-go pre-1.34 DRA dial", &go.peer, &args, Some(&node.host)).await;
    check_registration(&run, &node);
    let dial = run.ok("Dial");
    assert_eq!(
        dial["target"],
        node.dra_socket().to_str().unwrap(),
        "a bare path: {}",
        run.context()
    );
    check_dra_steps(&run, &node, "v1beta1", "v1alpha1");
}

/// The DRA dial of kubelets 1.34+: `grpc.NewClient("unix:" + endpoint)` and
/// `Connect()`, which sends `:authority: localhost` (grpc-go's unix
/// resolver), v1 services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_new_client_dial() {
    if skipped("grpc_go_new_client_dial") {
        return;
    }
    let go = go_programs().await;
    let node = BareNode::start().await;
    let endpoint = node.dra_socket();
    let claim = node.claim_arg();
    let args = [
        "-dial",
        "new-client",
        "-endpoint",
        endpoint.to_str().unwrap(),
        "-service",
        "v1",
        "-health",
        "v1",
        "-claim",
        &claim,
    ];
    let run = run_peer("grpc-go 1.34+ DRA dial", &go.peer, &args, Some(&node.host)).await;
    let dial = run.ok("Dial");
    assert!(
        dial["target"].as_str().is_some_and(|t| t.starts_with("unix:")),
        "{}",
        run.context()
    );
    check_dra_steps(&run, &node, "v1", "v1");
}

/// The raw socket path as `:authority`, what grpc-go before 1.57 sent on a
/// bare-path dial (kubelets before 1.29, older than any this host serves;
/// forced here with `grpc.WithAuthority`): '/' is not allowed in an
/// authority, so hyper's h2 alone refuses it. Registration and the
/// `grpc.Dial(endpoint)` DRA dial, v1beta1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_raw_path_authority() {
    if skipped("grpc_go_raw_path_authority") {
        return;
    }
    let go = go_programs().await;
    let node = BareNode::start().await;
    let registration = node.registration_socket();
    let claim = node.claim_arg();
    let args = [
        "-authority",
        "raw",
        "-registration",
        registration.to_str().unwrap(),
        "-dial",
        "pre-1.34",
        "-service",
        "v1beta1",
        "-health",
        "v1alpha1",
        "-claim",
        &claim,
    ];
    let run = run_peer(
        "grpc-go with the raw path as authority",
        &go.peer,
        &args,
        Some(&node.host),
    )
    .await;
    check_registration(&run, &node);
    check_dra_steps(&run, &node, "v1beta1", "v1alpha1");
}

async fn python_flow(test: &str, authority: &str) {
    if skipped(test) {
        return;
    }
    let script = python_peer();
    let node = BareNode::start().await;
    let registration = node.registration_socket();
    let claim = node.claim_arg();
    let args = [
        script.to_str().unwrap(),
        "--registration",
        registration.to_str().unwrap(),
        "--authority",
        authority,
        "--claim",
        &claim,
    ];
    let what = format!("python grpcio, {authority} authority");
    let run = run_peer(&what, Path::new("python3"), &args, Some(&node.host)).await;
    check_registration(&run, &node);
    check_dra_steps(&run, &node, "v1", "v1");
}

/// grpcio with default channel options (`unix:/abs/path`): C-core picks the
/// authority itself (the path without its leading '/', percent-encoded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_default_options() {
    python_flow("python_grpcio_default_options", "default").await;
}

/// grpcio sending exactly what a kubelet's grpc-go sends for a bare-path
/// dial: the socket path, percent-encoded (`%2Fvar%2F…`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_percent_encoded_authority() {
    python_flow("python_grpcio_percent_encoded_authority", "percent-encoded").await;
}

/// grpc-go's percent-encoding of an authority (clientconn.go, since 1.57;
/// `encodeAuthority` in 1.82.1):
/// letters, digits, `-._~`, sub-delims and `:[]@` kept, every other byte `%XX`.
fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]@".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The tests above rest on what each client sends as `:authority`. Each
/// client calls a probe server (golang.org/x/net/http2, answering
/// UNIMPLEMENTED) that records the bytes as they arrive; each must send
/// exactly the authority it reproduces, or the tests above would test
/// something else (after the host's fix they would pass whatever the
/// clients sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_send_the_authority_they_reproduce() {
    if skipped("clients_send_the_authority_they_reproduce") {
        return;
    }
    let go = go_programs().await;
    let script = python_peer();
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("probe.sock");
    let sock = socket.to_str().unwrap();

    let mut probe = tokio::process::Command::new(&go.probe)
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the authority probe");
    let mut stderr = tokio::io::BufReader::new(probe.stderr.take().unwrap());
    let mut ready = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncBufReadExt::read_line(&mut stderr, &mut ready),
    )
    .await
    .expect("the probe did not start within 10 s")
    .expect("reading the probe's stderr");
    assert_eq!(ready.trim(), "listening", "the probe failed to start");

    let claim = "default/probe/uid";
    let py = script.to_str().unwrap();
    // (client, program, arguments, the :authority it must send)
    let clients: Vec<(&str, &Path, Vec<&str>, String)> = vec![
        (
            "grpc-go plugin watcher dial",
            &go.peer,
            vec!["-registration", sock],
            percent_encoded(sock),
        ),
        (
            "grpc-go plugin watcher dial, raw path forced",
            &go.peer,
            vec!["-authority", "raw", "-registration", sock],
            sock.to_owned(),
        ),
        (
            "grpc-go pre-1.34 DRA dial",
            &go.peer,
            vec!["-dial", "pre-1.34", "-endpoint", sock, "-claim", claim],
            percent_encoded(sock),
        ),
        (
            "grpc-go pre-1.34 DRA dial, raw path forced",
            &go.peer,
            vec![
                "-authority",
                "raw",
                "-dial",
                "pre-1.34",
                "-endpoint",
                sock,
                "-claim",
                claim,
            ],
            sock.to_owned(),
        ),
        (
            "grpc-go 1.34+ DRA dial",
            &go.peer,
            vec!["-dial", "new-client", "-endpoint", sock, "-claim", claim],
            "localhost".to_owned(),
        ),
        (
            "python grpcio, default options",
            Path::new("python3"),
            vec![py, "--registration", sock, "--authority", "default", "--claim", claim],
            percent_encoded(sock.strip_prefix('/').unwrap()),
        ),
        (
            "python grpcio, percent-encoded",
            Path::new("python3"),
            vec![
                py,
                "--registration",
                sock,
                "--authority",
                "percent-encoded",
                "--claim",
                claim,
            ],
            percent_encoded(sock),
        ),
    ];
    for (what, program, args, _) in &clients {
        let run = run_peer(what, program, args, None).await;
        // Each stops at its first call, refused by the probe: proof it got there.
        assert!(
            run.steps
                .iter()
                .any(|s| s["ok"] == false && s["error"].as_str().is_some_and(|e| e.contains("authority-probe"))),
            "{what} did not reach the probe\n{}",
            run.context()
        );
    }
    probe.start_kill().expect("stopping the probe");
    let out = probe.wait_with_output().await.expect("the probe's output");
    let seen: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a probe line"))
        .collect();
    assert_eq!(
        seen.len(),
        clients.len(),
        "one request per client expected; the probe saw {seen:#?}"
    );
    for ((what, _, _, want), got) in clients.iter().zip(&seen) {
        assert_eq!(got["has_authority"], true, "{what}: no :authority sent ({got})");
        assert_eq!(got["authority"], want.as_str(), "{what}: :authority sent ({got})");
    }
}
