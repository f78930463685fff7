//! The `dra:driver/driver` export, adapting [`crate::logic`] to WIT types.

use crate::logic;
use std::cell::RefCell;

wit_bindgen::generate!({
    world: "driver",
    path: "../../wit",
});

use dra::driver::log::{Level, log};
use dra::driver::types::{
    AllocatedDevice, Attribute, AttributeValue, Capacity, Claim, ClaimRef, ContainerEdits, Device, DeviceHealth,
    DeviceNode, DriverError, DriverInfo, EnvVar, ErrorKind, Event, InitContext, Pool, PreparedClaim, PreparedDevice,
};

thread_local! {
    static DRIVER: RefCell<Option<logic::Driver>> = const { RefCell::new(None) };
}

struct ExampleDriver;

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

fn with_driver<T>(f: impl FnOnce(&logic::Driver) -> Result<T, DriverError>) -> Result<T, DriverError> {
    DRIVER.with_borrow(|d| match d {
        Some(d) => f(d),
        None => Err(DriverError {
            kind: ErrorKind::Internal,
            message: "init was not called".into(),
        }),
    })
}

fn allocation(d: AllocatedDevice) -> logic::Allocation {
    logic::Allocation {
        request: d.request,
        pool: d.pool,
        device: d.device,
        share_id: d.share_id,
    }
}

impl exports::dra::driver::device_driver::Guest for ExampleDriver {
    fn init(ctx: InitContext) -> Result<DriverInfo, DriverError> {
        std::panic::set_hook(Box::new(|info| log(Level::Error, &format!("panic: {info}"))));
        let driver = logic::Driver::new(&ctx.config, &ctx.node_name).map_err(error)?;
        log(
            Level::Info,
            &format!("simulating {} devices in pool {}", driver.config.devices, driver.pool),
        );
        DRIVER.set(Some(driver));
        Ok(DriverInfo {
            name: "example-driver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    fn inventory() -> Result<Vec<Pool>, DriverError> {
        with_driver(|d| {
            let devices = d
                .devices()
                .into_iter()
                .map(|dev| Device {
                    attributes: logic::attributes(&dev)
                        .into_iter()
                        .map(|(name, value)| Attribute {
                            name: name.to_owned(),
                            value: match value {
                                logic::AttributeValue::Int(i) => AttributeValue::Integer(i),
                                logic::AttributeValue::Text(s) => AttributeValue::Text(s),
                                logic::AttributeValue::Version(v) => AttributeValue::Version(v),
                            },
                        })
                        .collect(),
                    capacity: vec![Capacity {
                        name: "memory".into(),
                        value: dev.memory,
                        request_policy: None,
                    }],
                    name: dev.name,
                    allow_multiple_allocations: false,
                    taints: vec![],
                })
                .collect();
            Ok(vec![Pool {
                name: d.pool.clone(),
                devices,
            }])
        })
    }

    fn prepare(claim: Claim) -> Result<PreparedClaim, DriverError> {
        let claim = logic::Claim {
            uid: claim.ref_.uid,
            allocations: claim.devices.into_iter().map(allocation).collect(),
            configs: claim
                .configs
                .into_iter()
                .map(|c| logic::OpaqueConfig {
                    requests: c.requests,
                    parameters: c.parameters,
                })
                .collect(),
        };
        let prepared = with_driver(|d| d.prepare(&claim).map_err(error))?;
        Ok(PreparedClaim {
            devices: prepared
                .devices
                .into_iter()
                .map(|p| PreparedDevice {
                    pool: p.pool,
                    device: p.device,
                    share_id: p.share_id,
                    edits: ContainerEdits {
                        env: p.env.into_iter().map(|(name, value)| EnvVar { name, value }).collect(),
                        device_nodes: p
                            .device_node
                            .into_iter()
                            .map(|(path, host)| DeviceNode {
                                path,
                                host_path: Some(host),
                                node_type: None,
                                major: None,
                                minor: None,
                                file_mode: None,
                                permissions: Some("rw".into()),
                                uid: None,
                                gid: None,
                            })
                            .collect(),
                        mounts: vec![],
                        hooks: vec![],
                        net_devices: vec![],
                    },
                    cdi_device_ids: vec![],
                    status: None,
                })
                .collect(),
            state: prepared.state,
        })
    }

    fn unprepare(claim: ClaimRef, state: Vec<u8>) -> Result<(), DriverError> {
        with_driver(|d| d.unprepare(&claim.uid, &state).map_err(error))
    }

    fn on_event(_event: Event) -> Result<Vec<DeviceHealth>, DriverError> {
        // Simulated devices have no event source.
        Ok(vec![])
    }
}

export!(ExampleDriver);
