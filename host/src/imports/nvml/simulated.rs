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
//! Events are injected by writing JSON lines to the events socket, e.g.
//! `{"uuid": "GPU-…", "kind": "xid-critical-error", "data": 79}`. Each line
//! is answered with `{"delivered": N}` (how many drivers received it) or
//! `{"error": "…"}`, so an injector knows when the host has the event.

use super::types::{DriverFile, GpuInfo, MigDevice, MigPlacement, MigProfile, NvmlError, PciInfo};
use super::{Backend, EventRouter};
use crate::model::{GpuEvent, GpuEventKind};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
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
}

#[derive(Debug, thiserror::Error)]
pub enum SimulatedError {
    #[error("simulated GPUs file {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("simulated GPUs file {}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
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
        })
    }
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
            numa_node: None,
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

    // MIG: not yet (issue 25, GPU guest on 0.2).
    fn mig_profiles(&self, _gpu: u32) -> Result<Vec<MigProfile>, NvmlError> {
        Err(NvmlError::NotSupported)
    }

    fn mig_devices(&self, _gpu: u32) -> Result<Vec<MigDevice>, NvmlError> {
        Err(NvmlError::NotSupported)
    }

    fn create_mig_device(&self, _gpu: u32, _profile_id: u32, _placement: MigPlacement) -> Result<MigDevice, NvmlError> {
        Err(NvmlError::NotSupported)
    }

    fn destroy_mig_device(&self, _gpu: u32, _gpu_instance_id: u32) -> Result<(), NvmlError> {
        Err(NvmlError::NotSupported)
    }

    fn start_events(&self, router: Arc<EventRouter>, _kinds: &[GpuEventKind]) -> Result<(), NvmlError> {
        let _ = self.router.set(router);
        Ok(())
    }
}
