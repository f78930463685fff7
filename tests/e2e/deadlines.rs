//! The kubelet's deadline (`grpc-timeout`, 45 s) passing while a claim
//! operation is under way: the kubelet gets DEADLINE_EXCEEDED, and the host
//! still finishes the operation and leaves nothing locked or half-done.
//!
//! A raw tonic call sends the deadline, with the tonic test kubelet registering
//! the host and checking after it: a `grpc-timeout` of 300 ms passing at a
//! chosen moment of the guest's call; the kubelet's own code always sends 45 s.

use crate::common::*;
use dra_proto::dra::v1;
use dra_test_support::claims::{Claim, ClaimsFile, uid};
use dra_test_support::host::{DriverSpec, HostEnv};
use dra_test_support::kubelet::TestKubelet;
use std::time::Duration;

const POD_UID: &str = "5f8e8a31-3a5c-4d4e-9d2b-0c7a9f3e1b22";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_whose_deadline_passes_still_completes_and_releases_the_node_lock() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    let mut claims = ClaimsFile::new(&env.claims_path).unwrap();
    env.write_config(
        &[DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 2")],
        "",
    )
    .unwrap();
    let kubelet = TestKubelet::start(&env.kubelet_root).unwrap();
    // Rolling-update mode: every claim operation first takes the node-wide
    // lock that the other pod of the DaemonSet also takes.
    let host = env
        .start_with_args(&binary(), &["--rolling-update-uid", POD_UID])
        .unwrap();
    let plugin = kubelet.wait_for_plugin(DRIVER, START_TIMEOUT).await.unwrap();
    let claim = Claim::new("default", "late", &uid(901)).device(DRIVER, POOL, "gpu-1", "gpu");
    claims.put(std::slice::from_ref(&claim)).unwrap();
    let spec = env.cdi_dir.join(format!("k8s.{DRIVER}-device_{}.json", uid(901)));

    // The other pod holds the lock while this call waits for it.
    let other_pod = OtherPod::open(&env.kubelet_root.join("plugins").join(DRIVER));
    assert!(other_pod.try_lock(), "the lock is free before the call");
    let channel = dra_proto::connect_uds(&plugin.endpoint).await.unwrap();
    let mut client = v1::dra_plugin_client::DraPluginClient::new(channel);
    let mut request = tonic::Request::new(v1::NodePrepareResourcesRequest {
        claims: vec![v1::Claim {
            namespace: "default".into(),
            name: "late".into(),
            uid: uid(901),
        }],
    });
    request.set_timeout(Duration::from_millis(300));
    let status = client.node_prepare_resources(request).await.unwrap_err();
    assert!(
        matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{status:?}"
    );
    assert!(!spec.exists(), "nothing is prepared while the other pod holds the lock");

    // The other pod lets go: the call the kubelet gave up on completes.
    other_pod.unlock();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !spec.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the prepare whose deadline passed was dropped, not completed\nhost log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the host released the node lock afterwards: the other pod can take it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !other_pod.try_lock() {
        assert!(
            std::time::Instant::now() < deadline,
            "the host kept the node-wide lock after the call; the other pod would wait forever"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other_pod.unlock();

    // The kubelet's retry is answered from the checkpoint.
    let answer = plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&uid(901)].error, "");
    assert_eq!(answer[&uid(901)].devices.len(), 1);
}
