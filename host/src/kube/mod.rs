//! The API-server side: where ResourceClaims come from, and turning one into
//! what a guest prepares.
//!
//! Prepare needs the ResourceClaim object (its allocation and opaque
//! configs). [`ClaimSource`] is the one seam for that: the production source
//! reads the API server; [`FileClaims`] reads a local file and exists only for
//! the demo and tests (the config must say `claims.source = "file"`).

mod allocation;
mod file;

pub use allocation::{ClaimError, DriverClaim, claim_for_driver};
pub use file::FileClaims;

use k8s_openapi::api::resource::v1::ResourceClaim;
use std::future::Future;
use std::pin::Pin;

/// Why a ResourceClaim could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("ResourceClaim {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("fetching ResourceClaim {namespace}/{name}: {message}")]
    Failed {
        namespace: String,
        name: String,
        message: String,
    },
}

pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<ResourceClaim, FetchError>> + Send + 'a>>;

/// Where the host reads ResourceClaims from.
pub trait ClaimSource: Send + Sync + std::fmt::Debug {
    fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> FetchFuture<'a>;
}
