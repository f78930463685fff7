//! The GPU driver's decisions, over the SDK's types and its `nvml` import.

use dra_driver_sdk::nvml::{self, DriverFile, DriverFileKind, GpuInfo};
use dra_driver_sdk::{
    AttributeValue, Claim, ClaimRef, ContainerEdits, Device, DeviceHealth, DeviceNode, Driver, Error, Event,
    GpuEventKind, InitContext, Mount, Pool, PreparedClaim, PreparedDevice, Quantity, RequestPolicy, Result, state,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What the node has: from NVML at `init`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub driver_version: String,
    pub cuda_driver_version: (u32, u32),
    pub gpus: Vec<GpuInfo>,
    /// Empty unless the driver mounts the user-space driver itself.
    pub files: Vec<DriverFile>,
}

/// The driver's configuration (`[drivers.config]` in the host config).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Publish GPUs as shareable by memory (consumable capacity).
    #[serde(default)]
    pub sharing: Option<SharingConfig>,
    /// How containers get the driver's user-space files.
    #[serde(default)]
    pub cdi: CdiMode,
    /// Xids treated as application errors on top of NVIDIA's list.
    #[serde(default)]
    pub ignored_xids: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SharingConfig {
    /// Memory a share gets when its request names none.
    #[serde(default = "default_share")]
    pub default_memory: String,
    /// Smallest share, and the step between share sizes.
    #[serde(default = "default_share")]
    pub memory_step: String,
}

fn default_share() -> String {
    "5Gi".to_owned()
}

/// How a container gets the NVIDIA user-space driver.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "mode")]
pub enum CdiMode {
    /// Bind-mount the libraries and tools the host found under the driver root.
    #[default]
    Mounts,
    /// Reference the device in a CDI spec the operator generated
    /// (`nvidia-ctk cdi generate`), whose kind is `kind`.
    BaseSpec { kind: String },
}

/// Xids NVIDIA's device plugin and DRA driver treat as application errors:
/// the application's fault, not the GPU's.
pub const APPLICATION_XIDS: &[u64] = &[13, 31, 43, 45, 68, 109];

/// What common Xids mean (from NVIDIA's Xid catalogue).
pub fn xid_meaning(xid: u64) -> &'static str {
    match xid {
        8 => "GPU stopped processing",
        13 => "graphics engine exception",
        31 => "GPU memory page fault",
        32 => "invalid or corrupted push buffer stream",
        43 => "GPU stopped processing",
        45 => "preemptive cleanup, due to previous errors",
        48 => "double-bit ECC error",
        61 => "internal micro-controller breakpoint/warning",
        62 => "internal micro-controller halt",
        63 => "ECC page retirement or row remapping recording event",
        64 => "ECC page retirement or row remapper recording failure",
        68 => "video processor exception",
        74 => "NVLink error",
        79 => "GPU has fallen off the bus",
        92 => "high single-bit ECC error rate",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        109 => "context switch timeout",
        119 => "GSP RPC timeout",
        120 => "GSP error",
        _ => "see NVIDIA's Xid catalogue",
    }
}

/// Per-claim parameters (`config[].opaque.parameters`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimConfig {
    #[serde(default)]
    sharing: Option<ClaimSharing>,
    /// Memory the workload may use on the GPU (enforced by an MPS daemon).
    #[serde(default)]
    memory_limit: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ClaimSharing {
    strategy: Strategy,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
enum Strategy {
    Exclusive,
    TimeSlicing,
    #[serde(rename = "MPS")]
    Mps,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    claim: String,
    devices: Vec<StateDevice>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateDevice {
    device: String,
    uuid: String,
    #[serde(default)]
    share: Option<String>,
}

const STATE_VERSION: u32 = 1;

/// The GPU driver on one node.
#[derive(Debug, Clone)]
pub struct GpuDriver {
    pub config: Config,
    pub node: Node,
    /// The pool: the node's name.
    pub pool: String,
    ignored: BTreeSet<u64>,
    share_step: Option<(u64, u64)>,
}

pub fn device_name(index: u32) -> String {
    format!("gpu-{index}")
}

/// NVIDIA's `580.159.04` as semantic version `580.159.4`.
fn semver(v: &str) -> String {
    let mut parts: Vec<String> = v
        .split('.')
        .map(|p| p.parse::<u64>().map(|n| n.to_string()).unwrap_or_else(|_| p.to_owned()))
        .collect();
    while parts.len() < 3 {
        parts.push("0".into());
    }
    parts.join(".")
}

/// A whole, positive number of bytes from a quantity field.
fn bytes(field: &str, q: &str) -> Result<u64> {
    Quantity::parse(q)
        .and_then(|q| q.to_u64())
        .map_err(|e| Error::invalid_config(format!("{field}: {e}")))
}

/// Check the parts of the config NVML does not come into: (default, step)
/// of shares when the GPUs are shared.
fn check(config: &Config) -> Result<Option<(u64, u64)>> {
    let share_step = match &config.sharing {
        Some(s) => {
            let default = bytes("sharing.defaultMemory", &s.default_memory)?;
            let step = bytes("sharing.memoryStep", &s.memory_step)?;
            if step == 0 {
                return Err(Error::invalid_config("sharing.memoryStep: must be positive"));
            }
            // Shares start at one step; the API server accepts a default
            // only if it is that plus whole steps.
            if default < step || !default.is_multiple_of(step) {
                return Err(Error::invalid_config(format!(
                    "sharing.defaultMemory: {} is not a whole number of sharing.memoryStep ({})",
                    s.default_memory, s.memory_step
                )));
            }
            Some((default, step))
        }
        None => None,
    };
    if let CdiMode::BaseSpec { kind } = &config.cdi
        && !kind.contains('/')
    {
        return Err(Error::invalid_config(format!("cdi.kind: {kind:?} is not vendor/class")));
    }
    Ok(share_step)
}

/// Everything NVML says about the node.
fn discover(want_files: bool) -> Result<Node> {
    Ok(Node {
        driver_version: nvml::driver_version()?,
        cuda_driver_version: nvml::cuda_driver_version()?,
        gpus: nvml::gpus()?,
        files: if want_files { nvml::driver_files()? } else { Vec::new() },
    })
}

impl Driver for GpuDriver {
    type Config = Config;
    type ClaimConfig = ClaimConfig;

    fn init(ctx: &InitContext, config: Config) -> Result<Self> {
        // Config errors come before anything is asked of NVML.
        check(&config)?;
        let node = discover(config.cdi == CdiMode::Mounts)?;
        let driver = Self::new(config, node, &ctx.node_name)?;
        let uuids: Vec<String> = driver.node.gpus.iter().map(|g| g.uuid.clone()).collect();
        nvml::subscribe(
            &uuids,
            &[GpuEventKind::XidCriticalError, GpuEventKind::DoubleBitEccError],
        )?;
        dra_driver_sdk::log::info(&format!(
            "{} GPUs, driver {}, CUDA {}.{}",
            driver.node.gpus.len(),
            driver.node.driver_version,
            driver.node.cuda_driver_version.0,
            driver.node.cuda_driver_version.1
        ));
        Ok(driver)
    }

    /// One device per GPU.
    fn inventory(&self) -> Result<Vec<Pool>> {
        let devices = self
            .node
            .gpus
            .iter()
            .map(|g| {
                let (major, minor) = g.cuda_compute_capability;
                let (cuda_major, cuda_minor) = self.node.cuda_driver_version;
                let memory = Quantity::binary(g.memory_total_bytes);
                let device = Device::new(device_name(g.index))
                    .attribute("type", "gpu")
                    .attribute("uuid", g.uuid.as_str())
                    .attribute("productName", g.product_name.as_str())
                    .attribute("brand", g.brand.as_str())
                    .attribute("architecture", g.architecture.as_str())
                    .attribute(
                        "cudaComputeCapability",
                        AttributeValue::version(format!("{major}.{minor}.0")),
                    )
                    .attribute(
                        "driverVersion",
                        AttributeValue::version(semver(&self.node.driver_version)),
                    )
                    .attribute(
                        "cudaDriverVersion",
                        AttributeValue::version(format!("{cuda_major}.{cuda_minor}.0")),
                    )
                    .attribute("pciBusID", g.pci.bus_id.as_str())
                    .attribute("index", g.index)
                    .attribute("minor", g.minor_number);
                match self.share_step {
                    // The API server accepts a range only if its max is min
                    // plus whole steps: the largest share that fits the GPU
                    // (81559Mi of an H100 80GB is not a multiple of 5Gi).
                    Some((default, step)) => device.shared(true).consumable(
                        "memory",
                        memory.clone(),
                        RequestPolicy::range(
                            Quantity::binary(default),
                            Quantity::binary(step),
                            Some(Quantity::binary(
                                step + g.memory_total_bytes.saturating_sub(step) / step * step,
                            )),
                            Some(Quantity::binary(step)),
                        ),
                    ),
                    None => device.capacity("memory", memory),
                }
            })
            .collect();
        Ok(vec![Pool::new(&self.pool, devices)])
    }

    fn prepare(&self, claim: Claim<ClaimConfig>) -> Result<PreparedClaim> {
        let mut devices = Vec::with_capacity(claim.devices.len());
        let mut state = Vec::with_capacity(claim.devices.len());
        for a in &claim.devices {
            let gpu = self
                .gpu(&a.device)
                .ok_or_else(|| Error::invalid_claim(format!("device {:?} is not a GPU of this node", a.device)))?;
            let consumed = a.consumed("memory");
            let limit = match (consumed, &a.config.memory_limit) {
                (Some(q), _) => Some(("the share's consumed memory", q.as_str())),
                (None, Some(limit)) => Some(("memoryLimit", limit.as_str())),
                (None, None) => None,
            };
            let limit_bytes = match limit {
                Some((what, q)) => {
                    let bytes = Quantity::parse(q)
                        .and_then(|q| q.to_u64())
                        .map_err(|e| Error::invalid_claim(format!("{what}: {e}")))?;
                    if bytes == 0 || bytes > gpu.memory_total_bytes {
                        return Err(Error::invalid_claim(format!(
                            "{what}: {q} is not between 1 byte and the GPU's {}",
                            Quantity::binary(gpu.memory_total_bytes)
                        )));
                    }
                    Some(bytes)
                }
                None => None,
            };
            let i = gpu.index;
            let mut edits = ContainerEdits::default().env(format!("DRA_GPU_{i}_UUID"), &gpu.uuid);
            if let Some(s) = &a.config.sharing {
                let name = match s.strategy {
                    Strategy::Exclusive => "Exclusive",
                    Strategy::TimeSlicing => "TimeSlicing",
                    Strategy::Mps => "MPS",
                };
                edits = edits.env(format!("DRA_GPU_{i}_SHARING_STRATEGY"), name);
            }
            if let Some(bytes) = limit_bytes {
                // Read by CUDA clients of an MPS server; without one the limit is advisory.
                edits = edits.env(
                    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
                    format!("{}={}M", gpu.uuid, bytes.div_ceil(1 << 20)),
                );
            }
            let mut prepared = PreparedDevice::new(a);
            match &self.config.cdi {
                CdiMode::Mounts => {
                    // The runtime's own NVIDIA hook must not inject anything else.
                    edits = edits.env("NVIDIA_VISIBLE_DEVICES", "void");
                    for path in [
                        format!("/dev/nvidia{}", gpu.minor_number),
                        "/dev/nvidiactl".into(),
                        "/dev/nvidia-uvm".into(),
                        "/dev/nvidia-uvm-tools".into(),
                    ] {
                        edits = edits.device_node(DeviceNode::new(path));
                    }
                    edits.mounts = self.mounts();
                }
                CdiMode::BaseSpec { kind } => prepared = prepared.cdi_device(format!("{kind}={}", gpu.uuid)),
            }
            devices.push(prepared.edits(edits));
            state.push(StateDevice {
                device: a.device.clone(),
                uuid: gpu.uuid.clone(),
                share: a.share_id.as_ref().map(|s| s.as_str().to_owned()),
            });
        }
        let state = state::encode(&State {
            version: STATE_VERSION,
            claim: claim.claim.uid.clone(),
            devices: state,
        })?;
        Ok(PreparedClaim { devices, state })
    }

    /// Nothing is changed on the host at prepare, so nothing needs undoing;
    /// the state must still be ours.
    fn unprepare(&self, claim: &ClaimRef, state: &[u8]) -> Result<()> {
        let Some(state) = state::decode::<State>(state)? else {
            return Ok(());
        };
        if state.version != STATE_VERSION || state.claim != claim.uid {
            return Err(Error::invalid_claim(format!(
                "prepare state (version {}, claim {}) is not this build's for claim {}",
                state.version, state.claim, claim.uid
            )));
        }
        Ok(())
    }

    fn on_event(&self, event: Event) -> Result<Vec<DeviceHealth>> {
        Ok(match event {
            Event::Gpu(g) => match g.kind {
                GpuEventKind::XidCriticalError => self.on_xid(&g.uuid, g.data),
                GpuEventKind::DoubleBitEccError => self.on_double_bit_ecc(&g.uuid),
                _ => Vec::new(),
            },
            Event::Link(_) => Vec::new(),
        })
    }
}

impl GpuDriver {
    /// The driver for `node`'s GPUs, published in the pool `pool`.
    pub fn new(config: Config, node: Node, pool: &str) -> Result<Self> {
        let share_step = check(&config)?;
        let ignored = APPLICATION_XIDS.iter().chain(&config.ignored_xids).copied().collect();
        Ok(Self {
            config,
            node,
            pool: pool.to_owned(),
            ignored,
            share_step,
        })
    }

    fn gpu(&self, device: &str) -> Option<&GpuInfo> {
        let index: u32 = device.strip_prefix("gpu-")?.parse().ok()?;
        self.node
            .gpus
            .iter()
            .find(|g| g.index == index && device == device_name(index))
    }

    /// Read-only bind mounts of the driver files; each library also under
    /// its `.so.1` name, which is what programs link against.
    fn mounts(&self) -> Vec<Mount> {
        let mut mounts = Vec::new();
        for f in &self.node.files {
            mounts.push(Mount::read_only(&f.host_path, &f.container_path));
            if f.kind == DriverFileKind::Library
                && let Some(pos) = f.container_path.find(".so.")
            {
                let soname = format!("{}.so.1", &f.container_path[..pos]);
                if soname != f.container_path {
                    mounts.push(Mount::read_only(&f.host_path, soname));
                }
            }
        }
        mounts
    }

    /// Health after an Xid on the GPU with `uuid` (empty: NVML could not say which).
    pub fn on_xid(&self, uuid: &str, xid: u64) -> Vec<DeviceHealth> {
        if self.ignored.contains(&xid) {
            return Vec::new();
        }
        self.unhealthy(uuid, &format!("Xid {xid}: {}", xid_meaning(xid)))
    }

    pub fn on_double_bit_ecc(&self, uuid: &str) -> Vec<DeviceHealth> {
        self.unhealthy(uuid, "double-bit ECC error: uncorrectable memory error")
    }

    fn unhealthy(&self, uuid: &str, message: &str) -> Vec<DeviceHealth> {
        // An event NVML could not attribute marks every GPU, as NVIDIA's plugin does.
        self.node
            .gpus
            .iter()
            .filter(|g| uuid.is_empty() || g.uuid == uuid)
            .map(|g| DeviceHealth::unhealthy(&self.pool, device_name(g.index), message))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dra_driver_sdk::nvml::PciInfo;
    use dra_driver_sdk::{AllocatedClaim, ConfigSource, ErrorKind, HealthStatus, Instance};

    fn node(n: u32) -> Node {
        Node {
            driver_version: "580.159.04".into(),
            cuda_driver_version: (13, 0),
            gpus: (0..n)
                .map(|i| GpuInfo {
                    index: i,
                    uuid: format!("GPU-{i:08x}-0000-0000-0000-000000000000"),
                    product_name: "NVIDIA H100 80GB HBM3".into(),
                    brand: "Nvidia".into(),
                    architecture: "Hopper".into(),
                    cuda_compute_capability: (9, 0),
                    memory_total_bytes: 85_520_809_984,
                    pci: PciInfo {
                        bus_id: format!("00000000:{:02X}:00.0", 0x19 + i),
                        device_id: 0,
                        subsystem_id: 0,
                    },
                    minor_number: i,
                    mig_enabled: false,
                    numa_node: None,
                })
                .collect(),
            files: vec![DriverFile {
                kind: DriverFileKind::Library,
                host_path: "/run/nvidia/driver/usr/lib64/libcuda.so.580.159.04".into(),
                container_path: "/usr/lib64/libcuda.so.580.159.04".into(),
            }],
        }
    }

    fn driver(config: &str, gpus: u32) -> GpuDriver {
        let config: Config = serde_json::from_str(config).unwrap();
        GpuDriver::new(config, node(gpus), "node-a").unwrap()
    }

    fn prepare(d: &GpuDriver, claim: AllocatedClaim) -> Result<PreparedClaim> {
        d.prepare(claim.resolve()?)
    }

    fn claim() -> AllocatedClaim {
        AllocatedClaim::new("default", "c", "uid").device("gpu", "node-a", "gpu-0")
    }

    fn has_env(p: &PreparedDevice, name: &str, value: &str) -> bool {
        p.edits.env.iter().any(|e| e.name == name && e.value == value)
    }

    #[test]
    fn inventory_attributes_and_shared_capacity() {
        let d = driver(r#"{"sharing": {}}"#, 2);
        let pools = d.inventory().unwrap();
        assert_eq!(pools[0].name, "node-a");
        let devices = &pools[0].devices;
        assert_eq!(devices.len(), 2);
        let attr = |name: &str| {
            devices[1]
                .attributes
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.value.clone())
        };
        assert_eq!(attr("driverVersion"), Some(AttributeValue::version("580.159.4")));
        assert_eq!(attr("cudaComputeCapability"), Some(AttributeValue::version("9.0.0")));
        assert_eq!(attr("pciBusID"), Some(AttributeValue::Text("00000000:1A:00.0".into())));
        assert_eq!(attr("index"), Some(AttributeValue::Integer(1)));
        let memory = &devices[0].capacity[0];
        assert_eq!(memory.value, "81559Mi");
        let policy = memory.request_policy.as_ref().unwrap();
        assert_eq!(policy.default.as_deref(), Some("5Gi"));
        assert_eq!(policy.valid_range.as_ref().unwrap().step.as_deref(), Some("5Gi"));
        // min + whole steps, as the API server demands: 15 steps of 5Gi fit 81559Mi.
        assert_eq!(policy.valid_range.as_ref().unwrap().max.as_deref(), Some("75Gi"));
        assert!(devices[0].allow_multiple_allocations);
        let whole = driver("{}", 1).inventory().unwrap();
        assert!(!whole[0].devices[0].allow_multiple_allocations);
        assert!(whole[0].devices[0].capacity[0].request_policy.is_none());
    }

    #[test]
    fn whole_gpu_in_mounts_mode() {
        let d = driver("{}", 2);
        let p = prepare(
            &d,
            AllocatedClaim::new("default", "c", "uid").device("gpu", "node-a", "gpu-1"),
        )
        .unwrap();
        let dev = &p.devices[0];
        assert_eq!(dev.edits.device_nodes[0].path, "/dev/nvidia1");
        assert!(dev.edits.device_nodes.iter().any(|n| n.path == "/dev/nvidia-uvm"));
        assert!(
            dev.edits
                .mounts
                .iter()
                .any(|m| m.container_path == "/usr/lib64/libcuda.so.1")
        );
        assert!(has_env(dev, "NVIDIA_VISIBLE_DEVICES", "void"));
        d.unprepare(&claim().ref_, &p.state).unwrap();
    }

    #[test]
    fn shares_get_their_memory_limit_and_base_spec_references() {
        let d = driver(
            r#"{"sharing": {}, "cdi": {"mode": "base-spec", "kind": "nvidia.com/gpu"}}"#,
            1,
        );
        let p = prepare(
            &d,
            AllocatedClaim::new("default", "c", "uid")
                .share("gpu", "node-a", "gpu-0", "s1", &[("memory", "10Gi")])
                .share("gpu", "node-a", "gpu-0", "s2", &[("memory", "5Gi")]),
        )
        .unwrap();
        let uuid = &d.node.gpus[0].uuid;
        assert_eq!(p.devices[0].cdi_device_ids, [format!("nvidia.com/gpu={uuid}")]);
        assert_eq!(p.devices[1].share_id.as_deref(), Some("s2"));
        assert!(has_env(
            &p.devices[0],
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
            &format!("{uuid}=10240M")
        ));
        assert!(has_env(
            &p.devices[1],
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
            &format!("{uuid}=5120M")
        ));
        assert!(p.devices[0].edits.mounts.is_empty() && p.devices[0].edits.device_nodes.is_empty());
    }

    #[test]
    fn opaque_config_errors_name_the_field() {
        let d = driver("{}", 1);
        let bad = |params: &str| {
            prepare(&d, claim().config(ConfigSource::ResourceClaim, &[], params))
                .unwrap_err()
                .message
        };
        assert!(bad(r#"{"memoryLimt": "5Gi"}"#).contains("memoryLimt"));
        assert!(bad(r#"{"sharing": {"strategy": "Sometimes"}}"#).contains("Sometimes"));
        assert!(bad(r#"{"memoryLimit": "500Gi"}"#).contains("memoryLimit"));
        assert!(bad(r#"{"memoryLimit": "lots"}"#).contains("memoryLimit"));
        let ok = prepare(
            &d,
            claim().config(
                ConfigSource::ResourceClaim,
                &["gpu"],
                r#"{"sharing":{"strategy":"MPS"},"memoryLimit":"8Gi"}"#,
            ),
        )
        .unwrap();
        assert!(has_env(&ok.devices[0], "DRA_GPU_0_SHARING_STRATEGY", "MPS"));
        for (config, field) in [
            (r#"{"sharng": {}}"#, "sharng"),
            (r#"{"sharing": {"memoryStep": "0"}}"#, "sharing.memoryStep"),
            (r#"{"sharing": {"defaultMemory": "lots"}}"#, "sharing.defaultMemory"),
            (
                r#"{"sharing": {"defaultMemory": "7Gi", "memoryStep": "5Gi"}}"#,
                "sharing.defaultMemory",
            ),
            (r#"{"cdi": {"mode": "base-spec", "kind": "gpu"}}"#, "cdi.kind"),
        ] {
            // Through the SDK as the host calls it: config errors come
            // before NVML is asked anything (natively NVML is not there).
            let e = Instance::<GpuDriver>::start("node-a", config).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidConfig, "{config}: {e}");
            assert!(e.message.contains(field), "{config}: {e}");
        }
        let e = Instance::<GpuDriver>::start("node-a", "{}").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
        assert!(e.message.contains("NVML not available"), "{e}");
    }

    #[test]
    fn xids_map_to_health() {
        let d = driver(r#"{"ignoredXids": [63]}"#, 2);
        let uuid = d.node.gpus[1].uuid.clone();
        assert_eq!(
            d.on_xid(&uuid, 79),
            vec![DeviceHealth::unhealthy(
                "node-a",
                "gpu-1",
                "Xid 79: GPU has fallen off the bus"
            )]
        );
        assert!(d.on_xid(&uuid, 13).is_empty());
        assert!(d.on_xid(&uuid, 63).is_empty(), "configured ignore list");
        assert!(d.on_xid("GPU-unknown", 79).is_empty());
        assert_eq!(d.on_xid("", 48).len(), 2);
        let ecc = d
            .on_event(Event::Gpu(dra_driver_sdk::GpuEvent {
                uuid: uuid.clone(),
                kind: GpuEventKind::DoubleBitEccError,
                data: 0,
            }))
            .unwrap();
        assert_eq!(ecc[0].status, HealthStatus::Unhealthy);
    }
}
