//! Prepare and unprepare of claims: the kubelet's calls, one claim at a
//! time under its lock, concurrently across claims.

use super::disk::{ClaimOperation, durably};
use super::*;
use std::time::Duration;

/// What differs between the kubelet's two calls, for [`Driver::each_claim`].
struct Call {
    /// The gRPC method, as the claim's Event names it.
    method: &'static str,
    /// The Event's reason when a claim fails.
    reason: &'static str,
    /// The metric's `operation` label.
    operation: &'static str,
}

const PREPARE: Call = Call {
    method: "NodePrepareResources",
    reason: "PrepareFailed",
    operation: "prepare",
};
const UNPREPARE: Call = Call {
    method: "NodeUnprepareResources",
    reason: "UnprepareFailed",
    operation: "unprepare",
};

impl Driver {
    /// Prepare claims; one result per distinct claim UID.
    ///
    /// Each claim is read from the API server before the call takes the
    /// node-wide lock of a rolling update ([`Self::fetch_ahead`]), so the lock
    /// is held for the local work only, not for API round trips: one call's
    /// GETs overlap with another call's guest and file work instead of
    /// queueing behind them.
    pub async fn prepare(&self, claims: Vec<ClaimRef>) -> Vec<(String, Result<Vec<PreparedDevice>, OperationError>)> {
        let claims: Vec<(ClaimRef, tracing::Span)> = dedup(claims)
            .into_iter()
            .map(|c| {
                let span = tracing::info_span!("prepare", driver = %self.name, claim.uid = %c.uid, claim.namespace = %c.namespace, claim.name = %c.name);
                (c, span)
            })
            .collect();
        let fetched = join_all(claims.iter().map(|(c, span)| async move {
            let started = Instant::now();
            let fetched = self.fetch_ahead(c).instrument(span.clone()).await;
            (fetched, started.elapsed())
        }))
        .await;
        let claims = claims
            .into_iter()
            .zip(fetched)
            .map(|((c, span), (fetched, took))| (c, took, (span, fetched)))
            .collect();
        self.each_claim(&PREPARE, claims, |c, ahead, (span, fetched)| async move {
            let started = Instant::now();
            let result = self.prepare_one(&c, fetched).instrument(span.clone()).await;
            let took = ahead + started.elapsed();
            span.in_scope(|| match &result {
                Ok(devices) => tracing::info!(
                    devices = devices.len(),
                    took_us = took.as_micros() as u64,
                    "claim prepared"
                ),
                Err(e) => tracing::warn!(error = %Chain(e), "claim prepare failed"),
            });
            (c, result)
        })
        .await
    }

    /// Unprepare claims; one result per distinct claim UID.
    pub async fn unprepare(&self, claims: Vec<ClaimRef>) -> Vec<(String, Result<(), OperationError>)> {
        let claims = dedup(claims).into_iter().map(|c| (c, Duration::ZERO, ())).collect();
        self.each_claim(&UNPREPARE, claims, |c, _, ()| async move {
            let span = tracing::info_span!("unprepare", driver = %self.name, claim.uid = %c.uid, claim.namespace = %c.namespace, claim.name = %c.name);
            let started = Instant::now();
            let result = self.unprepare_one(&c).instrument(span.clone()).await;
            span.in_scope(|| match &result {
                Ok(()) => tracing::info!(took_us = started.elapsed().as_micros() as u64, "claim unprepared"),
                Err(e) => tracing::warn!(error = %Chain(e), "claim unprepare failed"),
            });
            (c, result)
        })
        .await
    }

    /// The claim's part for this driver, read from the API server ahead of
    /// the locks, unless the checkpoint (as last read) says it is prepared in
    /// this boot and will be answered from there (`None`; a claim whose
    /// record turns out gone under the lock is read then).
    ///
    /// Safe to read early: the kubelet prepares a claim only once it is
    /// allocated and reserved for the pod, and an allocation cannot change
    /// while the claim is reserved; a claim deleted and created again under
    /// the same name in between has another UID, which
    /// [`claim_for_driver`] refuses.
    async fn fetch_ahead(&self, c: &ClaimRef) -> Option<Result<DriverClaim, OperationError>> {
        if validate_ref(c).is_err() {
            return None; // prepare_one reports it
        }
        if let Some(boot_id) = self.checkpoint.boot_id(&c.uid)
            && !self.is_earlier_boot(boot_id.as_deref())
        {
            return None;
        }
        Some(self.fetch(c).await)
    }

    /// The claim from the API server (or the claims file), this driver's part of it.
    async fn fetch(&self, c: &ClaimRef) -> Result<DriverClaim, OperationError> {
        match self.claims.get(&c.namespace, &c.name).await {
            Ok(object) => claim_for_driver(&object, c, &self.name).map_err(OperationError::from),
            Err(e) => Err(OperationError::from(e)),
        }
    }

    /// One kubelet call: its claims once each, serialized with the other
    /// pod of a rolling update, run concurrently by `one` (which logs under
    /// the claim's span); each timed in the metrics (with the time already
    /// spent on it before the lock, the read ahead of a prepare, which `one`
    /// is given too; not the wait for the lock), and each failure an Event on
    /// its claim.
    async fn each_claim<P, T, F, Fut>(
        &self,
        call: &Call,
        claims: Vec<(ClaimRef, Duration, P)>,
        one: F,
    ) -> Vec<(String, Result<T, OperationError>)>
    where
        F: Fn(ClaimRef, Duration, P) -> Fut,
        Fut: std::future::Future<Output = (ClaimRef, Result<T, OperationError>)>,
    {
        if claims.is_empty() {
            // The liveness probe's call: answered without waiting for the
            // node-wide lock another pod of a rolling update may hold.
            return Vec::new();
        }
        let _serialized = match self.serialize().await {
            Ok(guard) => guard,
            Err(e) => {
                return claims
                    .into_iter()
                    .map(|(c, _, _)| (c.uid, Err(OperationError::Serialize(Arc::clone(&e)))))
                    .collect();
            }
        };
        join_all(claims.into_iter().map(|(c, before, payload)| {
            let started = Instant::now();
            let run = one(c, before, payload);
            async move {
                let (c, result) = run.await;
                self.metrics
                    .claim_operation(&self.name, call.operation, result.is_ok(), before + started.elapsed());
                if let Err(e) = &result {
                    self.claim_failed(&c, call.method, call.reason, e);
                }
                (c.uid, result)
            }
        }))
        .await
    }

    /// Prepare one claim; `fetched`: the claim as [`Self::fetch_ahead`] read
    /// it, if it did.
    pub(super) async fn prepare_one(
        &self,
        c: &ClaimRef,
        fetched: Option<Result<DriverClaim, OperationError>>,
    ) -> Result<Vec<PreparedDevice>, OperationError> {
        validate_ref(c)?;
        let _operation = ClaimOperation::start();
        let _lock = self.locks.lock(&c.uid).await;

        let recorded = self.checkpoint.get(&c.uid);
        match &recorded {
            Some(record) if !self.before_this_boot(record) => {
                if self.restore_files(record)? {
                    tracing::warn!(
                        "CDI spec or device metadata of a prepared claim was missing; restored it from the checkpoint"
                    );
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

        let fetched = match fetched {
            Some(fetched) => fetched,
            None => self.fetch(c).await,
        };
        let driver_claim = self.driver_claim(c, fetched, recorded.as_ref())?;
        if driver_claim.claim.devices.is_empty() {
            return Ok(Vec::new());
        }
        let (mut prepared, identity) = self.guest.prepare(driver_claim.claim.clone()).await?;

        match self
            .commit_prepared(c, &driver_claim, &mut prepared, identity, recorded.as_ref())
            .await
        {
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
                    .unprepare(driver_claim.claim.reference.clone(), prepared.state)
                    .await
                {
                    tracing::error!(error = %Chain(&undo), "could not undo the guest's prepare after a failure");
                }
                Err(e)
            }
        }
    }

    /// This driver's part of the claim as fetched. A claim prepared before a
    /// reboot whose object cannot be used now (API server unreachable, object
    /// gone or replaced while its pod still runs) is prepared from the
    /// allocation recorded with it.
    fn driver_claim(
        &self,
        c: &ClaimRef,
        fetched: Result<DriverClaim, OperationError>,
        recorded: Option<&ClaimRecord>,
    ) -> Result<DriverClaim, OperationError> {
        let fallback = recorded.and_then(|r| r.allocation.as_ref());
        match (fetched, fallback) {
            (Ok(claim), _) => Ok(claim),
            (Err(e), Some(allocation)) => {
                tracing::warn!(error = %Chain(&e), "the ResourceClaim cannot be used; preparing again from the allocation recorded at prepare time");
                Ok(DriverClaim::from_recorded(c, allocation)?)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Check (and complete) the guest's answer, write the CDI spec, the
    /// device metadata and the checkpoint. `previous`: the claim's record
    /// from an earlier boot, whose metadata files the new answer replaces.
    async fn commit_prepared(
        &self,
        c: &ClaimRef,
        driver_claim: &crate::kube::DriverClaim,
        prepared: &mut model::PreparedClaim,
        guest: crate::state::checkpoint::GuestIdentity,
        previous: Option<&ClaimRecord>,
    ) -> Result<
        (
            Vec<PreparedDevice>,
            Vec<k8s_openapi::api::resource::v1::AllocatedDeviceStatus>,
        ),
        OperationError,
    > {
        let inventory = self.inventory.borrow().clone();
        // The network state is read only for an answer that hands out links.
        let link_owners = if self.policy.host_links(prepared).next().is_some() {
            self.link_owners().await?
        } else {
            HashMap::new()
        };
        self.policy
            .check(
                &driver_claim.claim,
                &inventory,
                &self.owners.load(),
                &link_owners,
                prepared,
            )
            .map_err(|e| self.rejected(e))?;
        let prepared = &*prepared;

        // Answer devices in allocation order.
        let by_key: HashMap<(&str, &str, Option<&str>), &model::PreparedDevice> = prepared
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

        let metadata = self.device_metadata(c, driver_claim, &by_key)?;
        // Each request's metadata device on the request's first device, as
        // the Go helper answers.
        for m in &metadata {
            if let Some(d) = devices.iter_mut().find(|d| d.request_names.contains(&m.request)) {
                d.cdi_device_ids.push(self.metadata.device_id(&c.uid, &m.request));
            }
        }
        // Requests whose metadata an earlier boot's answer had and this one has not.
        let stale: Vec<String> = previous
            .into_iter()
            .flat_map(|r| &r.metadata)
            .filter(|old| !metadata.iter().any(|m| m.request == old.request))
            .map(|old| old.request.clone())
            .collect();

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
            metadata,
        };
        let (cdi, metadata, checkpoint) = (
            Arc::clone(&self.cdi),
            Arc::clone(&self.metadata),
            Arc::clone(&self.checkpoint),
        );
        let uid = c.uid.clone();
        durably(move || {
            if let Some(spec) = &record.cdi_spec {
                cdi.write(&uid, spec)?;
            }
            let claim = record.claim.clone();
            let written = metadata
                .remove_requests(&claim, stale.iter().map(String::as_str))
                .and_then(|_| record.metadata.iter().try_for_each(|m| metadata.write(&claim, m)))
                .map_err(OperationError::from)
                .and_then(|()| checkpoint.commit(record).map_err(OperationError::from));
            if let Err(e) = written {
                if let Err(undo) = cdi.remove(&uid) {
                    tracing::error!(error = %Chain(&undo), "could not remove the CDI spec after a failed checkpoint commit");
                }
                if let Err(undo) = metadata.remove_claim(&claim) {
                    tracing::error!(error = %Chain(&undo), "could not remove the device metadata after a failed checkpoint commit");
                }
                return Err(e);
            }
            Ok(())
        })
        .await?;
        self.metrics.set_prepared_claims(&self.name, self.checkpoint.len());
        Ok((devices, device_status))
    }

    /// The device metadata files of a claim (KEP-5304): one per request of
    /// which some device has metadata, with all of the request's devices in
    /// allocation order.
    fn device_metadata(
        &self,
        c: &ClaimRef,
        driver_claim: &crate::kube::DriverClaim,
        by_key: &HashMap<(&str, &str, Option<&str>), &model::PreparedDevice>,
    ) -> Result<Vec<crate::state::checkpoint::RecordedMetadata>, OperationError> {
        use crate::state::metadata::{MetadataClaim, MetadataDevice};
        // (request, request as allocated, devices)
        let mut requests: Vec<(&str, &str, Vec<MetadataDevice<'_>>)> = Vec::new();
        for (alloc, request) in driver_claim.claim.devices.iter().zip(&driver_claim.request_names) {
            let key = (alloc.pool.as_str(), alloc.device.as_str(), alloc.share_id.as_deref());
            let Some(p) = by_key.get(&key) else { continue };
            let device = MetadataDevice {
                pool: &alloc.pool,
                device: &alloc.device,
                metadata: p.metadata.as_ref(),
            };
            match requests.iter_mut().find(|(r, _, _)| r == request) {
                Some((_, _, devices)) => devices.push(device),
                None => requests.push((request, &alloc.request, vec![device])),
            }
        }
        let claim = MetadataClaim {
            reference: c,
            pod_claim_name: driver_claim.pod_claim_name.as_deref(),
        };
        let mut out = Vec::new();
        for (request, request_ref, devices) in &requests {
            if devices.iter().any(|d| d.metadata.is_some()) {
                out.push(self.metadata.build(claim, request, request_ref, devices)?);
            }
        }
        Ok(out)
    }

    /// Which claim each link the host created for this driver belongs to
    /// (none without a `net` grant): a read of the driver's network state,
    /// file work like the claim's own ([`durably`]).
    async fn link_owners(&self) -> Result<HashMap<String, String>, OperationError> {
        let Some(net) = self.net.clone() else {
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
        let guest_ref = c.clone();
        match self.checkpoint.get(&c.uid) {
            Some(record) => {
                self.guest.unprepare(guest_ref, record.state).await?;
                let (cdi, metadata, checkpoint) = (
                    Arc::clone(&self.cdi),
                    Arc::clone(&self.metadata),
                    Arc::clone(&self.checkpoint),
                );
                let claim = c.clone();
                durably(move || {
                    cdi.remove(&claim.uid)?;
                    // All of the claim's, not only what the record names: a
                    // crash may have left others.
                    metadata.remove_claim(&claim)?;
                    checkpoint.remove(&claim.uid)?;
                    Ok(())
                })
                .await?;
                self.metrics.set_prepared_claims(&self.name, self.checkpoint.len());
                if !record.device_status.is_empty() {
                    // Informational only: the devices are released whether or
                    // not the API server hears about it now.
                    if let Err(e) = self.claims.set_driver_status(c, &self.name, Vec::new()).await {
                        tracing::warn!(error = %Chain(&e), "could not remove this driver's status.devices entries");
                    }
                }
            }
            None => {
                // Unknown claim: already unprepared, or prepared by a guest
                // whose result never reached the checkpoint (a crash in
                // between). Let the guest clean up by claim, and remove a CDI
                // spec and device metadata a crash may have left behind.
                self.guest.unprepare(guest_ref, Vec::new()).await?;
                let (cdi, metadata, claim) = (Arc::clone(&self.cdi), Arc::clone(&self.metadata), c.clone());
                let (spec, requests) =
                    durably(move || Ok((cdi.remove(&claim.uid)?, metadata.remove_claim(&claim)?))).await?;
                if spec {
                    tracing::info!("removed a CDI spec left without a checkpoint record");
                }
                if requests > 0 {
                    tracing::info!(requests, "removed device metadata left without a checkpoint record");
                }
            }
        }
        Ok(())
    }
}

/// Keep the first reference of each UID (the kubelet never repeats one, but
/// the answer map can hold each UID only once anyway).
fn dedup(claims: Vec<ClaimRef>) -> Vec<ClaimRef> {
    let mut seen = std::collections::HashSet::new();
    claims.into_iter().filter(|c| seen.insert(c.uid.clone())).collect()
}
