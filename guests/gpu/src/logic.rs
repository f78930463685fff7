//! The GPU driver's decisions, over the SDK's types and its `nvml` import.

use dra_driver_sdk::nvml::{self, DriverFile, DriverFileKind, GpuInfo, MigDevice, MigPlacement, MigProfile};
use dra_driver_sdk::{
    AttributeValue, Claim, ClaimRef, ContainerEdits, Device, DeviceHealth, DeviceNode, Driver, Error, Event,
    GpuEventKind, InitContext, Mount, Pool, PreparedClaim, PreparedDevice, Quantity, RequestPolicy, Result, state,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StateMig {
    gpu: u32,
    gpu_instance: u32,
}

/// What the driver asks of NVML's MIG functions: the host's (`nvml`), or a
/// fake in unit tests.
pub trait MigOps: std::fmt::Debug {
    fn devices(&self, gpu: u32) -> std::result::Result<Vec<MigDevice>, nvml::Error>;
    fn create(&self, gpu: u32, profile_id: u32, placement: MigPlacement)
    -> std::result::Result<MigDevice, nvml::Error>;
    fn destroy(&self, gpu: u32, gpu_instance_id: u32) -> std::result::Result<(), nvml::Error>;
}

/// The host's NVML.
#[derive(Debug)]
pub struct HostMig;

impl MigOps for HostMig {
    fn devices(&self, gpu: u32) -> std::result::Result<Vec<MigDevice>, nvml::Error> {
        nvml::mig_devices(gpu)
    }

    fn create(
        &self,
        gpu: u32,
        profile_id: u32,
        placement: MigPlacement,
    ) -> std::result::Result<MigDevice, nvml::Error> {
        nvml::create_mig_device(gpu, profile_id, placement)
    }

    fn destroy(&self, gpu: u32, gpu_instance_id: u32) -> std::result::Result<(), nvml::Error> {
        nvml::destroy_mig_device(gpu, gpu_instance_id)
    }
}

/// One MIG partition a GPU publishes: a profile at one of its placements.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub gpu: u32,
    pub profile: MigProfile,
    pub placement: MigPlacement,
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

/// `gpu-0-mig-1g10gb-3`: profile `1g.10gb` at memory slice 3 of GPU 0 (a
/// DNS label: the profile's dots dropped, anything else not alphanumeric a dash).
pub fn partition_name(gpu: u32, profile: &str, start: u32) -> String {
    let profile: String = profile
        .chars()
        .filter(|c| *c != '.')
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("gpu-{gpu}-mig-{profile}-{start}")
}

/// The counter set of a MIG GPU's partitions.
pub fn counter_set_name(gpu: u32) -> String {
    format!("gpu-{gpu}")
}

/// How many memory slices a GPU's profiles place instances in (8 on an H100).
pub fn memory_slices(profiles: &[MigProfile]) -> u32 {
    profiles
        .iter()
        .flat_map(|p| &p.placements)
        .map(|pl| pl.start + pl.size)
        .max()
        .unwrap_or(0)
}

/// What a MIG GPU has: one counter per memory slice, and its compute
/// slices (7 on an H100: the largest profile's).
pub fn gpu_counters(profiles: &[MigProfile]) -> Vec<(String, Quantity)> {
    let mut counters: Vec<(String, Quantity)> = (0..memory_slices(profiles))
        .map(|i| (format!("memory-slice-{i}"), Quantity::binary(1)))
        .collect();
    let compute = profiles.iter().map(|p| p.slice_count).max().unwrap_or(0);
    counters.push(("compute-slices".into(), Quantity::binary(u64::from(compute))));
    counters
}

/// What a partition uses up: the memory slices its placement covers and
/// its profile's compute slices. Two partitions whose placements overlap
/// cannot both be allocated, nor a partition with the full GPU.
pub fn partition_counters(profile: &MigProfile, placement: MigPlacement) -> Vec<(String, Quantity)> {
    let mut counters: Vec<(String, Quantity)> = (placement.start..placement.start + placement.size)
        .map(|i| (format!("memory-slice-{i}"), Quantity::binary(1)))
        .collect();
    counters.push((
        "compute-slices".into(),
        Quantity::binary(u64::from(profile.slice_count)),
    ));
    counters
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
            if let Some(p) = self.partitions.get(&a.device) {
                let (device, s) = self.prepare_partition(a, p, created)?;
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

    /// A MIG partition: its profile at one placement, drawing on its GPU's
    /// counter set.
    fn partition_device(&self, name: &str, g: &GpuInfo, p: &Partition) -> Device {
        self.gpu_attributes(Device::new(name), g)
            .attribute("type", "mig")
            .attribute("profile", p.profile.name.as_str())
            .attribute("parentUUID", g.uuid.as_str())
            .attribute("placementStart", p.placement.start)
            .attribute("placementSize", p.placement.size)
            .capacity("memory", Quantity::binary(p.profile.memory_bytes))
            .capacity(
                "multiprocessors",
                Quantity::binary(u64::from(p.profile.multiprocessors)),
            )
            .consumes(counter_set_name(g.index), partition_counters(&p.profile, p.placement))
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

    /// A MIG partition: its MIG device, made unless one of the same profile
    /// already sits at the placement (a retried prepare).
    fn prepare_partition(
        &self,
        a: &dra_driver_sdk::Allocation<ClaimConfig>,
        p: &Partition,
        created: &mut Vec<StateMig>,
    ) -> Result<(PreparedDevice, StateDevice)> {
        let CdiMode::Mounts = self.config.cdi else {
            return Err(Error::unsupported(format!(
                "device {:?}: MIG partitions need cdi mode \"mounts\" (a base spec cannot name a MIG device made at prepare)",
                a.device
            )));
        };
        if a.config.sharing.is_some() || a.config.memory_limit.is_some() {
            return Err(Error::invalid_claim(format!(
                "device {:?}: a MIG partition takes no sharing or memoryLimit",
                a.device
            )));
        }
        let gpu = self
            .node
            .gpus
            .iter()
            .find(|g| g.index == p.gpu)
            .ok_or_else(|| Error::internal(format!("device {:?}: GPU {} is gone", a.device, p.gpu)))?;
        let what = |e: nvml::Error| {
            let e = Error::from(e);
            let hint = match e.kind {
                dra_driver_sdk::ErrorKind::Busy => {
                    " (the GPU is busy, or a MIG device not made by this claim overlaps these memory slices)"
                }
                _ => "",
            };
            Error::new(
                e.kind,
                format!("device {:?} (MIG {}): {}{hint}", a.device, p.profile.name, e.message),
            )
        };
        let existing = self
            .mig_ops
            .devices(p.gpu)
            .map_err(what)?
            .into_iter()
            .find(|m| m.profile_id == p.profile.id && m.placement == p.placement);
        let mig = match existing {
            Some(m) => m,
            None => {
                let m = self.mig_ops.create(p.gpu, p.profile.id, p.placement).map_err(what)?;
                created.push(StateMig {
                    gpu: p.gpu,
                    gpu_instance: m.gpu_instance_id,
                });
                m
            }
        };
        let i = p.gpu;
        let start = p.placement.start;
        let edits = ContainerEdits::default()
            .env(format!("DRA_GPU_{i}_MIG_{start}_UUID"), &mig.uuid)
            .env(format!("DRA_GPU_{i}_MIG_{start}_PROFILE"), &p.profile.name);
        let edits = self.mounts_edits(edits, gpu.minor_number, &mig.device_nodes);
        Ok((
            PreparedDevice::new(a).edits(edits),
            StateDevice {
                device: a.device.clone(),
                uuid: mig.uuid,
                share: None,
                mig: Some(StateMig {
                    gpu: p.gpu,
                    gpu_instance: mig.gpu_instance_id,
                }),
            },
        ))
    }

    /// Destroy the MIG devices a failed prepare made (best effort: the
    /// prepare's own error is what the kubelet hears).
    fn undo(&self, created: &[StateMig]) {
        for m in created {
            if let Err(e) = self.mig_ops.destroy(m.gpu, m.gpu_instance) {
                dra_driver_sdk::log::warn(&format!("undoing a failed prepare: {e}"));
            }
        }
    }

    /// Destroy the MIG device a prepare made for `device`, if it is still
    /// the one with `uuid` (gone, or replaced by another: nothing to do).
    fn destroy_mig(&self, device: &str, m: &StateMig, uuid: &str) -> Result<()> {
        let fail = |e: nvml::Error| {
            let e = Error::from(e);
            Error::new(e.kind, format!("device {device:?}: {}", e.message))
        };
        let ours = self
            .mig_ops
            .devices(m.gpu)
            .map_err(fail)?
            .iter()
            .any(|d| d.gpu_instance_id == m.gpu_instance && d.uuid == uuid);
        if !ours {
            return Ok(());
        }
        match self.mig_ops.destroy(m.gpu, m.gpu_instance) {
            Ok(()) => Ok(()),
            Err(e) if e.reason == nvml::Reason::NotFound => Ok(()),
            Err(e) => Err(fail(e)),
        }
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
            mig: BTreeMap::new(),
        }
    }

    fn driver(config: &str, gpus: u32) -> GpuDriver {
        let config: Config = serde_json::from_str(config).unwrap();
        GpuDriver::new(config, node(gpus), "node-a", Arc::new(FakeMig::default())).unwrap()
    }

    /// An H100 80GB's profiles (the simulated NVML's default table).
    fn h100() -> Vec<MigProfile> {
        let p = |id, name: &str, slice_count, gib: u64, multiprocessors, size, starts: &[u32]| MigProfile {
            id,
            name: name.into(),
            slice_count,
            memory_bytes: gib << 30,
            multiprocessors,
            placements: starts.iter().map(|&start| MigPlacement { start, size }).collect(),
        };
        vec![
            p(19, "1g.10gb", 1, 10, 16, 1, &[0, 1, 2, 3, 4, 5, 6]),
            p(15, "1g.20gb", 1, 20, 26, 2, &[0, 2, 4, 6]),
            p(14, "2g.20gb", 2, 20, 32, 2, &[0, 2, 4]),
            p(9, "3g.40gb", 3, 40, 60, 4, &[0, 4]),
            p(5, "4g.40gb", 4, 40, 64, 4, &[0]),
            p(0, "7g.80gb", 7, 80, 132, 8, &[0]),
        ]
    }

    /// NVML's MIG functions over a list of instances; `busy` GPUs refuse creation.
    #[derive(Debug, Default)]
    struct FakeMig {
        devices: std::sync::Mutex<Vec<MigDevice>>,
        busy: BTreeSet<u32>,
        creates: std::sync::atomic::AtomicU32,
    }

    fn nvml_err(reason: nvml::Reason) -> nvml::Error {
        nvml::Error {
            call: "fake".into(),
            reason,
        }
    }

    impl MigOps for FakeMig {
        fn devices(&self, gpu: u32) -> std::result::Result<Vec<MigDevice>, nvml::Error> {
            Ok(self
                .devices
                .lock()
                .unwrap()
                .iter()
                .filter(|d| d.gpu == gpu)
                .cloned()
                .collect())
        }

        fn create(
            &self,
            gpu: u32,
            profile_id: u32,
            placement: MigPlacement,
        ) -> std::result::Result<MigDevice, nvml::Error> {
            let mut devices = self.devices.lock().unwrap();
            let overlaps = devices.iter().any(|d| {
                d.gpu == gpu
                    && d.placement.start < placement.start + placement.size
                    && placement.start < d.placement.start + d.placement.size
            });
            if self.busy.contains(&gpu) || overlaps {
                return Err(nvml_err(nvml::Reason::InUse));
            }
            let n = self.creates.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let d = MigDevice {
                gpu,
                gpu_instance_id: n,
                compute_instance_id: 0,
                profile_id,
                placement,
                uuid: format!("MIG-{n}"),
                device_nodes: vec![format!("/dev/nvidia-caps/nvidia-cap{}", 3 + n * 9)],
            };
            devices.push(d.clone());
            Ok(d)
        }

        fn destroy(&self, gpu: u32, gpu_instance_id: u32) -> std::result::Result<(), nvml::Error> {
            let mut devices = self.devices.lock().unwrap();
            let at = devices
                .iter()
                .position(|d| d.gpu == gpu && d.gpu_instance_id == gpu_instance_id)
                .ok_or_else(|| nvml_err(nvml::Reason::NotFound))?;
            devices.remove(at);
            Ok(())
        }
    }

    /// `n` GPUs, those in `mig` with MIG mode on; GPU 0 on NUMA node 1.
    fn mig_driver(n: u32, mig: &[u32], fake: Arc<FakeMig>) -> GpuDriver {
        let mut node = node(n);
        for g in &mut node.gpus {
            g.mig_enabled = mig.contains(&g.index);
        }
        node.gpus[0].numa_node = Some(1);
        node.mig = mig.iter().map(|&i| (i, h100())).collect();
        GpuDriver::new(Config::default(), node, "node-a", fake).unwrap()
    }

    /// Whether devices fit their pool's counters together, as the scheduler counts.
    fn fit(pool: &Pool, names: &[&str]) -> bool {
        let mut left: BTreeMap<(String, String), u64> = BTreeMap::new();
        for set in &pool.shared_counters {
            for c in &set.counters {
                left.insert((set.name.clone(), c.name.clone()), c.value.parse().unwrap());
            }
        }
        for name in names {
            let d = pool
                .devices
                .iter()
                .find(|d| d.name == *name)
                .unwrap_or_else(|| panic!("{name}"));
            for use_ in &d.consumes_counters {
                for c in &use_.counters {
                    let key = (use_.counter_set.clone(), c.name.clone());
                    let have = left.get_mut(&key).unwrap_or_else(|| panic!("{key:?}"));
                    let want: u64 = c.value.parse().unwrap();
                    if *have < want {
                        return false;
                    }
                    *have -= want;
                }
            }
        }
        true
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
    fn mig_gpus_publish_counters_and_a_device_per_profile_and_placement() {
        let d = mig_driver(2, &[0], Arc::new(FakeMig::default()));
        let pools = d.inventory().unwrap();
        assert_eq!(pools.len(), 1);
        let pool = &pools[0];
        assert_eq!(pool.shared_counters.len(), 1, "one set, for the MIG GPU");
        let set = &pool.shared_counters[0];
        assert_eq!(set.name, "gpu-0");
        let counters: Vec<(&str, &str)> = set
            .counters
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_str()))
            .collect();
        assert_eq!(counters.len(), 9);
        assert_eq!(counters[0], ("memory-slice-0", "1"));
        assert_eq!(counters[7], ("memory-slice-7", "1"));
        assert_eq!(counters[8], ("compute-slices", "7"));
        // The full GPU, 7 + 4 + 3 + 2 + 1 + 1 partitions, and GPU 1 without MIG.
        assert_eq!(pool.devices.len(), 1 + 18 + 1);
        let dev = |name: &str| pool.devices.iter().find(|d| d.name == name).unwrap();
        let attr = |d: &Device, name: &str| d.attributes.iter().find(|a| a.name == name).map(|a| a.value.clone());
        let full = dev("gpu-0");
        assert_eq!(
            full.consumes_counters[0].counters.len(),
            9,
            "the full GPU takes everything"
        );
        assert!(!full.allow_multiple_allocations);
        let part = dev("gpu-0-mig-1g10gb-3");
        assert_eq!(attr(part, "profile"), Some(AttributeValue::Text("1g.10gb".into())));
        assert_eq!(
            attr(part, "parentUUID"),
            Some(AttributeValue::Text(d.node.gpus[0].uuid.clone()))
        );
        assert_eq!(attr(part, "type"), Some(AttributeValue::Text("mig".into())));
        assert_eq!(attr(part, NUMA_NODE), Some(AttributeValue::Integer(1)));
        assert_eq!(attr(full, NUMA_NODE), Some(AttributeValue::Integer(1)));
        assert_eq!(attr(dev("gpu-1"), NUMA_NODE), None, "NUMA node unknown");
        assert!(dev("gpu-1").consumes_counters.is_empty());
        let used: Vec<(&str, &str)> = part.consumes_counters[0]
            .counters
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_str()))
            .collect();
        assert_eq!(used, [("memory-slice-3", "1"), ("compute-slices", "1")]);
        assert_eq!(dev("gpu-0-mig-3g40gb-4").capacity[0].value, "40Gi");
        // Every device of a GPU declares its /dev/nvidiaN.
        for d in [full, part, dev("gpu-1")] {
            assert_eq!(d.node_resources.len(), 1, "{}", d.name);
        }
        assert_eq!(
            part.node_resources,
            [dra_driver_sdk::NodeResource::DeviceNode("/dev/nvidia0".into())]
        );
    }

    #[test]
    fn counters_admit_exactly_what_fits_on_the_gpu() {
        let d = mig_driver(1, &[0], Arc::new(FakeMig::default()));
        let pool = &d.inventory().unwrap()[0];
        let all_1g: Vec<String> = (0..7).map(|i| format!("gpu-0-mig-1g10gb-{i}")).collect();
        let all_1g: Vec<&str> = all_1g.iter().map(String::as_str).collect();
        assert!(fit(pool, &all_1g), "seven 1g.10gb");
        assert!(fit(pool, &["gpu-0-mig-3g40gb-0", "gpu-0-mig-3g40gb-4"]));
        assert!(fit(pool, &["gpu-0-mig-4g40gb-0", "gpu-0-mig-3g40gb-4"]));
        assert!(fit(
            pool,
            &["gpu-0-mig-4g40gb-0", "gpu-0-mig-2g20gb-4", "gpu-0-mig-1g20gb-6"]
        ));
        assert!(fit(pool, &["gpu-0"]));
        assert!(
            !fit(pool, &["gpu-0", "gpu-0-mig-1g10gb-6"]),
            "the full GPU and a partition"
        );
        assert!(
            !fit(pool, &["gpu-0-mig-3g40gb-0", "gpu-0-mig-1g10gb-3"]),
            "overlapping placements"
        );
        assert!(!fit(pool, &["gpu-0-mig-4g40gb-0", "gpu-0-mig-2g20gb-2"]));
        assert!(!fit(pool, &["gpu-0-mig-7g80gb-0", "gpu-0-mig-1g20gb-6"]));
    }

    #[test]
    fn more_than_eight_mig_gpus_spill_into_another_pool() {
        let mig: Vec<u32> = (0..10).collect();
        let d = mig_driver(10, &mig, Arc::new(FakeMig::default()));
        let pools = d.inventory().unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].shared_counters.len(), 8);
        assert_eq!(
            (pools[1].name.as_str(), pools[1].shared_counters.len()),
            ("node-a-mig-1", 2)
        );
        assert!(pools[1].devices.iter().any(|d| d.name == "gpu-9-mig-7g80gb-0"));
        let health = d.on_xid(&d.node.gpus[9].uuid, 79);
        assert_eq!(health.len(), 19, "the GPU and its partitions");
        assert!(health.iter().all(|h| h.pool == "node-a-mig-1"));
    }

    fn mig_claim(uid: &str, devices: &[&str]) -> AllocatedClaim {
        devices.iter().fold(AllocatedClaim::new("default", "c", uid), |c, d| {
            c.device("gpu", "node-a", d)
        })
    }

    #[test]
    fn preparing_a_partition_makes_its_mig_device_once() {
        let fake = Arc::new(FakeMig::default());
        let d = mig_driver(2, &[1], Arc::clone(&fake));
        let claim = mig_claim("uid-1", &["gpu-1-mig-2g20gb-2"]);
        let p = prepare(&d, claim.clone()).unwrap();
        let made = fake.devices(1).unwrap();
        assert_eq!(made.len(), 1);
        assert_eq!((made[0].profile_id, made[0].placement.start), (14, 2));
        let dev = &p.devices[0];
        assert!(has_env(dev, "DRA_GPU_1_MIG_2_UUID", &made[0].uuid));
        assert!(has_env(dev, "NVIDIA_VISIBLE_DEVICES", "void"));
        let nodes: Vec<&str> = dev.edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(nodes[0], "/dev/nvidia1", "the parent's node");
        assert_eq!(
            nodes.last(),
            Some(&made[0].device_nodes[0].as_str()),
            "its capabilities"
        );

        // A retried prepare finds the instance and makes no other.
        let again = prepare(&d, claim.clone()).unwrap();
        assert_eq!(fake.creates.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(has_env(&again.devices[0], "DRA_GPU_1_MIG_2_UUID", &made[0].uuid));

        d.unprepare(&claim.ref_, &p.state).unwrap();
        assert!(fake.devices(1).unwrap().is_empty(), "destroyed at unprepare");
        d.unprepare(&claim.ref_, &again.state).unwrap();
        // A stale unprepare leaves an instance made since for another claim.
        let other = prepare(&d, mig_claim("uid-2", &["gpu-1-mig-2g20gb-2"])).unwrap();
        d.unprepare(&claim.ref_, &p.state).unwrap();
        assert_eq!(fake.devices(1).unwrap().len(), 1, "the other claim's instance stays");
        drop(other);
    }

    #[test]
    fn a_busy_gpu_fails_prepare_naming_the_device_and_undoes_the_rest() {
        let fake = Arc::new(FakeMig {
            busy: [1].into(),
            ..FakeMig::default()
        });
        let d = mig_driver(2, &[0, 1], Arc::clone(&fake));
        let e = prepare(&d, mig_claim("uid-1", &["gpu-0-mig-3g40gb-0", "gpu-1-mig-1g10gb-0"])).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Busy, "{e}");
        assert!(e.message.contains("\"gpu-1-mig-1g10gb-0\""), "{e}");
        assert!(e.message.contains("busy"), "{e}");
        assert!(fake.devices(0).unwrap().is_empty(), "GPU 0's instance destroyed again");
        // Overlap with an instance the claim did not make.
        fake.create(0, 19, MigPlacement { start: 1, size: 1 }).unwrap();
        let e = prepare(&d, mig_claim("uid-2", &["gpu-0-mig-2g20gb-0"])).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Busy, "{e}");
        let base = GpuDriver::new(
            serde_json::from_str(r#"{"cdi": {"mode": "base-spec", "kind": "nvidia.com/gpu"}}"#).unwrap(),
            d.node.clone(),
            "node-a",
            fake,
        )
        .unwrap();
        let e = prepare(&base, mig_claim("uid-3", &["gpu-0-mig-1g10gb-6"])).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
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
