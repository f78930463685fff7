//! Prepare/unprepare latency through the real binary over the real Unix
//! sockets, as the kubelet sees it: gRPC, claim lookup, guest call, policy
//! check, CDI spec written durably, checkpoint committed durably.
//!
//! Run: `cargo bench --bench prepare` (options after `--`: `--iterations N`,
//! `--baseline PATH`, `--candidate PATH`).
//!
//! `--baseline PATH` runs the same workload against a second binary (say a
//! release build of an earlier commit) in alternating batches, so that both
//! see the same machine at the same time, and reports the ratios: on these
//! shared machines only figures from one run compare. `--candidate PATH`
//! replaces this build's binary as the first one. With a baseline, the test
//! kubelet registers with `:authority: localhost`, which builds from before
//! the HTTP/2 adapter accept (they refuse the real kubelet's).
//!
//! The CDI directory is put on a tmpfs (`/dev/shm`) when one is available,
//! as `/var/run/cdi` is on real nodes; the checkpoint stays on the disk
//! under `target/`, as `/var/lib/kubelet` is.
//!
//! The tonic test kubelet calls the host: per-call latency in alternating
//! batches against a baseline binary; the Go kubelet peer would time itself
//! behind its JSON-lines pipe.

use dra_proto::services;
use dra_test_support::bench::{Latencies, arg, process_cpu_time};
use dra_test_support::claims::{Claim, ClaimsFile, uid};
use dra_test_support::host::{DriverSpec, HostEnv, HostProcess, http_get};
use dra_test_support::kubelet::{ClaimRef, Plugin, RegistrationAuthority, TestKubelet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DRIVER: &str = "example.dra.dev";
const WARMUP: usize = 100;
/// Iterations each binary runs before the other takes its turn.
const BATCH: usize = 50;

fn main() {
    let iterations = arg("--iterations", 2000usize);
    let path_arg = |name| Some(PathBuf::from(arg(name, String::new()))).filter(|p| !p.as_os_str().is_empty());
    let baseline = path_arg("--baseline");
    let candidate = path_arg("--candidate").unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dra-wasm-host")));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(iterations, candidate, baseline));
}

async fn run(iterations: usize, candidate: PathBuf, baseline: Option<PathBuf>) {
    // Quiet logs: the benchmark measures the host, not its log volume.
    // SAFETY: single-threaded at this point of start-up; no other thread reads the environment.
    unsafe { std::env::set_var("DRA_TEST_LOG", "warn") };
    let authority = if baseline.is_some() {
        RegistrationAuthority::Localhost
    } else {
        RegistrationAuthority::GrpcGo
    };
    let mut subjects = vec![Subject::start("candidate", &candidate, authority).await];
    if let Some(path) = &baseline {
        subjects.push(Subject::start("baseline", path, authority).await);
    }
    for s in &mut subjects {
        s.iterate(WARMUP, false).await;
    }
    // The floor: the one durable write a prepare cannot avoid, measured on
    // the checkpoint's file system between the batches, so that it sees the
    // same machine.
    let floor_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("floor dir");
    let mut floor = Vec::with_capacity(iterations);
    // And the write the checkpoint makes since it recycles its files.
    let recycled_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("floor dir");
    let recycler = dra_wasm_host::state::fsutil::Recycler::open(recycled_dir.path(), 0o600).expect("floor dir");
    let mut recycled = Vec::with_capacity(iterations);
    let mut done = 0;
    while done < iterations {
        let n = BATCH.min(iterations - done);
        for s in &mut subjects {
            s.iterate(n, true).await;
        }
        floor.extend(durable_writes(floor_dir.path(), n));
        recycled.extend(recycled_writes(&recycler, n));
        done += n;
    }

    println!(
        "prepare latency over the kubelet UDS path, {iterations} iterations per binary \
         (example guest, 1 claim, 1 device; CDI dir on {})",
        if subjects[0].cdi_on_tmpfs {
            "tmpfs (/dev/shm)"
        } else {
            "disk"
        }
    );
    let floor = latencies(&floor);
    println!("  durable write on the checkpoint's disk (1 KiB: write + fsync + rename + directory fsync): {floor}");
    println!(
        "  the checkpoint's own durable write (1 KiB into a recycled file: write + fdatasync + rename + directory fsync): {}",
        latencies(&recycled)
    );
    for s in &subjects {
        println!("  {} ({}):", s.label, s.binary.display());
        let iteration_cpu = s.cpu.as_secs_f64() * 1e6 / s.prepare.len() as f64;
        report("prepare (guest call + CDI write + durable checkpoint)", &s.prepare);
        report("prepare repeated (answered from the checkpoint)", &s.repeat);
        report("unprepare (guest call + CDI remove + checkpoint remove)", &s.unprepare);
        let prepare_mean = s.prepare.iter().sum::<Duration>().as_secs_f64() / s.prepare.len() as f64;
        let guest = s.guest_prepare.mean();
        println!(
            "    guest prepare call, mean (dra_host_guest_call_duration_seconds): {:.1} µs = {:.1} % of the mean prepare",
            guest * 1e6,
            guest / prepare_mean * 100.0
        );
        println!(
            "    host CPU (user+system) per iteration (prepare + repeated prepare + unprepare): {iteration_cpu:.0} µs"
        );
    }
    if let [this, base] = &subjects[..] {
        let (a, b) = (latencies(&this.prepare), latencies(&base.prepare));
        let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
        println!(
            "  candidate / baseline: prepare p50 {:.2}×, p99 {:.2}×; host CPU per iteration {:.2}×; guest prepare call {:.2}×",
            ratio(a.p50, b.p50),
            ratio(a.p99, b.p99),
            ratio(this.cpu, base.cpu),
            this.guest_prepare.mean() / base.guest_prepare.mean(),
        );
    }
    for mut s in subjects {
        s.stop();
    }
}

/// One host binary under test, with its own node, kubelet and samples.
struct Subject {
    label: &'static str,
    binary: PathBuf,
    _env: HostEnv,
    _kubelet: TestKubelet,
    host: HostProcess,
    plugin: Plugin,
    reference: ClaimRef,
    cdi_dir: PathBuf,
    cdi_on_tmpfs: bool,
    prepare: Vec<Duration>,
    repeat: Vec<Duration>,
    unprepare: Vec<Duration>,
    /// Host CPU time (user + system) over the recorded iterations.
    cpu: Duration,
    metrics_port: u16,
    /// The host's own measure of its guest `prepare` calls, over the recorded iterations.
    guest_prepare: GuestCalls,
}

/// Sum and count of `dra_host_guest_call_duration_seconds{export="prepare"}`.
#[derive(Clone, Copy, Debug, Default)]
struct GuestCalls {
    seconds: f64,
    calls: f64,
}

impl GuestCalls {
    async fn read(port: u16) -> Self {
        let text = http_get(port, "/metrics").await.expect("host metrics");
        let value = |series: &str| {
            text.lines()
                .find(|l| l.starts_with(series) && l.contains("export=\"prepare\""))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                // No series before the first call.
                .unwrap_or(0.0)
        };
        Self {
            seconds: value("dra_host_guest_call_duration_seconds_sum"),
            calls: value("dra_host_guest_call_duration_seconds_count"),
        }
    }

    fn mean(&self) -> f64 {
        self.seconds / self.calls.max(1.0)
    }
}

impl Subject {
    async fn start(label: &'static str, binary: &Path, authority: RegistrationAuthority) -> Subject {
        let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let mut env = HostEnv::new(&target_tmp.join("bench-guest-cache")).expect("node layout");
        let metrics_port = env.enable_metrics().expect("metrics port");
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

        let known = [services::DRA_PLUGIN_V1, services::DRA_PLUGIN_V1BETA1];
        let kubelet = TestKubelet::start_with(&env.kubelet_root, &known, authority).expect("kubelet");
        let host = env.start(binary).expect("host");
        let plugin = kubelet
            .wait_for_plugin(DRIVER, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}\nhost log:\n{}", binary.display(), host.log()));
        Subject {
            label,
            binary: binary.to_owned(),
            _env: env,
            _kubelet: kubelet,
            host,
            plugin,
            reference: claim.reference(),
            cdi_dir,
            cdi_on_tmpfs,
            prepare: Vec::new(),
            repeat: Vec::new(),
            unprepare: Vec::new(),
            cpu: Duration::ZERO,
            metrics_port,
            guest_prepare: GuestCalls::default(),
        }
    }

    /// `n` iterations of prepare, repeated prepare, unprepare.
    async fn iterate(&mut self, n: usize, record: bool) {
        let reference = std::slice::from_ref(&self.reference);
        let guest_before = GuestCalls::read(self.metrics_port).await;
        let cpu_before = process_cpu_time(self.host.pid()).expect("host CPU time");
        for _ in 0..n {
            let t = Instant::now();
            let a = self.plugin.prepare(reference).await.expect("prepare");
            let p = t.elapsed();
            assert_eq!(a[&uid(1)].error, "", "prepare failed");
            let t = Instant::now();
            self.plugin.prepare(reference).await.expect("repeat prepare");
            let r = t.elapsed();
            let t = Instant::now();
            let u = self.plugin.unprepare(reference).await.expect("unprepare");
            let up = t.elapsed();
            assert_eq!(u[&uid(1)], "", "unprepare failed");
            if record {
                self.prepare.push(p);
                self.repeat.push(r);
                self.unprepare.push(up);
            }
        }
        if record {
            self.cpu += process_cpu_time(self.host.pid())
                .expect("host CPU time")
                .saturating_sub(cpu_before);
            let guest_after = GuestCalls::read(self.metrics_port).await;
            self.guest_prepare.seconds += guest_after.seconds - guest_before.seconds;
            self.guest_prepare.calls += guest_after.calls - guest_before.calls;
        }
    }

    fn stop(&mut self) {
        self.host.terminate(Duration::from_secs(20)).expect("clean stop");
        if self.cdi_on_tmpfs {
            let _ = std::fs::remove_dir_all(&self.cdi_dir);
        }
    }
}

/// `n` durable writes of a checkpoint-sized file, as the host makes them.
fn durable_writes(dir: &Path, n: usize) -> Vec<Duration> {
    let record = vec![b'x'; 1024];
    (0..n)
        .map(|i| {
            let t = Instant::now();
            dra_wasm_host::state::fsutil::write_atomic(&dir.join(format!("{}.json", i % 64)), &record, 0o600)
                .expect("durable write");
            t.elapsed()
        })
        .collect()
}

/// `n` durable writes of a checkpoint-sized record into a recycled file, as
/// the checkpoint makes them (each followed, untimed, by the record's
/// removal, which leaves the spare the next write uses).
fn recycled_writes(files: &dra_wasm_host::state::fsutil::Recycler, n: usize) -> Vec<Duration> {
    let record = vec![b'x'; 1024];
    (0..n)
        .map(|i| {
            let name = format!("{}.json", i % 64);
            let t = Instant::now();
            files.write(&name, &record).expect("durable write");
            let took = t.elapsed();
            files.remove(&name).expect("durable removal");
            took
        })
        .collect()
}

fn latencies(samples: &[Duration]) -> Latencies {
    Latencies::of(samples).expect("samples")
}

fn report(what: &str, samples: &[Duration]) {
    println!("    {what}: {}", latencies(samples));
}
