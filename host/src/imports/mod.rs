//! The capabilities a guest may be granted, as host code with host types:
//! `log`, `nvml`, `net`. Their WIT host traits are thin adapters, one set
//! per contract version (`wit/v0_1/imports.rs`, `wit/v0_2/imports.rs`, what
//! they share written once in `wit/shared.rs`), which also link them.
//!
//! `log` is granted to every guest. `nvml` and `net` are capabilities an
//! operator grants per driver in the host config; a guest that imports one it
//! was not granted fails to load (see `guest::check_import`).

pub mod log;
pub mod net;
pub mod nvml;

use crate::model::Event;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// A capability an operator can grant a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// `dra:driver/nvml`: NVIDIA Management Library access.
    Nvml,
    /// `dra:driver/net`: link management.
    Net,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Nvml => "nvml",
            Grant::Net => "net",
        }
    }

    /// The grant that covers a `dra:driver` interface.
    pub fn for_interface(interface: &str) -> Option<Self> {
        match interface {
            "nvml" => Some(Grant::Nvml),
            "net" => Some(Grant::Net),
            _ => None,
        }
    }
}

/// Host-side capabilities that grants draw on (created once per process).
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    pub nvml: Option<Arc<nvml::Nvml>>,
    pub net: Option<Arc<net::Net>>,
}

/// Why a driver's grants cannot be given: the host lacks the capability.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("the nvml grant needs NVML access in the host (internal error)")]
    NoNvml,
    #[error("the net grant needs a [drivers.net] section naming the parent links")]
    NoNet,
}

/// The host imports one guest is linked with. Cloned into every store.
#[derive(Clone, Debug, Default)]
pub struct Imports {
    grants: Vec<Grant>,
    pub(crate) nvml: Option<nvml::NvmlGrant>,
    pub(crate) net: Option<net::NetGrant>,
}

impl Imports {
    /// Imports for `driver`'s guest, granted `grants`; events the guest
    /// subscribes to go to `events`. Fails for capabilities the host does
    /// not have.
    pub fn new(
        grants: &[Grant],
        driver: &str,
        caps: &Capabilities,
        events: &mpsc::Sender<Event>,
    ) -> Result<Self, GrantError> {
        let mut imports = Self {
            grants: grants.to_vec(),
            nvml: None,
            net: None,
        };
        for grant in grants {
            match grant {
                Grant::Nvml => {
                    let nvml = caps.nvml.clone().ok_or(GrantError::NoNvml)?;
                    imports.nvml = Some(nvml::NvmlGrant {
                        nvml,
                        driver: Arc::from(driver),
                        events: events.clone(),
                    });
                }
                Grant::Net => {
                    let driver = caps
                        .net
                        .as_ref()
                        .and_then(|n| n.driver(driver))
                        .ok_or(GrantError::NoNet)?;
                    imports.net = Some(net::NetGrant {
                        driver: Arc::clone(driver),
                    });
                }
            }
        }
        Ok(imports)
    }

    pub fn grants(&self, grant: Grant) -> bool {
        self.grants.contains(&grant)
    }

    /// Imports that link like `grants` but have no capability behind them:
    /// for checking a component (`guest inspect`), never for running one.
    pub(crate) fn for_inspection(grants: &[Grant]) -> Self {
        Self {
            grants: grants.to_vec(),
            ..Self::default()
        }
    }
}

/// Run a host import's blocking work (netlink round trips, NVML calls, the
/// state files they update) on tokio's blocking pool, until the call's
/// `deadline`.
///
/// Guest code runs on the async worker that made the call
/// (`guest::instance`); an import that blocked there would hold the worker,
/// and the guest's deadline, enforced at epoch ticks in guest code, could not
/// end it. Awaiting the blocking pool frees the worker; the deadline ends the
/// wait with a trap ([`DeadlinePassed`]), and the call is a timeout (the work
/// itself runs on to its end, as it would have on the guest's own thread).
/// `Ok(None)` when the work panicked.
pub(crate) async fn blocking<T, F>(deadline: std::time::Instant, work: F) -> wasmtime::Result<Option<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::time::timeout_at(deadline.into(), tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Ok(Some(value)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a guest's host call failed on the blocking pool");
            Ok(None)
        }
        Err(_elapsed) => Err(wasmtime::Error::new(DeadlinePassed)),
    }
}

/// A host import gave up because the guest call's deadline passed while it
/// ran; it traps the guest with this, and the call is a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the call's deadline passed during a host call")]
pub struct DeadlinePassed;

/// What the imports see of a guest's store during a call: their own state
/// and the call's scope, never the rest of the store (limits, instance).
/// The capability calls (`nvml_*`, `net_*`) and the WIT host traits
/// (`wit::v0_1::imports`, `wit::v0_2::imports`) are implemented for this view, so that the imports
/// do not depend on the guest runtime that owns the store.
pub struct ImportsView<'a> {
    pub imports: &'a Imports,
    pub log: &'a mut log::GuestLog,
    /// When the current call must end.
    pub deadline: Instant,
    /// The claim whose `prepare` or `unprepare` is running (`None` in every
    /// other call): the only claim the `net` import acts for.
    pub claim: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn blocking_work_is_awaited_until_the_deadline_then_traps() {
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(blocking(far, || 7).await.unwrap(), Some(7));
        let near = Instant::now() + Duration::from_millis(20);
        let err = blocking(near, || std::thread::sleep(Duration::from_millis(500)))
            .await
            .unwrap_err();
        assert!(err.downcast_ref::<DeadlinePassed>().is_some(), "{err:#}");
        assert_eq!(blocking(far, || panic!("host bug")).await.unwrap(), None::<()>);
    }
}
