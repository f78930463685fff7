//! The check of a prepared device's `status.devices` entry (conditions,
//! free-form data and network data, sizes and formats) and of its KEP-5304
//! device metadata (attributes, network data), which workloads read.

use super::check::is_cidr;
use super::*;

pub(super) fn check_status(s: &model::DeviceStatus) -> Result<(), (Rule, String)> {
    let bounds_err =
        |what: &str, n: usize, max: usize| (Rule::Bounds, format!("{n} {what}; at most {max} are allowed"));
    if s.conditions.len() > bounds::CONDITIONS {
        return Err(bounds_err("conditions", s.conditions.len(), bounds::CONDITIONS));
    }
    for c in &s.conditions {
        let valid_type = !c.condition_type.is_empty()
            && c.condition_type.len() <= 316
            && c.condition_type
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | '/'));
        if !valid_type {
            return Err((
                Rule::Format,
                format!("condition type {} is not valid", quoted(&c.condition_type)),
            ));
        }
        if c.message.len() > bounds::CONDITION_MESSAGE_BYTES {
            return Err((
                Rule::Bounds,
                format!("condition {} has an oversized message", c.condition_type),
            ));
        }
        // metav1.Condition: a CamelCase reason is required.
        let valid_reason = c.reason.len() <= 1024
            && c.reason.starts_with(|ch: char| ch.is_ascii_alphabetic())
            && c.reason
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | ',' | ':'))
            && !c.reason.ends_with([',', ':']);
        if !valid_reason {
            return Err((
                Rule::Format,
                format!(
                    "condition {}: reason {} is not a CamelCase word",
                    c.condition_type,
                    quoted(&c.reason)
                ),
            ));
        }
    }
    if let Some(data) = &s.data {
        if data.len() > bounds::STATUS_DATA_BYTES {
            return Err((
                Rule::Bounds,
                format!(
                    "status data is {} bytes; at most {} are allowed",
                    data.len(),
                    bounds::STATUS_DATA_BYTES
                ),
            ));
        }
        serde_json::from_str::<serde_json::Value>(data)
            .map_err(|e| (Rule::Format, format!("status data is not JSON: {e}")))?;
    }
    if let Some(n) = &s.network_data {
        check_network_data(n)?;
    }
    Ok(())
}

/// Device metadata: at most [`bounds::METADATA_ATTRIBUTES`] attributes,
/// each as a ResourceSlice would take it, and network data as in a status.
pub(super) fn check_metadata(m: &model::DeviceMetadata) -> Result<(), (Rule, String)> {
    if m.attributes.len() > bounds::METADATA_ATTRIBUTES {
        return Err((
            Rule::Bounds,
            format!(
                "{} metadata attributes; at most {} are allowed",
                m.attributes.len(),
                bounds::METADATA_ATTRIBUTES
            ),
        ));
    }
    crate::resource_rules::attributes(&m.attributes).map_err(|why| (Rule::Format, format!("metadata {why}")))?;
    if let Some(n) = &m.network_data {
        check_network_data(n)?;
    }
    Ok(())
}

/// `NetworkDeviceData`: sizes, CIDR addresses, none twice.
fn check_network_data(n: &model::NetworkData) -> Result<(), (Rule, String)> {
    if n.ips.len() > bounds::IPS {
        return Err((
            Rule::Bounds,
            format!("{} IP addresses; at most {} are allowed", n.ips.len(), bounds::IPS),
        ));
    }
    if n.interface_name.len() > bounds::INTERFACE_NAME_BYTES {
        return Err((Rule::Bounds, "network interface name is too long".into()));
    }
    if n.hardware_address.len() > bounds::HARDWARE_ADDRESS_BYTES {
        return Err((Rule::Bounds, "hardware address is too long".into()));
    }
    let mut seen = HashSet::new();
    for ip in &n.ips {
        if !is_cidr(ip) {
            return Err((
                Rule::Format,
                format!("{} is not an IP address in CIDR form", quoted(ip)),
            ));
        }
        if !seen.insert(ip) {
            return Err((Rule::Format, format!("IP address {ip} is listed twice")));
        }
    }
    Ok(())
}
