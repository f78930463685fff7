//! The claim half of the API side through the real binary. Claims here are
//! allocated by hand on the real control plane (tests/k8s): a device of a
//! driver no host publishes, which the scheduler could not allocate. The
//! scheduler's own allocations are in tests/cluster/.
//!
//! One test keeps the stand-in API server (`tests/src/apiserver.rs`): the
//! injected 503, 429 and 409 answers, faults the real API server cannot be
//! made to produce on cue.
//!
//! The tonic test kubelet calls the host here, not the kubelet's own code: the
//! claims are allocated by hand and reserved for no Pod (the DRA manager refuses
//! to prepare a claim not reserved for the Pod it prepares), and the stand-in API
//! server's faults leave no real API server to read Pods from.

use crate::common::*;
use dra_test_support::apiserver::TestApiServer;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::host::{DriverSpec, HostEnv};
use serde_json::{Value, json};

const FAULTY: &str = "faulty.dra.dev";
const OTHER: &str = "other.example.com";

/// The requests the host on `node` sent for the status of claim `name`.
fn status_writes(cp: &dra_test_support::controlplane::ControlPlane, node: &str, name: &str) -> usize {
    cp.requests_of(node)
        .iter()
        .filter(|r| r.is_write() && r.resource == "resourceclaims" && r.subresource == "status" && r.name == name)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_two_drivers_gets_only_this_drivers_devices_prepared() {
    let cp = control_plane().await;
    let n = cluster_node(cp, "e2e-two-drivers", |_| {
        let spec = DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 4");
        (vec![spec], String::new())
    })
    .await;
    let claim = Claim::new("e2e-api", "two-drivers", "")
        .device(DRIVER, &n.name, "gpu-1", "gpu")
        .device(OTHER, "other-pool", "nic-0", "nic");
    let claim = cp.put_claim(&claim, &n.name).unwrap();
    let answer = n.node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&claim.uid].error, "");
    let devices: Vec<_> = answer[&claim.uid]
        .devices
        .iter()
        .map(|d| d.device_name.as_str())
        .collect();
    assert_eq!(devices, ["gpu-1"], "only this driver's device");
    assert_eq!(
        status_writes(cp, &n.name, "two-drivers"),
        0,
        "the example guest reports no status: {:?}",
        cp.requests_of(&n.name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_devices_written_beside_other_drivers_and_removed() {
    let cp = control_plane().await;
    cp.allow_drivers(&[FAULTY]).unwrap();
    let n = cluster_node(cp, "e2e-status", |_| {
        let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 2");
        (vec![spec], String::new())
    })
    .await;
    let ns = "e2e-api";
    let claim = Claim::new(ns, "status-claim", "")
        .device(FAULTY, "faulty", "dev-0", "dev")
        .device(FAULTY, "faulty", "dev-1", "dev")
        .device(OTHER, "p", "nic-0", "nic");
    let claim = cp.put_claim(&claim, &n.name).unwrap();
    // The other driver's host has written its entry already.
    let other = json!({"status": {"devices": [{ "driver": OTHER, "pool": "p", "device": "nic-0",
        "conditions": [{ "type": "Ready", "status": "True", "reason": "Other", "message": "",
                         "lastTransitionTime": "2026-11-22T00:00:00Z" }] }]}});
    cp.kubectl(&[
        "patch",
        "resourceclaim",
        "status-claim",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &other.to_string(),
    ])
    .unwrap();

    let answer = n.node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&claim.uid].error, "");
    let stored = cp.claim(ns, "status-claim").unwrap();
    let entries = stored["status"]["devices"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{stored}");
    assert_eq!(entries[0]["driver"], OTHER, "other drivers' entries untouched");
    assert_eq!(entries[0]["conditions"][0]["reason"], "Other");
    let ours: Vec<&Value> = entries.iter().filter(|e| e["driver"] == FAULTY).collect();
    assert_eq!(ours[0]["device"], "dev-0");
    assert_eq!(ours[0]["conditions"][0]["type"], "Ready");
    assert_eq!(ours[0]["conditions"][0]["reason"], "Prepared");
    assert_eq!(ours[1]["networkData"]["interfaceName"], "net1");
    assert_eq!(ours[1]["networkData"]["ips"], json!(["192.0.2.11/24"]));
    assert_eq!(ours[1]["networkData"]["hardwareAddress"], "02:00:00:00:00:01");
    assert_eq!(ours[1]["data"], json!({ "slot": 1 }));
    assert_eq!(status_writes(cp, &n.name, "status-claim"), 1);

    // A repeated prepare finds the status in place: no write.
    let again = n.node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(again[&claim.uid].error, "");
    assert_eq!(status_writes(cp, &n.name, "status-claim"), 1);

    let errors = n.node.plugin.unprepare(&[claim.reference()]).await.unwrap();
    assert_eq!(errors[&claim.uid], "");
    let stored = cp.claim(ns, "status-claim").unwrap();
    let entries = stored["status"]["devices"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{stored}");
    assert_eq!(entries[0]["driver"], OTHER);
}

/// Faults only the stand-in can make: 503 and 429 on the claim's GET, and a
/// 409 on its status update (another writer got there first), each retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_api_errors_and_conflicts_are_retried() {
    let api = TestApiServer::start().await.unwrap();
    api.put_node("test-node", "6a1b2c3d-0000-4000-8000-00000000a0de");
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    env.use_api_server(&api).unwrap();
    let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 2");
    let node = Node::start_in(env, vec![spec], "", "").await;
    let claim = Claim::new("default", "status-flaky", &uid(9)).device(FAULTY, "faulty", "dev-0", "dev");
    api.put_claim(claim.to_json());
    api.inject("/resourceclaims/status-flaky", "GET", 503, 1);
    api.inject("/resourceclaims/status-flaky", "GET", 429, 1);
    api.inject("/resourceclaims/status-flaky/status", "PUT", 409, 1);
    let answer = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&uid(9)].error, "");
    assert_eq!(api.pending_faults(), 0, "every fault happened and was retried");
    let stored = api.claim("default", "status-flaky").unwrap();
    assert_eq!(stored["status"]["devices"][0]["device"], "dev-0", "{stored}");
}
