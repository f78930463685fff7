//! MIG: a GPU in MIG mode published as partitionable devices (its counter
//! set, and a device per profile and placement consuming the memory slices
//! it covers), and the MIG devices that preparing a partition makes and
//! unpreparing it destroys, through the host's `nvml` import.

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct StateMig {
    pub(super) gpu: u32,
    pub(super) gpu_instance: u32,
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

impl GpuDriver {
    /// The whole of a GPU in MIG mode, as the partition that spans it (the
    /// profile placed at slice 0 over every memory slice: 7g.80gb on an
    /// H100). With MIG mode on, CUDA sees a GPU only through its MIG
    /// devices, so preparing the whole GPU makes that one. Only in mounts
    /// mode: in base-spec mode the whole GPU is the operator's spec's
    /// device, as before.
    pub(super) fn whole_gpu_partition(&self, device: &str) -> Option<Partition> {
        if !matches!(self.config.cdi, CdiMode::Mounts) {
            return None;
        }
        let gpu = self.gpu(device).filter(|g| g.mig_enabled)?;
        let profiles = self.node.mig.get(&gpu.index)?;
        let slices = memory_slices(profiles);
        profiles.iter().find_map(|profile| {
            let placement = *profile.placements.iter().find(|p| p.start == 0 && p.size == slices)?;
            Some(Partition {
                gpu: gpu.index,
                profile: profile.clone(),
                placement,
            })
        })
    }

    /// A MIG partition: its profile at one placement, drawing on its GPU's
    /// counter set.
    pub(super) fn partition_device(&self, name: &str, g: &GpuInfo, p: &Partition) -> Device {
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

    /// A MIG partition: its MIG device, made unless one of the same profile
    /// already sits at the placement (a retried prepare).
    pub(super) fn prepare_partition(
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
    pub(super) fn undo(&self, created: &[StateMig]) {
        for m in created {
            if let Err(e) = self.mig_ops.destroy(m.gpu, m.gpu_instance) {
                dra_driver_sdk::log::warn(&format!("undoing a failed prepare: {e}"));
            }
        }
    }

    /// Destroy the MIG device a prepare made for `device`, if it is still
    /// the one with `uuid` (gone, or replaced by another: nothing to do).
    pub(super) fn destroy_mig(&self, device: &str, m: &StateMig, uuid: &str) -> Result<()> {
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
}
