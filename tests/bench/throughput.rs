//! Throughput of prepare + unprepare under concurrent kubelet connections,
//! through the real binary: how many claim pairs per second the host
//! sustains, their latency, and the host's CPU per pair.
//!
//! Run: `cargo bench --bench throughput` (options after `--`: `--callers N`
//! (16), `--seconds S` per phase (5), `--rounds R` (2), `--claims N` per
//! caller (4), `--baseline PATH`, `--candidate PATH`, `--state-dir DIR`).
//!
//! Each caller has its own HTTP/2 connection to the DRA socket, as separate
//! kubelet calls would, and loops over its own claims: prepare, then
//! unprepare. With `--baseline`, phases of the candidate and the baseline
//! alternate (`rounds` each), so both see the same machine; compare only
//! figures from one run. The host CPU per pair is read from
//! `/proc/<pid>/stat` (user + system), so it can be compared across machines.
//!
//! Before the phases, the disk alone: 1 and N threads doing to the
//! checkpoint's disk what each pair does (a durable write of a 1 KiB record,
//! then its durable removal), with the checkpoint's own `fsutil::Recycler`. That is the
//! ceiling the host's pairs/s are measured against, in the same run.
//!
//! `--state-dir DIR` puts the hosts' node directories (checkpoint included)
//! and the disk-alone threads in DIR instead of the target directory: run
//! it on the file system that holds `/var/lib/kubelet` on your nodes (the
//! report names the file system type). With `--state-dir /dev/shm` what is
//! left is the host's own cost per pair without a disk under it, the lower
//! bound of any change to how the checkpoint is written; never a figure to
//! ship, tmpfs does not survive a reboot.
//!
//! The tonic test kubelet calls the host: N concurrent HTTP/2 connections on
//! cue, as the measurement needs.

use dra_proto::dra::v1;
use dra_proto::services;
use dra_test_support::bench::{Latencies, arg, ms, process_cpu_time};
use dra_test_support::claims::{Claim, ClaimsFile, uid};
use dra_test_support::host::{DriverSpec, HostEnv, HostProcess};
use dra_test_support::kubelet::{RegistrationAuthority, TestKubelet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DRIVER: &str = "example.dra.dev";

fn main() {
    let callers = arg("--callers", 16usize);
    let seconds = arg("--seconds", 5u64);
    let rounds = arg("--rounds", 2usize);
    let claims = arg("--claims", 4usize);
    let path_arg = |name| Some(PathBuf::from(arg(name, String::new()))).filter(|p| !p.as_os_str().is_empty());
    let baseline = path_arg("--baseline");
    let candidate = path_arg("--candidate").unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dra-wasm-host")));
    let state_dir = path_arg("--state-dir").unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let fs_type = file_system_type(&state_dir);
    // SAFETY: set before any thread or host starts; HostEnv's temporary
    // directories follow it.
    unsafe { std::env::set_var("TMPDIR", &state_dir) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let authority = if baseline.is_some() {
            RegistrationAuthority::Localhost
        } else {
            RegistrationAuthority::GrpcGo
        };
        // SAFETY: set before any host starts; nothing else reads it concurrently.
        unsafe { std::env::set_var("DRA_TEST_LOG", "warn") };
        let mut subjects = vec![Subject::start("candidate", &candidate, callers, claims, authority).await];
        if let Some(path) = &baseline {
            subjects.push(Subject::start("baseline", path, callers, claims, authority).await);
        }
        let disk_time = Duration::from_secs(seconds.min(3));
        let disk = [1, callers].map(|threads| (threads, disk_alone(&state_dir, threads, disk_time)));
        for s in &mut subjects {
            s.phase(Duration::from_secs(1), false).await;
        }
        for _ in 0..rounds {
            for s in &mut subjects {
                s.phase(Duration::from_secs(seconds), true).await;
            }
        }
        println!(
            "prepare + unprepare throughput: {callers} callers on their own connections, {claims} claims each, \
             {rounds} phases of {seconds} s per binary (example guest; CDI on tmpfs, checkpoint in {} on {fs_type})",
            state_dir.display()
        );
        println!(
            "  the {fs_type} alone (durable write of a 1 KiB record + durable removal, as the checkpoint does it): {}",
            disk.iter()
                .map(|(threads, pairs)| format!("{threads} thread(s) {pairs:.0} pairs/s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for s in &subjects {
            s.report();
        }
        if let [a, b] = &subjects[..] {
            println!(
                "  candidate / baseline: pairs/s {:.2}×, prepare p99 {:.2}×, host CPU per pair {:.2}×",
                a.pairs_per_second() / b.pairs_per_second(),
                a.prepare_latency().p99.as_secs_f64() / b.prepare_latency().p99.as_secs_f64(),
                a.cpu_per_pair() / b.cpu_per_pair(),
            );
        }
        for s in &mut subjects {
            s.host.terminate(Duration::from_secs(20)).expect("clean stop");
            let _ = std::fs::remove_dir_all(&s.cdi_dir);
        }
    });
}

/// The name of the file system holding `dir`, from `statfs(2)`'s magic
/// numbers (linux/magic.h), for the report.
fn file_system_type(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path without NUL");
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs fills the buffer for a NUL-terminated path; the buffer
    // is read only when the call succeeded.
    if unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        panic!("statfs {}: {}", dir.display(), std::io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between architectures
    let magic = unsafe { st.assume_init() }.f_type as i64;
    match magic {
        0xef53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794c_7630 => "overlayfs".into(),
        other => format!("file system 0x{other:x}"),
    }
}

/// `threads` threads each doing what a prepare + unprepare pair does to the
/// checkpoint, for `time`: pairs per second, all threads together.
fn disk_alone(in_dir: &Path, threads: usize, time: Duration) -> f64 {
    let dir = tempfile::tempdir_in(in_dir).expect("disk dir");
    let files = dra_wasm_host::state::fsutil::Recycler::open(dir.path(), 0o600).expect("disk dir");
    let record = vec![b'x'; 1024];
    let end = Instant::now() + time;
    let pairs: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (files, record) = (&files, &record);
                scope.spawn(move || {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let name = format!("{t}-{}.json", n % 4);
                        files.write(&name, record).expect("durable write");
                        assert!(files.remove(&name).expect("durable removal"));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("disk thread")).sum()
    });
    pairs as f64 / time.as_secs_f64()
}

struct Subject {
    label: &'static str,
    binary: PathBuf,
    _env: HostEnv,
    _kubelet: TestKubelet,
    host: HostProcess,
    cdi_dir: PathBuf,
    /// One client (one connection) and its claims per caller.
    callers: Vec<(
        v1::dra_plugin_client::DraPluginClient<tonic::transport::Channel>,
        Vec<v1::Claim>,
    )>,
    prepare: Vec<Duration>,
    unprepare: Vec<Duration>,
    pairs: u64,
    elapsed: Duration,
    cpu: Duration,
}

impl Subject {
    async fn start(
        label: &'static str,
        binary: &Path,
        callers: usize,
        per_caller: usize,
        authority: RegistrationAuthority,
    ) -> Subject {
        let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let env = HostEnv::new(&target_tmp.join("bench-guest-cache")).expect("node layout");
        // CDI specs on a tmpfs, as /var/run/cdi is on real nodes.
        let cdi_dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs").keep();
        let total = callers * per_caller;
        let guest = PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join("example_driver.wasm");
        env.write_config(
            &[DriverSpec::new(DRIVER, &guest).config(&format!("devices = {total}"))],
            "",
        )
        .expect("config");
        let config = std::fs::read_to_string(&env.config_path).expect("config");
        let config = config.replace(
            &format!("cdi_dir = {:?}", env.cdi_dir),
            &format!("cdi_dir = {cdi_dir:?}"),
        );
        std::fs::write(&env.config_path, config).expect("config");
        let all: Vec<Claim> = (0..total)
            .map(|i| {
                Claim::new("default", &format!("load-{i}"), &uid(10_000 + i as u64)).device(
                    DRIVER,
                    "test-node",
                    &format!("gpu-{i}"),
                    "gpu",
                )
            })
            .collect();
        ClaimsFile::new(&env.claims_path)
            .expect("claims")
            .put(&all)
            .expect("claims");
        let known = [services::DRA_PLUGIN_V1, services::DRA_PLUGIN_V1BETA1];
        let kubelet = TestKubelet::start_with(&env.kubelet_root, &known, authority).expect("kubelet");
        let host = env.start(binary).expect("host");
        let plugin = kubelet
            .wait_for_plugin(DRIVER, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}\nhost log:\n{}", binary.display(), host.log()));
        let mut clients = Vec::new();
        for chunk in all.chunks(per_caller) {
            let channel = dra_proto::connect_uds(&plugin.endpoint).await.expect("connect");
            let claims = chunk
                .iter()
                .map(|c| v1::Claim {
                    namespace: "default".into(),
                    name: c.name.clone(),
                    uid: c.uid.clone(),
                })
                .collect();
            clients.push((v1::dra_plugin_client::DraPluginClient::new(channel), claims));
        }
        Subject {
            label,
            binary: binary.to_owned(),
            _env: env,
            _kubelet: kubelet,
            host,
            cdi_dir,
            callers: clients,
            prepare: Vec::new(),
            unprepare: Vec::new(),
            pairs: 0,
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
        }
    }

    /// Every caller loops prepare → unprepare over its claims for `length`.
    async fn phase(&mut self, length: Duration, record: bool) {
        let cpu_before = process_cpu_time(self.host.pid()).expect("host CPU time");
        let started = Instant::now();
        let deadline = started + length;
        let tasks: Vec<_> = self
            .callers
            .iter()
            .map(|(client, claims)| {
                let (client, claims) = (client.clone(), claims.clone());
                tokio::spawn(dra_test_support::bench::prepare_unprepare_until(
                    client, claims, deadline, "host",
                ))
            })
            .collect();
        let mut pairs = 0;
        for task in tasks {
            let (p, u) = task.await.expect("caller");
            pairs += u.len() as u64;
            if record {
                self.prepare.extend(p);
                self.unprepare.extend(u);
            }
        }
        if record {
            self.pairs += pairs;
            self.elapsed += started.elapsed();
            self.cpu += process_cpu_time(self.host.pid())
                .expect("host CPU time")
                .saturating_sub(cpu_before);
        }
    }

    fn pairs_per_second(&self) -> f64 {
        self.pairs as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_pair(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.pairs as f64
    }

    fn prepare_latency(&self) -> Latencies {
        Latencies::of(&self.prepare).expect("samples")
    }

    fn report(&self) {
        println!("  {} ({}):", self.label, self.binary.display());
        println!(
            "    {:.0} prepares/s and as many unprepares ({} pairs in {:.1} s)",
            self.pairs_per_second(),
            self.pairs,
            self.elapsed.as_secs_f64()
        );
        println!("    prepare: {}", self.prepare_latency());
        println!("    unprepare: {}", Latencies::of(&self.unprepare).expect("samples"));
        println!(
            "    host CPU (user+system) per pair: {:.0} µs; host busy {:.2} cores (p99 prepare {:.1} ms)",
            self.cpu_per_pair(),
            self.cpu.as_secs_f64() / self.elapsed.as_secs_f64(),
            ms(self.prepare_latency().p99)
        );
    }
}
