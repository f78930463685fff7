//! Registration with the kubelet, version pick, liveness, clean shutdown.
//!
//! The tonic test kubelet is the kubelet here: one that knows only v1beta1 (a
//! 1.32/1.33 kubelet; the 1.37 code always knows v1) and its event log, counted
//! exactly. Registration by the kubelet's own plugin watcher, the rolling pair
//! included, is checked in tests/cluster/real_kubelet.rs.

use crate::common::*;
use dra_test_support::claims::{Claim, ClaimsFile, uid};
use dra_test_support::host::{DriverSpec, HostEnv};
use dra_test_support::kubelet::{Event, Service, TestKubelet};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_v1_first_and_an_absolute_endpoint() {
    registers_with_v1_first(EXAMPLE).await;
}

/// The same with the example guest built against `dra:driver@0.1.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_v1_first_and_an_absolute_endpoint_with_the_0_1_guest() {
    registers_with_v1_first(EXAMPLE_V0_1).await;
}

async fn registers_with_v1_first(build: &str) {
    let node = Node::example_build(build, 2).await;
    assert_eq!(node.plugin.service, Service::V1, "a 1.34+ kubelet picks v1");
    assert_eq!(
        node.plugin.supported_versions,
        [
            "v1.DRAPlugin",
            "v1beta1.DRAPlugin",
            "v1.DRAResourceHealth",
            "v1alpha1.DRAResourceHealth"
        ]
    );
    let expected = node.env.kubelet_root.join("plugins").join(DRIVER).join("dra.sock");
    assert_eq!(node.plugin.endpoint, expected);
    let registered = node
        .kubelet
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Registered { .. }))
        .count();
    assert_eq!(registered, 1, "{:?}", node.kubelet.events());
    // The sockets are private to root (the kubelet).
    use std::os::unix::fs::PermissionsExt;
    for sock in [
        &expected,
        &node
            .env
            .kubelet_root
            .join("plugins_registry")
            .join(format!("{DRIVER}-reg.sock")),
    ] {
        let mode = std::fs::metadata(sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", sock.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_kubelet_uses_v1beta1_end_to_end() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    let mut claims = ClaimsFile::new(&env.claims_path).unwrap();
    env.write_config(&[DriverSpec::new(DRIVER, &guest("example_driver.wasm"))], "")
        .unwrap();
    let kubelet = TestKubelet::start_with_services(&env.kubelet_root, &["v1beta1.DRAPlugin"]).unwrap();
    let host = env.start(&binary()).unwrap();
    let plugin = kubelet
        .wait_for_plugin(DRIVER, START_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.log()));
    assert_eq!(plugin.service, Service::V1beta1);

    let claim = Claim::new("default", "beta", &uid(1)).device(DRIVER, POOL, "gpu-1", "gpu");
    claims.put(std::slice::from_ref(&claim)).unwrap();
    let answer = plugin.prepare(&[claim.reference()]).await.unwrap();
    let entry = &answer[&uid(1)];
    assert_eq!(entry.error, "");
    assert_eq!(entry.devices.len(), 1);
    assert_eq!(entry.devices[0].device_name, "gpu-1");
    assert_eq!(
        entry.devices[0].cdi_device_ids,
        [format!("k8s.{DRIVER}/device={}_gpu-1", uid(1))]
    );
    let errors = plugin.unprepare(&[claim.reference()]).await.unwrap();
    assert_eq!(errors[&uid(1)], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_and_removes_sockets() {
    let mut node = Node::example(1).await;
    let status = node.host.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}\n{}", node.host.log());
    node.kubelet
        .wait_for_deregistration(DRIVER, Duration::from_secs(5))
        .await
        .unwrap();
    let reg = node
        .env
        .kubelet_root
        .join("plugins_registry")
        .join(format!("{DRIVER}-reg.sock"));
    let dra = node.env.kubelet_root.join("plugins").join(DRIVER).join("dra.sock");
    assert!(!reg.exists() && !dra.exists(), "sockets left behind");
    assert!(
        node.kubelet
            .events()
            .contains(&Event::Deregistered { driver: DRIVER.into() })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_sockets_from_a_crash_are_replaced() {
    let mut node = Node::example(1).await;
    node.host.kill9().unwrap();
    let dra = node.env.kubelet_root.join("plugins").join(DRIVER).join("dra.sock");
    assert!(dra.exists(), "kill -9 leaves the socket file behind");
    node.restart().await;
    let answer = node.plugin.prepare(&[]).await.unwrap();
    assert!(answer.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_probe_checks_the_plugin_sockets() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = HostEnv::new(&cache_dir()).unwrap();
    let _claims = ClaimsFile::new(&env.claims_path).unwrap();
    env.write_config(&[DriverSpec::new(DRIVER, &guest("example_driver.wasm"))], "")
        .unwrap();
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(
        &env.config_path,
        format!("healthcheck_addr = \"127.0.0.1:{port}\"\n{config}"),
    )
    .unwrap();
    let kubelet = TestKubelet::start(&env.kubelet_root).unwrap();
    let host = env.start(&binary()).unwrap();
    kubelet
        .wait_for_plugin(DRIVER, START_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.log()));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let status = |s: &str| HealthCheckRequest { service: s.into() };
    let r = client.check(status("liveness")).await.unwrap().into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    assert_eq!(
        client.check(status("")).await.unwrap().into_inner().status,
        ServingStatus::Serving as i32
    );
    assert_eq!(
        client.check(status("other")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // Without its DRA socket the plugin is dead to the kubelet: so is the probe.
    std::fs::remove_file(env.kubelet_root.join("plugins").join(DRIVER).join("dra.sock")).unwrap();
    let r = client.check(status("liveness")).await.unwrap().into_inner();
    assert_eq!(r.status, ServingStatus::NotServing as i32);
}
