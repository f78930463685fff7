//! The GPU driver's decisions, over the SDK's types and its `nvml` import.

use dra_driver_sdk::nvml::{self, DriverFile, DriverFileKind, GpuInfo, MigDevice, MigPlacement, MigProfile};
use dra_driver_sdk::{
    AttributeValue, Claim, ClaimRef, ContainerEdits, Device, DeviceHealth, DeviceNode, Driver, Error, Event,
    GpuEventKind, InitContext, Mount, Pool, PreparedClaim, PreparedDevice, Quantity, RequestPolicy, Result, state,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod mig;

use mig::StateMig;
pub use mig::{
    HostMig, MigOps, Partition, counter_set_name, gpu_counters, memory_slices, partition_counters, partition_name,
};

/// What the node has: from NVML at `init`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub driver_version: String,
    pub cuda_driver_version: (u32, u32),
    pub gpus: Vec<GpuInfo>,
    /// Empty unless the driver mounts the user-space driver itself.
    pub files: Vec<DriverFile>,
    /// The MIG profiles of each GPU with MIG mode on, by GPU index.
    pub mig: BTreeMap<u32, Vec<MigProfile>>,
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
    /// The MIG device prepare made (or found) for a partition.
    #[serde(default)]
    mig: Option<StateMig>,
}

/// The standard attribute for a device's NUMA node.
pub const NUMA_NODE: &str = "resource.kubernetes.io/numaNode";
/// Counter sets per pool, and counters per set, the API allows.
const MAX_COUNTER_SETS: usize = 8;
const MAX_COUNTERS: usize = 32;

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
    /// MIG partitions by device name.
    partitions: BTreeMap<String, Partition>,
    mig_ops: Arc<dyn MigOps>,
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
    let gpus = nvml::gpus()?;
    let mut mig = BTreeMap::new();
    for g in gpus.iter().filter(|g| g.mig_enabled) {
        mig.insert(g.index, nvml::mig_profiles(g.index)?);
    }
    Ok(Node {
        driver_version: nvml::driver_version()?,
        cuda_driver_version: nvml::cuda_driver_version()?,
        gpus,
        files: if want_files { nvml::driver_files()? } else { Vec::new() },
        mig,
    })
}

impl Driver for GpuDriver {
    type Config = Config;
    type ClaimConfig = ClaimConfig;

    fn init(ctx: &InitContext, config: Config) -> Result<Self> {
        // Config errors come before anything is asked of NVML.
        check(&config)?;
        let node = discover(config.cdi == CdiMode::Mounts)?;
        let driver = Self::new(config, node, &ctx.node_name, Arc::new(HostMig))?;
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

    /// One device per GPU; on a GPU with MIG mode on, also one per MIG
    /// profile and placement, drawing on the GPU's counter set.
    fn inventory(&self) -> Result<Vec<Pool>> {
        let mut pools = vec![Pool::new(&self.pool, Vec::new())];
        let mut mig_gpus = 0;
        for g in &self.node.gpus {
            let Some(profiles) = self.node.mig.get(&g.index) else {
                pools[0].devices.push(self.whole_gpu(g));
                continue;
            };
            // At most 8 counter sets per pool: a ninth MIG GPU starts a pool.
            let k = mig_gpus / MAX_COUNTER_SETS;
            mig_gpus += 1;
            if pools.len() == k {
                pools.push(Pool::new(format!("{}-mig-{k}", self.pool), Vec::new()));
            }
            let set = counter_set_name(g.index);
            let counters = gpu_counters(profiles);
            let pool = std::mem::replace(&mut pools[k], Pool::new("", Vec::new()));
            pools[k] = pool.counter_set(&set, counters.clone());
            pools[k].devices.push(self.whole_gpu(g).consumes(&set, counters));
            for (name, p) in self.partitions.iter().filter(|(_, p)| p.gpu == g.index) {
                pools[k].devices.push(self.partition_device(name, g, p));
            }
        }
        Ok(pools)
    }

    fn prepare(&self, claim: Claim<ClaimConfig>) -> Result<PreparedClaim> {
        // MIG devices this call created: destroyed again if a later device fails.
        let mut created = Vec::new();
        let prepared = self.prepare_devices(&claim, &mut created);
        if prepared.is_err() {
            self.undo(&created);
        }
        prepared
    }

    /// Nothing is changed on the host at prepare for a whole GPU, so nothing
    /// needs undoing; a MIG partition's instance is destroyed (already gone
    /// is success). The state must still be ours.
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
        for d in &state.devices {
            if let Some(m) = &d.mig {
                self.destroy_mig(&d.device, m, &d.uuid)?;
            }
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
    fn prepare_devices(&self, claim: &Claim<ClaimConfig>, created: &mut Vec<StateMig>) -> Result<PreparedClaim> {
        let mut devices = Vec::with_capacity(claim.devices.len());
        let mut state = Vec::with_capacity(claim.devices.len());
        for a in &claim.devices {
            let partition = self
                .partitions
                .get(&a.device)
                .cloned()
                .or_else(|| self.whole_gpu_partition(&a.device));
            if let Some(p) = partition {
                let (device, s) = self.prepare_partition(a, &p, created)?;
                devices.push(device);
                state.push(s);
                continue;
            }
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
                    edits = self.mounts_edits(edits, gpu.minor_number, &[]);
                }
                CdiMode::BaseSpec { kind } => prepared = prepared.cdi_device(format!("{kind}={}", gpu.uuid)),
            }
            devices.push(prepared.edits(edits));
            state.push(StateDevice {
                device: a.device.clone(),
                uuid: gpu.uuid.clone(),
                share: a.share_id.as_ref().map(|s| s.as_str().to_owned()),
                mig: None,
            });
        }
        let state = state::encode(&State {
            version: STATE_VERSION,
            claim: claim.claim.uid.clone(),
            devices: state,
        })?;
        Ok(PreparedClaim { devices, state })
    }

    /// The driver for `node`'s GPUs, published in the pool `pool`, creating
    /// MIG devices through `mig_ops`.
    pub fn new(config: Config, node: Node, pool: &str, mig_ops: Arc<dyn MigOps>) -> Result<Self> {
        let share_step = check(&config)?;
        let ignored = APPLICATION_XIDS.iter().chain(&config.ignored_xids).copied().collect();
        let mut partitions = BTreeMap::new();
        for (&gpu, profiles) in &node.mig {
            if memory_slices(profiles) as usize + 1 > MAX_COUNTERS {
                return Err(Error::unsupported(format!(
                    "GPU {gpu}: {} MIG memory slices are more counters than a counter set holds ({MAX_COUNTERS})",
                    memory_slices(profiles)
                )));
            }
            for p in profiles {
                for &placement in &p.placements {
                    partitions.insert(
                        partition_name(gpu, &p.name, placement.start),
                        Partition {
                            gpu,
                            profile: p.clone(),
                            placement,
                        },
                    );
                }
            }
        }
        Ok(Self {
            config,
            node,
            pool: pool.to_owned(),
            ignored,
            share_step,
            partitions,
            mig_ops,
        })
    }

    /// The partitions of MIG GPUs, by device name.
    pub fn partitions(&self) -> &BTreeMap<String, Partition> {
        &self.partitions
    }

    /// What every device of GPU `g` says about it.
    fn gpu_attributes(&self, device: Device, g: &GpuInfo) -> Device {
        let (major, minor) = g.cuda_compute_capability;
        let (cuda_major, cuda_minor) = self.node.cuda_driver_version;
        let device = device
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
            .attribute("minor", g.minor_number)
            // Every device of the GPU uses its /dev/nvidiaN.
            .owns_device_node(format!("/dev/nvidia{}", g.minor_number));
        match g.numa_node {
            Some(n) => device.attribute(NUMA_NODE, n),
            None => device,
        }
    }

    /// The whole GPU: shareable by memory when configured (not on a MIG GPU,
    /// whose partitions count against it).
    fn whole_gpu(&self, g: &GpuInfo) -> Device {
        let memory = Quantity::binary(g.memory_total_bytes);
        let device = self
            .gpu_attributes(Device::new(device_name(g.index)), g)
            .attribute("type", "gpu")
            .attribute("uuid", g.uuid.as_str());
        match self.share_step {
            // The API server accepts a range only if its max is min
            // plus whole steps: the largest share that fits the GPU
            // (81559Mi of an H100 80GB is not a multiple of 5Gi).
            Some((default, step)) if !g.mig_enabled => device.shared(true).consumable(
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
            _ => device.capacity("memory", memory),
        }
    }

    /// The GPU's device node, the control nodes, `extra` (a MIG device's
    /// capabilities) and the driver's files; the runtime's own NVIDIA hook
    /// must not inject anything else.
    fn mounts_edits(&self, edits: ContainerEdits, minor: u32, extra: &[String]) -> ContainerEdits {
        let mut edits = edits.env("NVIDIA_VISIBLE_DEVICES", "void");
        for path in [
            format!("/dev/nvidia{minor}"),
            "/dev/nvidiactl".into(),
            "/dev/nvidia-uvm".into(),
            "/dev/nvidia-uvm-tools".into(),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        {
            edits = edits.device_node(DeviceNode::new(path));
        }
        edits.mounts = self.mounts();
        edits
    }

    /// The pool GPU `index`'s devices are published in (see `inventory`).
    fn pool_of(&self, index: u32) -> String {
        let Some(k) = self.node.mig.keys().position(|&i| i == index) else {
            return self.pool.clone();
        };
        match k / MAX_COUNTER_SETS {
            0 => self.pool.clone(),
            k => format!("{}-mig-{k}", self.pool),
        }
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
        // A MIG GPU's partitions share its fate.
        let mut health = Vec::new();
        for g in self.node.gpus.iter().filter(|g| uuid.is_empty() || g.uuid == uuid) {
            let pool = self.pool_of(g.index);
            health.push(DeviceHealth::unhealthy(&pool, device_name(g.index), message));
            for (name, _) in self.partitions.iter().filter(|(_, p)| p.gpu == g.index) {
                health.push(DeviceHealth::unhealthy(&pool, name.as_str(), message));
            }
        }
        health
    }
}

#[cfg(test)]
mod tests;
