//! The Helm chart (`deploy/chart/dra-wasm-host`) with real Helm v4.3.2
//! (`tests/helm/`): linted, rendered with the default values and with each
//! example values file, every object validated against the 1.37 schemas,
//! every rendered `host.toml` loaded by the host's own config code, and the
//! defects an operator found in the old plain manifests checked where a
//! rendering shows them. Installing into the real API server, and a host
//! started from the installed config, are in tests/cluster/.

use crate::common::*;
use dra_test_support::helm::{self, all_of, find};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Each rendering the chart supports out of the box: the default values and
/// each example, as (what, helm arguments).
fn renderings() -> Vec<(String, Vec<String>)> {
    let mut all = vec![("default values".to_owned(), vec![])];
    for f in helm::example_values() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        all.push((
            format!("examples/{name}"),
            vec!["-f".to_owned(), f.display().to_string()],
        ));
    }
    assert!(
        all.len() >= 4,
        "the default and the gpu, macvlan and two-drivers examples: {all:?}"
    );
    all
}

fn render(args: &[String]) -> Vec<Value> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm::template(&args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Each rendered host: (DaemonSet, its host.toml loaded by the host's config code).
fn hosts(objects: &[Value]) -> Vec<(Value, dra_wasm_host::config::Config)> {
    let dir = tempfile::tempdir().unwrap();
    all_of(objects, "DaemonSet")
        .into_iter()
        .map(|ds| {
            let config_map = ds["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "config")
                .and_then(|v| v["configMap"]["name"].as_str())
                .expect("the config volume");
            let cm = find(objects, "ConfigMap", config_map).unwrap_or_else(|| panic!("ConfigMap {config_map}"));
            let text = cm["data"]["host.toml"].as_str().expect("host.toml");
            let path = dir.path().join(format!("{config_map}.toml"));
            std::fs::write(&path, text).unwrap();
            let config = dra_wasm_host::config::Config::load(&path)
                .unwrap_or_else(|e| panic!("{config_map}: the host refuses its host.toml: {e}\n{text}"));
            (ds.clone(), config)
        })
        .collect()
}

fn container<'a>(ds: &'a Value, name: &str) -> &'a Value {
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name} in {}", ds["metadata"]["name"]))
}

#[test]
fn the_chart_lints_strictly_with_the_default_values_and_each_example() {
    let chart = helm::chart_dir();
    for (what, args) in renderings() {
        let mut all = vec!["lint", "--strict", chart.to_str().unwrap()];
        all.extend(args.iter().map(String::as_str));
        helm::run(&all, None).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    }
}

#[test]
fn every_rendered_object_is_valid_kubernetes_1_37_and_every_host_toml_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![];
    for (what, args) in renderings() {
        let objects = render(&args);
        for kind in [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ResourceQuota",
            "DaemonSet",
            "ConfigMap",
            "DeviceClass",
            "Service",
        ] {
            assert!(!all_of(&objects, kind).is_empty(), "{what}: no {kind}");
        }
        for (i, o) in objects.iter().enumerate() {
            let path = dir.path().join(format!("{}-{i}.json", what.replace('/', "-")));
            std::fs::write(&path, serde_json::to_vec_pretty(o).unwrap()).unwrap();
            files.push(path);
        }
        // Every host's config loads, and names guests the project builds
        // under the names the guests ConfigMap gets (`guest configmap` keys
        // are the file names).
        for (ds, config) in hosts(&objects) {
            for d in &config.drivers {
                let file = d.guest.file_name().unwrap();
                assert_eq!(
                    d.guest.parent(),
                    Some(Path::new("/etc/dra-wasm-host/guests")),
                    "{what}: {}",
                    d.name
                );
                assert!(
                    guest(file.to_str().unwrap()).exists(),
                    "{what}: {} names guest {file:?}, which no guest build produces",
                    ds["metadata"]["name"]
                );
            }
        }
    }
    crate::manifests::validate(&files);
}

/// Defects 3 and 12: the ClusterRole lists every driver the hosts serve,
/// and grants exactly the requests the host's code makes.
#[test]
fn the_cluster_role_names_every_driver_and_grants_only_what_the_host_calls() {
    for (what, args) in renderings() {
        let objects = render(&args);
        let drivers: BTreeSet<String> = hosts(&objects)
            .iter()
            .flat_map(|(_, c)| c.drivers.iter().map(|d| d.name.clone()))
            .collect();
        let role = find(&objects, "ClusterRole", "dra-wasm-host").expect("the ClusterRole");
        let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for rule in role["rules"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                let verbs = grants.entry(r.as_str().unwrap().to_owned()).or_default();
                verbs.extend(
                    rule["verbs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned()),
                );
                if r == "resourceclaims/driver" {
                    let names: BTreeSet<String> = rule["resourceNames"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|n| n.as_str().unwrap().to_owned())
                        .collect();
                    assert_eq!(names, drivers, "{what}: resourceclaims/driver names");
                }
            }
        }
        // host/src/kube/: api.rs (claims get, status replace), publisher.rs
        // (slices list, watch, create, replace, delete; node get), events.rs
        // (events create and patch; node get).
        let expected: BTreeMap<String, BTreeSet<String>> = [
            ("resourceclaims", &["get"][..]),
            ("resourceclaims/status", &["update"]),
            ("resourceclaims/driver", &["associated-node:update"]),
            ("resourceslices", &["list", "watch", "create", "update", "delete"]),
            ("nodes", &["get"]),
            ("events", &["create", "patch"]),
        ]
        .into_iter()
        .map(|(r, v)| (r.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
        .collect();
        assert_eq!(grants, expected, "{what}");
    }
}

/// Defects 1, 2 and 7: a hostNetwork host declares no container ports (they
/// would become hostPorts the surge pod can never get), its probe server
/// listens on every address (the kubelet probes the node's IP), and every
/// host has startup, readiness and liveness probes on that server with a
/// timeout that covers its check (2 s per driver).
#[test]
fn probes_reach_every_host_and_host_network_hosts_claim_no_host_ports() {
    let mut host_network = 0;
    for (what, args) in renderings() {
        let objects = render(&args);
        for (ds, config) in hosts(&objects) {
            let name = ds["metadata"]["name"].as_str().unwrap();
            let pod = &ds["spec"]["template"]["spec"];
            let host = container(&ds, "host");
            let health: SocketAddr = config.healthcheck_addr.expect("a health check address");
            let metrics: SocketAddr = config.metrics_addr.expect("a metrics address");
            for addr in [health, metrics] {
                assert!(
                    addr.ip().is_unspecified(),
                    "{what}/{name}: {addr} is not reachable from the kubelet"
                );
            }
            if pod["hostNetwork"] == true {
                host_network += 1;
                for c in pod["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .chain(pod["initContainers"].as_array().map(Vec::as_slice).unwrap_or_default())
                {
                    assert!(c["ports"].is_null(), "{what}/{name}: ports on a hostNetwork pod: {c}");
                }
            }
            let min_timeout = 2 * config.drivers.len() as u64 + 1;
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let p = &host[probe];
                if pod["hostNetwork"] == true {
                    // The other pod of an update may hold the port: the
                    // probe command checks this pod's own sockets.
                    assert_eq!(
                        p["exec"]["command"],
                        serde_json::json!([
                            "/usr/bin/dra-wasm-host",
                            "probe",
                            "--config=/etc/dra-wasm-host/host.toml"
                        ]),
                        "{what}/{name}: {probe}"
                    );
                } else {
                    assert_eq!(p["grpc"]["port"], health.port(), "{what}/{name}: {probe}");
                    assert_eq!(p["grpc"]["service"], "liveness", "{what}/{name}: {probe}");
                }
                assert!(
                    p["timeoutSeconds"].as_u64().unwrap_or(1) >= min_timeout,
                    "{what}/{name}: {probe} times out before the check of {} driver(s) can: {p}",
                    config.drivers.len()
                );
            }
            let startup = &host["startupProbe"];
            let budget = startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
            assert!(budget >= 120, "{what}/{name}: {budget} s to compile and register");
        }
    }
    assert!(host_network > 0, "no example has a hostNetwork host");
}

/// Defect 8: surge updates need the rolling-update registration of kubelet
/// 1.33; without it the old pod stops first and no pod UID is passed.
#[test]
fn seamless_updates_are_the_default_and_can_be_turned_off_for_older_kubelets() {
    for (seamless, set) in [(true, None), (false, Some("rollingUpdate.seamless=false"))] {
        let args: Vec<String> = set.iter().flat_map(|s| ["--set".to_owned(), (*s).to_owned()]).collect();
        for (ds, _) in hosts(&render(&args)) {
            let update = &ds["spec"]["updateStrategy"]["rollingUpdate"];
            let args = container(&ds, "host")["args"].to_string();
            let with_uid = args.contains("--rolling-update-uid=$(POD_UID)");
            // The probe command finds this pod's sockets by $POD_UID: set
            // exactly when the host names its sockets with it.
            let pod_uid_env = container(&ds, "host")["env"].to_string().contains("\"POD_UID\"");
            if seamless {
                assert_eq!(
                    (update["maxSurge"].as_i64(), update["maxUnavailable"].as_i64()),
                    (Some(1), Some(0))
                );
                assert!(with_uid && pod_uid_env, "{args}");
            } else {
                assert_eq!(
                    (update["maxSurge"].as_i64(), update["maxUnavailable"].as_i64()),
                    (Some(0), Some(1))
                );
                assert!(!with_uid && !pod_uid_env, "{args}");
            }
        }
    }
}

/// Defects 6 and 11: the GPU host tolerates the usual GPU taint, runs on
/// Linux nodes, mounts the NVIDIA driver root where host.toml's
/// `[nvml] driver_root` says; a driver granted NVML without it is refused.
#[test]
fn gpu_hosts_tolerate_gpu_taints_and_mount_the_driver_root_nvml_loads_from() {
    let gpu = helm::chart_dir().join("examples/gpu.yaml");
    let objects = render(&["-f".to_owned(), gpu.display().to_string()]);
    let (ds, config) = hosts(&objects).remove(0);
    let pod = &ds["spec"]["template"]["spec"];
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "nvidia.com/gpu" && t["operator"] == "Exists"),
        "{pod}"
    );
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    let root = config.nvml.driver_root.clone();
    assert_eq!(root, PathBuf::from("/run/nvidia/driver"));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["hostPath"]["path"] == root.to_str().unwrap())
        .unwrap_or_else(|| panic!("no hostPath volume for {}: {pod}", root.display()));
    let mount = container(&ds, "host")["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the driver root's mount");
    assert_eq!(mount["mountPath"], root.to_str().unwrap());
    assert_eq!(mount["readOnly"], true);

    let err = match helm::template_yaml(&["-f", gpu.to_str().unwrap(), "--set", "hosts[0].nvml.enabled=false"]) {
        Ok(_) => panic!("rendered a driver granted nvml on a host without NVML"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("granted \"nvml\" but nvml.enabled is false"), "{err}");
}

/// Memory requests and limits follow docs/operations.md's formula (40 MiB +
/// Σ 2 × N × L for the limit), so a guest's spike traps the call instead of
/// getting the node agent killed; explicit resources win.
#[test]
fn memory_follows_the_sizing_formula_unless_set() {
    for (what, args) in renderings() {
        for (ds, config) in hosts(&render(&args)) {
            let r = &config.runtime;
            let n = config.drivers.len() as u64;
            let limit = 40 + n * 2 * r.max_instances as u64 * r.memory_limit_mib;
            let request = 40 + n * r.max_instances as u64 * r.memory_limit_mib.min(8);
            let resources = &container(&ds, "host")["resources"];
            assert_eq!(resources["limits"]["memory"], format!("{limit}Mi"), "{what}");
            assert_eq!(resources["requests"]["memory"], format!("{request}Mi"), "{what}");
        }
    }
    let objects = render(&[
        "--set".to_owned(),
        "hostDefaults.resources.limits.memory=1Gi".to_owned(),
    ]);
    let (ds, _) = hosts(&objects).remove(0);
    assert_eq!(container(&ds, "host")["resources"]["limits"]["memory"], "1Gi");
}

/// Defects 13 and 14: system-node-critical comes with the quota some
/// clusters demand for it outside kube-system; the compile cache survives
/// a pod (hostPath); the admission policy's message has no stray quote.
#[test]
fn priority_quota_node_cache_and_admission_message() {
    let objects = render(&[]);
    let quota = find(&objects, "ResourceQuota", "dra-wasm-host-critical-pods").expect("the quota");
    assert_eq!(
        quota["spec"]["scopeSelector"]["matchExpressions"][0]["values"][0],
        "system-node-critical"
    );
    let (ds, _) = hosts(&objects).remove(0);
    assert_eq!(
        ds["spec"]["template"]["spec"]["priorityClassName"],
        "system-node-critical"
    );
    let cache = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "compile-cache")
        .unwrap();
    assert!(cache["hostPath"]["path"].is_string(), "{cache}");
    let policy = find(&objects, "ValidatingAdmissionPolicy", "dra-wasm-host-resourceslices").unwrap();
    let message = policy["spec"]["validations"][1]["messageExpression"].as_str().unwrap();
    assert!(message.trim_end().ends_with("variables.objectNodeName"), "{message}");
}

/// Guests given to the chart as files (`--set-file`, base64) become the
/// guests ConfigMap byte for byte; guests too large for a Helm release are
/// refused with what to do instead.
#[test]
fn guests_from_files_become_the_guests_configmap_and_too_large_ones_are_refused() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(guest("example_driver.wasm")).unwrap();
    let file = dir.path().join("example.b64");
    std::fs::write(&file, b64.encode(&wasm)).unwrap();
    let set = format!("guests.files.example_driver\\.wasm={}", file.display());
    let objects = helm::template(&["--set-file", &set]).unwrap_or_else(|e| panic!("{e:#}"));
    let cm = find(&objects, "ConfigMap", "dra-wasm-host-guests").expect("the guests ConfigMap");
    let data = cm["binaryData"]["example_driver.wasm"].as_str().unwrap();
    assert_eq!(b64.decode(data).unwrap(), wasm);

    let big = dir.path().join("big.b64");
    std::fs::write(&big, b64.encode(vec![0u8; 600 << 10])).unwrap();
    let err = helm::template_yaml(&["--set-file", &format!("guests.files.big\\.wasm={}", big.display())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("guests.configMap") && err.contains("1 MiB"), "{err}");
}

/// A typo in the values fails the install instead of being ignored.
#[test]
fn unknown_values_are_refused() {
    let err = helm::template_yaml(&["--set", "hostDefaults.nodeSelectr.a=b"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nodeSelectr"), "{err}");
}

/// Defect 4: the guests ConfigMap is larger than client-side apply's
/// 256 KiB annotation, so every command that applies it is server-side.
#[test]
fn the_docs_apply_the_guests_configmap_server_side() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docs).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            // A `guest configmap` pipeline continues onto the next lines.
            if line.contains("guest configmap") && !line.trim_start().starts_with('#') {
                let command: String = lines[i..(i + 3).min(lines.len())].join(" ");
                if command.contains("kubectl apply") {
                    checked += 1;
                    assert!(
                        command.contains("--server-side"),
                        "{}:{}: the guests ConfigMap needs server-side apply: {command}",
                        entry.path().display(),
                        i + 1
                    );
                }
            }
        }
    }
    assert!(
        checked >= 2,
        "the install and upgrade commands in operations.md and upgrades.md"
    );
}
