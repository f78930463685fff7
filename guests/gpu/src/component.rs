//! The `dra:driver/device-driver` export for GPUs, over the host's `nvml` import.

use crate::logic;
use std::cell::RefCell;

wit_bindgen::generate!({
    world: "gpu-driver",
    path: "../../wit",
});

use dra::driver::log::{Level, log};
use dra::driver::nvml;
use dra::driver::types::{
    Attribute, AttributeValue, Capacity, CapacityRange, Claim, ClaimRef, ContainerEdits, Device, DeviceHealth,
    DeviceNode, DriverError, DriverInfo, EnvVar, ErrorKind, Event, GpuEventKind, HealthStatus, InitContext, Mount,
    Pool, PreparedClaim, PreparedDevice, RequestPolicy,
};

thread_local! {
    static DRIVER: RefCell<Option<(logic::Driver, String)>> = const { RefCell::new(None) };
}

struct GpuDriver;

fn error(e: logic::Error) -> DriverError {
    DriverError {
        kind: match e.kind {
            logic::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
            logic::ErrorKind::InvalidClaim => ErrorKind::InvalidClaim,
            logic::ErrorKind::Internal => ErrorKind::Internal,
        },
        message: e.message,
    }
}

fn nvml_error(what: &str, e: nvml::NvmlError) -> DriverError {
    let (kind, reason) = match e {
        nvml::NvmlError::NotAvailable => (
            ErrorKind::Unavailable,
            "NVML not available on this node (is the NVIDIA driver installed and libnvidia-ml.so.1 loadable?)",
        ),
        nvml::NvmlError::NotSupported => (ErrorKind::Unsupported, "not supported by this GPU or driver"),
        nvml::NvmlError::NotFound => (ErrorKind::Unavailable, "not found"),
        nvml::NvmlError::Failed => (ErrorKind::Internal, "NVML call failed"),
    };
    DriverError {
        kind,
        message: format!("{what}: {reason}"),
    }
}

fn with_driver<T>(f: impl FnOnce(&logic::Driver, &str) -> Result<T, DriverError>) -> Result<T, DriverError> {
    DRIVER.with_borrow(|d| match d {
        Some((d, pool)) => f(d, pool),
        None => Err(DriverError {
            kind: ErrorKind::Internal,
            message: "init was not called".into(),
        }),
    })
}

/// Everything NVML says about the node.
fn discover(want_files: bool) -> Result<logic::Node, DriverError> {
    let driver_version = nvml::driver_version().map_err(|e| nvml_error("driver version", e))?;
    let cuda_driver_version = nvml::cuda_driver_version().map_err(|e| nvml_error("CUDA driver version", e))?;
    let count = nvml::device_count().map_err(|e| nvml_error("device count", e))?;
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let g = nvml::device_info(index).map_err(|e| nvml_error(&format!("GPU {index}"), e))?;
        gpus.push(logic::Gpu {
            index: g.index,
            uuid: g.uuid,
            product_name: g.product_name,
            brand: g.brand,
            architecture: g.architecture,
            cuda_compute_capability: g.cuda_compute_capability,
            memory_bytes: g.memory_total_bytes,
            pci_bus_id: g.pci.bus_id,
            minor: g.minor_number,
            mig_enabled: g.mig_enabled,
        });
    }
    let files = if want_files {
        nvml::driver_files()
            .map_err(|e| nvml_error("driver files", e))?
            .into_iter()
            .map(|f| logic::DriverFile {
                kind: match f.kind {
                    nvml::DriverFileKind::Library => logic::FileKind::Library,
                    nvml::DriverFileKind::Binary => logic::FileKind::Binary,
                    nvml::DriverFileKind::Firmware => logic::FileKind::Firmware,
                },
                host_path: f.host_path,
                container_path: f.container_path,
            })
            .collect()
    } else {
        vec![]
    };
    Ok(logic::Node {
        driver_version,
        cuda_driver_version,
        gpus,
        files,
    })
}

fn edits(p: &logic::PreparedDevice) -> ContainerEdits {
    ContainerEdits {
        env: p
            .env
            .iter()
            .map(|(name, value)| EnvVar {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        device_nodes: p
            .device_nodes
            .iter()
            .map(|path| DeviceNode {
                path: path.clone(),
                host_path: None,
                node_type: None,
                major: None,
                minor: None,
                file_mode: None,
                permissions: Some("rw".into()),
                uid: None,
                gid: None,
            })
            .collect(),
        mounts: p
            .mounts
            .iter()
            .map(|m| Mount {
                host_path: m.host_path.clone(),
                container_path: m.container_path.clone(),
                mount_type: None,
                options: vec!["ro".into(), "nosuid".into(), "nodev".into(), "bind".into()],
            })
            .collect(),
        hooks: vec![],
        net_devices: vec![],
    }
}

impl exports::dra::driver::device_driver::Guest for GpuDriver {
    fn init(ctx: InitContext) -> Result<DriverInfo, DriverError> {
        std::panic::set_hook(Box::new(|info| log(Level::Error, &format!("panic: {info}"))));
        // Parse the config before asking NVML anything, so config errors come first.
        let probe = logic::Driver::new(
            &ctx.config,
            logic::Node {
                driver_version: String::new(),
                cuda_driver_version: (0, 0),
                gpus: vec![],
                files: vec![],
            },
        )
        .map_err(error)?;
        let node = discover(probe.config.cdi == logic::CdiMode::Mounts)?;
        let driver = logic::Driver::new(&ctx.config, node).map_err(error)?;
        let uuids: Vec<String> = driver.node.gpus.iter().map(|g| g.uuid.clone()).collect();
        nvml::subscribe(
            &uuids,
            &[GpuEventKind::XidCriticalError, GpuEventKind::DoubleBitEccError],
        )
        .map_err(|e| nvml_error("subscribing to GPU events", e))?;
        log(
            Level::Info,
            &format!(
                "{} GPUs, driver {}, CUDA {}.{}",
                driver.node.gpus.len(),
                driver.node.driver_version,
                driver.node.cuda_driver_version.0,
                driver.node.cuda_driver_version.1
            ),
        );
        DRIVER.set(Some((driver, ctx.node_name)));
        Ok(DriverInfo {
            name: "gpu-driver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    fn inventory() -> Result<Vec<Pool>, DriverError> {
        with_driver(|d, pool| {
            let devices = d
                .devices()
                .into_iter()
                .map(|dev| Device {
                    attributes: dev
                        .attributes
                        .into_iter()
                        .map(|(name, v)| Attribute {
                            name: name.to_owned(),
                            value: match v {
                                logic::Value::Int(i) => AttributeValue::Integer(i),
                                logic::Value::Text(s) => AttributeValue::Text(s),
                                logic::Value::Version(v) => AttributeValue::Version(v),
                            },
                        })
                        .collect(),
                    capacity: vec![Capacity {
                        name: "memory".into(),
                        value: dev.memory.value,
                        request_policy: dev.memory.policy.map(|(default, step)| RequestPolicy {
                            default: Some(default),
                            valid_values: vec![],
                            valid_range: Some(CapacityRange {
                                min: step.clone(),
                                max: Some(dev.memory.max.clone()),
                                step: Some(step),
                            }),
                        }),
                    }],
                    name: dev.name,
                    allow_multiple_allocations: dev.shared,
                    taints: vec![],
                })
                .collect();
            Ok(vec![Pool {
                name: pool.to_owned(),
                devices,
            }])
        })
    }

    fn prepare(claim: Claim) -> Result<PreparedClaim, DriverError> {
        let allocations: Vec<logic::Allocation> = claim
            .devices
            .into_iter()
            .map(|d| logic::Allocation {
                request: d.request,
                consumed_memory: d
                    .consumed_capacity
                    .into_iter()
                    .find(|(k, _)| k == "memory")
                    .map(|(_, v)| v),
                device: d.device,
                share_id: d.share_id,
            })
            .collect();
        let configs: Vec<logic::OpaqueConfig> = claim
            .configs
            .into_iter()
            .map(|c| logic::OpaqueConfig {
                requests: c.requests,
                parameters: c.parameters,
            })
            .collect();
        with_driver(|d, pool| {
            let prepared = d.prepare(&claim.ref_.uid, &allocations, &configs).map_err(error)?;
            Ok(PreparedClaim {
                devices: prepared
                    .devices
                    .iter()
                    .map(|p| PreparedDevice {
                        pool: pool.to_owned(),
                        device: p.device.clone(),
                        share_id: p.share_id.clone(),
                        edits: edits(p),
                        cdi_device_ids: p.cdi_device_ids.clone(),
                        status: None,
                    })
                    .collect(),
                state: prepared.state,
            })
        })
    }

    fn unprepare(claim: ClaimRef, state: Vec<u8>) -> Result<(), DriverError> {
        with_driver(|d, _| d.unprepare(&claim.uid, &state).map_err(error))
    }

    fn on_event(event: Event) -> Result<Vec<DeviceHealth>, DriverError> {
        with_driver(|d, pool| {
            let change = match event {
                Event::Gpu(g) => match g.kind {
                    GpuEventKind::XidCriticalError => d.on_xid(&g.uuid, g.data),
                    GpuEventKind::DoubleBitEccError => d.on_double_bit_ecc(&g.uuid),
                    _ => logic::HealthChange::None,
                },
                Event::Link(_) => logic::HealthChange::None,
            };
            Ok(match change {
                logic::HealthChange::Unhealthy { devices, message } => devices
                    .into_iter()
                    .map(|device| DeviceHealth {
                        pool: pool.to_owned(),
                        device,
                        status: HealthStatus::Unhealthy,
                        message: message.clone(),
                    })
                    .collect(),
                logic::HealthChange::None => vec![],
            })
        })
    }
}

export!(GpuDriver);
