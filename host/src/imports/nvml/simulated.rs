//! A simulated NVML for tests and the demo, enabled only by an explicit
//! `[nvml.simulated]` section in the host config.
//!
//! GPUs come from a JSON file:
//!
//! ```json
//! { "driverVersion": "580.159.04", "cudaDriverVersion": [13, 0],
//!   "gpus": [ { "uuid": "GPU-…", "productName": "NVIDIA H100 80GB HBM3", "brand": "Nvidia",
//!               "architecture": "Hopper", "cudaComputeCapability": [9, 0],
//!               "memoryTotalBytes": 85520809984, "pciBusId": "00000000:19:00.0",
//!               "minorNumber": 0 } ] }
//! ```
//!
//! Optional per GPU: `"numaNode": 1`; and MIG (`"migEnabled": true`):
//! `"migProfiles"` (default: an H100 80GB's, [`h100_80gb_profiles`]),
//! `"migDevices"` (instances that exist at start, e.g.
//! `[{"profileId": 19, "start": 3}]`) and `"migBusy": true` (every
//! creation fails `in-use`, as on a GPU another client holds). Instances
//! created and destroyed by drivers live in the host's memory: a restarted
//! host starts again from the file.
//!
//! Events are injected by writing JSON lines to the events socket, e.g.
//! `{"uuid": "GPU-…", "kind": "xid-critical-error", "data": 79}`. Each line
//! is answered with `{"delivered": N}` (how many drivers received it) or
//! `{"error": "…"}`, so an injector knows when the host has the event.

use super::types::{DriverFile, GpuInfo, MigDevice, MigPlacement, MigProfile, NvmlError, PciInfo};
use super::{Backend, EventRouter};
use crate::model::{GpuEvent, GpuEventKind};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GpusFile {
    driver_version: String,
    cuda_driver_version: (u32, u32),
    gpus: Vec<SimGpu>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SimGpu {
    uuid: String,
    product_name: String,
    #[serde(default = "default_brand")]
    brand: String,
    architecture: String,
    cuda_compute_capability: (u32, u32),
    memory_total_bytes: u64,
    pci_bus_id: String,
    minor_number: u32,
    #[serde(default)]
    mig_enabled: bool,
    #[serde(default)]
    numa_node: Option<u32>,
    /// The GPU instance profiles (with `migEnabled`); default: an H100 80GB's.
    #[serde(default)]
    mig_profiles: Option<Vec<SimProfile>>,
    /// Instances that exist when the host starts.
    #[serde(default)]
    mig_devices: Vec<SimInstance>,
    /// Every MIG creation fails `in-use`.
    #[serde(default)]
    mig_busy: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SimProfile {
    id: u32,
    name: String,
    slice_count: u32,
    memory_bytes: u64,
    multiprocessors: u32,
    /// (start, size) in memory slices.
    placements: Vec<(u32, u32)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SimInstance {
    profile_id: u32,
    start: u32,
}

const MIB: u64 = 1 << 20;

/// The GPU instance profiles of an H100 80GB HBM3, as `nvidia-smi mig -lgip`
/// lists them (the `+me` variants left out): NVML profile ID, compute
/// slices of 7, memory, multiprocessors, and placements in its 8 memory slices.
pub fn h100_80gb_profiles() -> Vec<MigProfile> {
    let profile = |id, name: &str, slice_count, memory_mib, multiprocessors, size, starts: &[u32]| MigProfile {
        id,
        name: name.to_owned(),
        slice_count,
        memory_bytes: memory_mib * MIB,
        multiprocessors,
        placements: starts.iter().map(|&start| MigPlacement { start, size }).collect(),
    };
    vec![
        profile(19, "1g.10gb", 1, 9_984, 16, 1, &[0, 1, 2, 3, 4, 5, 6]),
        profile(15, "1g.20gb", 1, 20_096, 26, 2, &[0, 2, 4, 6]),
        profile(14, "2g.20gb", 2, 20_096, 32, 2, &[0, 2, 4]),
        profile(9, "3g.40gb", 3, 40_448, 60, 4, &[0, 4]),
        profile(5, "4g.40gb", 4, 40_448, 64, 4, &[0]),
        profile(0, "7g.80gb", 7, 81_152, 132, 8, &[0]),
    ]
}

/// `/dev/nvidia-caps/nvidia-capN` of a GPU instance's and its compute
/// instance's `access` files: the minors the NVIDIA driver gives them (its
/// `/proc/driver/nvidia-caps/mig-minors`: 1 and 2 are `mig/config` and
/// `mig/monitor`, then per GPU minor 15 GPU instances of 1 + 8 entries each).
pub fn mig_cap_nodes(gpu_minor: u32, gpu_instance: u32, compute_instance: u32) -> Vec<String> {
    let gi = 3 + gpu_minor * 15 * 9 + gpu_instance * 9;
    vec![
        format!("/dev/nvidia-caps/nvidia-cap{gi}"),
        format!("/dev/nvidia-caps/nvidia-cap{}", gi + 1 + compute_instance),
    ]
}

/// One GPU's MIG state.
#[derive(Debug, Default)]
struct MigState {
    devices: Vec<MigDevice>,
    /// Instances created so far (a new instance gets a new UUID, as on hardware).
    created: u64,
}

fn default_brand() -> String {
    "Nvidia".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Injected {
    #[serde(default)]
    uuid: String,
    kind: String,
    #[serde(default)]
    data: u64,
}

#[derive(Debug)]
pub struct SimulatedNvml {
    file: GpusFile,
    driver_root: PathBuf,
    router: Arc<OnceLock<Arc<EventRouter>>>,
    /// Per GPU (by index).
    mig: Mutex<Vec<MigState>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulatedError {
    #[error("simulated GPUs file {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("simulated GPUs file {}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("simulated GPUs file {}: GPU {gpu}: {reason}", path.display())]
    Mig { path: PathBuf, gpu: usize, reason: String },
    #[error("simulated NVML events socket {}", path.display())]
    Socket { path: PathBuf, source: std::io::Error },
}

impl SimulatedNvml {
    /// Read the GPUs file and listen on the events socket (inside a tokio runtime).
    pub fn start(gpus: &Path, events_socket: &Path, driver_root: &Path) -> Result<Self, SimulatedError> {
        let text = std::fs::read(gpus).map_err(|source| SimulatedError::Read {
            path: gpus.to_owned(),
            source,
        })?;
        let file: GpusFile = serde_json::from_slice(&text).map_err(|source| SimulatedError::Parse {
            path: gpus.to_owned(),
            source,
        })?;
        let mig = initial_mig(&file).map_err(|(gpu, reason)| SimulatedError::Mig {
            path: gpus.to_owned(),
            gpu,
            reason,
        })?;
        let router: Arc<OnceLock<Arc<EventRouter>>> = Arc::new(OnceLock::new());
        let _ = std::fs::remove_file(events_socket);
        let listener = tokio::net::UnixListener::bind(events_socket).map_err(|source| SimulatedError::Socket {
            path: events_socket.to_owned(),
            source,
        })?;
        let r = Arc::clone(&router);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply = match inject(&r, &line) {
                            Ok(n) => format!("{{\"delivered\":{n}}}\n"),
                            Err(e) => format!("{}\n", serde_json::json!({ "error": e })),
                        };
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        tracing::warn!(
            gpus = file.gpus.len(), socket = %events_socket.display(),
            "SIMULATED NVML: GPUs come from {}; not for production", gpus.display()
        );
        Ok(Self {
            file,
            driver_root: driver_root.to_owned(),
            router,
            mig: Mutex::new(mig),
        })
    }

    fn gpu(&self, index: u32) -> Result<&SimGpu, NvmlError> {
        self.file.gpus.get(index as usize).ok_or(NvmlError::NotFound)
    }

    fn mig_state(&self) -> std::sync::MutexGuard<'_, Vec<MigState>> {
        self.mig.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimGpu {
    fn profiles(&self) -> Result<Vec<MigProfile>, NvmlError> {
        if !self.mig_enabled {
            return Err(NvmlError::NotSupported);
        }
        Ok(match &self.mig_profiles {
            Some(p) => p
                .iter()
                .map(|p| MigProfile {
                    id: p.id,
                    name: p.name.clone(),
                    slice_count: p.slice_count,
                    memory_bytes: p.memory_bytes,
                    multiprocessors: p.multiprocessors,
                    placements: p
                        .placements
                        .iter()
                        .map(|&(start, size)| MigPlacement { start, size })
                        .collect(),
                })
                .collect(),
            None => h100_80gb_profiles(),
        })
    }
}

/// The instances the file says exist at start.
fn initial_mig(file: &GpusFile) -> Result<Vec<MigState>, (usize, String)> {
    let mut all = Vec::with_capacity(file.gpus.len());
    for (i, g) in file.gpus.iter().enumerate() {
        let mut state = MigState::default();
        for d in &g.mig_devices {
            let profiles = g
                .profiles()
                .map_err(|_| (i, "migDevices on a GPU without migEnabled".to_owned()))?;
            let placement = profiles
                .iter()
                .find(|p| p.id == d.profile_id)
                .and_then(|p| p.placements.iter().find(|pl| pl.start == d.start))
                .copied()
                .ok_or_else(|| (i, format!("no profile {} placement at {}", d.profile_id, d.start)))?;
            create(&mut state, g, i as u32, d.profile_id, placement).map_err(|e| (i, format!("{e:?}")))?;
        }
        all.push(state);
    }
    Ok(all)
}

/// Create a GPU instance with one compute instance (ID 0) spanning it:
/// the lowest free GPU instance ID from 1, `InUse` when the placement
/// overlaps an existing instance.
fn create(
    state: &mut MigState,
    g: &SimGpu,
    index: u32,
    profile_id: u32,
    placement: MigPlacement,
) -> Result<MigDevice, NvmlError> {
    let overlaps = |p: &MigPlacement| p.start < placement.start + placement.size && placement.start < p.start + p.size;
    if state.devices.iter().any(|d| overlaps(&d.placement)) {
        return Err(NvmlError::InUse);
    }
    let gpu_instance_id = (1..15)
        .find(|id| state.devices.iter().all(|d| d.gpu_instance_id != *id))
        .ok_or(NvmlError::InUse)?;
    state.created += 1;
    let device = MigDevice {
        gpu: index,
        gpu_instance_id,
        compute_instance_id: 0,
        profile_id,
        placement,
        uuid: format!("MIG-{index:08x}-{gpu_instance_id:04x}-4d16-a000-{:012x}", state.created),
        device_nodes: mig_cap_nodes(g.minor_number, gpu_instance_id, 0),
    };
    state.devices.push(device.clone());
    Ok(device)
}

fn inject(router: &OnceLock<Arc<EventRouter>>, line: &str) -> Result<usize, String> {
    let e: Injected = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let kind = match e.kind.as_str() {
        "xid-critical-error" => GpuEventKind::XidCriticalError,
        "double-bit-ecc-error" => GpuEventKind::DoubleBitEccError,
        "single-bit-ecc-error" => GpuEventKind::SingleBitEccError,
        "pstate-change" => GpuEventKind::PstateChange,
        "clock-change" => GpuEventKind::ClockChange,
        "power-source-change" => GpuEventKind::PowerSourceChange,
        other => return Err(format!("unknown event kind {other:?}")),
    };
    let Some(router) = router.get() else { return Ok(0) };
    Ok(router.deliver(GpuEvent {
        uuid: e.uuid,
        kind,
        data: e.data,
    }))
}

const KINDS: &[GpuEventKind] = &[
    GpuEventKind::XidCriticalError,
    GpuEventKind::DoubleBitEccError,
    GpuEventKind::SingleBitEccError,
    GpuEventKind::PstateChange,
    GpuEventKind::ClockChange,
    GpuEventKind::PowerSourceChange,
];

impl Backend for SimulatedNvml {
    fn driver_version(&self) -> Result<String, NvmlError> {
        Ok(self.file.driver_version.clone())
    }

    fn cuda_driver_version(&self) -> Result<(u32, u32), NvmlError> {
        Ok(self.file.cuda_driver_version)
    }

    fn device_count(&self) -> Result<u32, NvmlError> {
        u32::try_from(self.file.gpus.len()).map_err(|_| NvmlError::Failed)
    }

    fn device_info(&self, index: u32) -> Result<GpuInfo, NvmlError> {
        let g = self.file.gpus.get(index as usize).ok_or(NvmlError::NotFound)?;
        Ok(GpuInfo {
            index,
            uuid: g.uuid.clone(),
            product_name: g.product_name.clone(),
            brand: g.brand.clone(),
            architecture: g.architecture.clone(),
            cuda_compute_capability: g.cuda_compute_capability,
            memory_total_bytes: g.memory_total_bytes,
            pci: PciInfo {
                bus_id: g.pci_bus_id.clone(),
                device_id: 0,
                subsystem_id: 0,
            },
            minor_number: g.minor_number,
            mig_enabled: g.mig_enabled,
            numa_node: g.numa_node,
        })
    }

    fn driver_files(&self) -> Result<Vec<DriverFile>, NvmlError> {
        Ok(super::real::find_driver_files(
            &self.driver_root,
            &self.file.driver_version,
        ))
    }

    fn event_kinds(&self) -> &'static [GpuEventKind] {
        KINDS
    }

    fn mig_profiles(&self, gpu: u32) -> Result<Vec<MigProfile>, NvmlError> {
        self.gpu(gpu)?.profiles()
    }

    fn mig_devices(&self, gpu: u32) -> Result<Vec<MigDevice>, NvmlError> {
        self.gpu(gpu)?.profiles()?;
        Ok(self.mig_state()[gpu as usize].devices.clone())
    }

    fn create_mig_device(&self, gpu: u32, profile_id: u32, placement: MigPlacement) -> Result<MigDevice, NvmlError> {
        let g = self.gpu(gpu)?;
        let profiles = g.profiles()?;
        // NVML answers an unknown profile or placement with invalid-argument.
        let profile = profiles
            .iter()
            .find(|p| p.id == profile_id)
            .ok_or(NvmlError::NotFound)?;
        if !profile.placements.contains(&placement) {
            return Err(NvmlError::NotFound);
        }
        if g.mig_busy {
            return Err(NvmlError::InUse);
        }
        let device = create(&mut self.mig_state()[gpu as usize], g, gpu, profile_id, placement)?;
        tracing::info!(gpu, gi = device.gpu_instance_id, profile = %profile.name, start = placement.start, uuid = %device.uuid, "simulated MIG device created");
        Ok(device)
    }

    fn destroy_mig_device(&self, gpu: u32, gpu_instance_id: u32) -> Result<(), NvmlError> {
        self.gpu(gpu)?.profiles()?;
        let mut state = self.mig_state();
        let devices = &mut state[gpu as usize].devices;
        let at = devices
            .iter()
            .position(|d| d.gpu_instance_id == gpu_instance_id)
            .ok_or(NvmlError::NotFound)?;
        let gone = devices.remove(at);
        tracing::info!(gpu, gi = gpu_instance_id, uuid = %gone.uuid, "simulated MIG device destroyed");
        Ok(())
    }

    fn start_events(&self, router: Arc<EventRouter>, _kinds: &[GpuEventKind]) -> Result<(), NvmlError> {
        let _ = self.router.set(router);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated NVML from a GPUs file's text, without the events socket.
    fn sim(json: serde_json::Value) -> SimulatedNvml {
        let file: GpusFile = serde_json::from_value(json).unwrap();
        let mig = initial_mig(&file).unwrap();
        SimulatedNvml {
            file,
            driver_root: PathBuf::from("/"),
            router: Arc::new(OnceLock::new()),
            mig: Mutex::new(mig),
        }
    }

    fn gpu(minor: u32, extra: serde_json::Value) -> serde_json::Value {
        let mut g = serde_json::json!({
            "uuid": format!("GPU-{minor}"), "productName": "NVIDIA H100 80GB HBM3",
            "architecture": "Hopper", "cudaComputeCapability": [9, 0],
            "memoryTotalBytes": 85_520_809_984u64, "pciBusId": "00000000:19:00.0", "minorNumber": minor,
        });
        g.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        g
    }

    fn file(gpus: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::json!({ "driverVersion": "580.159.04", "cudaDriverVersion": [13, 0], "gpus": gpus })
    }

    const AT: fn(u32, u32) -> MigPlacement = |start, size| MigPlacement { start, size };

    #[test]
    fn h100_profiles_fill_eight_memory_slices() {
        let profiles = h100_80gb_profiles();
        let names: Vec<_> = profiles.iter().map(|p| (p.id, p.name.as_str())).collect();
        assert_eq!(
            names,
            [
                (19, "1g.10gb"),
                (15, "1g.20gb"),
                (14, "2g.20gb"),
                (9, "3g.40gb"),
                (5, "4g.40gb"),
                (0, "7g.80gb")
            ]
        );
        for p in &profiles {
            assert!(p.placements.iter().all(|pl| pl.start + pl.size <= 8), "{p:?}");
        }
        assert_eq!(profiles[0].placements.len(), 7);
        assert_eq!(profiles[3].placements, [AT(0, 4), AT(4, 4)]);
        assert_eq!(
            mig_cap_nodes(0, 1, 0),
            ["/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"]
        );
        assert_eq!(mig_cap_nodes(1, 0, 0)[0], "/dev/nvidia-caps/nvidia-cap138");
    }

    #[test]
    fn mig_create_overlap_busy_destroy() {
        let s = sim(file(vec![
            gpu(0, serde_json::json!({})),
            gpu(
                1,
                serde_json::json!({"migEnabled": true, "numaNode": 1, "migDevices": [{"profileId": 9, "start": 4}]}),
            ),
            gpu(2, serde_json::json!({"migEnabled": true, "migBusy": true})),
        ]));
        assert_eq!(s.device_info(0).unwrap().numa_node, None);
        assert_eq!(s.device_info(1).unwrap().numa_node, Some(1));
        assert_eq!(s.mig_profiles(0), Err(NvmlError::NotSupported), "MIG off");
        assert_eq!(s.create_mig_device(0, 19, AT(0, 1)), Err(NvmlError::NotSupported));
        assert_eq!(s.mig_profiles(9), Err(NvmlError::NotFound));

        let existing = s.mig_devices(1).unwrap();
        assert_eq!(existing.len(), 1);
        assert_eq!((existing[0].gpu_instance_id, existing[0].placement), (1, AT(4, 4)));
        // The 3g.40gb at 4..8 takes slices 4-7: a 1g.10gb at 5 overlaps it.
        assert_eq!(s.create_mig_device(1, 19, AT(5, 1)), Err(NvmlError::InUse));
        assert_eq!(
            s.create_mig_device(1, 19, AT(7, 1)),
            Err(NvmlError::NotFound),
            "not a placement"
        );
        assert_eq!(
            s.create_mig_device(1, 77, AT(0, 1)),
            Err(NvmlError::NotFound),
            "no such profile"
        );
        let d = s.create_mig_device(1, 14, AT(2, 2)).unwrap();
        assert_eq!((d.gpu, d.gpu_instance_id, d.compute_instance_id), (1, 2, 0));
        assert!(d.uuid.starts_with("MIG-"), "{}", d.uuid);
        assert_eq!(d.device_nodes, mig_cap_nodes(1, 2, 0));
        assert_eq!(
            s.create_mig_device(1, 14, AT(2, 2)),
            Err(NvmlError::InUse),
            "already there"
        );
        assert_eq!(s.mig_devices(1).unwrap().len(), 2);

        s.destroy_mig_device(1, 2).unwrap();
        assert_eq!(s.destroy_mig_device(1, 2), Err(NvmlError::NotFound), "gone");
        let again = s.create_mig_device(1, 14, AT(2, 2)).unwrap();
        assert_eq!(again.gpu_instance_id, 2, "the lowest free ID again");
        assert_ne!(again.uuid, d.uuid, "a new instance, a new UUID");

        assert_eq!(s.create_mig_device(2, 19, AT(0, 1)), Err(NvmlError::InUse), "migBusy");
        assert!(s.mig_devices(2).unwrap().is_empty());
    }

    #[test]
    fn a_file_with_impossible_instances_is_refused() {
        let f: GpusFile = serde_json::from_value(file(vec![gpu(
            0,
            serde_json::json!({"migEnabled": true, "migDevices": [{"profileId": 9, "start": 0}, {"profileId": 19, "start": 1}]}),
        )]))
        .unwrap();
        assert!(initial_mig(&f).unwrap_err().1.contains("InUse"));
        let f: GpusFile = serde_json::from_value(file(vec![gpu(
            0,
            serde_json::json!({"migDevices": [{"profileId": 9, "start": 0}]}),
        )]))
        .unwrap();
        assert!(initial_mig(&f).unwrap_err().1.contains("migEnabled"));
    }
}
