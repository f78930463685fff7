//! From a ResourceClaim object to the claim a guest prepares: only this
//! driver's allocated devices and opaque configs.

use crate::claim::ClaimRef;
use crate::guest::types;
use crate::policy::is_valid_share_id;
use crate::state::checkpoint::{RecordedAllocation, RecordedConfig, RecordedDevice};
use k8s_openapi::api::resource::v1::ResourceClaim;

/// Why a fetched ResourceClaim cannot be prepared.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClaimError {
    #[error("claim {namespace}/{name} got replaced: the request names UID {expected}, the API server has {found}")]
    Replaced {
        namespace: String,
        name: String,
        expected: String,
        found: String,
    },
    #[error("claim {namespace}/{name} is not allocated")]
    NotAllocated { namespace: String, name: String },
    #[error("claim {namespace}/{name}: {reason}")]
    Invalid {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// The part of a claim that belongs to one driver, in guest types.
#[derive(Debug, Clone)]
pub struct DriverClaim {
    pub claim: types::Claim,
    /// For each entry of `claim.devices`: the request names as the kubelet
    /// expects them in the answer (subrequest stripped).
    pub request_names: Vec<String>,
}

impl DriverClaim {
    /// The allocation as the checkpoint records it.
    pub fn to_recorded(&self) -> RecordedAllocation {
        RecordedAllocation {
            devices: self
                .claim
                .devices
                .iter()
                .map(|d| RecordedDevice {
                    request: d.request.clone(),
                    pool: d.pool.clone(),
                    device: d.device.clone(),
                    share_id: d.share_id.clone(),
                    consumed_capacity: d.consumed_capacity.clone(),
                    admin_access: d.admin_access,
                })
                .collect(),
            configs: self
                .claim
                .configs
                .iter()
                .map(|c| RecordedConfig {
                    source: match c.source {
                        types::ConfigSource::DeviceClass => "FromClass",
                        types::ConfigSource::ResourceClaim => "FromClaim",
                    }
                    .to_owned(),
                    requests: c.requests.clone(),
                    parameters: c.parameters.clone(),
                })
                .collect(),
        }
    }

    /// The claim as recorded at prepare time, for `claim` (a reboot when the
    /// ResourceClaim cannot be fetched). Checked as a fetched claim is.
    pub fn from_recorded(claim: &ClaimRef, recorded: &RecordedAllocation) -> Result<Self, ClaimError> {
        let invalid = |reason: String| ClaimError::Invalid {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            reason: format!("recorded allocation: {reason}"),
        };
        let mut devices = Vec::with_capacity(recorded.devices.len());
        for d in &recorded.devices {
            if let Some(share) = &d.share_id
                && !is_valid_share_id(share)
            {
                return Err(invalid(format!("share ID {share:?} is not valid")));
            }
            devices.push(types::AllocatedDevice {
                request: d.request.clone(),
                pool: d.pool.clone(),
                device: d.device.clone(),
                share_id: d.share_id.clone(),
                consumed_capacity: d.consumed_capacity.clone(),
                admin_access: d.admin_access,
            });
        }
        let mut configs = Vec::with_capacity(recorded.configs.len());
        for c in &recorded.configs {
            configs.push(types::OpaqueConfig {
                source: config_source(&c.source).ok_or_else(|| invalid(format!("config source {:?}", c.source)))?,
                requests: c.requests.clone(),
                parameters: c.parameters.clone(),
            });
        }
        Ok(DriverClaim {
            request_names: devices.iter().map(|d| request_name(&d.request)).collect(),
            claim: types::Claim {
                ref_: types::ClaimRef {
                    namespace: claim.namespace.clone(),
                    name: claim.name.clone(),
                    uid: claim.uid.clone(),
                },
                devices,
                configs,
            },
        })
    }
}

/// The request name the kubelet expects in answers: the subrequest stripped.
fn request_name(request: &str) -> String {
    request.split('/').next().unwrap_or(request).to_owned()
}

fn config_source(source: &str) -> Option<types::ConfigSource> {
    match source {
        "FromClass" => Some(types::ConfigSource::DeviceClass),
        "FromClaim" => Some(types::ConfigSource::ResourceClaim),
        _ => None,
    }
}

/// Select what `driver` must prepare from `claim`, checking that it is the
/// claim the kubelet asked for and that it is allocated.
pub fn claim_for_driver(claim: &ResourceClaim, expected: &ClaimRef, driver: &str) -> Result<DriverClaim, ClaimError> {
    let (namespace, name) = (expected.namespace.clone(), expected.name.clone());
    let found = claim.metadata.uid.clone().unwrap_or_default();
    if found != expected.uid {
        return Err(ClaimError::Replaced {
            namespace,
            name,
            expected: expected.uid.clone(),
            found,
        });
    }
    let Some(devices) = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
    else {
        return Err(ClaimError::NotAllocated { namespace, name });
    };
    let invalid = |reason: String| ClaimError::Invalid {
        namespace: namespace.clone(),
        name: name.clone(),
        reason,
    };

    let mut allocated = Vec::new();
    let mut request_names = Vec::new();
    for r in devices.results.iter().flatten().filter(|r| r.driver == driver) {
        if let Some(share) = &r.share_id
            && !is_valid_share_id(share)
        {
            return Err(invalid(format!(
                "share ID {share:?} of device {}/{} is not valid",
                r.pool, r.device
            )));
        }
        allocated.push(types::AllocatedDevice {
            request: r.request.clone(),
            pool: r.pool.clone(),
            device: r.device.clone(),
            share_id: r.share_id.clone(),
            consumed_capacity: r
                .consumed_capacity
                .iter()
                .flatten()
                .map(|(k, q)| (k.clone(), q.0.clone()))
                .collect(),
            admin_access: r.admin_access.unwrap_or(false),
        });
        request_names.push(request_name(&r.request));
    }

    // Class configs first, then claim configs, each in their listed order:
    // a guest applies them in order, so claim settings override class ones.
    let mut configs: Vec<(u8, types::OpaqueConfig)> = Vec::new();
    for c in devices.config.iter().flatten() {
        let Some(opaque) = c.opaque.as_ref().filter(|o| o.driver == driver) else {
            continue;
        };
        let source = config_source(&c.source)
            .ok_or_else(|| invalid(format!("config source {:?} is not FromClass or FromClaim", c.source)))?;
        let rank = u8::from(source == types::ConfigSource::ResourceClaim);
        let parameters =
            serde_json::to_string(&opaque.parameters.0).map_err(|e| invalid(format!("opaque parameters: {e}")))?;
        configs.push((
            rank,
            types::OpaqueConfig {
                source,
                requests: c.requests.clone().unwrap_or_default(),
                parameters,
            },
        ));
    }
    configs.sort_by_key(|(rank, _)| *rank);

    Ok(DriverClaim {
        claim: types::Claim {
            ref_: types::ClaimRef {
                namespace: expected.namespace.clone(),
                name: expected.name.clone(),
                uid: expected.uid.clone(),
            },
            devices: allocated,
            configs: configs.into_iter().map(|(_, c)| c).collect(),
        },
        request_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_json(uid: &str) -> ResourceClaim {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": { "name": "c", "namespace": "ns", "uid": uid },
            "spec": {},
            "status": { "allocation": { "devices": {
                "results": [
                    { "request": "gpu/small", "driver": "ours.example.com", "pool": "p", "device": "d0" },
                    { "request": "nic", "driver": "other.example.com", "pool": "p", "device": "n0" },
                    { "request": "gpu/small", "driver": "ours.example.com", "pool": "p", "device": "d1",
                      "shareID": "5f2c5d86-2a43-4f8b-9a3d-0c3d3c0e6f11", "consumedCapacity": { "memory": "5Gi" } }
                ],
                "config": [
                    { "source": "FromClaim", "requests": ["gpu"], "opaque": { "driver": "ours.example.com", "parameters": { "b": 2 } } },
                    { "source": "FromClass", "opaque": { "driver": "ours.example.com", "parameters": { "a": 1 } } },
                    { "source": "FromClass", "opaque": { "driver": "other.example.com", "parameters": { "x": 1 } } }
                ]
            } } }
        }))
        .unwrap()
    }

    fn r(uid: &str) -> ClaimRef {
        ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn keeps_only_this_drivers_devices_and_configs_class_first() {
        let dc = claim_for_driver(&claim_json("u1"), &r("u1"), "ours.example.com").unwrap();
        let names: Vec<_> = dc.claim.devices.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["d0", "d1"]);
        assert_eq!(dc.request_names, ["gpu", "gpu"]);
        assert_eq!(
            dc.claim.devices[1].consumed_capacity,
            vec![("memory".to_owned(), "5Gi".to_owned())]
        );
        assert_eq!(dc.claim.configs.len(), 2);
        assert_eq!(dc.claim.configs[0].source, types::ConfigSource::DeviceClass);
        assert_eq!(dc.claim.configs[0].parameters, r#"{"a":1}"#);
        assert_eq!(dc.claim.configs[1].requests, ["gpu"]);
    }

    #[test]
    fn the_recorded_allocation_gives_back_the_same_claim() {
        let dc = claim_for_driver(&claim_json("u1"), &r("u1"), "ours.example.com").unwrap();
        let again = DriverClaim::from_recorded(&r("u1"), &dc.to_recorded()).unwrap();
        assert_eq!(again.claim, dc.claim);
        assert_eq!(again.request_names, dc.request_names);
        let mut bad = dc.to_recorded();
        bad.configs[0].source = "Elsewhere".into();
        assert!(matches!(
            DriverClaim::from_recorded(&r("u1"), &bad),
            Err(ClaimError::Invalid { .. })
        ));
    }

    #[test]
    fn replaced_and_unallocated_claims_are_errors() {
        assert!(matches!(
            claim_for_driver(&claim_json("u2"), &r("u1"), "ours.example.com"),
            Err(ClaimError::Replaced { .. })
        ));
        let mut c = claim_json("u1");
        c.status = None;
        assert!(matches!(
            claim_for_driver(&c, &r("u1"), "ours.example.com"),
            Err(ClaimError::NotAllocated { .. })
        ));
    }
}
