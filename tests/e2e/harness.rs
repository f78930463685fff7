//! The guest SDK and the vendor's harness from the outside: `guest inspect`
//! names the SDK a guest was built with, and `guest run` drives a guest as
//! the host would, run as an unprivileged user (it needs no root, no
//! kubelet, no API server), its ResourceSlices checked against the
//! Kubernetes 1.37 schemas.

use crate::common::*;
use crate::manifests::validate;
use dra_test_support::claims::uid;
use dra_test_support::gpus;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory the unprivileged user can use.
fn workdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("dra-guest-run-e2e-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `dra-wasm-host guest run ARGS` in `dir`, as user `nobody` when the tests
/// run as root: what it does, it does without privileges.
fn guest_run(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary());
        c
    } else {
        Command::new(binary())
    };
    cmd.args(["guest", "run"])
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("setpriv (util-linux) runs the harness as nobody")
}

fn stdout_docs(out: &Output) -> Vec<Value> {
    serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|e| panic!("stdout is not YAML ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn explain(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn guest_arg(file: &str) -> String {
    guest(file).display().to_string()
}

/// A ResourceClaim as `kubectl get resourceclaim -o yaml` prints it after
/// allocation, with `results` and `config` as YAML list items.
fn claim_yaml(name: &str, uid: &str, results: &str, config: &str) -> String {
    format!(
        "apiVersion: resource.k8s.io/v1\nkind: ResourceClaim\nmetadata:\n  name: {name}\n  namespace: default\n  uid: {uid}\nspec:\n  devices:\n    requests:\n    - name: dev\n      exactly:\n        deviceClassName: example\nstatus:\n  allocation:\n    devices:\n      results:\n{results}      config:\n{config}"
    )
}

fn result_yaml(driver: &str, pool: &str, device: &str) -> String {
    format!("      - request: dev\n        driver: {driver}\n        pool: {pool}\n        device: {device}\n")
}

/// The SDK's version, from its Cargo.toml.
fn sdk_version() -> String {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/sdk/Cargo.toml")).unwrap();
    let table: toml::Table = manifest.parse().unwrap();
    table["package"]["version"].as_str().unwrap().to_owned()
}

#[test]
fn guest_inspect_names_the_sdk_and_the_smallest_world_of_every_guest() {
    // Built in one cargo run, so the SDK was compiled with both of its
    // features: a guest imports only what it calls.
    for (file, world, grants) in [
        ("example_driver.wasm", "driver", vec![]),
        ("faulty_driver.wasm", "driver", vec![]),
        ("gpu_driver.wasm", "gpu-driver", vec!["nvml"]),
        ("macvlan_driver.wasm", "net-driver", vec!["net"]),
    ] {
        let out = Command::new(binary())
            .args(["guest", "inspect"])
            .arg(guest(file))
            .output()
            .unwrap();
        assert!(out.status.success(), "{file}: {}", explain(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["sdkVersion"], sdk_version(), "{file}: {v:#}");
        assert_eq!(v["world"], world, "{file}: {v:#}");
        assert_eq!(v["grantsNeeded"], serde_json::json!(grants), "{file}: {v:#}");
        let imports: Vec<&str> = v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap())
            .collect();
        for capability in ["nvml", "net"] {
            let imported = imports
                .iter()
                .any(|i| i.starts_with(&format!("dra:driver/{capability}@")));
            assert_eq!(imported, grants.contains(&capability), "{file}: {imports:?}");
        }
    }
}

#[test]
fn slices_are_valid_and_prepare_unprepare_round_trip_without_root() {
    let dir = workdir();
    let config = write(
        dir.path(),
        "host.toml",
        "node_name = \"node-a\"\n[[drivers]]\nname = \"example.dra.dev\"\nguest = \"unused.wasm\"\n[drivers.config]\ndevices = 130\ndeviceNodeHostPath = \"/dev/null\"\n[drivers.policy]\ndevice_nodes = [\"/dev/null\"]\n",
    );
    let config = config.to_str().unwrap();
    let example = guest_arg("example_driver.wasm");

    let out = guest_run(dir.path(), &[&example, "--config", config, "slices"]);
    assert!(out.status.success(), "{}", explain(&out));
    let slices = stdout_docs(&out);
    assert_eq!(slices.len(), 2, "130 devices are two slices: {slices:#?}");
    assert_eq!(slices[0]["spec"]["devices"].as_array().unwrap().len(), 128);
    assert_eq!(slices[1]["spec"]["pool"]["resourceSliceCount"], 2);
    assert_eq!(slices[0]["spec"]["nodeName"], "node-a");
    let printed = write(dir.path(), "slices.yaml", &String::from_utf8_lossy(&out.stdout));
    validate(&[printed]);

    let claim = claim_yaml(
        "shared",
        &uid(801),
        &result_yaml("example.dra.dev", "node-a", "gpu-1"),
        "      - source: FromClaim\n        requests: [dev]\n        opaque:\n          driver: example.dra.dev\n          parameters:\n            sharing:\n              strategy: TimeSlicing\n",
    );
    write(dir.path(), "claim.yaml", &claim);
    let state = ["--state-dir", "state"];
    let args = |step: &'static str| {
        [
            example.as_str(),
            "--config",
            config,
            state[0],
            state[1],
            step,
            "claim.yaml",
        ]
    };

    let out = guest_run(dir.path(), &args("prepare"));
    assert!(out.status.success(), "{}", explain(&out));
    let report = &stdout_docs(&out)[0];
    assert_eq!(report["verdict"], "Accepted", "{report:#?}");
    assert_eq!(report["claim"], "default/shared");
    let id = format!("k8s.example.dra.dev/device={}_gpu-1", uid(801));
    assert_eq!(report["devices"][0]["cdiDeviceIds"][0], id.as_str(), "{report:#?}");
    let edits = &report["cdiSpec"]["devices"][0]["containerEdits"];
    let env: Vec<&str> = edits["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"GPU_DEVICE_1_SHARING_STRATEGY=TimeSlicing"), "{env:?}");
    assert_eq!(edits["deviceNodes"][0]["hostPath"], "/dev/null");
    assert!(
        dir.path()
            .join("state/cdi")
            .join(report["cdiSpecFile"].as_str().unwrap())
            .is_file(),
        "the spec is where the runtime would read it, under the state dir"
    );

    let out = guest_run(dir.path(), &args("unprepare"));
    assert!(out.status.success(), "{}", explain(&out));
    let report = &stdout_docs(&out)[0];
    assert_eq!(
        (&report["checkpointed"], &report["result"]),
        (&Value::Bool(true), &Value::from("Unprepared"))
    );
    let out = guest_run(dir.path(), &args("unprepare"));
    assert_eq!(stdout_docs(&out)[0]["checkpointed"], false, "{}", explain(&out));
}

#[test]
fn prepare_prints_the_policy_verdict_and_status_devices() {
    let dir = workdir();
    let config = write(
        dir.path(),
        "host.toml",
        "[[drivers]]\nname = \"faulty.dra.dev\"\nguest = \"unused.wasm\"\n[drivers.config]\ndevices = 2\n",
    );
    let mut files = Vec::new();
    for (i, name) in ["escape-1", "status-1", "trap-1", "unallocated-1"].iter().enumerate() {
        let claim = claim_yaml(
            name,
            &uid(810 + i as u64),
            &result_yaml("faulty.dra.dev", "faulty", "dev-0"),
            "",
        );
        write(dir.path(), &format!("{name}.yaml"), &claim);
        files.push(format!("{name}.yaml"));
    }
    let faulty = guest_arg("faulty_driver.wasm");
    let mut args = vec![faulty.as_str(), "--config", config.to_str().unwrap(), "prepare"];
    args.extend(files.iter().map(String::as_str));
    let out = guest_run(dir.path(), &args);
    assert!(!out.status.success(), "claims were refused: {}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3 of 4 claims were not prepared"),
        "{}",
        explain(&out)
    );
    let reports = stdout_docs(&out);
    let by_name = |name: &str| {
        reports
            .iter()
            .find(|r| r["claim"] == format!("default/{name}"))
            .unwrap()
    };
    let escape = by_name("escape-1");
    assert_eq!(escape["verdict"], "Rejected", "{escape:#?}");
    assert!(escape["reason"].as_str().unwrap().contains("/etc"), "{escape:#?}");
    let unallocated = by_name("unallocated-1");
    assert_eq!(unallocated["verdict"], "Rejected");
    assert!(
        unallocated["reason"].as_str().unwrap().contains("not-allocated"),
        "{unallocated:#?}"
    );
    let trap = by_name("trap-1");
    assert_eq!(trap["verdict"], "Failed", "{trap:#?}");
    assert!(trap["reason"].as_str().unwrap().contains("trapped"), "{trap:#?}");
    let status = by_name("status-1");
    assert_eq!(status["verdict"], "Accepted", "{status:#?}");
    let entry = &status["statusDevices"][0];
    assert_eq!(entry["driver"], "faulty.dra.dev");
    assert_eq!(entry["conditions"][0]["type"], "Ready");
    assert_eq!(entry["networkData"]["ips"][0], "192.0.2.10/24", "{entry:#?}");
}

#[test]
fn events_reach_the_guest_through_the_hosts_routers() {
    let dir = workdir();
    gpus::write_gpus_file(&dir.path().join("gpus.json"), 2).unwrap();
    write(
        dir.path(),
        "gpu.toml",
        "[[drivers]]\nname = \"gpu.dra.dev\"\nguest = \"unused.wasm\"\ngrants = [\"nvml\"]\n[drivers.config]\ncdi = { mode = \"base-spec\", kind = \"nvidia.com/gpu\" }\n",
    );
    let ecc = format!("ecc={}", gpus::uuid(0));
    let gpu = guest_arg("gpu_driver.wasm");
    let out = guest_run(
        dir.path(),
        &[
            &gpu,
            "--config",
            "gpu.toml",
            "--gpus",
            "gpus.json",
            "events",
            "xid=1:79",
            "xid=0:13",
            &ecc,
        ],
    );
    assert!(out.status.success(), "{}", explain(&out));
    let docs = stdout_docs(&out);
    assert_eq!(docs[0]["delivered"], 1, "{docs:#?}");
    assert_eq!(docs[0]["changes"][0]["device"], "gpu-1");
    assert_eq!(docs[0]["changes"][0]["to"], "Unhealthy");
    assert!(docs[0]["changes"][0]["message"].as_str().unwrap().starts_with("Xid 79"));
    assert_eq!(
        docs[1]["reports"],
        serde_json::json!([]),
        "Xid 13 is an application error"
    );
    assert_eq!(docs[2]["changes"][0]["device"], "gpu-0", "{docs:#?}");

    // A network driver's parent link, with no root and no link created:
    // the loopback is a parent every node has.
    write(
        dir.path(),
        "net.toml",
        "[[drivers]]\nname = \"net.dra.dev\"\nguest = \"unused.wasm\"\ngrants = [\"net\"]\n[drivers.net]\nparents = [\"lo\"]\n[drivers.config]\nparents = [{ name = \"lo\", subnet = \"192.0.2.0/24\" }]\n",
    );
    let macvlan = guest_arg("macvlan_driver.wasm");
    let out = guest_run(
        dir.path(),
        &[&macvlan, "--config", "net.toml", "events", "link=lo:down", "link=lo:up"],
    );
    assert!(out.status.success(), "{}", explain(&out));
    let docs = stdout_docs(&out);
    assert_eq!(docs[0]["changes"][0]["device"], "lo", "{docs:#?}");
    assert_eq!(docs[0]["changes"][0]["message"], "parent link lo is down");
    assert_eq!(docs[1]["changes"][0]["to"], "Healthy", "{docs:#?}");
}

#[test]
fn bad_inputs_are_errors_naming_the_file_and_the_field() {
    let dir = workdir();
    write(
        dir.path(),
        "host.toml",
        "[[drivers]]\nname = \"example.dra.dev\"\nguest = \"unused.wasm\"\n[[drivers]]\nname = \"other.dra.dev\"\nguest = \"unused.wasm\"\n",
    );
    let example = guest_arg("example_driver.wasm");
    let fails = |args: &[&str], expected: &str| {
        let out = guest_run(dir.path(), args);
        assert!(!out.status.success(), "{args:?}: {}", explain(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in\n{}",
            explain(&out)
        );
    };
    fails(
        &[&example, "--config", "host.toml", "slices"],
        "configures 2 drivers: name the one",
    );
    fails(
        &[&example, "--config", "host.toml", "--driver", "nope.dra.dev", "slices"],
        "no driver named \"nope.dra.dev\"",
    );
    let config = ["--config", "host.toml", "--driver", "example.dra.dev"];
    let run = |rest: &[&str], expected: &str| {
        let mut args = vec![example.as_str()];
        args.extend(config);
        args.extend(rest);
        fails(&args, expected);
    };
    let allocated = result_yaml("example.dra.dev", "local-node", "gpu-0");
    write(
        dir.path(),
        "no-uid.yaml",
        &claim_yaml("c", &uid(1), &allocated, "").replace(&format!("  uid: {}\n", uid(1)), ""),
    );
    run(&["prepare", "no-uid.yaml"], "no-uid.yaml: metadata.uid: missing");
    write(
        dir.path(),
        "unallocated.yaml",
        claim_yaml("c", &uid(2), "", "").split("status:").next().unwrap(),
    );
    run(
        &["prepare", "unallocated.yaml"],
        "unallocated.yaml: status.allocation.devices.results: missing",
    );
    let elsewhere = result_yaml("other.example.com", "p", "d");
    write(dir.path(), "elsewhere.yaml", &claim_yaml("c", &uid(3), &elsewhere, ""));
    run(
        &["prepare", "elsewhere.yaml"],
        "elsewhere.yaml: status.allocation.devices.results: no result is for driver example.dra.dev",
    );
    write(
        dir.path(),
        "twice.yaml",
        &format!(
            "{}---\n{}",
            claim_yaml("a", &uid(4), &allocated, ""),
            claim_yaml("b", &uid(4), &allocated, "")
        ),
    );
    run(&["prepare", "twice.yaml"], "twice.yaml: document 2: metadata.uid");
    run(&["prepare", "missing.yaml"], "missing.yaml: cannot read");
    run(&["events", "xid=0:79"], "driver example.dra.dev is not granted nvml");
    run(&["events", "xid=0"], "event \"xid=0\": no ':'");
    run(
        &["--gpus", "gpus.json", "slices"],
        "--gpus: driver example.dra.dev is not granted nvml",
    );
    write(
        dir.path(),
        "bad.toml",
        "[[drivers]]\nname = \"example.dra.dev\"\nguest = \"g.wasm\"\ngrants = [\"disk\"]\n",
    );
    fails(&[&example, "--config", "bad.toml", "slices"], "bad.toml");
}
