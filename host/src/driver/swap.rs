//! Hot swap: the guest replaced when its file changes, rolled back when it
//! fails its probation, and the inventory republished when it changed.

use super::*;

/// What a driver needs to replace its guest while it runs.
#[derive(Debug)]
pub struct GuestUpdates {
    pub runtime: Arc<Runtime>,
    /// The spec the current guest was loaded with; new files load with it too.
    pub spec: GuestSpec,
    pub watcher: GuestFileWatcher,
}

impl Driver {
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
                    .set_guest_info(&self.name, &to, self.guest.contract_version());
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
                    driver = %self.name, error = %Chain(&e),
                    serving.version = %current.version, serving.digest = %current.digest,
                    "new guest refused; the current guest keeps serving"
                );
                if let Some(ev) = events {
                    ev.node_event(
                        &self.name,
                        EventType::Warning,
                        "GuestRejected",
                        "SwapGuest",
                        format!(
                            "{}; still serving {} ({})",
                            Chain(&e),
                            current.version,
                            short(&current.digest)
                        ),
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
            .set_guest_info(&self.name, &to, self.guest.contract_version());
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
            Err(e) => tracing::error!(driver = %self.name, error = %Chain(&e), "restored guest's inventory failed"),
        }
    }

    /// Make `pools` the published inventory. Returns whether it differs from
    /// the previous one (only then are ResourceSlices rewritten).
    fn set_inventory(&self, pools: Vec<model::Pool>) -> bool {
        self.health.set_inventory(&pools);
        self.inventory.send_if_modified(|current| {
            if **current == pools {
                false
            } else {
                self.owners.store(Arc::new(self.policy.ownership(&pools)));
                *current = Arc::new(pools);
                true
            }
        })
    }
}

/// The first 12 hex digits of a digest, as in log lines and events.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}
