//! ResourceClaims from a local file: the demo and test stand-in for the API
//! server (only used when the config says `claims.source = "file"`).
//!
//! The file holds ResourceClaim objects exactly as the API server returns
//! them (resource.k8s.io/v1, JSON): either a JSON array or a `List` with
//! `items`. It is re-read when its modification time changes, so a test or
//! the demo can add claims while the host runs.

use super::{ClaimSource, FetchError, FetchFuture, FileError, StatusFuture};
use crate::claim::ClaimRef;
use k8s_openapi::api::resource::v1::AllocatedDeviceStatus;
use k8s_openapi::api::resource::v1::ResourceClaim;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Claims by (namespace, name), as of a modification time of the file.
type Loaded = (SystemTime, HashMap<(String, String), ResourceClaim>);

#[derive(Debug)]
pub struct FileClaims {
    path: PathBuf,
    cache: Mutex<Option<Loaded>>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ClaimsDocument {
    List { items: Vec<ResourceClaim> },
    Array(Vec<ResourceClaim>),
}

impl FileClaims {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            cache: Mutex::new(None),
        }
    }

    fn lookup(&self, namespace: &str, name: &str) -> Result<ResourceClaim, FetchError> {
        let failed = |source: FileError| FetchError::File {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            path: self.path.clone(),
            source,
        };
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| failed(FileError::Read(e)))?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let claims = match &mut *cache {
            Some((loaded, claims)) if *loaded == modified => claims,
            slot => {
                let bytes = std::fs::read(&self.path).map_err(|e| failed(FileError::Read(e)))?;
                let doc: ClaimsDocument = serde_json::from_slice(&bytes).map_err(|e| failed(FileError::Parse(e)))?;
                let items = match doc {
                    ClaimsDocument::List { items } | ClaimsDocument::Array(items) => items,
                };
                let map = items
                    .into_iter()
                    .map(|c| {
                        let key = (
                            c.metadata.namespace.clone().unwrap_or_default(),
                            c.metadata.name.clone().unwrap_or_default(),
                        );
                        (key, c)
                    })
                    .collect();
                &mut slot.insert((modified, map)).1
            }
        };
        claims
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| FetchError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    }
}

impl ClaimSource for FileClaims {
    fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> FetchFuture<'a> {
        Box::pin(async move { self.lookup(namespace, name) })
    }

    /// The file is the host's input only: device status has nowhere to go.
    fn set_driver_status<'a>(
        &'a self,
        claim: &'a ClaimRef,
        _: &'a str,
        entries: Vec<AllocatedDeviceStatus>,
    ) -> StatusFuture<'a> {
        if !entries.is_empty() {
            tracing::debug!(claim = %claim, entries = entries.len(), "file claim source: device status not written anywhere");
        }
        Box::pin(async { Ok(()) })
    }
}
