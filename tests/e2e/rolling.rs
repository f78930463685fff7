//! Rolling update of the host itself: two host processes in rolling-update
//! mode (as the old and the new pod of a DaemonSet with `maxSurge: 1`) serve
//! one driver from one plugin data directory. Both register, calls through
//! either see the other's claims, none is prepared twice or lost, and the old
//! one stopping in the middle of the load fails no call.
//!
//! The tonic test kubelet calls the host: calls through either of the two
//! instances under load, and the hand-over in the middle of it; the kubelet's
//! code calls only the newest connected instance (checked in
//! tests/cluster/real_kubelet.rs).

use crate::common::*;
use dra_test_support::claims::{Claim, ClaimsFile, uid};
use dra_test_support::host::{DriverSpec, HostEnv, http_get};
use dra_test_support::kubelet::{Plugin, TestKubelet};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const OLD_UID: &str = "0b4c6a2e-6f0e-4d6b-9a57-1c1a3e0d9f11";
const NEW_UID: &str = "7d1f2c3b-2a4e-4c5d-8e6f-9a0b1c2d3e4f";

struct Outcome {
    /// Calls answered, by plugin endpoint.
    by_endpoint: HashMap<PathBuf, usize>,
    failures: Vec<String>,
}

/// Prepare through one instance, prepare again through the other (which must
/// answer from the shared checkpoint without preparing again), unprepare
/// through the second; until `stop`.
async fn worker(
    kubelet: Arc<TestKubelet>,
    claims: Vec<Claim>,
    cdi_dir: PathBuf,
    checkpoint_dir: PathBuf,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let mut out = Outcome {
        by_endpoint: HashMap::new(),
        failures: Vec::new(),
    };
    let mut i = 0usize;
    let pick = |i: usize| -> Option<Plugin> {
        let all = kubelet.plugins(DRIVER);
        (!all.is_empty()).then(|| all[i % all.len()].clone())
    };
    while !stop.load(Ordering::Relaxed) {
        let c = &claims[i % claims.len()];
        i += 1;
        let (Some(first), Some(second)) = (pick(i), pick(i + 1)) else {
            out.failures.push("no registered instance".into());
            break;
        };
        let spec = cdi_dir.join(format!("k8s.{DRIVER}-device_{}.json", c.uid));
        let result = async {
            let a = first
                .prepare(&[c.reference()])
                .await
                .map_err(|e| format!("prepare: {e}"))?;
            *out.by_endpoint.entry(first.endpoint.clone()).or_default() += 1;
            if !a[&c.uid].error.is_empty() {
                return Err(format!("prepare {}: {}", c.name, a[&c.uid].error));
            }
            let inode = std::fs::metadata(&spec)
                .map_err(|e| format!("CDI spec after prepare: {e}"))?
                .ino();
            let b = second
                .prepare(&[c.reference()])
                .await
                .map_err(|e| format!("prepare again: {e}"))?;
            *out.by_endpoint.entry(second.endpoint.clone()).or_default() += 1;
            if !b[&c.uid].error.is_empty() || b[&c.uid].devices != a[&c.uid].devices {
                return Err(format!("prepare again {}: {:?} vs {:?}", c.name, b[&c.uid], a[&c.uid]));
            }
            // Answered from the checkpoint: the spec was not written again.
            let again = std::fs::metadata(&spec).map_err(|e| format!("CDI spec: {e}"))?.ino();
            if again != inode {
                return Err(format!(
                    "claim {} was prepared twice (its CDI spec was rewritten)",
                    c.name
                ));
            }
            let u = second
                .unprepare(&[c.reference()])
                .await
                .map_err(|e| format!("unprepare: {e}"))?;
            *out.by_endpoint.entry(second.endpoint.clone()).or_default() += 1;
            if !u[&c.uid].is_empty() {
                return Err(format!("unprepare {}: {}", c.name, u[&c.uid]));
            }
            if spec.exists() || checkpoint_dir.join(format!("{}.json", c.uid)).exists() {
                return Err(format!("claim {} left state behind after unprepare", c.name));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            out.failures.push(e);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_in_rolling_update_mode_share_claims_and_hand_over() {
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    let mut claims_file = ClaimsFile::new(&env.claims_path).unwrap();
    let spec = DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 16");
    // Both hosts get one metrics port, as two pods on the host network do.
    let metrics_port = env.enable_metrics().unwrap();
    env.write_config(&[spec], "").unwrap();
    let kubelet = Arc::new(TestKubelet::start(&env.kubelet_root).unwrap());

    let mut old = env
        .start_with_args(&binary(), &["--rolling-update-uid", OLD_UID])
        .unwrap();
    kubelet.wait_for_instances(DRIVER, 1, START_TIMEOUT).await.unwrap();
    let new = env
        .start_with_args(&binary(), &["--rolling-update-uid", NEW_UID])
        .unwrap();
    let both = kubelet.wait_for_instances(DRIVER, 2, START_TIMEOUT).await.unwrap();
    let plugin_dir = env.kubelet_root.join("plugins").join(DRIVER);
    let registry = env.kubelet_root.join("plugins_registry");
    let old_dra = plugin_dir.join(format!("dra-{OLD_UID}.sock"));
    let new_dra = plugin_dir.join(format!("dra-{NEW_UID}.sock"));
    assert_eq!(both[0].endpoint, old_dra);
    assert_eq!(both[1].endpoint, new_dra);
    let old_reg = registry.join(format!("{DRIVER}-{OLD_UID}-reg.sock"));
    let new_reg = registry.join(format!("{DRIVER}-{NEW_UID}-reg.sock"));
    assert!(old_reg.exists() && new_reg.exists());
    assert!(plugin_dir.join("serialize.lock").exists());
    // The new host waits for the port instead of failing.
    assert!(
        http_get(metrics_port, "/metrics")
            .await
            .unwrap()
            .contains("dra_host_driver_up")
    );
    assert!(
        new.log()
            .contains("port in use, presumably by the pod this one replaces"),
        "{}",
        new.log()
    );

    const WORKERS: u64 = 4;
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for w in 0..WORKERS {
        let claims: Vec<Claim> = (0..4)
            .map(|i| {
                let n = w * 4 + i;
                Claim::new("default", &format!("roll-{n}"), &uid(500 + n)).device(
                    DRIVER,
                    POOL,
                    &format!("gpu-{n}"),
                    "gpu",
                )
            })
            .collect();
        all.extend(claims.clone());
        per_worker.push(claims);
    }
    claims_file.put(&all).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let checkpoint_dir = plugin_dir.join("claims");
    let workers: Vec<_> = per_worker
        .into_iter()
        .map(|claims| {
            tokio::spawn(worker(
                Arc::clone(&kubelet),
                claims,
                env.cdi_dir.clone(),
                checkpoint_dir.clone(),
                Arc::clone(&stop),
            ))
        })
        .collect();

    // Both serve for a while, then the old pod is stopped under load.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped_at = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = old.terminate(Duration::from_secs(30));
        (status, old.log())
    })
    .await
    .unwrap();
    let (status, old_log) = status;
    let status = status.unwrap();
    assert!(status.success(), "old host exit {status:?}; log:\n{old_log}");
    let stop_took = stopped_at.elapsed();
    kubelet
        .wait_for_instances(DRIVER, 1, Duration::from_secs(10))
        .await
        .unwrap();
    // The new one carries the load alone for a while.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);

    let mut by_endpoint: HashMap<PathBuf, usize> = HashMap::new();
    let mut failures = Vec::new();
    for w in workers {
        let o = w.await.unwrap();
        for (k, v) in o.by_endpoint {
            *by_endpoint.entry(k).or_default() += v;
        }
        failures.extend(o.failures);
    }
    assert!(
        failures.is_empty(),
        "{} failed calls, first: {:?}\nold host log:\n{old_log}\nnew host log:\n{}",
        failures.len(),
        failures.first(),
        new.log()
    );
    let (on_old, on_new) = (by_endpoint[&old_dra], by_endpoint[&new_dra]);
    eprintln!("calls: {on_old} on the old host, {on_new} on the new; the old one took {stop_took:?} to stop");
    // How many each gets depends on the machine's load; that both served
    // is what matters.
    assert!(on_old > 0 && on_new > 0, "calls spread across both: {by_endpoint:?}");

    // The old host removed its own sockets, and only those.
    assert!(!old_reg.exists() && !old_dra.exists());
    assert!(new_reg.exists() && new_dra.exists());
    // Nothing prepared is left: every claim was unprepared, whoever prepared it.
    assert_eq!(checkpoint_records(&checkpoint_dir), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(&env.cdi_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // ... and serves metrics once the old one has let the port go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !new.log().contains("serving metrics") {
        assert!(
            Instant::now() < deadline,
            "new host never took the metrics port:\n{}",
            new.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = http_get(metrics_port, "/metrics").await.unwrap();
    assert!(
        text.contains(&format!("dra_host_kubelet_registered{{driver=\"{DRIVER}\"}} 1")),
        "{text}"
    );

    // The new one still answers as the only instance.
    let c = &all[0];
    let plugin = kubelet.plugin(DRIVER).unwrap();
    assert_eq!(plugin.endpoint, new_dra);
    assert_eq!(plugin.prepare(&[c.reference()]).await.unwrap()[&c.uid].error, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restarted_in_rolling_update_mode_keeps_the_claims() {
    // Claims prepared by a host in normal mode are served by a host in
    // rolling-update mode (the first upgrade to a DaemonSet with maxSurge).
    let mut node = Node::example(4).await;
    let c = Claim::new("default", "kept", &uid(77)).device(DRIVER, POOL, "gpu-1", "gpu");
    node.claims.put(std::slice::from_ref(&c)).unwrap();
    let first = node.plugin.prepare(&[c.reference()]).await.unwrap();
    assert_eq!(first[&c.uid].error, "");
    node.host.terminate(Duration::from_secs(20)).unwrap();

    let host = node
        .env
        .start_with_args(&binary(), &["--rolling-update-uid", NEW_UID])
        .unwrap();
    let plugin = node.kubelet.wait_for_plugin(DRIVER, START_TIMEOUT).await.unwrap();
    assert!(plugin.endpoint.ends_with(format!("dra-{NEW_UID}.sock")));
    let again = plugin.prepare(&[c.reference()]).await.unwrap();
    assert_eq!(again[&c.uid].devices, first[&c.uid].devices, "{}", host.log());
    assert_eq!(plugin.unprepare(&[c.reference()]).await.unwrap()[&c.uid], "");
    assert!(!node.cdi_spec_path(&c.uid).exists());
}

/// `dra-wasm-host probe` (the exec probe of hostNetwork pods, whose probe
/// port the other pod of an update may hold) checks the sockets of the pod
/// it runs in: with the old pod's UID it passes while only the old pod
/// serves, with the new pod's it fails, naming the driver and the socket,
/// until the new pod serves too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_command_checks_only_its_own_pods_sockets() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    let _claims = ClaimsFile::new(&env.claims_path).unwrap();
    env.write_config(
        &[DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 2")],
        "",
    )
    .unwrap();
    let kubelet = TestKubelet::start(&env.kubelet_root).unwrap();
    let probe = |uid: Option<&str>| {
        let mut cmd = std::process::Command::new(binary());
        cmd.args(["probe", "--config"])
            .arg(&env.config_path)
            .env_remove("POD_UID");
        if let Some(uid) = uid {
            cmd.env("POD_UID", uid);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let old = env
        .start_with_args(&binary(), &["--rolling-update-uid", OLD_UID])
        .unwrap();
    kubelet
        .wait_for_instances(DRIVER, 1, START_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    let (ok, text) = probe(Some(OLD_UID));
    assert!(ok && text.contains("serving: 1 driver"), "{text}");
    let (ok, text) = probe(Some(NEW_UID));
    assert!(!ok, "the new pod's probe passed on the old pod's sockets: {text}");
    assert!(
        text.contains(&format!("driver {DRIVER}")) && text.contains("registration socket"),
        "{text}"
    );
    // Not in rolling-update mode: the plain socket names, which nobody serves.
    assert!(!probe(None).0);

    let new = env
        .start_with_args(&binary(), &["--rolling-update-uid", NEW_UID])
        .unwrap();
    kubelet
        .wait_for_instances(DRIVER, 2, START_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", new.log()));
    let (ok, text) = probe(Some(NEW_UID));
    assert!(ok, "{text}\n{}", new.log());
}

/// In rolling-update mode a prepare reads its ResourceClaim from the API
/// server before it takes the node-wide lock: while the other pod holds the
/// lock, the claim's GET is already done (the real API server's audit log
/// has it), and nothing is prepared; once the lock is free the call
/// completes. Before, the GET waited behind the lock, so every call's API
/// round trip was part of the time the other pod's calls queued for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_reads_its_claim_while_the_other_pod_holds_the_node_lock() {
    let cp = control_plane().await;
    let node = "e2e-rolling-fetch-ahead";
    let (env, _, _) = cluster_env(cp, node);
    env.write_config(
        &[DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 2")],
        "",
    )
    .unwrap();
    let kubelet = TestKubelet::start(&env.kubelet_root).unwrap();
    let host = env
        .start_with_args(&binary(), &["--rolling-update-uid", NEW_UID])
        .unwrap();
    let plugin = kubelet.wait_for_plugin(DRIVER, START_TIMEOUT).await.unwrap();
    let claim = Claim::new("e2e-rolling", "fetched-ahead", "").device(DRIVER, node, "gpu-1", "gpu");
    let claim = cp.put_claim(&claim, node).unwrap();
    let spec = env.cdi_dir.join(format!("k8s.{DRIVER}-device_{}.json", claim.uid));
    let claim_gets = || {
        cp.requests_of(node)
            .iter()
            .filter(|r| r.verb == "get" && r.resource == "resourceclaims" && r.name == "fetched-ahead")
            .count()
    };
    assert_eq!(claim_gets(), 0);

    // The other pod holds the node-wide lock.
    let other_pod = OtherPod::open(&env.kubelet_root.join("plugins").join(DRIVER));
    assert!(other_pod.try_lock(), "the lock is free before the call");
    let call = tokio::spawn({
        let plugin = plugin.clone();
        let reference = claim.reference();
        async move { plugin.prepare(&[reference]).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while claim_gets() == 0 {
        assert!(
            Instant::now() < deadline,
            "the prepare did not read its claim while the other pod held the lock\nhost log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!call.is_finished(), "the call waits for the lock");
    assert!(!spec.exists(), "nothing is prepared while the other pod holds the lock");

    other_pod.unlock();
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call completes once the lock is free")
        .unwrap()
        .unwrap();
    assert_eq!(answer[&claim.uid].error, "", "host log:\n{}", host.log());
    assert_eq!(answer[&claim.uid].devices.len(), 1);
    assert!(spec.exists());
    assert_eq!(claim_gets(), 1, "read once, not again under the lock");
}

/// After a reboot both pods of an unfinished rolling update start again on
/// the same checkpoint. Re-preparing the claims of the earlier boot is claim
/// work like the kubelet's calls: under the node-wide lock, after reading
/// what the other pod may already have re-prepared. While the other pod
/// holds the lock nothing is re-prepared (and nothing served); once it lets
/// go, the claim is prepared again and the host registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_claims_are_prepared_again_under_the_node_lock() {
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    let boot_file = env.dir().join("boot_id");
    std::fs::write(&boot_file, "boot-1\n").unwrap();
    env.env
        .push(("DRA_TEST_BOOT_ID_FILE".into(), boot_file.display().to_string()));
    let mut claims = ClaimsFile::new(&env.claims_path).unwrap();
    env.write_config(
        &[DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 2")],
        "",
    )
    .unwrap();
    let kubelet = TestKubelet::start(&env.kubelet_root).unwrap();
    let args = ["--rolling-update-uid", NEW_UID];
    let mut host = env.start_with_args(&binary(), &args).unwrap();
    let plugin = kubelet.wait_for_plugin(DRIVER, START_TIMEOUT).await.unwrap();
    let claim = Claim::new("default", "rebooted", &uid(951)).device(DRIVER, POOL, "gpu-1", "gpu");
    claims.put(std::slice::from_ref(&claim)).unwrap();
    let answer = plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&uid(951)].error, "");
    host.terminate(Duration::from_secs(20)).unwrap();
    let plugin_dir = env.kubelet_root.join("plugins").join(DRIVER);
    let record = plugin_dir.join("claims").join(format!("{}.json", uid(951)));
    assert_eq!(read_record(&record)["bootId"], "boot-1");

    // The node reboots; the other pod holds the lock as this one starts.
    std::fs::write(&boot_file, "boot-2\n").unwrap();
    let other_pod = OtherPod::open(&plugin_dir);
    assert!(other_pod.try_lock(), "the lock is free before the start");
    let host = env.start_with_args(&binary(), &args).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        read_record(&record)["bootId"],
        "boot-1",
        "re-prepared while the other pod held the lock\nhost log:\n{}",
        host.log()
    );
    assert!(
        !host.log().contains("claims re-prepared after a reboot"),
        "{}",
        host.log()
    );

    other_pod.unlock();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_record(&record)["bootId"] != "boot-2" {
        assert!(Instant::now() < deadline, "not re-prepared\nhost log:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let plugin = kubelet.wait_for_plugin(DRIVER, START_TIMEOUT).await.unwrap();
    let again = plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(again[&uid(951)], answer[&uid(951)], "answered from the checkpoint");
}
