use super::*;

fn edits() -> model::ContainerEdits {
    model::ContainerEdits {
        env: vec![model::EnvVar {
            name: "GPU".into(),
            value: "gpu-0".into(),
        }],
        device_nodes: vec![],
        mounts: vec![],
        hooks: vec![],
        net_devices: vec![],
    }
}

#[test]
fn spec_uses_minimum_version_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let w = CdiWriter::new(dir.path(), "k8s.example.com", "device").unwrap();
    let e = edits();
    let name = CdiWriter::device_name("0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b", "gpu-0", None);
    let spec = w
        .build_spec(&[SpecDevice {
            name: name.clone(),
            edits: &e,
        }])
        .unwrap();
    let v: Value = serde_json::from_str(&spec).unwrap();
    // A device name starting with a digit needs CDI 0.5.0.
    assert_eq!(v["cdiVersion"], "0.5.0");
    assert_eq!(v["kind"], "k8s.example.com/device");
    assert_eq!(v["devices"][0]["containerEdits"]["env"][0], "GPU=gpu-0");
    assert_eq!(w.qualified_name(&name), format!("k8s.example.com/device={name}"));

    w.write("0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b", &spec).unwrap();
    assert!(w.exists("0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b"));
    let path = w.spec_path("0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b");
    assert!(path.ends_with("k8s.example.com-device_0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b.json"));
    // The file on disk is exactly the validated spec.
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk, v);
    assert!(w.remove("0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b").unwrap());
}

#[test]
fn net_devices_need_cdi_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let w = CdiWriter::new(dir.path(), "k8s.example.com", "net").unwrap();
    let mut e = edits();
    e.net_devices.push(model::NetDevice {
        host_interface_name: "mv0".into(),
        name: "net1".into(),
    });
    let spec = w
        .build_spec(&[SpecDevice {
            name: "u_nic".into(),
            edits: &e,
        }])
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&spec).unwrap()["cdiVersion"], "1.1.0");
}

#[test]
fn invalid_kind_and_env_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        CdiWriter::new(dir.path(), "-bad", "x").unwrap_err(),
        CdiError::Kind { .. }
    ));
    let w = CdiWriter::new(dir.path(), "k8s.example.com", "device").unwrap();
    let mut e = edits();
    e.env[0].name = String::new(); // "=value" is not a valid CDI env entry
    assert!(
        w.build_spec(&[SpecDevice {
            name: "u_x".into(),
            edits: &e
        }])
        .is_err()
    );
}

fn node(path: &str, node_type: &str, permissions: &str) -> model::DeviceNode {
    model::DeviceNode {
        path: path.into(),
        host_path: None,
        node_type: Some(node_type.into()),
        major: None,
        minor: None,
        file_mode: None,
        permissions: Some(permissions.into()),
        uid: None,
        gid: None,
    }
}

fn build(w: &CdiWriter, name: &str, e: &model::ContainerEdits) -> Result<Value, CdiError> {
    w.build_spec(&[SpecDevice {
        name: name.into(),
        edits: e,
    }])
    .map(|s| serde_json::from_str(&s).unwrap())
}

#[test]
fn version_is_the_lowest_the_content_needs() {
    let dir = tempfile::tempdir().unwrap();
    let w = CdiWriter::new(dir.path(), "k8s.example.com", "device").unwrap();
    let mut e = edits();
    assert_eq!(build(&w, "u_gpu", &e).unwrap()["cdiVersion"], "0.3.0");
    e.mounts.push(model::Mount {
        host_path: "/opt/lib".into(),
        container_path: "/usr/lib/x".into(),
        mount_type: Some("bind".into()),
        options: vec!["ro".into(), "bind".into()],
    });
    assert_eq!(build(&w, "u_gpu", &e).unwrap()["cdiVersion"], "0.4.0");
    e.device_nodes.push(model::DeviceNode {
        host_path: Some("/dev/y0".into()),
        ..node("/dev/x0", "c", "rw")
    });
    let v = build(&w, "u_gpu", &e).unwrap();
    assert_eq!(v["cdiVersion"], "0.5.0");
    assert_eq!(
        v["devices"][0]["containerEdits"]["deviceNodes"][0]["hostPath"],
        "/dev/y0"
    );
    assert_eq!(
        v["devices"][0]["containerEdits"]["mounts"][0]["options"],
        json!(["ro", "bind"])
    );
    // A dot in the class needs 0.6.0.
    let dotted = CdiWriter::new(dir.path(), "k8s.example.com", "dev.v2").unwrap();
    assert_eq!(build(&dotted, "u_gpu", &edits()).unwrap()["cdiVersion"], "0.6.0");
}

#[test]
fn runtime_rules_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let w = CdiWriter::new(dir.path(), "k8s.example.com", "device").unwrap();
    let refused = |e: &model::ContainerEdits, name: &str, needle: &str| {
        let err = build(&w, name, e).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    };
    refused(&edits(), "-gpu", "device name");
    refused(&edits(), "gpu/0", "device name");
    refused(
        &model::ContainerEdits { env: vec![], ..edits() },
        "u_gpu",
        "no container edits",
    );

    let hook = |path: &str, timeout: Option<i64>, env: &[&str]| model::Hook {
        stage: model::HookStage::CreateRuntime,
        path: path.into(),
        args: vec![],
        env: env.iter().map(|s| s.to_string()).collect(),
        timeout_seconds: timeout,
    };
    let with_hook = |h| model::ContainerEdits {
        hooks: vec![h],
        ..edits()
    };
    refused(&with_hook(hook("bin/hook", None, &[])), "u_gpu", "not absolute");
    refused(&with_hook(hook("/bin/hook", Some(0), &[])), "u_gpu", "not positive");
    refused(&with_hook(hook("/bin/hook", None, &["=x"])), "u_gpu", "KEY=VALUE");
    let ok = build(&w, "u_gpu", &with_hook(hook("/bin/hook", Some(5), &["A=1"]))).unwrap();
    let h = &ok["devices"][0]["containerEdits"]["hooks"][0];
    assert_eq!(h["hookName"], "createRuntime");
    assert_eq!(h["timeout"], 5);

    let with_node = |path: &str, t: &str, perms: &str| model::ContainerEdits {
        device_nodes: vec![node(path, t, perms)],
        ..edits()
    };
    refused(&with_node("dev/x", "c", "rw"), "u_gpu", "not absolute");
    refused(&with_node("/dev/x", "x", "rw"), "u_gpu", "type");
    refused(&with_node("/dev/x", "c", "rwx"), "u_gpu", "permissions");

    let mut e = edits();
    e.mounts.push(model::Mount {
        host_path: String::new(),
        container_path: "/x".into(),
        mount_type: None,
        options: vec![],
    });
    refused(&e, "u_gpu", "hostPath");

    let nic = |host: &str, name: &str| model::NetDevice {
        host_interface_name: host.into(),
        name: name.into(),
    };
    let nets = |n: Vec<model::NetDevice>| model::ContainerEdits {
        net_devices: n,
        ..edits()
    };
    refused(&nets(vec![nic("mv0", "net1"), nic("mv0", "net2")]), "u_nic", "twice");
    refused(&nets(vec![nic("mv0", "net1"), nic("mv1", "net1")]), "u_nic", "twice");
    refused(&nets(vec![nic("", "net1")]), "u_nic", "hostInterfaceName");

    let e = edits();
    let twice = w.build_spec(&[
        SpecDevice {
            name: "u_a".into(),
            edits: &e,
        },
        SpecDevice {
            name: "u_a".into(),
            edits: &e,
        },
    ]);
    assert!(twice.unwrap_err().to_string().contains("twice"));
    assert!(w.build_spec(&[]).is_err(), "a spec without devices");
}
