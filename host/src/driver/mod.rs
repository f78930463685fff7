//! The one place where prepare and unprepare are orchestrated across the
//! claim source, the guest, the policy, CDI files and the checkpoint.
//!
//! Prepare of one claim:
//! 1. already in the checkpoint → answer the stored devices (restoring the
//!    CDI spec if the CDI directory lost it): prepare is idempotent;
//! 2. the ResourceClaim, read from the API server before the call takes
//!    its locks: check UID and allocation, keep our devices;
//! 3. guest `prepare` under a deadline;
//! 4. check the result against the allocation and the policy (which also
//!    fills in device nodes' numbers from the node and bounds the spec);
//! 5. write the claim's CDI spec and its device metadata files with their
//!    CDI specs (durable, [`crate::state::metadata`]), then commit the
//!    checkpoint (durable); on failure undo what was done, guest included;
//! 6. answer CDI device IDs (a request's metadata ID on its first device).
//!
//! Unprepare: guest `unprepare` with the checkpointed state → remove the CDI
//! spec and the device metadata → remove the checkpoint record. A claim the
//! checkpoint does not know still gets a guest `unprepare` with empty state,
//! so that a guest can clean up after a crash between its `prepare` and our
//! checkpoint commit (or after its record was quarantined as unreadable), and
//! its CDI spec and metadata files are removed all the same.
//!
//! Reboots: each record carries the boot ID it was prepared in. A record from
//! an earlier boot describes device-side state that is gone, so it is never
//! answered as is: [`Driver::prepare_after_reboot`] runs the guest's
//! `prepare` again for all of them before the DRA socket is served (from the
//! ResourceClaim, or the allocation recorded at prepare time when it cannot
//! be fetched), and a record whose re-prepare failed is prepared again by the
//! kubelet's next call instead of being answered from the checkpoint.
//!
//! Nothing fails silently: a failed claim operation is logged on the claim's
//! span, counted, and reported as a Kubernetes Event on the ResourceClaim
//! (aggregated and rate-limited, see [`crate::kube::events`]); quarantined
//! checkpoint records and re-prepares are reported on the Node.
//!
//! Different claims proceed concurrently; calls for the same claim are
//! serialized by a per-claim lock. In rolling-update mode each kubelet call
//! also runs under the node-wide serialization lock shared with the other
//! host process, after re-reading the checkpoint (see [`crate::state::serialize`]);
//! its claims were read from the API server before, so no API round trip is
//! part of the time the lock is held.
//!
//! Guest updates: [`Driver::run_guest_updates`] replaces the guest when its
//! file changes (load and self-test off the request path, then one pointer
//! swap), republishes the inventory only when it changed, and reports swaps,
//! refused files and automatic rollbacks (log, metric, Kubernetes Event).
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the [`Driver`], its parts and errors; events, CDI restore, reports |
//! | `claims.rs` | prepare and unprepare of claims (the kubelet's calls) |
//! | `reboot.rs` | claims prepared in an earlier boot, prepared again |
//! | `swap.rs` | hot swap of the guest, probation rollbacks, inventory changes |
//! | `disk.rs` | where a claim's file work runs: inline or on the bounded blocking pool |

mod claims;
mod disk;
mod reboot;
mod swap;

pub use reboot::RebootReport;
pub use swap::GuestUpdates;

use crate::claim::{ClaimRef, PreparedDevice, is_safe_uid, is_valid_object_name};
use crate::error::{Chain, chain};
use crate::guest::{Guest, GuestError, GuestFileWatcher, GuestSpec, Replaced, Rollback, Runtime};
use crate::health::Health;
use crate::imports::net::NetDriver;
use crate::kube::events::{EventRecorder, EventType};
use crate::kube::{ClaimError, ClaimSource, DriverClaim, FetchError, StatusError, claim_for_driver};
use crate::metrics::Metrics;
use crate::model;
use crate::policy::{Policy, PolicyError};
use crate::state::cdi::{self, CdiError, CdiWriter, SpecDevice};
use crate::state::checkpoint::{Checkpoint, CheckpointError, ClaimRecord};
use crate::state::metadata::MetadataWriter;
use crate::state::serialize::SerializeLock;
use futures_util::future::join_all;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

/// Why one claim could not be prepared or unprepared. Its text is what the
/// kubelet sees in that claim's `error`.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("invalid claim reference: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("guest output rejected")]
    Rejected(#[from] PolicyError),
    #[error(transparent)]
    Cdi(#[from] CdiError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The driver's network state (which claim each link is for) could not
    /// be read to check the guest's answer.
    #[error("reading the driver's network state")]
    NetState(#[from] crate::imports::net::store::StoreError),
    /// Rolling-update mode: the node-wide lock or the checkpoint re-read failed.
    /// (Shared: every claim of the call gets it.)
    #[error("serializing with the other host process")]
    Serialize(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The runtime stopped before the claim's files could be written.
    #[error("the host is shutting down; the claim's files were not written")]
    ShuttingDown,
}

/// One driver: a guest plus the state it prepares claims into.
#[derive(Debug)]
pub struct Driver {
    name: String,
    guest: Guest,
    claims: Arc<dyn ClaimSource>,
    /// Shared with the blocking threads that write the claims' files
    /// ([`durably`]).
    cdi: Arc<CdiWriter>,
    /// The claims' device metadata files and their CDI specs; shared as `cdi`.
    metadata: Arc<MetadataWriter>,
    checkpoint: Arc<Checkpoint>,
    policy: Policy,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    locks: ClaimLocks,
    inventory: tokio::sync::watch::Sender<Arc<Vec<model::Pool>>>,
    /// Who owns the node resources the inventory declares: built with each
    /// new inventory, read by every answer's policy check.
    owners: arc_swap::ArcSwap<crate::policy::Ownership>,
    serialize: Option<SerializeLock>,
    events: Option<EventRecorder>,
    boot_id: Option<String>,
    net: Option<Arc<NetDriver>>,
}

/// Everything a [`Driver`] is made of, named.
#[derive(Debug)]
pub struct DriverParts {
    pub name: String,
    pub guest: Guest,
    pub claims: Arc<dyn ClaimSource>,
    pub cdi: CdiWriter,
    pub metadata: MetadataWriter,
    pub checkpoint: Checkpoint,
    pub policy: Policy,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// The guest's inventory, as its self-test returned it.
    pub inventory: Vec<model::Pool>,
    /// Rolling-update mode: the lock shared with the other host process.
    pub serialize: Option<SerializeLock>,
    /// Where to report as Kubernetes Events (when an API server is configured).
    pub events: Option<EventRecorder>,
    /// This boot's ID (`None`: unknown, reboots are not detected).
    pub boot_id: Option<String>,
    /// The driver's network state, from the `net` capability when it is
    /// granted: which claim each link the host created belongs to, for the
    /// policy's check of an answer's links.
    pub net: Option<Arc<NetDriver>>,
}

impl Driver {
    pub fn new(parts: DriverParts) -> Self {
        let DriverParts {
            name,
            guest,
            claims,
            cdi,
            metadata,
            checkpoint,
            policy,
            health,
            metrics,
            inventory,
            serialize,
            events,
            boot_id,
            net,
        } = parts;
        metrics.set_prepared_claims(&name, checkpoint.len());
        let id = guest.identity();
        metrics.set_guest_info(&name, &id, guest.contract_version());
        let driver = Self {
            name,
            guest,
            claims,
            cdi: Arc::new(cdi),
            metadata: Arc::new(metadata),
            checkpoint: Arc::new(checkpoint),
            owners: arc_swap::ArcSwap::from_pointee(policy.ownership(&inventory)),
            policy,
            health,
            metrics,
            locks: ClaimLocks::default(),
            inventory: tokio::sync::watch::channel(Arc::new(inventory)).0,
            serialize,
            events,
            boot_id,
            net,
        };
        driver.report_quarantined();
        driver
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// Where the driver writes its claims' CDI specs.
    pub fn cdi(&self) -> &CdiWriter {
        &self.cdi
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The current inventory, and every later one.
    pub fn inventory(&self) -> tokio::sync::watch::Receiver<Arc<Vec<model::Pool>>> {
        self.inventory.subscribe()
    }

    /// Hand every event from the driver's event sources to its guest and
    /// apply the health it reports. Runs until the sources are gone.
    pub async fn run_events(self: Arc<Self>, mut events: tokio::sync::mpsc::Receiver<model::Event>) {
        while let Some(event) = events.recv().await {
            let _ = self.handle_event(event).await;
        }
    }

    /// Hand one event to the guest and apply the health it reports. Returns
    /// the guest's reports (`guest run` prints them); a failure is logged.
    pub async fn handle_event(&self, event: model::Event) -> Result<Vec<model::DeviceHealth>, GuestError> {
        let result = self.guest.on_event(event).await;
        match &result {
            Ok(reports) => {
                self.health.apply(reports);
            }
            Err(e) => tracing::warn!(driver = %self.name, error = %Chain(e), "guest could not handle an event"),
        }
        result
    }

    /// Where the driver writes its claims' device metadata.
    pub fn metadata(&self) -> &MetadataWriter {
        &self.metadata
    }

    /// Rewrite CDI specs (and device metadata files with their specs) of
    /// checkpointed claims that the CDI directory lost (it is a tmpfs on most
    /// nodes, emptied by a reboot). Returns for how many claims.
    pub fn restore_cdi_specs(&self) -> Result<usize, CdiError> {
        let mut restored = 0;
        for record in self.checkpoint.records() {
            if self.before_this_boot(&record) {
                if self.files_missing(&record) {
                    // Its re-prepare failed: the spec describes devices as
                    // they were before the reboot. A container must fail to
                    // start (unresolvable CDI device) rather than get them.
                    tracing::warn!(driver = %self.name, claim.uid = %record.claim.uid, "not restoring the CDI spec of a claim prepared before the reboot and not prepared again");
                }
                continue;
            }
            if self.restore_files(&record)? {
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Whether a file the record describes (CDI spec, device metadata file
    /// or its spec) is missing.
    fn files_missing(&self, record: &ClaimRecord) -> bool {
        (record.cdi_spec.is_some() && !self.cdi.exists(&record.claim.uid))
            || record.metadata.iter().any(|m| !self.metadata.exists(&record.claim, m))
    }

    /// Write again, from the record, the files of a prepared claim that are
    /// missing; whether there were any.
    fn restore_files(&self, record: &ClaimRecord) -> Result<bool, CdiError> {
        let mut restored = false;
        if let Some(spec) = &record.cdi_spec
            && !self.cdi.exists(&record.claim.uid)
        {
            self.cdi.write(&record.claim.uid, spec)?;
            restored = true;
        }
        for m in &record.metadata {
            if !self.metadata.exists(&record.claim, m) {
                self.metadata.write(&record.claim, m)?;
                restored = true;
            }
        }
        Ok(restored)
    }

    /// Rolling-update mode: take the node-wide lock and re-read the
    /// checkpoint under it (only when its directory changed). Otherwise nothing.
    async fn serialize(&self) -> Result<Option<Serialized>, Arc<dyn std::error::Error + Send + Sync>> {
        let Some(lock) = &self.serialize else { return Ok(None) };
        let shared = |e: Box<dyn std::error::Error + Send + Sync>| Arc::from(e);
        let guard = lock.acquire().await.map_err(|e| shared(e.into()))?;
        if self.checkpoint.reload().map_err(|e| shared(e.into()))? {
            self.report_quarantined();
            self.metrics.set_prepared_claims(&self.name, self.checkpoint.len());
        }
        Ok(Some(Serialized {
            checkpoint: Arc::clone(&self.checkpoint),
            _guard: guard,
        }))
    }

    /// A claim operation failed: a Warning Event on the ResourceClaim with
    /// the error as the kubelet sees it (the correlator counts repeats and
    /// rate-limits a retrying kubelet). A reference that is not a valid
    /// object name cannot be an Event's subject: the log has it.
    fn claim_failed(&self, c: &ClaimRef, call: &'static str, reason: &str, e: &OperationError) {
        let Some(events) = &self.events else { return };
        if validate_ref(c).is_err() {
            return;
        }
        let id = self.guest.identity();
        events.claim_event(
            c,
            &self.name,
            EventType::Warning,
            reason,
            call,
            format!("{call} failed (guest {} {}): {}", id.name, id.version, Chain(e)),
        );
    }

    /// Report checkpoint records the last load quarantined: log, metric and
    /// a Warning Event on the Node for each.
    fn report_quarantined(&self) {
        for q in self.checkpoint.take_quarantined() {
            self.metrics.checkpoint_quarantined(&self.name, q.reason);
            let uid = q.uid.as_deref().unwrap_or("?");
            let moved = match &q.moved_to {
                Some(to) => format!("moved to {}", to.display()),
                None => "could not be moved to claims-quarantine and is ignored".to_owned(),
            };
            tracing::error!(
                driver = %self.name, path = %q.path.display(), claim.uid = uid, reason = q.reason,
                detail = %q.detail, moved_to = ?q.moved_to,
                "unusable checkpoint record quarantined; the other claims are served, and this claim is prepared again by its next NodePrepareResources"
            );
            if let Some(events) = &self.events {
                events.node_event(
                    &self.name,
                    EventType::Warning,
                    "CheckpointQuarantined",
                    "LoadCheckpoint",
                    format!(
                        "checkpoint record {} of claim {uid} is unusable ({}), {moved}; the claim is prepared again by its next NodePrepareResources",
                        q.path.display(),
                        q.detail
                    ),
                );
            }
        }
    }
}

fn validate_ref(c: &ClaimRef) -> Result<(), OperationError> {
    if !is_safe_uid(&c.uid) {
        return Err(OperationError::InvalidRequest(format!(
            "claim UID {:?} is not a valid UID",
            c.uid
        )));
    }
    if !is_valid_object_name(&c.namespace) || !is_valid_object_name(&c.name) {
        return Err(OperationError::InvalidRequest(format!(
            "claim {:?}/{:?} is not a valid namespace/name",
            c.namespace, c.name
        )));
    }
    Ok(())
}

/// Per-claim async locks, created on demand and freed when unused.
#[derive(Debug, Default)]
struct ClaimLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl ClaimLocks {
    async fn lock(&self, uid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, w| w.strong_count() > 0);
            match locks.get(uid).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(uid.to_owned(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

/// The node-wide lock, held for one kubelet call. Released, it first lets
/// the checkpoint forget the changes the call made to its directory
/// ([`Checkpoint::settle`]: while the lock is held they are all this
/// process's own), so that the next call reads the directory only if the
/// other pod changed it in between.
pub(super) struct Serialized {
    checkpoint: Arc<Checkpoint>,
    _guard: crate::state::serialize::SerializeGuard,
}

impl Drop for Serialized {
    fn drop(&mut self) {
        // Before `_guard` lets go of the lock (fields drop after this).
        self.checkpoint.settle();
    }
}
