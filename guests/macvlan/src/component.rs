//! The `dra:driver/device-driver` export for macvlan NICs, over the host's
//! `net` import.

use crate::logic;
use std::cell::RefCell;

wit_bindgen::generate!({
    world: "net-driver",
    path: "../../wit",
});

use dra::driver::log::{Level, log};
use dra::driver::net;
use dra::driver::types::{
    Attribute, AttributeValue, Capacity, CapacityRange, Claim, ClaimRef, Condition, ConditionStatus, ContainerEdits,
    Device, DeviceHealth, DeviceStatus, DriverError, DriverInfo, ErrorKind, Event, HealthStatus, InitContext,
    NetDevice, NetworkData, Pool, PreparedClaim, PreparedDevice, RequestPolicy,
};

thread_local! {
    static DRIVER: RefCell<Option<(logic::Driver, String)>> = const { RefCell::new(None) };
}

struct MacvlanDriver;

fn error(e: logic::Error) -> DriverError {
    DriverError {
        kind: match e.kind {
            logic::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
            logic::ErrorKind::InvalidClaim => ErrorKind::InvalidClaim,
            logic::ErrorKind::Unavailable => ErrorKind::Unavailable,
        },
        message: e.message,
    }
}

fn net_error(what: &str, e: net::NetError) -> DriverError {
    DriverError {
        kind: ErrorKind::Unavailable,
        message: format!("{what}: {}", e.message),
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

fn links() -> Result<Vec<logic::Link>, DriverError> {
    Ok(net::list_links()
        .map_err(|e| net_error("listing links", e))?
        .into_iter()
        .map(|l| logic::Link {
            name: l.name,
            mtu: l.mtu,
            mac: l.hardware_address,
            up: l.up,
            speed_mbps: l.speed_mbps,
            pci_address: l.pci_address,
        })
        .collect())
}

fn mode(m: &str) -> net::MacvlanMode {
    match m {
        "private" => net::MacvlanMode::Private,
        "vepa" => net::MacvlanMode::Vepa,
        "passthru" => net::MacvlanMode::Passthru,
        _ => net::MacvlanMode::Bridge,
    }
}

/// Create the link, address it and arrange its attachment, for one device.
fn prepare_one(
    d: &logic::Driver,
    uid: &str,
    plan: &logic::Plan,
    pool: &str,
) -> Result<(PreparedDevice, String), DriverError> {
    let p = &plan.parent;
    let link = net::create_macvlan(&net::Macvlan {
        parent: p.name.clone(),
        claim_uid: uid.to_owned(),
        key: plan.key.clone(),
        mode: mode(&d.config.mode),
        mtu: p.mtu,
        hardware_address: plan.mac.clone(),
    })
    .map_err(|e| net_error(&format!("creating a macvlan on {}", p.name), e))?;
    let address = net::allocate_address(&net::AddressRequest {
        parent: p.name.clone(),
        pool: net::IpPool {
            subnet: p.subnet.clone(),
            range_start: p.range_start.clone(),
            range_end: p.range_end.clone(),
            gateway: p.gateway.clone(),
        },
        claim_uid: uid.to_owned(),
        share_id: plan.key.clone(),
        static_address: plan.static_address.clone(),
    })
    .map_err(|e| DriverError {
        kind: ErrorKind::InvalidClaim,
        message: format!("address on {}: {}", p.name, e.message),
    })?;
    if let Some(bps) = plan.egress_bps
        && !net::set_egress_rate(&link.name, bps).map_err(|e| net_error("egress limit", e))?
    {
        log(
            Level::Warn,
            &format!("no egress limit for {} on this node (tc unavailable)", link.name),
        );
    }
    let mut edits = ContainerEdits {
        env: vec![],
        device_nodes: vec![],
        mounts: vec![],
        hooks: vec![],
        net_devices: vec![],
    };
    match d.config.attach {
        logic::Attach::Hook => {
            let routes = match (&p.gateway, p.default_route) {
                (Some(gw), true) => vec![net::Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: Some(gw.clone()),
                }],
                _ => vec![],
            };
            let hook = net::prepare_attachment(&net::Attachment {
                link: link.name.clone(),
                claim_uid: uid.to_owned(),
                pod_interface: plan.pod_interface.clone(),
                addresses: vec![address.clone()],
                routes,
            })
            .map_err(|e| net_error("arranging the attachment", e))?;
            edits.hooks.push(hook);
        }
        logic::Attach::NetDevices => {
            net::configure_link(&link.name, std::slice::from_ref(&address))
                .map_err(|e| net_error("configuring the link", e))?;
            edits.net_devices.push(NetDevice {
                host_interface_name: link.name.clone(),
                name: plan.pod_interface.clone(),
            });
        }
    }
    let device = PreparedDevice {
        pool: pool.to_owned(),
        device: plan.device.clone(),
        share_id: plan.share_id.clone(),
        edits,
        cdi_device_ids: vec![],
        status: Some(DeviceStatus {
            conditions: vec![Condition {
                condition_type: "Ready".into(),
                status: ConditionStatus::True,
                reason: "InterfacePrepared".into(),
                message: format!("{} on {} as {}", link.name, p.name, plan.pod_interface),
            }],
            data: None,
            network_data: Some(NetworkData {
                interface_name: plan.pod_interface.clone(),
                ips: vec![address],
                hardware_address: link.hardware_address,
            }),
        }),
    };
    Ok((device, link.name))
}

impl exports::dra::driver::device_driver::Guest for MacvlanDriver {
    fn init(ctx: InitContext) -> Result<DriverInfo, DriverError> {
        std::panic::set_hook(Box::new(|info| log(Level::Error, &format!("panic: {info}"))));
        let driver = logic::Driver::new(&ctx.config).map_err(error)?;
        log(
            Level::Info,
            &format!(
                "{} parent NICs configured, mode {}, attach {:?}",
                driver.config.parents.len(),
                driver.config.mode,
                driver.config.attach
            ),
        );
        DRIVER.set(Some((driver, ctx.node_name)));
        Ok(DriverInfo {
            name: "macvlan-driver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    fn inventory() -> Result<Vec<Pool>, DriverError> {
        let links = links()?;
        with_driver(|d, pool| {
            let devices = d
                .devices(&links)
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
                            },
                        })
                        .collect(),
                    capacity: vec![Capacity {
                        name: "bandwidth".into(),
                        value: dev.bandwidth.clone(),
                        request_policy: Some(RequestPolicy {
                            default: Some(dev.default_bandwidth),
                            valid_values: vec![],
                            valid_range: Some(CapacityRange {
                                min: "1M".into(),
                                max: Some(dev.bandwidth),
                                step: None,
                            }),
                        }),
                    }],
                    name: dev.name,
                    allow_multiple_allocations: true,
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
        let uid = claim.ref_.uid.clone();
        let allocations: Vec<logic::Allocation> = claim
            .devices
            .into_iter()
            .map(|d| logic::Allocation {
                request: d.request,
                consumed_bandwidth: d
                    .consumed_capacity
                    .into_iter()
                    .find(|(k, _)| k == "bandwidth")
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
            let plans = d.plan(&allocations, &configs).map_err(error)?;
            let mut devices = Vec::with_capacity(plans.len());
            let mut names = Vec::with_capacity(plans.len());
            for plan in &plans {
                match prepare_one(d, &uid, plan, pool) {
                    Ok((device, name)) => {
                        devices.push(device);
                        names.push(name);
                    }
                    Err(e) => {
                        // Leave nothing behind for a failed prepare.
                        if let Err(undo) = net::release_claim(&uid) {
                            log(
                                Level::Error,
                                &format!("releasing claim {uid} after a failure: {}", undo.message),
                            );
                        }
                        return Err(e);
                    }
                }
            }
            let state = serde_json::to_vec(&logic::State { v: 1, links: names }).unwrap_or_default();
            Ok(PreparedClaim { devices, state })
        })
    }

    fn unprepare(claim: ClaimRef, _state: Vec<u8>) -> Result<(), DriverError> {
        // The host knows every link and address of the claim: even with no
        // state (a crash before the checkpoint) everything is released.
        net::release_claim(&claim.uid).map_err(|e| net_error("releasing the claim's links and addresses", e))?;
        Ok(())
    }

    fn on_event(event: Event) -> Result<Vec<DeviceHealth>, DriverError> {
        with_driver(|d, pool| {
            let Event::Link(l) = event else { return Ok(vec![]) };
            Ok(match d.on_link(&l.name, l.up) {
                Some((device, up, message)) => vec![DeviceHealth {
                    pool: pool.to_owned(),
                    device,
                    status: if up {
                        HealthStatus::Healthy
                    } else {
                        HealthStatus::Unhealthy
                    },
                    message,
                }],
                None => vec![],
            })
        })
    }
}

export!(MacvlanDriver);
