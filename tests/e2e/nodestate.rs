//! Node state and operations (issue 14), through the real binary: unreadable
//! checkpoint records, reboots (a faked boot ID), Kubernetes Events for
//! failed claim operations, and the kubelet helper's gRPC duration metric.
//!
//! Every test here runs a host on its own Node of the real control plane
//! (tests/k8s), with claims allocated by hand (`ControlPlane::put_claim`),
//! and reads Events and the host's writes (the audit log) from the API
//! server, and the host's metrics endpoint: where an operator looks.
//!
//! The tonic test kubelet calls the host: claims allocated by hand and reserved
//! for no Pod, faked reboots, and failed operations repeated on cue to count
//! the Events they leave; calls the kubelet's code does not send in that order.

use crate::common::*;
use dra_test_support::claims::Claim;
use dra_test_support::controlplane::ControlPlane;
use dra_test_support::host::{DriverSpec, http_get};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const FAULTY: &str = "faulty.dra.dev";
/// The test-only override of `/proc/sys/kernel/random/boot_id`.
const BOOT_ENV: &str = "DRA_TEST_BOOT_ID_FILE";

/// A host on its own Node; its claims live in the namespace of the same name.
struct ApiNode {
    cp: &'static ControlPlane,
    name: String,
    uid: String,
    node: Node,
    metrics_port: u16,
    boot_file: PathBuf,
}

impl ApiNode {
    async fn start(name: &str, drivers: Vec<DriverSpec>, boot: &str) -> ApiNode {
        let cp = control_plane().await;
        let mut metrics_port = 0;
        let mut boot_file = PathBuf::new();
        let n = cluster_node(cp, name, |env| {
            metrics_port = env.enable_metrics().unwrap();
            boot_file = env.dir().join("boot_id");
            std::fs::write(&boot_file, format!("{boot}\n")).unwrap();
            env.env.push((BOOT_ENV.into(), boot_file.display().to_string()));
            (drivers, String::new())
        })
        .await;
        ApiNode {
            cp,
            name: n.name,
            uid: n.uid,
            node: n.node,
            metrics_port,
            boot_file,
        }
    }

    /// Allocate `claims` on this node (in the API server), each with the
    /// UID the API server gives it.
    fn put(&self, claims: Vec<Claim>) -> Vec<Claim> {
        claims
            .iter()
            .map(|c| self.cp.put_claim(c, &self.name).unwrap())
            .collect()
    }

    /// A claim of this test's namespace.
    fn claim(&self, name: &str) -> Claim {
        Claim::new(&self.name, name, "")
    }

    /// The node reboots: a new boot ID, and `/var/run/cdi` (a tmpfs) is empty.
    fn reboot(&self, boot: &str) {
        std::fs::write(&self.boot_file, format!("{boot}\n")).unwrap();
        for entry in std::fs::read_dir(&self.node.env.cdi_dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }

    async fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").await.unwrap()
    }

    /// Stop the host, rewrite its config with `drivers`, start it again and
    /// wait for the registration of `drivers[0]`.
    async fn restart_with(&mut self, drivers: &[DriverSpec]) {
        self.node.host.terminate(Duration::from_secs(20)).unwrap();
        self.node.env.write_config(drivers, "").unwrap();
        self.node.host = self.node.env.start(&binary()).unwrap();
        self.node.plugin = self
            .node
            .kubelet
            .wait_for_plugin(&drivers[0].name, START_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", self.node.host.log()));
    }

    /// The Events this node's host reported, with `reason`.
    fn events_with_reason(&self, reason: &str) -> Vec<Value> {
        let list = self.cp.get(&["events", "-A"]).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == reason && e["source"]["host"] == self.name.as_str())
            .cloned()
            .collect()
    }

    /// The host's writes of `resource`, by verb, from the audit log.
    fn writes_of(&self, resource: &str) -> BTreeMap<String, usize> {
        let mut by_verb = BTreeMap::new();
        for r in self.cp.requests_of(&self.name) {
            if r.is_write() && r.resource == resource {
                *by_verb.entry(r.verb).or_default() += 1;
            }
        }
        by_verb
    }
}

fn example(devices: u32) -> DriverSpec {
    DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config(&format!("devices = {devices}"))
}

fn faulty(extra_config: &str) -> DriverSpec {
    DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config(&format!("devices = 2\n{extra_config}"))
}

/// The value of one sample line of the Prometheus text format.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn checkpoint_dir(node: &Node, driver: &str) -> PathBuf {
    node.env.kubelet_root.join("plugins").join(driver).join("claims")
}

fn record_path(node: &Node, driver: &str, claim_uid: &str) -> PathBuf {
    checkpoint_dir(node, driver).join(format!("{claim_uid}.json"))
}

/// Check Events the host created against the upstream 1.37 schema.
fn validate_events(events: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let path = dir.path().join(format!("event-{i}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(e).unwrap()).unwrap();
            path
        })
        .collect();
    crate::manifests::validate(&files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_checkpoint_records_are_quarantined_and_the_rest_is_served() {
    let mut n = ApiNode::start("ns-quarantine", vec![example(8)], "boot-1").await;
    let claims = n.put(
        (0..7u64)
            .map(|i| {
                n.claim(&format!("c{i}"))
                    .device(DRIVER, &n.name, &format!("gpu-{i}"), "gpu")
            })
            .collect(),
    );
    let uid = |i: u64| claims[i as usize].uid.clone();
    let refs: Vec<_> = claims.iter().map(Claim::reference).collect();
    let before = n.node.plugin.prepare(&refs).await.unwrap();
    assert!(before.values().all(|a| a.error.is_empty()), "{before:?}");
    n.node.host.terminate(Duration::from_secs(20)).unwrap();

    // Damage six of the seven records, each in a way seen on real nodes.
    let dir = checkpoint_dir(&n.node, DRIVER);
    let path = |i: u64| dir.join(format!("{}.json", uid(i)));
    let good = std::fs::read(path(4)).unwrap();
    let mut damaged: BTreeMap<u64, (Vec<u8>, &str)> = BTreeMap::new();
    damaged.insert(1, (b"\x00\x01 not a checkpoint at all".to_vec(), "corrupt"));
    let original = std::fs::read(path(2)).unwrap();
    // Records are padded with spaces to whole blocks: cut the JSON itself.
    let json = original.trim_ascii_end();
    damaged.insert(2, (json[..json.len() / 2].to_vec(), "corrupt")); // truncated
    damaged.insert(3, (Vec::new(), "corrupt")); // zero-length
    let text = String::from_utf8(good).unwrap();
    assert!(text.contains("gpu-4"));
    damaged.insert(4, (text.replace("gpu-4", "gpu-7").into_bytes(), "corrupt")); // checksum no longer matches
    for (i, field, value) in [
        (5, "driver", Value::from("other.dra.dev")),
        (6, "version", Value::from(99)),
    ] {
        let mut envelope: Value = serde_json::from_slice(&std::fs::read(path(i)).unwrap()).unwrap();
        envelope[field] = value;
        damaged.insert(i, (serde_json::to_vec(&envelope).unwrap(), "foreign"));
    }
    for (i, (bytes, _)) in &damaged {
        std::fs::write(path(*i), bytes).unwrap();
    }

    // The host starts anyway and serves the readable claim from its record.
    n.node.restart().await;
    let again = n.node.plugin.prepare(&[refs[0].clone()]).await.unwrap();
    assert_eq!(again[&uid(0)], before[&uid(0)]);

    // Each unreadable record was moved, byte for byte, to the quarantine
    // folder beside the checkpoint; none was deleted or left in place.
    let quarantine = checkpoint_dir(&n.node, DRIVER).with_file_name("claims-quarantine");
    let mut moved: Vec<(String, Vec<u8>)> = std::fs::read_dir(&quarantine)
        .unwrap_or_else(|e| panic!("{}: {e}\nhost log:\n{}", quarantine.display(), n.node.host.log()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    moved.sort();
    assert_eq!(moved.len(), 6, "{moved:?}");
    for (i, (bytes, _)) in &damaged {
        let name = format!("{}.json", uid(*i));
        let (_, content) = moved
            .iter()
            .find(|(n, _)| n.starts_with(&name))
            .unwrap_or_else(|| panic!("{name} not quarantined: {moved:?}"));
        assert_eq!(content, bytes, "{name} changed on its way to quarantine");
        assert!(!path(*i).exists(), "{name} still in the checkpoint");
        assert!(n.node.host.log().contains(&name), "the log names {name}");
    }

    // Reported: a metric by reason, and a Warning Event on the Node each.
    let text = n.metrics().await;
    for (reason, count) in [("corrupt", 4.0), ("foreign", 2.0)] {
        let series = format!("dra_host_checkpoint_quarantined_total{{driver=\"{DRIVER}\",reason=\"{reason}\"}}");
        assert_eq!(sample(&text, &series), Some(count), "{series} in\n{text}");
    }
    let events = eventually("six CheckpointQuarantined events", &n.node, || {
        let e = n.events_with_reason("CheckpointQuarantined");
        (e.len() == 6).then_some(e)
    })
    .await;
    for e in &events {
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["involvedObject"]["kind"], "Node");
        assert_eq!(e["involvedObject"]["name"], n.name.as_str());
        assert_eq!(e["involvedObject"]["uid"], n.uid.as_str());
        assert!(e["message"].as_str().unwrap().contains("claims-quarantine"), "{e}");
    }
    validate_events(&events);

    // A quarantined claim is handled safely: prepare runs the guest again
    // and writes a new record; unprepare runs the guest's unprepare with
    // empty state and removes the CDI spec.
    let answer = n.node.plugin.prepare(&[refs[1].clone()]).await.unwrap();
    assert_eq!(answer[&uid(1)], before[&uid(1)]);
    assert_eq!(read_record(&path(1))["claim"]["uid"], uid(1));
    let spec = n.node.cdi_spec_path(&uid(5));
    assert!(spec.exists(), "the CDI spec prepared before is still there");
    let errors = n.node.plugin.unprepare(&[refs[5].clone()]).await.unwrap();
    assert_eq!(errors[&uid(5)], "");
    assert!(!spec.exists());

    let text = n.metrics().await;
    assert_eq!(
        sample(&text, &format!("dra_host_prepared_claims{{driver=\"{DRIVER}\"}}")),
        Some(2.0),
        "c0 and the re-prepared c1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_every_claim_is_prepared_again_before_the_socket_is_served() {
    let mut n = ApiNode::start("ns-reboot", vec![example(4)], "boot-1").await;
    let kept = n.claim("kept").device(DRIVER, &n.name, "gpu-0", "gpu");
    let gone = n.claim("gone").device(DRIVER, &n.name, "gpu-2", "gpu").opaque_config(
        "FromClaim",
        DRIVER,
        &[],
        serde_json::json!({"sharing": {"strategy": "TimeSlicing"}}),
    );
    let [kept, gone] = <[Claim; 2]>::try_from(n.put(vec![kept, gone])).unwrap();
    let refs = [kept.reference(), gone.reference()];
    let before = n.node.plugin.prepare(&refs).await.unwrap();
    assert!(before.values().all(|a| a.error.is_empty()), "{before:?}");
    n.node.host.terminate(Duration::from_secs(20)).unwrap();

    // The node reboots. While it was down, the API server lost track of one
    // claim object (its pod still runs): the host must use what it recorded.
    n.reboot("boot-2");
    n.cp.delete_claim(&n.name, "gone").unwrap();
    n.node.restart().await;

    // Registration has happened; the kubelet has not asked for anything but
    // the plugin already ran the guest's prepare for both claims.
    let prepares = format!("dra_host_guest_calls_total{{driver=\"{DRIVER}\",export=\"prepare\",outcome=\"ok\"}}");
    let text = n.metrics().await;
    assert_eq!(
        sample(&text, &prepares),
        Some(2.0),
        "{prepares}; host log:\n{}",
        n.node.host.log()
    );
    let series = format!("dra_host_claims_reprepared_total{{driver=\"{DRIVER}\",result=\"ok\"}}");
    assert_eq!(sample(&text, &series), Some(2.0), "{series}");
    let log = n.node.host.log();
    let reprepared = log.find("re-prepared after a reboot").expect("the summary line");
    let serving = log.find("plugin sockets open").expect("sockets open");
    assert!(reprepared < serving, "re-prepared before serving:\n{log}");

    // CDI specs are back (from the guest, not from the checkpoint copy) and
    // the recorded allocation carried the opaque config of the lost claim.
    let spec = std::fs::read_to_string(n.node.cdi_spec_path(&gone.uid)).unwrap();
    assert!(spec.contains("GPU_DEVICE_2_SHARING_STRATEGY=TimeSlicing"), "{spec}");
    assert!(n.node.cdi_spec_path(&kept.uid).exists());
    for u in [&kept.uid, &gone.uid] {
        assert_eq!(read_record(&record_path(&n.node, DRIVER, u))["bootId"], "boot-2");
    }
    let event = eventually("a ClaimsRePrepared event", &n.node, || {
        n.events_with_reason("ClaimsRePrepared").pop()
    })
    .await;
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["involvedObject"]["kind"], "Node");
    assert!(event["message"].as_str().unwrap().contains("2 of 2"), "{event}");

    // The kubelet's own repeat gets the same devices, from the checkpoint.
    let after = n.node.plugin.prepare(&refs).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(sample(&n.metrics().await, &prepares), Some(2.0));

    // A restart within the same boot prepares nothing again.
    n.node.host.terminate(Duration::from_secs(20)).unwrap();
    n.node.restart().await;
    assert_eq!(sample(&n.metrics().await, &prepares), None, "no guest prepare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_re_prepare_is_reported_and_tried_again() {
    let mut n = ApiNode::start("ns-re-prepare", vec![faulty("")], "boot-1").await;
    let claim = n
        .put(vec![n.claim("survivor").device(FAULTY, "faulty", "dev-0", "dev")])
        .remove(0);
    let uid = claim.uid.clone();
    let before = n.node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(before[&uid].error, "");

    // Reboot into a guest build whose prepare traps.
    n.reboot("boot-2");
    n.restart_with(&[faulty("faultVersion = \"0.1.0\"\nfault = \"prepare-trap\"")])
        .await;
    let text = n.metrics().await;
    let failed = format!("dra_host_claims_reprepared_total{{driver=\"{FAULTY}\",result=\"error\"}}");
    assert_eq!(sample(&text, &failed), Some(1.0), "{failed} in\n{text}");
    let event = eventually("a ClaimRePrepareFailed event", &n.node, || {
        n.events_with_reason("ClaimRePrepareFailed").pop()
    })
    .await;
    assert_eq!(event["type"], "Warning");
    assert!(event["message"].as_str().unwrap().contains(&uid), "{event}");
    // The old record is kept (unprepare still has the guest's state)...
    let path = record_path(&n.node, FAULTY, &uid);
    assert_eq!(read_record(&path)["bootId"], "boot-1");
    // ...its pre-reboot CDI spec is not put back for containers to use...
    let spec = n.node.env.cdi_dir.join(format!("k8s.{FAULTY}-device_{}.json", uid));
    assert!(!spec.exists(), "stale CDI spec restored");
    // ...but never answered as if the devices were still set up.
    let answer = n.node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert!(answer[&uid].error.contains("trap"), "{:?}", answer[&uid]);

    // The fixed guest, same boot: the start-up re-prepare succeeds.
    n.restart_with(&[faulty("")]).await;
    assert!(spec.exists(), "written by the re-prepare");
    let ok = format!("dra_host_claims_reprepared_total{{driver=\"{FAULTY}\",result=\"ok\"}}");
    assert_eq!(sample(&n.metrics().await, &ok), Some(1.0));
    assert_eq!(read_record(&path)["bootId"], "boot-2");
    let answer = n.node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_claim_operations_leave_one_aggregated_rate_limited_event_on_the_claim() {
    let n = ApiNode::start("ns-events", vec![faulty("")], "boot-1").await;
    // The guest returns a device that was not allocated: rejected by policy,
    // the same message every time, as with a kubelet retrying a broken claim.
    let claim = n
        .put(vec![
            n.claim("unallocated-dev").device(FAULTY, "faulty", "dev-0", "dev"),
        ])
        .remove(0);
    let uid = claim.uid.clone();
    let mut seen = String::new();
    for _ in 0..30 {
        let answer = n.node.plugin.prepare(&[claim.reference()]).await.unwrap();
        seen = answer[&uid].error.clone();
        assert!(!seen.is_empty());
    }

    // client-go's correlator: one Event, its count raised by patches, and
    // per object a burst of 25 before the rate limit (1 per 5 minutes).
    let event = eventually("a PrepareFailed event with count 25", &n.node, || {
        n.events_with_reason("PrepareFailed")
            .into_iter()
            .find(|e| e["count"] == 25)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = n.events_with_reason("PrepareFailed");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["count"], 25, "rate-limited after the burst");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["metadata"]["namespace"], n.name.as_str());
    let involved = &event["involvedObject"];
    assert_eq!(involved["apiVersion"], "resource.k8s.io/v1");
    assert_eq!(involved["kind"], "ResourceClaim");
    assert_eq!(involved["namespace"], n.name.as_str());
    assert_eq!(involved["name"], "unallocated-dev");
    assert_eq!(involved["uid"], uid.as_str());
    let message = event["message"].as_str().unwrap();
    assert!(message.contains(&seen), "the error as the kubelet sees it: {message}");
    assert!(message.contains(FAULTY) && message.contains("0.1.0"), "{message}");
    assert_ne!(event["firstTimestamp"], Value::Null);
    let w = n.writes_of("events");
    assert_eq!((w.get("create"), w.get("patch")), (Some(&1), Some(&24)), "{w:?}");
    validate_events(&events);
    let text = n.metrics().await;
    assert_eq!(
        sample(&text, "dra_host_kubernetes_events_total{result=\"rate_limited\"}"),
        Some(5.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_kubelet_dra_grpc_duration_histogram_with_upstream_buckets() {
    let n = ApiNode::start("ns-histogram", vec![example(2)], "boot-1").await;
    let claim = n
        .put(vec![n.claim("timed").device(DRIVER, &n.name, "gpu-1", "gpu")])
        .remove(0);
    let uid = claim.uid.clone();
    assert_eq!(
        n.node.plugin.prepare(&[claim.reference()]).await.unwrap()[&uid].error,
        ""
    );
    assert_eq!(n.node.plugin.unprepare(&[claim.reference()]).await.unwrap()[&uid], "");
    // The liveness probe's empty calls (the kubelet never makes one) are
    // answered but stay out of the figures operators alert on.
    for _ in 0..3 {
        assert!(n.node.plugin.prepare(&[]).await.unwrap().is_empty());
    }
    let text = n.metrics().await;
    assert!(
        text.contains("# TYPE dra_grpc_operations_duration_seconds histogram"),
        "{text}"
    );
    let labels = |method: &str| {
        format!(
            "driver_name=\"{DRIVER}\",method_name=\"/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/{method}\",grpc_status_code=\"OK\""
        )
    };
    let count = |method: &str| {
        sample(
            &text,
            &format!("dra_grpc_operations_duration_seconds_count{{{}}}", labels(method)),
        )
    };
    assert_eq!(count("NodeUnprepareResources"), Some(1.0), "{text}");
    assert_eq!(
        count("NodePrepareResources"),
        Some(1.0),
        "the one claim's call only\n{text}"
    );
    // The kubelet's buckets: ExponentialBucketsRange(0.1, 40, 15). (The
    // encoder writes `le` first; label order means nothing to Prometheus.)
    let unprepare = labels("NodeUnprepareResources");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter(|l| l.contains(&unprepare))
        .filter_map(|l| {
            let le = l.strip_prefix("dra_grpc_operations_duration_seconds_bucket{le=\"")?;
            let (bound, rest) = le.split_once('"')?;
            Some((bound.to_owned(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let bounds: Vec<f64> = buckets
        .iter()
        .filter(|(b, _)| b != "+Inf")
        .filter_map(|(b, _)| b.parse().ok())
        .collect();
    let factor = (40.0f64 / 0.1).powf(1.0 / 14.0);
    let expected: Vec<f64> = (0..15).map(|i| 0.1 * factor.powi(i)).collect();
    assert_eq!(bounds.len(), 15, "{buckets:?} (+Inf not counted)\n{text}");
    for (got, want) in bounds.iter().zip(&expected) {
        assert!((got - want).abs() <= want * 1e-9, "{bounds:?} vs {expected:?}");
    }
    assert_eq!(buckets.last().map(|(b, n)| (b.as_str(), *n)), Some(("+Inf", 1.0)));
    // The host's own metrics are served beside it.
    assert!(text.contains("dra_host_claim_operations_total"), "{text}");

    // What a Prometheus server reads: the exposition parsed by Prometheus'
    // own OpenMetrics parser (the Python client's), not by us.
    let body = text.split_once("\r\n\r\n").map_or(text.as_str(), |(_, b)| b);
    let families = parse_openmetrics(body);
    let family = families
        .iter()
        .find(|f| f["name"] == "dra_grpc_operations_duration_seconds")
        .unwrap_or_else(|| panic!("no such family in {families:?}"));
    assert_eq!(family["type"], "histogram");
    let bounds: Vec<f64> = family["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["name"] == "dra_grpc_operations_duration_seconds_bucket"
                && s["labels"]["method_name"] == "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources"
                && s["labels"]["driver_name"] == DRIVER
                && s["labels"]["grpc_status_code"] == "OK"
        })
        .filter_map(|s| s["labels"]["le"].as_str()?.parse().ok())
        .filter(|b: &f64| b.is_finite())
        .collect();
    assert_eq!(bounds.len(), 15, "{family}");
    for (got, want) in bounds.iter().zip(&expected) {
        assert!((got - want).abs() <= want * 1e-9, "{bounds:?}");
    }
    assert!(families.iter().any(|f| f["name"] == "dra_host_claim_operations"));
}

/// Parse a Prometheus exposition with the Prometheus Python client's
/// OpenMetrics parser (installed by tests/run.sh): families as JSON.
fn parse_openmetrics(text: &str) -> Vec<Value> {
    use std::io::Write;
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = [{"name": f.name, "type": f.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
       for f in text_string_to_metric_families(sys.stdin.read())]
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the host's metrics (tests/run.sh installs it: pip install prometheus-client==0.26.0):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Runs as root (CI does); otherwise fails clearly, or skips loudly when
/// `DRA_SKIP_ROOT_TESTS=1` asks to.
fn need_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("DRA_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        println!("SKIPPED nodestate::{test}: needs root (DRA_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!("nodestate::{test} needs root to mount a small tmpfs; run as root or set DRA_SKIP_ROOT_TESTS=1");
}

/// A tmpfs mounted over a directory; unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_only_the_claim_that_needs_space_with_a_clear_error() {
    if !need_root("a_full_disk_fails_only_the_claim_that_needs_space_with_a_clear_error") {
        return;
    }
    let n = ApiNode::start("ns-full-disk", vec![example(4)], "boot-1").await;
    // The checkpoint's file system has room for one record (one page).
    let dir = checkpoint_dir(&n.node, DRIVER);
    let _disk = SmallDisk::mount(&dir, "4k");
    let first = n.claim("fits").device(DRIVER, &n.name, "gpu-0", "gpu");
    let second = n.claim("no-room").device(DRIVER, &n.name, "gpu-1", "gpu");
    let [first, second] = <[Claim; 2]>::try_from(n.put(vec![first, second])).unwrap();
    let answer = n.node.plugin.prepare(&[first.reference()]).await.unwrap();
    assert_eq!(answer[&first.uid].error, "");
    let answer = n.node.plugin.prepare(&[second.reference()]).await.unwrap();
    let error = &answer[&second.uid].error;
    assert!(
        error.contains("No space left on device") && error.contains(&format!("{}.json", second.uid)),
        "the error names the cause and the file: {error}"
    );
    // Nothing half-prepared is left: no CDI spec, no record; the first
    // claim is still served.
    assert!(!n.node.cdi_spec_path(&second.uid).exists());
    assert!(!dir.join(format!("{}.json", second.uid)).exists());
    let again = n.node.plugin.prepare(&[first.reference()]).await.unwrap();
    assert_eq!(again[&first.uid].error, "");
    let event = eventually("a PrepareFailed event on the claim", &n.node, || {
        n.events_with_reason("PrepareFailed").pop()
    })
    .await;
    assert_eq!(event["involvedObject"]["name"], "no-room");
    assert!(
        event["message"].as_str().unwrap().contains("No space left on device"),
        "{event}"
    );
    let text = n.metrics().await;
    let errors =
        format!("dra_host_claim_operations_total{{driver=\"{DRIVER}\",operation=\"prepare\",result=\"error\"}}");
    assert_eq!(sample(&text, &errors), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_unprepare_leaves_an_event_on_the_claim() {
    use base64::Engine as _;
    let mut n = ApiNode::start("ns-unprepare", vec![faulty("")], "boot-1").await;
    let claim = n
        .put(vec![n.claim("wrong-state").device(FAULTY, "faulty", "dev-1", "dev")])
        .remove(0);
    let uid = claim.uid.clone();
    let answer = n.node.plugin.prepare(&[claim.reference()]).await.unwrap();
    assert_eq!(answer[&uid].error, "");
    n.node.host.terminate(Duration::from_secs(20)).unwrap();

    // A well-formed record (valid checksum) whose guest state is not this
    // claim's: the faulty guest's unprepare refuses it.
    let path = record_path(&n.node, FAULTY, &uid);
    let mut claim_record = read_record(&path);
    claim_record["state"] = Value::from(base64::engine::general_purpose::STANDARD.encode("another claim's state"));
    write_record(&path, FAULTY, &claim_record);
    n.node.restart().await;

    let errors = n.node.plugin.unprepare(&[claim.reference()]).await.unwrap();
    let error = errors[&uid].clone();
    assert!(error.contains("is not claim"), "{error}");
    let event = eventually("an UnprepareFailed event", &n.node, || {
        n.events_with_reason("UnprepareFailed").pop()
    })
    .await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["metadata"]["namespace"], n.name.as_str());
    assert_eq!(event["involvedObject"]["kind"], "ResourceClaim");
    assert_eq!(event["involvedObject"]["uid"], uid.as_str());
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("NodeUnprepareResources") && message.contains(&error),
        "{message}"
    );
    validate_events(&[event]);
}
