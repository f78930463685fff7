//! The API-server half through the real binary and the stand-in API server
//! (`tests/src/apiserver.rs`). Publishing, restoring, restarting without
//! writing, tainting and claim checks run against the real control plane
//! (`tests/cluster/`). What is left here: injected failures (the retry
//! test, which needs the stand-in), and two tests not yet moved to the real
//! control plane, whose claims are allocated by hand with a device of a
//! second driver (the real scheduler would need that driver's slices).

use crate::common::*;
use dra_test_support::apiserver::TestApiServer;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::host::{DriverSpec, HostEnv};
use serde_json::{Value, json};

const NODE_UID: &str = "6a1b2c3d-0000-4000-8000-00000000a0de";
const FAULTY: &str = "faulty.dra.dev";

async fn api_node(drivers: Vec<DriverSpec>) -> (TestApiServer, Node) {
    let api = TestApiServer::start().await.unwrap();
    api.put_node("test-node", NODE_UID);
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    env.use_api_server(&api).unwrap();
    let node = Node::start_in(env, drivers, "", "").await;
    (api, node)
}

async fn example_node(devices: u32) -> (TestApiServer, Node) {
    api_node(vec![
        DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config(&format!("devices = {devices}")),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepares_real_claim_objects_and_checks_them() {
    let (api, node) = example_node(4).await;
    let two_drivers = Claim::new("default", "two-drivers", &uid(1))
        .device(DRIVER, POOL, "gpu-1", "gpu")
        .device("other.example.com", "other-pool", "nic-0", "nic");
    let unallocated = Claim::new("default", "unallocated", &uid(2)).unallocated();
    let replaced = Claim::new("default", "replaced", &uid(3)).device(DRIVER, POOL, "gpu-2", "gpu");
    for c in [&two_drivers, &unallocated, &replaced] {
        api.put_claim(c.to_json());
    }
    let mut stale = replaced.reference();
    stale.uid = uid(30);
    let missing = Claim::new("default", "missing", &uid(4)).reference();
    let answer = node
        .plugin
        .prepare(&[two_drivers.reference(), unallocated.reference(), stale, missing])
        .await
        .unwrap();
    assert_eq!(answer[&uid(1)].error, "");
    let devices: Vec<_> = answer[&uid(1)].devices.iter().map(|d| d.device_name.as_str()).collect();
    assert_eq!(devices, ["gpu-1"], "only this driver's device");
    assert!(
        answer[&uid(2)].error.contains("not allocated"),
        "{}",
        answer[&uid(2)].error
    );
    assert!(
        answer[&uid(30)].error.contains("got replaced"),
        "{}",
        answer[&uid(30)].error
    );
    assert!(answer[&uid(4)].error.contains("not found"), "{}", answer[&uid(4)].error);
    assert_eq!(
        api.writes().claim_status_updates,
        0,
        "the example guest reports no status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_devices_written_beside_other_drivers_and_removed() {
    let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 2");
    let (api, node) = api_node(vec![spec]).await;
    let claim = Claim::new("default", "status-claim", &uid(7))
        .device(FAULTY, "faulty", "dev-0", "dev")
        .device(FAULTY, "faulty", "dev-1", "dev")
        .device("other.example.com", "p", "nic-0", "nic");
    let mut object = claim.to_json();
    object["status"]["devices"] = json!([{ "driver": "other.example.com", "pool": "p", "device": "nic-0",
        "conditions": [{ "type": "Ready", "status": "True", "reason": "Other", "message": "",
                         "lastTransitionTime": "2026-11-22T00:00:00Z" }] }]);
    api.put_claim(object);
    // The first status update meets a conflict (another writer got there first).
    api.inject("/resourceclaims/status-claim/status", "PUT", 409, 1);

    let answer = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&uid(7)].error, "");
    assert_eq!(api.pending_faults(), 0, "the conflict happened and was retried");
    let stored = api.claim("default", "status-claim").unwrap();
    let entries = stored["status"]["devices"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{stored}");
    assert_eq!(
        entries[0]["driver"], "other.example.com",
        "other drivers' entries untouched"
    );
    let ours: Vec<&Value> = entries.iter().filter(|e| e["driver"] == FAULTY).collect();
    assert_eq!(ours[0]["device"], "dev-0");
    assert_eq!(ours[0]["conditions"][0]["type"], "Ready");
    assert_eq!(ours[0]["conditions"][0]["reason"], "Prepared");
    assert_eq!(ours[1]["networkData"]["interfaceName"], "net1");
    assert_eq!(ours[1]["networkData"]["ips"], json!(["192.0.2.11/24"]));
    assert_eq!(ours[1]["networkData"]["hardwareAddress"], "02:00:00:00:00:01");
    assert_eq!(ours[1]["data"], json!({ "slot": 1 }));
    assert_eq!(api.writes().claim_status_updates, 1);

    // A repeated prepare finds the status in place: no write.
    node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(api.writes().claim_status_updates, 1);

    let errors = node.plugin.unprepare(&[claim.reference()]).await.unwrap();
    assert_eq!(errors[&uid(7)], "");
    let stored = api.claim("default", "status-claim").unwrap();
    let entries = stored["status"]["devices"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["driver"], "other.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_api_errors_are_retried() {
    let (api, node) = example_node(2).await;
    let claim = Claim::new("default", "flaky", &uid(9)).device(DRIVER, POOL, "gpu-0", "gpu");
    api.put_claim(claim.to_json());
    api.inject("/resourceclaims/flaky", "GET", 503, 1);
    api.inject("/resourceclaims/flaky", "GET", 429, 1);
    let answer = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&uid(9)].error, "");
    assert_eq!(api.pending_faults(), 0);
}
