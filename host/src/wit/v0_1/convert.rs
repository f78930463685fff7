//! Conversions between the host's types and their 0.1 WIT records, at the
//! guest-call boundary: the one place each is written. What the host sends
//! converts from the host's type; what a guest answers converts into it.
//! Records convert field by field, by value (no copies on the call path).

use super::dra::driver::{log, net, nvml, types};
use crate::claim::ClaimRef;
use crate::imports::log::Level;
use crate::imports::net::types as host_net;
use crate::imports::nvml::types as host_nvml;
use crate::model;
use crate::wit::shared::vec;

crate::wit::shared::common_conversions!();

// ---- What changed in 0.2 (0.1's shape) ----------------------------------

impl From<types::Device> for model::Device {
    fn from(d: types::Device) -> Self {
        Self {
            name: d.name,
            attributes: vec(d.attributes),
            capacity: vec(d.capacity),
            allow_multiple_allocations: d.allow_multiple_allocations,
            taints: vec(d.taints),
            consumes_counters: Vec::new(),
            binding: None,
            // 0.1 cannot declare ownership: the policy alone judges a 0.1
            // guest's answers, as it always did.
            node_resources: Vec::new(),
        }
    }
}

impl From<types::Pool> for model::Pool {
    fn from(p: types::Pool) -> Self {
        Self {
            name: p.name,
            devices: vec(p.devices),
            shared_counters: Vec::new(),
        }
    }
}

impl From<types::PreparedDevice> for model::PreparedDevice {
    fn from(d: types::PreparedDevice) -> Self {
        Self {
            pool: d.pool,
            device: d.device,
            share_id: d.share_id,
            edits: d.edits.into(),
            cdi_device_ids: d.cdi_device_ids,
            status: d.status.map(Into::into),
            metadata: None,
        }
    }
}

impl From<host_nvml::NvmlError> for nvml::NvmlError {
    fn from(e: host_nvml::NvmlError) -> Self {
        match e {
            host_nvml::NvmlError::NotAvailable => Self::NotAvailable,
            host_nvml::NvmlError::NotSupported => Self::NotSupported,
            host_nvml::NvmlError::NotFound => Self::NotFound,
            // 0.1 has no `in-use` (and no call that could answer it).
            host_nvml::NvmlError::InUse | host_nvml::NvmlError::Failed => Self::Failed,
        }
    }
}

impl From<host_nvml::GpuInfo> for nvml::GpuInfo {
    fn from(g: host_nvml::GpuInfo) -> Self {
        Self {
            index: g.index,
            uuid: g.uuid,
            product_name: g.product_name,
            brand: g.brand,
            architecture: g.architecture,
            cuda_compute_capability: g.cuda_compute_capability,
            memory_total_bytes: g.memory_total_bytes,
            pci: nvml::PciInfo {
                bus_id: g.pci.bus_id,
                device_id: g.pci.device_id,
                subsystem_id: g.pci.subsystem_id,
            },
            minor_number: g.minor_number,
            mig_enabled: g.mig_enabled,
        }
    }
}
