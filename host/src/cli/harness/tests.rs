use super::*;

fn claim_yaml(extra: &str) -> String {
    format!(
        "apiVersion: resource.k8s.io/v1\nkind: ResourceClaim\nmetadata:\n  name: c\n  uid: 0b7e5b8e-1c1d-4c55-9f6a-2b1f3e4d5c6a\n{extra}"
    )
}

const ALLOCATED: &str = "status:\n  allocation:\n    devices:\n      results:\n      - {request: gpu, driver: example.dra.dev, pool: node-a, device: gpu-0}\n";

fn read(text: &str) -> Result<Vec<(String, ResourceClaim)>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claim.yaml");
    std::fs::write(&path, text).unwrap();
    read_claims(&path)
}

fn error(text: &str) -> String {
    format!("{:#}", read(text).unwrap_err())
}

#[test]
fn claims_are_read_as_kubectl_prints_them() {
    let claims = read(&claim_yaml(ALLOCATED)).unwrap();
    assert_eq!(claims[0].1.metadata.namespace.as_deref(), Some("default"));
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}",
        claim_yaml(ALLOCATED).replace('\n', "\n  ").trim_end()
    );
    let claims = read(&list).unwrap();
    assert_eq!(claims[0].0, "items[0].");
    let two = format!(
        "{}---\n{}",
        claim_yaml(ALLOCATED),
        claim_yaml(ALLOCATED).replace("name: c", "name: d")
    );
    assert_eq!(read(&two).unwrap().len(), 2);
}

#[test]
fn json_claims_and_lists_are_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claims.json");
    let claim: Value = serde_saphyr::from_str(&claim_yaml(ALLOCATED)).unwrap();
    std::fs::write(&path, json!({ "kind": "List", "items": [claim] }).to_string()).unwrap();
    let claims = read_claims(&path).unwrap();
    assert_eq!(claims[0].1.metadata.name.as_deref(), Some("c"));
    std::fs::write(&path, "{\"kind\": ").unwrap();
    let e = format!("{:#}", read_claims(&path).unwrap_err());
    assert!(e.contains("claims.json: not JSON"), "{e}");
}

#[test]
fn bad_claims_name_the_file_and_the_field() {
    let e = error(&claim_yaml(""));
    assert!(
        e.contains("claim.yaml: status.allocation.devices.results: missing"),
        "{e}"
    );
    let e = error(&claim_yaml(ALLOCATED).replace("pool: node-a, ", ""));
    assert!(e.contains("status.allocation.devices.results[0].pool: missing"), "{e}");
    let e = error(&claim_yaml(ALLOCATED).replace("  uid: 0b7e5b8e-1c1d-4c55-9f6a-2b1f3e4d5c6a\n", ""));
    assert!(e.contains("claim.yaml: metadata.uid: missing"), "{e}");
    let e = error(&claim_yaml(ALLOCATED).replace("resource.k8s.io/v1", "resource.k8s.io/v1beta2"));
    assert!(e.contains("apiVersion: \"resource.k8s.io/v1beta2\""), "{e}");
    let e = error(&claim_yaml(ALLOCATED).replace("kind: ResourceClaim", "kind: Pod"));
    assert!(e.contains("kind: \"Pod\", not ResourceClaim"), "{e}");
    let e = error("a: [1,\n");
    assert!(e.contains("claim.yaml: not YAML"), "{e}");
    let e = error("apiVersion: v1\nkind: List\n");
    assert!(e.contains("items: missing"), "{e}");
    let e = error(&claim_yaml(ALLOCATED).replace("device: gpu-0}", "device: gpu-0, adminAccess: maybe}"));
    assert!(e.contains("claim.yaml") && e.contains("maybe"), "{e}");
}

#[test]
fn events_parse_or_say_what_is_wrong() {
    assert_eq!(
        parse_event("xid=0:79").unwrap(),
        Injected::Gpu {
            gpu: "0".into(),
            kind: model::GpuEventKind::XidCriticalError,
            data: 79
        }
    );
    assert_eq!(
        parse_event("link=eth1:down").unwrap(),
        Injected::Link {
            name: "eth1".into(),
            up: false
        }
    );
    assert!(matches!(parse_event("ecc=GPU-1").unwrap(), Injected::Gpu { .. }));
    for (bad, why) in [
        ("xid=0:abc", "\"abc\" is not a number"),
        ("xid=0", "no ':'"),
        ("link=eth1:sideways", "\"sideways\" is not up or down"),
        ("link=a/b:up", "not an interface name"),
        ("reboot=now", "unknown kind \"reboot\""),
        ("xid", "no '='"),
    ] {
        let e = parse_event(bad).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains(why), "{bad}: {e}");
    }
}
