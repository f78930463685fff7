//! Why a node or one of its drivers could not be assembled or served.
//!
//! Each variant says what the host was doing and keeps the error it got as
//! its `source`, so that `{:#}` prints the whole chain once ("driver x:
//! loading guest: …") and a caller can still match on the cause.

use crate::config::{ConfigError, NoNodeName};
use crate::guest::GuestError;
use crate::imports::GrantError;
use crate::imports::net::NetOpError;
use crate::imports::net::store::StoreError;
use crate::imports::nvml::simulated::SimulatedError;
use crate::kube::client::ClientError;
use crate::kubelet::{NameError, ServeError};
use crate::state::cdi::CdiError;
use crate::state::checkpoint::CheckpointError;
use crate::state::serialize::SerializeError;
use std::path::PathBuf;

/// An error from the wasm engine's start, which reports through `anyhow`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    NodeName(#[from] NoNodeName),
    #[error(transparent)]
    PodUid(NameError),
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("compile cache {dir:?}")]
    CompileCache {
        dir: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the wasm engine")]
    Engine(#[source] BoxError),
    #[error("simulated NVML")]
    SimulatedNvml(#[source] SimulatedError),
    #[error("finding this binary's path for the attach hook")]
    HookPath(#[source] std::io::Error),
    #[error("driver {driver}: network state")]
    NetState {
        driver: String,
        #[source]
        source: StoreError,
    },
    #[error("driver {driver}")]
    Paths {
        driver: String,
        #[source]
        source: NameError,
    },
    #[error("creating {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serialize(#[from] SerializeError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("driver {driver}: reconciling network state")]
    Reconcile {
        driver: String,
        #[source]
        source: NetOpError,
    },
    #[error("driver {driver}")]
    Cdi {
        driver: String,
        #[source]
        source: CdiError,
    },
    #[error("driver {driver}")]
    Grant {
        driver: String,
        #[source]
        source: GrantError,
    },
    #[error("driver {driver}: loading guest")]
    LoadGuest {
        driver: String,
        #[source]
        source: Box<GuestError>,
    },
    #[error("driver {driver}: watching parent links")]
    WatchLinks {
        driver: String,
        #[source]
        source: NetOpError,
    },
    #[error("driver {driver}")]
    WatchGuest {
        driver: String,
        #[source]
        source: crate::guest::WatchError,
    },
    #[error("driver {driver}")]
    Serve {
        driver: String,
        #[source]
        source: ServeError,
    },
    #[error("driver {driver}: attach socket {}", path.display())]
    AttachSocket {
        driver: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no driver could be started")]
    NoDriver,
    #[error("serving {what} on {addr}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How a failure is logged where the process goes on (one driver of several
/// failed to start).
pub use crate::error::Chain;
