//! Device health as `on_event` reports it (events are pushed by host event
//! sources, NVML and netlink; a driver never polls).

use crate::{DeviceHealth, HealthStatus};

impl DeviceHealth {
    /// Healthy again (devices start out healthy, with no message).
    pub fn healthy(pool: impl Into<String>, device: impl Into<String>) -> Self {
        Self {
            pool: pool.into(),
            device: device.into(),
            status: HealthStatus::Healthy,
            message: String::new(),
        }
    }

    /// Unhealthy, and why, for people reading `kubectl describe pod` (at
    /// most 1024 characters).
    pub fn unhealthy(pool: impl Into<String>, device: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pool: pool.into(),
            device: device.into(),
            status: HealthStatus::Unhealthy,
            message: message.into(),
        }
    }
}
