//! NVML through nvml-wrapper, with `libnvidia-ml.so.1` loaded at run time.
//!
//! Events: one thread blocks in `nvmlEventSetWait` on an event set holding
//! every GPU's critical events (Xid, double- and single-bit ECC). It wakes
//! only when the driver reports an event, or every few seconds to notice
//! that the process is stopping; it never queries devices on a timer.
//!
//! MIG: nvml-wrapper 0.13 wraps MIG mode and MIG device handles but not GPU
//! or compute instances, so [`mig`] calls those few functions of
//! nvml-wrapper-sys on the wrapper's loaded library, each `unsafe` block a
//! single call with pointers to locals.

use super::types::{DriverFile, DriverFileKind, GpuInfo, MigDevice, MigPlacement, MigProfile, NvmlError, PciInfo};
use super::{Backend, EventRouter};
use crate::model::{GpuEvent, GpuEventKind};
use nvml_wrapper::Nvml as Lib;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError as LibError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const WAIT_MS: u32 = 5_000;
const KINDS: &[GpuEventKind] = &[
    GpuEventKind::XidCriticalError,
    GpuEventKind::DoubleBitEccError,
    GpuEventKind::SingleBitEccError,
];

/// The real NVML, or the reason it could not be loaded.
#[derive(Debug)]
pub struct RealNvml {
    lib: Result<&'static Lib, LibError>,
    driver_root: PathBuf,
}

impl RealNvml {
    /// Load libnvidia-ml. Never fails: without the library every call
    /// answers `not-available` and the reason is logged once here.
    pub fn load(driver_root: &Path) -> Self {
        // The driver root's copy first: under the GPU operator the library
        // is only there (/run/nvidia/driver), never on the image's own path.
        let found = nvml_library(driver_root);
        let loaded = match &found {
            Some(path) => {
                tracing::info!(library = %path.display(), "loading NVML from the driver root");
                Lib::builder().lib_path(path.as_os_str()).init()
            }
            None => {
                tracing::info!(driver_root = %driver_root.display(), "no libnvidia-ml.so.1 under the driver root; loading it from the library path");
                Lib::init()
            }
        };
        let lib = match loaded {
            // NVML lives as long as the process: leaking the handle lets the
            // event thread and every call borrow it for 'static.
            Ok(lib) => Ok(&*Box::leak(Box::new(lib))),
            Err(e) => {
                tracing::warn!(error = %e, "NVML is not available on this node; GPU guests will fail to initialise");
                Err(e)
            }
        };
        Self {
            lib,
            driver_root: driver_root.to_owned(),
        }
    }

    fn lib(&self) -> Result<&'static Lib, NvmlError> {
        self.lib.as_ref().copied().map_err(|_| NvmlError::NotAvailable)
    }
}

fn map(e: LibError) -> NvmlError {
    match e {
        LibError::NotSupported => NvmlError::NotSupported,
        LibError::InUse => NvmlError::InUse,
        LibError::UnexpectedVariant(code)
            if code == nvml_wrapper_sys::bindings::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES =>
        {
            NvmlError::InUse
        }
        LibError::NotFound | LibError::InvalidArg => NvmlError::NotFound,
        LibError::LibloadingError(_)
        | LibError::LibraryNotFound
        | LibError::DriverNotLoaded
        | LibError::Uninitialized => NvmlError::NotAvailable,
        other => {
            tracing::debug!(error = %other, "NVML call failed");
            NvmlError::Failed
        }
    }
}

impl Backend for RealNvml {
    fn driver_version(&self) -> Result<String, NvmlError> {
        self.lib()?.sys_driver_version().map_err(map)
    }

    fn cuda_driver_version(&self) -> Result<(u32, u32), NvmlError> {
        let v = self.lib()?.sys_cuda_driver_version().map_err(map)?;
        let major = nvml_wrapper::cuda_driver_version_major(v);
        let minor = nvml_wrapper::cuda_driver_version_minor(v);
        Ok((u32::try_from(major).unwrap_or(0), u32::try_from(minor).unwrap_or(0)))
    }

    fn device_count(&self) -> Result<u32, NvmlError> {
        self.lib()?.device_count().map_err(map)
    }

    fn device_info(&self, index: u32) -> Result<GpuInfo, NvmlError> {
        let d = self.lib()?.device_by_index(index).map_err(map)?;
        let cc = d.cuda_compute_capability().map_err(map)?;
        let pci = d.pci_info().map_err(map)?;
        let numa_node = numa_node(Path::new(SYSFS_PCI), &pci.bus_id);
        let mig_enabled = match d.mig_mode() {
            Ok(m) => m.current == 1,
            Err(LibError::NotSupported) => false,
            Err(e) => return Err(map(e)),
        };
        Ok(GpuInfo {
            index,
            uuid: d.uuid().map_err(map)?,
            product_name: d.name().map_err(map)?,
            brand: d.brand().map(|b| format!("{b:?}")).map_err(map)?,
            architecture: d.architecture().map(|a| a.to_string()).map_err(map)?,
            cuda_compute_capability: (
                u32::try_from(cc.major).unwrap_or(0),
                u32::try_from(cc.minor).unwrap_or(0),
            ),
            memory_total_bytes: d.memory_info().map_err(map)?.total,
            pci: PciInfo {
                bus_id: pci.bus_id,
                device_id: pci.pci_device_id,
                subsystem_id: pci.pci_sub_system_id.unwrap_or(0),
            },
            minor_number: d.minor_number().map_err(map)?,
            numa_node,
            mig_enabled,
        })
    }

    fn driver_files(&self) -> Result<Vec<DriverFile>, NvmlError> {
        let version = self.driver_version()?;
        Ok(find_driver_files(&self.driver_root, &version))
    }

    fn event_kinds(&self) -> &'static [GpuEventKind] {
        KINDS
    }

    fn mig_profiles(&self, gpu: u32) -> Result<Vec<MigProfile>, NvmlError> {
        let lib = self.lib()?;
        let d = lib.device_by_index(gpu).map_err(map)?;
        mig::profiles(lib, &d)
    }

    fn mig_devices(&self, gpu: u32) -> Result<Vec<MigDevice>, NvmlError> {
        let lib = self.lib()?;
        let d = lib.device_by_index(gpu).map_err(map)?;
        mig::devices(lib, &d, gpu)
    }

    fn create_mig_device(&self, gpu: u32, profile_id: u32, placement: MigPlacement) -> Result<MigDevice, NvmlError> {
        let lib = self.lib()?;
        let d = lib.device_by_index(gpu).map_err(map)?;
        let gi = mig::create(lib, &d, profile_id, placement)?;
        mig::devices(lib, &d, gpu)?
            .into_iter()
            .find(|m| m.gpu_instance_id == gi)
            .ok_or(NvmlError::Failed)
    }

    fn destroy_mig_device(&self, gpu: u32, gpu_instance_id: u32) -> Result<(), NvmlError> {
        let lib = self.lib()?;
        let d = lib.device_by_index(gpu).map_err(map)?;
        mig::destroy(lib, &d, gpu_instance_id)
    }

    fn start_events(&self, router: Arc<EventRouter>, _kinds: &[GpuEventKind]) -> Result<(), NvmlError> {
        let lib = self.lib()?;
        let mut set = lib.create_event_set().map_err(map)?;
        let count = lib.device_count().map_err(map)?;
        let wanted =
            EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR | EventTypes::SINGLE_BIT_ECC_ERROR;
        let mut registered = 0;
        for i in 0..count {
            let device = lib.device_by_index(i).map_err(map)?;
            let supported = device.supported_event_types().map_err(map)?;
            let types = supported & wanted;
            if types.is_empty() {
                tracing::warn!(index = i, "GPU supports none of the critical NVML events");
                continue;
            }
            set = device.register_events(types, set).map_err(|e| map(e.error))?;
            tracing::info!(index = i, events = ?types, "watching NVML events");
            registered += 1;
        }
        std::thread::Builder::new()
            .name("nvml-events".into())
            .spawn(move || event_loop(set, router))
            .map_err(|_| NvmlError::Failed)?;
        tracing::info!(gpus = registered, "NVML event thread started");
        Ok(())
    }
}

fn event_loop(set: nvml_wrapper::event::EventSet<'static>, router: Arc<EventRouter>) {
    loop {
        match set.wait(WAIT_MS) {
            Ok(data) => {
                let uuid = data.device.uuid().unwrap_or_default();
                let types = data.event_type;
                let deliver = |kind, value| {
                    router.deliver(GpuEvent {
                        uuid: uuid.clone(),
                        kind,
                        data: value,
                    });
                };
                if types.contains(EventTypes::CRITICAL_XID_ERROR) {
                    let xid = match data.event_data {
                        Some(XidError::Value(v)) => v,
                        _ => 0,
                    };
                    deliver(GpuEventKind::XidCriticalError, xid);
                }
                if types.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                    deliver(GpuEventKind::DoubleBitEccError, 0);
                }
                if types.contains(EventTypes::SINGLE_BIT_ECC_ERROR) {
                    deliver(GpuEventKind::SingleBitEccError, 0);
                }
            }
            Err(LibError::Timeout) => {}
            Err(e) => {
                tracing::error!(error = %e, "waiting for NVML events failed; GPU health events stop");
                return;
            }
        }
    }
}

const SYSFS_PCI: &str = "/sys/bus/pci/devices";

/// NVML's bus ID (`00000000:3B:00.0`, an 8-digit domain) as the kernel
/// names the PCI device (`0000:3b:00.0`).
fn sysfs_pci_address(bus_id: &str) -> Option<String> {
    let (domain, rest) = bus_id.split_once(':')?;
    let domain = u32::from_str_radix(domain, 16).ok()?;
    if rest.len() != 7 || !rest.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
        return None;
    }
    Some(format!("{domain:04x}:{}", rest.to_ascii_lowercase()))
}

/// The NUMA node of the GPU's PCI device from sysfs (`-1`: none).
fn numa_node(sysfs_pci: &Path, bus_id: &str) -> Option<u32> {
    let text = std::fs::read_to_string(sysfs_pci.join(sysfs_pci_address(bus_id)?).join("numa_node")).ok()?;
    u32::try_from(text.trim().parse::<i64>().ok()?).ok()
}

/// The minor of `/dev/nvidia-caps/nvidia-capN` from a capability's `access`
/// file (`DeviceFileMinor: N`).
fn cap_minor(access: &str) -> Option<u32> {
    access
        .lines()
        .find_map(|l| l.strip_prefix("DeviceFileMinor:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The device nodes of a MIG device: its GPU instance's and compute
/// instance's capabilities under `/proc/driver/nvidia/capabilities`.
fn mig_cap_nodes(capabilities: &Path, gpu_minor: u32, gi: u32, ci: u32) -> Vec<String> {
    let gi_dir = capabilities.join(format!("gpu{gpu_minor}/mig/gi{gi}"));
    [gi_dir.join("access"), gi_dir.join(format!("ci{ci}/access"))]
        .iter()
        .filter_map(|f| cap_minor(&std::fs::read_to_string(f).ok()?))
        .map(|n| format!("/dev/nvidia-caps/nvidia-cap{n}"))
        .collect()
}

mod mig;

/// Library name prefixes of the NVIDIA user-space driver that CUDA and
/// monitoring workloads need (the core of what NVIDIA's container toolkit
/// mounts), and the tools.
const LIBRARIES: &[&str] = &[
    "libcuda.so.",
    "libcudadebugger.so.",
    "libnvidia-ml.so.",
    "libnvidia-ptxjitcompiler.so.",
    "libnvidia-nvvm.so.",
    "libnvidia-gpucomp.so.",
    "libnvidia-allocator.so.",
    "libnvidia-cfg.so.",
    "libnvidia-opencl.so.",
];
const BINARIES: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];
/// Relative to the driver root: distribution layouts, and the flat
/// `lib64/` + `bin/` layout of a driver mounted at e.g. /usr/local/nvidia.
/// Not `lib/` or `usr/lib/`: on multilib systems they hold 32-bit copies.
const LIBRARY_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "usr/lib64",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
];
const BINARY_DIRS: &[&str] = &["usr/bin", "usr/local/bin", "bin"];

/// `libnvidia-ml.so.1` in one of the driver root's library directories.
fn nvml_library(root: &Path) -> Option<PathBuf> {
    LIBRARY_DIRS
        .iter()
        .map(|dir| root.join(dir).join("libnvidia-ml.so.1"))
        .find(|path| path.exists())
}

/// Find the driver's files under `root` (a bounded listing of a few
/// well-known directories; symlinks are not followed out of the root).
pub fn find_driver_files(root: &Path, driver_version: &str) -> Vec<DriverFile> {
    let mut files = Vec::new();
    // One entry per real file: a directory that is a symlink to another
    // (lib -> lib64) must not offer each file twice.
    let mut seen = std::collections::HashSet::new();
    let mut add = |kind, dir: &str, name: &str| {
        let rel = format!("/{dir}/{name}");
        let host = root.join(dir).join(name);
        // Resolve the host path to a regular file inside the root.
        let Ok(real) = std::fs::canonicalize(&host) else { return };
        let Ok(root_real) = std::fs::canonicalize(root) else {
            return;
        };
        if !real.starts_with(&root_real) || !real.is_file() || !seen.insert(real) {
            return;
        }
        files.push(DriverFile {
            kind,
            host_path: host.to_string_lossy().into_owned(),
            container_path: rel,
        });
    };
    for dir in LIBRARY_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // The versioned file itself (e.g. libcuda.so.580.159.04).
            if LIBRARIES
                .iter()
                .any(|p| name.starts_with(p) && name.ends_with(driver_version))
            {
                add(DriverFileKind::Library, dir, &name);
            }
        }
    }
    for dir in BINARY_DIRS {
        for name in BINARIES {
            add(DriverFileKind::Binary, dir, name);
        }
    }
    let firmware = format!("lib/firmware/nvidia/{driver_version}");
    if let Ok(entries) = std::fs::read_dir(root.join(&firmware)) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".bin") {
                add(DriverFileKind::Firmware, &firmware, &name);
            }
        }
    }
    files
}

#[cfg(test)]
mod tests;
