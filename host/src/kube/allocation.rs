//! From a ResourceClaim object to the claim a guest prepares: only this
//! driver's allocated devices and opaque configs.

use crate::claim::ClaimRef;
use crate::model;
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
    pub claim: model::Claim,
    /// For each entry of `claim.devices`: the request names as the kubelet
    /// expects them in the answer (subrequest stripped).
    pub request_names: Vec<String>,
    /// The claim's `resource.kubernetes.io/pod-claim-name` annotation (a
    /// claim made from a template): where the device metadata is mounted.
    /// Host-side only; guests do not see it.
    pub pod_claim_name: Option<String>,
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
                        model::ConfigSource::DeviceClass => "FromClass",
                        model::ConfigSource::ResourceClaim => "FromClaim",
                    }
                    .to_owned(),
                    requests: c.requests.clone(),
                    parameters: c.parameters.clone(),
                })
                .collect(),
            pod_claim_name: self.pod_claim_name.clone(),
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
            devices.push(model::AllocatedDevice {
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
            configs.push(model::OpaqueConfig {
                source: config_source(&c.source).ok_or_else(|| invalid(format!("config source {:?}", c.source)))?,
                requests: c.requests.clone(),
                parameters: c.parameters.clone(),
            });
        }
        Ok(DriverClaim {
            request_names: devices.iter().map(|d| request_name(&d.request)).collect(),
            pod_claim_name: recorded.pod_claim_name.clone(),
            claim: model::Claim {
                reference: claim.clone(),
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

fn config_source(source: &str) -> Option<model::ConfigSource> {
    match source {
        "FromClass" => Some(model::ConfigSource::DeviceClass),
        "FromClaim" => Some(model::ConfigSource::ResourceClaim),
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
        allocated.push(model::AllocatedDevice {
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
    let mut configs: Vec<(u8, model::OpaqueConfig)> = Vec::new();
    for c in devices.config.iter().flatten() {
        let Some(opaque) = c.opaque.as_ref().filter(|o| o.driver == driver) else {
            continue;
        };
        let source = config_source(&c.source)
            .ok_or_else(|| invalid(format!("config source {:?} is not FromClass or FromClaim", c.source)))?;
        let rank = u8::from(source == model::ConfigSource::ResourceClaim);
        let parameters =
            serde_json::to_string(&opaque.parameters.0).map_err(|e| invalid(format!("opaque parameters: {e}")))?;
        configs.push((
            rank,
            model::OpaqueConfig {
                source,
                requests: c.requests.clone().unwrap_or_default(),
                parameters,
            },
        ));
    }
    configs.sort_by_key(|(rank, _)| *rank);

    Ok(DriverClaim {
        claim: model::Claim {
            reference: expected.clone(),
            devices: allocated,
            configs: configs.into_iter().map(|(_, c)| c).collect(),
        },
        request_names,
        pod_claim_name: claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::state::metadata::POD_CLAIM_NAME_ANNOTATION))
            .cloned(),
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
        assert_eq!(dc.claim.configs[0].source, model::ConfigSource::DeviceClass);
        assert_eq!(dc.claim.configs[0].parameters, r#"{"a":1}"#);
        assert_eq!(dc.claim.configs[1].requests, ["gpu"]);
    }

    #[test]
    fn the_recorded_allocation_gives_back_the_same_claim() {
        let dc = claim_for_driver(&claim_json("u1"), &r("u1"), "ours.example.com").unwrap();
        let again = DriverClaim::from_recorded(&r("u1"), &dc.to_recorded()).unwrap();
        assert_eq!(again.claim, dc.claim);
        assert_eq!(again.request_names, dc.request_names);
        assert_eq!(again.pod_claim_name, None);
        let mut bad = dc.to_recorded();
        bad.configs[0].source = "Elsewhere".into();
        assert!(matches!(
            DriverClaim::from_recorded(&r("u1"), &bad),
            Err(ClaimError::Invalid { .. })
        ));
    }

    /// A claim made from a template carries the pod's name for it, kept in
    /// the recorded allocation.
    #[test]
    fn the_pod_claim_name_annotation_is_kept() {
        let mut c = claim_json("u1");
        c.metadata.annotations = Some(
            [("resource.kubernetes.io/pod-claim-name".to_owned(), "gpus".to_owned())]
                .into_iter()
                .collect(),
        );
        let dc = claim_for_driver(&c, &r("u1"), "ours.example.com").unwrap();
        assert_eq!(dc.pod_claim_name.as_deref(), Some("gpus"));
        let again = DriverClaim::from_recorded(&r("u1"), &dc.to_recorded()).unwrap();
        assert_eq!(again.pod_claim_name.as_deref(), Some("gpus"));
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

/// Fuzzing the conversion of ResourceClaim JSON, as the API server (or a
/// claims file) sends it, into the guest's claim (see [`crate::fuzzing`]).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzzing::fuzz;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const OURS: &str = "ours.example.com";
    const UID: &str = "0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b";

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9./-]{0,20}",
            any::<String>(),
            Just(String::new()),
            Just("5f2c5d86-2a43-4f8b-9a3d-0c3d3c0e6f11".to_owned()),
        ]
    }

    /// Any JSON value, nested a little.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn driver() -> impl Strategy<Value = String> {
        prop_oneof![3 => Just(OURS.to_owned()), 1 => Just("other.example.com".to_owned()), 1 => text()]
    }

    fn result() -> impl Strategy<Value = Value> {
        (
            text(),
            driver(),
            text(),
            text(),
            proptest::option::weighted(0.3, text()),
            proptest::option::of(btree_map(text(), text(), 0..3)),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(request, driver, pool, device, share, consumed, admin)| {
                let mut r = json!({ "request": request, "driver": driver, "pool": pool, "device": device });
                if let Some(s) = share {
                    r["shareID"] = json!(s);
                }
                if let Some(c) = consumed {
                    r["consumedCapacity"] = json!(c);
                }
                if let Some(a) = admin {
                    r["adminAccess"] = json!(a);
                }
                r
            })
    }

    fn config() -> impl Strategy<Value = Value> {
        (
            prop_oneof![3 => Just("FromClass".to_owned()), 3 => Just("FromClaim".to_owned()), 1 => text()],
            proptest::option::of(vec(text(), 0..3)),
            driver(),
            any_json(),
        )
            .prop_map(|(source, requests, driver, parameters)| {
                let mut c = json!({ "source": source, "opaque": { "driver": driver, "parameters": parameters } });
                if let Some(r) = requests {
                    c["requests"] = json!(r);
                }
                c
            })
    }

    fn claim() -> impl Strategy<Value = Value> {
        (
            prop_oneof![4 => Just(UID.to_owned()), 1 => text()],
            vec(result(), 0..6),
            vec(config(), 0..4),
            proptest::bool::weighted(0.85),
        )
            .prop_map(|(uid, results, configs, allocated)| {
                let mut c = json!({
                    "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                    "metadata": { "namespace": "ns", "name": "c", "uid": uid },
                    "spec": { "devices": { "requests": [] } },
                });
                if allocated {
                    c["status"] = json!({ "allocation": { "devices": { "results": results, "config": configs } } });
                }
                c
            })
    }

    /// Replace the `n`-th value (pre-order) of `v` with `with`.
    fn replace_nth(v: &mut Value, n: &mut usize, with: &Value) -> bool {
        if *n == 0 {
            *v = with.clone();
            return true;
        }
        *n -= 1;
        match v {
            Value::Array(items) => items.iter_mut().any(|i| replace_nth(i, n, with)),
            Value::Object(fields) => fields.values_mut().any(|f| replace_nth(f, n, with)),
            _ => false,
        }
    }

    #[derive(Debug, Clone)]
    enum Input {
        /// A claim-shaped object, one of its values replaced by any JSON.
        Claim(Value, Option<(usize, Value)>),
        /// Any bytes, as a response body.
        Bytes(Vec<u8>),
    }

    /// Inputs that converted to a claim with devices (reached every check).
    static CONVERTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn check(object: &ResourceClaim) -> Result<(), TestCaseError> {
        let expected = ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: UID.into(),
        };
        let Ok(dc) = claim_for_driver(object, &expected, OURS) else {
            return Ok(());
        };
        let devices = object
            .status
            .as_ref()
            .and_then(|s| s.allocation.as_ref())
            .and_then(|a| a.devices.as_ref());
        let ours = devices
            .into_iter()
            .flat_map(|d| d.results.iter().flatten())
            .filter(|r| r.driver == OURS)
            .count();
        prop_assert_eq!(dc.claim.devices.len(), ours, "only and all of this driver's devices");
        prop_assert_eq!(dc.request_names.len(), dc.claim.devices.len());
        prop_assert!(dc.request_names.iter().all(|r| !r.contains('/')));
        prop_assert!(
            dc.claim
                .devices
                .iter()
                .all(|d| d.share_id.as_deref().is_none_or(is_valid_share_id))
        );
        let ranks: Vec<bool> = dc
            .claim
            .configs
            .iter()
            .map(|c| c.source == model::ConfigSource::ResourceClaim)
            .collect();
        prop_assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "class configs first");
        for c in &dc.claim.configs {
            prop_assert!(serde_json::from_str::<Value>(&c.parameters).is_ok());
        }
        let again = DriverClaim::from_recorded(&expected, &dc.to_recorded())
            .map_err(|e| TestCaseError::fail(format!("recorded allocation refused: {e}")))?;
        prop_assert_eq!(again.claim, dc.claim);
        prop_assert_eq!(again.request_names, dc.request_names);
        if ours > 0 {
            CONVERTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    #[test]
    fn fuzz_claim_conversion() {
        let input = prop_oneof![
            4 => (claim(), proptest::option::weighted(0.5, (0usize..64, any_json()))).prop_map(|(c, r)| Input::Claim(c, r)),
            1 => vec(any::<u8>(), 0..512).prop_map(Input::Bytes),
        ];
        fuzz("claim conversion", 1, input, |input| {
            match input {
                Input::Claim(mut v, replace) => {
                    if let Some((mut n, with)) = replace {
                        replace_nth(&mut v, &mut n, &with);
                    }
                    // The bytes the client would read, through the same deserializer.
                    let bytes = serde_json::to_vec(&v).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    if let Ok(object) = serde_json::from_slice::<ResourceClaim>(&bytes) {
                        check(&object)?;
                    }
                }
                Input::Bytes(bytes) => {
                    if let Ok(object) = serde_json::from_slice::<ResourceClaim>(&bytes) {
                        check(&object)?;
                    }
                }
            }
            Ok(())
        });
        let converted = CONVERTED.load(std::sync::atomic::Ordering::Relaxed);
        println!("fuzz claim conversion: {converted} claims converted with this driver's devices");
        assert!(converted > 0, "the inputs never reached the conversion");
    }
}
