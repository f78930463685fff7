//! The example driver's decisions in plain Rust, free of WIT types, so the
//! same code runs inside the component and natively (for benchmarks).
//!
//! It simulates GPUs the way the upstream `dra-example-driver` does: a
//! configurable number of identical devices named `gpu-0`, `gpu-1`, ...,
//! prepared by handing the container environment variables (and, when
//! configured, a device node).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// The guest's configuration (the `config` table of the driver in the host config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// How many simulated devices to publish.
    #[serde(default = "default_devices")]
    pub devices: u32,
    /// Pool name; the node name when absent (as upstream drivers do).
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default = "default_model")]
    pub model: String,
    /// Memory capacity of each device, as a Kubernetes quantity.
    #[serde(default = "default_memory")]
    pub memory: String,
    /// When set, each device is also exposed as a device node
    /// `/dev/example-gpu-N` backed by this host path (e.g. `/dev/null`).
    #[serde(default)]
    pub device_node_host_path: Option<String>,
}

fn default_devices() -> u32 {
    8
}
fn default_model() -> String {
    "LATEST-GPU-MODEL".to_owned()
}
fn default_memory() -> String {
    "80Gi".to_owned()
}

/// Upper bound on simulated devices: a ResourceSlice pool is split by the host,
/// but a typo such as `devices = 100000` should be refused, not published.
pub const MAX_DEVICES: u32 = 1024;

pub const DRIVER_VERSION: &str = "1.0.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidConfig,
    InvalidClaim,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    fn config(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidConfig,
            message: message.into(),
        }
    }
    fn claim(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidClaim,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A configured driver: config plus the identity of the node it runs on.
#[derive(Debug, Clone)]
pub struct Driver {
    pub config: Config,
    pub pool: String,
    node: String,
}

/// A simulated device as published.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory: String,
    pub driver_version: String,
}

/// One allocated device of a claim.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub request: String,
    pub pool: String,
    pub device: String,
    pub share_id: Option<String>,
}

/// Opaque parameters and the requests they apply to (empty: all).
#[derive(Debug, Clone)]
pub struct OpaqueConfig {
    pub requests: Vec<String>,
    pub parameters: String,
}

#[derive(Debug, Clone)]
pub struct Claim {
    pub uid: String,
    pub allocations: Vec<Allocation>,
    /// Class configs first, then claim configs: later entries win.
    pub configs: Vec<OpaqueConfig>,
}

/// What a container gets for one prepared device.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedDevice {
    pub pool: String,
    pub device: String,
    pub share_id: Option<String>,
    pub env: Vec<(String, String)>,
    /// (container path, host path)
    pub device_node: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub devices: Vec<PreparedDevice>,
    pub state: Vec<u8>,
}

/// Opaque per-claim parameters, in the shape of the upstream example
/// driver's `GpuConfig`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeviceConfig {
    #[serde(default)]
    sharing: Option<Sharing>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Sharing {
    strategy: SharingStrategy,
    #[serde(default)]
    time_slicing: Option<TimeSlicing>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
enum SharingStrategy {
    TimeSlicing,
    SpacePartitioning,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct TimeSlicing {
    interval: TimeSliceInterval,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
enum TimeSliceInterval {
    Default,
    Short,
    Medium,
    Long,
}

/// The state blob checkpointed by the host between prepare and unprepare.
#[derive(Debug, serde::Serialize, Deserialize)]
struct State {
    version: u32,
    claim: String,
    devices: Vec<String>,
}
const STATE_VERSION: u32 = 1;

impl Driver {
    /// Parse and check the configuration.
    pub fn new(config_json: &str, node: &str) -> Result<Self, Error> {
        let text = if config_json.trim().is_empty() {
            "{}"
        } else {
            config_json
        };
        let config: Config =
            serde_json::from_str(text).map_err(|e| Error::config(format!("invalid example driver config: {e}")))?;
        if config.devices > MAX_DEVICES {
            return Err(Error::config(format!(
                "devices: {} is more than the {MAX_DEVICES} this driver simulates",
                config.devices
            )));
        }
        if let Some(path) = &config.device_node_host_path {
            if !path.starts_with("/dev/") {
                return Err(Error::config(format!(
                    "deviceNodeHostPath: {path:?} is not under /dev/"
                )));
            }
        }
        let pool = config.pool.clone().unwrap_or_else(|| node.to_owned());
        if pool.is_empty() {
            return Err(Error::config("pool: empty, and the host gave no node name"));
        }
        Ok(Self {
            config,
            pool,
            node: node.to_owned(),
        })
    }

    pub fn devices(&self) -> Vec<Device> {
        (0..self.config.devices)
            .map(|index| Device {
                name: format!("gpu-{index}"),
                index,
                uuid: self.uuid(index),
                model: self.config.model.clone(),
                memory: self.config.memory.clone(),
                driver_version: DRIVER_VERSION.to_owned(),
            })
            .collect()
    }

    /// A stable UUID-shaped identifier per (node, index), as a real GPU has.
    fn uuid(&self, index: u32) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.node.bytes().chain(index.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let lo = h.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
        format!(
            "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (h >> 32) as u32,
            (h >> 16) as u16,
            h as u16,
            (lo >> 48) as u16,
            lo & 0xffff_ffff_ffff
        )
    }

    fn device_index(&self, name: &str) -> Option<u32> {
        let index: u32 = name.strip_prefix("gpu-")?.parse().ok()?;
        (index < self.config.devices && name == format!("gpu-{index}")).then_some(index)
    }

    pub fn prepare(&self, claim: &Claim) -> Result<Prepared, Error> {
        let mut devices = Vec::with_capacity(claim.allocations.len());
        for alloc in &claim.allocations {
            if alloc.pool != self.pool {
                return Err(Error::claim(format!(
                    "device {}/{} is not in this driver's pool {:?}",
                    alloc.pool, alloc.device, self.pool
                )));
            }
            let index = self
                .device_index(&alloc.device)
                .ok_or_else(|| Error::claim(format!("device {:?} does not exist on this node", alloc.device)))?;
            let config = config_for(&claim.configs, &alloc.request)?;
            let mut env = vec![
                (format!("GPU_DEVICE_{index}"), alloc.device.clone()),
                (format!("GPU_DEVICE_{index}_RESOURCE_CLAIM"), claim.uid.clone()),
            ];
            if let Some(sharing) = &config.sharing {
                env.push((
                    format!("GPU_DEVICE_{index}_SHARING_STRATEGY"),
                    format!("{:?}", sharing.strategy),
                ));
                match (sharing.strategy, &sharing.time_slicing) {
                    (SharingStrategy::TimeSlicing, ts) => {
                        let interval = ts.as_ref().map_or(TimeSliceInterval::Default, |t| t.interval);
                        env.push((
                            format!("GPU_DEVICE_{index}_TIMESLICE_INTERVAL"),
                            format!("{interval:?}"),
                        ));
                    }
                    (SharingStrategy::SpacePartitioning, Some(_)) => {
                        return Err(Error::claim(
                            "sharing.timeSlicing: only valid with strategy TimeSlicing",
                        ));
                    }
                    (SharingStrategy::SpacePartitioning, None) => {}
                }
            }
            let device_node = self
                .config
                .device_node_host_path
                .as_ref()
                .map(|host| (format!("/dev/example-gpu-{index}"), host.clone()));
            devices.push(PreparedDevice {
                pool: alloc.pool.clone(),
                device: alloc.device.clone(),
                share_id: alloc.share_id.clone(),
                env,
                device_node,
            });
        }
        let state = State {
            version: STATE_VERSION,
            claim: claim.uid.clone(),
            devices: claim.allocations.iter().map(|a| a.device.clone()).collect(),
        };
        let state = serde_json::to_vec(&state).map_err(|e| Error {
            kind: ErrorKind::Internal,
            message: e.to_string(),
        })?;
        Ok(Prepared { devices, state })
    }

    /// Nothing to undo for simulated devices, but the state must be ours.
    pub fn unprepare(&self, claim_uid: &str, state: &[u8]) -> Result<(), Error> {
        if state.is_empty() {
            return Ok(());
        }
        let state: State =
            serde_json::from_slice(state).map_err(|e| Error::claim(format!("unreadable prepare state: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(Error::claim(format!(
                "prepare state version {} is not understood by this build",
                state.version
            )));
        }
        if state.claim != claim_uid {
            return Err(Error::claim(format!(
                "prepare state belongs to claim {}, not {claim_uid}",
                state.claim
            )));
        }
        Ok(())
    }
}

/// The effective opaque config for one request: later entries override
/// earlier ones (class configs come before claim configs).
fn config_for(configs: &[OpaqueConfig], request: &str) -> Result<DeviceConfig, Error> {
    // `request/subrequest` matches configs naming the parent request too.
    let parent = request.split('/').next().unwrap_or(request);
    let mut effective = DeviceConfig::default();
    for c in configs {
        let applies = c.requests.is_empty() || c.requests.iter().any(|r| r == request || r == parent);
        if !applies {
            continue;
        }
        let parsed: DeviceConfig = serde_json::from_str(&c.parameters)
            .map_err(|e| Error::claim(format!("invalid opaque config for request {request:?}: {e}")))?;
        if parsed.sharing.is_some() {
            effective.sharing = parsed.sharing;
        }
    }
    Ok(effective)
}

/// Attributes published for a device, in a WIT-independent form.
pub fn attributes(device: &Device) -> BTreeMap<&'static str, AttributeValue> {
    BTreeMap::from([
        ("index", AttributeValue::Int(i64::from(device.index))),
        ("uuid", AttributeValue::Text(device.uuid.clone())),
        ("model", AttributeValue::Text(device.model.clone())),
        ("driverVersion", AttributeValue::Version(device.driver_version.clone())),
    ])
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Int(i64),
    Text(String),
    Version(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(configs: Vec<OpaqueConfig>) -> Claim {
        Claim {
            uid: "uid-1".into(),
            allocations: vec![Allocation {
                request: "gpu".into(),
                pool: "node-a".into(),
                device: "gpu-3".into(),
                share_id: None,
            }],
            configs,
        }
    }

    #[test]
    fn publishes_configured_devices_with_stable_uuids() {
        let d = Driver::new(r#"{"devices": 4}"#, "node-a").unwrap();
        let devices = d.devices();
        assert_eq!(devices.len(), 4);
        assert_eq!(devices[2].name, "gpu-2");
        assert_eq!(devices, Driver::new(r#"{"devices": 4}"#, "node-a").unwrap().devices());
        assert_ne!(devices[0].uuid, devices[1].uuid);
        assert_eq!(d.pool, "node-a");
    }

    #[test]
    fn unknown_config_field_is_named() {
        let err = Driver::new(r#"{"devcies": 4}"#, "n").unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidConfig);
        assert!(err.message.contains("devcies"), "{err}");
    }

    #[test]
    fn prepare_applies_claim_config_over_class_config() {
        let d = Driver::new("{}", "node-a").unwrap();
        let p = d
            .prepare(&claim(vec![
                OpaqueConfig {
                    requests: vec![],
                    parameters: r#"{"sharing":{"strategy":"SpacePartitioning"}}"#.into(),
                },
                OpaqueConfig {
                    requests: vec!["gpu".into()],
                    parameters: r#"{"sharing":{"strategy":"TimeSlicing","timeSlicing":{"interval":"Long"}}}"#.into(),
                },
            ]))
            .unwrap();
        let env = &p.devices[0].env;
        assert!(env.contains(&("GPU_DEVICE_3".into(), "gpu-3".into())));
        assert!(env.contains(&("GPU_DEVICE_3_SHARING_STRATEGY".into(), "TimeSlicing".into())));
        assert!(env.contains(&("GPU_DEVICE_3_TIMESLICE_INTERVAL".into(), "Long".into())));
        d.unprepare("uid-1", &p.state).unwrap();
        assert_eq!(
            d.unprepare("uid-2", &p.state).unwrap_err().kind,
            ErrorKind::InvalidClaim
        );
    }

    #[test]
    fn prepare_rejects_bad_opaque_config_and_unknown_devices() {
        let d = Driver::new("{}", "node-a").unwrap();
        let err = d
            .prepare(&claim(vec![OpaqueConfig {
                requests: vec![],
                parameters: r#"{"sharing":{"strategy":"TimeSlicing","color":"red"}}"#.into(),
            }]))
            .unwrap_err();
        assert!(err.message.contains("color"), "{err}");
        let mut c = claim(vec![]);
        c.allocations[0].device = "gpu-99".into();
        assert!(d.prepare(&c).unwrap_err().message.contains("gpu-99"));
    }
}
