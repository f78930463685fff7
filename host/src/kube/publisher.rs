//! Publishing a driver's inventory as ResourceSlices, and keeping them so.
//!
//! One task per driver. It syncs when the inventory or (with
//! `taint_unhealthy`) device health changes, and when a watch on our own
//! slices (field selector `spec.driver`, `spec.nodeName`) reports anything,
//! so a slice someone deleted or edited (the kubelet wipes a driver's slices
//! 30 s after losing it) is restored. A sync lists our slices and writes only
//! the difference: publishing the same inventory again writes nothing.
//!
//! Per pool, as the upstream ResourceSlice controller does: slices are named
//! `<index in hex>-<driver>-<node>-<random>` so a stored slice maps back to
//! its position; slices of an older generation, with an undecodable,
//! duplicate or out-of-range index are deleted; the generation is kept when
//! no slice is new and at most one changed (a single atomic update), and
//! bumped otherwise, in which case every slice is rewritten.
//!
//! Devices the API server would refuse ([`desired_pools`]) are left out and
//! reported (log lines naming each, the metric
//! `dra_host_inventory_invalid_devices`, a Warning Event on the Node) each
//! time the set of them changes; the valid devices are published.

use super::client::{ApiClient, status_code};
use super::events::{EventRecorder, EventType};
use super::slices::{Desired, DesiredPool, DesiredSlice, HostTaint, SliceError, desired_pools};
use crate::health::{Snapshot, Status};
use crate::metrics::Metrics;
use crate::model;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{ResourceSlice, ResourceSliceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Preconditions, WatchEvent, WatchParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const DEBOUNCE: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where a publisher gets what to publish.
pub struct Inputs {
    pub inventory: watch::Receiver<Arc<Vec<model::Pool>>>,
    /// Device health, when unhealthy devices are to be tainted.
    pub health: Option<watch::Receiver<Snapshot>>,
}

/// The writes one sync made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
}

impl Writes {
    pub fn total(&self) -> usize {
        self.created + self.updated + self.deleted
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{what}")]
    Api { what: &'static str, source: kube::Error },
}

/// Log lines naming invalid devices, per change; the count says the rest.
const MAX_INVALID_LOGGED: usize = 20;
/// Invalid devices named in the Event's message (it holds 1 KiB).
const MAX_INVALID_IN_EVENT: usize = 5;

pub struct Publisher {
    api: ApiClient,
    driver: String,
    node: String,
    node_uid: Option<String>,
    metrics: Arc<Metrics>,
    events: Option<EventRecorder>,
    /// What was last reported as invalid, so that each change is reported once.
    reported_invalid: Vec<SliceError>,
}

impl Publisher {
    pub fn new(api: ApiClient, driver: &str, node: &str, node_uid: Option<String>, metrics: Arc<Metrics>) -> Self {
        Self {
            api,
            driver: driver.to_owned(),
            node: node.to_owned(),
            node_uid,
            metrics,
            events: None,
            reported_invalid: Vec::new(),
        }
    }

    /// Report invalid inventory devices as Kubernetes Events too.
    pub fn with_events(mut self, events: EventRecorder) -> Self {
        self.events = Some(events);
        self
    }

    /// Run until the inventory sender is dropped.
    pub async fn run(mut self, mut inputs: Inputs) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let owner = match self.owner().await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(driver = %self.driver, error = %super::client::describe(&e), "cannot look up this node's UID for the slices' owner; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let desired = self.desired(&mut inputs);
            self.report_invalid(&desired);
            let result = self.sync(&desired.pools, &owner).await;
            let resource_version = match result {
                Ok((writes, rv)) => {
                    backoff = Duration::from_millis(500);
                    if writes.total() > 0 {
                        tracing::info!(driver = %self.driver, created = writes.created, updated = writes.updated, deleted = writes.deleted, "ResourceSlices published");
                    }
                    Some(rv)
                }
                Err(e) => {
                    self.metrics.slice_sync_error(&self.driver);
                    tracing::error!(driver = %self.driver, error = %super::client::describe(&e), "publishing ResourceSlices failed");
                    None
                }
            };
            match resource_version {
                Some(rv) => {
                    if !self.watch_until_change(&rv, &mut inputs).await {
                        return;
                    }
                }
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        alive = wait_for_input(&mut inputs) => if !alive { return },
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            // Let a burst of changes settle into one sync.
            tokio::time::sleep(DEBOUNCE).await;
        }
    }

    /// Report the inventory's invalid devices when they differ from what
    /// was last reported.
    fn report_invalid(&mut self, desired: &Desired) {
        if desired.invalid == self.reported_invalid {
            return;
        }
        self.reported_invalid = desired.invalid.clone();
        let n = desired.invalid_devices();
        self.metrics.set_inventory_invalid_devices(&self.driver, n);
        if n == 0 {
            tracing::info!(driver = %self.driver, "every device of the inventory is valid again");
            return;
        }
        for e in desired.invalid.iter().take(MAX_INVALID_LOGGED) {
            tracing::error!(driver = %self.driver, error = %e, "inventory device not published: the API server would refuse it");
        }
        tracing::error!(
            driver = %self.driver, devices = n, logged = desired.invalid.len().min(MAX_INVALID_LOGGED),
            "{n} devices of the inventory are not published; the valid devices are"
        );
        if let Some(events) = &self.events {
            let named: Vec<String> = desired
                .invalid
                .iter()
                .take(MAX_INVALID_IN_EVENT)
                .map(|e| e.to_string())
                .collect();
            let more = desired.invalid.len().saturating_sub(MAX_INVALID_IN_EVENT);
            let more = if more > 0 {
                format!("; {more} more in the host's log")
            } else {
                String::new()
            };
            events.node_event(
                &self.driver,
                EventType::Warning,
                "InvalidDevices",
                "PublishInventory",
                format!(
                    "{n} devices of the guest's inventory are not published: {}{more}",
                    named.join("; ")
                ),
            );
        }
    }

    fn desired(&self, inputs: &mut Inputs) -> Desired {
        let pools = inputs.inventory.borrow_and_update().clone();
        let taints: Vec<HostTaint> = match &mut inputs.health {
            Some(h) => h
                .borrow_and_update()
                .iter()
                .filter(|d| d.status == Status::Unhealthy)
                .map(|d| HostTaint {
                    pool: d.pool.clone(),
                    device: d.device.clone(),
                    key: format!("{}/unhealthy", self.driver),
                    value: None,
                    effect: "NoSchedule",
                })
                .collect(),
            None => Vec::new(),
        };
        desired_pools(&pools, &taints)
    }

    async fn owner(&mut self) -> Result<OwnerReference, kube::Error> {
        let uid = match &self.node_uid {
            Some(uid) => uid.clone(),
            None => {
                let node = self.node.clone();
                let n: Node = self
                    .api
                    .call("get node", |c| {
                        let node = node.clone();
                        async move { Api::<Node>::all(c).get(&node).await }
                    })
                    .await?;
                let uid = n.metadata.uid.unwrap_or_default();
                self.node_uid = Some(uid.clone());
                uid
            }
        };
        Ok(OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid,
            controller: Some(true),
            block_owner_deletion: None,
        })
    }

    fn selector(&self) -> String {
        format!("spec.driver={},spec.nodeName={}", self.driver, self.node)
    }

    /// Make the stored slices match `desired`; returns the writes and the
    /// resourceVersion of the list it started from.
    pub async fn sync(
        &self,
        desired: &[DesiredPool],
        owner: &OwnerReference,
    ) -> Result<(Writes, String), PublishError> {
        let selector = self.selector();
        let list = self
            .api
            .call("list ResourceSlices", |c| {
                let lp = ListParams::default().fields(&selector);
                async move { Api::<ResourceSlice>::all(c).list(&lp).await }
            })
            .await
            .map_err(|source| PublishError::Api {
                what: "listing our ResourceSlices",
                source,
            })?;
        let rv = list.metadata.resource_version.clone().unwrap_or_default();
        let mut by_pool: BTreeMap<String, Vec<ResourceSlice>> = BTreeMap::new();
        for s in list.items {
            by_pool.entry(s.spec.pool.name.clone()).or_default().push(s);
        }
        let mut writes = Writes::default();
        for pool in desired {
            let existing = by_pool.remove(&pool.name).unwrap_or_default();
            let plan = plan(pool, existing);
            self.apply(pool, plan, owner, &mut writes).await?;
        }
        // Pools the inventory no longer has.
        for slices in by_pool.into_values() {
            for s in slices {
                self.delete(&s, &mut writes).await?;
            }
        }
        Ok((writes, rv))
    }

    async fn apply(
        &self,
        pool: &DesiredPool,
        plan: Plan,
        owner: &OwnerReference,
        writes: &mut Writes,
    ) -> Result<(), PublishError> {
        for s in &plan.obsolete {
            self.delete(s, writes).await?;
        }
        let n = pool.slices.len();
        for (index, slice) in pool.slices.iter().enumerate() {
            let spec = self.spec(pool, slice, plan.generation);
            match &plan.matched[index] {
                Some(existing) if !plan.rewrite_all && same_spec(&existing.spec, &spec) => {}
                Some(existing) => {
                    let mut updated = existing.clone();
                    updated.spec = spec;
                    let name = existing.metadata.name.clone().unwrap_or_default();
                    self.api
                        .call("update ResourceSlice", |c| {
                            let (name, updated) = (name.clone(), updated.clone());
                            async move {
                                Api::<ResourceSlice>::all(c)
                                    .replace(&name, &super::client::write_params(), &updated)
                                    .await
                            }
                        })
                        .await
                        .map_err(|source| PublishError::Api {
                            what: "updating a ResourceSlice",
                            source,
                        })?;
                    writes.updated += 1;
                    self.metrics.slice_write(&self.driver, "update");
                }
                None => {
                    let slice = ResourceSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(name_prefix(index, n, &self.driver, &self.node)),
                            owner_references: Some(vec![owner.clone()]),
                            ..Default::default()
                        },
                        spec,
                    };
                    self.api
                        .call("create ResourceSlice", |c| {
                            let slice = slice.clone();
                            async move {
                                Api::<ResourceSlice>::all(c)
                                    .create(&super::client::write_params(), &slice)
                                    .await
                            }
                        })
                        .await
                        .map_err(|source| PublishError::Api {
                            what: "creating a ResourceSlice",
                            source,
                        })?;
                    writes.created += 1;
                    self.metrics.slice_write(&self.driver, "create");
                }
            }
        }
        Ok(())
    }

    async fn delete(&self, s: &ResourceSlice, writes: &mut Writes) -> Result<(), PublishError> {
        let name = s.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: s.metadata.uid.clone(),
                resource_version: s.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        let result = self
            .api
            .call("delete ResourceSlice", |c| {
                let (name, dp) = (name.clone(), dp.clone());
                async move { Api::<ResourceSlice>::all(c).delete(&name, &dp).await }
            })
            .await;
        match result {
            Ok(_) => {
                writes.deleted += 1;
                self.metrics.slice_write(&self.driver, "delete");
                Ok(())
            }
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(source) => Err(PublishError::Api {
                what: "deleting a ResourceSlice",
                source,
            }),
        }
    }

    fn spec(&self, pool: &DesiredPool, slice: &DesiredSlice, generation: i64) -> ResourceSliceSpec {
        super::slices::spec(&self.driver, &self.node, pool, slice, generation)
    }

    /// Watch our slices from `rv` until something changes: ours (drift), or
    /// an input. Returns false when the inputs are gone (the driver stopped).
    async fn watch_until_change(&self, rv: &str, inputs: &mut Inputs) -> bool {
        let selector = self.selector();
        let wp = WatchParams::default().fields(&selector).timeout(290);
        let stream = self
            .api
            .call("watch ResourceSlices", |c| {
                let (wp, rv) = (wp.clone(), rv.to_owned());
                async move { Api::<ResourceSlice>::all(c).watch(&wp, &rv).await.map(|s| s.boxed()) }
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(driver = %self.driver, error = %super::client::describe(&e), "cannot watch our ResourceSlices; will list again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return true;
            }
        };
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(WatchEvent::Bookmark(_))) => continue,
                    Some(Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_))) => return true,
                    Some(Ok(WatchEvent::Error(e))) => {
                        tracing::debug!(driver = %self.driver, error = ?e, "watch ended; listing again");
                        return true;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(driver = %self.driver, error = %super::client::describe(&e), "watch failed; listing again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return true;
                    }
                    None => return true,
                },
                alive = wait_for_input(inputs) => return alive,
            }
        }
    }
}

/// Wait until an input changes; false when the inventory sender is gone.
async fn wait_for_input(inputs: &mut Inputs) -> bool {
    match &mut inputs.health {
        Some(h) => tokio::select! {
            r = inputs.inventory.changed() => r.is_ok(),
            r = h.changed() => r.is_ok() || inputs.inventory.has_changed().is_ok(),
        },
        None => inputs.inventory.changed().await.is_ok(),
    }
}

/// What to do with one pool's stored slices.
struct Plan {
    generation: i64,
    /// The stored slice at each desired index.
    matched: Vec<Option<ResourceSlice>>,
    obsolete: Vec<ResourceSlice>,
    /// The generation changed: every slice is rewritten.
    rewrite_all: bool,
}

fn plan(pool: &DesiredPool, mut existing: Vec<ResourceSlice>) -> Plan {
    let n = pool.slices.len();
    let current = existing.iter().map(|s| s.spec.pool.generation).max().unwrap_or(0);
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut matched: Vec<Option<ResourceSlice>> = vec![None; n];
    let mut obsolete = Vec::new();
    for s in existing {
        let index = s.metadata.name.as_deref().and_then(parse_index);
        match index {
            Some(i) if s.spec.pool.generation == current && i < n && matched[i].is_none() => matched[i] = Some(s),
            _ => obsolete.push(s),
        }
    }
    let new = matched.iter().filter(|m| m.is_none()).count();
    let changed = matched
        .iter()
        .zip(&pool.slices)
        .filter(|(m, slice)| {
            m.as_ref().is_some_and(|s| {
                let mut want = s.spec.clone();
                want.pool.resource_slice_count = n as i64;
                match slice {
                    DesiredSlice::Devices(d) => {
                        want.devices = (!d.is_empty()).then(|| d.clone());
                        want.shared_counters = None;
                    }
                    DesiredSlice::Counters(c) => {
                        want.devices = None;
                        want.shared_counters = Some(c.clone());
                    }
                }
                !same_spec(&s.spec, &want)
            })
        })
        .count();
    let bump = new > 0 || changed > 1;
    Plan {
        generation: if bump { current + 1 } else { current },
        matched,
        obsolete,
        rewrite_all: bump,
    }
}

/// `<index>-<driver>-<node>-`, the index in hex padded to max(5, digits of n-1).
pub fn name_prefix(index: usize, n: usize, driver: &str, node: &str) -> String {
    let width = format!("{:x}", n.saturating_sub(1)).len().max(5);
    format!("{index:0width$x}-{driver}-{node}-")
}

fn parse_index(name: &str) -> Option<usize> {
    let (index, _) = name.split_once('-')?;
    if index.len() < 5 {
        return None;
    }
    usize::from_str_radix(index, 16).ok()
}

/// Equal as far as we set them; a taint's `timeAdded`, which the server may
/// fill in, does not count.
fn same_spec(stored: &ResourceSliceSpec, wanted: &ResourceSliceSpec) -> bool {
    let normalize = |s: &ResourceSliceSpec| {
        let mut s = s.clone();
        for d in s.devices.iter_mut().flatten() {
            for t in d.taints.iter_mut().flatten() {
                t.time_added = None;
            }
        }
        serde_json::to_value(s).unwrap_or_default()
    };
    normalize(stored) == normalize(wanted)
}

#[cfg(test)]
mod tests;
