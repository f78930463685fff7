//! The host beside the driver users pick today, under the same kubelet load
//! in one run: a Go driver on `k8s.io/dynamic-resource-allocation/kubeletplugin`
//! v0.37.2 doing the work of kubernetes-sigs/dra-example-driver's kubelet
//! plugin (`tests/peers/exampledriver`: the example driver's own module is not
//! served by the Go module proxy, so the same work is written on the helper),
//! and the host with the example guest.
//!
//! Run: `cargo bench --bench peers` (options after `--`: `--claims N` per
//! driver (64), `--seconds S` per phase (5), `--rounds R` (2), `--callers
//! LIST` (`1,4,16`), `--qps Q` (1000), `--load grpc-go|tonic` (grpc-go),
//! `--state-dir DIR`, `--rolling-update true|false` (true), `--host PATH`: another build of the
//! host's binary, for a figure of an earlier commit beside the same peer).
//!
//! One control plane (`tests/k8s/up.sh`, the chart installed by Helm) and one
//! Node object. Each driver gets its own driver name, DeviceClass and the
//! same N claims, allocated in the API server; each reads its claims from the
//! API server on prepare (the host with the chart's ServiceAccount token, as
//! its DaemonSet pod; the Go driver with the admin's kubeconfig, as the
//! example driver's chart gives it its own ServiceAccount). Both write CDI
//! specs to a tmpfs (`/dev/shm`, as `/var/run/cdi` is on nodes) and their
//! checkpoint to the same file system (`--state-dir`, default `/var/tmp`, a
//! disk: short enough that the DRA socket a rolling-update pod names after
//! its UID, `<dir>/dra-host-XXXXXX/kubelet/plugins/<driver>/dra-<UID>.sock`,
//! stays under the 108 bytes of a Unix socket path, which a checkout's
//! target directory may not). The host runs as the chart deploys it by default
//! (`rollingUpdate.seamless: true`: `--rolling-update-uid`, so each kubelet
//! call takes the node-wide lock a second pod would share), and the Go
//! helper serializes its calls by default: both then run one kubelet call at
//! a time. `--rolling-update false` runs the host without the lock.
//!
//! Each prepare reads its claim from the API server, through a client-side
//! rate limit in both drivers (client-go's token bucket in the Go driver, the
//! host's own); both default to client-go's 5 QPS, burst 10, which caps both
//! at about 7 prepares/s whatever their own cost. The bench sets both to
//! `--qps` (burst twice that) so that the drivers' own work is measured; run
//! with `--qps 5` to see the defaults.
//!
//! The load: the tonic test kubelet (`dra_test_support::kubelet`) registers
//! each driver as the kubelet does; then the grpc-go kubelet peer
//! (`tests/peers/go`, `-load`: grpc-go 1.82.1 and the kubelet's own v1 stubs,
//! dialing as a 1.37 kubelet does) drives its DRA socket, one connection per
//! caller, each caller looping prepare → unprepare over its share of the
//! claims (`--load tonic`: the same loop from the tonic client, in this
//! process). Phases of the two drivers alternate at each
//! concurrency (`rounds` each), so both see the same machine. CPU per pair is
//! the driver process's user + system time from `/proc/<pid>/stat`; RSS is
//! `VmRSS` after registration and after all phases; start → registered is
//! from spawning the process to the test kubelet's registration of it (the
//! host's guest already compiled in its cache by an earlier start).
//!
//! When Go or the control plane cannot be built, it says so in one line and
//! exits 0.

use dra_proto::dra::v1;
use dra_proto::services;
use dra_test_support::bench::{Latencies, arg, ms, process_cpu_time, status_kib};
use dra_test_support::claims::Claim;
use dra_test_support::controlplane::ControlPlane;
use dra_test_support::host::{DriverSpec, HostEnv, HostProcess};
use dra_test_support::kubelet::TestKubelet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The host's driver: the example guest, as the chart's values deploy it.
const OURS: &str = "example.dra.dev";
/// The Go driver's name (a DeviceClass of its own).
const THEIRS: &str = "gpu.peer.example.com";
const NODE: &str = "peers-node";
const NAMESPACE: &str = "peers";

fn main() {
    let claims = arg("--claims", 64usize);
    let seconds = arg("--seconds", 5u64);
    let rounds = arg("--rounds", 2usize);
    let callers: Vec<usize> = arg("--callers", "1,4,16".to_owned())
        .split(',')
        .map(|c| c.trim().parse().expect("--callers: a comma-separated list of numbers"))
        .collect();
    let qps = arg("--qps", 1000.0f64);
    let load = arg("--load", "grpc-go".to_owned());
    let rolling_update = arg("--rolling-update", true);
    let host_binary = Some(PathBuf::from(arg("--host", String::new())))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dra-wasm-host")));
    let state_dir = Some(PathBuf::from(arg("--state-dir", String::new())))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    // SAFETY: set before any thread or process starts; HostEnv's temporary
    // directories follow it.
    unsafe {
        std::env::set_var("TMPDIR", &state_dir);
        std::env::set_var("DRA_TEST_LOG", "warn");
    }

    let go_driver = match build_go_driver() {
        Ok(path) => path,
        Err(e) => {
            println!("peers: skipped, the Go driver (tests/peers/exampledriver) cannot be built: {e}");
            return;
        }
    };
    let load_driver = match load.as_str() {
        "tonic" => None,
        "grpc-go" => match build_go_load() {
            Ok(path) => Some(path),
            Err(e) => {
                println!("peers: skipped, the grpc-go kubelet peer (tests/peers/go) cannot be built: {e}");
                return;
            }
        },
        other => panic!("--load {other}: grpc-go or tonic"),
    };
    let cp = match ControlPlane::start().and_then(|cp| cp.install_chart().map(|()| cp)) {
        Ok(cp) => cp,
        Err(e) => {
            println!(
                "peers: skipped, the control plane (tests/k8s/up.sh + Helm) cannot be started: {}",
                format!("{e:#}").lines().next().unwrap_or_default()
            );
            return;
        }
    };
    cp.create_node(NODE).expect("node");
    cp.apply(&device_class(THEIRS)).expect("DeviceClass");
    let started = Instant::now();
    let put = |driver: &str, prefix: &str| -> Vec<Claim> {
        (0..claims)
            .map(|i| {
                let claim = Claim::new(NAMESPACE, &format!("{prefix}-{i}"), "").device(
                    driver,
                    NODE,
                    &format!("gpu-{i}"),
                    "gpu",
                );
                cp.put_claim(&claim, NODE).expect("allocated claim")
            })
            .collect()
    };
    let ours_claims = put(OURS, "ours");
    let theirs_claims = put(THEIRS, "theirs");
    eprintln!(
        "peers: {} allocated claims in {:.1} s",
        2 * claims,
        started.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut subjects = [
            Subject::host(&cp, &host_binary, claims, qps, rolling_update, ours_claims).await,
            Subject::go(&cp, &go_driver, claims, qps, theirs_claims).await,
        ];
        for s in &mut subjects {
            s.load = load_driver.clone();
            s.phase(1, Duration::from_secs(1), None).await;
        }
        let mut results: Vec<[Phase; 2]> = callers.iter().map(|_| Default::default()).collect();
        for _ in 0..rounds {
            for (i, &c) in callers.iter().enumerate() {
                for (s, r) in subjects.iter_mut().zip(results[i].iter_mut()) {
                    s.phase(c, Duration::from_secs(seconds), Some(r)).await;
                }
            }
        }
        for s in &mut subjects {
            s.rss_after_load = status_kib(s.pid(), "VmRSS").expect("RSS");
        }
        report(
            &subjects,
            &callers,
            &results,
            &format!(
                "{claims} allocated claims per driver read from the API server (client QPS {qps}, burst {}), \
                 {rounds} alternating phases of {seconds} s per driver and concurrency; CDI on tmpfs, state in {}; \
                 the host {} ({})",
                (2.0 * qps) as u32,
                state_dir.display(),
                if rolling_update {
                    "in rolling-update mode (calls under the node-wide lock, as the chart runs it)"
                } else {
                    "without the rolling-update lock"
                },
                host_binary.display(),
            ),
        );
        for s in &mut subjects {
            s.stop();
        }
    });
}

/// tests/peers/exampledriver/build.sh: the binary's path, or why not.
fn build_go_driver() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/exampledriver/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(stderr.lines().last().unwrap_or("build.sh failed").to_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .map(PathBuf::from)
        .ok_or_else(|| "build.sh printed no path".to_owned())
}

/// tests/peers/go/build.sh: the grpc-go kubelet peer's path, or why not.
fn build_go_load() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/go/build.sh");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubelet-peer-go");
    let run = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !run.status.success() {
        let stderr = String::from_utf8_lossy(&run.stderr);
        return Err(stderr.lines().last().unwrap_or("build.sh failed").to_owned());
    }
    Ok(out.join("kubelet-peer"))
}

fn device_class(driver: &str) -> String {
    serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
        "metadata": { "name": driver },
        "spec": { "selectors": [{ "cel": { "expression": format!("device.driver == '{driver}'") } }] },
    })
    .to_string()
}

/// One phase's figures of one driver at one concurrency, summed over rounds.
#[derive(Default)]
struct Phase {
    prepare: Vec<Duration>,
    unprepare: Vec<Duration>,
    pairs: u64,
    elapsed: Duration,
    cpu: Duration,
}

impl Phase {
    fn pairs_per_second(&self) -> f64 {
        self.pairs as f64 / self.elapsed.as_secs_f64()
    }
    fn cpu_per_pair_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.pairs as f64
    }
    fn prepare(&self) -> Latencies {
        Latencies::of(&self.prepare).expect("prepare samples")
    }
    fn unprepare(&self) -> Latencies {
        Latencies::of(&self.unprepare).expect("unprepare samples")
    }
}

enum Process {
    Host(HostProcess),
    Go(Child),
}

struct Subject {
    label: &'static str,
    process: Process,
    _dirs: Vec<tempfile::TempDir>,
    _env: Option<HostEnv>,
    _kubelet: TestKubelet,
    endpoint: PathBuf,
    claims: Vec<v1::Claim>,
    /// The grpc-go kubelet peer, or `None` for the tonic client.
    load: Option<PathBuf>,
    registered_after: Duration,
    rss_after_start: u64,
    rss_after_load: u64,
}

fn wire_claims(claims: &[Claim]) -> Vec<v1::Claim> {
    claims
        .iter()
        .map(|c| v1::Claim {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            uid: c.uid.clone(),
        })
        .collect()
}

const KNOWN: [&str; 2] = [services::DRA_PLUGIN_V1, services::DRA_PLUGIN_V1BETA1];

impl Subject {
    /// The host with the example guest, started once to compile the guest
    /// into the cache, then again for the measured start.
    async fn host(
        cp: &ControlPlane,
        binary: &Path,
        devices: usize,
        qps: f64,
        rolling_update: bool,
        claims: Vec<Claim>,
    ) -> Subject {
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-guest-cache");
        let cdi = tempfile::tempdir_in("/dev/shm").expect("tmpfs");
        let start = |cdi: &Path| {
            let mut env = HostEnv::new(&cache).expect("node layout");
            env.node_name = NODE.to_owned();
            let kubeconfig = cp
                .host_kubeconfig(NODE, &env.dir().join("kubeconfig"))
                .expect("host credentials");
            env.use_kubeconfig(&kubeconfig);
            let guest = PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join("example_driver.wasm");
            env.write_config_with(
                &[DriverSpec::new(OURS, &guest).config(&format!("devices = {devices}"))],
                "",
                &format!("[kubernetes]\nqps = {qps:?}\nburst = {}\n", (2.0 * qps) as u32),
            )
            .expect("config");
            let config = std::fs::read_to_string(&env.config_path).expect("config");
            let config = config.replace(&format!("cdi_dir = {:?}", env.cdi_dir), &format!("cdi_dir = {cdi:?}"));
            std::fs::write(&env.config_path, config).expect("config");
            let kubelet = TestKubelet::start_with_services(&env.kubelet_root, &KNOWN).expect("kubelet");
            (env, kubelet)
        };
        // The priming start: the guest compiled into the cache.
        {
            let (env, kubelet) = start(cdi.path());
            let mut host = env.start(binary).expect("host");
            kubelet
                .wait_for_plugin(OURS, Duration::from_secs(300))
                .await
                .unwrap_or_else(|e| panic!("host: {e:#}\n{}", host.log()));
            host.terminate(Duration::from_secs(20)).expect("clean stop");
        }
        let (env, kubelet) = start(cdi.path());
        // As the chart's DaemonSet passes it, the pod's UID.
        let args: &[&str] = if rolling_update {
            &["--rolling-update-uid", "3c0f5a8e-2b1d-4e6f-9a7c-5d4e3f2a1b0c"]
        } else {
            &[]
        };
        let t = Instant::now();
        let host = env.start_with_args(binary, args).expect("host");
        let plugin = kubelet
            .wait_for_plugin(OURS, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("host: {e:#}\n{}", host.log()));
        let registered_after = t.elapsed();
        let rss_after_start = status_kib(host.pid(), "VmRSS").expect("RSS");
        Subject {
            label: "host (example guest)",
            process: Process::Host(host),
            _dirs: vec![cdi],
            _env: Some(env),
            _kubelet: kubelet,
            endpoint: plugin.endpoint,
            claims: wire_claims(&claims),
            load: None,
            registered_after,
            rss_after_start,
            rss_after_load: 0,
        }
    }

    /// The Go driver (tests/peers/exampledriver) with the admin's kubeconfig.
    async fn go(cp: &ControlPlane, binary: &Path, devices: usize, qps: f64, claims: Vec<Claim>) -> Subject {
        let dir = tempfile::Builder::new()
            .prefix("dra-peer-")
            .tempdir()
            .expect("node layout");
        let cdi = tempfile::tempdir_in("/dev/shm").expect("tmpfs");
        let root = dir.path().join("kubelet");
        let (registry, plugins) = (root.join("plugins_registry"), root.join("plugins"));
        std::fs::create_dir_all(&plugins).expect("plugins dir");
        let kubelet = TestKubelet::start_with_services(&root, &KNOWN).expect("kubelet");
        let log = std::fs::File::create(dir.path().join("driver.log")).expect("log");
        let t = Instant::now();
        let child = Command::new(binary)
            .arg(format!("--node-name={NODE}"))
            .arg(format!("--cdi-root={}", cdi.path().display()))
            .arg(format!("--kubelet-registrar-directory-path={}", registry.display()))
            .arg(format!("--kubelet-plugins-directory-path={}", plugins.display()))
            .arg(format!("--num-devices={devices}"))
            .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .arg(format!("--driver-name={THEIRS}"))
            .arg(format!("--kube-api-qps={qps}"))
            .arg(format!("--kube-api-burst={}", (2.0 * qps) as u32))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting the Go driver");
        let plugin = kubelet
            .wait_for_plugin(THEIRS, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Go driver: {e:#}\n{}",
                    std::fs::read_to_string(dir.path().join("driver.log")).unwrap_or_default()
                )
            });
        let registered_after = t.elapsed();
        let rss_after_start = status_kib(child.id(), "VmRSS").expect("RSS");
        Subject {
            label: "Go kubeletplugin v0.37.2 (example driver's work)",
            process: Process::Go(child),
            _dirs: vec![dir, cdi],
            _env: None,
            _kubelet: kubelet,
            endpoint: plugin.endpoint,
            claims: wire_claims(&claims),
            load: None,
            registered_after,
            rss_after_start,
            rss_after_load: 0,
        }
    }

    fn pid(&self) -> u32 {
        match &self.process {
            Process::Host(h) => h.pid(),
            Process::Go(c) => c.id(),
        }
    }

    fn stop(&mut self) {
        match &mut self.process {
            Process::Host(h) => {
                h.terminate(Duration::from_secs(20)).expect("clean stop");
            }
            Process::Go(c) => {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let _ = c.wait();
            }
        }
    }

    /// `callers` connections, each looping prepare → unprepare over its
    /// share of the claims for `length`; figures added to `into`.
    async fn phase(&mut self, callers: usize, length: Duration, into: Option<&mut Phase>) {
        if let Some(load) = &self.load {
            let batch = self
                .claims
                .iter()
                .map(|c| format!("{}/{}/{}", c.namespace, c.name, c.uid))
                .collect::<Vec<_>>()
                .join(",");
            let cpu_before = process_cpu_time(self.pid()).expect("CPU time");
            let out = tokio::process::Command::new(load)
                .arg("-dial=new-client")
                .arg(format!("-endpoint={}", self.endpoint.display()))
                .arg(format!("-batch={batch}"))
                .arg(format!("-load={callers}"))
                .arg(format!("-seconds={}", length.as_secs_f64()))
                .stdin(Stdio::null())
                .output()
                .await
                .expect("running the grpc-go kubelet peer");
            let cpu = process_cpu_time(self.pid())
                .expect("CPU time")
                .saturating_sub(cpu_before);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: grpc-go load: {stdout}{}",
                self.label,
                String::from_utf8_lossy(&out.stderr)
            );
            let line: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
                .unwrap_or_else(|e| panic!("grpc-go load printed {stdout:?}: {e}"));
            if let Some(into) = into {
                let us = |key: &str| -> Vec<Duration> {
                    line[key]
                        .as_array()
                        .expect("latencies")
                        .iter()
                        .map(|v| Duration::from_micros(v.as_u64().expect("µs")))
                        .collect()
                };
                into.pairs += line["pairs"].as_u64().expect("pairs");
                into.prepare.extend(us("prepare_us"));
                into.unprepare.extend(us("unprepare_us"));
                into.elapsed += Duration::from_secs_f64(line["seconds"].as_f64().expect("seconds"));
                into.cpu += cpu;
            }
            return;
        }
        let mut clients = Vec::new();
        let per = self.claims.len().div_ceil(callers);
        for chunk in self.claims.chunks(per) {
            let channel = dra_proto::connect_uds(&self.endpoint).await.expect("connect");
            clients.push((v1::dra_plugin_client::DraPluginClient::new(channel), chunk.to_vec()));
        }
        let cpu_before = process_cpu_time(self.pid()).expect("CPU time");
        let started = Instant::now();
        let deadline = started + length;
        let label = self.label;
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|(client, claims)| {
                tokio::spawn(dra_test_support::bench::prepare_unprepare_until(
                    client, claims, deadline, label,
                ))
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("caller"));
        }
        let elapsed = started.elapsed();
        let cpu = process_cpu_time(self.pid())
            .expect("CPU time")
            .saturating_sub(cpu_before);
        if let Some(into) = into {
            for (p, u) in results {
                into.pairs += u.len() as u64;
                into.prepare.extend(p);
                into.unprepare.extend(u);
            }
            into.elapsed += elapsed;
            into.cpu += cpu;
        }
    }
}

impl Drop for Subject {
    /// A Go driver left running by a panic is killed (the host's
    /// `HostProcess` does this itself).
    fn drop(&mut self) {
        if let Process::Go(c) = &mut self.process {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn report(subjects: &[Subject; 2], callers: &[usize], results: &[[Phase; 2]], setup: &str) {
    let [ours, theirs] = subjects;
    println!(
        "peers: prepare + unprepare ({} load), {setup}",
        if ours.load.is_some() { "grpc-go" } else { "tonic" },
    );
    for s in subjects {
        println!(
            "  {}: start → registered {:.0} ms; RSS {:.1} MiB after start, {:.1} MiB after the load",
            s.label,
            ms(s.registered_after),
            s.rss_after_start as f64 / 1024.0,
            s.rss_after_load as f64 / 1024.0
        );
    }
    println!(
        "  ours/theirs: start → registered {:.2}×, RSS after start {:.2}×, after the load {:.2}×",
        ours.registered_after.as_secs_f64() / theirs.registered_after.as_secs_f64(),
        ours.rss_after_start as f64 / theirs.rss_after_start as f64,
        ours.rss_after_load as f64 / theirs.rss_after_load as f64
    );
    for (c, [o, t]) in callers.iter().zip(results) {
        println!("  {c} caller(s):");
        for (s, p) in [(ours, o), (theirs, t)] {
            let (pre, un) = (p.prepare(), p.unprepare());
            println!(
                "    {:<50} {:>7.0} pairs/s  prepare p50/p99 {:.3}/{:.3} ms  unprepare p50/p99 {:.3}/{:.3} ms  CPU/pair {:.0} µs",
                s.label,
                p.pairs_per_second(),
                ms(pre.p50),
                ms(pre.p99),
                ms(un.p50),
                ms(un.p99),
                p.cpu_per_pair_us()
            );
        }
        let ratio = |f: &dyn Fn(&Phase) -> f64| f(o) / f(t);
        println!(
            "    ours/theirs: pairs/s {:.2}×, prepare p50 {:.2}× p99 {:.2}×, unprepare p50 {:.2}× p99 {:.2}×, CPU/pair {:.2}×",
            ratio(&|p| p.pairs_per_second()),
            ratio(&|p| p.prepare().p50.as_secs_f64()),
            ratio(&|p| p.prepare().p99.as_secs_f64()),
            ratio(&|p| p.unprepare().p50.as_secs_f64()),
            ratio(&|p| p.unprepare().p99.as_secs_f64()),
            ratio(&|p| p.cpu_per_pair_us()),
        );
    }
}
