//! Errors of loading and calling guests.

use std::path::PathBuf;
use std::time::Duration;

/// Which guest export a call was made to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    Init,
    Inventory,
    Prepare,
    Unprepare,
    OnEvent,
}

impl Export {
    pub fn as_str(self) -> &'static str {
        match self {
            Export::Init => "init",
            Export::Inventory => "inventory",
            Export::Prepare => "prepare",
            Export::Unprepare => "unprepare",
            Export::OnEvent => "on-event",
        }
    }
}

impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource limit a guest ran into.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("memory limit of {limit} bytes (it asked for {requested})")]
    Memory { limit: usize, requested: usize },
    #[error("table limit of {limit} elements (it asked for {requested})")]
    Table { limit: usize, requested: usize },
}

/// Raised by the imports ([`crate::imports::blocking`]); a guest fault.
pub use crate::imports::DeadlinePassed;

/// What kind of error a guest returned (the host's own type).
pub use crate::model::DriverErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("reading guest {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("guest {} is not a valid WebAssembly component", path.display())]
    Compile {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("guest {} imports {import}, which {reason}", path.display())]
    NotGranted {
        path: PathBuf,
        import: String,
        reason: String,
    },
    #[error("guest {} does not implement a supported dra:driver version", path.display())]
    Incompatible {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("guest {export} did not finish within {timeout:?}")]
    Timeout { export: Export, timeout: Duration },
    #[error("guest {export} exceeded its {limit}")]
    Limit { export: Export, limit: LimitExceeded },
    #[error("guest {export} trapped: {message}")]
    Trap { export: Export, message: String },
    #[error("guest {export} failed ({kind:?}): {message}")]
    Driver {
        export: Export,
        kind: DriverErrorKind,
        message: String,
    },
    #[error("guest runtime: linking {what}")]
    Link {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("guest runtime: the guest load thread failed")]
    LoadThread(#[source] tokio::task::JoinError),
    #[error("guest runtime: guest is shutting down")]
    ShuttingDown,
}

/// A foreign error kept as a cause: wasmtime's error type is not a
/// `std::error::Error` itself, but converts into this with its causes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl GuestError {
    /// Metric label for the outcome of a call that failed with this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            GuestError::Timeout { .. } => "timeout",
            GuestError::Limit { .. } => "limit",
            GuestError::Trap { .. } => "trap",
            GuestError::Driver { .. } => "guest_error",
            _ => "runtime_error",
        }
    }

    /// Whether the error is the component's fault (as opposed to the claim's
    /// or the node's): traps, timeouts, limits, and errors the guest itself
    /// calls internal. These count against a new component's error budget.
    pub fn is_guest_fault(&self) -> bool {
        match self {
            GuestError::Driver { kind, .. } => *kind == DriverErrorKind::Internal,
            GuestError::Timeout { .. } | GuestError::Limit { .. } | GuestError::Trap { .. } => true,
            _ => false,
        }
    }

    /// Whether the instance that produced this error may be reused. After a
    /// trap (timeouts and limits are traps too) an instance is poisoned.
    pub(crate) fn poisons_instance(&self) -> bool {
        !matches!(self, GuestError::Driver { .. })
    }
}
