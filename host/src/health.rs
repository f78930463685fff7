//! The current health of one driver's devices, and its fan-out to every open
//! kubelet health stream.
//!
//! Devices enter as Healthy when the guest's inventory lists them. Changes
//! come only from events (guest `on-event`); nothing here asks hardware
//! anything. Each change produces a new snapshot; streams wake on it and send
//! the complete list, as the kubelet's API asks.

use crate::metrics::Metrics;
use crate::model;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The kubelet keeps at most this many characters of a message (a bound in
/// bytes, which is no more characters).
pub const MAX_MESSAGE: usize = crate::guest_text::MESSAGE_BYTES;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Healthy,
    Unhealthy,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "Healthy",
            Status::Unhealthy => "Unhealthy",
            Status::Unknown => "Unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceHealth {
    pub pool: String,
    pub device: String,
    pub status: Status,
    pub message: String,
    /// Unix seconds when the host learned this status.
    pub updated: i64,
}

/// A complete list, sorted by pool and device.
pub type Snapshot = Arc<Vec<DeviceHealth>>;

#[derive(Debug)]
pub struct Health {
    driver: String,
    devices: Mutex<BTreeMap<(String, String), DeviceHealth>>,
    tx: watch::Sender<Snapshot>,
    metrics: Arc<Metrics>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A guest's health message as the kubelet and the log get it: cut to what
/// the kubelet keeps, control characters escaped.
fn bounded(message: &str) -> String {
    crate::guest_text::bounded(message, MAX_MESSAGE)
}

impl Health {
    pub fn new(driver: &str, metrics: Arc<Metrics>) -> Self {
        let (tx, _) = watch::channel(Arc::new(Vec::new()));
        Self {
            driver: driver.to_owned(),
            devices: Mutex::new(BTreeMap::new()),
            tx,
            metrics,
        }
    }

    /// Track exactly the devices of `pools`: new ones start Healthy, ones no
    /// longer listed are dropped, the others keep their state.
    pub fn set_inventory(&self, pools: &[model::Pool]) {
        let mut devices = self.lock();
        let wanted: BTreeMap<(String, String), ()> = pools
            .iter()
            .flat_map(|p| p.devices.iter().map(move |d| ((p.name.clone(), d.name.clone()), ())))
            .collect();
        let before = devices.len();
        devices.retain(|k, _| wanted.contains_key(k));
        let mut changed = devices.len() != before;
        for (pool, device) in wanted.into_keys() {
            devices.entry((pool.clone(), device.clone())).or_insert_with(|| {
                changed = true;
                DeviceHealth {
                    pool,
                    device,
                    status: Status::Healthy,
                    message: String::new(),
                    updated: now(),
                }
            });
        }
        if changed {
            self.publish(&devices);
        }
    }

    /// Apply health reported by the guest. Devices it does not publish are
    /// ignored (a guest may not invent devices). Returns how many changed.
    pub fn apply(&self, reports: &[model::DeviceHealth]) -> usize {
        let mut devices = self.lock();
        let mut changed = 0;
        for r in reports {
            let Some(current) = devices.get_mut(&(r.pool.clone(), r.device.clone())) else {
                tracing::warn!(
                    driver = %self.driver,
                    pool = %crate::guest_text::quoted(&r.pool),
                    device = %crate::guest_text::quoted(&r.device),
                    "guest reported health of a device it does not publish; ignored"
                );
                continue;
            };
            let status = match r.status {
                model::HealthStatus::Healthy => Status::Healthy,
                model::HealthStatus::Unhealthy => Status::Unhealthy,
                model::HealthStatus::Unknown => Status::Unknown,
            };
            let message = bounded(&r.message);
            if current.status == status && current.message == message {
                continue;
            }
            tracing::warn!(
                driver = %self.driver,
                pool = %crate::guest_text::quoted(&r.pool),
                device = %crate::guest_text::quoted(&r.device),
                from = current.status.as_str(), to = status.as_str(), message = %message,
                "device health changed"
            );
            current.status = status;
            current.message = message;
            current.updated = now();
            self.metrics.health_change(&self.driver, status.as_str());
            changed += 1;
        }
        if changed > 0 {
            self.publish(&devices);
        }
        changed
    }

    /// The current snapshot and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    fn publish(&self, devices: &BTreeMap<(String, String), DeviceHealth>) {
        self.tx.send_replace(Arc::new(devices.values().cloned().collect()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), DeviceHealth>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(devices: &[&str]) -> model::Pool {
        model::Pool {
            name: "p".into(),
            devices: devices
                .iter()
                .map(|d| model::Device {
                    name: (*d).into(),
                    attributes: vec![],
                    capacity: vec![],
                    allow_multiple_allocations: false,
                    taints: vec![],
                    ..Default::default()
                })
                .collect(),
            shared_counters: vec![],
        }
    }

    fn report(device: &str, status: model::HealthStatus, message: &str) -> model::DeviceHealth {
        model::DeviceHealth {
            pool: "p".into(),
            device: device.into(),
            status,
            message: message.into(),
        }
    }

    #[test]
    fn inventory_starts_healthy_and_only_changes_publish() {
        let h = Health::new("d", Metrics::new());
        let mut rx = h.subscribe();
        h.set_inventory(&[pool(&["a", "b"])]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            rx.borrow_and_update()
                .iter()
                .filter(|d| d.status == Status::Healthy)
                .count(),
            2
        );

        assert_eq!(h.apply(&[report("a", model::HealthStatus::Unhealthy, "Xid 79")]), 1);
        assert_eq!(
            h.apply(&[report("a", model::HealthStatus::Unhealthy, "Xid 79")]),
            0,
            "no change, no publish"
        );
        assert_eq!(h.apply(&[report("ghost", model::HealthStatus::Unhealthy, "x")]), 0);
        let snap = rx.borrow_and_update().clone();
        assert_eq!(snap[0].status, Status::Unhealthy);
        assert_eq!(snap[0].message, "Xid 79");
        assert!(!rx.has_changed().unwrap());

        // A device leaving the inventory leaves the list.
        h.set_inventory(&[pool(&["a"])]);
        assert_eq!(h.snapshot().len(), 1);
        assert_eq!(
            h.snapshot()[0].status,
            Status::Unhealthy,
            "state kept across inventory updates"
        );
    }

    #[test]
    fn long_messages_are_cut_to_the_kubelet_limit() {
        let h = Health::new("d", Metrics::new());
        h.set_inventory(&[pool(&["a"])]);
        h.apply(&[report("a", model::HealthStatus::Unhealthy, &"é\n".repeat(2000))]);
        let m = &h.snapshot()[0].message;
        assert!(m.len() <= MAX_MESSAGE, "{}", m.len());
        assert!(m.starts_with("é\\né") && m.ends_with("bytes cut]"), "{m}");
    }
}
