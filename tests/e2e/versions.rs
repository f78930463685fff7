//! The two versions of the guest contract served side by side: the example
//! guest built with the frozen 0.1 SDK ([`EXAMPLE_V0_1`], `dra:driver@0.1.0`,
//! tests/guests/v0.1) and with today's SDK ([`EXAMPLE`], `dra:driver@0.2.0`),
//! one driver source.
//!
//! The 0.1 build also runs the example flows of the other modules, each a
//! second test over the same code: registration (`registration.rs`),
//! prepare writing the CDI spec and unprepare removing it, and recovery from
//! the checkpoint after kill -9 (`prepare.rs`). Here: both builds publish the
//! same inventory to the real API server (tests/k8s), a hot swap from one to
//! the other and back leaves every claim unpreparable by the build that
//! follows, and `guest inspect` / `guest validate` name the contract version.
//!
//! The tonic test kubelet calls the host (a claims file), as in the flows
//! these repeat.

use crate::common::*;
use base64::Engine as _;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::configmap::ConfigMapDir;
use dra_test_support::host::{DriverSpec, HostEnv};
use serde_json::{Value, json};
use std::time::Duration;

/// The 0.1 build, published under a driver name of its own beside the 0.2
/// build on one node.
const DRIVER_V0_1: &str = "example-v0-1.dra.dev";

fn bytes(file: &str) -> Vec<u8> {
    std::fs::read(guest(file)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_builds_publish_the_same_inventory() {
    let cp = control_plane().await;
    let n = cluster_node(cp, "e2e-contract-versions", |_| {
        let drivers = vec![
            DriverSpec::new(DRIVER, &guest(EXAMPLE)).config("devices = 3"),
            DriverSpec::new(DRIVER_V0_1, &guest(EXAMPLE_V0_1)).config("devices = 3"),
        ];
        (drivers, String::new())
    })
    .await;
    let mut slices = Vec::new();
    for driver in [DRIVER, DRIVER_V0_1] {
        let what = format!("{driver}'s slice");
        slices.push(eventually(&what, &n.node, || slices_of(cp, driver, &n.name).pop()).await);
    }
    let (v0_2, v0_1) = (&slices[0], &slices[1]);
    assert_eq!(v0_1["spec"]["pool"]["name"], n.name.as_str());
    let devices = v0_1["spec"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3, "{v0_1}");
    assert_eq!(devices[2]["name"], "gpu-2");
    assert_eq!(
        v0_1["spec"]["devices"], v0_2["spec"]["devices"],
        "the 0.1 build publishes what the 0.2 build does"
    );
}

/// The example guest's state blob in a claim's checkpoint record (JSON).
fn state_of(record: &Value) -> Value {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(record["state"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&blob).unwrap()
}

/// A claim prepared by one build is unprepared by the other after a hot
/// swap, 0.1 → 0.2 and the rollback 0.2 → 0.1: its CDI spec and checkpoint
/// record go, and the state the first build returned reaches the second
/// build's `unprepare`. To show that last point, a second claim's record is
/// rewritten (as a host would write it) so that its state names the first
/// claim: only a guest that reads the state it is handed can refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_outlive_a_hot_swap_between_contract_versions_both_ways() {
    const KEY: &str = "example.wasm";
    let env = HostEnv::new(&cache_dir()).unwrap();
    let mut guests = ConfigMapDir::create(&env.dir().join("guests"), &[(KEY, &bytes(EXAMPLE_V0_1))]).unwrap();
    let spec = DriverSpec::new(DRIVER, &guests.path(KEY)).config("devices = 6");
    let mut node = Node::start_in(env, vec![spec], "", "[hot_swap]\ndebounce_ms = 20\n").await;
    let record_path = |node: &Node, c: &Claim| node.checkpoint_dir().join(format!("{}.json", c.uid));

    let legs = [
        (EXAMPLE_V0_1, "0.1.0", EXAMPLE, "0.2.0"),
        (EXAMPLE, "0.2.0", EXAMPLE_V0_1, "0.1.0"),
    ];
    let mut refused = Vec::new();
    for (leg, (from, from_version, to, to_version)) in legs.into_iter().enumerate() {
        let what = format!("{from} -> {to}");
        let n = 10 * leg as u64;
        let device = |i: u64| format!("gpu-{}", 3 * leg as u64 + i);
        let claim = |name: &str, i: u64| {
            Claim::new("default", &format!("{name}-{leg}"), &uid(100 + n + i)).device(DRIVER, POOL, &device(i), "gpu")
        };
        let (kept, misfiled, after) = (claim("kept", 0), claim("misfiled", 1), claim("after", 2));
        node.claims
            .put(&[kept.clone(), misfiled.clone(), after.clone()])
            .unwrap();

        let answer = node
            .plugin
            .prepare(&[kept.reference(), misfiled.reference()])
            .await
            .unwrap();
        assert!(answer.values().all(|a| a.error.is_empty()), "{what}: {answer:?}");
        for (i, c) in [&kept, &misfiled].into_iter().enumerate() {
            let record = read_record(&record_path(&node, c));
            assert_eq!(record["guest"]["name"], "example-driver", "{what}");
            assert_eq!(record["guest"]["version"], from_version, "{what}: prepared by {from}");
            assert_eq!(
                state_of(&record),
                json!({"version": 1, "claim": c.uid, "devices": [device(i as u64)]}),
                "{what}: the state format every build writes"
            );
        }

        // The misfiled claim's state now names the kept claim.
        node.host.terminate(Duration::from_secs(20)).unwrap();
        let path = record_path(&node, &misfiled);
        let mut record = read_record(&path);
        let wrong = json!({"version": 1, "claim": kept.uid, "devices": [device(1)]}).to_string();
        record["state"] = Value::from(base64::engine::general_purpose::STANDARD.encode(wrong));
        write_record(&path, DRIVER, &record);
        node.restart().await;

        guests.update(&[(KEY, &bytes(to))]).unwrap();
        let swapped = eventually(&format!("{what}: the swap"), &node, || {
            node.host
                .log()
                .lines()
                .find(|l| l.contains("guest swapped"))
                .map(str::to_owned)
        })
        .await;
        assert!(
            swapped.contains(&format!("to.version={to_version}")),
            "{what}: {swapped}"
        );

        let errors = node
            .plugin
            .unprepare(&[kept.reference(), misfiled.reference()])
            .await
            .unwrap();
        assert_eq!(
            errors[&kept.uid], "",
            "{what}: the new build unprepares the old build's claim"
        );
        assert!(!node.cdi_spec_path(&kept.uid).exists(), "{what}");
        assert!(!record_path(&node, &kept).exists(), "{what}");
        let error = &errors[&misfiled.uid];
        assert!(
            error.contains(&format!(
                "prepare state belongs to claim {}, not {}",
                kept.uid, misfiled.uid
            )),
            "{what}: the new build's unprepare read the checkpointed state: {error}"
        );
        refused.push(format!("{}.json", misfiled.uid));

        // The new build prepares and unprepares claims of its own.
        let answer = node.plugin.prepare(&[after.reference()]).await.unwrap();
        assert_eq!(answer[&after.uid].error, "", "{what}");
        assert_eq!(
            read_record(&record_path(&node, &after))["guest"]["version"],
            to_version,
            "{what}"
        );
        assert_eq!(
            node.plugin.unprepare(&[after.reference()]).await.unwrap()[&after.uid],
            ""
        );
        assert!(!node.cdi_spec_path(&after.uid).exists(), "{what}");
        // Only the claims whose state was rewritten are left.
        assert_eq!(checkpoint_records(&node.checkpoint_dir()), refused, "{what}");
    }
}

/// A component exporting an empty instance named
/// `dra:driver/device-driver@{version}`: to the host, a guest built against
/// that version of the contract.
fn component_exporting(version: &str) -> Vec<u8> {
    let name = format!("dra:driver/device-driver@{version}");
    // One instance, made of inline exports: none.
    let instances = [1u8, 1, 0];
    // One export: a plain name, of instance 0, with no type ascription.
    let mut exports = vec![1u8, 0, name.len() as u8];
    exports.extend_from_slice(name.as_bytes());
    exports.extend_from_slice(&[5, 0, 0]);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    for (id, body) in [(5u8, &instances[..]), (11, &exports[..])] {
        component.push(id);
        component.push(body.len() as u8);
        component.extend_from_slice(body);
    }
    component
}

fn run(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(binary())
        .args(args)
        .output()
        .expect("run the binary")
}

/// `guest inspect` names the contract a component exports, served or not
/// (a version this host does not serve is named, with the ones it does);
/// `guest validate` names the one the loaded guest is bound to.
#[test]
fn guest_inspect_and_validate_name_the_contract_version() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    for (file, version) in [(EXAMPLE_V0_1, "0.1.0"), (EXAMPLE, "0.2.0")] {
        let path = guest(file);
        let out = run(&["guest".as_ref(), "inspect".as_ref(), path.as_ref()]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["contract"], format!("dra:driver@{version}"), "{file}: {v}");
        assert_eq!(v["witVersion"], version, "{file}");
        assert_eq!(
            v["sdkVersion"], version,
            "{file}: built with the SDK of the same version"
        );
        assert_eq!(v["compatible"], true, "{file}");

        env.write_config(&[DriverSpec::new(DRIVER, &path).config("devices = 1")], "")
            .unwrap();
        let out = run(&[
            "guest".as_ref(),
            "validate".as_ref(),
            "--config".as_ref(),
            env.config_path.as_ref(),
        ]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v[DRIVER]["guest"]["contract"],
            format!("dra:driver@{version}"),
            "{file}: {v}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer.wasm");
    std::fs::write(&newer, component_exporting("0.3.0")).unwrap();
    let out = run(&["guest".as_ref(), "inspect".as_ref(), newer.as_ref()]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["contract"], "dra:driver@0.3.0", "{v}");
    assert_eq!(v["compatible"], false);
    let problem = v["problem"].as_str().unwrap();
    assert!(
        problem.contains("exports `dra:driver/device-driver@0.3.0`, a version this host does not serve")
            && problem.contains("it serves 0.2.0, 0.1.0"),
        "{problem}"
    );
}

/// Loading a guest of an unserved version (`guest validate FILE`, as `run`
/// and a hot swap load it) fails naming its version and the served ones; a
/// component with no `device-driver` export at all says so.
#[test]
fn a_guest_of_a_contract_version_this_host_does_not_serve_is_refused_naming_the_served_ones() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    env.write_config(&[DriverSpec::new(DRIVER, &guest(EXAMPLE)).config("devices = 1")], "")
        .unwrap();
    let config = env.config_path.as_os_str();
    let cases = [
        (component_exporting("0.3.0"), "exports `dra:driver/device-driver@0.3.0`"),
        (
            b"\0asm\x0d\0\x01\0".to_vec(),
            "exports no `dra:driver/device-driver` interface",
        ),
    ];
    for (component, expected) in cases {
        let file = env.dir().join("candidate.wasm");
        std::fs::write(&file, component).unwrap();
        let out = run(&[
            "guest".as_ref(),
            "validate".as_ref(),
            file.as_ref(),
            "--config".as_ref(),
            config,
        ]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("does not implement a supported dra:driver version")
                && stderr.contains(expected)
                && stderr.contains("0.2.0, 0.1.0"),
            "{stderr}"
        );
    }
}
