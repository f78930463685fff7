//! N hosts against one real API server: what the host costs a cluster's
//! API server at rest, on a mass restart and after its slices are wiped.
//!
//! Run: `cargo bench --bench scale` (options after `--`: `--nodes N`
//! (default 100), `--devices D` (8 to 64, default 16), `--rest-seconds S`
//! (default 60)).
//!
//! One control plane (`tests/k8s/up.sh`, the chart installed with real
//! Helm for RBAC and the admission policy), then N hosts of the release
//! binary, each a node of its own: its Node object, a token bound to a Pod
//! on it, its own directories, the example guest with D devices, one shared
//! compile cache. No kubelet runs: the hosts publish their slices anyway.
//!
//! The hosts' requests are counted from the API server's audit log (it
//! records every request of the hosts' ServiceAccount with the node in its
//! token; watches when they start); `apiserver_request_total` and the
//! API server's count of open watches (`apiserver_longrunning_requests`)
//! are printed beside them, for all clients (the scheduler and controller
//! manager included). Phases:
//!
//! 1. start: all N hosts at once → every node has published (a create of
//!    its slice);
//! 2. rest: S seconds with nothing to do → requests per node per hour
//!    (goal: no writes, watches only), each host's RSS, CPU and context
//!    switches (goal: RSS ≤ 30 MiB, no wake-ups);
//! 3. mass restart: every host stopped and started again at once → peak
//!    requests/s at the API server, total requests, time until each has
//!    listed its slices again, the highest per-host requests in one second
//!    against its client burst;
//! 4. wipe: every ResourceSlice deleted (what the kubelet does after a
//!    driver's absence) → time until every node's is back.
//!
//! When Go or the control plane cannot be built it says so in one line and
//! exits 0: a bench, not a test.

use dra_test_support::bench::{arg, process_cpu_time, status_kib};
use dra_test_support::controlplane::{ControlPlane, HostRequest};
use dra_test_support::host::{DriverSpec, HostEnv, HostProcess};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DRIVER: &str = "example.dra.dev";
/// The host's default client burst (`[kubernetes] burst`).
const BURST: usize = 10;

fn main() {
    let nodes = arg("--nodes", 100usize);
    let devices = arg("--devices", 16u32).clamp(8, 64);
    let rest = Duration::from_secs(arg("--rest-seconds", 60u64));
    let cp = match ControlPlane::start() {
        Ok(cp) => cp,
        Err(e) => {
            println!(
                "scale bench skipped: the control plane could not start ({e:#}); tests/run.sh builds it with Go 1.26"
            );
            return;
        }
    };
    if let Err(e) = cp.install_chart() {
        println!("scale bench skipped: the chart could not be installed ({e:#})");
        return;
    }
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_dra-wasm-host"));
    let guest = PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join("example_driver.wasm");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale-guest-cache");
    println!("scale: {nodes} hosts, example guest with {devices} devices, release binary, one API server");

    // Nodes, tokens and directories first, so that the hosts start together.
    let started = Instant::now();
    let mut envs = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let name = format!("scale-{i:03}");
        cp.create_node(&name).expect("creating a Node");
        let mut env = HostEnv::new(&cache).expect("a node's directories");
        env.node_name = name.clone();
        let kubeconfig = cp
            .host_kubeconfig(&name, &env.dir().join("kubeconfig"))
            .expect("a bound token");
        env.use_kubeconfig(&kubeconfig);
        env.log_filter = Some("warn".into());
        let spec = DriverSpec::new(DRIVER, &guest).config(&format!("devices = {devices}"));
        env.write_config(&[spec], "").expect("host.toml");
        envs.push(env);
    }
    println!(
        "  set-up: {nodes} Nodes and bound tokens in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The guest compiled once into the shared cache, as on a node whose
    // cache survived: the start measures the API side, not N compiles.
    let warm = std::process::Command::new(&binary)
        .args(["guest", "validate", "--config"])
        .arg(&envs[0].config_path)
        .output()
        .expect("guest validate");
    assert!(warm.status.success(), "{}", String::from_utf8_lossy(&warm.stderr));

    // 1. Start.
    let t0 = cp.host_requests().len();
    let metrics0 = api_metrics(&cp);
    let started = Instant::now();
    let mut hosts: Vec<HostProcess> = envs.iter().map(|e| e.start(&binary).expect("a host")).collect();
    let publish = wait_all(
        &cp,
        t0,
        nodes,
        |r| r.verb == "create" && r.resource == "resourceslices",
        &mut hosts,
    );
    let start_requests = cp.host_requests().split_off(t0);
    report_burst("start", &start_requests, started.elapsed(), publish);
    print_api_delta(&metrics0, &api_metrics(&cp));

    // 2. Rest.
    std::thread::sleep(Duration::from_secs(5));
    let before_rest = cp.host_requests().len();
    let metrics_rest = api_metrics(&cp);
    let cpu0: Vec<Duration> = hosts
        .iter()
        .map(|h| process_cpu_time(h.pid()).unwrap_or_default())
        .collect();
    let switches0: Vec<u64> = hosts.iter().map(|h| context_switches(h.pid())).collect();
    std::thread::sleep(rest);
    let at_rest = cp.host_requests().split_off(before_rest);
    let hours = rest.as_secs_f64() / 3600.0;
    let mut by_verb: BTreeMap<String, usize> = BTreeMap::new();
    for r in &at_rest {
        *by_verb
            .entry(format!("{} {}", r.request.verb, r.request.resource))
            .or_default() += 1;
    }
    let writes = at_rest.iter().filter(|r| r.request.is_write()).count();
    println!(
        "  rest ({} s): {} requests from the hosts = {:.1} per node per hour; writes {} (goal 0); by verb {:?}",
        rest.as_secs(),
        at_rest.len(),
        at_rest.len() as f64 / nodes as f64 / hours,
        writes,
        by_verb
    );
    println!(
        "    open watches at the API server (all clients): {}",
        watch_count(&api_metrics(&cp))
    );
    print_api_delta(&metrics_rest, &api_metrics(&cp));
    let rss: Vec<u64> = hosts
        .iter()
        .map(|h| status_kib(h.pid(), "VmRSS").unwrap_or(0))
        .collect();
    let cpu: Vec<Duration> = hosts
        .iter()
        .zip(&cpu0)
        .map(|(h, c)| process_cpu_time(h.pid()).unwrap_or_default().saturating_sub(*c))
        .collect();
    let switches: Vec<u64> = hosts
        .iter()
        .zip(&switches0)
        .map(|(h, s)| context_switches(h.pid()).saturating_sub(*s))
        .collect();
    println!(
        "    per host at rest: RSS max {:.1} MiB, mean {:.1} MiB (goal ≤ 30); CPU over {} s max {} ms, mean {:.1} ms; context switches max {}, mean {:.1} (goal: no wake-ups)",
        *rss.iter().max().unwrap_or(&0) as f64 / 1024.0,
        rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64 / 1024.0,
        rest.as_secs(),
        cpu.iter().max().unwrap_or(&Duration::ZERO).as_millis(),
        cpu.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / cpu.len().max(1) as f64,
        switches.iter().max().unwrap_or(&0),
        switches.iter().sum::<u64>() as f64 / switches.len().max(1) as f64,
    );

    // 3. Mass restart.
    for h in &mut hosts {
        // SAFETY: plain kill(2) of a child of this process.
        unsafe { libc::kill(h.pid() as i32, libc::SIGTERM) };
    }
    for h in &mut hosts {
        let _ = h.wait_exit(Duration::from_secs(30));
    }
    let t1 = cp.host_requests().len();
    let metrics1 = api_metrics(&cp);
    let started = Instant::now();
    hosts = envs.iter().map(|e| e.start(&binary).expect("a host")).collect();
    let synced = wait_all(
        &cp,
        t1,
        nodes,
        |r| r.verb == "list" && r.resource == "resourceslices",
        &mut hosts,
    );
    std::thread::sleep(Duration::from_secs(5));
    let restart_requests = cp.host_requests().split_off(t1);
    report_burst("mass restart", &restart_requests, started.elapsed(), synced);
    let writes = restart_requests.iter().filter(|r| r.request.is_write()).count();
    println!("    writes after the restart: {writes} (the same inventory: goal 0)");
    print_api_delta(&metrics1, &api_metrics(&cp));

    // 4. Wipe.
    let t2 = cp.host_requests().len();
    let started = Instant::now();
    cp.kubectl(&["delete", "resourceslices", "--all", "--wait=false"])
        .expect("deleting every ResourceSlice");
    let restored = wait_all(
        &cp,
        t2,
        nodes,
        |r| r.verb == "create" && r.resource == "resourceslices",
        &mut hosts,
    );
    let wipe_requests = cp.host_requests().split_off(t2);
    report_burst("wipe", &wipe_requests, started.elapsed(), restored);

    for h in &mut hosts {
        let _ = h.terminate(Duration::from_secs(20));
    }
}

/// Wait until every one of `nodes` hosts made a request matching `done`
/// since audit entry `from`; the time each took (from the first call).
fn wait_all(
    cp: &ControlPlane,
    from: usize,
    nodes: usize,
    done: impl Fn(&dra_test_support::controlplane::AuditedRequest) -> bool,
    hosts: &mut [HostProcess],
) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    loop {
        let seen: BTreeSet<String> = cp.host_requests()[from..]
            .iter()
            .filter(|r| done(&r.request))
            .map(|r| r.node.clone())
            .collect();
        if seen.len() >= nodes {
            return started.elapsed();
        }
        if Instant::now() > deadline {
            let dead = hosts.iter_mut().filter_map(|h| h.try_status().ok().flatten()).count();
            panic!(
                "only {} of {nodes} hosts got there in 600 s ({dead} exited)",
                seen.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Requests per second at the API server, in total and the most from one
/// host in one second (against its client burst).
fn report_burst(phase: &str, requests: &[HostRequest], took: Duration, all_done: Duration) {
    let mut per_second: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_host_second: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in requests {
        *per_second.entry(&r.second).or_default() += 1;
        *per_host_second.entry((&r.node, &r.second)).or_default() += 1;
    }
    let peak = per_second.values().max().copied().unwrap_or(0);
    let host_peak = per_host_second.values().max().copied().unwrap_or(0);
    println!(
        "  {phase}: every node done after {:.1} s; {} requests from the hosts (peak {peak}/s at the API server); the most from one host in one second {host_peak} (burst {BURST}: {}); phase {:.1} s",
        all_done.as_secs_f64(),
        requests.len(),
        if host_peak <= BURST { "held" } else { "EXCEEDED" },
        took.as_secs_f64(),
    );
}

/// `apiserver_request_total` by verb and resource, and the open watches, from `/metrics`.
fn api_metrics(cp: &ControlPlane) -> BTreeMap<String, f64> {
    let text = cp.kubectl(&["get", "--raw", "/metrics"]).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (name, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let label = |key: &str| {
            name.split(&format!("{key}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
        };
        let Ok(v) = value.parse::<f64>() else { continue };
        if name.starts_with("apiserver_request_total{") {
            let resource = label("resource");
            if ["resourceslices", "resourceclaims", "nodes", "events"].contains(&resource) {
                *out.entry(format!("{} {resource}", label("verb"))).or_default() += v;
            }
        } else if name.starts_with("apiserver_longrunning_requests{") && label("verb") == "WATCH" {
            *out.entry(format!("open WATCH {}", label("resource"))).or_default() += v;
        }
    }
    out
}

fn watch_count(m: &BTreeMap<String, f64>) -> String {
    format!(
        "{} on resourceslices",
        m.get("open WATCH resourceslices").copied().unwrap_or(0.0)
    )
}

/// What `apiserver_request_total` grew by (all clients).
fn print_api_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) {
    let delta: BTreeMap<&str, f64> = after
        .iter()
        .filter(|(k, _)| !k.starts_with("open "))
        .map(|(k, v)| (k.as_str(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    println!("    apiserver_request_total grew by (all clients): {delta:?}");
}

/// Voluntary context switches of all of a process's threads.
fn context_switches(pid: u32) -> u64 {
    let dir = Path::new("/proc").join(pid.to_string()).join("task");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}
