//! The `nvml` capability's own records, as the host keeps them (the
//! backends return them; `wit/v0_1/convert.rs` converts them at the
//! guest-call boundary). Field documentation is the contract's: see the
//! `nvml` interface in `wit/driver.wit`.

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
    Failed,
}
