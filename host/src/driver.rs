//! The one place where prepare and unprepare are orchestrated across the
//! claim source, the guest, the policy, CDI files and the checkpoint.
//!
//! Prepare of one claim:
//! 1. already in the checkpoint → answer the stored devices (restoring the
//!    CDI spec if the CDI directory lost it): prepare is idempotent;
//! 2. fetch the ResourceClaim, check UID and allocation, keep our devices;
//! 3. guest `prepare` under a deadline;
//! 4. check the result against the allocation and the policy (which also
//!    fills in device nodes' numbers from the node and bounds the spec);
//! 5. write the claim's CDI spec (durable), then commit the checkpoint
//!    (durable); on failure undo what was done, guest included;
//! 6. answer CDI device IDs.
//!
//! Unprepare: guest `unprepare` with the checkpointed state → remove the CDI
//! spec → remove the checkpoint record. A claim the checkpoint does not know
//! still gets a guest `unprepare` with empty state, so that a guest can clean
//! up after a crash between its `prepare` and our checkpoint commit (or after
//! its record was quarantined as unreadable).
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
//! host process, after re-reading the checkpoint (see [`crate::state::serialize`]).
//!
//! Guest updates: [`Driver::run_guest_updates`] replaces the guest when its
//! file changes (load and self-test off the request path, then one pointer
//! swap), republishes the inventory only when it changed, and reports swaps,
//! refused files and automatic rollbacks (log, metric, Kubernetes Event).

use crate::claim::{ClaimRef, PreparedDevice, is_safe_uid, is_valid_object_name};
use crate::guest::{Guest, GuestError, GuestFileWatcher, GuestSpec, Replaced, Rollback, Runtime, types};
use crate::health::Health;
use crate::kube::events::{EventRecorder, EventType};
use crate::kube::{ClaimError, ClaimSource, DriverClaim, FetchError, StatusError, claim_for_driver};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError};
use crate::state::cdi::{self, CdiError, CdiWriter, SpecDevice};
use crate::state::checkpoint::{Checkpoint, CheckpointError, ClaimRecord};
use crate::state::serialize::SerializeLock;
use futures_util::future::join_all;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    #[error("guest output rejected: {0}")]
    Rejected(#[from] PolicyError),
    #[error(transparent)]
    Cdi(#[from] CdiError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The driver's network state (which claim each link is for) could not
    /// be read to check the guest's answer.
    #[error("reading the driver's network state: {0}")]
    NetState(#[from] crate::imports::net::store::StoreError),
    /// Rolling-update mode: the node-wide lock or the checkpoint re-read failed.
    #[error("serializing with the other host process: {0}")]
    Serialize(String),
    /// The runtime stopped before the claim's files could be written.
    #[error("the host is shutting down; the claim's files were not written")]
    ShuttingDown,
}

/// What [`Driver::prepare_after_reboot`] did.
#[derive(Debug, Default)]
pub struct RebootReport {
    /// Claims prepared in an earlier boot.
    pub total: usize,
    pub reprepared: usize,
    /// Those that failed, with the error.
    pub failed: Vec<(ClaimRef, String)>,
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
    checkpoint: Arc<Checkpoint>,
    policy: Policy,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    locks: ClaimLocks,
    inventory: tokio::sync::watch::Sender<Arc<Vec<types::Pool>>>,
    serialize: Option<SerializeLock>,
    events: Option<EventRecorder>,
    boot_id: Option<String>,
}

/// Everything a [`Driver`] is made of, named.
#[derive(Debug)]
pub struct DriverParts {
    pub name: String,
    pub guest: Guest,
    pub claims: Arc<dyn ClaimSource>,
    pub cdi: CdiWriter,
    pub checkpoint: Checkpoint,
    pub policy: Policy,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// The guest's inventory, as its self-test returned it.
    pub inventory: Vec<types::Pool>,
    /// Rolling-update mode: the lock shared with the other host process.
    pub serialize: Option<SerializeLock>,
    /// Where to report as Kubernetes Events (when an API server is configured).
    pub events: Option<EventRecorder>,
    /// This boot's ID (`None`: unknown, reboots are not detected).
    pub boot_id: Option<String>,
}

/// What a driver needs to replace its guest while it runs.
#[derive(Debug)]
pub struct GuestUpdates {
    pub runtime: Arc<Runtime>,
    /// The spec the current guest was loaded with; new files load with it too.
    pub spec: GuestSpec,
    pub watcher: GuestFileWatcher,
}

impl Driver {
    pub fn new(parts: DriverParts) -> Self {
        let DriverParts {
            name,
            guest,
            claims,
            cdi,
            checkpoint,
            policy,
            health,
            metrics,
            inventory,
            serialize,
            events,
            boot_id,
        } = parts;
        metrics.set_prepared_claims(&name, checkpoint.len());
        let id = guest.identity();
        metrics.set_guest_info(&name, &id.name, &id.version, &id.digest);
        let driver = Self {
            name,
            guest,
            claims,
            cdi: Arc::new(cdi),
            checkpoint: Arc::new(checkpoint),
            policy,
            health,
            metrics,
            locks: ClaimLocks::default(),
            inventory: tokio::sync::watch::channel(Arc::new(inventory)).0,
            serialize,
            events,
            boot_id,
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
    pub fn inventory(&self) -> tokio::sync::watch::Receiver<Arc<Vec<types::Pool>>> {
        self.inventory.subscribe()
    }

    /// Hand every event from the driver's event sources to its guest and
    /// apply the health it reports. Runs until the sources are gone.
    pub async fn run_events(self: Arc<Self>, mut events: tokio::sync::mpsc::Receiver<types::Event>) {
        while let Some(event) = events.recv().await {
            let _ = self.handle_event(event).await;
        }
    }

    /// Hand one event to the guest and apply the health it reports. Returns
    /// the guest's reports (`guest run` prints them); a failure is logged.
    pub async fn handle_event(&self, event: types::Event) -> Result<Vec<types::DeviceHealth>, GuestError> {
        let result = self.guest.on_event(event).await;
        match &result {
            Ok(reports) => {
                self.health.apply(reports);
            }
            Err(e) => tracing::warn!(driver = %self.name, error = %e, "guest could not handle an event"),
        }
        result
    }

    /// Rewrite CDI specs of checkpointed claims that the CDI directory lost
    /// (it is a tmpfs on most nodes, emptied by a reboot). Returns how many.
    pub fn restore_cdi_specs(&self) -> Result<usize, CdiError> {
        let mut restored = 0;
        for record in self.checkpoint.records() {
            if let Some(spec) = &record.cdi_spec
                && !self.cdi.exists(&record.claim.uid)
            {
                if self.before_this_boot(&record) {
                    // Its re-prepare failed: the spec describes devices as
                    // they were before the reboot. A container must fail to
                    // start (unresolvable CDI device) rather than get them.
                    tracing::warn!(driver = %self.name, claim.uid = %record.claim.uid, "not restoring the CDI spec of a claim prepared before the reboot and not prepared again");
                    continue;
                }
                self.cdi.write(&record.claim.uid, spec)?;
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Prepare claims; one result per distinct claim UID.
    pub async fn prepare(&self, claims: Vec<ClaimRef>) -> Vec<(String, Result<Vec<PreparedDevice>, OperationError>)> {
        let claims = dedup(claims);
        let _serialized = match self.serialize().await {
            Ok(guard) => guard,
            Err(e) => {
                return claims
                    .into_iter()
                    .map(|c| (c.uid, Err(OperationError::Serialize(e.clone()))))
                    .collect();
            }
        };
        join_all(claims.into_iter().map(|c| async move {
            let span = tracing::info_span!("prepare", driver = %self.name, claim.uid = %c.uid, claim.namespace = %c.namespace, claim.name = %c.name);
            let started = Instant::now();
            let result = self.prepare_one(&c).instrument(span.clone()).await;
            self.metrics.claim_operation(&self.name, "prepare", result.is_ok(), started.elapsed());
            span.in_scope(|| match &result {
                Ok(devices) => tracing::info!(devices = devices.len(), took_us = started.elapsed().as_micros() as u64, "claim prepared"),
                Err(e) => tracing::warn!(error = %e, "claim prepare failed"),
            });
            if let Err(e) = &result {
                self.claim_failed(&c, "NodePrepareResources", "PrepareFailed", e);
            }
            (c.uid, result)
        }))
        .await
    }

    /// Unprepare claims; one result per distinct claim UID.
    pub async fn unprepare(&self, claims: Vec<ClaimRef>) -> Vec<(String, Result<(), OperationError>)> {
        let claims = dedup(claims);
        let _serialized = match self.serialize().await {
            Ok(guard) => guard,
            Err(e) => {
                return claims
                    .into_iter()
                    .map(|c| (c.uid, Err(OperationError::Serialize(e.clone()))))
                    .collect();
            }
        };
        join_all(claims.into_iter().map(|c| async move {
            let span = tracing::info_span!("unprepare", driver = %self.name, claim.uid = %c.uid, claim.namespace = %c.namespace, claim.name = %c.name);
            let started = Instant::now();
            let result = self.unprepare_one(&c).instrument(span.clone()).await;
            self.metrics.claim_operation(&self.name, "unprepare", result.is_ok(), started.elapsed());
            span.in_scope(|| match &result {
                Ok(()) => tracing::info!(took_us = started.elapsed().as_micros() as u64, "claim unprepared"),
                Err(e) => tracing::warn!(error = %e, "claim unprepare failed"),
            });
            if let Err(e) = &result {
                self.claim_failed(&c, "NodeUnprepareResources", "UnprepareFailed", e);
            }
            (c.uid, result)
        }))
        .await
    }

    /// Rolling-update mode: take the node-wide lock and re-read the
    /// checkpoint under it. Otherwise nothing.
    async fn serialize(&self) -> Result<Option<crate::state::serialize::SerializeGuard>, String> {
        let Some(lock) = &self.serialize else { return Ok(None) };
        let guard = lock.acquire().await.map_err(|e| e.to_string())?;
        self.checkpoint.reload().map_err(|e| e.to_string())?;
        self.report_quarantined();
        self.metrics.set_prepared_claims(&self.name, self.checkpoint.len());
        Ok(Some(guard))
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
            format!("{call} failed (guest {} {}): {e}", id.name, id.version),
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

    /// Whether `record` was prepared in an earlier boot of this node.
    fn before_this_boot(&self, record: &ClaimRecord) -> bool {
        matches!((&record.boot_id, &self.boot_id), (Some(then), Some(now)) if then != now)
    }

    /// After a reboot: prepare again every claim prepared in an earlier boot
    /// (the guest's device-side state is gone, the checkpoint is not), and
    /// report what was re-prepared or failed. Runs before the DRA socket is
    /// served, under the rolling-update lock when there is one.
    pub async fn prepare_after_reboot(&self) -> RebootReport {
        let stale: Vec<ClaimRecord> = self
            .checkpoint
            .records()
            .into_iter()
            .filter(|r| self.before_this_boot(r))
            .collect();
        let mut report = RebootReport {
            total: stale.len(),
            ..Default::default()
        };
        if stale.is_empty() {
            return report;
        }
        let previous = stale[0].boot_id.clone().unwrap_or_default();
        let now = self.boot_id.clone().unwrap_or_default();
        tracing::info!(driver = %self.name, claims = stale.len(), boot_id.previous = %previous, boot_id.now = %now, "the node rebooted since these claims were prepared; preparing them again");
        for record in stale {
            let c = record.claim.clone();
            let span = tracing::info_span!("reprepare", driver = %self.name, claim.uid = %c.uid, claim.namespace = %c.namespace, claim.name = %c.name);
            let result = self.prepare_one(&c).instrument(span.clone()).await;
            self.metrics.claim_reprepared(&self.name, result.is_ok());
            span.in_scope(|| match &result {
                Ok(devices) if *devices != record.devices => tracing::warn!(
                    before = ?record.devices, now = ?devices,
                    "prepared again, but the guest answered other devices or CDI IDs than before the reboot; the kubelet keeps the earlier answer"
                ),
                Ok(_) => tracing::info!("claim prepared again after the reboot"),
                Err(e) => tracing::error!(error = %e, "claim could not be prepared again after the reboot; its next NodePrepareResources tries again"),
            });
            match result {
                Ok(_) => report.reprepared += 1,
                Err(e) => {
                    if let Some(events) = &self.events {
                        events.node_event(
                            &self.name,
                            EventType::Warning,
                            "ClaimRePrepareFailed",
                            "PrepareAfterReboot",
                            format!("claim {c} could not be prepared again after the reboot: {e}"),
                        );
                    }
                    self.claim_failed(&c, "NodePrepareResources", "PrepareFailed", &e);
                    report.failed.push((c, e.to_string()));
                }
            }
        }
        let failed: Vec<String> = report.failed.iter().map(|(c, e)| format!("{}: {e}", c.uid)).collect();
        if report.failed.is_empty() {
            tracing::info!(driver = %self.name, reprepared = report.reprepared, total = report.total, "claims re-prepared after a reboot");
        } else {
            tracing::error!(driver = %self.name, reprepared = report.reprepared, total = report.total, failed = ?failed, "claims re-prepared after a reboot, some failed");
        }
        if let Some(events) = &self.events {
            let kind = if report.failed.is_empty() {
                EventType::Normal
            } else {
                EventType::Warning
            };
            let mut message = format!(
                "the node rebooted (boot ID {previous} -> {now}): {} of {} prepared claims prepared again",
                report.reprepared, report.total
            );
            if !failed.is_empty() {
                message.push_str(&format!("; failed: {}", failed.join("; ")));
            }
            events.node_event(&self.name, kind, "ClaimsRePrepared", "PrepareAfterReboot", message);
        }
        report
    }

    /// Replace the guest as its file changes, and report what happens,
    /// until the watch ends.
    pub async fn run_guest_updates(self: Arc<Self>, mut updates: GuestUpdates) {
        let mut rollbacks = self.guest.take_rollbacks();
        loop {
            tokio::select! {
                changed = updates.watcher.changed() => {
                    if changed.is_none() {
                        tracing::warn!(driver = %self.name, "guest file watch ended; no more hot swaps");
                        return;
                    }
                    self.update_guest(&updates.runtime, &updates.spec).await;
                }
                Some(rollback) = async { match rollbacks.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    self.rolled_back(rollback).await;
                }
            }
        }
    }

    /// Load the guest file again and swap it in if its content changed and
    /// it passes the checks and self-test. Returns whether a swap happened.
    pub async fn update_guest(&self, runtime: &Arc<Runtime>, spec: &GuestSpec) -> bool {
        let events = self.events.as_ref();
        let started = Instant::now();
        match self.guest.replace(runtime, &self.metrics, spec).await {
            Ok(Replaced::Unchanged) => {
                tracing::debug!(driver = %self.name, "guest file event; content unchanged");
                false
            }
            Ok(Replaced::Swapped { from, to, report }) => {
                let took = started.elapsed();
                self.metrics.guest_swap(&self.name, "swapped");
                self.metrics.guest_swap_duration(&self.name, took);
                self.metrics
                    .set_guest_info(&self.name, &to.name, &to.version, &to.digest);
                let republished = self.set_inventory(report.inventory);
                tracing::info!(
                    driver = %self.name,
                    from.version = %from.version, from.digest = %from.digest,
                    to.guest = %to.name, to.version = %to.version, to.digest = %to.digest,
                    cache = ?report.cache, took_ms = took.as_millis() as u64,
                    inventory_changed = republished,
                    "guest swapped"
                );
                if let Some(ev) = events {
                    ev.node_event(
                        &self.name,
                        EventType::Normal,
                        "GuestSwapped",
                        "SwapGuest",
                        format!(
                            "now serving {} {} ({}), was {} ({})",
                            to.name,
                            to.version,
                            short(&to.digest),
                            from.version,
                            short(&from.digest)
                        ),
                    );
                }
                true
            }
            Err(e) => {
                self.metrics.guest_swap(&self.name, "rejected");
                let current = self.guest.identity();
                tracing::error!(
                    driver = %self.name, error = %e,
                    serving.version = %current.version, serving.digest = %current.digest,
                    "new guest refused; the current guest keeps serving"
                );
                if let Some(ev) = events {
                    ev.node_event(
                        &self.name,
                        EventType::Warning,
                        "GuestRejected",
                        "SwapGuest",
                        format!("{e}; still serving {} ({})", current.version, short(&current.digest)),
                    );
                }
                false
            }
        }
    }

    async fn rolled_back(&self, rollback: Rollback) {
        let events = self.events.as_ref();
        let Rollback {
            from,
            to,
            calls,
            failures,
            last_error,
        } = rollback;
        self.metrics.guest_swap(&self.name, "rolled_back");
        self.metrics
            .set_guest_info(&self.name, &to.name, &to.version, &to.digest);
        tracing::error!(
            driver = %self.name, failed.version = %from.version, failed.digest = %from.digest,
            restored.version = %to.version, restored.digest = %to.digest,
            calls, failures, last_error = %last_error,
            "new guest failed too many of its first calls; rolled back to the previous guest"
        );
        if let Some(ev) = events {
            ev.node_event(
                &self.name,
                EventType::Warning,
                "GuestRolledBack",
                "SwapGuest",
                format!(
                    "{} ({}) failed {failures} of its first {calls} calls (last: {last_error}); back to {} ({})",
                    from.version,
                    short(&from.digest),
                    to.version,
                    short(&to.digest)
                ),
            );
        }
        match self.guest.inventory().await {
            Ok(pools) => {
                self.set_inventory(pools);
            }
            Err(e) => tracing::error!(driver = %self.name, error = %e, "restored guest's inventory failed"),
        }
    }

    /// Make `pools` the published inventory. Returns whether it differs from
    /// the previous one (only then are ResourceSlices rewritten).
    fn set_inventory(&self, pools: Vec<types::Pool>) -> bool {
        self.health.set_inventory(&pools);
        self.inventory.send_if_modified(|current| {
            if **current == pools {
                false
            } else {
                *current = Arc::new(pools);
                true
            }
        })
    }

    async fn prepare_one(&self, c: &ClaimRef) -> Result<Vec<PreparedDevice>, OperationError> {
        validate_ref(c)?;
        let _operation = ClaimOperation::start();
        let _lock = self.locks.lock(&c.uid).await;

        let recorded = self.checkpoint.get(&c.uid);
        match &recorded {
            Some(record) if !self.before_this_boot(record) => {
                if let Some(spec) = &record.cdi_spec
                    && !self.cdi.exists(&c.uid)
                {
                    tracing::warn!("CDI spec of a prepared claim was missing; restored it from the checkpoint");
                    self.cdi.write(&c.uid, spec)?;
                }
                if !record.device_status.is_empty() {
                    // Cheap when the API server already has it (a read, no write).
                    self.claims
                        .set_driver_status(c, &self.name, record.device_status.iter().map(Into::into).collect())
                        .await?;
                }
                tracing::debug!("claim already prepared; answering from the checkpoint");
                return Ok(record.devices.clone());
            }
            Some(record) => tracing::info!(
                boot_id.recorded = record.boot_id.as_deref().unwrap_or(""),
                boot_id.now = self.boot_id.as_deref().unwrap_or(""),
                "claim was prepared before the node rebooted; running the guest's prepare again"
            ),
            None => {}
        }

        let driver_claim = self.driver_claim(c, recorded.as_ref()).await?;
        if driver_claim.claim.devices.is_empty() {
            return Ok(Vec::new());
        }
        let (mut prepared, identity) = self.guest.prepare(driver_claim.claim.clone()).await?;

        match self.commit_prepared(c, &driver_claim, &mut prepared, identity).await {
            Ok((devices, status)) => {
                // Prepared and durable. Should writing the status fail, the
                // kubelet retries and the repeated prepare writes it again.
                if !status.is_empty() {
                    self.claims.set_driver_status(c, &self.name, status).await?;
                }
                Ok(devices)
            }
            Err(e) => {
                // Nothing of this claim may stay half-prepared: undo the guest's work.
                if let Err(undo) = self
                    .guest
                    .unprepare(driver_claim.claim.ref_.clone(), prepared.state)
                    .await
                {
                    tracing::error!(error = %undo, "could not undo the guest's prepare after a failure");
                }
                Err(e)
            }
        }
    }

    /// This driver's part of the claim, from the API server (or the claims
    /// file). A claim prepared before a reboot whose object cannot be used
    /// now (API server unreachable, object gone or replaced while its pod
    /// still runs) is prepared from the allocation recorded with it.
    async fn driver_claim(&self, c: &ClaimRef, recorded: Option<&ClaimRecord>) -> Result<DriverClaim, OperationError> {
        let fetched = match self.claims.get(&c.namespace, &c.name).await {
            Ok(object) => claim_for_driver(&object, c, &self.name).map_err(OperationError::from),
            Err(e) => Err(OperationError::from(e)),
        };
        let fallback = recorded.and_then(|r| r.allocation.as_ref());
        match (fetched, fallback) {
            (Ok(claim), _) => Ok(claim),
            (Err(e), Some(allocation)) => {
                tracing::warn!(error = %e, "the ResourceClaim cannot be used; preparing again from the allocation recorded at prepare time");
                Ok(DriverClaim::from_recorded(c, allocation)?)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Check (and complete) the guest's answer, write the CDI spec and the
    /// checkpoint.
    async fn commit_prepared(
        &self,
        c: &ClaimRef,
        driver_claim: &crate::kube::DriverClaim,
        prepared: &mut types::PreparedClaim,
        guest: crate::state::checkpoint::GuestIdentity,
    ) -> Result<
        (
            Vec<PreparedDevice>,
            Vec<k8s_openapi::api::resource::v1::AllocatedDeviceStatus>,
        ),
        OperationError,
    > {
        let inventory = self.inventory.borrow().clone();
        self.policy
            .check(&driver_claim.claim, &inventory, prepared)
            .map_err(|e| self.rejected(e))?;
        if self.policy.host_links(prepared).next().is_some() {
            let owners = self.link_owners().await?;
            self.policy
                .check_claim_links(&c.uid, prepared, |link| owners.get(link).cloned())
                .map_err(|e| self.rejected(e))?;
        }
        let prepared = &*prepared;

        // Answer devices in allocation order.
        let by_key: HashMap<(&str, &str, Option<&str>), &types::PreparedDevice> = prepared
            .devices
            .iter()
            .map(|d| ((d.pool.as_str(), d.device.as_str(), d.share_id.as_deref()), d))
            .collect();
        let mut spec_devices = Vec::new();
        let mut spec_owners: Vec<(&str, &str)> = Vec::new();
        let mut devices = Vec::with_capacity(driver_claim.claim.devices.len());
        for (alloc, request) in driver_claim.claim.devices.iter().zip(&driver_claim.request_names) {
            let key = (alloc.pool.as_str(), alloc.device.as_str(), alloc.share_id.as_deref());
            let Some(p) = by_key.get(&key) else { continue }; // the policy check guarantees presence
            // Several requests may be served by one device (the same
            // allocation listed under different requests): one answer entry.
            if let Some(existing) = devices.iter_mut().find(|d: &&mut PreparedDevice| {
                d.pool == alloc.pool && d.device == alloc.device && d.share_id == alloc.share_id
            }) {
                if !existing.request_names.contains(request) {
                    existing.request_names.push(request.clone());
                }
                continue;
            }
            let mut cdi_device_ids = p.cdi_device_ids.clone();
            if cdi::has_edits(&p.edits) {
                let name = CdiWriter::device_name(&c.uid, &p.device, p.share_id.as_deref());
                cdi_device_ids.push(self.cdi.qualified_name(&name));
                spec_devices.push(SpecDevice { name, edits: &p.edits });
                spec_owners.push((&p.pool, &p.device));
            }
            devices.push(PreparedDevice {
                request_names: vec![request.clone()],
                pool: alloc.pool.clone(),
                device: alloc.device.clone(),
                share_id: alloc.share_id.clone(),
                cdi_device_ids,
            });
        }

        let cdi_spec = if spec_devices.is_empty() {
            None
        } else {
            let spec = self.cdi.build_spec(&spec_devices)?;
            let sizes = spec_owners
                .iter()
                .zip(&spec_devices)
                .map(|(&(pool, device), d)| (pool, device, cdi::device_json_len(d)));
            self.policy
                .check_spec_size(spec.len(), sizes)
                .map_err(|e| self.rejected(e))?;
            Some(spec)
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        let device_status: Vec<_> = prepared
            .devices
            .iter()
            .filter_map(|p| {
                let status = p.status.as_ref()?;
                Some(crate::kube::status::entry(
                    &self.name,
                    &p.pool,
                    &p.device,
                    p.share_id.as_deref(),
                    status,
                    now,
                ))
            })
            .collect();
        let record = ClaimRecord {
            claim: c.clone(),
            devices: devices.clone(),
            cdi_spec,
            state: prepared.state.clone(),
            guest,
            prepared_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            device_status: device_status.iter().map(Into::into).collect(),
            boot_id: self.boot_id.clone(),
            allocation: Some(driver_claim.to_recorded()),
        };
        let (cdi, checkpoint) = (Arc::clone(&self.cdi), Arc::clone(&self.checkpoint));
        let uid = c.uid.clone();
        durably(move || {
            if let Some(spec) = &record.cdi_spec {
                cdi.write(&uid, spec)?;
            }
            if let Err(e) = checkpoint.commit(record) {
                if let Err(undo) = cdi.remove(&uid) {
                    tracing::error!(error = %undo, "could not remove the CDI spec after a failed checkpoint commit");
                }
                return Err(e.into());
            }
            Ok(())
        })
        .await?;
        self.metrics.set_prepared_claims(&self.name, self.checkpoint.len());
        Ok((devices, device_status))
    }

    /// Which claim each link the host created for this driver belongs to
    /// (none without a `net` grant): a read of the driver's network state,
    /// file work like the claim's own ([`durably`]).
    async fn link_owners(&self) -> Result<HashMap<String, String>, OperationError> {
        let Some(net) = self.guest.net() else {
            return Ok(HashMap::new());
        };
        durably(move || Ok(net.link_owners()?)).await
    }

    /// Count a policy refusal under its rule (the log line and the claim's
    /// error carry the rest).
    fn rejected(&self, e: PolicyError) -> OperationError {
        self.metrics.policy_rejection(&self.name, e.rule().as_str());
        OperationError::Rejected(e)
    }

    async fn unprepare_one(&self, c: &ClaimRef) -> Result<(), OperationError> {
        validate_ref(c)?;
        let _operation = ClaimOperation::start();
        let _lock = self.locks.lock(&c.uid).await;
        let guest_ref = types::ClaimRef::from(c);
        match self.checkpoint.get(&c.uid) {
            Some(record) => {
                self.guest.unprepare(guest_ref, record.state).await?;
                let (cdi, checkpoint, uid) = (Arc::clone(&self.cdi), Arc::clone(&self.checkpoint), c.uid.clone());
                durably(move || {
                    cdi.remove(&uid)?;
                    checkpoint.remove(&uid)?;
                    Ok(())
                })
                .await?;
                self.metrics.set_prepared_claims(&self.name, self.checkpoint.len());
                if !record.device_status.is_empty() {
                    // Informational only: the devices are released whether or
                    // not the API server hears about it now.
                    if let Err(e) = self.claims.set_driver_status(c, &self.name, Vec::new()).await {
                        tracing::warn!(error = %e, "could not remove this driver's status.devices entries");
                    }
                }
            }
            None => {
                // Unknown claim: already unprepared, or prepared by a guest
                // whose result never reached the checkpoint (a crash in
                // between). Let the guest clean up by claim, and remove a CDI
                // spec a crash may have left behind.
                self.guest.unprepare(guest_ref, Vec::new()).await?;
                let (cdi, uid) = (Arc::clone(&self.cdi), c.uid.clone());
                if durably(move || cdi.remove(&uid).map_err(OperationError::from)).await? {
                    tracing::info!("removed a CDI spec left without a checkpoint record");
                }
            }
        }
        Ok(())
    }
}

/// Run a claim's file writes and removals (each with its fsyncs) without
/// holding up the async workers while the disk works.
///
/// Why: a durable write waits on the disk for most of its time. Run on the
/// async workers (two on a small node), at most two claims' fsyncs were in
/// flight, while the disk completes concurrent ones together: on the 2-core
/// test machine one thread did 1,473 write+remove pairs/s and 16 threads
/// 5,008 (docs/benchmarks.md, "Durable writes off the async workers").
///
/// How: a claim operation that is the only one in flight does its file
/// work inline, on its worker: a lone kubelet call pays no thread hop, and
/// the other worker stays free. When others are in flight it goes to tokio's
/// blocking pool (a wake-up of a pool thread), so that their fsyncs are in
/// flight together. Measured against the alternatives (one run each, release):
/// always hopping cost one caller's prepare 1.07× its p50 and 1.17× the host
/// CPU; never hopping capped 16 callers at 1,334 pairs/s (2,939 when every
/// operation hopped); letting one operation at a time run inline whatever
/// else was in flight did 0.84× the pairs/s of always hopping at 1.19× the
/// CPU per pair (the other worker then steals the blocked one's tasks).
///
/// At most [`DISK_WORK_IN_FLIGHT`] run on the pool at once; the rest wait
/// their turn on the async side.
///
/// Either way the work, once started, runs to its end even when the caller
/// is dropped (an inline run is one poll; a blocking task cannot be
/// cancelled once started), so an abandoned call never leaves a file
/// half-done; a caller dropped while it waits for its turn has touched no
/// file (and the kubelet's calls are not dropped: `kubelet::plugin`'s
/// `Detachable` finishes them). A panic in the work resumes in the caller.
/// Its tracing span is the caller's.
async fn durably<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OperationError> + Send + 'static,
) -> Result<T, OperationError> {
    if ClaimOperation::in_flight() <= 1 {
        return work();
    }
    let _turn = DISK_WORK.acquire().await.map_err(|_| OperationError::ShuttingDown)?;
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(work)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(OperationError::ShuttingDown),
    }
}

/// How many claims' file work [`durably`] runs on the blocking pool at once,
/// process-wide.
///
/// Why a bound: without one, N concurrent claim operations start N pool
/// threads each waiting in fsync — up to tokio's 512, the pool the NVML and
/// netlink imports share — and the disk gains little past 16 in flight (the
/// throughput bench's disk alone: 4,700–6,100 pairs/s with 16 threads,
/// 5,115 with 64). Measured at 64 callers against no bound (two runs,
/// release): 1.01× and 0.99× the pairs/s, prepare p99 0.56× and 0.54×, host
/// CPU per pair 0.95× and 0.96×; a bound of 8 did 0.86× the pairs/s of 16.
const DISK_WORK_IN_FLIGHT: usize = 16;

static DISK_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(DISK_WORK_IN_FLIGHT);

/// One claim's prepare or unprepare in flight, counted process-wide (all
/// drivers share the async workers) for [`durably`].
struct ClaimOperation;

static CLAIM_OPERATIONS: AtomicUsize = AtomicUsize::new(0);

impl ClaimOperation {
    fn start() -> Self {
        CLAIM_OPERATIONS.fetch_add(1, Ordering::AcqRel);
        ClaimOperation
    }

    fn in_flight() -> usize {
        CLAIM_OPERATIONS.load(Ordering::Acquire)
    }
}

impl Drop for ClaimOperation {
    fn drop(&mut self) {
        CLAIM_OPERATIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The first 12 hex digits of a digest, as in log lines and events.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
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

/// Keep the first reference of each UID (the kubelet never repeats one, but
/// the answer map can hold each UID only once anyway).
fn dedup(claims: Vec<ClaimRef>) -> Vec<ClaimRef> {
    let mut seen = std::collections::HashSet::new();
    claims.into_iter().filter(|c| seen.insert(c.uid.clone())).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_work_leaves_the_worker_when_other_operations_are_in_flight() {
        let worker = std::thread::current().id();
        // Two operations in flight (other tests' may add more, never fewer).
        let (_a, _b) = (ClaimOperation::start(), ClaimOperation::start());
        let ran_on = durably(|| Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(ran_on, worker, "with others in flight the work must not block a worker");
        // A panic in the work is the caller's panic, as it was inline.
        let panicked =
            std::panic::AssertUnwindSafe(durably(|| -> Result<(), OperationError> { panic!("disk on fire") }))
                .catch_unwind()
                .await;
        let message = panicked.expect_err("the panic reaches the caller");
        assert_eq!(message.downcast_ref::<&str>(), Some(&"disk on fire"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_work_on_the_pool_is_bounded() {
        // 3× the bound of operations at once, each holding its pool thread
        // as an fsync would: never more than the bound run together, and
        // every one of them completes.
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let _in_flight = (ClaimOperation::start(), ClaimOperation::start());
        let works = (0..3 * DISK_WORK_IN_FLIGHT).map(|i| {
            tokio::spawn(durably(move || {
                let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                MOST.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                RUNNING.fetch_sub(1, Ordering::SeqCst);
                Ok(i)
            }))
        });
        let done: Vec<usize> = join_all(works)
            .await
            .into_iter()
            .map(|r| r.expect("task").expect("work"))
            .collect();
        assert_eq!(done, (0..3 * DISK_WORK_IN_FLIGHT).collect::<Vec<_>>());
        let most = MOST.load(Ordering::SeqCst);
        assert!(
            most <= DISK_WORK_IN_FLIGHT,
            "{most} ran at once, the bound is {DISK_WORK_IN_FLIGHT}"
        );
        assert!(most > 1, "the work ran one at a time");
    }
}
