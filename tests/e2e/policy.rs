//! Issue 13, part 1: the policy bounds what a container gets, not only where
//! paths point. A hostile guest (`tests/guests/faulty/src/attacks.rs`) returns
//! forged device numbers, non-bind mounts, read-write or `suid` mounts,
//! references to every GPU of the node and an 8 MiB CDI spec; each is that
//! claim's error naming the device, the field and the rule, and leaves no CDI
//! spec and no checkpoint record. What the policy allows still works, with
//! the device numbers the host read from the real device node.
//!
//! The tonic test kubelet calls the host: claims from a claims file, several
//! hostile ones in one call, each claim's error read from the answer; the
//! kubelet's DRA manager keeps a Pod's first claim error only.

use crate::common::*;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::host::{DriverSpec, HostEnv, http_get};
use serde_json::Value;
use std::path::{Path, PathBuf};

const FAULTY: &str = "faulty.dra.dev";

/// A device root holding two real character device nodes, `dev/nvidia0`
/// and `dev/nvidia1` (195:0 and 195:1, as the NVIDIA driver creates them),
/// made with mknod(2).
fn device_root(dir: &Path) -> PathBuf {
    let root = dir.join("devroot");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    for minor in 0..2 {
        let node = std::ffi::CString::new(root.join(format!("dev/nvidia{minor}")).to_str().unwrap()).unwrap();
        // SAFETY: mknod(2) with a valid NUL-terminated path.
        let rc = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, minor)) };
        assert_eq!(
            rc,
            0,
            "mknod (the e2e tests run as root): {}",
            std::io::Error::last_os_error()
        );
    }
    root
}

struct PolicyNode {
    node: Node,
    metrics: u16,
}

/// The faulty guest with a GPU-like policy: exactly the `/dev/nvidiaN`
/// nodes, read-only binds from the driver root, and references to the
/// operator's `nvidia.com/gpu` devices by the allocated device's `uuid`.
async fn policy_node() -> PolicyNode {
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    let metrics = env.enable_metrics().unwrap();
    let root = device_root(env.dir());
    let policy = format!(
        "[drivers.policy]\n\
         device_root = {root:?}\n\
         device_nodes = [\"/dev/nvidia[0-9]*\"]\n\
         mount_host_paths = [\"/run/nvidia/driver/**\"]\n\
         cdi_devices = [{{ kind = \"nvidia.com/gpu\", name_attribute = \"uuid\" }}]\n"
    );
    let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm"))
        .extra(&policy)
        .config("devices = 4");
    let node = Node::start_in(env, vec![spec], "call_timeout_ms = 5000", "").await;
    PolicyNode { node, metrics }
}

fn claim(name: &str, n: u64) -> Claim {
    Claim::new("default", name, &uid(n)).device(FAULTY, "faulty", "dev-0", "dev")
}

fn spec_path(node: &Node, uid: &str) -> PathBuf {
    node.env.cdi_dir.join(format!("k8s.{FAULTY}-device_{uid}.json"))
}

fn record_path(node: &Node, uid: &str) -> PathBuf {
    node.env
        .kubelet_root
        .join("plugins")
        .join(FAULTY)
        .join("claims")
        .join(format!("{uid}.json"))
}

fn edits(node: &Node, uid: &str) -> Value {
    let path = spec_path(node, uid);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap();
    spec["devices"][0]["containerEdits"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_container_edits_are_refused_naming_device_field_and_rule() {
    let PolicyNode { mut node, metrics } = policy_node().await;
    // (claim, what the error must say: the field or value, and the rule)
    let refused = [
        (claim("devnode-forged", 1), ["b 8:0", "c 195:0", "device_nodes"]),
        (
            claim("devnode-missing", 2),
            ["/dev/nvidia9", "does not exist", "device_root"],
        ),
        (
            claim("devnode-ctl", 3),
            ["/dev/nvidiactl", "deviceNodes[0]", "device_nodes"],
        ),
        (claim("mount-overlay", 4), ["\"overlay\"", "mounts[0]", "mount_types"]),
        (claim("mount-devtmpfs", 5), ["\"devtmpfs\"", "mounts[0]", "mount_types"]),
        (claim("mount-rw", 6), ["read-write", "mounts[0]", "mount_rw_host_paths"]),
        (claim("mount-suid", 7), ["\"suid\"", "mounts[0]", "mount_options"]),
        (claim("cdi-all", 8), ["nvidia.com/gpu=all", "allow_all", "cdi_devices"]),
        (claim("cdi-other", 9), ["FAULTY-1", "uuid", "cdi_devices"]),
        (claim("bigspec", 10), ["CDI spec", "bytes", "max_cdi_spec_bytes"]),
        // A node the policy allows, but the inventory declares for dev-1,
        // which this claim (dev-0) was not allocated.
        (
            claim("devnode-steal", 14),
            ["/dev/nvidia1", "\"faulty\"/\"dev-1\"", "ownership"],
        ),
    ];
    let allowed = [claim("devnode-plain", 11), claim("mount-ro", 12), claim("cdi-own", 13)];
    let all: Vec<Claim> = refused.iter().map(|(c, _)| c.clone()).chain(allowed.clone()).collect();
    node.claims.put(&all).unwrap();
    let answer = node
        .plugin
        .prepare(&all.iter().map(Claim::reference).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(answer.len(), all.len());
    for (c, needles) in &refused {
        let e = &answer[&c.uid].error;
        assert!(e.starts_with("guest output rejected"), "{}: {e:?}", c.name);
        assert!(e.contains("faulty/dev-0"), "{}: {e:?} should name the device", c.name);
        for needle in needles {
            assert!(e.contains(needle), "{}: {e:?} should contain {needle:?}", c.name);
        }
        assert!(answer[&c.uid].devices.is_empty());
        assert!(!spec_path(&node, &c.uid).exists(), "{}: no CDI spec", c.name);
        assert!(!record_path(&node, &c.uid).exists(), "{}: no checkpoint record", c.name);
    }
    for c in &allowed {
        assert_eq!(answer[&c.uid].error, "", "{}", c.name);
    }

    // The host read type and numbers from the real node (the guest gave none).
    let plain = edits(&node, &allowed[0].uid);
    let n = &plain["deviceNodes"][0];
    assert_eq!(n["path"], "/dev/nvidia0");
    assert_eq!(
        (n["type"].as_str(), n["major"].as_i64(), n["minor"].as_i64()),
        (Some("c"), Some(195), Some(0))
    );
    let ro = edits(&node, &allowed[1].uid);
    assert_eq!(
        ro["mounts"][0]["options"],
        serde_json::json!(["ro", "nosuid", "nodev", "bind"])
    );
    let own = &answer[&allowed[2].uid].devices[0].cdi_device_ids;
    assert!(own.contains(&"nvidia.com/gpu=FAULTY-0".to_owned()), "{own:?}");

    // Each refusal is counted under the rule that refused it.
    let text = http_get(metrics, "/metrics").await.unwrap();
    for rule in [
        "device_nodes",
        "mount_types",
        "mount_options",
        "cdi_devices",
        "max_cdi_spec_bytes",
        "ownership",
    ] {
        assert!(
            text.contains(&format!(
                "dra_host_policy_rejections_total{{driver=\"{FAULTY}\",rule=\"{rule}\"}}"
            )),
            "{rule}:\n{text}"
        );
    }
    // And logged with the claim, once per claim.
    let log = node.host.log();
    assert!(log.contains("claim prepare failed") && log.contains("b 8:0"), "{log}");
    node.host.terminate(std::time::Duration::from_secs(20)).unwrap();
}

/// `allow_net_devices` lets a driver move the links the host creates
/// (`dwh…`) into pods, and only the links it created for the claim being
/// prepared: a driver without `net` has none, so a `dwh…` name from its
/// guest is another driver's link or another claim's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_link_not_created_for_the_claim_is_refused() {
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    let metrics = env.enable_metrics().unwrap();
    let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm"))
        .extra("[drivers.policy]\nallow_net_devices = true\n")
        .config("devices = 2");
    let mut node = Node::start_in(env, vec![spec], "", "").await;
    let stolen = claim("netdev-host-link", 21);
    node.claims.put(std::slice::from_ref(&stolen)).unwrap();
    let answer = node.plugin.prepare(&[stolen.reference()]).await.unwrap();
    let e = &answer[&stolen.uid].error;
    for needle in [
        "guest output rejected",
        "faulty/dev-0",
        "netDevices \"dwh0123456789ab\"",
        "not a link the host created",
    ] {
        assert!(e.contains(needle), "{e:?} should contain {needle:?}");
    }
    assert!(!spec_path(&node, &stolen.uid).exists(), "no CDI spec");
    assert!(!record_path(&node, &stolen.uid).exists(), "no checkpoint record");
    let text = http_get(metrics, "/metrics").await.unwrap();
    let series = format!("dra_host_policy_rejections_total{{driver=\"{FAULTY}\",rule=\"allocation\"}} 1");
    assert!(text.contains(&series), "{series} in:\n{text}");
    node.host.terminate(std::time::Duration::from_secs(20)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_from_before_issue_13_is_refused_at_start_with_the_new_key() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    let _claims = dra_test_support::claims::ClaimsFile::new(&env.claims_path).unwrap();
    let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm"))
        .extra("[drivers.policy]\nmount_host_prefixes = [\"/run/nvidia/driver\"]\n");
    env.write_config(&[spec], "").unwrap();
    let mut host = env.start(&binary()).unwrap();
    assert!(!host.wait_exit(START_TIMEOUT).unwrap().success());
    let log = host.log();
    assert!(
        log.contains("mount_host_prefixes")
            && log.contains("mount_host_paths")
            && log.contains("/run/nvidia/driver/**"),
        "{log}"
    );
}
