//! Prepare/unprepare latency through the real binary over the real Unix
//! sockets, as the kubelet sees it: gRPC, claim lookup, guest call, policy
//! check, CDI spec written durably, checkpoint committed durably.
//!
//! Run: `cargo bench --bench prepare` (options after `--`: `--iterations N`).
//!
//! The CDI directory is put on a tmpfs (`/dev/shm`) when one is available,
//! as `/var/run/cdi` is on real nodes; the checkpoint stays on the disk
//! under `target/`, as `/var/lib/kubelet` is.

use dra_test_support::bench::{Latencies, arg};
use dra_test_support::claims::{Claim, ClaimsFile, uid};
use dra_test_support::host::{DriverSpec, HostEnv};
use dra_test_support::kubelet::TestKubelet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DRIVER: &str = "example.dra.dev";

fn main() {
    let iterations = arg("--iterations", 2000usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(iterations));
}

async fn run(iterations: usize) {
    let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let env = HostEnv::new(&target_tmp.join("bench-guest-cache")).expect("node layout");
    let shm = PathBuf::from("/dev/shm");
    let cdi_on_tmpfs = shm.is_dir() && tempfile::tempdir_in(&shm).is_ok();
    let cdi_dir = if cdi_on_tmpfs {
        tempfile::tempdir_in(&shm).expect("tmpfs dir").keep()
    } else {
        env.cdi_dir.clone()
    };
    let guest = PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join("example_driver.wasm");
    env.write_config(&[DriverSpec::new(DRIVER, &guest).config("devices = 8")], "")
        .expect("config");
    let config = std::fs::read_to_string(&env.config_path).expect("config");
    let config = config.replace(
        &format!("cdi_dir = {:?}", env.cdi_dir),
        &format!("cdi_dir = {cdi_dir:?}"),
    );
    std::fs::write(&env.config_path, config).expect("config");

    let mut claims = ClaimsFile::new(&env.claims_path).expect("claims");
    let claim = Claim::new("default", "bench", &uid(1)).device(DRIVER, "test-node", "gpu-3", "gpu");
    claims.put(std::slice::from_ref(&claim)).expect("claims");
    let reference = claim.reference();

    let kubelet = TestKubelet::start(&env.kubelet_root).expect("kubelet");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_dra-wasm-host"));
    // Quiet logs: the benchmark measures the host, not its log volume.
    // SAFETY: single-threaded at this point of start-up; no other thread reads the environment.
    unsafe { std::env::set_var("DRA_TEST_LOG", "warn") };
    let mut host = env.start(&binary).expect("host");
    let plugin = kubelet
        .wait_for_plugin(DRIVER, Duration::from_secs(120))
        .await
        .expect("registration");

    let mut prepare = Vec::with_capacity(iterations);
    let mut repeat = Vec::with_capacity(iterations);
    let mut unprepare = Vec::with_capacity(iterations);
    let warmup = 100;
    for i in 0..iterations + warmup {
        let t = Instant::now();
        let a = plugin.prepare(std::slice::from_ref(&reference)).await.expect("prepare");
        let p = t.elapsed();
        assert_eq!(a[&uid(1)].error, "", "prepare failed");
        let t = Instant::now();
        plugin
            .prepare(std::slice::from_ref(&reference))
            .await
            .expect("repeat prepare");
        let r = t.elapsed();
        let t = Instant::now();
        let u = plugin
            .unprepare(std::slice::from_ref(&reference))
            .await
            .expect("unprepare");
        let up = t.elapsed();
        assert_eq!(u[&uid(1)], "", "unprepare failed");
        if i >= warmup {
            prepare.push(p);
            repeat.push(r);
            unprepare.push(up);
        }
    }
    host.terminate(Duration::from_secs(20)).expect("clean stop");
    if cdi_on_tmpfs {
        let _ = std::fs::remove_dir_all(&cdi_dir);
    }

    println!("prepare latency over the kubelet UDS path, {iterations} iterations (example guest, 1 claim, 1 device)");
    println!("  CDI dir: {}", if cdi_on_tmpfs { "tmpfs (/dev/shm)" } else { "disk" });
    report("prepare (guest call + CDI write + durable checkpoint)", &prepare);
    report("prepare repeated (answered from the checkpoint)", &repeat);
    report("unprepare (guest call + CDI remove + checkpoint remove)", &unprepare);
}

fn report(what: &str, samples: &[Duration]) {
    println!("  {what}: {}", Latencies::of(samples).expect("samples"));
}
