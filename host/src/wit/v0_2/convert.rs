//! Conversions between the host's types and their 0.2 WIT records, at the
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

// ---- What 0.2 changed ---------------------------------------------------

impl From<types::Device> for model::Device {
    fn from(d: types::Device) -> Self {
        Self {
            name: d.name,
            attributes: vec(d.attributes),
            capacity: vec(d.capacity),
            allow_multiple_allocations: d.allow_multiple_allocations,
            taints: vec(d.taints),
            consumes_counters: vec(d.consumes_counters),
            binding: d.binding.map(Into::into),
            node_resources: vec(d.node_resources),
        }
    }
}

impl From<types::Pool> for model::Pool {
    fn from(p: types::Pool) -> Self {
        Self {
            name: p.name,
            devices: vec(p.devices),
            shared_counters: vec(p.shared_counters),
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
            metadata: d.metadata.map(Into::into),
        }
    }
}

impl From<host_nvml::NvmlError> for nvml::NvmlError {
    fn from(e: host_nvml::NvmlError) -> Self {
        match e {
            host_nvml::NvmlError::NotAvailable => Self::NotAvailable,
            host_nvml::NvmlError::NotSupported => Self::NotSupported,
            host_nvml::NvmlError::NotFound => Self::NotFound,
            host_nvml::NvmlError::InUse => Self::InUse,
            host_nvml::NvmlError::Failed => Self::Failed,
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
            numa_node: g.numa_node,
        }
    }
}

impl From<types::Counter> for model::Counter {
    fn from(c: types::Counter) -> Self {
        Self {
            name: c.name,
            value: c.value,
        }
    }
}

impl From<types::CounterSet> for model::CounterSet {
    fn from(c: types::CounterSet) -> Self {
        Self {
            name: c.name,
            counters: vec(c.counters),
        }
    }
}

impl From<types::CounterConsumption> for model::CounterConsumption {
    fn from(c: types::CounterConsumption) -> Self {
        Self {
            counter_set: c.counter_set,
            counters: vec(c.counters),
        }
    }
}

impl From<types::BindingConditions> for model::BindingConditions {
    fn from(b: types::BindingConditions) -> Self {
        Self {
            conditions: b.conditions,
            failure_conditions: b.failure_conditions,
            binds_to_node: b.binds_to_node,
        }
    }
}

impl From<types::NodeResource> for model::NodeResource {
    fn from(r: types::NodeResource) -> Self {
        match r {
            types::NodeResource::DeviceNode(path) => Self::DeviceNode(path),
            types::NodeResource::HostInterface(name) => Self::HostInterface(name),
        }
    }
}

impl From<types::DeviceMetadata> for model::DeviceMetadata {
    fn from(m: types::DeviceMetadata) -> Self {
        Self {
            attributes: vec(m.attributes),
            network_data: m.network_data.map(Into::into),
        }
    }
}

// ---- nvml: MIG (new in 0.2) ---------------------------------------------

impl From<host_nvml::MigPlacement> for nvml::MigPlacement {
    fn from(p: host_nvml::MigPlacement) -> Self {
        Self {
            start: p.start,
            size: p.size,
        }
    }
}

impl From<nvml::MigPlacement> for host_nvml::MigPlacement {
    fn from(p: nvml::MigPlacement) -> Self {
        Self {
            start: p.start,
            size: p.size,
        }
    }
}

impl From<host_nvml::MigProfile> for nvml::MigProfile {
    fn from(p: host_nvml::MigProfile) -> Self {
        Self {
            id: p.id,
            name: p.name,
            slice_count: p.slice_count,
            memory_bytes: p.memory_bytes,
            multiprocessors: p.multiprocessors,
            placements: vec(p.placements),
        }
    }
}

impl From<host_nvml::MigDevice> for nvml::MigDevice {
    fn from(d: host_nvml::MigDevice) -> Self {
        Self {
            gpu: d.gpu,
            gpu_instance_id: d.gpu_instance_id,
            compute_instance_id: d.compute_instance_id,
            profile_id: d.profile_id,
            placement: d.placement.into(),
            uuid: d.uuid,
            device_nodes: d.device_nodes,
        }
    }
}
