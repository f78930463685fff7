//! The example driver's decisions, over the SDK's types: the same code runs
//! inside the component and natively (its tests drive it through
//! [`Instance`](dra_driver_sdk::Instance), as the host would).
//!
//! It simulates GPUs the way the upstream `dra-example-driver` does: a
//! configurable number of identical devices named `gpu-0`, `gpu-1`, ...,
//! prepared by handing the container environment variables (and, when
//! configured, a device node). With `deviceMetadata = true` each prepared
//! device also carries its published attributes as KEP-5304 device metadata,
//! which the host writes to a file mounted into the claim's containers.

use dra_driver_sdk::{
    AttributeValue, Claim, ClaimRef, ContainerEdits, Device, DeviceMetadata, DeviceNode, Driver, Error, InitContext,
    Pool, PreparedClaim, PreparedDevice, Quantity, Result, state,
};
use serde::Deserialize;

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
    /// When set, each prepared device carries its published attributes as
    /// device metadata (KEP-5304), as a vendor's driver would. Off by
    /// default: it adds a file and a CDI spec per request to every claim.
    #[serde(default)]
    pub device_metadata: bool,
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

/// The example driver on one node.
#[derive(Debug, Clone)]
pub struct ExampleDriver {
    pub config: Config,
    pub pool: String,
    memory: Quantity,
    node: String,
}

/// Opaque per-claim parameters, in the shape of the upstream example
/// driver's `GpuConfig`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceConfig {
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
/// Its JSON form is what every build of this driver wrote: keep it readable.
#[derive(Debug, serde::Serialize, Deserialize)]
struct State {
    version: u32,
    claim: String,
    devices: Vec<String>,
}
const STATE_VERSION: u32 = 1;

impl Driver for ExampleDriver {
    type Config = Config;
    type ClaimConfig = DeviceConfig;

    fn init(ctx: &InitContext, config: Config) -> Result<Self> {
        if config.devices > MAX_DEVICES {
            return Err(Error::invalid_config(format!(
                "devices: {} is more than the {MAX_DEVICES} this driver simulates",
                config.devices
            )));
        }
        if let Some(path) = &config.device_node_host_path
            && !path.starts_with("/dev/")
        {
            return Err(Error::invalid_config(format!(
                "deviceNodeHostPath: {path:?} is not under /dev/"
            )));
        }
        let memory = Quantity::parse(&config.memory).map_err(|e| Error::invalid_config(format!("memory: {e}")))?;
        let pool = config.pool.clone().unwrap_or_else(|| ctx.node_name.clone());
        if pool.is_empty() {
            return Err(Error::invalid_config("pool: empty, and the host gave no node name"));
        }
        dra_driver_sdk::log::info(&format!("simulating {} devices in pool {pool}", config.devices));
        Ok(Self {
            config,
            pool,
            memory,
            node: ctx.node_name.clone(),
        })
    }

    fn inventory(&self) -> Result<Vec<Pool>> {
        let devices = (0..self.config.devices)
            .map(|index| {
                self.attributes(index)
                    .into_iter()
                    .fold(Device::new(format!("gpu-{index}")), |d, (name, value)| {
                        d.attribute(name, value)
                    })
                    .capacity("memory", self.memory.clone())
            })
            .collect();
        Ok(vec![Pool::new(&self.pool, devices)])
    }

    fn prepare(&self, claim: Claim<DeviceConfig>) -> Result<PreparedClaim> {
        let mut devices = Vec::with_capacity(claim.devices.len());
        for alloc in &claim.devices {
            if alloc.pool != self.pool {
                return Err(Error::invalid_claim(format!(
                    "device {}/{} is not in this driver's pool {:?}",
                    alloc.pool, alloc.device, self.pool
                )));
            }
            let index = self.device_index(&alloc.device).ok_or_else(|| {
                Error::invalid_claim(format!("device {:?} does not exist on this node", alloc.device))
            })?;
            let mut edits = ContainerEdits::default()
                .env(format!("GPU_DEVICE_{index}"), &alloc.device)
                .env(format!("GPU_DEVICE_{index}_RESOURCE_CLAIM"), &claim.claim.uid);
            if let Some(sharing) = &alloc.config.sharing {
                edits = edits.env(
                    format!("GPU_DEVICE_{index}_SHARING_STRATEGY"),
                    format!("{:?}", sharing.strategy),
                );
                match (sharing.strategy, &sharing.time_slicing) {
                    (SharingStrategy::TimeSlicing, ts) => {
                        let interval = ts.as_ref().map_or(TimeSliceInterval::Default, |t| t.interval);
                        edits = edits.env(
                            format!("GPU_DEVICE_{index}_TIMESLICE_INTERVAL"),
                            format!("{interval:?}"),
                        );
                    }
                    (SharingStrategy::SpacePartitioning, Some(_)) => {
                        return Err(Error::invalid_claim(
                            "sharing.timeSlicing: only valid with strategy TimeSlicing",
                        ));
                    }
                    (SharingStrategy::SpacePartitioning, None) => {}
                }
            }
            if let Some(host) = &self.config.device_node_host_path {
                edits = edits.device_node(DeviceNode::new(format!("/dev/example-gpu-{index}")).host_path(host));
            }
            let mut prepared = PreparedDevice::new(alloc).edits(edits);
            if self.config.device_metadata {
                let metadata = self
                    .attributes(index)
                    .into_iter()
                    .fold(DeviceMetadata::default(), |m, (name, value)| m.attribute(name, value));
                prepared = prepared.metadata(metadata);
            }
            devices.push(prepared);
        }
        let state = state::encode(&State {
            version: STATE_VERSION,
            claim: claim.claim.uid.clone(),
            devices: claim.devices.iter().map(|a| a.device.clone()).collect(),
        })?;
        Ok(PreparedClaim { devices, state })
    }

    /// Nothing to undo for simulated devices, but the state must be ours.
    fn unprepare(&self, claim: &ClaimRef, state: &[u8]) -> Result<()> {
        let Some(state) = state::decode::<State>(state)? else {
            return Ok(());
        };
        if state.version != STATE_VERSION {
            return Err(Error::invalid_claim(format!(
                "prepare state version {} is not understood by this build",
                state.version
            )));
        }
        if state.claim != claim.uid {
            return Err(Error::invalid_claim(format!(
                "prepare state belongs to claim {}, not {}",
                state.claim, claim.uid
            )));
        }
        Ok(())
    }
}

impl ExampleDriver {
    /// A device's attributes, in name order, as every earlier build
    /// published them.
    fn attributes(&self, index: u32) -> [(&'static str, AttributeValue); 4] {
        [
            ("driverVersion", AttributeValue::version(DRIVER_VERSION)),
            ("index", index.into()),
            ("model", self.config.model.as_str().into()),
            ("uuid", self.uuid(index).into()),
        ]
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use dra_driver_sdk::{AllocatedClaim, ConfigSource, ErrorKind, Instance};

    fn driver(config: &str) -> Instance<ExampleDriver> {
        Instance::start("node-a", config).unwrap()
    }

    fn claim() -> AllocatedClaim {
        AllocatedClaim::new("default", "c", "uid-1").device("gpu", "node-a", "gpu-3")
    }

    fn env(p: &PreparedClaim) -> Vec<(String, String)> {
        p.devices[0]
            .edits
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn publishes_configured_devices_with_stable_uuids() {
        let d = driver(r#"{"devices": 4}"#);
        let pools = d.inventory().unwrap();
        assert_eq!(pools[0].name, "node-a");
        let devices = &pools[0].devices;
        assert_eq!(devices.len(), 4);
        assert_eq!(devices[2].name, "gpu-2");
        assert_eq!(pools, driver(r#"{"devices": 4}"#).inventory().unwrap());
        let uuid = |i: usize| devices[i].attributes.iter().find(|a| a.name == "uuid").cloned();
        assert_ne!(uuid(0), uuid(1));
        assert_eq!(devices[0].capacity[0].value, "80Gi");
        assert!(devices[0].attributes.contains(&dra_driver_sdk::Attribute {
            name: "driverVersion".into(),
            value: AttributeValue::version("1.0.0")
        }));
    }

    #[test]
    fn config_errors_name_the_field() {
        for (config, field) in [
            (r#"{"devcies": 4}"#, "devcies"),
            (r#"{"devices": 5000}"#, "devices"),
            (r#"{"memory": "lots"}"#, "memory"),
            (r#"{"deviceNodeHostPath": "/etc/passwd"}"#, "deviceNodeHostPath"),
        ] {
            let err = Instance::<ExampleDriver>::start("n", config).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidConfig);
            assert!(err.message.contains(field), "{config}: {err}");
        }
    }

    #[test]
    fn prepare_applies_claim_config_over_class_config() {
        let d = driver("{}");
        let p = d
            .prepare(
                claim()
                    .config(
                        ConfigSource::DeviceClass,
                        &[],
                        r#"{"sharing":{"strategy":"SpacePartitioning"}}"#,
                    )
                    .config(
                        ConfigSource::ResourceClaim,
                        &["gpu"],
                        r#"{"sharing":{"strategy":"TimeSlicing","timeSlicing":{"interval":"Long"}}}"#,
                    ),
            )
            .unwrap();
        assert!(env(&p).contains(&("GPU_DEVICE_3".into(), "gpu-3".into())));
        assert!(env(&p).contains(&("GPU_DEVICE_3_SHARING_STRATEGY".into(), "TimeSlicing".into())));
        assert!(env(&p).contains(&("GPU_DEVICE_3_TIMESLICE_INTERVAL".into(), "Long".into())));
        assert_eq!(
            p.state, br#"{"version":1,"claim":"uid-1","devices":["gpu-3"]}"#,
            "the state format every earlier build wrote"
        );
        let mut r = claim().ref_;
        d.unprepare(&r, &p.state).unwrap();
        d.unprepare(&r, b"").unwrap();
        r.uid = "uid-2".into();
        assert_eq!(d.unprepare(&r, &p.state).unwrap_err().kind, ErrorKind::InvalidClaim);
    }

    #[test]
    fn prepare_rejects_bad_opaque_config_and_unknown_devices() {
        let d = driver("{}");
        let err = d
            .prepare(claim().config(
                ConfigSource::ResourceClaim,
                &[],
                r#"{"sharing":{"strategy":"TimeSlicing","color":"red"}}"#,
            ))
            .unwrap_err();
        assert!(err.message.contains("color"), "{err}");
        let unknown = AllocatedClaim::new("default", "c", "uid-1").device("gpu", "node-a", "gpu-99");
        assert!(d.prepare(unknown).unwrap_err().message.contains("gpu-99"));
        let elsewhere = AllocatedClaim::new("default", "c", "uid-1").device("gpu", "node-b", "gpu-1");
        assert!(d.prepare(elsewhere).unwrap_err().message.contains("node-b"));
    }

    #[test]
    fn device_nodes_when_configured() {
        let d = driver(r#"{"deviceNodeHostPath": "/dev/null"}"#);
        let p = d.prepare(claim()).unwrap();
        let node = &p.devices[0].edits.device_nodes[0];
        assert_eq!(node.path, "/dev/example-gpu-3");
        assert_eq!(node.host_path.as_deref(), Some("/dev/null"));
        assert_eq!(node.permissions.as_deref(), Some("rw"));
    }

    /// Device metadata, when configured: the device's published attributes.
    #[test]
    fn device_metadata_when_configured_is_the_published_attributes() {
        let p = driver("{}").prepare(claim()).unwrap();
        assert_eq!(p.devices[0].metadata, None, "off by default");
        let d = driver(r#"{"deviceMetadata": true}"#);
        let p = d.prepare(claim()).unwrap();
        let metadata = p.devices[0].metadata.as_ref().expect("metadata");
        let published = d.inventory().unwrap()[0].devices[3].attributes.clone();
        assert_eq!(metadata.attributes, published);
        assert_eq!(metadata.network_data, None);
    }
}
