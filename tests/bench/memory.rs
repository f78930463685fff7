//! The host's resident memory, the figure operators size the DaemonSet's
//! memory limit from: a host serving three guests right after start-up,
//! after N guest calls, and before and after one guest's memory spike.
//!
//! Run: `cargo bench --bench memory` (options after `--`: `--calls N`,
//! default 10000; `--baseline PATH`, `--candidate PATH` as in the prepare
//! bench: the same workload against a second binary in the same run, its
//! RSS printed beside this one's).
//!
//! Each binary starts twice on its own empty guest cache: the first start
//! compiles the three guests (Cranelift's working memory stays in the
//! allocator: that RSS is printed as the first start's), the second loads
//! them compiled, as every later start on a node does, and is the one
//! measured below.
//!
//! The three guests: the example guest (8 devices), the GPU guest on the
//! simulated NVML backend (8 GPUs), and the test suite's faulty guest, whose
//! `spike-N` claims grow an instance's linear memory by N MiB. The calls are
//! prepare + unprepare pairs of one example claim, one caller. The spike is
//! eight `spike-48` claims in one `NodePrepareResources`, prepared
//! concurrently, each on its own instance (`max_instances = 8`,
//! `memory_limit_mib = 64`), after three rounds of ordinary calls on eight
//! instances so that the pool is full before it.
//!
//! The tonic test kubelet calls the host: N calls and eight spike claims in one
//! call on cue, as the measurement needs.

use dra_proto::services;
use dra_test_support::bench::{arg, status_kib};
use dra_test_support::claims::{Claim, ClaimsFile, uid};
use dra_test_support::gpus;
use dra_test_support::host::{DriverSpec, HostEnv, HostProcess};
use dra_test_support::kubelet::{ClaimRef, Plugin, RegistrationAuthority, TestKubelet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const EXAMPLE: &str = "example.dra.dev";
const GPU: &str = "gpu.nvidia.com";
const FAULTY: &str = "faulty.dra.dev";
const SPIKE_MIB: u64 = 48;
const INSTANCES: u64 = 8;

fn main() {
    let calls = arg("--calls", 10_000usize);
    let path_arg = |name| Some(PathBuf::from(arg(name, String::new()))).filter(|p| !p.as_os_str().is_empty());
    let baseline = path_arg("--baseline");
    let candidate = path_arg("--candidate").unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dra-wasm-host")));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        // SAFETY: set before any host process starts; no other thread reads the environment here.
        unsafe { std::env::set_var("DRA_TEST_LOG", "warn") };
        let authority = if baseline.is_some() {
            RegistrationAuthority::Localhost
        } else {
            RegistrationAuthority::GrpcGo
        };
        println!(
            "host RSS, 3 guests (example, GPU on simulated NVML, faulty), {calls} guest calls \
             (prepare + unprepare of one example claim), then a spike of {INSTANCES} instances × {SPIKE_MIB} MiB"
        );
        let mut figures = vec![measure("candidate", &candidate, calls, authority).await];
        if let Some(path) = &baseline {
            figures.push(measure("baseline", path, calls, authority).await);
        }
        for f in &figures {
            f.print();
        }
    });
}

/// What one binary's RSS did, KiB.
struct Figures {
    label: &'static str,
    binary: PathBuf,
    compiling_start: u64,
    start: u64,
    after_calls: u64,
    before_spike: u64,
    spike_peak: u64,
    after_spike: u64,
}

impl Figures {
    fn print(&self) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!("  {} ({}):", self.label, self.binary.display());
        println!(
            "    RSS after the first start-up, which compiled the guests: {:.1} MiB",
            mib(self.compiling_start)
        );
        println!(
            "    RSS after start-up with the guests compiled (3 guests registered): {:.1} MiB",
            mib(self.start)
        );
        println!("    RSS after the guest calls: {:.1} MiB", mib(self.after_calls));
        println!(
            "    spike: RSS before {:.1} MiB, high-water mark {:.1} MiB, after {:.1} MiB ({:+.1} % of before)",
            mib(self.before_spike),
            mib(self.spike_peak),
            mib(self.after_spike),
            (self.after_spike as f64 / self.before_spike as f64 - 1.0) * 100.0
        );
    }
}

async fn measure(label: &'static str, binary: &Path, calls: usize, authority: RegistrationAuthority) -> Figures {
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("guest cache");
    let env = HostEnv::new(cache.path()).expect("node");
    let guest = |file: &str| PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join(file);
    let gpus_file = env.dir().join("gpus.json");
    gpus::write_gpus_file(&gpus_file, 8).expect("gpus");
    let events = env.dir().join("events.sock");
    env.write_config_with(
        &[
            DriverSpec::new(EXAMPLE, &guest("example_driver.wasm")).config("devices = 8"),
            DriverSpec::new(GPU, &guest("gpu_driver.wasm"))
                .extra("grants = [\"nvml\"]")
                .config("cdi = { mode = \"base-spec\", kind = \"nvidia.com/gpu\" }"),
            DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 1"),
        ],
        &format!("memory_limit_mib = 64\nmax_instances = {INSTANCES}"),
        &format!("[nvml.simulated]\ngpus = {gpus_file:?}\nevents_socket = {events:?}\n"),
    )
    .expect("config");

    let example_claim = Claim::new("default", "bench", &uid(1)).device(EXAMPLE, "test-node", "gpu-3", "gpu");
    let faulty = |name: String, n: u64| Claim::new("default", &name, &uid(n)).device(FAULTY, "faulty", "dev-0", "dev");
    let normal: Vec<Claim> = (0..INSTANCES).map(|i| faulty(format!("normal-{i}"), 100 + i)).collect();
    let spikes: Vec<Claim> = (0..INSTANCES)
        .map(|i| faulty(format!("spike-{SPIKE_MIB}-{i}"), 200 + i))
        .collect();
    let mut claims = ClaimsFile::new(&env.claims_path).expect("claims");
    let all: Vec<Claim> = std::iter::once(example_claim.clone())
        .chain(normal.iter().cloned())
        .chain(spikes.iter().cloned())
        .collect();
    claims.put(&all).expect("claims");

    // The first start compiles the guests into the empty cache.
    let mut first = Started::new(&env, binary, authority).await;
    let compiling_start = first.rss("VmRSS");
    first.stop();
    drop(first);
    let mut host = Started::new(&env, binary, authority).await;
    let start = host.rss("VmRSS");
    let (example, faulty) = (&host.plugins[0], &host.plugins[2]);
    let rss = |field| status_kib(host.process.pid(), field).expect("host memory");

    let reference = [example_claim.reference()];
    for _ in 0..calls / 2 {
        let a = example.prepare(&reference).await.expect("prepare");
        assert_eq!(a[&uid(1)].error, "", "prepare failed");
        let u = example.unprepare(&reference).await.expect("unprepare");
        assert_eq!(u[&uid(1)], "", "unprepare failed");
    }
    let after_calls = rss("VmRSS");

    let refs = |claims: &[Claim]| claims.iter().map(Claim::reference).collect::<Vec<ClaimRef>>();
    for _ in 0..3 {
        round(faulty, &refs(&normal)).await;
    }
    let before_spike = rss("VmRSS");
    round(faulty, &refs(&spikes)).await;
    let spike_peak = rss("VmHWM");
    let after_spike = rss("VmRSS");
    host.stop();
    Figures {
        label,
        binary: binary.to_owned(),
        compiling_start,
        start,
        after_calls,
        before_spike,
        spike_peak,
        after_spike,
    }
}

/// A host running on the bench's node, its three drivers registered.
struct Started {
    _kubelet: TestKubelet,
    process: HostProcess,
    /// The example, GPU and faulty drivers' DRA services.
    plugins: Vec<Plugin>,
}

impl Started {
    async fn new(env: &HostEnv, binary: &Path, authority: RegistrationAuthority) -> Started {
        let known = [services::DRA_PLUGIN_V1, services::DRA_PLUGIN_V1BETA1];
        let kubelet = TestKubelet::start_with(&env.kubelet_root, &known, authority).expect("kubelet");
        let process = env.start(binary).expect("host");
        let mut plugins = Vec::new();
        for driver in [EXAMPLE, GPU, FAULTY] {
            let plugin = kubelet
                .wait_for_plugin(driver, Duration::from_secs(120))
                .await
                .unwrap_or_else(|e| panic!("{}: {driver}: {e:#}\nhost log:\n{}", binary.display(), process.log()));
            plugins.push(plugin);
        }
        // Let start-up's background work (inventory publishing, the first
        // health messages) settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Started {
            _kubelet: kubelet,
            process,
            plugins,
        }
    }

    fn rss(&self, field: &str) -> u64 {
        status_kib(self.process.pid(), field).expect("host memory")
    }

    fn stop(&mut self) {
        self.process.terminate(Duration::from_secs(20)).expect("clean stop");
    }
}

/// Prepare the claims in one call and unprepare them; every one must succeed.
async fn round(plugin: &Plugin, claims: &[ClaimRef]) {
    let a = plugin.prepare(claims).await.expect("prepare");
    assert!(a.values().all(|r| r.error.is_empty()), "{a:?}");
    let u = plugin.unprepare(claims).await.expect("unprepare");
    assert!(u.values().all(String::is_empty), "{u:?}");
}
