//! The checkpoint of prepared claims: what survives a crash or restart of the
//! host so that prepare stays idempotent and every prepared claim can be
//! unprepared, even by a newer guest build.
//!
//! Layout: one file per claim, `<dir>/<claim uid>.json`, each written with
//! [`fsutil::write_atomic`]. One file per claim keeps a commit proportional to
//! one claim (not to everything prepared on the node), and lets two host
//! processes during a rolling update share the directory without overwriting
//! each other's claims.
//!
//! Each file is an envelope naming its kind, format version and driver, with a
//! CRC-32 of the record's exact bytes. Anything that does not verify is a
//! start-up error naming the file: the host never guesses, and never drops a
//! claim it cannot read.

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
    pub device_status: Vec<k8s_openapi::api::resource::v1::AllocatedDeviceStatus>,
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
    #[error("checkpoint directory {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error("checkpoint file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("checkpoint file {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("checkpoint file {} is not this driver's: {reason}", path.display())]
    Foreign { path: PathBuf, reason: String },
    #[error("claim UID {0:?} cannot name a checkpoint file")]
    BadUid(String),
}

/// The prepared claims of one driver, in memory and on disk.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    driver: String,
    claims: Mutex<HashMap<String, ClaimRecord>>,
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
        let claims = load_dir(dir, driver)?;
        Ok(Self {
            dir: dir.to_owned(),
            driver: driver.to_owned(),
            claims: Mutex::new(claims),
        })
    }

    /// Read the directory again, replacing what is in memory. During a
    /// rolling update another host process commits and removes records in
    /// the same directory; this is called under the serialization lock
    /// (see [`super::serialize`]) before each claim operation.
    pub fn reload(&self) -> Result<(), CheckpointError> {
        let claims = load_dir(&self.dir, &self.driver)?;
        *self.lock() = claims;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
        let path = self.path_for(&record.claim.uid)?;
        let claim = serde_json::to_string(&record).map_err(|e| CheckpointError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let raw = RawValue::from_string(claim).map_err(|e| CheckpointError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let envelope = Envelope {
            kind: KIND,
            version: FORMAT_VERSION,
            driver: &self.driver,
            checksum: crc32fast::hash(raw.get().as_bytes()),
            claim: &raw,
        };
        let bytes = serde_json::to_vec(&envelope).map_err(|e| CheckpointError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        fsutil::write_atomic(&path, &bytes, 0o600).map_err(|source| CheckpointError::Io { path, source })?;
        self.lock().insert(record.claim.uid.clone(), record);
        Ok(())
    }

    /// Durably forget a claim. Returns the record it had, if any.
    pub fn remove(&self, uid: &str) -> Result<Option<ClaimRecord>, CheckpointError> {
        let path = self.path_for(uid)?;
        fsutil::remove_durable(&path).map_err(|source| CheckpointError::Io { path, source })?;
        Ok(self.lock().remove(uid))
    }

    fn path_for(&self, uid: &str) -> Result<PathBuf, CheckpointError> {
        if !crate::claim::is_safe_uid(uid) {
            return Err(CheckpointError::BadUid(uid.to_owned()));
        }
        Ok(self.dir.join(format!("{uid}{SUFFIX}")))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ClaimRecord>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (each update is a single insert/remove), so poisoning is ignored.
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every record in `dir`, checked.
fn load_dir(dir: &Path, driver: &str) -> Result<HashMap<String, ClaimRecord>, CheckpointError> {
    let dir_err = |source| CheckpointError::Dir {
        dir: dir.to_owned(),
        source,
    };
    let mut claims = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let path = entry.map_err(dir_err)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let Some(uid) = name.strip_suffix(SUFFIX) else { continue };
        if name.starts_with('.') {
            continue;
        }
        let record = match read_record(&path, driver) {
            Ok(r) => r,
            // Removed by the other host process between listing and reading.
            Err(CheckpointError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if record.claim.uid != uid {
            return Err(CheckpointError::Corrupt {
                path,
                reason: format!("it records claim {}, but is named for claim {uid}", record.claim.uid),
            });
        }
        claims.insert(uid.to_owned(), record);
    }
    Ok(claims)
}

fn read_record(path: &Path, driver: &str) -> Result<ClaimRecord, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })?;
    let envelope: Envelope<'_> =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a checkpoint envelope: {e}")))?;
    if envelope.kind != KIND {
        return Err(CheckpointError::Foreign {
            path: path.to_owned(),
            reason: format!("kind is {:?}, expected {KIND:?}", envelope.kind),
        });
    }
    if envelope.version != FORMAT_VERSION {
        return Err(CheckpointError::Foreign {
            path: path.to_owned(),
            reason: format!(
                "format version {} is not understood by this host (it reads version {FORMAT_VERSION})",
                envelope.version
            ),
        });
    }
    if envelope.driver != driver {
        return Err(CheckpointError::Foreign {
            path: path.to_owned(),
            reason: format!("it belongs to driver {:?}, not {driver:?}", envelope.driver),
        });
    }
    let actual = crc32fast::hash(envelope.claim.get().as_bytes());
    if actual != envelope.checksum {
        return Err(corrupt(format!(
            "checksum {actual:#010x} does not match the recorded {:#010x}",
            envelope.checksum
        )));
    }
    serde_json::from_str(envelope.claim.get()).map_err(|e| corrupt(format!("claim record: {e}")))
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
        }
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

    #[test]
    fn corruption_and_foreign_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path(), "drv").unwrap();
        cp.commit(record("u1")).unwrap();
        let path = dir.path().join("u1.json");

        // Flip one byte inside the record: the checksum catches it.
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, good.replace("gpu-0", "gpu-1")).unwrap();
        let err = Checkpoint::open(dir.path(), "drv").unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("u1.json"), "{err}");

        // Truncated file.
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(matches!(
            Checkpoint::open(dir.path(), "drv").unwrap_err(),
            CheckpointError::Corrupt { .. }
        ));

        // Another driver's checkpoint.
        std::fs::write(&path, &good).unwrap();
        let err = Checkpoint::open(dir.path(), "other").unwrap_err();
        assert!(matches!(err, CheckpointError::Foreign { .. }), "{err}");

        // A file renamed to another claim's name.
        std::fs::rename(&path, dir.path().join("u9.json")).unwrap();
        assert!(matches!(
            Checkpoint::open(dir.path(), "drv").unwrap_err(),
            CheckpointError::Corrupt { .. }
        ));
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
