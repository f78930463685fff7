//! Claims as the host hands them over, and as a driver's `prepare` sees
//! them: each allocated device with the opaque parameters that apply to it,
//! merged and deserialized into the driver's own type.

use crate::{AllocatedClaim, AllocatedDevice, ClaimRef, ConfigSource, Error, OpaqueConfig, Quantity, Result};
use serde::Deserialize;
use serde::de::value::UnitDeserializer;
use serde::de::{DeserializeOwned, IgnoredAny};
use std::any::TypeId;
use std::fmt;

impl fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// Identifies one share of a device that allows multiple allocations (a
/// UUID the scheduler chose; the host has checked its form).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShareId(String);

impl ShareId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A claim as the host sends it to `prepare` (only this driver's devices
/// and opaque configs, class configs first). The SDK resolves it into a
/// [`Claim`]; a test builds one to drive an [`Instance`](crate::Instance)
/// the way the host would:
///
/// ```
/// use dra_driver_sdk::{AllocatedClaim, ConfigSource};
/// let claim = AllocatedClaim::new("default", "my-claim", "uid-1")
///     .device("gpu", "node-a", "gpu-0")
///     .config(ConfigSource::ResourceClaim, &["gpu"], r#"{"sharing": "TimeSlicing"}"#);
/// assert_eq!(claim.devices[0].device, "gpu-0");
/// ```
impl AllocatedClaim {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            ref_: ClaimRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: uid.to_owned(),
            },
            devices: Vec::new(),
            configs: Vec::new(),
        }
    }

    /// Add an allocated device (whole, not a share).
    pub fn device(self, request: &str, pool: &str, device: &str) -> Self {
        self.allocate(request, pool, device, None, &[])
    }

    /// Add a share of a device, with the capacity it consumes.
    pub fn share(self, request: &str, pool: &str, device: &str, share_id: &str, consumed: &[(&str, &str)]) -> Self {
        self.allocate(request, pool, device, Some(share_id), consumed)
    }

    fn allocate(
        mut self,
        request: &str,
        pool: &str,
        device: &str,
        share_id: Option<&str>,
        consumed: &[(&str, &str)],
    ) -> Self {
        self.devices.push(AllocatedDevice {
            request: request.to_owned(),
            pool: pool.to_owned(),
            device: device.to_owned(),
            share_id: share_id.map(str::to_owned),
            consumed_capacity: consumed
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            admin_access: false,
        });
        self
    }

    /// Add an opaque config; `requests` empty means all requests.
    pub fn config(mut self, source: ConfigSource, requests: &[&str], parameters: &str) -> Self {
        self.configs.push(OpaqueConfig {
            source,
            requests: requests.iter().map(|r| (*r).to_owned()).collect(),
            parameters: parameters.to_owned(),
        });
        self
    }

    /// Resolve every device's opaque parameters into `C` (what happens
    /// before [`Driver::prepare`](crate::Driver::prepare) is called).
    pub fn resolve<C: DeserializeOwned + 'static>(self) -> Result<Claim<C>> {
        let configs = self.configs;
        let devices = self
            .devices
            .into_iter()
            .map(|d| {
                let config = parameters_for(&configs, &d.request)?;
                let consumed_capacity = d
                    .consumed_capacity
                    .into_iter()
                    .map(|(name, q)| (name, Quantity::checked_by_api_server(q)))
                    .collect();
                Ok(Allocation {
                    request: d.request,
                    pool: d.pool,
                    device: d.device,
                    share_id: d.share_id.map(ShareId),
                    consumed_capacity,
                    admin_access: d.admin_access,
                    config,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Claim {
            claim: self.ref_,
            devices,
        })
    }
}

/// A claim to prepare: the devices allocated to it for this driver, each
/// with its opaque parameters already merged and deserialized into `C`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim<C> {
    pub claim: ClaimRef,
    pub devices: Vec<Allocation<C>>,
}

/// One allocated device of a [`Claim`].
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation<C> {
    /// `request` or `request/subrequest`.
    pub request: String,
    pub pool: String,
    pub device: String,
    /// Set when the device allows multiple allocations: this share.
    pub share_id: Option<ShareId>,
    /// What a share consumes: (capacity name, amount).
    pub consumed_capacity: Vec<(String, Quantity)>,
    pub admin_access: bool,
    /// The opaque parameters for this device's request (see
    /// [`Driver::ClaimConfig`](crate::Driver::ClaimConfig)).
    pub config: C,
}

impl<C> Allocation<C> {
    /// What this share consumes of the capacity `name`.
    pub fn consumed(&self, name: &str) -> Option<&Quantity> {
        self.consumed_capacity.iter().find(|(n, _)| n == name).map(|(_, q)| q)
    }
}

/// The parameters of a driver that takes none: any key in an opaque config
/// is an error that names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParameters {}

/// The merged parameters for `request`, deserialized.
///
/// Configs apply when they name no request, the request itself, or (for
/// `request/subrequest`) its parent. They merge key by key in order, so a
/// claim's config overrides its class's; a `null` value sets nothing. With
/// no config at all the parameters are `{}`, so a type whose fields all have
/// serde defaults gets its defaults.
fn parameters_for<C: DeserializeOwned + 'static>(configs: &[OpaqueConfig], request: &str) -> Result<C> {
    if TypeId::of::<C>() == TypeId::of::<IgnoredAny>() {
        // A driver that ignores its parameters does not carry the code that
        // reads them: the comparison is decided when this is compiled.
        return C::deserialize(UnitDeserializer::<serde::de::value::Error>::new())
            .map_err(|e| Error::internal(e.to_string()));
    }
    let parent = request.split('/').next().unwrap_or(request);
    let mut merged: Vec<(&str, &str)> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        if !(c.requests.is_empty() || c.requests.iter().any(|r| r == request || r == parent)) {
            continue;
        }
        let members = members(&c.parameters).ok_or_else(|| {
            let from = match c.source {
                ConfigSource::DeviceClass => "the DeviceClass",
                ConfigSource::ResourceClaim => "the claim",
            };
            Error::invalid_claim(format!(
                "opaque parameters for request {request:?} from {from} (config {i}) are not a JSON object"
            ))
        })?;
        for (key, value) in members {
            if value == "null" {
                continue;
            }
            match merged.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => merged.push((key, value)),
            }
        }
    }
    let mut text = String::from("{");
    for (i, (key, value)) in merged.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(key);
        text.push(':');
        text.push_str(value);
    }
    text.push('}');
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid_claim(format!("opaque parameters for request {request:?}: {e}")))
}

/// The members of the JSON object `text`: each key as written (quotes
/// included) and its value's text. `None` when `text` is not an object.
///
/// Values are only delimited here; serde checks them when the merged object
/// is deserialized. (The host hands over parameters as serde_json wrote
/// them; a scanner instead of a JSON tree keeps every guest smaller.)
fn members(text: &str) -> Option<Vec<(&str, &str)>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(out);
    }
    loop {
        let key_start = i;
        i = skip_string(b, i)?;
        let key = text.get(key_start..i)?;
        i = skip_ws(b, i);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(b, i + 1);
        i = skip_value(b, value_start)?;
        let mut value_end = i;
        while value_end > value_start && b[value_end - 1].is_ascii_whitespace() {
            value_end -= 1;
        }
        if value_end == value_start {
            return None;
        }
        out.push((key, text.get(value_start..value_end)?));
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return (skip_ws(b, i + 1) == b.len()).then_some(out),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// Past the JSON string starting at `i`.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    loop {
        match b.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// To the `,` or `}` that ends the value starting at `i`.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match b.get(i)? {
            b'"' => i = skip_string(b, i)?,
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' if depth == 0 => return Some(i),
            b'}' | b']' => {
                depth -= 1;
                i += 1;
            }
            b',' if depth == 0 => return Some(i),
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Params {
        #[serde(default)]
        sharing: Option<String>,
        #[serde(default)]
        memory_limit: Option<Quantity>,
    }

    fn claim() -> AllocatedClaim {
        AllocatedClaim::new("ns", "c", "uid-1")
            .device("gpu/small", "node-a", "gpu-0")
            .device("nic", "node-a", "eth1")
    }

    #[test]
    fn claim_configs_override_class_configs_key_by_key() {
        let c: Claim<Params> = claim()
            .config(
                ConfigSource::DeviceClass,
                &[],
                r#"{"sharing":"TimeSlicing","memoryLimit":"8Gi"}"#,
            )
            .config(
                ConfigSource::ResourceClaim,
                &["gpu"],
                r#"{"sharing":"MPS","memoryLimit":null}"#,
            )
            .resolve()
            .unwrap();
        assert_eq!(
            c.devices[0].config,
            Params {
                sharing: Some("MPS".into()),
                memory_limit: Some(Quantity::parse("8Gi").unwrap()),
            },
            "the parent request's config applies to its subrequest; null sets nothing"
        );
        assert_eq!(c.devices[1].config.sharing.as_deref(), Some("TimeSlicing"));
    }

    #[test]
    fn no_config_gives_the_defaults() {
        let c: Claim<Params> = claim().resolve().unwrap();
        assert_eq!(c.devices[0].config, Params::default());
        assert_eq!(c.claim.uid, "uid-1");
        assert_eq!(c.devices[0].request, "gpu/small");
    }

    #[test]
    fn errors_name_the_request_and_the_field() {
        let e = claim()
            .config(ConfigSource::ResourceClaim, &["nic"], r#"{"sharng":"x"}"#)
            .resolve::<Params>()
            .unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::InvalidClaim);
        assert!(e.message.contains("\"nic\"") && e.message.contains("sharng"), "{e}");
        let e = claim()
            .config(ConfigSource::DeviceClass, &[], "[1, 2]")
            .resolve::<Params>()
            .unwrap_err();
        assert!(
            e.message.contains("not a JSON object") && e.message.contains("the DeviceClass"),
            "{e}"
        );
        let e = claim()
            .config(ConfigSource::DeviceClass, &[], r#"{"memoryLimit":"lots"}"#)
            .resolve::<Params>()
            .unwrap_err();
        assert!(e.message.contains("lots"), "{e}");
        let e = claim()
            .config(ConfigSource::DeviceClass, &[], r#"{"anything":1}"#)
            .resolve::<NoParameters>()
            .unwrap_err();
        assert!(e.message.contains("anything"), "{e}");
    }

    #[test]
    fn members_of_objects_and_what_is_not_one() {
        assert_eq!(members("{}"), Some(vec![]));
        assert_eq!(
            members(r#" { "a" : 1 , "b\"c":{"x":[1,{"y":"}"}]},"d":"q,}" } "#),
            Some(vec![
                ("\"a\"", "1"),
                ("\"b\\\"c\"", r#"{"x":[1,{"y":"}"}]}"#),
                ("\"d\"", "\"q,}\"")
            ])
        );
        for bad in [
            "",
            "[1]",
            "1",
            "\"s\"",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}x",
            "{\"a\":1} 2",
            "{a:1}",
        ] {
            assert_eq!(members(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn shares_carry_id_and_consumed_capacity() {
        let c: Claim<NoParameters> = AllocatedClaim::new("ns", "c", "u")
            .share(
                "nic",
                "p",
                "eth1",
                "5f2c5d86-2a43-4f8b-9a3d-0c3d3c0e6f11",
                &[("bandwidth", "250M")],
            )
            .resolve()
            .unwrap();
        let a = &c.devices[0];
        assert_eq!(
            a.share_id.as_ref().unwrap().as_str(),
            "5f2c5d86-2a43-4f8b-9a3d-0c3d3c0e6f11"
        );
        assert_eq!(a.consumed("bandwidth").map(Quantity::to_u64), Some(Ok(250_000_000)));
        let c: Claim<NoParameters> = AllocatedClaim::new("ns", "c", "u")
            .share("nic", "p", "eth1", "s", &[("bandwidth", "fast")])
            .resolve()
            .unwrap();
        assert_eq!(
            c.devices[0].consumed("bandwidth").unwrap().to_u64(),
            Err(crate::QuantityError::Invalid("fast".into())),
            "checked when read"
        );
    }
}
