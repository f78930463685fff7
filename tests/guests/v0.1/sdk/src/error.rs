//! The one error type of a driver: a kind the host acts on and a message
//! for the people reading the kubelet's events and the host's log.

use std::fmt;

/// What went wrong, as the host sees it (`driver-error.kind` in the WIT).
///
/// The host treats `Internal` (and traps) as the guest's fault, which counts
/// against a new guest's error budget after a hot swap; the other kinds are
/// about the input or the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The driver's configuration (`[drivers.config]`) is invalid.
    InvalidConfig,
    /// The claim cannot be served as allocated (bad opaque parameters, a
    /// device that is not ours, ...).
    InvalidClaim,
    /// The hardware or a host capability is not available.
    Unavailable,
    /// The device is busy; the kubelet's retry may succeed.
    Busy,
    /// This driver does not support what was asked.
    Unsupported,
    /// A bug in the driver.
    Internal,
}

/// An error returned to the host. Build one with the constructor named after
/// its kind, e.g. `Error::invalid_claim(format!("device {name:?} is not ours"))`,
/// and return it with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    pub fn invalid_claim(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidClaim, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
