//! Device health through the real binary:
//!
//! 1. latency from an injected NVML event (simulated backend) to the health
//!    stream message that carries its effect, as a kubelet sees it;
//! 2. the host's CPU use while idle with 8 GPUs and 2 open health streams.
//!
//! Run: `cargo bench --bench health` (options after `--`: `--gpus N` for the
//! latency run, one sample per GPU; `--idle-seconds S`).
//!
//! The tonic test kubelet reads the stream: latency is timed where the message
//! arrives; the Go kubelet peer would time itself behind its JSON-lines pipe.

use dra_test_support::bench::{Latencies, arg};
use dra_test_support::claims::ClaimsFile;
use dra_test_support::gpus::{self, Injector};
use dra_test_support::host::{DriverSpec, HostEnv, HostProcess};
use dra_test_support::kubelet::{Plugin, TestKubelet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const GPU: &str = "gpu.dra.dev";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        latency(arg("--gpus", 512u32)).await;
        idle(arg("--idle-seconds", 60)).await;
    });
}

struct Setup {
    _env: HostEnv,
    _kubelet: TestKubelet,
    host: HostProcess,
    plugin: Plugin,
    events: PathBuf,
}

async fn start(n: u32) -> Setup {
    let env = HostEnv::new(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-guest-cache")).expect("node");
    let _claims = ClaimsFile::new(&env.claims_path).expect("claims");
    let gpus_file = env.dir().join("gpus.json");
    gpus::write_gpus_file(&gpus_file, n).expect("gpus");
    let events = env.dir().join("events.sock");
    let guest = PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join("gpu_driver.wasm");
    env.write_config_with(
        &[DriverSpec::new(GPU, &guest)
            .extra("grants = [\"nvml\"]")
            .config("cdi = { mode = \"base-spec\", kind = \"nvidia.com/gpu\" }")],
        "",
        &format!("[nvml.simulated]\ngpus = {gpus_file:?}\nevents_socket = {events:?}\n"),
    )
    .expect("config");
    let kubelet = TestKubelet::start(&env.kubelet_root).expect("kubelet");
    // SAFETY: set before the host process starts; no other thread reads the environment here.
    unsafe { std::env::set_var("DRA_TEST_LOG", "error") };
    let host = env
        .start(&PathBuf::from(env!("CARGO_BIN_EXE_dra-wasm-host")))
        .expect("host");
    let plugin = kubelet
        .wait_for_plugin(GPU, Duration::from_secs(120))
        .await
        .expect("registration");
    Setup {
        _env: env,
        _kubelet: kubelet,
        host,
        plugin,
        events,
    }
}

async fn latency(n: u32) {
    let mut s = start(n).await;
    let mut stream = s.plugin.watch_health().await.expect("stream");
    let first = stream.next(Duration::from_secs(10)).await.expect("initial list");
    assert_eq!(first.len(), n as usize);
    let mut inject = Injector::connect(&s.events).await.expect("events socket");
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        assert_eq!(inject.xid(i, 79).await.expect("inject"), 1);
        let list = stream.next(Duration::from_secs(10)).await.expect("health message");
        samples.push(t.elapsed());
        let device = format!("gpu-{i}");
        let d = list
            .iter()
            .find(|d| d.device.as_ref().is_some_and(|x| x.device_name == device))
            .expect("device listed");
        assert_eq!(d.health, 2, "gpu-{i} unhealthy in the message that followed its event");
    }
    s.host.terminate(Duration::from_secs(20)).expect("clean stop");
    let latencies = Latencies::of(&samples).expect("samples");
    println!("injected Xid 79 -> health stream message ({n} samples, one per GPU, {n} devices per message)");
    println!("  {latencies}");
}

/// (user + system CPU seconds, voluntary context switches) of a process.
fn cpu(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks").flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        switches += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (ticks as f64 / hz, switches)
}

async fn idle(seconds: u64) {
    let mut s = start(8).await;
    let mut a = s.plugin.watch_health().await.expect("stream");
    let mut b = s.plugin.watch_health().await.expect("stream");
    a.next(Duration::from_secs(10)).await.expect("initial");
    b.next(Duration::from_secs(10)).await.expect("initial");
    // Let start-up work (compilation, first instances) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = s.host.pid();
    let (cpu0, sw0) = cpu(pid);
    let t = Instant::now();
    let mut messages = 0;
    while t.elapsed() < Duration::from_secs(seconds) {
        let left = Duration::from_secs(seconds).saturating_sub(t.elapsed());
        if a.next(left).await.is_some() {
            messages += 1;
        }
    }
    let (cpu1, sw1) = cpu(pid);
    let wall = t.elapsed().as_secs_f64();
    s.host.terminate(Duration::from_secs(20)).expect("clean stop");
    let _ = b.next(Duration::from_millis(1)).await;
    println!("idle host, 8 simulated GPUs, 2 open health streams, {wall:.0} s");
    println!(
        "  CPU {:.3} s = {:.4} % of one core; {} voluntary context switches ({:.2}/s); {messages} resends on one stream",
        cpu1 - cpu0,
        (cpu1 - cpu0) / wall * 100.0,
        sw1 - sw0,
        (sw1 - sw0) as f64 / wall
    );
}
