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
//! older hosts: the format version stays 1. So is the device metadata
//! written for the claim (restored like the CDI spec).

use super::fsutil;
use crate::claim::{ClaimRef, PreparedDevice};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

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
    /// The KEP-5304 device metadata written for the claim, one entry per
    /// request with metadata (`state::metadata`), kept so that the files can
    /// be restored like the CDI spec. Absent in records of older hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<RecordedMetadata>,
}

/// The device metadata of one request of a claim, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedMetadata {
    /// The request (subrequest stripped): the file's directory and the CDI
    /// device's name.
    pub request: String,
    /// The metadata file's content (a JSON stream).
    pub file: String,
    /// The CDI spec that mounts it.
    pub cdi_spec: String,
}

/// The guest's view of a claim's allocation, as recorded at prepare time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedAllocation {
    pub devices: Vec<RecordedDevice>,
    pub configs: Vec<RecordedConfig>,
    /// The claim's `resource.kubernetes.io/pod-claim-name` annotation (a
    /// claim made from a template), for the device metadata's paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_claim_name: Option<String>,
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

/// A record in memory, with the bytes its file holds (padding trimmed), so
/// that [`Checkpoint::reload`] decodes only the files that changed.
#[derive(Debug)]
struct Held {
    record: ClaimRecord,
    bytes: Vec<u8>,
}

/// The prepared claims of one driver, in memory and on disk.
#[derive(Debug)]
pub struct Checkpoint {
    driver: String,
    /// The checkpoint directory's files.
    files: fsutil::Recycler,
    claims: Mutex<HashMap<String, Held>>,
    /// Quarantined since the last [`Checkpoint::take_quarantined`].
    quarantined: Mutex<Vec<Quarantined>>,
    /// Set in rolling-update mode: tells [`Checkpoint::reload`] whether the
    /// directory changed at all ([`watch`]).
    watch: OnceLock<watch::DirWatch>,
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
        let (claims, quarantined) = load_dir(dir, driver, &mut HashMap::new())?;
        Ok(Self {
            driver: driver.to_owned(),
            files,
            claims: Mutex::new(claims),
            quarantined: Mutex::new(quarantined),
            watch: OnceLock::new(),
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
    ///
    /// With [`Checkpoint::watch_for_changes`], nothing is read when the
    /// directory has not changed since the last [`Checkpoint::settle`].
    /// Otherwise every file is read (the other process may be an earlier
    /// release: its changes show in the files and the directory's events,
    /// nowhere else), but only those whose bytes differ from the record in
    /// memory are decoded. Returns whether the directory was read.
    pub fn reload(&self) -> Result<bool, CheckpointError> {
        if let Some(watch) = self.watch.get() {
            match watch.changed() {
                Ok(false) => return Ok(false),
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(dir = %self.files.dir().display(), error = %e, "could not read the checkpoint directory's change events; reading the directory")
                }
            }
        }
        let mut claims = self.lock();
        let (fresh, quarantined) = load_dir(self.files.dir(), &self.driver, &mut claims)?;
        *claims = fresh;
        drop(claims);
        self.quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(quarantined);
        Ok(true)
    }

    /// Watch the directory for changes from now on, so that
    /// [`Checkpoint::reload`] reads it only when something changed. For
    /// rolling-update mode: call it under the node-wide lock, right after
    /// [`Checkpoint::open`], and call [`Checkpoint::settle`] at the end of
    /// every stretch of holding the lock.
    pub fn watch_for_changes(&self) -> io::Result<()> {
        let watch = watch::DirWatch::new(self.files.dir())?;
        let _ = self.watch.set(watch);
        Ok(())
    }

    /// Forget the directory's changes made so far. Only while holding the
    /// node-wide lock, at the end of a call: every change then is this
    /// process's own (see [`watch`]), already in memory.
    pub fn settle(&self) {
        if let Some(watch) = self.watch.get() {
            // An error leaves the events queued: the next reload reads the directory.
            let _ = watch.changed();
        }
    }

    pub fn dir(&self) -> &Path {
        self.files.dir()
    }

    /// The boot ID a claim's record was written in (`Some(None)`: a record
    /// without one), without copying the record.
    pub fn boot_id(&self, uid: &str) -> Option<Option<String>> {
        self.lock().get(uid).map(|h| h.record.boot_id.clone())
    }

    pub fn get(&self, uid: &str) -> Option<ClaimRecord> {
        self.lock().get(uid).map(|h| h.record.clone())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every checkpointed claim (a snapshot).
    pub fn records(&self) -> Vec<ClaimRecord> {
        self.lock().values().map(|h| h.record.clone()).collect()
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
        self.lock().insert(record.claim.uid.clone(), Held { record, bytes });
        Ok(())
    }

    /// Durably forget a claim. Returns the record it had, if any.
    pub fn remove(&self, uid: &str) -> Result<Option<ClaimRecord>, CheckpointError> {
        let name = file_name(uid)?;
        self.files.remove(&name).map_err(|source| CheckpointError::Io {
            path: self.files.dir().join(&name),
            source,
        })?;
        Ok(self.lock().remove(uid).map(|h| h.record))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Held>> {
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
/// Every record in `dir`; a record whose file holds the bytes of its entry
/// in `known` is taken from there (and removed from it) instead of decoded.
fn load_dir(
    dir: &Path,
    driver: &str,
    known: &mut HashMap<String, Held>,
) -> Result<(HashMap<String, Held>, Vec<Quarantined>), CheckpointError> {
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
            Ok(mut bytes) => {
                bytes.truncate(bytes.trim_ascii_end().len());
                if let Some(held) = known.remove(uid).filter(|h| h.bytes == bytes) {
                    claims.insert(uid.to_owned(), held);
                    continue;
                }
                match decode_record(&bytes, driver, Some(uid)) {
                    Ok(record) => {
                        claims.insert(uid.to_owned(), Held { record, bytes });
                        continue;
                    }
                    Err(e) => (e.reason(), e.to_string()),
                }
            }
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
    // The padding to whole blocks (see `fsutil::Recycler`): JSON allows it,
    // but the parser would step through it byte by byte.
    let bytes = bytes.trim_ascii_end();
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

mod watch;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
