//! CDI spec files, one per prepared claim.
//!
//! Specs are checked here against the rules a CDI runtime applies when it
//! loads a file (the Go reference library's parser and `Validate` methods,
//! CDI spec 1.1.0; see docs/architecture.md): kind and device names, edit
//! fields, and the lowest `cdiVersion` the content needs, which is what the
//! file declares so that older runtimes accept it. The JSON is built from
//! typed edits with known fields only, so unknown fields (which runtimes
//! reject) cannot appear.
//!
//! Names: the spec file is `<vendor>-<class>_<claim UID>.json` and each device
//! is `<claim UID>_<device>[_<share ID>]`. `_` appears in neither UIDs nor
//! DNS-label device names, so names of different claims can never collide,
//! and a UID is never reused by the API server, so a name is never reused.
//!
//! The same writer writes the device metadata specs (`super::metadata`), with
//! the Go kubeletplugin helper's names: kind `<driver>/metadata`, one file per
//! request `<driver>_metadata_<claim UID>_<request>.json`, device
//! `<claim UID>_<request>` ([`CdiWriter::for_metadata`]).

use super::fsutil;
use crate::model;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("CDI directory {}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error("CDI kind {kind:?} is invalid: {message}")]
    Kind { kind: String, message: String },
    #[error("the container edits do not form a valid CDI spec: {0}")]
    Invalid(String),
    #[error("writing CDI spec {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// A device metadata file (`super::metadata`) could not be written or removed.
    #[error("device metadata file {}", path.display())]
    MetadataFile { path: PathBuf, source: io::Error },
    /// The guest's device metadata cannot be written as the format requires.
    #[error("device metadata: {0}")]
    Metadata(String),
}

/// A device of a claim's spec: its CDI name and what the container gets.
#[derive(Debug)]
pub struct SpecDevice<'a> {
    pub name: String,
    pub edits: &'a model::ContainerEdits,
}

/// Writes the CDI specs of one driver into the CDI directory.
#[derive(Debug, Clone)]
pub struct CdiWriter {
    dir: PathBuf,
    vendor: String,
    class: String,
    /// What every spec file name of this writer starts with; the rest is
    /// `<key>.json`.
    file_prefix: String,
}

impl CdiWriter {
    /// The writer of a driver's claim specs, kind `<vendor>/<class>`.
    pub fn new(dir: &Path, vendor: &str, class: &str) -> Result<Self, CdiError> {
        Self::with_prefix(dir, vendor, class, format!("{vendor}-{class}_"))
    }

    /// The writer of a driver's device metadata specs: kind
    /// `<driver>/metadata`, files `<driver>_metadata_<claim UID>_<request>.json`,
    /// as the Go kubeletplugin helper names them.
    pub fn for_metadata(dir: &Path, driver: &str) -> Result<Self, CdiError> {
        Self::with_prefix(dir, driver, "metadata", format!("{driver}_metadata_"))
    }

    /// A writer whose kind is not checked, for removals by name only.
    pub(super) fn unchecked(dir: &Path, vendor: &str, class: &str, file_prefix: String) -> Self {
        Self {
            dir: dir.to_owned(),
            vendor: vendor.to_owned(),
            class: class.to_owned(),
            file_prefix,
        }
    }

    fn with_prefix(dir: &Path, vendor: &str, class: &str, file_prefix: String) -> Result<Self, CdiError> {
        let writer = Self::unchecked(dir, vendor, class, file_prefix);
        // Validate the kind once, with a probe spec, so that a bad config
        // fails at start rather than at the first prepare.
        let probe = model::ContainerEdits {
            env: vec![model::EnvVar {
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
        let prefix = &writer.file_prefix;
        fsutil::remove_stale_temp_files(dir, |t| t.starts_with(prefix.as_str())).map_err(|source| CdiError::Dir {
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

    /// The spec file of `key`: a claim UID for claim specs,
    /// `<claim UID>_<request>` for metadata specs.
    pub fn spec_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}{key}.json", self.file_prefix))
    }

    /// Build and validate a spec; returns its JSON text.
    pub fn build_spec(&self, devices: &[SpecDevice<'_>]) -> Result<String, CdiError> {
        validate_spec(&self.vendor, &self.class, devices).map_err(CdiError::Invalid)?;
        let version = minimum_version(&self.class, devices);
        let devices: Vec<Value> = devices
            .iter()
            .map(|d| json!({ "name": d.name, "containerEdits": edits_json(d.edits) }))
            .collect();
        let doc = json!({
            "cdiVersion": version,
            "kind": self.kind(),
            "devices": devices,
        });
        Ok(doc.to_string())
    }

    /// Durably write the spec of `key` (see [`CdiWriter::spec_path`]).
    pub fn write(&self, key: &str, spec_json: &str) -> Result<(), CdiError> {
        let path = self.spec_path(key);
        fsutil::write_atomic(&path, spec_json.as_bytes(), 0o644).map_err(|source| CdiError::Write { path, source })
    }

    /// Whether a claim's spec file is present.
    pub fn exists(&self, key: &str) -> bool {
        self.spec_path(key).is_file()
    }

    /// Remove a claim's spec; `false` when there was none.
    pub fn remove(&self, key: &str) -> Result<bool, CdiError> {
        let path = self.spec_path(key);
        fsutil::remove_durable(&path).map_err(|source| CdiError::Write { path, source })
    }
}

/// The bytes one device's entry takes in a spec (as [`CdiWriter::build_spec`]
/// writes it), to say which device made a spec too large.
pub fn device_json_len(d: &SpecDevice<'_>) -> usize {
    json!({ "name": d.name, "containerEdits": edits_json(d.edits) })
        .to_string()
        .len()
}

/// Whether a device's edits would produce anything in a spec. CDI rejects
/// devices without edits; such devices simply get no CDI ID.
pub fn has_edits(e: &model::ContainerEdits) -> bool {
    !(e.env.is_empty()
        && e.device_nodes.is_empty()
        && e.mounts.is_empty()
        && e.hooks.is_empty()
        && e.net_devices.is_empty())
}

fn edits_json(e: &model::ContainerEdits) -> Value {
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
pub fn hook_name(stage: model::HookStage) -> &'static str {
    match stage {
        model::HookStage::Prestart => "prestart",
        model::HookStage::CreateRuntime => "createRuntime",
        model::HookStage::CreateContainer => "createContainer",
        model::HookStage::StartContainer => "startContainer",
        model::HookStage::Poststart => "poststart",
        model::HookStage::Poststop => "poststop",
    }
}

/// The lowest `cdiVersion` that a spec with these devices needs (reference
/// §6.1); 0.3.0 is the earliest version runtimes accept.
fn minimum_version(class: &str, devices: &[SpecDevice<'_>]) -> &'static str {
    let edits = || devices.iter().map(|d| d.edits);
    if edits().any(|e| !e.net_devices.is_empty()) {
        "1.1.0"
    } else if class.contains('.') {
        "0.6.0"
    } else if devices.iter().any(|d| d.name.starts_with(|c: char| c.is_ascii_digit()))
        || edits().any(|e| e.device_nodes.iter().any(|n| n.host_path.is_some()))
    {
        "0.5.0"
    } else if edits().any(|e| e.mounts.iter().any(|m| m.mount_type.is_some())) {
        "0.4.0"
    } else {
        "0.3.0"
    }
}

/// The checks a runtime's CDI parser applies to a spec; the message names
/// the device and field at fault.
fn validate_spec(vendor: &str, class: &str, devices: &[SpecDevice<'_>]) -> Result<(), String> {
    check_kind_part("vendor", vendor, 253)?;
    check_kind_part("class", class, 63)?;
    if devices.is_empty() {
        return Err("a spec needs at least one device".into());
    }
    let mut names = HashSet::new();
    for d in devices {
        check_device_name(&d.name)?;
        if !names.insert(d.name.as_str()) {
            return Err(format!("device {:?} appears twice", d.name));
        }
        if !has_edits(d.edits) {
            return Err(format!("device {:?} has no container edits", d.name));
        }
        validate_edits(d.edits).map_err(|e| format!("device {:?}: {e}", d.name))?;
    }
    Ok(())
}

/// Vendor and class: a letter first, a letter or digit last, and only
/// letters, digits, `_`, `-` and `.` in between.
fn check_kind_part(what: &str, s: &str, max: usize) -> Result<(), String> {
    let ok = s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?} must start with a letter, end with a letter or digit, use only letters, digits, '_', '-' and '.', and have at most {max} characters"
        ))
    }
}

/// Device names: a letter or digit first and last, and only letters, digits,
/// `_`, `-`, `.` and `:` in between.
fn check_device_name(s: &str) -> Result<(), String> {
    let ok = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "device name {s:?} must start and end with a letter or digit and use only letters, digits, '_', '-', '.' and ':'"
        ))
    }
}

/// `KEY=VALUE` with a non-empty key.
fn check_env_entry(entry: &str) -> Result<(), String> {
    match entry.find('=') {
        Some(i) if i > 0 && !entry.contains('\0') => Ok(()),
        _ => Err(format!("environment entry {entry:?} is not KEY=VALUE")),
    }
}

fn validate_edits(e: &model::ContainerEdits) -> Result<(), String> {
    for v in &e.env {
        if v.name.contains('=') {
            return Err(format!("environment variable name {:?} contains '='", v.name));
        }
        check_env_entry(&format!("{}={}", v.name, v.value))?;
    }
    for n in &e.device_nodes {
        if !n.path.starts_with('/') {
            return Err(format!("device node path {:?} is not absolute", n.path));
        }
        if let Some(h) = &n.host_path
            && !h.starts_with('/')
        {
            return Err(format!("device node hostPath {h:?} is not absolute"));
        }
        if let Some(t) = &n.node_type
            && !matches!(t.as_str(), "" | "b" | "c" | "u" | "p")
        {
            return Err(format!("device node {:?}: type {t:?} is not one of b, c, u, p", n.path));
        }
        if let Some(p) = &n.permissions
            && !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        {
            return Err(format!(
                "device node {:?}: permissions {p:?} are not a subset of \"rwm\"",
                n.path
            ));
        }
    }
    for m in &e.mounts {
        if m.host_path.is_empty() || m.container_path.is_empty() {
            return Err(format!(
                "mount {:?} -> {:?} needs both hostPath and containerPath",
                m.host_path, m.container_path
            ));
        }
    }
    for h in &e.hooks {
        if !h.path.starts_with('/') {
            return Err(format!("{} hook path {:?} is not absolute", hook_name(h.stage), h.path));
        }
        for v in &h.env {
            check_env_entry(v)?;
        }
        if let Some(t) = h.timeout_seconds
            && t <= 0
        {
            return Err(format!(
                "{} hook {:?}: timeout {t} is not positive",
                hook_name(h.stage),
                h.path
            ));
        }
    }
    let (mut hosts, mut inside) = (HashSet::new(), HashSet::new());
    for n in &e.net_devices {
        if n.host_interface_name.is_empty() || n.name.is_empty() {
            return Err("a netDevice needs both hostInterfaceName and name".into());
        }
        if !hosts.insert(n.host_interface_name.as_str()) {
            return Err(format!(
                "netDevice hostInterfaceName {:?} appears twice",
                n.host_interface_name
            ));
        }
        if !inside.insert(n.name.as_str()) {
            return Err(format!("netDevice name {:?} appears twice", n.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
