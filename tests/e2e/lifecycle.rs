//! Metrics and logs an operator reads.
//!
//! The tonic test kubelet calls the host: the run has no API server (claims
//! file), and the kubelet's code reads Pods from one; the host's gRPC metric
//! under the kubelet's own calls is read in tests/cluster/real_kubelet.rs.

use crate::common::*;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::host::{DriverSpec, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_claims_and_guest_calls() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 2");
    let mut node = Node::start(vec![spec], "").await;
    // Restart with a metrics address (Node::start writes the config first).
    let config = std::fs::read_to_string(&node.env.config_path).unwrap();
    node.host.terminate(std::time::Duration::from_secs(20)).unwrap();
    std::fs::write(
        &node.env.config_path,
        format!("metrics_addr = \"127.0.0.1:{port}\"\n{config}"),
    )
    .unwrap();
    node.host = node.env.start(&binary()).unwrap();
    let plugin = node.kubelet.wait_for_plugin(DRIVER, START_TIMEOUT).await.unwrap();

    let claim = Claim::new("default", "counted", &uid(5)).device(DRIVER, POOL, "gpu-0", "gpu");
    node.claims.put(std::slice::from_ref(&claim)).unwrap();
    assert_eq!(plugin.prepare(&[claim.reference()]).await.unwrap()[&uid(5)].error, "");

    let text = http_get(port, "/metrics").await.unwrap();
    for expected in [
        "dra_host_claim_operations_total{driver=\"example.dra.dev\",operation=\"prepare\",result=\"ok\"} 1",
        "dra_host_guest_calls_total{driver=\"example.dra.dev\",export=\"prepare\",outcome=\"ok\"} 1",
        "dra_host_prepared_claims{driver=\"example.dra.dev\"} 1",
        "dra_host_kubelet_registered{driver=\"example.dra.dev\"} 1",
        "dra_host_guest_info{driver=\"example.dra.dev\",guest=\"example-driver\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // The example guest is built against dra:driver@0.2.0.
    let info = text.lines().find(|l| l.starts_with("dra_host_guest_info{")).unwrap();
    assert!(info.contains("contract=\"0.2.0\""), "{info}");
    // Logs carry the claim UID on the prepare span.
    assert!(node.host.log().contains(&uid(5)), "{}", node.host.log());
}
