//! CDI spec files, one per prepared claim.
//!
//! Specs are built and validated with the `container-device-interface` crate
//! (the CNCF Rust reference): its types reject unknown fields, its
//! `minimum_required_version` picks the lowest `cdiVersion` the content
//! needs (so older runtimes accept the file), and `new_spec` runs the same
//! validation a runtime runs when it loads the file.
//!
//! Names: the spec file is `<vendor>-<class>_<claim UID>.json` and each device
//! is `<claim UID>_<device>[_<share ID>]`. `_` appears in neither UIDs nor
//! DNS-label device names, so names of different claims can never collide,
//! and a UID is never reused by the API server, so a name is never reused.

use super::fsutil;
use crate::guest::types;
use container_device_interface as cdi;
use serde_json::{Value, json};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("CDI directory {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error("CDI kind {kind:?} is invalid: {message}")]
    Kind { kind: String, message: String },
    #[error("the container edits do not form a valid CDI spec: {0}")]
    Invalid(String),
    #[error("writing CDI spec {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// A device of a claim's spec: its CDI name and what the container gets.
#[derive(Debug)]
pub struct SpecDevice<'a> {
    pub name: String,
    pub edits: &'a types::ContainerEdits,
}

/// Writes the CDI specs of one driver into the CDI directory.
#[derive(Debug, Clone)]
pub struct CdiWriter {
    dir: PathBuf,
    vendor: String,
    class: String,
}

impl CdiWriter {
    pub fn new(dir: &Path, vendor: &str, class: &str) -> Result<Self, CdiError> {
        let writer = Self {
            dir: dir.to_owned(),
            vendor: vendor.to_owned(),
            class: class.to_owned(),
        };
        // Validate the kind once, with a probe spec, so that a bad config
        // fails at start rather than at the first prepare.
        let probe = types::ContainerEdits {
            env: vec![types::EnvVar {
                name: "PROBE".into(),
                value: "1".into(),
            }],
            device_nodes: vec![],
            mounts: vec![],
            hooks: vec![],
            net_devices: vec![],
        };
        writer
            .build_spec(&[SpecDevice {
                name: "probe".into(),
                edits: &probe,
            }])
            .map_err(|e| CdiError::Kind {
                kind: writer.kind(),
                message: e.to_string(),
            })?;
        fsutil::ensure_dir(dir, 0o755).map_err(|source| CdiError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        let prefix = format!("{vendor}-{class}_");
        fsutil::remove_stale_temp_files(dir, |t| t.starts_with(&prefix)).map_err(|source| CdiError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(writer)
    }

    pub fn kind(&self) -> String {
        format!("{}/{}", self.vendor, self.class)
    }

    /// The CDI device name for a device of a claim.
    pub fn device_name(claim_uid: &str, device: &str, share_id: Option<&str>) -> String {
        match share_id {
            Some(share) => format!("{claim_uid}_{device}_{share}"),
            None => format!("{claim_uid}_{device}"),
        }
    }

    /// The fully qualified CDI device ID the kubelet passes to the runtime.
    pub fn qualified_name(&self, device_name: &str) -> String {
        format!("{}/{}={device_name}", self.vendor, self.class)
    }

    pub fn spec_path(&self, claim_uid: &str) -> PathBuf {
        self.dir
            .join(format!("{}-{}_{claim_uid}.json", self.vendor, self.class))
    }

    /// Build and validate a spec; returns its JSON text.
    pub fn build_spec(&self, devices: &[SpecDevice<'_>]) -> Result<String, CdiError> {
        let devices: Vec<Value> = devices
            .iter()
            .map(|d| json!({ "name": d.name, "containerEdits": edits_json(d.edits) }))
            .collect();
        let mut doc = json!({
            "cdiVersion": cdi::specs::config::CURRENT_VERSION,
            "kind": self.kind(),
            "devices": devices,
        });
        let invalid = |e: &dyn std::fmt::Display| CdiError::Invalid(format!("{e:#}"));
        let raw: cdi::specs::config::Spec = serde_json::from_value(doc.clone()).map_err(|e| invalid(&e))?;
        let version = cdi::version::minimum_required_version(&raw).map_err(|e| invalid(&e))?;
        doc["cdiVersion"] = Value::String(version.to_string());
        let raw: cdi::specs::config::Spec = serde_json::from_value(doc).map_err(|e| invalid(&e))?;
        // Runs the schema and name/edit validation a CDI runtime applies.
        cdi::spec::new_spec(&raw, &self.dir.join("validate.json"), 1).map_err(|e| invalid(&e))?;
        serde_json::to_string(&raw).map_err(|e| invalid(&e))
    }

    /// Durably write a claim's spec.
    pub fn write(&self, claim_uid: &str, spec_json: &str) -> Result<(), CdiError> {
        let path = self.spec_path(claim_uid);
        fsutil::write_atomic(&path, spec_json.as_bytes(), 0o644).map_err(|source| CdiError::Write { path, source })
    }

    /// Whether a claim's spec file is present.
    pub fn exists(&self, claim_uid: &str) -> bool {
        self.spec_path(claim_uid).is_file()
    }

    /// Remove a claim's spec; `false` when there was none.
    pub fn remove(&self, claim_uid: &str) -> Result<bool, CdiError> {
        let path = self.spec_path(claim_uid);
        fsutil::remove_durable(&path).map_err(|source| CdiError::Write { path, source })
    }
}

/// Whether a device's edits would produce anything in a spec. CDI rejects
/// devices without edits; such devices simply get no CDI ID.
pub fn has_edits(e: &types::ContainerEdits) -> bool {
    !(e.env.is_empty()
        && e.device_nodes.is_empty()
        && e.mounts.is_empty()
        && e.hooks.is_empty()
        && e.net_devices.is_empty())
}

fn edits_json(e: &types::ContainerEdits) -> Value {
    let mut out = serde_json::Map::new();
    if !e.env.is_empty() {
        out.insert(
            "env".into(),
            e.env.iter().map(|v| format!("{}={}", v.name, v.value)).collect(),
        );
    }
    if !e.device_nodes.is_empty() {
        let nodes = e
            .device_nodes
            .iter()
            .map(|d| {
                let mut n = serde_json::Map::new();
                n.insert("path".into(), json!(d.path));
                insert_some(&mut n, "hostPath", d.host_path.as_ref());
                insert_some(&mut n, "type", d.node_type.as_ref());
                insert_some(&mut n, "major", d.major.as_ref());
                insert_some(&mut n, "minor", d.minor.as_ref());
                insert_some(&mut n, "fileMode", d.file_mode.as_ref());
                insert_some(&mut n, "permissions", d.permissions.as_ref());
                insert_some(&mut n, "uid", d.uid.as_ref());
                insert_some(&mut n, "gid", d.gid.as_ref());
                Value::Object(n)
            })
            .collect();
        out.insert("deviceNodes".into(), nodes);
    }
    if !e.mounts.is_empty() {
        let mounts = e
            .mounts
            .iter()
            .map(|m| {
                let mut o = serde_json::Map::new();
                o.insert("hostPath".into(), json!(m.host_path));
                o.insert("containerPath".into(), json!(m.container_path));
                insert_some(&mut o, "type", m.mount_type.as_ref());
                if !m.options.is_empty() {
                    o.insert("options".into(), json!(m.options));
                }
                Value::Object(o)
            })
            .collect();
        out.insert("mounts".into(), mounts);
    }
    if !e.hooks.is_empty() {
        let hooks = e
            .hooks
            .iter()
            .map(|h| {
                let mut o = serde_json::Map::new();
                o.insert("hookName".into(), json!(hook_name(h.stage)));
                o.insert("path".into(), json!(h.path));
                if !h.args.is_empty() {
                    o.insert("args".into(), json!(h.args));
                }
                if !h.env.is_empty() {
                    o.insert("env".into(), json!(h.env));
                }
                insert_some(&mut o, "timeout", h.timeout_seconds.as_ref());
                Value::Object(o)
            })
            .collect();
        out.insert("hooks".into(), hooks);
    }
    if !e.net_devices.is_empty() {
        let devs = e
            .net_devices
            .iter()
            .map(|n| json!({ "hostInterfaceName": n.host_interface_name, "name": n.name }))
            .collect();
        out.insert("netDevices".into(), devs);
    }
    Value::Object(out)
}

fn insert_some<T: serde::Serialize>(o: &mut serde_json::Map<String, Value>, key: &str, v: Option<&T>) {
    if let Some(v) = v {
        o.insert(key.into(), json!(v));
    }
}

/// The CDI `hookName` of an OCI hook stage.
pub fn hook_name(stage: types::HookStage) -> &'static str {
    match stage {
        types::HookStage::Prestart => "prestart",
        types::HookStage::CreateRuntime => "createRuntime",
        types::HookStage::CreateContainer => "createContainer",
        types::HookStage::StartContainer => "startContainer",
        types::HookStage::Poststart => "poststart",
        types::HookStage::Poststop => "poststop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits() -> types::ContainerEdits {
        types::ContainerEdits {
            env: vec![types::EnvVar {
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
        // The file a runtime reads passes the crate's own loader.
        cdi::spec::read_spec(&path, 1).unwrap();
        assert!(w.remove("0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b").unwrap());
    }

    #[test]
    fn net_devices_need_cdi_1_1() {
        let dir = tempfile::tempdir().unwrap();
        let w = CdiWriter::new(dir.path(), "k8s.example.com", "net").unwrap();
        let mut e = edits();
        e.net_devices.push(types::NetDevice {
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
}
