//! A guest's device status, as a `status.devices` entry of the claim.

use crate::wit::types;
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
    status: &types::DeviceStatus,
    now: Timestamp,
) -> AllocatedDeviceStatus {
    let conditions: Vec<Condition> = status
        .conditions
        .iter()
        .map(|c| Condition {
            type_: c.condition_type.clone(),
            status: match c.status {
                types::ConditionStatus::True => "True",
                types::ConditionStatus::False => "False",
                types::ConditionStatus::Unknown => "Unknown",
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
