//! After a reboot: claims prepared in an earlier boot describe device
//! state that is gone; they are prepared again before the kubelet can call.

use super::*;

/// What [`Driver::prepare_after_reboot`] did.
#[derive(Debug, Default)]
pub struct RebootReport {
    /// Claims prepared in an earlier boot.
    pub total: usize,
    pub reprepared: usize,
    /// Those that failed, with the error.
    pub failed: Vec<(ClaimRef, String)>,
}

impl Driver {
    /// Whether `record` was prepared in an earlier boot of this node.
    pub(super) fn before_this_boot(&self, record: &ClaimRecord) -> bool {
        self.is_earlier_boot(record.boot_id.as_deref())
    }

    /// Whether a record written in boot `then` is from an earlier boot.
    pub(super) fn is_earlier_boot(&self, then: Option<&str>) -> bool {
        matches!((then, self.boot_id.as_deref()), (Some(then), Some(now)) if then != now)
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
            let result = self.prepare_one(&c, None).instrument(span.clone()).await;
            self.metrics.claim_reprepared(&self.name, result.is_ok());
            span.in_scope(|| match &result {
                Ok(devices) if *devices != record.devices => tracing::warn!(
                    before = ?record.devices, now = ?devices,
                    "prepared again, but the guest answered other devices or CDI IDs than before the reboot; the kubelet keeps the earlier answer"
                ),
                Ok(_) => tracing::info!("claim prepared again after the reboot"),
                Err(e) => tracing::error!(error = %Chain(e), "claim could not be prepared again after the reboot; its next NodePrepareResources tries again"),
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
                            format!("claim {c} could not be prepared again after the reboot: {}", Chain(&e)),
                        );
                    }
                    self.claim_failed(&c, "NodePrepareResources", "PrepareFailed", &e);
                    report.failed.push((c, chain(&e)));
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
}
