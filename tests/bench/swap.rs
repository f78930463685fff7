//! Hot swap, measured through the real (release) binary:
//!
//! 1. prepare latency under continuous load (prepare → unprepare loops from
//!    several kubelet connections), steady and while the guest file is
//!    swapped every 250 ms, ConfigMap-style (goal: p99 during swaps ≤ 2×
//!    steady), with the calls per second reached;
//! 2. guest file changed → new guest serving (seen by a prepare), with a warm
//!    compile cache (goal ≤ 0.5 s) and with none (every swap compiles);
//! 3. the sizes of the release guests (a ConfigMap holds 1 MiB).
//!
//! Run: `cargo bench --bench swap` (options after `--`: `--seconds N` per
//! load phase, `--workers N`).
//!
//! The tonic test kubelet calls the host: continuous load from several
//! connections, as the measurement needs.

use dra_test_support::bench::{Latencies, arg, ms};
use dra_test_support::claims::{Claim, ClaimsFile, uid};
use dra_test_support::configmap::ConfigMapDir;
use dra_test_support::host::{DriverSpec, HostEnv, HostProcess};
use dra_test_support::kubelet::{Plugin, TestKubelet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const DRIVER: &str = "faulty.dra.dev";
const KEY: &str = "guest.wasm";

fn built(file: &str) -> PathBuf {
    PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join(file)
}

fn main() {
    let seconds = arg("--seconds", 5);
    let workers = arg("--workers", 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let builds = [
            std::fs::read(built("faulty_driver.wasm")).expect("guest"),
            std::fs::read(built("faulty_next.wasm")).expect("guest"),
        ];
        println!("hot swap through the release binary (faulty guest 0.1.0 <-> 0.2.0, ConfigMap-style updates)");
        load_phases(&builds, seconds, workers).await;
        swap_latency(&builds, true, 12).await;
        swap_latency(&builds, false, 6).await;
        println!("release guest sizes (a ConfigMap holds 1 MiB, base64 in binaryData):");
        for f in ["example_driver.wasm", "gpu_driver.wasm", "faulty_driver.wasm"] {
            let n = std::fs::metadata(built(f)).expect("guest").len();
            println!(
                "  {f}: {n} bytes ({:.0} KiB, {:.0} KiB as base64)",
                n as f64 / 1024.0,
                n.div_ceil(3) as f64 * 4.0 / 1024.0
            );
        }
    });
}

struct Node {
    env: HostEnv,
    guests: ConfigMapDir,
    kubelet: TestKubelet,
    host: HostProcess,
    plugin: Plugin,
    claims: Vec<Claim>,
}

async fn start(first: &[u8], cache: bool, devices: u32) -> Node {
    let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let cache_dir = tempfile::tempdir_in(&target_tmp).expect("cache").keep();
    let env = HostEnv::new(&cache_dir).expect("node layout");
    let guests = ConfigMapDir::create(&env.dir().join("guests"), &[(KEY, first)]).expect("guests");
    env.write_config_with(
        &[DriverSpec::new(DRIVER, &guests.path(KEY)).config(&format!("devices = {devices}"))],
        "",
        "[hot_swap]\ndebounce_ms = 20\nprobation_calls = 0\n",
    )
    .expect("config");
    if !cache {
        let text = std::fs::read_to_string(&env.config_path).expect("config");
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("cache_dir"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&env.config_path, text).expect("config");
    }
    let claims: Vec<Claim> = (0..devices)
        .map(|i| {
            Claim::new("default", &format!("c{i}"), &uid(u64::from(i) + 1)).device(
                DRIVER,
                "faulty",
                &format!("dev-{i}"),
                "dev",
            )
        })
        .collect();
    ClaimsFile::new(&env.claims_path)
        .expect("claims")
        .put(&claims)
        .expect("claims");
    let kubelet = TestKubelet::start(&env.kubelet_root).expect("kubelet");
    // SAFETY: set before any host is started; nothing reads it concurrently.
    unsafe { std::env::set_var("DRA_TEST_LOG", "warn,dra_wasm_host::driver=info") };
    let host = env.start(Path::new(env!("CARGO_BIN_EXE_dra-wasm-host"))).expect("host");
    let plugin = kubelet
        .wait_for_plugin(DRIVER, Duration::from_secs(120))
        .await
        .expect("registration");
    Node {
        env,
        guests,
        kubelet,
        host,
        plugin,
        claims,
    }
}

/// Prepare latencies (and the number of calls) of a loop over `claims` until `stop`.
async fn worker(plugin: Plugin, claims: Vec<Claim>, stop: Arc<AtomicBool>) -> (Vec<Duration>, usize) {
    let mut lat = Vec::new();
    let mut calls = 0;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = &claims[i % claims.len()];
        i += 1;
        let t = Instant::now();
        let a = plugin.prepare(&[c.reference()]).await.expect("prepare");
        lat.push(t.elapsed());
        assert_eq!(a[&c.uid].error, "", "prepare failed");
        let u = plugin.unprepare(&[c.reference()]).await.expect("unprepare");
        assert_eq!(u[&c.uid], "", "unprepare failed");
        calls += 2;
    }
    (lat, calls)
}

async fn run_load(
    node: &Node,
    workers: u64,
    seconds: u64,
    mut swap: Option<(&mut ConfigMapDir, &[Vec<u8>; 2])>,
) -> (Vec<Duration>, f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let per = node.claims.len() / workers as usize;
    let handles: Vec<_> = (0..workers as usize)
        .map(|w| {
            tokio::spawn(worker(
                node.plugin.clone(),
                node.claims[w * per..(w + 1) * per].to_vec(),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let started = Instant::now();
    let mut swaps = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some((guests, builds)) = swap.as_mut() {
            guests.update(&[(KEY, &builds[(swaps + 1) % 2])]).expect("update");
            swaps += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut calls = 0;
    for h in handles {
        let (l, c) = h.await.expect("worker");
        all.extend(l);
        calls += c;
    }
    (all, calls as f64 / started.elapsed().as_secs_f64(), swaps)
}

async fn load_phases(builds: &[Vec<u8>; 2], seconds: u64, workers: u64) {
    let mut node = start(&builds[0], true, (workers * 4) as u32).await;
    // Compile both builds once, so the phase measures swaps, not compiles.
    let mut guests = std::mem::replace(
        &mut node.guests,
        ConfigMapDir::create(&node.env.dir().join("spare"), &[]).expect("dir"),
    );
    guests.update(&[(KEY, &builds[1])]).expect("update");
    wait_swaps(&node, 1).await;
    guests.update(&[(KEY, &builds[0])]).expect("update");
    wait_swaps(&node, 2).await;

    let (steady, steady_rate, _) = run_load(&node, workers, seconds, None).await;
    let (swapping, swap_rate, swaps) = run_load(&node, workers, seconds, Some((&mut guests, builds))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = node.host.log().matches("guest swapped").count() - 2;
    println!(
        "prepare latency under load ({workers} kubelet connections, prepare+unprepare loops, {seconds} s per phase):"
    );
    let p99_steady = report("steady", &steady, steady_rate);
    let p99_swapping = report(&format!("{swaps} file updates, {done} swaps"), &swapping, swap_rate);
    println!(
        "  p99 during swaps / steady: {:.2}x (goal <= 2x)",
        p99_swapping / p99_steady
    );
    node.host.terminate(Duration::from_secs(20)).expect("clean stop");
    drop(node.kubelet);
}

async fn wait_swaps(node: &Node, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.host.log().matches("guest swapped").count() < n {
        assert!(Instant::now() < deadline, "no swap; log:\n{}", node.host.log());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// From the file update to the first prepare that runs on the new build.
async fn swap_latency(builds: &[Vec<u8>; 2], cache: bool, samples: usize) {
    let mut node = start(&builds[0], cache, 2).await;
    let c = node.claims[0].clone();
    let mut times = Vec::new();
    for k in 0..=samples {
        let next = (k + 1) % 2;
        let version = if next == 0 { "0.1.0" } else { "0.2.0" };
        let t = Instant::now();
        node.guests.update(&[(KEY, &builds[next])]).expect("update");
        loop {
            let a = node.plugin.prepare(&[c.reference()]).await.expect("prepare");
            assert_eq!(a[&c.uid].error, "");
            let spec = node.env.cdi_dir.join(format!("k8s.{DRIVER}-device_{}.json", c.uid));
            let serving = std::fs::read_to_string(&spec)
                .expect("spec")
                .contains(&format!("FAULTY_VERSION={version}"));
            node.plugin.unprepare(&[c.reference()]).await.expect("unprepare");
            if serving {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "the swap never happened");
        }
        // With a cache, the first swap to the second build compiles it: skip it.
        if !cache || k > 0 {
            times.push(t.elapsed());
        }
    }
    println!(
        "file change -> new guest serving, {} (debounce 20 ms included), {} swaps:",
        if cache {
            "warm compile cache"
        } else {
            "no compile cache (every swap compiles)"
        },
        times.len()
    );
    let l = Latencies::of(&times).expect("samples");
    println!(
        "  p50 {:.1} ms  max {:.1} ms{}",
        ms(l.p50),
        ms(l.max),
        if cache { "  (goal <= 500 ms)" } else { "" }
    );
    node.host.terminate(Duration::from_secs(20)).expect("clean stop");
}

fn report(what: &str, samples: &[Duration], rate: f64) -> f64 {
    let l = Latencies::of(samples).expect("samples");
    println!("  {what}: {rate:.0} calls/s; prepare {l}");
    ms(l.p99)
}
