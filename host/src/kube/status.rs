//! A guest's device status, as a `status.devices` entry of the claim.

use crate::model;
use crate::state::checkpoint::{RecordedCondition, RecordedDeviceStatus, RecordedNetworkData};
use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, NetworkDeviceData};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;

/// The entry for one prepared device. `now` stamps each condition's
/// `lastTransitionTime` (kept from the stored entry when unchanged, see
/// `api::merge`). The policy has already checked sizes and formats.
pub fn entry(
    driver: &str,
    pool: &str,
    device: &str,
    share_id: Option<&str>,
    status: &model::DeviceStatus,
    now: Timestamp,
) -> AllocatedDeviceStatus {
    let conditions: Vec<Condition> = status
        .conditions
        .iter()
        .map(|c| Condition {
            type_: c.condition_type.clone(),
            status: match c.status {
                model::ConditionStatus::True => "True",
                model::ConditionStatus::False => "False",
                model::ConditionStatus::Unknown => "Unknown",
            }
            .to_owned(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: Time(now),
            observed_generation: None,
        })
        .collect();
    AllocatedDeviceStatus {
        driver: driver.to_owned(),
        pool: pool.to_owned(),
        device: device.to_owned(),
        share_id: share_id.map(str::to_owned),
        conditions: (!conditions.is_empty()).then_some(conditions),
        data: status
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .map(RawExtension),
        network_data: status.network_data.as_ref().map(|n| NetworkDeviceData {
            interface_name: (!n.interface_name.is_empty()).then(|| n.interface_name.clone()),
            ips: (!n.ips.is_empty()).then(|| n.ips.clone()),
            hardware_address: (!n.hardware_address.is_empty()).then(|| n.hardware_address.clone()),
        }),
    }
}

/// What the checkpoint records of an entry (its own type, the same JSON).
impl From<&AllocatedDeviceStatus> for RecordedDeviceStatus {
    fn from(s: &AllocatedDeviceStatus) -> Self {
        Self {
            conditions: s.conditions.as_ref().map(|cs| {
                cs.iter()
                    .map(|c| RecordedCondition {
                        last_transition_time: c.last_transition_time.0.strftime(TIME_FORMAT).to_string(),
                        message: c.message.clone(),
                        observed_generation: c.observed_generation,
                        reason: c.reason.clone(),
                        status: c.status.clone(),
                        type_: c.type_.clone(),
                    })
                    .collect()
            }),
            data: s.data.as_ref().map(|d| d.0.clone()),
            device: s.device.clone(),
            driver: s.driver.clone(),
            network_data: s.network_data.as_ref().map(|n| RecordedNetworkData {
                hardware_address: n.hardware_address.clone(),
                interface_name: n.interface_name.clone(),
                ips: n.ips.clone(),
            }),
            pool: s.pool.clone(),
            share_id: s.share_id.clone(),
        }
    }
}

/// A recorded entry, to be written to the API server again.
impl From<&RecordedDeviceStatus> for AllocatedDeviceStatus {
    fn from(s: &RecordedDeviceStatus) -> Self {
        Self {
            conditions: s.conditions.as_ref().map(|cs| {
                cs.iter()
                    .map(|c| Condition {
                        // Written by this host in this format; a time that
                        // does not read (never seen) is re-stamped.
                        last_transition_time: Time(c.last_transition_time.parse().unwrap_or_else(|_| Timestamp::now())),
                        message: c.message.clone(),
                        observed_generation: c.observed_generation,
                        reason: c.reason.clone(),
                        status: c.status.clone(),
                        type_: c.type_.clone(),
                    })
                    .collect()
            }),
            data: s.data.clone().map(RawExtension),
            device: s.device.clone(),
            driver: s.driver.clone(),
            network_data: s.network_data.as_ref().map(|n| NetworkDeviceData {
                hardware_address: n.hardware_address.clone(),
                interface_name: n.interface_name.clone(),
                ips: n.ips.clone(),
            }),
            pool: s.pool.clone(),
            share_id: s.share_id.clone(),
        }
    }
}

/// How the API server (and k8s-openapi) write a `meta/v1.Time`.
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_checkpoints_own_type() {
        let status = model::DeviceStatus {
            conditions: vec![model::Condition {
                condition_type: "Ready".into(),
                status: model::ConditionStatus::True,
                reason: "Configured".into(),
                message: "up".into(),
            }],
            data: Some(r#"{"speed":"fast"}"#.into()),
            network_data: Some(model::NetworkData {
                interface_name: "net1".into(),
                ips: vec!["192.0.2.5/24".into()],
                hardware_address: String::new(),
            }),
        };
        let now: Timestamp = "2026-12-06T04:25:00Z".parse().unwrap();
        let entry = entry("d", "p", "dev", Some("s"), &status, now);
        let recorded = RecordedDeviceStatus::from(&entry);
        assert_eq!(
            serde_json::to_value(&recorded).unwrap(),
            serde_json::to_value(&entry).unwrap()
        );
        assert_eq!(AllocatedDeviceStatus::from(&recorded), entry);
    }
}
