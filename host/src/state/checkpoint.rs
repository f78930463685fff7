//! The checkpoint of prepared claims: what survives a crash or restart of the
//! host so that prepare stays idempotent and every prepared claim can be
//! unprepared, even by a newer guest build.
//!
//! Layout: one file per claim, `<dir>/<claim uid>.json`, each written and
//! removed through an [`fsutil::Recycler`]: atomically and durably, reusing
//! the files of removed claims (hidden spares) instead of creating and
//! freeing one per claim, and padded with spaces to whole 4 KiB blocks, which
//! every version of the decoder skips as JSON whitespace. One file per claim
//! keeps a commit proportional to one claim (not to everything prepared on
//! the node), and lets two host processes during a rolling update share the
//! directory without overwriting each other's claims.
//!
//! Each file is an envelope naming its kind, format version and driver, with a
//! CRC-32 of the record's exact bytes; [`decode_record`] checks all of it and
//! is a pure function of the bytes (the fuzz tests drive it directly).
//!
//! A record that does not verify (corrupt, truncated, empty, another driver's,
//! a format version this host does not read) never takes the driver down:
//! the file is moved, unchanged, to the quarantine folder beside the
//! checkpoint (`<plugin dir>/claims-quarantine/`), never deleted, and the
//! rest is served. The caller reports each one ([`Checkpoint::take_quarantined`]).
//! Its claim is then simply unknown to the checkpoint: a prepare runs the
//! guest again and writes a new record, an unprepare runs the guest's
//! `unprepare` with empty state and removes the CDI spec.
//!
//! Each record also carries the node's boot ID at the time it was written
//! and the allocation it was prepared from, so that after a reboot (device
//! state gone, checkpoint kept) the claim can be prepared again even when the
//! ResourceClaim cannot be fetched. Both fields are optional and ignored by
//! older hosts: the format version stays 1.

use super::fsutil;
use crate::claim::{ClaimRef, PreparedDevice};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const KIND: &str = "DraWasmHostClaimCheckpoint";
const FORMAT_VERSION: u32 = 1;
const SUFFIX: &str = ".json";
/// The quarantine folder's name, beside the checkpoint directory.
pub const QUARANTINE_DIR: &str = "claims-quarantine";

/// Which guest build prepared a claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestIdentity {
    pub name: String,
    pub version: String,
    /// SHA-256 of the component file, hex.
    pub digest: String,
}

/// One prepared claim, as checkpointed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRecord {
    pub claim: ClaimRef,
    pub devices: Vec<PreparedDevice>,
    /// The CDI spec written for this claim (JSON), kept so that it can be
    /// restored when the CDI directory was wiped (it is a tmpfs on most nodes).
    pub cdi_spec: Option<String>,
    /// The opaque state the guest returned; handed back to `unprepare`.
    #[serde(with = "base64_bytes")]
    pub state: Vec<u8>,
    pub guest: GuestIdentity,
    /// Unix seconds.
    pub prepared_at: u64,
    /// This driver's entries for the claim's `status.devices`, kept so that
    /// they can be written again until the API server has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_status: Vec<RecordedDeviceStatus>,
    /// The node's boot ID when the guest prepared the claim. A different
    /// boot ID at start-up means the device-side state is gone (reboot).
    /// Absent in records of older hosts (then taken as the current boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// What the guest prepared: this driver's allocated devices and opaque
    /// configs, used to prepare again after a reboot when the ResourceClaim
    /// cannot be fetched. Absent in records of older hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<RecordedAllocation>,
}

/// The guest's view of a claim's allocation, as recorded at prepare time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedAllocation {
    pub devices: Vec<RecordedDevice>,
    pub configs: Vec<RecordedConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedDevice {
    /// As in the allocation result (may name a subrequest).
    pub request: String,
    pub pool: String,
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumed_capacity: Vec<(String, String)>,
    #[serde(default)]
    pub admin_access: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedConfig {
    /// `FromClass` or `FromClaim`, as in the ResourceClaim.
    pub source: String,
    #[serde(default)]
    pub requests: Vec<String>,
    /// The opaque parameters, JSON.
    pub parameters: String,
}

/// A `status.devices` entry as the checkpoint stores it: the JSON of a
/// resource.k8s.io/v1 `AllocatedDeviceStatus`, field for field and in the
/// same order, which is what records of earlier hosts hold. The checkpoint
/// owns this type so that its format does not move with the Kubernetes
/// client library; `kube::status` converts at the API boundary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedDeviceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<RecordedCondition>>,
    /// The driver's opaque data, any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    pub device: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<RecordedNetworkData>,
    pub pool: String,
    #[serde(rename = "shareID", default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
}

/// A condition of a [`RecordedDeviceStatus`] (a meta/v1 `Condition`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedCondition {
    /// RFC 3339 in whole seconds, UTC (`2026-12-06T04:25:00Z`), as the API
    /// server writes it.
    pub last_transition_time: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub reason: String,
    pub status: String,
    #[serde(rename = "type")]
    pub type_: String,
}

/// The network data of a [`RecordedDeviceStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedNetworkData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<'a> {
    kind: &'a str,
    version: u32,
    driver: &'a str,
    /// CRC-32 (IEEE) of the exact bytes of `claim`.
    checksum: u32,
    #[serde(borrow)]
    claim: &'a RawValue,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint directory {}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error("checkpoint file {}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("claim UID {0:?} cannot name a checkpoint file")]
    BadUid(String),
}

/// Why bytes are not a record of this driver ([`decode_record`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a record at all, or damaged: bad JSON, truncated, empty, a
    /// checksum that does not match, a record named for another claim.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A well-formed record this host must not use: another kind, another
    /// driver's, or a format version it does not read.
    #[error("not this driver's: {0}")]
    Foreign(String),
}

impl DecodeError {
    /// A metric label: `corrupt` or `foreign`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Corrupt(_) => "corrupt",
            DecodeError::Foreign(_) => "foreign",
        }
    }
}

/// A record that could not be used, moved out of the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where it was.
    pub path: PathBuf,
    /// Where it is now; `None` when moving it failed (then it stays where it
    /// was, is ignored, and is reported again at the next load).
    pub moved_to: Option<PathBuf>,
    /// The claim UID its file name gives, if it is one.
    pub uid: Option<String>,
    /// `corrupt`, `foreign` or `unreadable` (the file could not be read).
    pub reason: &'static str,
    /// What was wrong, for logs and events.
    pub detail: String,
}

/// The prepared claims of one driver, in memory and on disk.
#[derive(Debug)]
pub struct Checkpoint {
    driver: String,
    /// The checkpoint directory's files.
    files: fsutil::Recycler,
    claims: Mutex<HashMap<String, ClaimRecord>>,
    /// Quarantined since the last [`Checkpoint::take_quarantined`].
    quarantined: Mutex<Vec<Quarantined>>,
}

impl Checkpoint {
    /// Open (creating if needed) the checkpoint in `dir` and load every record.
    pub fn open(dir: &Path, driver: &str) -> Result<Self, CheckpointError> {
        let dir_err = |source| CheckpointError::Dir {
            dir: dir.to_owned(),
            source,
        };
        fsutil::ensure_dir(dir, 0o700).map_err(dir_err)?;
        let removed = fsutil::remove_stale_temp_files(dir, |t| t.ends_with(SUFFIX)).map_err(dir_err)?;
        for path in removed {
            tracing::info!(path = %path.display(), "removed an unfinished checkpoint write left by a crash");
        }
        let files = fsutil::Recycler::open(dir, 0o600).map_err(dir_err)?;
        let (claims, quarantined) = load_dir(dir, driver)?;
        Ok(Self {
            driver: driver.to_owned(),
            files,
            claims: Mutex::new(claims),
            quarantined: Mutex::new(quarantined),
        })
    }

    /// The records quarantined by the loads since the last call, for the
    /// caller to report (log, metric, Kubernetes Event).
    pub fn take_quarantined(&self) -> Vec<Quarantined> {
        std::mem::take(&mut *self.quarantined.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Read the directory again, replacing what is in memory. During a
    /// rolling update another host process commits and removes records in
    /// the same directory; this is called under the serialization lock
    /// (see [`super::serialize`]) before each claim operation.
    pub fn reload(&self) -> Result<(), CheckpointError> {
        let (claims, quarantined) = load_dir(self.files.dir(), &self.driver)?;
        *self.lock() = claims;
        self.quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(quarantined);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.files.dir()
    }

    pub fn get(&self, uid: &str) -> Option<ClaimRecord> {
        self.lock().get(uid).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every checkpointed claim (a snapshot).
    pub fn records(&self) -> Vec<ClaimRecord> {
        self.lock().values().cloned().collect()
    }

    /// Durably record a prepared claim, replacing any earlier record.
    pub fn commit(&self, record: ClaimRecord) -> Result<(), CheckpointError> {
        let name = file_name(&record.claim.uid)?;
        let io_err = |source| CheckpointError::Io {
            path: self.files.dir().join(&name),
            source,
        };
        let bytes = encode_record(&record, &self.driver).map_err(|e| io_err(io::Error::other(e)))?;
        self.files.write(&name, &bytes).map_err(io_err)?;
        self.lock().insert(record.claim.uid.clone(), record);
        Ok(())
    }

    /// Durably forget a claim. Returns the record it had, if any.
    pub fn remove(&self, uid: &str) -> Result<Option<ClaimRecord>, CheckpointError> {
        let name = file_name(uid)?;
        self.files.remove(&name).map_err(|source| CheckpointError::Io {
            path: self.files.dir().join(&name),
            source,
        })?;
        Ok(self.lock().remove(uid))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ClaimRecord>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (each update is a single insert/remove), so poisoning is ignored.
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The name of a claim's record file.
fn file_name(uid: &str) -> Result<String, CheckpointError> {
    if !crate::claim::is_safe_uid(uid) {
        return Err(CheckpointError::BadUid(uid.to_owned()));
    }
    Ok(format!("{uid}{SUFFIX}"))
}

/// Every usable record in `dir`, and the unusable ones, quarantined.
fn load_dir(dir: &Path, driver: &str) -> Result<(HashMap<String, ClaimRecord>, Vec<Quarantined>), CheckpointError> {
    let dir_err = |source| CheckpointError::Dir {
        dir: dir.to_owned(),
        source,
    };
    let mut claims = HashMap::new();
    let mut quarantined = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let path = entry.map_err(dir_err)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let Some(uid) = name.strip_suffix(SUFFIX) else { continue };
        if name.starts_with('.') {
            continue;
        }
        let (reason, detail) = match std::fs::read(&path) {
            Ok(bytes) => match decode_record(&bytes, driver, Some(uid)) {
                Ok(record) => {
                    claims.insert(uid.to_owned(), record);
                    continue;
                }
                Err(e) => (e.reason(), e.to_string()),
            },
            // Removed by the other host process between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => ("unreadable", format!("cannot be read: {e}")),
        };
        let moved_to = match quarantine(dir, &path, &name) {
            Ok(to) => Some(to),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %crate::error::Chain(&e), "could not move an unusable checkpoint record to quarantine; it is ignored");
                None
            }
        };
        quarantined.push(Quarantined {
            path,
            moved_to,
            uid: crate::claim::is_safe_uid(uid).then(|| uid.to_owned()),
            reason,
            detail,
        });
    }
    Ok((claims, quarantined))
}

/// Move `path` (named `name`) into the quarantine folder beside `dir`,
/// under a name no earlier quarantined file has. Durable: both directories
/// are synced.
fn quarantine(dir: &Path, path: &Path, name: &str) -> io::Result<PathBuf> {
    let folder = dir.with_file_name(QUARANTINE_DIR);
    fsutil::ensure_dir(&folder, 0o700)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut target = folder.join(format!("{name}.{stamp}"));
    let mut n = 1;
    while target.exists() {
        target = folder.join(format!("{name}.{stamp}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &target)?;
    fsutil::sync_dir(&folder)?;
    fsutil::sync_dir(dir)?;
    Ok(target)
}

/// Decode one checkpoint file: the envelope (kind, format version, driver,
/// checksum) and the record in it. With `uid`, the record must be that
/// claim's (the file's name). A pure function of its input: no I/O, and no
/// input makes it panic.
pub fn decode_record(bytes: &[u8], driver: &str, uid: Option<&str>) -> Result<ClaimRecord, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Corrupt("the file is empty".into()));
    }
    let envelope: Envelope<'_> =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Corrupt(format!("not a checkpoint envelope: {e}")))?;
    if envelope.kind != KIND {
        return Err(DecodeError::Foreign(format!(
            "kind is {:?}, expected {KIND:?}",
            envelope.kind
        )));
    }
    if envelope.version != FORMAT_VERSION {
        return Err(DecodeError::Foreign(format!(
            "format version {} is not understood by this host (it reads version {FORMAT_VERSION})",
            envelope.version
        )));
    }
    if envelope.driver != driver {
        return Err(DecodeError::Foreign(format!(
            "it belongs to driver {:?}, not {driver:?}",
            envelope.driver
        )));
    }
    let actual = crc32fast::hash(envelope.claim.get().as_bytes());
    if actual != envelope.checksum {
        return Err(DecodeError::Corrupt(format!(
            "checksum {actual:#010x} does not match the recorded {:#010x}",
            envelope.checksum
        )));
    }
    let record: ClaimRecord =
        serde_json::from_str(envelope.claim.get()).map_err(|e| DecodeError::Corrupt(format!("claim record: {e}")))?;
    if let Some(uid) = uid
        && record.claim.uid != uid
    {
        return Err(DecodeError::Corrupt(format!(
            "it records claim {}, but is named for claim {uid}",
            record.claim.uid
        )));
    }
    Ok(record)
}

/// The bytes [`Checkpoint::commit`] writes for `record`: the inverse of
/// [`decode_record`].
pub fn encode_record(record: &ClaimRecord, driver: &str) -> Result<Vec<u8>, serde_json::Error> {
    let raw = RawValue::from_string(serde_json::to_string(record)?)?;
    serde_json::to_vec(&Envelope {
        kind: KIND,
        version: FORMAT_VERSION,
        driver,
        checksum: crc32fast::hash(raw.get().as_bytes()),
        claim: &raw,
    })
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str) -> ClaimRecord {
        ClaimRecord {
            claim: ClaimRef {
                namespace: "ns".into(),
                name: "c".into(),
                uid: uid.into(),
            },
            devices: vec![PreparedDevice {
                request_names: vec!["gpu".into()],
                pool: "node".into(),
                device: "gpu-0".into(),
                share_id: None,
                cdi_device_ids: vec!["k8s.example.com/device=u-gpu-0".into()],
            }],
            cdi_spec: Some("{}".into()),
            state: vec![0, 1, 2, 255],
            guest: GuestIdentity {
                name: "g".into(),
                version: "1".into(),
                digest: "ab".into(),
            },
            prepared_at: 1,
            device_status: vec![],
            boot_id: None,
            allocation: None,
        }
    }

    #[test]
    fn a_removed_claims_record_is_kept_as_a_spare_that_no_load_reads() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path(), "drv").unwrap();
        cp.commit(record("u1")).unwrap();
        let bytes = std::fs::read(dir.path().join("u1.json")).unwrap();
        assert_eq!(bytes.len() % 4096, 0, "padded to whole blocks");
        assert!(bytes.ends_with(b" "));
        // Every decoder this project shipped parses the whole file with
        // serde_json::from_slice, as this one does: the padding is whitespace.
        assert_eq!(decode_record(&bytes, "drv", Some("u1")).unwrap(), record("u1"));

        assert_eq!(cp.remove("u1").unwrap(), Some(record("u1")));
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 1, "the record's file stays, hidden, as a spare: {files:?}");
        // The spare still holds u1's record; neither a load nor a reload takes it for one.
        let reopened = Checkpoint::open(dir.path(), "drv").unwrap();
        assert!(reopened.is_empty());
        reopened.reload().unwrap();
        assert!(reopened.is_empty());
        assert!(reopened.take_quarantined().is_empty());

        // The next commit goes into it.
        reopened.commit(record("u2")).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["u2.json"]);
        assert_eq!(
            Checkpoint::open(dir.path(), "drv").unwrap().get("u2").unwrap(),
            record("u2")
        );
    }

    #[test]
    fn records_survive_reopen_and_removal_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path(), "drv").unwrap();
        cp.commit(record("u1")).unwrap();
        cp.commit(record("u2")).unwrap();
        cp.remove("u2").unwrap();
        let cp = Checkpoint::open(dir.path(), "drv").unwrap();
        assert_eq!(cp.len(), 1);
        assert_eq!(cp.get("u1").unwrap(), record("u1"));
    }

    /// Every way a record goes bad on a node: moved to quarantine unchanged,
    /// reported with its reason, and the good record still served.
    #[test]
    fn unusable_records_are_quarantined_and_the_rest_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let claims = dir.path().join("claims");
        let cp = Checkpoint::open(&claims, "drv").unwrap();
        for uid in ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"] {
            cp.commit(record(uid)).unwrap();
        }
        let path = |uid: &str| claims.join(format!("{uid}.json"));
        let good = std::fs::read_to_string(path("u0")).unwrap();
        let envelope = |field: &str, value: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
            v[field] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let damage: Vec<(&str, Vec<u8>, &str)> = vec![
            ("u1", good.replace("gpu-0", "gpu-1").into_bytes(), "corrupt"), // checksum
            ("u2", good.as_bytes()[..good.len() / 2].to_vec(), "corrupt"),  // truncated
            ("u3", Vec::new(), "corrupt"),                                  // empty
            ("u4", envelope("driver", "other".into()), "foreign"),
            ("u5", envelope("version", 2.into()), "foreign"),
            ("u6", good.clone().into_bytes(), "corrupt"), // u0's record under u6's name
        ];
        for (uid, bytes, _) in &damage {
            std::fs::write(path(uid), bytes).unwrap();
        }
        let cp = Checkpoint::open(&claims, "drv").unwrap();
        let mut loaded: Vec<_> = cp.records().into_iter().map(|r| r.claim.uid).collect();
        loaded.sort();
        assert_eq!(loaded, ["u0", "u7"]);
        let quarantined = cp.take_quarantined();
        assert_eq!(quarantined.len(), damage.len());
        for (uid, bytes, reason) in &damage {
            let q = quarantined
                .iter()
                .find(|q| q.uid.as_deref() == Some(*uid))
                .unwrap_or_else(|| panic!("{uid} not reported"));
            assert_eq!(q.reason, *reason, "{uid}: {}", q.detail);
            assert_eq!(q.path, path(uid));
            let moved = q.moved_to.as_ref().expect("moved");
            assert!(
                moved.starts_with(dir.path().join(QUARANTINE_DIR)),
                "{}",
                moved.display()
            );
            assert_eq!(&std::fs::read(moved).unwrap(), bytes, "moved unchanged");
            assert!(!path(uid).exists());
        }
        assert!(cp.take_quarantined().is_empty(), "reported once");
        // The same name going bad again does not overwrite the first copy.
        std::fs::write(path("u3"), b"").unwrap();
        cp.reload().unwrap();
        assert_eq!(cp.take_quarantined().len(), 1);
        assert_eq!(std::fs::read_dir(dir.path().join(QUARANTINE_DIR)).unwrap().count(), 7);
    }

    #[test]
    fn decode_is_the_inverse_of_encode() {
        let mut r = record("u1");
        r.boot_id = Some("b".into());
        r.allocation = Some(RecordedAllocation {
            devices: vec![RecordedDevice {
                request: "gpu/small".into(),
                pool: "node".into(),
                device: "gpu-0".into(),
                share_id: None,
                consumed_capacity: vec![("memory".into(), "1Gi".into())],
                admin_access: false,
            }],
            configs: vec![RecordedConfig {
                source: "FromClaim".into(),
                requests: vec![],
                parameters: "{}".into(),
            }],
        });
        let bytes = encode_record(&r, "drv").unwrap();
        assert_eq!(decode_record(&bytes, "drv", Some("u1")).unwrap(), r);
        assert_eq!(decode_record(&bytes, "drv", None).unwrap(), r);
        assert!(matches!(
            decode_record(&bytes, "drv", Some("u2")),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(decode_record(&bytes, "x", None), Err(DecodeError::Foreign(_))));
    }

    /// Records written before boot IDs and allocations were recorded load.
    #[test]
    fn records_of_older_hosts_load() {
        let mut r = serde_json::to_value(record("u1")).unwrap();
        let fields = r.as_object_mut().unwrap();
        fields.remove("bootId");
        fields.remove("allocation");
        let raw = serde_json::to_string(&r).unwrap();
        let bytes = format!(
            r#"{{"kind":"{KIND}","version":1,"driver":"drv","checksum":{},"claim":{raw}}}"#,
            crc32fast::hash(raw.as_bytes())
        );
        let bytes = bytes.as_bytes();
        let decoded = decode_record(bytes, "drv", Some("u1")).unwrap();
        assert_eq!(decoded.boot_id, None);
        assert_eq!(decoded.allocation, None);
    }

    /// A record exactly as the released host (0.1.0, 546366c) writes it,
    /// with every optional field, `status.devices` entries as
    /// k8s-openapi 0.29 serialized them: it decodes, and encodes back to the
    /// same bytes, so the format the checkpoint now owns is the released one.
    #[test]
    fn records_in_the_released_format_load_and_are_written_the_same() {
        let raw = concat!(
            r#"{"claim":{"namespace":"ns","name":"c","uid":"u1"},"#,
            r#""devices":[{"requestNames":["gpu"],"pool":"node","device":"gpu-0","shareId":"s1","cdiDeviceIds":["k8s.example.com/device=u1_gpu-0_s1"]}],"#,
            r#""cdiSpec":"{}","state":"AAEC/w==","guest":{"name":"g","version":"1","digest":"ab"},"preparedAt":1764990000,"#,
            r#""deviceStatus":[{"conditions":[{"lastTransitionTime":"2026-12-06T04:25:00Z","message":"up","reason":"Configured","status":"True","type":"Ready"}],"#,
            r#""data":{"speed":"fast"},"device":"gpu-0","driver":"example.dra.dev","networkData":{"hardwareAddress":"02:00:00:00:00:01","interfaceName":"net1","ips":["192.0.2.5/24"]},"pool":"node","shareID":"s1"},"#,
            r#"{"device":"gpu-1","driver":"example.dra.dev","pool":"node"}],"#,
            r#""bootId":"b-1","#,
            r#""allocation":{"devices":[{"request":"gpu/a","pool":"node","device":"gpu-0","shareId":"s1","consumedCapacity":[["memory","1Gi"]],"adminAccess":false}],"#,
            r#""configs":[{"source":"FromClaim","requests":["gpu"],"parameters":"{\"a\":1}"}]}}"#
        );
        // What k8s-openapi writes for these entries is what is recorded here.
        let entries: serde_json::Value = serde_json::from_str(raw).unwrap();
        let k8s: Vec<k8s_openapi::api::resource::v1::AllocatedDeviceStatus> =
            serde_json::from_value(entries["deviceStatus"].clone()).unwrap();
        assert_eq!(
            serde_json::to_string(&k8s).unwrap(),
            serde_json::to_string(&entries["deviceStatus"]).unwrap()
        );

        let bytes = format!(
            r#"{{"kind":"{KIND}","version":1,"driver":"drv","checksum":{},"claim":{raw}}}"#,
            crc32fast::hash(raw.as_bytes())
        );
        let decoded = decode_record(bytes.as_bytes(), "drv", Some("u1")).unwrap();
        assert_eq!(decoded.state, [0, 1, 2, 255]);
        assert_eq!(decoded.boot_id.as_deref(), Some("b-1"));
        let status = &decoded.device_status[0];
        assert_eq!(status.share_id.as_deref(), Some("s1"));
        let condition = &status.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (condition.type_.as_str(), condition.last_transition_time.as_str()),
            ("Ready", "2026-12-06T04:25:00Z")
        );
        assert_eq!(
            status.network_data.as_ref().unwrap().ips.as_deref(),
            Some(&["192.0.2.5/24".to_owned()][..])
        );
        assert_eq!(decoded.device_status[1].conditions, None);
        assert_eq!(serde_json::to_string(&decoded).unwrap(), raw);
    }

    #[test]
    fn unsafe_uids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path(), "drv").unwrap();
        assert!(matches!(
            cp.commit(record("../escape")).unwrap_err(),
            CheckpointError::BadUid(_)
        ));
        assert!(matches!(cp.remove(".hidden").unwrap_err(), CheckpointError::BadUid(_)));
    }
}

/// Fuzzing the decoder (see [`crate::fuzzing`]): whatever the bytes, it
/// returns an error or a record, never panics, and never takes a damaged
/// record for a good one.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzzing::fuzz;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9.-]{0,16}",
            any::<String>(),
            Just(String::new()),
            Just("\"\\\u{0}\u{ffff}/".to_owned()),
        ]
    }

    fn device() -> impl Strategy<Value = PreparedDevice> {
        (
            vec(text(), 0..3),
            text(),
            text(),
            proptest::option::of(text()),
            vec(text(), 0..3),
        )
            .prop_map(
                |(request_names, pool, device, share_id, cdi_device_ids)| PreparedDevice {
                    request_names,
                    pool,
                    device,
                    share_id,
                    cdi_device_ids,
                },
            )
    }

    fn allocation() -> impl Strategy<Value = RecordedAllocation> {
        let device = (
            text(),
            text(),
            text(),
            proptest::option::of(text()),
            vec((text(), text()), 0..3),
            any::<bool>(),
        )
            .prop_map(
                |(request, pool, device, share_id, consumed_capacity, admin_access)| RecordedDevice {
                    request,
                    pool,
                    device,
                    share_id,
                    consumed_capacity,
                    admin_access,
                },
            );
        let config = (text(), vec(text(), 0..3), text()).prop_map(|(source, requests, parameters)| RecordedConfig {
            source,
            requests,
            parameters,
        });
        (vec(device, 0..4), vec(config, 0..3)).prop_map(|(devices, configs)| RecordedAllocation { devices, configs })
    }

    pub(super) fn record() -> impl Strategy<Value = ClaimRecord> {
        let claim = (text(), text(), text()).prop_map(|(namespace, name, uid)| ClaimRef { namespace, name, uid });
        let guest =
            (text(), text(), text()).prop_map(|(name, version, digest)| GuestIdentity { name, version, digest });
        let status = vec(
            (text(), text(), text()).prop_map(|(driver, pool, device)| RecordedDeviceStatus {
                driver,
                pool,
                device,
                ..Default::default()
            }),
            0..2,
        );
        (
            claim,
            vec(device(), 0..4),
            proptest::option::of(text()),
            vec(any::<u8>(), 0..256),
            guest,
            any::<u64>(),
            status,
            proptest::option::of(text()),
            proptest::option::of(allocation()),
        )
            .prop_map(
                |(claim, devices, cdi_spec, state, guest, prepared_at, device_status, boot_id, allocation)| {
                    ClaimRecord {
                        claim,
                        devices,
                        cdi_spec,
                        state,
                        guest,
                        prepared_at,
                        device_status,
                        boot_id,
                        allocation,
                    }
                },
            )
    }

    #[derive(Debug, Clone)]
    enum Input {
        /// Any bytes.
        Raw(Vec<u8>),
        /// A good file, then one byte replaced.
        OneByte(ClaimRecord, usize, u8),
        /// A good file, cut short.
        Truncated(ClaimRecord, usize),
        /// A good file, then several bytes replaced, inserted or removed.
        Mangled(ClaimRecord, Vec<(usize, u8, u8)>),
        /// A good file.
        Good(ClaimRecord),
    }

    #[test]
    fn fuzz_checkpoint_decoder() {
        let input = prop_oneof![
            vec(any::<u8>(), 0..1024).prop_map(Input::Raw),
            (record(), any::<usize>(), any::<u8>()).prop_map(|(r, at, b)| Input::OneByte(r, at, b)),
            (record(), any::<usize>()).prop_map(|(r, at)| Input::Truncated(r, at)),
            (record(), vec((any::<usize>(), 0u8..3, any::<u8>()), 1..8)).prop_map(|(r, m)| Input::Mangled(r, m)),
            record().prop_map(Input::Good),
        ];
        fuzz("checkpoint decoder", 1, input, |input| {
            match input {
                Input::Raw(bytes) => {
                    if let Ok(r) = decode_record(&bytes, "drv", None) {
                        let again = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(decode_record(&again, "drv", None), Ok(r));
                    }
                }
                Input::Good(r) => {
                    let bytes = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(decode_record(&bytes, "drv", Some(&r.claim.uid)), Ok(r.clone()));
                    prop_assert!(decode_record(&bytes, "other", None).is_err());
                }
                Input::OneByte(r, at, b) => {
                    let mut bytes = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let at = at % bytes.len();
                    bytes[at] = b;
                    // A changed byte is caught (JSON syntax, envelope fields, or
                    // the CRC, which detects every single-byte change).
                    if let Ok(decoded) = decode_record(&bytes, "drv", None) {
                        prop_assert_eq!(decoded, r, "a changed file decoded to another record");
                    }
                }
                Input::Truncated(r, at) => {
                    let bytes = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let at = at % bytes.len();
                    prop_assert!(
                        decode_record(&bytes[..at], "drv", None).is_err(),
                        "a prefix of {at} bytes decoded"
                    );
                }
                Input::Mangled(r, edits) => {
                    let mut bytes = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for (at, op, b) in edits {
                        let at = at % (bytes.len() + 1);
                        match op {
                            0 if at < bytes.len() => bytes[at] = b,
                            1 => bytes.insert(at, b),
                            _ if at < bytes.len() => {
                                bytes.remove(at);
                            }
                            _ => {}
                        }
                    }
                    let _ = decode_record(&bytes, "drv", None);
                }
            }
            Ok(())
        });
    }
}
