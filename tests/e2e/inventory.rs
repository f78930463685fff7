//! Issue 13, part 3: an inventory the API server would reject is caught
//! before it is published. `guest validate` and `guest run slices` run
//! exactly the publisher's checks and fail naming each bad device; the
//! publisher publishes the valid devices and reports the invalid ones (log,
//! metric, Event) instead of publishing nothing.

use crate::common::*;
use dra_test_support::host::{DriverSpec, HostEnv, http_get};
use serde_json::Value;

const FAULTY: &str = "faulty.dra.dev";

/// What each bad device of the `invalid` inventory attack must be reported with.
fn bad_devices() -> [(String, &'static str); 5] {
    [
        ("Dev-Upper".to_owned(), "DNS label"),
        ("d".repeat(64), "DNS label"),
        ("dev-0".to_owned(), "twice"),
        ("many-attributes".to_owned(), "at most 32"),
        ("big-value".to_owned(), "longer than 64"),
    ]
}

fn hostile() -> DriverSpec {
    DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 2\ninventory = \"invalid\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_validate_fails_naming_each_device_the_publisher_would_refuse() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    env.write_config(&[hostile()], "").unwrap();
    let out = std::process::Command::new(binary())
        .args(["guest", "validate", "--config"])
        .arg(&env.config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "validate must fail; stderr:\n{stderr}");
    for (device, why) in bad_devices() {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("device \"{device}\"")) && l.contains(why))
            .unwrap_or_else(|| panic!("no line names {device:?} with {why:?}:\n{stderr}"));
        assert!(line.contains("pool \"faulty\""), "{line}");
    }
    assert!(stderr.contains("5 devices"), "{stderr}");
    assert!(
        stderr.len() < 16 << 10,
        "the 1 MB value is not echoed: {} bytes",
        stderr.len()
    );

    // The valid inventory of the same guest passes.
    env.write_config(
        &[DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 2")],
        "",
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["guest", "validate", "--config"])
        .arg(&env.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn guest_run_slices_prints_the_valid_devices_and_names_the_others_as_validate_does() {
    let env = HostEnv::new(&cache_dir()).unwrap();
    env.write_config(&[hostile()], "").unwrap();
    let config = env.config_path.to_str().unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let faulty = guest("faulty_driver.wasm");
    let faulty = faulty.to_str().unwrap();
    let run = cli(&["guest", "run", faulty, "--config", config, "--node", "node-a", "slices"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "slices must fail\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // What the publisher would write: the valid devices, each once.
    let slices: Vec<Value> = serde_saphyr::from_multiple(&stdout).unwrap_or_else(|e| panic!("{e}:\n{stdout}"));
    assert_eq!(slices.len(), 1, "{stdout}");
    assert_eq!(slices[0]["spec"]["driver"], FAULTY);
    let names: Vec<&str> = slices[0]["spec"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev-0", "dev-1"], "{stdout}");
    assert_eq!(
        slices[0]["spec"]["devices"][0]["attributes"]["uuid"]["string"],
        "FAULTY-0"
    );

    // The same report as `guest validate`: one line per bad device, and the
    // count in the error the command exits with.
    let named = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter(|l| l.starts_with(&format!("driver {FAULTY}: pool ")))
            .map(str::to_owned)
            .collect()
    };
    let validate = cli(&["guest", "validate", "--config", config]);
    assert!(!validate.status.success());
    let validate_stderr = String::from_utf8_lossy(&validate.stderr);
    let from_run = named(&stderr);
    assert_eq!(from_run, named(&validate_stderr), "stderr of guest run:\n{stderr}");
    assert_eq!(from_run.len(), bad_devices().len(), "{stderr}");
    let summary = format!("driver {FAULTY}: 5 devices of the inventory would not be published");
    assert!(stderr.contains(&summary), "{stderr}");
    assert!(validate_stderr.contains(&summary), "{validate_stderr}");
    for (device, why) in bad_devices() {
        assert!(
            from_run
                .iter()
                .any(|l| l.contains(&format!("pool \"faulty\", device \"{device}\"")) && l.contains(why)),
            "no line names {device:?} with {why:?}:\n{stderr}"
        );
    }
    assert!(
        stderr.len() < 16 << 10,
        "the 1 MB value is not echoed: {} bytes",
        stderr.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_valid_devices_are_published_and_the_invalid_ones_reported() {
    // The real API server (tests/k8s): what the host leaves in must be what it accepts.
    let cp = control_plane().await;
    let mut metrics = 0;
    let n = cluster_node(cp, "e2e-invalid-devices", |env| {
        metrics = env.enable_metrics().unwrap();
        (vec![hostile()], String::new())
    })
    .await;
    let node = &n.node;
    let slice = eventually("the faulty driver's slice", node, || {
        slices_of(cp, FAULTY, &n.name).pop()
    })
    .await;
    let names: Vec<&str> = slice["spec"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev-0", "dev-1"], "the valid devices, each once");
    assert_eq!(slice["spec"]["devices"][0]["attributes"]["uuid"]["string"], "FAULTY-0");

    let event: Value = eventually("an InvalidDevices event", node, || {
        let events = cp.get(&["events", "-n", "default"]).ok()?;
        events["items"]
            .as_array()?
            .iter()
            .find(|e| e["reason"] == "InvalidDevices" && e["involvedObject"]["name"] == n.name.as_str())
            .cloned()
    })
    .await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["kind"], "Node");
    assert_eq!(event["involvedObject"]["uid"], n.uid.as_str());
    let message = event["message"].as_str().unwrap();
    assert!(message.contains(FAULTY) && message.contains("5 devices"), "{message}");
    assert!(message.contains("\"Dev-Upper\""), "{message}");

    let text = http_get(metrics, "/metrics").await.unwrap();
    assert!(
        text.contains(&format!("dra_host_inventory_invalid_devices{{driver=\"{FAULTY}\"}} 5")),
        "{text}"
    );
    let log = node.host.log();
    for (device, why) in bad_devices() {
        assert!(
            log.lines().any(|l| l.contains(&device) && l.contains(why)),
            "the log names {device:?}:\n{log}"
        );
    }
}
