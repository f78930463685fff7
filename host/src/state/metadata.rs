//! KEP-5304 device metadata: what a guest tells the workload about its
//! prepared devices, written as the Go kubeletplugin helper
//! (k8s.io/dynamic-resource-allocation v0.37.2, `kubeletplugin/metadata.go`)
//! writes it, so that consumers of the upstream format read it unchanged.
//!
//! For each request of a claim where some device has metadata:
//! - a file `<plugin dir>/dra-device-metadata/<namespace>_<claim>/<request>/metadata.json`:
//!   a JSON stream of `DeviceMetadata` objects, the same content once per API
//!   version, newest first ([`VERSIONS`]), each pretty-printed as Go's
//!   `json.MarshalIndent` does and followed by a newline; the request's
//!   devices of this driver in allocation order, each with its metadata
//!   (attribute names as the guest gave them, as the helper writes them);
//! - a CDI spec of kind `<driver>/metadata` in the CDI directory
//!   ([`CdiWriter::for_metadata`]) with one device, `<claim UID>_<request>`,
//!   that bind-mounts the file read-only at
//!   `/var/run/kubernetes.io/dra-device-attributes/resourceclaims/<claim>/<request>/<driver>-metadata.json`,
//!   or under `resourceclaimtemplates/<pod claim name>/` for a claim made
//!   from a template (its `resource.kubernetes.io/pod-claim-name` annotation);
//! - the CDI device ID `<driver>/metadata=<claim UID>_<request>`, appended
//!   to the first answered device of the request.
//!
//! The files are written before the checkpoint record, which keeps a copy
//! ([`RecordedMetadata`]) so that missing files are restored as CDI specs
//! are, and removed on unprepare, with or without a record (a crash between
//! the write and the checkpoint).

use super::cdi::{CdiError, CdiWriter, SpecDevice};
use super::checkpoint::RecordedMetadata;
use super::fsutil;
use crate::claim::ClaimRef;
use crate::model;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// The directory under the plugin data directory that holds the files.
pub const SUBDIR: &str = "dra-device-metadata";
/// Where containers see the files.
pub const CONTAINER_DIR: &str = "/var/run/kubernetes.io/dra-device-attributes";
/// The annotation the ResourceClaim controller puts on a claim made from a
/// template: the claim's name in the pod spec.
pub const POD_CLAIM_NAME_ANNOTATION: &str = "resource.kubernetes.io/pod-claim-name";
/// The API versions written, newest first: the two the helper's scheme
/// registers (v1beta1 is the one it requires).
pub const VERSIONS: [&str; 2] = ["metadata.resource.k8s.io/v1beta1", "metadata.resource.k8s.io/v1alpha1"];
const FILE_NAME: &str = "metadata.json";

/// The claim the metadata describes.
#[derive(Clone, Copy, Debug)]
pub struct MetadataClaim<'a> {
    pub reference: &'a ClaimRef,
    /// The `resource.kubernetes.io/pod-claim-name` annotation, when present.
    pub pod_claim_name: Option<&'a str>,
}

/// One device of a request.
#[derive(Clone, Copy, Debug)]
pub struct MetadataDevice<'a> {
    pub pool: &'a str,
    pub device: &'a str,
    pub metadata: Option<&'a model::DeviceMetadata>,
}

/// Writes and removes one driver's device metadata files and their CDI specs.
#[derive(Debug)]
pub struct MetadataWriter {
    /// `<plugin dir>/dra-device-metadata`.
    root: PathBuf,
    driver: String,
    cdi: CdiWriter,
    /// Why the driver's name cannot be a CDI vendor (a DNS subdomain may
    /// start with a digit, a vendor may not): then no metadata can be
    /// written, and a claim with some fails; the driver still starts.
    unusable: Option<String>,
}

impl MetadataWriter {
    pub fn new(plugin_dir: &Path, cdi_dir: &Path, driver: &str) -> Result<Self, CdiError> {
        let (cdi, unusable) = match CdiWriter::for_metadata(cdi_dir, driver) {
            Ok(cdi) => (cdi, None),
            Err(CdiError::Kind { kind, message }) => (
                // Never writes: `build` refuses first. Its name keeps the
                // paths the same for removals.
                CdiWriter::unchecked(cdi_dir, driver, "metadata", format!("{driver}_metadata_")),
                Some(format!("CDI kind {kind:?} is invalid: {message}")),
            ),
            Err(e) => return Err(e),
        };
        Ok(Self {
            root: plugin_dir.join(SUBDIR),
            driver: driver.to_owned(),
            cdi,
            unusable,
        })
    }

    /// The directory of a claim's files.
    pub fn claim_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join(format!("{namespace}_{name}"))
    }

    /// The host file of a request.
    pub fn file_path(&self, claim: &ClaimRef, request: &str) -> PathBuf {
        self.claim_dir(&claim.namespace, &claim.name)
            .join(request)
            .join(FILE_NAME)
    }

    /// The CDI spec file of a request.
    pub fn spec_path(&self, claim: &ClaimRef, request: &str) -> PathBuf {
        self.cdi.spec_path(&spec_key(&claim.uid, request))
    }

    /// The CDI device ID that mounts a request's file.
    pub fn device_id(&self, claim_uid: &str, request: &str) -> String {
        self.cdi.qualified_name(&spec_key(claim_uid, request))
    }

    /// Where a container sees a request's file.
    pub fn container_path(&self, claim: MetadataClaim<'_>, request: &str) -> String {
        let file = format!("{}-metadata.json", self.driver);
        match claim.pod_claim_name.filter(|n| !n.is_empty()) {
            Some(pod_claim) => format!("{CONTAINER_DIR}/resourceclaimtemplates/{pod_claim}/{request}/{file}"),
            None => format!(
                "{CONTAINER_DIR}/resourceclaims/{}/{request}/{file}",
                claim.reference.name
            ),
        }
    }

    /// The file and CDI spec of one request: `request` names the directory
    /// (subrequest stripped), `request_ref` is the name in the content (as
    /// the allocation has it, `<request>[/<subrequest>]`).
    pub fn build(
        &self,
        claim: MetadataClaim<'_>,
        request: &str,
        request_ref: &str,
        devices: &[MetadataDevice<'_>],
    ) -> Result<RecordedMetadata, CdiError> {
        if let Some(why) = &self.unusable {
            return Err(CdiError::Metadata(why.clone()));
        }
        if !crate::resource_rules::is_dns_label(request) {
            return Err(CdiError::Metadata(format!(
                "request name {request:?} is not a DNS label"
            )));
        }
        if let Some(pod_claim) = claim.pod_claim_name
            && !pod_claim.is_empty()
            && !crate::resource_rules::is_dns_label(pod_claim)
        {
            return Err(CdiError::Metadata(format!(
                "the claim's {POD_CLAIM_NAME_ANNOTATION} annotation {pod_claim:?} is not a DNS label"
            )));
        }
        let devices = devices.iter().map(|d| self.device(d)).collect::<Result<Vec<_>, _>>()?;
        let object = |api_version| Object {
            kind: "DeviceMetadata",
            api_version,
            metadata: ObjectMeta {
                name: &claim.reference.name,
                namespace: &claim.reference.namespace,
                uid: &claim.reference.uid,
                generation: 1,
            },
            pod_claim_name: claim.pod_claim_name,
            requests: vec![Request {
                name: request_ref,
                devices: devices.clone(),
            }],
        };
        let mut file = Vec::new();
        for version in VERSIONS {
            write_go_json(&mut file, &object(version));
            file.push(b'\n');
        }
        let mount = model::ContainerEdits {
            mounts: vec![model::Mount {
                host_path: self.file_path(claim.reference, request).display().to_string(),
                container_path: self.container_path(claim, request),
                mount_type: None,
                options: vec!["ro".into(), "bind".into()],
            }],
            ..Default::default()
        };
        let cdi_spec = self.cdi.build_spec(&[SpecDevice {
            name: spec_key(&claim.reference.uid, request),
            edits: &mount,
        }])?;
        Ok(RecordedMetadata {
            request: request.to_owned(),
            file: String::from_utf8(file).expect("serde_json writes UTF-8"),
            cdi_spec,
        })
    }

    fn device<'a>(&self, d: &MetadataDevice<'a>) -> Result<Device<'a>, CdiError> {
        let mut attributes = BTreeMap::new();
        let mut network_data = None;
        if let Some(m) = d.metadata {
            for a in &m.attributes {
                let value = match &a.value {
                    model::AttributeValue::Integer(v) => AttributeJson::Int(*v),
                    model::AttributeValue::Boolean(v) => AttributeJson::Bool(*v),
                    model::AttributeValue::Text(v) => AttributeJson::String(v),
                    model::AttributeValue::Version(v) => AttributeJson::Version(v),
                };
                if attributes.insert(a.name.as_str(), value).is_some() {
                    return Err(CdiError::Metadata(format!(
                        "device {}/{}: attribute {:?} appears twice",
                        d.pool, d.device, a.name
                    )));
                }
            }
            network_data = m.network_data.as_ref().map(|n| NetworkData {
                interface_name: &n.interface_name,
                ips: &n.ips,
                hardware_address: &n.hardware_address,
            });
        }
        Ok(Device {
            driver: self.driver.clone(),
            pool: d.pool,
            name: d.device,
            attributes,
            network_data,
        })
    }

    /// Durably write a request's file, then its CDI spec (the spec never
    /// names a file that is not there).
    pub fn write(&self, claim: &ClaimRef, m: &RecordedMetadata) -> Result<(), CdiError> {
        let path = self.file_path(claim, &m.request);
        let dir = path.parent().expect("a request directory");
        fsutil::ensure_dir(dir, 0o755)
            .and_then(|()| fsutil::write_atomic(&path, m.file.as_bytes(), 0o644))
            .map_err(|source| CdiError::MetadataFile { path, source })?;
        self.cdi.write(&spec_key(&claim.uid, &m.request), &m.cdi_spec)
    }

    /// Whether a request's file and CDI spec are both there.
    pub fn exists(&self, claim: &ClaimRef, m: &RecordedMetadata) -> bool {
        self.file_path(claim, &m.request).is_file() && self.cdi.exists(&spec_key(&claim.uid, &m.request))
    }

    /// Remove the files and CDI specs of `requests` of a claim (their CDI
    /// spec first); returns how many requests had something to remove.
    pub fn remove_requests<'r>(
        &self,
        claim: &ClaimRef,
        requests: impl IntoIterator<Item = &'r str>,
    ) -> Result<usize, CdiError> {
        let claim_dir = self.claim_dir(&claim.namespace, &claim.name);
        let mut removed = 0;
        for request in requests {
            let spec = self.cdi.remove(&spec_key(&claim.uid, request))?;
            let dir = claim_dir.join(request);
            let files = match std::fs::remove_dir_all(&dir) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(source) => return Err(CdiError::MetadataFile { path: dir, source }),
            };
            if spec || files {
                removed += 1;
            }
        }
        if removed > 0 {
            match std::fs::remove_dir(&claim_dir) {
                Ok(()) => {}
                // Another request's files, or another claim's of the same name.
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty) => {}
                Err(source) => {
                    return Err(CdiError::MetadataFile {
                        path: claim_dir,
                        source,
                    });
                }
            }
            let parent = if claim_dir.exists() { &claim_dir } else { &self.root };
            fsutil::sync_dir(parent).map_err(|source| CdiError::MetadataFile {
                path: parent.clone(),
                source,
            })?;
        }
        Ok(removed)
    }

    /// Remove everything of a claim, whatever its checkpoint record says:
    /// every request directory under the claim's directory whose file is this
    /// claim's (by UID; the directory is named by namespace and name, which a
    /// newer claim may reuse) or unreadable, with its CDI spec. Returns how
    /// many requests had something to remove.
    pub fn remove_claim(&self, claim: &ClaimRef) -> Result<usize, CdiError> {
        let claim_dir = self.claim_dir(&claim.namespace, &claim.name);
        let entries = match std::fs::read_dir(&claim_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(CdiError::MetadataFile {
                    path: claim_dir,
                    source,
                });
            }
        };
        let mut requests = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CdiError::MetadataFile {
                path: claim_dir.clone(),
                source,
            })?;
            let Some(request) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if file_uid(&entry.path().join(FILE_NAME)).is_none_or(|uid| uid == claim.uid) {
                requests.push(request);
            }
        }
        self.remove_requests(claim, requests.iter().map(String::as_str))
    }
}

/// The UID in a metadata file; `None` when it cannot be read.
fn file_uid(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let mut stream = serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>();
    let first = stream.next()?.ok()?;
    first["metadata"]["uid"].as_str().map(str::to_owned)
}

/// `<claim UID>_<request>`: the CDI device name and spec file key.
fn spec_key(claim_uid: &str, request: &str) -> String {
    format!("{claim_uid}_{request}")
}

// The JSON shapes, fields in the Go types' order (encoding/json writes them
// in declaration order, and map keys sorted, as BTreeMap does).

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Object<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: ObjectMeta<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_claim_name: Option<&'a str>,
    requests: Vec<Request<'a>>,
}

#[derive(Serialize)]
struct ObjectMeta<'a> {
    name: &'a str,
    namespace: &'a str,
    uid: &'a str,
    generation: i64,
}

#[derive(Serialize)]
struct Request<'a> {
    name: &'a str,
    devices: Vec<Device<'a>>,
}

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Device<'a> {
    driver: String,
    pool: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<&'a str, AttributeJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_data: Option<NetworkData<'a>>,
}

/// resource.k8s.io/v1 `DeviceAttribute`: exactly one field.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
enum AttributeJson<'a> {
    Int(i64),
    Bool(bool),
    String(&'a str),
    Version(&'a str),
}

/// resource.k8s.io/v1 `NetworkDeviceData`.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct NetworkData<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    interface_name: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ips: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    hardware_address: &'a str,
}

/// Write `value` as Go's `json.MarshalIndent(v, "", "  ")` does: two-space
/// indentation, and `<`, `>`, `&`, U+2028 and U+2029 escaped as `\u003c`….
fn write_go_json(out: &mut Vec<u8>, value: &impl Serialize) {
    let mut ser = serde_json::Serializer::with_formatter(out, GoFormatter(serde_json::ser::PrettyFormatter::new()));
    value.serialize(&mut ser).expect("serializing to memory cannot fail");
}

struct GoFormatter<'a>(serde_json::ser::PrettyFormatter<'a>);

impl serde_json::ser::Formatter for GoFormatter<'_> {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }
    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        let mut rest = fragment;
        while let Some(i) = rest.find(['<', '>', '&', '\u{2028}', '\u{2029}']) {
            w.write_all(&rest.as_bytes()[..i])?;
            let c = rest[i..].chars().next().expect("a match");
            write!(w, "\\u{:04x}", c as u32)?;
            rest = &rest[i + c.len_utf8()..];
        }
        w.write_all(rest.as_bytes())
    }
}

#[cfg(test)]
mod tests;
