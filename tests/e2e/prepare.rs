//! Prepare and unprepare through the kubelet API: answers, CDI files,
//! idempotency, and one answer entry per claim whatever goes wrong.
//!
//! The tonic test kubelet calls the host: requests the kubelet's code never
//! sends (an unprepare of an unknown claim, a batch whose claims fail each their
//! own way, repeated and concurrent identical calls, `kill -9` between chosen
//! calls). A Pod prepared by the kubelet's own code: tests/cluster/.

use crate::common::*;
use dra_test_support::claims::{Claim, uid};
use serde_json::Value;

fn cdi_id(claim_uid: &str, device: &str) -> String {
    format!("k8s.{DRIVER}/device={claim_uid}_{device}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_writes_cdi_spec_and_unprepare_removes_it() {
    prepare_and_unprepare(EXAMPLE).await;
}

/// The same with the example guest built against `dra:driver@0.1.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_writes_cdi_spec_and_unprepare_removes_it_with_the_0_1_guest() {
    prepare_and_unprepare(EXAMPLE_V0_1).await;
}

async fn prepare_and_unprepare(build: &str) {
    let mut node = Node::example_build(build, 4).await;
    let claim = Claim::new("default", "one", &uid(10))
        .device(DRIVER, POOL, "gpu-0", "gpu/small")
        .device(DRIVER, POOL, "gpu-2", "gpu/small")
        .device("other.example.com", "elsewhere", "nic-0", "nic")
        .opaque_config(
            "FromClass",
            DRIVER,
            &[],
            serde_json::json!({"sharing": {"strategy": "SpacePartitioning"}}),
        )
        .opaque_config(
            "FromClaim",
            DRIVER,
            &["gpu"],
            serde_json::json!({"sharing": {"strategy": "TimeSlicing"}}),
        );
    node.claims.put(std::slice::from_ref(&claim)).unwrap();

    let answer = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer.len(), 1);
    let entry = &answer[&uid(10)];
    assert_eq!(entry.error, "");
    // Only this driver's devices, in allocation order, subrequest stripped.
    let devices: Vec<_> = entry
        .devices
        .iter()
        .map(|d| (d.pool_name.as_str(), d.device_name.as_str()))
        .collect();
    assert_eq!(devices, [(POOL, "gpu-0"), (POOL, "gpu-2")]);
    assert_eq!(entry.devices[0].request_names, ["gpu"]);
    assert_eq!(entry.devices[0].cdi_device_ids, [cdi_id(&uid(10), "gpu-0")]);
    assert_eq!(entry.devices[0].share_id, None);

    let spec_path = node.cdi_spec_path(&uid(10));
    let spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    assert_eq!(spec["kind"], format!("k8s.{DRIVER}/device"));
    assert_eq!(
        spec["cdiVersion"], "0.5.0",
        "minimum version for names starting with a digit"
    );
    let env: Vec<&str> = spec["devices"][1]["containerEdits"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"GPU_DEVICE_2=gpu-2"), "{env:?}");
    // The claim's config (TimeSlicing) overrides the class's.
    assert!(env.contains(&"GPU_DEVICE_2_SHARING_STRATEGY=TimeSlicing"), "{env:?}");
    assert!(node.checkpoint_dir().join(format!("{}.json", uid(10))).is_file());

    let errors = node.plugin.unprepare(&[claim.reference()]).await.unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[&uid(10)], "");
    assert!(!spec_path.exists());
    assert!(!node.checkpoint_dir().join(format!("{}.json", uid(10))).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_claims_in_one_call_and_repeated_prepare_is_idempotent() {
    let mut node = Node::example(8).await;
    let claims: Vec<Claim> = (0..8u64)
        .map(|i| {
            Claim::new("team-a", &format!("claim-{i}"), &uid(100 + i)).device(DRIVER, POOL, &format!("gpu-{i}"), "gpu")
        })
        .collect();
    node.claims.put(&claims).unwrap();
    let refs: Vec<_> = claims.iter().map(Claim::reference).collect();

    let first = node.plugin.prepare(&refs).await.unwrap();
    assert_eq!(first.len(), 8);
    for (i, c) in claims.iter().enumerate() {
        let e = &first[&c.uid];
        assert_eq!(e.error, "", "claim {i}");
        assert_eq!(e.devices[0].cdi_device_ids, [cdi_id(&c.uid, &format!("gpu-{i}"))]);
    }
    // The kubelet repeats prepare after its restarts: same answer.
    let second = node.plugin.prepare(&refs).await.unwrap();
    assert_eq!(first, second);

    let errors = node.plugin.unprepare(&refs).await.unwrap();
    assert_eq!(errors.len(), 8);
    assert!(errors.values().all(String::is_empty), "{errors:?}");
    assert_eq!(std::fs::read_dir(&node.env.cdi_dir).unwrap().count(), 0);
    // Unprepare is idempotent too.
    let again = node.plugin.unprepare(&refs).await.unwrap();
    assert!(again.values().all(String::is_empty), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprepare_of_an_unknown_claim_succeeds() {
    let node = Node::example(1).await;
    let errors = node
        .plugin
        .unprepare(&[Claim::new("default", "never-seen", &uid(999)).reference()])
        .await
        .unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[&uid(999)], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_requested_claim_gets_an_answer_entry() {
    let mut node = Node::example(2).await;
    let good = Claim::new("default", "good", &uid(1)).device(DRIVER, POOL, "gpu-0", "gpu");
    let unallocated = Claim::new("default", "unallocated", &uid(2)).unallocated();
    let replaced = Claim::new("default", "replaced", &uid(3)).device(DRIVER, POOL, "gpu-1", "gpu");
    let no_such_device = Claim::new("default", "no-such-device", &uid(4)).device(DRIVER, POOL, "gpu-7", "gpu");
    let bad_config = Claim::new("default", "bad-config", &uid(5))
        .device(DRIVER, POOL, "gpu-1", "gpu")
        .opaque_config(
            "FromClaim",
            DRIVER,
            &[],
            serde_json::json!({"sharing": {"strategy": "TimeSlicing", "colour": "red"}}),
        );
    node.claims
        .put(&[
            good.clone(),
            unallocated.clone(),
            replaced.clone(),
            no_such_device.clone(),
            bad_config.clone(),
        ])
        .unwrap();
    let mut replaced_ref = replaced.reference();
    replaced_ref.uid = uid(33);
    let missing = Claim::new("default", "missing", &uid(6)).reference();
    let bad_uid = dra_test_support::kubelet::ClaimRef::new("default", "bad-uid", "../../etc");

    let refs = vec![
        good.reference(),
        unallocated.reference(),
        replaced_ref,
        no_such_device.reference(),
        bad_config.reference(),
        missing,
        bad_uid,
    ];
    let answer = node.plugin.prepare(&refs).await.unwrap();
    assert_eq!(answer.len(), refs.len(), "{answer:?}");
    assert_eq!(answer[&uid(1)].error, "");
    let err = |u: &str| answer[u].error.clone();
    assert!(err(&uid(2)).contains("not allocated"), "{}", err(&uid(2)));
    assert!(err(&uid(33)).contains("replaced"), "{}", err(&uid(33)));
    assert!(err(&uid(4)).contains("gpu-7"), "{}", err(&uid(4)));
    assert!(
        err(&uid(5)).contains("colour"),
        "the guest names the unknown field: {}",
        err(&uid(5))
    );
    assert!(err(&uid(6)).contains("not found"), "{}", err(&uid(6)));
    assert!(err("../../etc").contains("not a valid UID"), "{}", err("../../etc"));
    // Failed claims leave nothing behind.
    for u in [uid(2), uid(33), uid(4), uid(5), uid(6)] {
        assert!(!node.cdi_spec_path(&u).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_prepare_and_unprepare_then_restart() {
    crash_and_restart_between_prepare_and_unprepare(EXAMPLE).await;
}

/// The same with the example guest built against `dra:driver@0.1.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_prepare_and_unprepare_then_restart_with_the_0_1_guest() {
    crash_and_restart_between_prepare_and_unprepare(EXAMPLE_V0_1).await;
}

async fn crash_and_restart_between_prepare_and_unprepare(build: &str) {
    let mut node = Node::example_build(build, 2).await;
    let claim = Claim::new("default", "survivor", &uid(42)).device(DRIVER, POOL, "gpu-1", "gpu");
    node.claims.put(std::slice::from_ref(&claim)).unwrap();
    let before = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(before[&uid(42)].error, "");

    // kill -9, and lose the CDI directory as a reboot loses /var/run.
    node.host.kill9().unwrap();
    std::fs::remove_dir_all(&node.env.cdi_dir).unwrap();
    node.restart().await;
    assert!(
        node.cdi_spec_path(&uid(42)).is_file(),
        "CDI spec restored from the checkpoint at start"
    );

    let after = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(
        before, after,
        "a repeated prepare after a restart returns the same CDI IDs"
    );

    // Crash again, then unprepare after the restart.
    node.crash_and_restart().await;
    let errors = node.plugin.unprepare(&[claim.reference()]).await.unwrap();
    assert_eq!(errors[&uid(42)], "");
    assert!(!node.cdi_spec_path(&uid(42)).exists());
    assert_eq!(checkpoint_records(&node.checkpoint_dir()), Vec::<String>::new());
}

/// Many kubelet calls at once: their file work then leaves the async
/// workers for the blocking pool, so that the claims' fsyncs are in flight
/// together. Every answer must still come only once its claim's files are
/// written, and a kill -9 right after the answers must lose none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_answer_only_once_each_claim_is_on_disk() {
    const N: u64 = 32;
    let mut node = Node::example(N as u32).await;
    let claims: Vec<Claim> = (0..N)
        .map(|i| {
            Claim::new("team-c", &format!("c-{i}"), &uid(700 + i)).device(DRIVER, POOL, &format!("gpu-{i}"), "gpu")
        })
        .collect();
    node.claims.put(&claims).unwrap();
    let record = |node: &Node, i: u64| node.checkpoint_dir().join(format!("{}.json", uid(700 + i)));

    // Each claim's files are checked the moment its answer arrives, while
    // the other claims are still in flight.
    let on_disk = |node: &Node, i: u64| (node.cdi_spec_path(&uid(700 + i)).is_file(), record(node, i).is_file());
    let prepares = claims.iter().enumerate().map(|(i, c)| {
        let (plugin, reference, node) = (node.plugin.clone(), c.reference(), &node);
        async move {
            let answer = plugin.prepare(&[reference]).await;
            (i as u64, answer, on_disk(node, i as u64))
        }
    });
    for (i, answer, on_disk) in futures_util::future::join_all(prepares).await {
        let answer = answer.unwrap();
        assert_eq!(answer[&uid(700 + i)].error, "", "claim {i}");
        assert_eq!(answer[&uid(700 + i)].devices.len(), 1, "claim {i}");
        assert_eq!(
            on_disk,
            (true, true),
            "claim {i}: answered before its (CDI spec, record) were written"
        );
    }

    node.crash_and_restart().await;
    for i in 0..N {
        assert!(record(&node, i).is_file(), "claim {i}: record lost by kill -9");
        assert!(
            node.cdi_spec_path(&uid(700 + i)).is_file(),
            "claim {i}: CDI spec lost by kill -9"
        );
    }

    let unprepares = claims.iter().enumerate().map(|(i, c)| {
        let (plugin, reference, node) = (node.plugin.clone(), c.reference(), &node);
        async move {
            let errors = plugin.unprepare(&[reference]).await;
            (i as u64, errors, on_disk(node, i as u64))
        }
    });
    for (i, errors, on_disk) in futures_util::future::join_all(unprepares).await {
        assert_eq!(errors.unwrap()[&uid(700 + i)], "", "claim {i}");
        assert_eq!(
            on_disk,
            (false, false),
            "claim {i}: answered before its (CDI spec, record) were removed"
        );
    }
    node.crash_and_restart().await;
    let left = checkpoint_records(&node.checkpoint_dir());
    assert!(left.is_empty(), "records back after kill -9: {left:?}");
}

/// The checkpoint reuses the files of unprepared claims: the spares one run
/// leaves are adopted by the next, the records written into them survive a
/// kill -9, and no spare — each still holds an unprepared claim's old
/// record — ever comes back as a prepared claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_record_files_survive_kill_9_and_never_bring_back_an_unprepared_claim() {
    use std::os::unix::fs::MetadataExt;
    const N: u64 = 6;
    let mut node = Node::example(2 * N as u32).await;
    let claim = |i: u64| {
        Claim::new("team-r", &format!("r-{i}"), &uid(900 + i)).device(DRIVER, POOL, &format!("gpu-{i}"), "gpu")
    };
    let (first, second): (Vec<Claim>, Vec<Claim>) = ((0..N).map(claim).collect(), (N..2 * N).map(claim).collect());
    node.claims.put(&first).unwrap();
    node.claims.put(&second).unwrap();
    let refs = |claims: &[Claim]| claims.iter().map(Claim::reference).collect::<Vec<_>>();
    let inodes = |node: &Node| -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(node.checkpoint_dir())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().ino())
            .collect();
        v.sort();
        v
    };

    // The first claims come and go: their files stay, hidden, as spares.
    let answer = node.plugin.prepare(&refs(&first)).await.unwrap();
    assert!(answer.values().all(|a| a.error.is_empty()), "{answer:?}");
    let errors = node.plugin.unprepare(&refs(&first)).await.unwrap();
    assert!(errors.values().all(String::is_empty), "{errors:?}");
    assert_eq!(checkpoint_records(&node.checkpoint_dir()), Vec::<String>::new());
    let spares = inodes(&node);
    assert_eq!(spares.len(), N as usize, "one spare per unprepared claim");

    // A new run adopts them and writes the next claims' records into them.
    node.crash_and_restart().await;
    let before = node.plugin.prepare(&refs(&second)).await.unwrap();
    assert!(before.values().all(|a| a.error.is_empty()), "{before:?}");
    assert_eq!(inodes(&node), spares, "the records went into the spares");

    // A crash right after the answers loses none of them and revives none of the first claims.
    node.crash_and_restart().await;
    let expected: Vec<String> = (N..2 * N).map(|i| format!("{}.json", uid(900 + i))).collect();
    assert_eq!(checkpoint_records(&node.checkpoint_dir()), expected);
    let after = node.plugin.prepare(&refs(&second)).await.unwrap();
    assert_eq!(before, after, "answered from the records written into spares");
    for c in &first {
        assert!(
            !node.cdi_spec_path(&c.uid).exists(),
            "{}: an unprepared claim's CDI spec came back",
            c.uid
        );
    }
    let quarantine = node.checkpoint_dir().with_file_name("claims-quarantine");
    assert!(!quarantine.exists(), "nothing was quarantined:\n{}", node.host.log());
}
