//! The container runtime's view of the host's CDI specs.
//!
//! The other tests read the spec files as JSON and compare them with our own
//! reading of the CDI specification. Here the CDI device IDs a prepare
//! answered are handed to `cdi-inject` (tests/peers/go/cdi, built by
//! tests/peers/go/build.sh): `tags.cncf.io/container-device-interface`, the
//! library containerd 2.x and CRI-O resolve CDI IDs with, configured and
//! called as containerd's CRI plugin does, injecting into a minimal OCI
//! runtime spec. Where containerd only logs a spec it refuses, `cdi-inject`
//! fails, and so does a file in the CDI directory the library does not load
//! (a spec it would silently ignore).
//!
//! Each test asserts the resulting OCI spec (environment, device nodes with
//! type and numbers and their device-cgroup rules, mounts, hooks, network
//! devices) twice: against what the guest returned after the policy, as the
//! host recorded it in the claim's spec file ([`assert_applied`]: every edit
//! of every injected device is in the OCI spec), and against values the test
//! knows independently (the simulated GPUs' device numbers, the driver root,
//! the host's binary as the attach hook). The macvlan hook is then run from
//! the OCI spec, as runc runs it, and must move the interface into the pod.
//!
//! The tonic test kubelet prepares here: claims from the host's claims file,
//! on the devices each test names (no API server, no Pods), and specs the library
//! must refuse. The IDs the kubelet's own DRA manager hands the runtime go through
//! the same library in tests/cluster/real_kubelet.rs (example, GPU, macvlan).

use crate::common::*;
use crate::kubelet_clients::{go_programs, skipped};
use dra_test_support::apiserver::TestApiServer;
use dra_test_support::cdi;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::gpus;
use dra_test_support::host::{DriverSpec, HostEnv};
use dra_test_support::netlab::{self, Lab, is_root, parent_config, run_hook};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const GPU: &str = "gpu.dra.dev";
const NET: &str = "net.dra.dev";
const NET_NODE_UID: &str = "6a1b2c3d-0000-4000-8000-0000000000ef";

/// The OCI runtime spec of a container given `ids`, as the CDI library
/// injects them from `cdi_dir`; Err: the library's complaint.
pub(crate) async fn try_runtime_spec(cdi_dir: &Path, ids: &[String]) -> Result<Value, String> {
    let go = go_programs().await;
    let (dir, ids) = (cdi_dir.to_owned(), ids.to_vec());
    tokio::task::spawn_blocking(move || cdi::inject(&go.cdi_inject, &dir, &ids))
        .await
        .unwrap()
}

/// [`try_runtime_spec`], which must succeed; a failure shows `context`.
pub(crate) async fn runtime_spec(cdi_dir: &Path, ids: &[String], context: &str) -> Value {
    try_runtime_spec(cdi_dir, ids).await.unwrap_or_else(|e| {
        panic!(
            "the CDI library did not inject {ids:?} from {}:\n{e}\n{context}",
            cdi_dir.display()
        )
    })
}

/// Every CDI device ID of a prepare answer, in the answer's order.
fn ids_of(answer: &dra_proto::dra::v1::NodePrepareResourceResponse) -> Vec<String> {
    answer.devices.iter().flat_map(|d| d.cdi_device_ids.clone()).collect()
}

/// Splits `vendor/class=name`.
fn split_id(id: &str) -> (&str, &str) {
    id.split_once('=')
        .unwrap_or_else(|| panic!("{id:?} is not a qualified CDI device ID"))
}

/// The spec file in `cdi_dir` that declares the CDI device `id`, and the
/// device's entry in it.
fn declared(cdi_dir: &Path, id: &str) -> (PathBuf, Value, Value) {
    let (kind, name) = split_id(id);
    for entry in std::fs::read_dir(cdi_dir).unwrap() {
        let path = entry.unwrap().path();
        let spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if spec["kind"] != kind {
            continue;
        }
        if let Some(d) = spec["devices"].as_array().unwrap().iter().find(|d| d["name"] == name) {
            let d = d.clone();
            return (path, spec, d);
        }
    }
    panic!("no spec in {} declares {id}", cdi_dir.display())
}

/// Every edit the host wrote for the devices `ids` (device-level and
/// spec-level container edits) is in `oci`: environment entries, device
/// nodes with type, numbers and an allow rule in the device cgroup, mounts
/// with their source and options, hooks at their stage, network devices.
fn assert_applied(cdi_dir: &Path, ids: &[String], oci: &Value) {
    let env: BTreeSet<&str> = oci["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let devices = oci["linux"]["devices"].as_array().cloned().unwrap_or_default();
    let rules = oci["linux"]["resources"]["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mounts = oci["mounts"].as_array().unwrap();
    for id in ids {
        let (file, spec, device) = declared(cdi_dir, id);
        let f = file.display();
        for edits in [&spec["containerEdits"], &device["containerEdits"]] {
            for e in edits["env"].as_array().into_iter().flatten() {
                let e = e.as_str().unwrap();
                assert!(env.contains(e), "{id} ({f}): env {e:?} not in the OCI spec's {env:?}");
            }
            for n in edits["deviceNodes"].as_array().into_iter().flatten() {
                let path = n["path"].as_str().unwrap();
                let d = devices
                    .iter()
                    .find(|d| d["path"] == path)
                    .unwrap_or_else(|| panic!("{id} ({f}): device node {path} not in linux.devices {devices:?}"));
                for key in ["type", "major", "minor"] {
                    assert_eq!(
                        d[key], n[key],
                        "{id} ({f}): device node {path}: {key} in the OCI spec {d} vs the CDI spec {n}"
                    );
                }
                let access = n["permissions"].as_str().unwrap_or("rwm");
                assert!(
                    rules.iter().any(|r| r["allow"] == true
                        && r["type"] == n["type"]
                        && r["major"] == n["major"]
                        && r["minor"] == n["minor"]
                        && r["access"] == access),
                    "{id} ({f}): no device-cgroup rule allows {path} ({access}): {rules:?}"
                );
            }
            for m in edits["mounts"].as_array().into_iter().flatten() {
                let dest = m["containerPath"].as_str().unwrap();
                let o = mounts
                    .iter()
                    .find(|o| o["destination"] == dest)
                    .unwrap_or_else(|| panic!("{id} ({f}): mount {dest} not in the OCI spec's {mounts:?}"));
                assert_eq!(o["source"], m["hostPath"], "{id} ({f}): mount {dest}: {o}");
                if let Some(options) = m.get("options") {
                    assert_eq!(&o["options"], options, "{id} ({f}): mount {dest}: {o}");
                }
                if let Some(t) = m.get("type") {
                    assert_eq!(&o["type"], t, "{id} ({f}): mount {dest}: {o}");
                }
            }
            for h in edits["hooks"].as_array().into_iter().flatten() {
                let stage = h["hookName"].as_str().unwrap();
                let found = oci["hooks"][stage]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|o| o["path"] == h["path"] && o["args"] == h["args"] && o.get("env") == h.get("env"));
                assert!(found, "{id} ({f}): hook {h} not at hooks.{stage}: {}", oci["hooks"]);
            }
            for n in edits["netDevices"].as_array().into_iter().flatten() {
                let host = n["hostInterfaceName"].as_str().unwrap();
                assert_eq!(
                    oci["linux"]["netDevices"][host]["name"], n["name"],
                    "{id} ({f}): netDevice {host}: {}",
                    oci["linux"]["netDevices"]
                );
            }
        }
    }
}

/// Character devices (path, major, minor) as [`device_nodes`] lists them.
fn char_devices(nodes: &[(&str, i64, i64)]) -> Vec<(String, String, i64, i64)> {
    nodes
        .iter()
        .map(|(path, major, minor)| ((*path).to_owned(), "c".to_owned(), *major, *minor))
        .collect()
}

/// The OCI spec's device nodes as (path, type, major, minor).
fn device_nodes(oci: &Value) -> Vec<(String, String, i64, i64)> {
    oci["linux"]["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_owned(),
                d["type"].as_str().unwrap().to_owned(),
                d["major"].as_i64().unwrap(),
                d["minor"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn env_has(oci: &Value, entry: &str) -> bool {
    oci["process"]["env"].as_array().unwrap().iter().any(|e| e == entry)
}

/// The example guest's env and device nodes (backed by `/dev/null`), two
/// claims in one container, as the runtime applies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_guest_claims_inject_env_and_device_nodes() {
    if skipped("cdi_runtime::example_guest_claims_inject_env_and_device_nodes") {
        return;
    }
    let spec = DriverSpec::new(DRIVER, &guest("example_driver.wasm"))
        .config("devices = 4\ndeviceNodeHostPath = \"/dev/null\"")
        .extra("[drivers.policy]\ndevice_nodes = [\"/dev/null\"]\n");
    let mut node = Node::start(vec![spec], "").await;
    let a = Claim::new("default", "two", &uid(1))
        .device(DRIVER, POOL, "gpu-0", "gpu")
        .device(DRIVER, POOL, "gpu-2", "gpu");
    let b = Claim::new("default", "one", &uid(2)).device(DRIVER, POOL, "gpu-3", "gpu");
    node.claims.put(&[a.clone(), b.clone()]).unwrap();
    let answer = node.plugin.prepare(&[a.reference(), b.reference()]).await.unwrap();
    assert_eq!(answer[&uid(1)].error, "", "{}", node.host.log());
    assert_eq!(answer[&uid(2)].error, "", "{}", node.host.log());
    let ids: Vec<String> = [ids_of(&answer[&uid(1)]), ids_of(&answer[&uid(2)])].concat();
    assert_eq!(ids.len(), 3, "{ids:?}");

    let oci = runtime_spec(&node.env.cdi_dir, &ids, &node.host.log()).await;
    assert_applied(&node.env.cdi_dir, &ids, &oci);
    for (index, claim) in [(0, uid(1)), (2, uid(1)), (3, uid(2))] {
        assert!(env_has(&oci, &format!("GPU_DEVICE_{index}=gpu-{index}")), "{oci}");
        assert!(
            env_has(&oci, &format!("GPU_DEVICE_{index}_RESOURCE_CLAIM={claim}")),
            "{oci}"
        );
    }
    assert!(!env_has(&oci, "GPU_DEVICE_1=gpu-1"), "gpu-1 was not allocated: {oci}");
    assert!(
        env_has(
            &oci,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ),
        "the container's own env is kept: {oci}"
    );
    // /dev/null is c 1:3 on every Linux.
    let nodes = device_nodes(&oci);
    let want: Vec<(String, String, i64, i64)> = [0, 2, 3]
        .iter()
        .map(|i| (format!("/dev/example-gpu-{i}"), "c".to_owned(), 1, 3))
        .collect();
    assert_eq!(nodes, want, "{oci}");
    let rules = &oci["linux"]["resources"]["devices"];
    assert_eq!(
        rules[0],
        json!({"allow": false, "access": "rwm"}),
        "deny-all first: {rules}"
    );
}

/// Whole and shared simulated H100s: the NVIDIA device nodes with the
/// numbers mknod gave them, the driver's files bind-mounted from the driver
/// root, the shared GPU's memory limit, each control node once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_guest_claims_inject_nvidia_nodes_and_driver_mounts() {
    if skipped("cdi_runtime::gpu_guest_claims_inject_nvidia_nodes_and_driver_mounts") {
        return;
    }
    let env = HostEnv::new(&cache_dir()).unwrap();
    let sim = gpus::Simulated::new(env.dir(), 2).unwrap();
    let driver_root = env.dir().join("driver-root");
    let spec = DriverSpec::new(GPU, &guest("gpu_driver.wasm"))
        .extra(&sim.driver_toml)
        .config("sharing = { defaultMemory = \"5Gi\", memoryStep = \"5Gi\" }");
    let mut node = Node::start_in(env, vec![spec], "", &sim.tables).await;
    let whole = Claim::new("ml", "whole", &uid(1)).device(GPU, "test-node", "gpu-0", "gpu");
    let share = Claim::new("ml", "share", &uid(2)).shared_device(
        GPU,
        "test-node",
        "gpu-1",
        "gpu",
        &uid(900),
        &[("memory", "10Gi")],
    );
    node.claims.put(&[whole.clone(), share.clone()]).unwrap();
    let answer = node
        .plugin
        .prepare(&[whole.reference(), share.reference()])
        .await
        .unwrap();
    assert_eq!(answer[&uid(1)].error, "", "{}", node.host.log());
    assert_eq!(answer[&uid(2)].error, "", "{}", node.host.log());
    let ids: Vec<String> = [ids_of(&answer[&uid(1)]), ids_of(&answer[&uid(2)])].concat();

    let oci = runtime_spec(&node.env.cdi_dir, &ids, &node.host.log()).await;
    assert_applied(&node.env.cdi_dir, &ids, &oci);
    let mut nodes = device_nodes(&oci);
    nodes.sort();
    let want = char_devices(&[
        ("/dev/nvidia-uvm", 510, 0),
        ("/dev/nvidia-uvm-tools", 510, 1),
        ("/dev/nvidia0", 195, 0),
        ("/dev/nvidia1", 195, 1),
        ("/dev/nvidiactl", 195, 255),
    ]);
    assert_eq!(nodes, want, "each node once, with the numbers mknod gave it: {oci}");
    let libcuda = oci["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/usr/lib/x86_64-linux-gnu/libcuda.so.1")
        .unwrap_or_else(|| panic!("no libcuda.so.1 mount: {oci}"));
    let source = PathBuf::from(libcuda["source"].as_str().unwrap());
    assert_eq!(
        source,
        driver_root.join(format!("usr/lib/x86_64-linux-gnu/libcuda.so.{}", gpus::DRIVER_VERSION)),
        "{libcuda}"
    );
    assert!(source.exists(), "the mount's source {} exists", source.display());
    assert!(
        oci["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/usr/bin/nvidia-smi"),
        "{oci}"
    );
    assert!(
        env_has(
            &oci,
            &format!("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={}=10240M", gpus::uuid(1))
        ),
        "{}",
        oci["process"]["env"]
    );
}

/// Base-spec mode (docs/operations.md): the GPU guest hands only a
/// reference to the GPU in the operator's `nvidia.com/gpu` spec. The
/// runtime, reading the operator's directory and the host's, resolves it:
/// the allocated GPU's node (numbers read from the node by the library) and
/// the operator's common edits, and nothing of the other GPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_base_spec_references_resolve_in_the_operators_spec() {
    if skipped("cdi_runtime::gpu_base_spec_references_resolve_in_the_operators_spec") {
        return;
    }
    let env = HostEnv::new(&cache_dir()).unwrap();
    let sim = gpus::Simulated::new(env.dir(), 2).unwrap();
    let dev = env.dir().join("device-root/dev");
    // The operator's spec, in the shape `nvidia-ctk cdi generate
    // --device-name-strategy=uuid` writes: one device per GPU by uuid, the
    // control nodes common to all.
    let operator_dir = env.dir().join("etc-cdi");
    std::fs::create_dir_all(&operator_dir).unwrap();
    let node = |name: &str| json!({"path": format!("/dev/{name}"), "hostPath": dev.join(name)});
    let operator = json!({
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": (0..2).map(|i| json!({
            "name": gpus::uuid(i),
            "containerEdits": {"deviceNodes": [node(&format!("nvidia{i}"))]},
        })).collect::<Vec<_>>(),
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [node("nvidiactl"), node("nvidia-uvm"), node("nvidia-uvm-tools")],
        },
    });
    std::fs::write(operator_dir.join("nvidia.json"), operator.to_string()).unwrap();
    let spec = DriverSpec::new(GPU, &guest("gpu_driver.wasm"))
        .extra(
            "grants = [\"nvml\"]\n[drivers.policy]\n\
             cdi_devices = [{ kind = \"nvidia.com/gpu\", name_attribute = \"uuid\" }]\n",
        )
        .config("cdi = { mode = \"base-spec\", kind = \"nvidia.com/gpu\" }");
    let mut node = Node::start_in(env, vec![spec], "", &sim.tables).await;
    let claim = Claim::new("ml", "by-uuid", &uid(1)).device(GPU, "test-node", "gpu-1", "gpu");
    node.claims.put(std::slice::from_ref(&claim)).unwrap();
    let answer = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&uid(1)].error, "", "{}", node.host.log());
    let ids = ids_of(&answer[&uid(1)]);
    let reference = format!("nvidia.com/gpu={}", gpus::uuid(1));
    assert!(ids.contains(&reference), "{ids:?}");

    let go = go_programs().await;
    let oci = cdi::inject_from(&go.cdi_inject, &[&operator_dir, &node.env.cdi_dir], &ids)
        .unwrap_or_else(|e| panic!("the CDI library did not inject {ids:?}: {e}\n{}", node.host.log()));
    let own: Vec<String> = ids.iter().filter(|i| **i != reference).cloned().collect();
    assert_applied(&node.env.cdi_dir, &own, &oci);
    let mut nodes = device_nodes(&oci);
    nodes.sort();
    let want = char_devices(&[
        ("/dev/nvidia-uvm", 510, 0),
        ("/dev/nvidia-uvm-tools", 510, 1),
        ("/dev/nvidia1", 195, 1),
        ("/dev/nvidiactl", 195, 255),
    ]);
    assert_eq!(nodes, want, "gpu-1 only, numbers from the nodes: {oci}");
    assert!(
        env_has(&oci, "NVIDIA_VISIBLE_DEVICES=void"),
        "{}",
        oci["process"]["env"]
    );
}

/// Whether to run a test that needs root (links, namespaces): as root; else
/// fail, or skip when `DRA_SKIP_ROOT_TESTS=1` asks to.
fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("DRA_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        println!("SKIPPED cdi_runtime::{test}: needs root (DRA_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!("cdi_runtime::{test} needs root; run as root or set DRA_SKIP_ROOT_TESTS=1 to skip");
}

/// A macvlan host on `lab`'s parent, claims from the test API server, with
/// the guest's `attach` mode.
async fn net_node(lab: &Lab, attach: &str) -> (TestApiServer, Node) {
    let api = TestApiServer::start().await.unwrap();
    api.put_node("test-node", NET_NODE_UID);
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    env.use_api_server(&api).unwrap();
    let parents: Vec<&str> = lab.parents.iter().map(String::as_str).collect();
    let config = format!("{}\nattach = {attach:?}", parent_config(&lab.parents));
    let mut spec = netlab::macvlan_driver(NET, &guest("macvlan_driver.wasm"), &parents, &config);
    if attach == "net-devices" {
        spec.extra_toml.push_str("[drivers.policy]\nallow_net_devices = true\n");
    }
    let node = Node::start_in(env, vec![spec], "", "").await;
    (api, node)
}

/// The macvlan guest's attach hook, as the runtime sees it: a createRuntime
/// hook running the host's binary, which, run from the OCI spec the way runc
/// runs hooks, moves the interface into the pod with the claim's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macvlan_attach_hook_from_the_oci_spec_moves_the_interface() {
    let test = "macvlan_attach_hook_from_the_oci_spec_moves_the_interface";
    if skipped(&format!("cdi_runtime::{test}")) || !need_root(test) {
        return;
    }
    let mut lab = Lab::new(1);
    let parent = lab.parents[0].clone();
    let (api, node) = net_node(&lab, "hook").await;
    let claim = netlab::share_claim(NET, "test-node", "hooked", 1, &parent, 901, "200M");
    api.put_claim(claim.to_json());
    let answer = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&uid(1)].error, "", "{}", node.host.log());
    let ids = ids_of(&answer[&uid(1)]);

    let oci = runtime_spec(&node.env.cdi_dir, &ids, &node.host.log()).await;
    assert_applied(&node.env.cdi_dir, &ids, &oci);
    let hooks = oci["hooks"]["createRuntime"].as_array().cloned().unwrap_or_default();
    assert_eq!(hooks.len(), 1, "one createRuntime hook: {}", oci["hooks"]);
    let path = hooks[0]["path"].as_str().unwrap();
    assert_eq!(PathBuf::from(path), binary(), "the hook is the host's binary");
    assert!(
        oci["linux"]["netDevices"].is_null(),
        "hook mode moves no netDevice: {oci}"
    );
    let args: Vec<String> = hooks[0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();

    let status = eventually("status.devices of hooked", &node, || {
        api.claim("net", "hooked")?["status"]["devices"].get(0).cloned()
    })
    .await;
    let address = status["networkData"]["ips"][0].as_str().unwrap().to_owned();
    let (pod, pid) = lab.pod();
    let (ok, out) = run_hook(path, &args, pid);
    assert!(ok, "the injected hook failed: {out}\n{}", node.host.log());
    let addrs = netlab::ip_json(&["-n", &pod, "addr", "show", "dev", "net1"]);
    let got: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(got, [address], "net1 in pod {pod}: {addrs}");
    assert_eq!(node.plugin.unprepare(&[claim.reference()]).await.unwrap()[&uid(1)], "");
}

/// The macvlan guest in `netDevices` mode: CDI 1.1 netDevices become the OCI
/// spec's `linux.netDevices`, the host's macvlan under the pod's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macvlan_net_devices_become_linux_net_devices() {
    let test = "macvlan_net_devices_become_linux_net_devices";
    if skipped(&format!("cdi_runtime::{test}")) || !need_root(test) {
        return;
    }
    let lab = Lab::new(1);
    let parent = lab.parents[0].clone();
    let (api, node) = net_node(&lab, "net-devices").await;
    let claim = netlab::share_claim(NET, "test-node", "moved", 1, &parent, 902, "100M");
    api.put_claim(claim.to_json());
    let answer = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&uid(1)].error, "", "{}", node.host.log());
    let ids = ids_of(&answer[&uid(1)]);

    let oci = runtime_spec(&node.env.cdi_dir, &ids, &node.host.log()).await;
    assert_applied(&node.env.cdi_dir, &ids, &oci);
    let net_devices = oci["linux"]["netDevices"]
        .as_object()
        .unwrap_or_else(|| panic!("no linux.netDevices: {oci}"));
    assert_eq!(net_devices.len(), 1, "{net_devices:?}");
    let (host_link, dev) = net_devices.iter().next().unwrap();
    assert_eq!(dev, &json!({"name": "net1"}), "{net_devices:?}");
    // The host link the runtime will move exists, on the parent.
    let link = netlab::ip_json(&["link", "show", "dev", host_link]);
    assert_eq!(link[0]["link"], parent.as_str(), "{link}");
    assert!(oci["hooks"].is_null(), "netDevices mode needs no hook: {oci}");
    assert_eq!(node.plugin.unprepare(&[claim.reference()]).await.unwrap()[&uid(1)], "");
}

/// The check itself: a spec file the library refuses, and a file in the CDI
/// directory it would silently skip, each fail the injection by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_the_library_refuses_or_skips_fails_by_name() {
    if skipped("cdi_runtime::a_spec_the_library_refuses_or_skips_fails_by_name") {
        return;
    }
    let mut node = Node::example(2).await;
    let claim = Claim::new("default", "c", &uid(1)).device(DRIVER, POOL, "gpu-0", "gpu");
    node.claims.put(std::slice::from_ref(&claim)).unwrap();
    let answer = node.plugin.prepare(&[claim.reference()]).await.unwrap();
    let ids = ids_of(&answer[&uid(1)]);
    runtime_spec(&node.env.cdi_dir, &ids, &node.host.log()).await;

    // A field the CDI schema does not have: the library's strict decoding refuses the file.
    let path = node.cdi_spec_path(&uid(1));
    let good = std::fs::read(&path).unwrap();
    let mut spec: Value = serde_json::from_slice(&good).unwrap();
    spec["devices"][0]["containerEdits"]["environment"] = json!(["X=1"]);
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let err = try_runtime_spec(&node.env.cdi_dir, &ids).await.unwrap_err();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("environment"),
        "{err}"
    );
    std::fs::write(&path, &good).unwrap();

    // A name the library does not read as a spec.
    let stray = node.env.cdi_dir.join("leftover.json.tmp");
    std::fs::write(&stray, &good).unwrap();
    let err = try_runtime_spec(&node.env.cdi_dir, &ids).await.unwrap_err();
    assert!(err.contains(&stray.display().to_string()), "{err}");
    std::fs::remove_file(&stray).unwrap();

    // An ID nothing declares.
    let unknown = format!("k8s.{DRIVER}/device={}_gpu-1", uid(1));
    let err = try_runtime_spec(&node.env.cdi_dir, std::slice::from_ref(&unknown))
        .await
        .unwrap_err();
    assert!(err.contains(&unknown), "{err}");
    runtime_spec(&node.env.cdi_dir, &ids, &node.host.log()).await;
}

/// The metadata file of a request on the host, where the host writes it.
fn metadata_file(node: &Node, namespace: &str, claim: &str, request: &str) -> PathBuf {
    node.env
        .kubelet_root
        .join("plugins")
        .join(DRIVER)
        .join("dra-device-metadata")
        .join(format!("{namespace}_{claim}"))
        .join(request)
        .join("metadata.json")
}

/// What the workload's Go code (k8s.io/dynamic-resource-allocation
/// devicemetadata) reads from a metadata file: decoded as v1beta1 from a
/// stream of v1beta1 then v1alpha1, valid, and byte for byte what the Go
/// helper's encoder writes for the same content. Returns the decoded object.
async fn decoded_metadata(file: &Path, context: &str) -> Value {
    let go = go_programs().await;
    let file = file.to_owned();
    let report = tokio::task::spawn_blocking(move || cdi::decode_metadata(&go.metadata_decode, &file))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the devicemetadata package did not decode the file: {e}\n{context}"));
    assert_eq!(report["decodedVersion"], "metadata.resource.k8s.io/v1beta1", "{report}");
    assert_eq!(
        report["streamVersions"],
        json!(["metadata.resource.k8s.io/v1beta1", "metadata.resource.k8s.io/v1alpha1"]),
        "{report}"
    );
    assert_eq!(report["validationError"], "", "{report}");
    assert_eq!(report["reencodedIdentical"], true, "{report}");
    report["decoded"].clone()
}

/// The mount of `destination` in an OCI spec: (source, options).
fn mount_at(oci: &Value, destination: &str) -> (String, Value) {
    let m = oci["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == destination)
        .unwrap_or_else(|| panic!("no mount at {destination}: {}", oci["mounts"]));
    (m["source"].as_str().unwrap().to_owned(), m["options"].clone())
}

/// KEP-5304 device metadata (issue 25): the example guest returns each
/// prepared device's published attributes as metadata. The host answers one
/// `<driver>/metadata` CDI ID per request (on its first device); the CDI
/// library injects a read-only bind mount of the host's file at the upstream
/// container path (by claim name, or by the pod's claim name for a claim
/// made from a template); the upstream Go decoder reads the file as the Go
/// helper writes it. The files are restored within a boot, written again by
/// the re-prepare after a reboot, removed on unprepare, and removed on an
/// unprepare the checkpoint does not know (a crash before its commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_metadata_is_mounted_and_decoded_by_the_upstream_go_code() {
    if skipped("cdi_runtime::device_metadata_is_mounted_and_decoded_by_the_upstream_go_code") {
        return;
    }
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    let boot_file = env.dir().join("boot_id");
    std::fs::write(&boot_file, "boot-1\n").unwrap();
    env.env
        .push(("DRA_TEST_BOOT_ID_FILE".into(), boot_file.display().to_string()));
    let spec = DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 4\ndeviceMetadata = true");
    let mut node = Node::start_in(env, vec![spec], "", "").await;
    let direct = Claim::new("default", "direct", &uid(1))
        .device(DRIVER, POOL, "gpu-0", "gpu")
        .device(DRIVER, POOL, "gpu-2", "gpu");
    let templated = Claim::new("default", "pod-a-gpus-x7k2q", &uid(2))
        .from_template("gpus")
        .device(DRIVER, POOL, "gpu-3", "gpu");
    node.claims.put(&[direct.clone(), templated.clone()]).unwrap();
    let refs = [direct.reference(), templated.reference()];
    let answer = node.plugin.prepare(&refs).await.unwrap();
    for u in [uid(1), uid(2)] {
        assert_eq!(answer[&u].error, "", "{}", node.host.log());
    }

    // One metadata ID per request, on its first device, after the device's own.
    let metadata_id = |u: &str| format!("{DRIVER}/metadata={u}_gpu");
    let ids_per_device =
        |u: &str| -> Vec<Vec<String>> { answer[u].devices.iter().map(|d| d.cdi_device_ids.clone()).collect() };
    let direct_ids = ids_per_device(&uid(1));
    assert_eq!(direct_ids.len(), 2, "{direct_ids:?}");
    assert_eq!(direct_ids[0].len(), 2, "{direct_ids:?}");
    assert_eq!(direct_ids[0][1], metadata_id(&uid(1)), "{direct_ids:?}");
    assert_eq!(direct_ids[1].len(), 1, "only the first device: {direct_ids:?}");
    assert_eq!(ids_per_device(&uid(2))[0][1], metadata_id(&uid(2)));
    let ids: Vec<String> = [ids_of(&answer[&uid(1)]), ids_of(&answer[&uid(2)])].concat();

    // What the workload's Go code reads.
    let direct_file = metadata_file(&node, "default", "direct", "gpu");
    let decoded = decoded_metadata(&direct_file, &node.host.log()).await;
    assert_eq!(decoded["name"], "direct", "{decoded}");
    assert_eq!(decoded["namespace"], "default", "{decoded}");
    assert_eq!(decoded["uid"], uid(1).as_str(), "{decoded}");
    assert_eq!(decoded["generation"], 1, "{decoded}");
    assert!(decoded["PodClaimName"].is_null(), "{decoded}");
    let requests = decoded["Requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{decoded}");
    assert_eq!(requests[0]["Name"], "gpu");
    let devices = requests[0]["Devices"].as_array().unwrap();
    let names: Vec<&str> = devices.iter().map(|d| d["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gpu-0", "gpu-2"], "allocation order: {decoded}");
    for (d, index) in devices.iter().zip([0, 2]) {
        assert_eq!(d["Driver"], DRIVER, "{d}");
        assert_eq!(d["Pool"], POOL, "{d}");
        let a = &d["Attributes"];
        assert_eq!(a["index"], json!({"int": index}), "{d}");
        assert_eq!(a["driverVersion"], json!({"version": "1.0.0"}), "{d}");
        assert_eq!(a["model"], json!({"string": "LATEST-GPU-MODEL"}), "{d}");
        assert!(a["uuid"]["string"].as_str().unwrap().starts_with("GPU-"), "{d}");
        assert_eq!(a.as_object().unwrap().len(), 4, "the published attributes: {d}");
        assert!(d["NetworkData"].is_null(), "{d}");
    }
    assert_ne!(devices[0]["Attributes"]["uuid"], devices[1]["Attributes"]["uuid"]);
    let templated_file = metadata_file(&node, "default", "pod-a-gpus-x7k2q", "gpu");
    let decoded = decoded_metadata(&templated_file, &node.host.log()).await;
    assert_eq!(decoded["PodClaimName"], "gpus", "{decoded}");
    assert_eq!(decoded["name"], "pod-a-gpus-x7k2q", "{decoded}");

    // What the runtime mounts, and where.
    let container = "/var/run/kubernetes.io/dra-device-attributes";
    let direct_path = format!("{container}/resourceclaims/direct/gpu/{DRIVER}-metadata.json");
    let templated_path = format!("{container}/resourceclaimtemplates/gpus/gpu/{DRIVER}-metadata.json");
    let check_mounts = |oci: &Value| {
        for (path, file) in [(&direct_path, &direct_file), (&templated_path, &templated_file)] {
            let (source, options) = mount_at(oci, path);
            assert_eq!(PathBuf::from(source), *file, "{path}");
            assert_eq!(options, json!(["ro", "bind"]), "{path}");
        }
    };
    let oci = runtime_spec(&node.env.cdi_dir, &ids, &node.host.log()).await;
    assert_applied(&node.env.cdi_dir, &ids, &oci);
    check_mounts(&oci);
    let spec_file = node.env.cdi_dir.join(format!("{DRIVER}_metadata_{}_gpu.json", uid(1)));
    assert!(spec_file.is_file(), "the helper's spec file name");

    // Within a boot, files lost (a wiped CDI directory, a deleted file) are
    // restored from the checkpoint; the guest is not asked again.
    node.host.terminate(std::time::Duration::from_secs(20)).unwrap();
    std::fs::remove_file(&spec_file).unwrap();
    std::fs::remove_file(&templated_file).unwrap();
    node.restart().await;
    assert_eq!(node.plugin.prepare(&refs).await.unwrap(), answer);
    decoded_metadata(&templated_file, &node.host.log()).await;
    check_mounts(&runtime_spec(&node.env.cdi_dir, &ids, &node.host.log()).await);

    // A reboot: a new boot ID, the CDI directory (a tmpfs) empty, and a
    // file left stale. The re-prepare writes them all again.
    node.host.terminate(std::time::Duration::from_secs(20)).unwrap();
    std::fs::write(&boot_file, "boot-2\n").unwrap();
    for entry in std::fs::read_dir(&node.env.cdi_dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    std::fs::write(&direct_file, "stale").unwrap();
    node.restart().await;
    let log = node.host.log();
    assert!(log.contains("re-prepared after a reboot"), "{log}");
    assert_eq!(decoded_metadata(&direct_file, &log).await["uid"], uid(1).as_str());
    assert_eq!(node.plugin.prepare(&refs).await.unwrap(), answer);
    check_mounts(&runtime_spec(&node.env.cdi_dir, &ids, &node.host.log()).await);

    // Unprepare removes a claim's files, its directory and its spec.
    let unprepared = node.plugin.unprepare(&[templated.reference()]).await.unwrap();
    assert_eq!(unprepared[&uid(2)], "", "{}", node.host.log());
    let metadata_dir = direct_file
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    assert!(!metadata_dir.join("default_pod-a-gpus-x7k2q").exists());
    let specs = |node: &Node| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&node.env.cdi_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("_metadata_"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(specs(&node), [format!("{DRIVER}_metadata_{}_gpu.json", uid(1))]);

    // A claim prepared but never recorded (a crash before the checkpoint
    // commit; here its record removed while the host is down): its unprepare
    // removes what was written all the same.
    node.host.terminate(std::time::Duration::from_secs(20)).unwrap();
    std::fs::remove_file(node.checkpoint_dir().join(format!("{}.json", uid(1)))).unwrap();
    node.restart().await;
    let unprepared = node.plugin.unprepare(&[direct.reference()]).await.unwrap();
    assert_eq!(unprepared[&uid(1)], "", "{}", node.host.log());
    assert!(!metadata_dir.join("default_direct").exists(), "{}", node.host.log());
    assert_eq!(specs(&node), Vec::<String>::new());
    assert!(
        node.host
            .log()
            .contains("removed device metadata left without a checkpoint record"),
        "{}",
        node.host.log()
    );
}
