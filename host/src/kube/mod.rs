//! The API-server side: ResourceClaims (fetching them, writing this driver's
//! `status.devices` entries) and ResourceSlice publishing.
//!
//! Prepare needs the ResourceClaim object (its allocation and opaque
//! configs). [`ClaimSource`] is the one seam for that: [`ApiClaims`] reads
//! the API server; [`FileClaims`] reads a local file and exists only for the
//! demo and tests (the config must say `claims.source = "file"`).

mod allocation;
mod api;
pub mod client;
pub mod events;
mod file;
pub mod publisher;
pub mod slices;
pub mod status;

pub use allocation::{ClaimError, DriverClaim, claim_for_driver};
pub use api::ApiClaims;
pub use file::FileClaims;

use crate::claim::ClaimRef;
use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, ResourceClaim};
use std::future::Future;
use std::pin::Pin;

/// Why a ResourceClaim could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("ResourceClaim {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("fetching ResourceClaim {namespace}/{name} from the API server")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading ResourceClaim {namespace}/{name} from the claims file {}", path.display())]
    File {
        namespace: String,
        name: String,
        path: std::path::PathBuf,
        #[source]
        source: FileError,
    },
}

/// What went wrong with the claims file (`claims.source = "file"`).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading it")]
    Read(#[source] std::io::Error),
    #[error("it is not a JSON list of ResourceClaims")]
    Parse(#[source] serde_json::Error),
}

/// Why a claim's `status.devices` could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing status.devices of ResourceClaim {namespace}/{name}")]
pub struct StatusError {
    pub namespace: String,
    pub name: String,
    #[source]
    pub cause: StatusCause,
}

/// What kept a status write from happening.
#[derive(Debug, thiserror::Error)]
pub enum StatusCause {
    #[error("reading the claim")]
    Read(#[source] kube::Error),
    #[error("the claim no longer exists")]
    Gone,
    #[error("the claim was replaced")]
    Replaced,
    #[error("updating its status")]
    Update(#[source] kube::Error),
    #[error("still conflicting after {0} attempts")]
    Conflicts(usize),
}

pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<ResourceClaim, FetchError>> + Send + 'a>>;
pub type StatusFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StatusError>> + Send + 'a>>;

/// Where the host reads ResourceClaims from, and writes device status to.
pub trait ClaimSource: Send + Sync + std::fmt::Debug {
    fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> FetchFuture<'a>;

    /// Make `driver`'s entries in the claim's `status.devices` exactly
    /// `entries` (none: remove ours), leaving other drivers' entries alone.
    fn set_driver_status<'a>(
        &'a self,
        claim: &'a ClaimRef,
        driver: &'a str,
        entries: Vec<AllocatedDeviceStatus>,
    ) -> StatusFuture<'a>;
}
