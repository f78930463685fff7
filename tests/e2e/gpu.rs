//! The GPU guest on simulated NVML: inventory, whole-GPU and shared
//! prepare, opaque config errors, health events on the kubelet's stream,
//! and MIG partitions (counters in the inventory, MIG devices made at
//! prepare and destroyed at unprepare).
//!
//! The tonic test kubelet calls the host: shares chosen by the test on a claims
//! file, and several health streams at once (through v1 and v1alpha1) read
//! message by message and ended by the host; the kubelet's own code opens one
//! stream (its health cache is checked in tests/cluster/real_kubelet.rs).

use crate::common::*;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::gpus::{self, Injector};
use dra_test_support::host::{DriverSpec, HostEnv};
use dra_test_support::kubelet::HealthService;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const GPU: &str = "gpu.dra.dev";
const HEALTHY: i32 = 1;
const UNHEALTHY: i32 = 2;

struct GpuNode {
    node: Node,
    events: PathBuf,
}

/// A node with `n` simulated H100s shared by memory, the driver's files
/// mounted from a fake driver root.
async fn gpu_node(n: u32) -> GpuNode {
    let env = HostEnv::new(&cache_dir()).unwrap();
    let sim = gpus::Simulated::new(env.dir(), n).unwrap();
    let spec = DriverSpec::new(GPU, &guest("gpu_driver.wasm"))
        .extra(&sim.driver_toml)
        .config("sharing = { defaultMemory = \"5Gi\", memoryStep = \"5Gi\" }");
    let node = Node::start_in(env, vec![spec], "", &sim.tables).await;
    GpuNode {
        node,
        events: sim.events,
    }
}

/// A node with `n` simulated H100s, the GPUs file keys `extra(i)` adds to
/// each (MIG mode, NUMA node, a busy GPU), GPUs not shared.
async fn gpu_node_with(n: u32, extra: impl Fn(u32) -> Value) -> GpuNode {
    let env = HostEnv::new(&cache_dir()).unwrap();
    let sim = gpus::Simulated::with(env.dir(), n, extra).unwrap();
    let spec = DriverSpec::new(GPU, &guest("gpu_driver.wasm")).extra(&sim.driver_toml);
    let node = Node::start_in(env, vec![spec], "", &sim.tables).await;
    GpuNode {
        node,
        events: sim.events,
    }
}

fn spec_of(node: &Node, uid: &str) -> Value {
    let path = node.env.cdi_dir.join(format!("k8s.{GPU}-device_{uid}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_has_nvidia_attributes_and_shareable_memory() {
    let g = gpu_node(8).await;
    let out = std::process::Command::new(binary())
        .args(["guest", "validate", "--config"])
        .arg(&g.node.env.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pool = &v[GPU]["pools"][0];
    assert_eq!(pool["name"], "test-node");
    let devices = pool["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 8);
    let d = &devices[3];
    assert_eq!(d["name"], "gpu-3");
    let a = &d["attributes"];
    assert_eq!(a["uuid"]["string"], gpus::uuid(3));
    assert_eq!(a["productName"]["string"], "NVIDIA H100 80GB HBM3");
    assert_eq!(a["architecture"]["string"], "Hopper");
    assert_eq!(a["cudaComputeCapability"]["version"], "9.0.0");
    assert_eq!(a["driverVersion"]["version"], "580.159.4");
    assert_eq!(a["cudaDriverVersion"]["version"], "13.0.0");
    assert_eq!(a["pciBusID"]["string"], "00000000:1C:00.0");
    assert_eq!(a["index"]["int"], 3);
    assert_eq!(a["minor"]["int"], 3);
    assert_eq!(a["type"]["string"], "gpu");
    assert_eq!(d["allowMultipleAllocations"], true);
    let memory = &d["capacity"]["memory"];
    assert_eq!(memory["value"], "81559Mi");
    assert_eq!(memory["requestPolicy"]["default"], "5Gi");
    assert_eq!(memory["requestPolicy"]["validRange"]["min"], "5Gi");
    assert_eq!(memory["requestPolicy"]["validRange"]["step"], "5Gi");
    assert_eq!(
        memory["requestPolicy"]["validRange"]["max"], "75Gi",
        "min + whole steps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_gpu_and_two_shares_prepare_separately() {
    let mut g = gpu_node(2).await;
    let whole = Claim::new("ml", "whole", &uid(1)).device(GPU, "test-node", "gpu-0", "gpu");
    let share_a = Claim::new("ml", "share-a", &uid(2)).shared_device(
        GPU,
        "test-node",
        "gpu-1",
        "gpu",
        &uid(900),
        &[("memory", "10Gi")],
    );
    let share_b = Claim::new("ml", "share-b", &uid(3)).shared_device(
        GPU,
        "test-node",
        "gpu-1",
        "gpu",
        &uid(901),
        &[("memory", "5Gi")],
    );
    let typo = Claim::new("ml", "typo", &uid(4))
        .device(GPU, "test-node", "gpu-0", "gpu")
        .opaque_config("FromClaim", GPU, &[], serde_json::json!({"memoryLimt": "5Gi"}));
    g.node
        .claims
        .put(&[whole.clone(), share_a.clone(), share_b.clone(), typo.clone()])
        .unwrap();

    let answer = g
        .node
        .plugin
        .prepare(&[
            whole.reference(),
            share_a.reference(),
            share_b.reference(),
            typo.reference(),
        ])
        .await
        .unwrap();
    assert_eq!(answer[&uid(1)].error, "");
    assert_eq!(answer[&uid(2)].error, "");
    assert_eq!(answer[&uid(3)].error, "");
    assert!(
        answer[&uid(4)].error.contains("memoryLimt"),
        "{}",
        answer[&uid(4)].error
    );

    // Whole GPU: its device node, the control nodes, the driver's files.
    let spec = spec_of(&g.node, &uid(1));
    let edits = &spec["devices"][0]["containerEdits"];
    let nodes: Vec<&str> = edits["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        [
            "/dev/nvidia0",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );
    // The type and numbers the host read from the nodes (the guest gives none).
    let numbers: Vec<(&str, i64, i64)> = edits["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap(),
                n["major"].as_i64().unwrap(),
                n["minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(numbers, [("c", 195, 0), ("c", 195, 255), ("c", 510, 0), ("c", 510, 1)]);
    let mounts: Vec<&str> = edits["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["containerPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/usr/lib/x86_64-linux-gnu/libcuda.so.1"), "{mounts:?}");
    assert!(mounts.contains(&"/usr/bin/nvidia-smi"), "{mounts:?}");

    // Two shares of one GPU: two CDI devices, each with its own memory limit.
    let a = &answer[&uid(2)].devices[0];
    let b = &answer[&uid(3)].devices[0];
    assert_eq!(a.share_id.as_deref(), Some(uid(900).as_str()));
    assert_ne!(a.cdi_device_ids, b.cdi_device_ids);
    assert!(
        a.cdi_device_ids[0].ends_with(&format!("_gpu-1_{}", uid(900))),
        "{:?}",
        a.cdi_device_ids
    );
    let env_a = spec_of(&g.node, &uid(2))["devices"][0]["containerEdits"]["env"].clone();
    assert!(
        env_a.as_array().unwrap().contains(&Value::from(format!(
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={}=10240M",
            gpus::uuid(1)
        ))),
        "{env_a}"
    );

    // Unpreparing one share leaves the other.
    assert_eq!(
        g.node.plugin.unprepare(&[share_a.reference()]).await.unwrap()[&uid(2)],
        ""
    );
    assert!(
        !g.node
            .env
            .cdi_dir
            .join(format!("k8s.{GPU}-device_{}.json", uid(2)))
            .exists()
    );
    assert_eq!(spec_of(&g.node, &uid(3))["devices"].as_array().unwrap().len(), 1);
}

fn health_of(list: &[dra_proto::health::v1::DeviceHealth], device: &str) -> (i32, String) {
    let d = list
        .iter()
        .find(|d| d.device.as_ref().is_some_and(|i| i.device_name == device))
        .unwrap_or_else(|| panic!("{device} missing from {list:?}"));
    (d.health, d.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xid_events_reach_every_health_stream() {
    let g = gpu_node(8).await;
    assert_eq!(
        g.node.plugin.health,
        Some(HealthService::V1),
        "v1 health is advertised and preferred"
    );
    let mut v1 = g.node.plugin.watch_health().await.unwrap();
    let mut alpha = {
        let mut p = g.node.plugin.clone();
        p.health = Some(HealthService::V1alpha1);
        p.watch_health().await.unwrap()
    };
    for stream in [&mut v1, &mut alpha] {
        let first = stream.next(Duration::from_secs(5)).await.expect("full list on connect");
        assert_eq!(first.len(), 8);
        assert!(
            first
                .iter()
                .all(|d| d.health == HEALTHY && d.health_check_timeout_seconds == 60 && d.last_updated_time > 0)
        );
    }

    let mut inject = Injector::connect(&g.events).await.unwrap();
    assert_eq!(
        inject.xid(2, 79).await.unwrap(),
        1,
        "the GPU driver subscribed to GPU 2"
    );
    for stream in [&mut v1, &mut alpha] {
        let list = stream.next(Duration::from_secs(5)).await.expect("change pushed");
        assert_eq!(
            health_of(&list, "gpu-2"),
            (UNHEALTHY, "Xid 79: GPU has fallen off the bus".into())
        );
        assert_eq!(health_of(&list, "gpu-1").0, HEALTHY);
    }

    // Xid 13 is an application error: no change, so the next message is the
    // one for the following event, with GPU 3 still healthy.
    inject.xid(3, 13).await.unwrap();
    inject.inject(&gpus::uuid(4), "double-bit-ecc-error", 0).await.unwrap();
    let list = v1.next(Duration::from_secs(5)).await.expect("change pushed");
    assert_eq!(health_of(&list, "gpu-3").0, HEALTHY);
    assert_eq!(health_of(&list, "gpu-4").0, UNHEALTHY);

    // A stream opened later starts from the current state.
    let mut late = g.node.plugin.watch_health().await.unwrap();
    let list = late.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(health_of(&list, "gpu-2").0, UNHEALTHY);
    assert_eq!(health_of(&list, "gpu-4").0, UNHEALTHY);
    assert_eq!(list.iter().filter(|d| d.health == HEALTHY).count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_streams_end_when_the_host_stops() {
    let mut g = gpu_node(1).await;
    let mut stream = g.node.plugin.watch_health().await.unwrap();
    assert!(stream.next(Duration::from_secs(5)).await.is_some());
    let status = g.node.host.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success());
    assert!(
        stream.ended(Duration::from_secs(5)).await,
        "the stream ends with the host"
    );
    let log = g.node.host.log();
    assert!(
        !log.contains("did not close within"),
        "streams must not hold up shutdown:\n{log}"
    );
}

/// Base-spec mode (the worked NVIDIA example of docs/operations.md): the
/// guest references the GPU in the operator's `nvidia.com/gpu` CDI spec by
/// its uuid, which the policy checks against the allocated GPU's `uuid`
/// attribute; no device nodes or mounts of the guest's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_spec_mode_references_the_allocated_gpu_by_uuid() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    let gpus_file = env.dir().join("gpus.json");
    gpus::write_gpus_file(&gpus_file, 2).unwrap();
    let events = env.dir().join("nvml-events.sock");
    let tables = format!("[nvml.simulated]\ngpus = {gpus_file:?}\nevents_socket = {events:?}\n");
    let spec = DriverSpec::new(GPU, &guest("gpu_driver.wasm"))
        .extra(
            "grants = [\"nvml\"]\n[drivers.policy]\n\
             cdi_devices = [{ kind = \"nvidia.com/gpu\", name_attribute = \"uuid\" }]\n",
        )
        .config("cdi = { mode = \"base-spec\", kind = \"nvidia.com/gpu\" }");
    let mut node = Node::start_in(env, vec![spec], "", &tables).await;
    let claim = Claim::new("ml", "by-uuid", &uid(1)).device(GPU, "test-node", "gpu-1", "gpu");
    node.claims.put(std::slice::from_ref(&claim)).unwrap();
    let answer = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    let a = &answer[&uid(1)];
    assert_eq!(a.error, "");
    assert!(
        a.devices[0]
            .cdi_device_ids
            .contains(&format!("nvidia.com/gpu={}", gpus::uuid(1))),
        "{:?}",
        a.devices[0].cdi_device_ids
    );
    let edits = &spec_of(&node, &uid(1))["devices"][0]["containerEdits"];
    assert!(edits["deviceNodes"].is_null() && edits["mounts"].is_null(), "{edits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_guest_without_the_nvml_grant_is_refused_at_load() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    env.write_config(&[DriverSpec::new(GPU, &guest("gpu_driver.wasm"))], "")
        .unwrap();
    let out = std::process::Command::new(binary())
        .args(["guest", "validate", "--config"])
        .arg(&env.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("imports dra:driver/nvml@0.2.0"), "{err}");
    assert!(err.contains("add \"nvml\" to the driver's grants"), "{err}");
}

/// Real NVML backend: on a machine without the NVIDIA driver (CI) the GPU
/// driver fails to start with a clear reason while the other driver is
/// served; on a GPU machine it registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_nvml_backend_without_a_driver_fails_only_the_gpu_driver() {
    let has_nvidia = std::path::Path::new("/dev/nvidiactl").exists();
    let drivers = vec![
        DriverSpec::new(DRIVER, &guest("example_driver.wasm")),
        DriverSpec::new(GPU, &guest("gpu_driver.wasm")).extra("grants = [\"nvml\"]"),
    ];
    let node = Node::start(drivers, "").await;
    let gpu_registered = node.kubelet.wait_for_plugin(GPU, Duration::from_secs(5)).await.is_ok();
    assert_eq!(gpu_registered, has_nvidia, "{}", node.host.log());
    if !has_nvidia {
        let log = node.host.log();
        assert!(log.contains("NVML not available on this node"), "{log}");
        assert!(log.contains("driver failed to start"), "{log}");
        // The example driver is served all the same.
        assert!(node.plugin.prepare(&[]).await.is_ok());
    }
}

/// `guest validate` of a node whose GPU 0 has MIG mode on: GPU 0's counter
/// set, its partitions consuming the memory slices of their placement, and
/// the NUMA node the simulated NVML reports as the standard attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_inventory_has_counters_and_a_device_per_placement() {
    let g = gpu_node_with(2, |i| serde_json::json!({ "migEnabled": i == 0, "numaNode": i })).await;
    let out = std::process::Command::new(binary())
        .args(["guest", "validate", "--config"])
        .arg(&g.node.env.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pool = &v[GPU]["pools"][0];
    let sets = pool["sharedCounters"].as_array().unwrap();
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0]["name"], "gpu-0");
    let counters = sets[0]["counters"].as_object().unwrap();
    assert_eq!(counters.len(), 9, "8 memory slices and the compute slices");
    assert_eq!(counters["memory-slice-7"]["value"], "1");
    assert_eq!(counters["compute-slices"]["value"], "7");
    let devices = pool["devices"].as_array().unwrap();
    let names: Vec<&str> = devices.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 1 + 18 + 1, "{names:?}");
    let dev = |name: &str| devices.iter().find(|d| d["name"] == name).unwrap();
    let part = dev("gpu-0-mig-2g20gb-4");
    assert_eq!(part["attributes"]["profile"]["string"], "2g.20gb");
    assert_eq!(part["attributes"]["parentUUID"]["string"], gpus::uuid(0));
    assert_eq!(part["attributes"]["resource.kubernetes.io/numaNode"]["int"], 0);
    let used = &part["consumesCounters"][0];
    assert_eq!(used["counterSet"], "gpu-0");
    let used: Vec<&String> = used["counters"].as_object().unwrap().keys().collect();
    assert_eq!(used, ["compute-slices", "memory-slice-4", "memory-slice-5"]);
    assert_eq!(
        dev("gpu-0")["consumesCounters"][0]["counters"]
            .as_object()
            .unwrap()
            .len(),
        9,
        "the full GPU takes every counter"
    );
    assert_eq!(dev("gpu-1")["attributes"]["resource.kubernetes.io/numaNode"]["int"], 1);
    assert!(dev("gpu-1")["consumesCounters"].is_null());
}

fn device_nodes(edits: &Value) -> Vec<(String, i64)> {
    edits["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["path"].as_str().unwrap().to_owned(), n["minor"].as_i64().unwrap()))
        .collect()
}

/// Preparing a partition makes its MIG device on the (simulated) GPU and
/// hands the container its capability nodes; while it exists, a partition
/// overlapping it cannot be made (the error names the device); unprepare
/// destroys it, after which the overlapping one can be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_partition_prepare_makes_and_unprepare_destroys_the_instance() {
    let mut g = gpu_node_with(1, |_| serde_json::json!({ "migEnabled": true })).await;
    let big = Claim::new("ml", "big", &uid(1)).device(GPU, "test-node", "gpu-0-mig-3g40gb-0", "gpu");
    let small = Claim::new("ml", "small", &uid(2)).device(GPU, "test-node", "gpu-0-mig-1g10gb-2", "gpu");
    g.node.claims.put(&[big.clone(), small.clone()]).unwrap();

    let answer = g.node.plugin.prepare(&[big.reference()]).await.unwrap();
    assert_eq!(answer[&uid(1)].error, "", "{}", g.node.host.log());
    let edits = &spec_of(&g.node, &uid(1))["devices"][0]["containerEdits"];
    // GPU instance 1 (the first made), compute instance 0.
    assert_eq!(
        device_nodes(edits),
        [
            ("/dev/nvidia0".to_owned(), 0),
            ("/dev/nvidiactl".to_owned(), 255),
            ("/dev/nvidia-uvm".to_owned(), 0),
            ("/dev/nvidia-uvm-tools".to_owned(), 1),
            ("/dev/nvidia-caps/nvidia-cap12".to_owned(), 12),
            ("/dev/nvidia-caps/nvidia-cap13".to_owned(), 13),
        ]
    );
    let env: Vec<&str> = edits["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.iter().any(|e| e.starts_with("DRA_GPU_0_MIG_0_UUID=MIG-")),
        "{env:?}"
    );
    assert!(env.contains(&"DRA_GPU_0_MIG_0_PROFILE=3g.40gb"), "{env:?}");

    // The 3g.40gb at slices 0-3 is there: a 1g.10gb at slice 2 cannot be made.
    let answer = g.node.plugin.prepare(&[small.reference()]).await.unwrap();
    let error = &answer[&uid(2)].error;
    assert!(error.contains("gpu-0-mig-1g10gb-2"), "{error}");
    assert!(error.contains("in use"), "{error}");

    assert_eq!(g.node.plugin.unprepare(&[big.reference()]).await.unwrap()[&uid(1)], "");
    assert!(g.node.host.log().contains("simulated MIG device destroyed"));
    let answer = g.node.plugin.prepare(&[small.reference()]).await.unwrap();
    assert_eq!(answer[&uid(2)].error, "", "slices 0-3 are free again");
    assert_eq!(
        g.node.plugin.unprepare(&[small.reference()]).await.unwrap()[&uid(2)],
        ""
    );
}

/// A GPU the simulated NVML marks busy: prepare fails with a clear reason
/// naming the device, and nothing is left prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_creation_on_a_busy_gpu_fails_prepare_naming_the_device() {
    let mut g = gpu_node_with(1, |_| serde_json::json!({ "migEnabled": true, "migBusy": true })).await;
    let claim = Claim::new("ml", "mig", &uid(1)).device(GPU, "test-node", "gpu-0-mig-7g80gb-0", "gpu");
    g.node.claims.put(std::slice::from_ref(&claim)).unwrap();
    let answer = g.node.plugin.prepare(&[claim.reference()]).await.unwrap();
    let error = &answer[&uid(1)].error;
    assert!(error.contains("\"gpu-0-mig-7g80gb-0\" (MIG 7g.80gb)"), "{error}");
    assert!(error.contains("the GPU is busy"), "{error}");
    assert!(
        !g.node
            .env
            .cdi_dir
            .join(format!("k8s.{GPU}-device_{}.json", uid(1)))
            .exists()
    );
}
