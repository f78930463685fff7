use super::*;
use std::os::unix::fs::PermissionsExt;

const DRIVER: &str = "gpu.example.com";
const UID: &str = "0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b";

fn claim(uid: &str) -> ClaimRef {
    ClaimRef {
        namespace: "ml".into(),
        name: "train".into(),
        uid: uid.into(),
    }
}

fn attr(name: &str, value: model::AttributeValue) -> model::Attribute {
    model::Attribute {
        name: name.into(),
        value,
    }
}

fn full_metadata() -> model::DeviceMetadata {
    model::DeviceMetadata {
        attributes: vec![
            attr("uuid", model::AttributeValue::Text("GPU-<0>&".into())),
            attr("index", model::AttributeValue::Integer(0)),
            attr("driverVersion", model::AttributeValue::Version("1.2.3".into())),
            attr(
                "resource.kubernetes.io/pcieRoot",
                model::AttributeValue::Text("pci0000:00".into()),
            ),
            attr("healthy", model::AttributeValue::Boolean(true)),
        ],
        network_data: Some(model::NetworkData {
            interface_name: "net1".into(),
            ips: vec!["10.0.0.2/24".into()],
            hardware_address: String::new(),
        }),
    }
}

struct Dirs {
    _root: tempfile::TempDir,
    plugin: PathBuf,
    cdi: PathBuf,
    writer: MetadataWriter,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let plugin = root.path().join("plugins").join(DRIVER);
    let cdi = root.path().join("cdi");
    let writer = MetadataWriter::new(&plugin, &cdi, DRIVER).unwrap();
    Dirs {
        _root: root,
        plugin,
        cdi,
        writer,
    }
}

/// One object of the stream, as the Go helper writes it for a claim with
/// two devices in request `gpu` (allocated as `gpu/big`), one with metadata.
/// Checked against the Go code: tests/peers/go's `metadata-decode` decodes
/// this stream (validation clean) and encodes it again to the same bytes.
fn expected_object(api_version: &str) -> String {
    format!(
        r#"{{
  "kind": "DeviceMetadata",
  "apiVersion": "{api_version}",
  "metadata": {{
    "name": "train",
    "namespace": "ml",
    "uid": "{UID}",
    "generation": 1
  }},
  "requests": [
    {{
      "name": "gpu/big",
      "devices": [
        {{
          "driver": "gpu.example.com",
          "pool": "node-a",
          "name": "gpu-0",
          "attributes": {{
            "driverVersion": {{
              "version": "1.2.3"
            }},
            "healthy": {{
              "bool": true
            }},
            "index": {{
              "int": 0
            }},
            "resource.kubernetes.io/pcieRoot": {{
              "string": "pci0000:00"
            }},
            "uuid": {{
              "string": "GPU-\u003c0\u003e\u0026"
            }}
          }},
          "networkData": {{
            "interfaceName": "net1",
            "ips": [
              "10.0.0.2/24"
            ]
          }}
        }},
        {{
          "driver": "gpu.example.com",
          "pool": "node-a",
          "name": "gpu-1"
        }}
      ]
    }}
  ]
}}
"#
    )
}

#[test]
fn the_file_is_the_helpers_json_stream_newest_version_first() {
    let d = dirs();
    let c = claim(UID);
    let meta = full_metadata();
    let devices = [
        MetadataDevice {
            pool: "node-a",
            device: "gpu-0",
            metadata: Some(&meta),
        },
        MetadataDevice {
            pool: "node-a",
            device: "gpu-1",
            metadata: None,
        },
    ];
    let m = d
        .writer
        .build(
            MetadataClaim {
                reference: &c,
                pod_claim_name: None,
            },
            "gpu",
            "gpu/big",
            &devices,
        )
        .unwrap();
    assert_eq!(m.request, "gpu");
    let want = format!(
        "{}{}",
        expected_object("metadata.resource.k8s.io/v1beta1"),
        expected_object("metadata.resource.k8s.io/v1alpha1")
    );
    assert_eq!(m.file, want);
}

#[test]
fn the_cdi_spec_bind_mounts_the_file_read_only_at_the_upstream_path() {
    let d = dirs();
    let c = claim(UID);
    let devices = [MetadataDevice {
        pool: "node-a",
        device: "gpu-0",
        metadata: Some(&model::DeviceMetadata::default()),
    }];
    let direct = MetadataClaim {
        reference: &c,
        pod_claim_name: None,
    };
    let m = d.writer.build(direct, "gpu", "gpu", &devices).unwrap();
    let spec: serde_json::Value = serde_json::from_str(&m.cdi_spec).unwrap();
    let host_file = d.plugin.join("dra-device-metadata/ml_train/gpu/metadata.json");
    assert_eq!(
        spec,
        serde_json::json!({
            // A device name starting with a digit needs 0.5.0.
            "cdiVersion": "0.5.0",
            "kind": "gpu.example.com/metadata",
            "devices": [{
                "name": format!("{UID}_gpu"),
                "containerEdits": { "mounts": [{
                    "hostPath": host_file.display().to_string(),
                    "containerPath": "/var/run/kubernetes.io/dra-device-attributes/resourceclaims/train/gpu/gpu.example.com-metadata.json",
                    "options": ["ro", "bind"],
                }] },
            }],
        })
    );
    assert_eq!(
        d.writer.device_id(UID, "gpu"),
        format!("gpu.example.com/metadata={UID}_gpu")
    );
    assert_eq!(
        d.writer.spec_path(&c, "gpu"),
        d.cdi.join(format!("gpu.example.com_metadata_{UID}_gpu.json"))
    );
    assert!(!m.file.contains("podClaimName"), "{}", m.file);

    // A claim made from a template: the pod's name for the claim.
    let templated = MetadataClaim {
        reference: &c,
        pod_claim_name: Some("gpus"),
    };
    let m = d.writer.build(templated, "gpu", "gpu", &devices).unwrap();
    let spec: serde_json::Value = serde_json::from_str(&m.cdi_spec).unwrap();
    assert_eq!(
        spec["devices"][0]["containerEdits"]["mounts"][0]["containerPath"],
        "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/gpus/gpu/gpu.example.com-metadata.json"
    );
    assert!(
        m.file
            .contains("    \"generation\": 1\n  },\n  \"podClaimName\": \"gpus\",\n  \"requests\""),
        "{}",
        m.file
    );
}

#[test]
fn names_that_cannot_be_paths_and_repeated_attributes_are_refused() {
    let d = dirs();
    let c = claim(UID);
    let direct = MetadataClaim {
        reference: &c,
        pod_claim_name: None,
    };
    let none = [MetadataDevice {
        pool: "p",
        device: "d",
        metadata: None,
    }];
    for bad in ["", "..", "a/b", "Gpu", "-x"] {
        let e = d.writer.build(direct, bad, bad, &none).unwrap_err();
        assert!(e.to_string().contains("not a DNS label"), "{bad:?}: {e}");
    }
    let traversal = MetadataClaim {
        reference: &c,
        pod_claim_name: Some("../../etc"),
    };
    let e = d.writer.build(traversal, "gpu", "gpu", &none).unwrap_err();
    assert!(e.to_string().contains(POD_CLAIM_NAME_ANNOTATION), "{e}");
    let twice = model::DeviceMetadata {
        attributes: vec![
            attr("index", model::AttributeValue::Integer(0)),
            attr("index", model::AttributeValue::Integer(1)),
        ],
        network_data: None,
    };
    let devices = [MetadataDevice {
        pool: "p",
        device: "d",
        metadata: Some(&twice),
    }];
    let e = d.writer.build(direct, "gpu", "gpu", &devices).unwrap_err();
    assert!(e.to_string().contains("\"index\" appears twice"), "{e}");
}

fn built(d: &Dirs, c: &ClaimRef, request: &str) -> RecordedMetadata {
    let devices = [MetadataDevice {
        pool: "p",
        device: "d",
        metadata: Some(&model::DeviceMetadata::default()),
    }];
    let mc = MetadataClaim {
        reference: c,
        pod_claim_name: None,
    };
    d.writer.build(mc, request, request, &devices).unwrap()
}

#[test]
fn write_then_remove_leaves_nothing() {
    let d = dirs();
    let c = claim(UID);
    let (gpu, nic) = (built(&d, &c, "gpu"), built(&d, &c, "nic"));
    for m in [&gpu, &nic] {
        assert!(!d.writer.exists(&c, m));
        d.writer.write(&c, m).unwrap();
        assert!(d.writer.exists(&c, m));
        let file = d.writer.file_path(&c, &m.request);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), m.file);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(
            std::fs::read_to_string(d.writer.spec_path(&c, &m.request)).unwrap(),
            m.cdi_spec
        );
    }
    // A missing spec is noticed (restored by the caller).
    std::fs::remove_file(d.writer.spec_path(&c, "nic")).unwrap();
    assert!(!d.writer.exists(&c, &nic));

    assert_eq!(d.writer.remove_claim(&c).unwrap(), 2);
    assert!(!d.writer.claim_dir("ml", "train").exists());
    assert_eq!(std::fs::read_dir(&d.cdi).unwrap().count(), 0, "no spec left");
    assert_eq!(d.writer.remove_claim(&c).unwrap(), 0, "nothing the second time");
}

#[test]
fn removal_spares_a_newer_claim_of_the_same_name_and_named_requests_only() {
    let d = dirs();
    let old = claim(UID);
    let new = claim("7d0c2a51-6e4b-4f0e-8a3b-5c6d7e8f9a01");
    let m = built(&d, &new, "gpu");
    d.writer.write(&new, &m).unwrap();
    // The old claim's unprepare (no record: a crash) finds the new one's file.
    assert_eq!(d.writer.remove_claim(&old).unwrap(), 0);
    assert!(d.writer.exists(&new, &m));

    let other = built(&d, &new, "nic");
    d.writer.write(&new, &other).unwrap();
    assert_eq!(d.writer.remove_requests(&new, ["nic"]).unwrap(), 1);
    assert!(d.writer.exists(&new, &m), "gpu is kept");
    assert!(!d.writer.file_path(&new, "nic").exists());
    assert!(!d.writer.spec_path(&new, "nic").exists());
}

/// A driver name that is a DNS subdomain but not a CDI vendor (a digit
/// first): the driver starts, a claim with metadata fails with the reason.
#[test]
fn a_driver_name_that_cannot_be_a_cdi_vendor_fails_only_claims_with_metadata() {
    let d = dirs();
    let writer = MetadataWriter::new(&d.plugin, &d.cdi, "3d.example.com").unwrap();
    let c = claim(UID);
    let mc = MetadataClaim {
        reference: &c,
        pod_claim_name: None,
    };
    let none = [MetadataDevice {
        pool: "p",
        device: "d",
        metadata: None,
    }];
    let e = writer.build(mc, "gpu", "gpu", &none).unwrap_err();
    assert!(e.to_string().contains("\"3d.example.com/metadata\" is invalid"), "{e}");
    assert_eq!(writer.remove_claim(&c).unwrap(), 0);
}

#[test]
fn leftover_temporary_spec_files_are_removed_at_start() {
    let d = dirs();
    // As fsutil::write_atomic names its temporary files.
    let leftover = d
        .cdi
        .join(format!(".gpu.example.com_metadata_{UID}_gpu.json.dra-tmp-1-1"));
    std::fs::write(&leftover, "{").unwrap();
    MetadataWriter::new(&d.plugin, &d.cdi, DRIVER).unwrap();
    assert!(!leftover.exists());
}
