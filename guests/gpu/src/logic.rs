//! The GPU driver's decisions in plain Rust.

use crate::quantity::{format_bytes, parse_bytes};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// One GPU as NVML describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub product_name: String,
    pub brand: String,
    pub architecture: String,
    pub cuda_compute_capability: (u32, u32),
    pub memory_bytes: u64,
    pub pci_bus_id: String,
    pub minor: u32,
    pub mig_enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Library,
    Binary,
    Firmware,
}

/// A user-space driver file the host found under the driver root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverFile {
    pub kind: FileKind,
    pub host_path: String,
    pub container_path: String,
}

/// What the node has: from NVML at `init`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub driver_version: String,
    pub cuda_driver_version: (u32, u32),
    pub gpus: Vec<Gpu>,
    /// Empty unless the driver mounts the user-space driver itself.
    pub files: Vec<DriverFile>,
}

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
    fn config(m: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidConfig,
            message: m.into(),
        }
    }
    fn claim(m: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidClaim,
            message: m.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
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

/// An attribute value, WIT-independent.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Text(String),
    Version(String),
}

/// Capacity of a published device.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub value: String,
    /// (default, min/step) when the GPU is shared by memory.
    pub policy: Option<(String, String)>,
    pub max: String,
}

/// A device to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    pub attributes: Vec<(&'static str, Value)>,
    pub memory: Capacity,
    pub shared: bool,
}

/// One allocated device of a claim.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub request: String,
    pub device: String,
    pub share_id: Option<String>,
    /// The share's consumed `memory`, when shared.
    pub consumed_memory: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OpaqueConfig {
    pub requests: Vec<String>,
    pub parameters: String,
}

/// Per-claim parameters (`config[].opaque.parameters`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClaimConfig {
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
}

/// What a container gets for one prepared device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDevice {
    pub device: String,
    pub share_id: Option<String>,
    pub device_nodes: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub cdi_device_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub devices: Vec<PreparedDevice>,
    pub state: Vec<u8>,
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

/// Health a GPU event leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    /// Mark these devices unhealthy with this message.
    Unhealthy {
        devices: Vec<String>,
        message: String,
    },
    None,
}

/// A configured driver on a node.
#[derive(Debug, Clone)]
pub struct Driver {
    pub config: Config,
    pub node: Node,
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

impl Driver {
    pub fn new(config_json: &str, node: Node) -> Result<Self, Error> {
        let text = if config_json.trim().is_empty() {
            "{}"
        } else {
            config_json
        };
        let config: Config =
            serde_json::from_str(text).map_err(|e| Error::config(format!("invalid GPU driver config: {e}")))?;
        let share_step = match &config.sharing {
            Some(s) => {
                let default = parse_bytes(&s.default_memory).ok_or_else(|| {
                    Error::config(format!(
                        "sharing.defaultMemory: {:?} is not a quantity",
                        s.default_memory
                    ))
                })?;
                let step = parse_bytes(&s.memory_step).filter(|s| *s > 0).ok_or_else(|| {
                    Error::config(format!(
                        "sharing.memoryStep: {:?} is not a positive quantity",
                        s.memory_step
                    ))
                })?;
                Some((default, step))
            }
            None => None,
        };
        if let CdiMode::BaseSpec { kind } = &config.cdi
            && !kind.contains('/')
        {
            return Err(Error::config(format!("cdi.kind: {kind:?} is not vendor/class")));
        }
        let ignored = APPLICATION_XIDS.iter().chain(&config.ignored_xids).copied().collect();
        Ok(Self {
            config,
            node,
            ignored,
            share_step,
        })
    }

    /// One device per GPU.
    pub fn devices(&self) -> Vec<Device> {
        self.node
            .gpus
            .iter()
            .map(|g| {
                let (major, minor) = g.cuda_compute_capability;
                let (cuda_major, cuda_minor) = self.node.cuda_driver_version;
                let attributes = vec![
                    ("type", Value::Text("gpu".into())),
                    ("uuid", Value::Text(g.uuid.clone())),
                    ("productName", Value::Text(g.product_name.clone())),
                    ("brand", Value::Text(g.brand.clone())),
                    ("architecture", Value::Text(g.architecture.clone())),
                    ("cudaComputeCapability", Value::Version(format!("{major}.{minor}.0"))),
                    ("driverVersion", Value::Version(semver(&self.node.driver_version))),
                    (
                        "cudaDriverVersion",
                        Value::Version(format!("{cuda_major}.{cuda_minor}.0")),
                    ),
                    ("pciBusID", Value::Text(g.pci_bus_id.clone())),
                    ("index", Value::Int(i64::from(g.index))),
                    ("minor", Value::Int(i64::from(g.minor))),
                ];
                let memory = Capacity {
                    value: format_bytes(g.memory_bytes),
                    policy: self
                        .share_step
                        .map(|(default, step)| (format_bytes(default), format_bytes(step))),
                    max: format_bytes(g.memory_bytes),
                };
                Device {
                    name: device_name(g.index),
                    attributes,
                    memory,
                    shared: self.share_step.is_some(),
                }
            })
            .collect()
    }

    fn gpu(&self, device: &str) -> Option<&Gpu> {
        let index: u32 = device.strip_prefix("gpu-")?.parse().ok()?;
        self.node
            .gpus
            .iter()
            .find(|g| g.index == index && device == device_name(index))
    }

    pub fn prepare(
        &self,
        claim_uid: &str,
        allocations: &[Allocation],
        configs: &[OpaqueConfig],
    ) -> Result<Prepared, Error> {
        let mut devices = Vec::with_capacity(allocations.len());
        let mut state = Vec::with_capacity(allocations.len());
        for a in allocations {
            let gpu = self
                .gpu(&a.device)
                .ok_or_else(|| Error::claim(format!("device {:?} is not a GPU of this node", a.device)))?;
            let config = config_for(configs, &a.request)?;
            let limit = match (&a.consumed_memory, &config.memory_limit) {
                (Some(consumed), _) => Some(("the share's consumed memory", consumed)),
                (None, Some(limit)) => Some(("memoryLimit", limit)),
                (None, None) => None,
            };
            let limit_bytes = match limit {
                Some((what, q)) => {
                    let bytes =
                        parse_bytes(q).ok_or_else(|| Error::claim(format!("{what}: {q:?} is not a quantity")))?;
                    if bytes == 0 || bytes > gpu.memory_bytes {
                        return Err(Error::claim(format!(
                            "{what}: {q} is not between 1 byte and the GPU's {}",
                            format_bytes(gpu.memory_bytes)
                        )));
                    }
                    Some(bytes)
                }
                None => None,
            };
            let i = gpu.index;
            let mut env = vec![(format!("DRA_GPU_{i}_UUID"), gpu.uuid.clone())];
            if let Some(s) = &config.sharing {
                let name = match s.strategy {
                    Strategy::Exclusive => "Exclusive",
                    Strategy::TimeSlicing => "TimeSlicing",
                    Strategy::Mps => "MPS",
                };
                env.push((format!("DRA_GPU_{i}_SHARING_STRATEGY"), name.into()));
            }
            if let Some(bytes) = limit_bytes {
                // Read by CUDA clients of an MPS server; without one the limit is advisory.
                env.push((
                    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(),
                    format!("{}={}M", gpu.uuid, bytes.div_ceil(1 << 20)),
                ));
            }
            let mut prepared = PreparedDevice {
                device: a.device.clone(),
                share_id: a.share_id.clone(),
                device_nodes: vec![],
                env,
                mounts: vec![],
                cdi_device_ids: vec![],
            };
            match &self.config.cdi {
                CdiMode::Mounts => {
                    // The runtime's own NVIDIA hook must not inject anything else.
                    prepared.env.push(("NVIDIA_VISIBLE_DEVICES".into(), "void".into()));
                    prepared.device_nodes = vec![
                        format!("/dev/nvidia{}", gpu.minor),
                        "/dev/nvidiactl".into(),
                        "/dev/nvidia-uvm".into(),
                        "/dev/nvidia-uvm-tools".into(),
                    ];
                    prepared.mounts = self.mounts();
                }
                CdiMode::BaseSpec { kind } => prepared.cdi_device_ids.push(format!("{kind}={}", gpu.uuid)),
            }
            devices.push(prepared);
            state.push(StateDevice {
                device: a.device.clone(),
                uuid: gpu.uuid.clone(),
                share: a.share_id.clone(),
            });
        }
        let state = serde_json::to_vec(&State {
            version: STATE_VERSION,
            claim: claim_uid.to_owned(),
            devices: state,
        })
        .map_err(|e| Error {
            kind: ErrorKind::Internal,
            message: e.to_string(),
        })?;
        Ok(Prepared { devices, state })
    }

    /// Read-only bind mounts of the driver files; each library also under
    /// its `.so.1` name, which is what programs link against.
    fn mounts(&self) -> Vec<Mount> {
        let mut mounts = Vec::new();
        for f in &self.node.files {
            mounts.push(Mount {
                host_path: f.host_path.clone(),
                container_path: f.container_path.clone(),
            });
            if f.kind == FileKind::Library
                && let Some(pos) = f.container_path.find(".so.")
            {
                let soname = format!("{}.so.1", &f.container_path[..pos]);
                if soname != f.container_path {
                    mounts.push(Mount {
                        host_path: f.host_path.clone(),
                        container_path: soname,
                    });
                }
            }
        }
        mounts
    }

    /// Nothing is changed on the host at prepare, so nothing needs undoing;
    /// the state must still be ours.
    pub fn unprepare(&self, claim_uid: &str, state: &[u8]) -> Result<(), Error> {
        if state.is_empty() {
            return Ok(());
        }
        let state: State =
            serde_json::from_slice(state).map_err(|e| Error::claim(format!("unreadable prepare state: {e}")))?;
        if state.version != STATE_VERSION || state.claim != claim_uid {
            return Err(Error::claim(format!(
                "prepare state (version {}, claim {}) is not this build's for claim {claim_uid}",
                state.version, state.claim
            )));
        }
        Ok(())
    }

    /// Health after an Xid on the GPU with `uuid` (empty: NVML could not say which).
    pub fn on_xid(&self, uuid: &str, xid: u64) -> HealthChange {
        if self.ignored.contains(&xid) {
            return HealthChange::None;
        }
        self.unhealthy(uuid, format!("Xid {xid}: {}", xid_meaning(xid)))
    }

    pub fn on_double_bit_ecc(&self, uuid: &str) -> HealthChange {
        self.unhealthy(uuid, "double-bit ECC error: uncorrectable memory error".into())
    }

    fn unhealthy(&self, uuid: &str, message: String) -> HealthChange {
        // An event NVML could not attribute marks every GPU, as NVIDIA's plugin does.
        let devices: Vec<String> = self
            .node
            .gpus
            .iter()
            .filter(|g| uuid.is_empty() || g.uuid == uuid)
            .map(|g| device_name(g.index))
            .collect();
        if devices.is_empty() {
            return HealthChange::None;
        }
        HealthChange::Unhealthy { devices, message }
    }
}

/// The effective config for a request: later configs (claim) override
/// earlier ones (class), field by field.
fn config_for(configs: &[OpaqueConfig], request: &str) -> Result<ClaimConfig, Error> {
    let parent = request.split('/').next().unwrap_or(request);
    let mut effective = ClaimConfig::default();
    for c in configs {
        if !(c.requests.is_empty() || c.requests.iter().any(|r| r == request || r == parent)) {
            continue;
        }
        let parsed: ClaimConfig = serde_json::from_str(&c.parameters)
            .map_err(|e| Error::claim(format!("invalid GPU config for request {request:?}: {e}")))?;
        if parsed.sharing.is_some() {
            effective.sharing = parsed.sharing;
        }
        if parsed.memory_limit.is_some() {
            effective.memory_limit = parsed.memory_limit;
        }
    }
    Ok(effective)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u32) -> Node {
        Node {
            driver_version: "580.159.04".into(),
            cuda_driver_version: (13, 0),
            gpus: (0..n)
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("GPU-{i:08x}-0000-0000-0000-000000000000"),
                    product_name: "NVIDIA H100 80GB HBM3".into(),
                    brand: "Nvidia".into(),
                    architecture: "Hopper".into(),
                    cuda_compute_capability: (9, 0),
                    memory_bytes: 85_520_809_984,
                    pci_bus_id: format!("00000000:{:02X}:00.0", 0x19 + i),
                    minor: i,
                    mig_enabled: false,
                })
                .collect(),
            files: vec![DriverFile {
                kind: FileKind::Library,
                host_path: "/run/nvidia/driver/usr/lib64/libcuda.so.580.159.04".into(),
                container_path: "/usr/lib64/libcuda.so.580.159.04".into(),
            }],
        }
    }

    fn alloc(device: &str, share: Option<&str>, consumed: Option<&str>) -> Allocation {
        Allocation {
            request: "gpu".into(),
            device: device.into(),
            share_id: share.map(Into::into),
            consumed_memory: consumed.map(Into::into),
        }
    }

    #[test]
    fn inventory_attributes_and_shared_capacity() {
        let d = Driver::new(r#"{"sharing": {}}"#, node(2)).unwrap();
        let devices = d.devices();
        assert_eq!(devices.len(), 2);
        let a = &devices[1].attributes;
        assert!(a.contains(&("driverVersion", Value::Version("580.159.4".into()))));
        assert!(a.contains(&("cudaComputeCapability", Value::Version("9.0.0".into()))));
        assert!(a.contains(&("pciBusID", Value::Text("00000000:1A:00.0".into()))));
        assert!(a.contains(&("index", Value::Int(1))));
        assert_eq!(devices[0].memory.value, "81559Mi");
        assert_eq!(devices[0].memory.policy, Some(("5Gi".into(), "5Gi".into())));
        assert!(devices[0].shared);
        assert!(!Driver::new("{}", node(1)).unwrap().devices()[0].shared);
    }

    #[test]
    fn whole_gpu_in_mounts_mode() {
        let d = Driver::new("{}", node(2)).unwrap();
        let p = d.prepare("uid", &[alloc("gpu-1", None, None)], &[]).unwrap();
        let dev = &p.devices[0];
        assert_eq!(dev.device_nodes[0], "/dev/nvidia1");
        assert!(dev.device_nodes.contains(&"/dev/nvidia-uvm".to_string()));
        assert!(dev.mounts.iter().any(|m| m.container_path == "/usr/lib64/libcuda.so.1"));
        assert!(dev.env.contains(&("NVIDIA_VISIBLE_DEVICES".into(), "void".into())));
        d.unprepare("uid", &p.state).unwrap();
    }

    #[test]
    fn shares_get_their_memory_limit_and_base_spec_references() {
        let d = Driver::new(
            r#"{"sharing": {}, "cdi": {"mode": "base-spec", "kind": "nvidia.com/gpu"}}"#,
            node(1),
        )
        .unwrap();
        let p = d
            .prepare(
                "uid",
                &[
                    alloc("gpu-0", Some("s1"), Some("10Gi")),
                    alloc("gpu-0", Some("s2"), Some("5Gi")),
                ],
                &[],
            )
            .unwrap();
        let uuid = &d.node.gpus[0].uuid;
        assert_eq!(p.devices[0].cdi_device_ids, [format!("nvidia.com/gpu={uuid}")]);
        assert!(
            p.devices[0]
                .env
                .contains(&("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), format!("{uuid}=10240M")))
        );
        assert!(
            p.devices[1]
                .env
                .contains(&("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), format!("{uuid}=5120M")))
        );
        assert!(p.devices[0].mounts.is_empty() && p.devices[0].device_nodes.is_empty());
    }

    #[test]
    fn opaque_config_errors_name_the_field() {
        let d = Driver::new("{}", node(1)).unwrap();
        let bad = |params: &str| {
            d.prepare(
                "uid",
                &[alloc("gpu-0", None, None)],
                &[OpaqueConfig {
                    requests: vec![],
                    parameters: params.into(),
                }],
            )
            .unwrap_err()
            .message
        };
        assert!(bad(r#"{"memoryLimt": "5Gi"}"#).contains("memoryLimt"));
        assert!(bad(r#"{"sharing": {"strategy": "Sometimes"}}"#).contains("Sometimes"));
        assert!(bad(r#"{"memoryLimit": "500Gi"}"#).contains("memoryLimit"));
        let ok = d
            .prepare(
                "uid",
                &[alloc("gpu-0", None, None)],
                &[OpaqueConfig {
                    requests: vec!["gpu".into()],
                    parameters: r#"{"sharing":{"strategy":"MPS"},"memoryLimit":"8Gi"}"#.into(),
                }],
            )
            .unwrap();
        assert!(
            ok.devices[0]
                .env
                .contains(&("DRA_GPU_0_SHARING_STRATEGY".into(), "MPS".into()))
        );
        assert!(
            Driver::new(r#"{"sharng": {}}"#, node(1))
                .unwrap_err()
                .message
                .contains("sharng")
        );
    }

    #[test]
    fn xids_map_to_health() {
        let d = Driver::new(r#"{"ignoredXids": [63]}"#, node(2)).unwrap();
        let uuid = d.node.gpus[1].uuid.clone();
        assert_eq!(
            d.on_xid(&uuid, 79),
            HealthChange::Unhealthy {
                devices: vec!["gpu-1".into()],
                message: "Xid 79: GPU has fallen off the bus".into()
            }
        );
        assert_eq!(d.on_xid(&uuid, 13), HealthChange::None);
        assert_eq!(d.on_xid(&uuid, 63), HealthChange::None, "configured ignore list");
        assert_eq!(d.on_xid("GPU-unknown", 79), HealthChange::None);
        match d.on_xid("", 48) {
            HealthChange::Unhealthy { devices, .. } => assert_eq!(devices.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(d.on_double_bit_ecc(&uuid), HealthChange::Unhealthy { .. }));
    }
}
