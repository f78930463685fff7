//! The API-server half through the real binary and the test API server:
//! claims fetched by the host, status.devices written and removed,
//! ResourceSlices published, kept in sync, restored, and not rewritten.

use crate::common::*;
use dra_test_support::apiserver::{TestApiServer, Writes};
use dra_test_support::claims::{Claim, uid};
use dra_test_support::host::{DriverSpec, HostEnv};
use serde_json::{Value, json};
use std::time::Duration;

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

/// Wait until the publisher has listed at least `n` times, then a little for
/// any writes that sync makes.
async fn synced_at_least(api: &TestApiServer, node: &Node, n: usize) -> Writes {
    eventually("a slice sync", node, || (api.writes().slice_lists >= n).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.writes()
}

fn ours(slices: &[Value]) -> Vec<&Value> {
    slices.iter().filter(|s| s["spec"]["driver"] == DRIVER).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_300_devices_in_3_slices_and_restarts_without_writing() {
    let (api, mut node) = example_node(300).await;
    let slices = eventually("3 slices", &node, || {
        let s = api.slices();
        (ours(&s).len() == 3).then_some(s)
    })
    .await;
    let mut sizes: Vec<usize> = slices
        .iter()
        .map(|s| s["spec"]["devices"].as_array().unwrap().len())
        .collect();
    sizes.sort();
    assert_eq!(sizes, [44, 128, 128]);
    for s in &slices {
        assert_eq!(s["spec"]["nodeName"], "test-node");
        assert_eq!(s["spec"]["pool"]["name"], "test-node");
        assert_eq!(s["spec"]["pool"]["generation"], 1);
        assert_eq!(s["spec"]["pool"]["resourceSliceCount"], 3);
        let owner = &s["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["uid"].as_str(),
                owner["controller"].as_bool()
            ),
            (Some("Node"), Some(NODE_UID), Some(true))
        );
        let name = s["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("0000") && name.contains(&format!("-{DRIVER}-test-node-")),
            "{name}"
        );
        let d = &s["spec"]["devices"][0];
        assert_eq!(d["capacity"]["memory"]["value"], "80Gi");
        assert!(d["attributes"]["driverVersion"]["version"].is_string());
    }
    let after_start = synced_at_least(&api, &node, 2).await;
    assert_eq!(
        (
            after_start.slice_creates,
            after_start.slice_updates,
            after_start.slice_deletes
        ),
        (3, 0, 0)
    );

    // A restart with the same inventory lists, finds everything in place, writes nothing.
    node.host.terminate(Duration::from_secs(20)).unwrap();
    let lists = api.writes().slice_lists;
    node.restart().await;
    let after_restart = synced_at_least(&api, &node, lists + 1).await;
    assert_eq!(
        after_restart.slices(),
        after_start.slices(),
        "restart must not write: {after_restart:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_slice_is_restored() {
    let (api, node) = example_node(4).await;
    let first = eventually("a slice", &node, || ours(&api.slices()).first().map(|s| (*s).clone())).await;
    synced_at_least(&api, &node, 2).await;
    let name = first["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(api.delete_slice(&name), "as the kubelet does after losing the plugin");
    let restored = eventually("the slice restored", &node, || {
        let s = api.slices();
        ours(&s).first().map(|s| (*s).clone())
    })
    .await;
    assert_ne!(restored["metadata"]["name"], first["metadata"]["name"]);
    assert_eq!(restored["spec"]["devices"], first["spec"]["devices"]);
    assert_eq!(api.writes().slice_creates, 2);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_gpus_are_tainted_in_their_slice_and_only_that_slice_changes() {
    use dra_test_support::gpus::{self, Injector};
    const GPU: &str = "gpu.dra.dev";
    let api = TestApiServer::start().await.unwrap();
    api.put_node("test-node", NODE_UID);
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    env.use_api_server(&api).unwrap();
    let gpus_file = env.dir().join("gpus.json");
    gpus::write_gpus_file(&gpus_file, 4).unwrap();
    let events = env.dir().join("events.sock");
    let spec = DriverSpec::new(GPU, &guest("gpu_driver.wasm"))
        .extra("grants = [\"nvml\"]\ntaint_unhealthy = true\n")
        .config("cdi = { mode = \"base-spec\", kind = \"nvidia.com/gpu\" }");
    let tables = format!("[nvml.simulated]\ngpus = {gpus_file:?}\nevents_socket = {events:?}\n");
    let node = Node::start_in(env, vec![spec], "", &tables).await;
    let gpu_slices = |api: &TestApiServer| -> Vec<Value> {
        api.slices()
            .into_iter()
            .filter(|s| s["spec"]["driver"] == GPU)
            .collect()
    };
    eventually("the GPU slice", &node, || (gpu_slices(&api).len() == 1).then_some(())).await;
    synced_at_least(&api, &node, 2).await;

    let mut inject = Injector::connect(&events).await.unwrap();
    inject.xid(2, 79).await.unwrap();
    let slice = eventually("the taint", &node, || {
        let s = gpu_slices(&api).pop()?;
        s["spec"]["devices"][2]["taints"].is_array().then_some(s)
    })
    .await;
    let taint = &slice["spec"]["devices"][2]["taints"][0];
    assert_eq!(taint["key"], "gpu.dra.dev/unhealthy");
    assert_eq!(taint["effect"], "NoSchedule");
    assert!(
        slice["spec"]["devices"][1]["taints"].is_null(),
        "healthy GPUs stay untainted"
    );
    assert_eq!(
        slice["spec"]["pool"]["generation"], 1,
        "one changed slice keeps the generation"
    );
    let w = api.writes();
    assert_eq!((w.slice_creates, w.slice_updates, w.slice_deletes), (1, 1, 0));
}
