//! The `nvml` capability's own records, as the host keeps them (the
//! backends return them; each `wit/v0_*/convert.rs` converts them at the
//! guest-call boundary). Field documentation is the contract's: see the
//! `nvml` interface in `wit/v0.2/driver.wit`.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciInfo {
    /// e.g. `00000000:3B:00.0`.
    pub bus_id: String,
    pub device_id: u32,
    pub subsystem_id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub product_name: String,
    pub brand: String,
    pub architecture: String,
    pub cuda_compute_capability: (u32, u32),
    pub memory_total_bytes: u64,
    pub pci: PciInfo,
    /// N in /dev/nvidiaN.
    pub minor_number: u32,
    pub mig_enabled: bool,
    /// The NUMA node of the GPU's PCI device, when the platform reports one.
    pub numa_node: Option<u32>,
}

/// Where a MIG GPU instance sits on its GPU, in memory slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MigPlacement {
    pub start: u32,
    pub size: u32,
}

/// A MIG GPU instance profile a GPU supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigProfile {
    pub id: u32,
    /// e.g. `1g.10gb`.
    pub name: String,
    pub slice_count: u32,
    pub memory_bytes: u64,
    pub multiprocessors: u32,
    pub placements: Vec<MigPlacement>,
}

/// A MIG device: a GPU instance with its compute instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigDevice {
    pub gpu: u32,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
    pub profile_id: u32,
    pub placement: MigPlacement,
    pub uuid: String,
    /// Host device nodes besides the parent GPU's (`/dev/nvidia-caps/nvidia-capN`).
    pub device_nodes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverFileKind {
    Library,
    Binary,
    Firmware,
}

/// A user-space file of the installed NVIDIA driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverFile {
    pub kind: DriverFileKind,
    pub host_path: String,
    pub container_path: String,
}

/// Why an NVML query failed, as the guest is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvmlError {
    /// NVML is not available on this node (no driver or library).
    NotAvailable,
    NotSupported,
    NotFound,
    /// The GPU or the resources asked for are in use.
    InUse,
    Failed,
}
