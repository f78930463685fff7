//! A guest that misbehaves on request, for the host's end-to-end tests.
//!
//! It serves one pool of `devices` devices like the example guest, and its
//! `prepare` does what the claim's name asks:
//!
//! | claim name starts with | prepare ...                                      |
//! |------------------------|--------------------------------------------------|
//! | `loop`                 | spins forever (the host's deadline must stop it) |
//! | `oom`                  | allocates without bound (memory limit)           |
//! | `trap`                 | panics                                           |
//! | `stack`                | recurses without bound (stack overflow)          |
//! | `unallocated`          | returns a device that was not allocated          |
//! | `escape`               | mounts `/etc` from the host                      |
//! | `bigstate`             | returns a 1 MiB state blob                       |
//! | `badenv`               | returns an environment variable with `=` in its name |
//! | `status`               | prepares normally and reports device status (Ready, data, network data) |
//! | an attack of `attacks.rs` (`devnode-…`, `mount-…`, `cdi-…`, `bigspec`, `longerror`, `forgelog`) | see the table there |
//! | anything else          | prepares normally with one env var per device    |
//!
//! Every device has a `uuid` attribute; the config's `inventory` adds the
//! invalid devices of an inventory attack (`attacks.rs`).
//!
//! `init` fails when the config says `{"failInit": true}`.
//!
//! The same source is built twice, as `faulty-driver` 0.1.0 and as
//! `faulty-next` 0.2.0 (`tests/guests/faulty-next`), so that the hot-swap tests
//! have two builds to alternate: each build's CDI edits carry its version
//! (`FAULTY_VERSION`), and each accepts the other's `state` at `unprepare`.
//! A build misbehaves as a whole when the config's `faultVersion` names its
//! version, with `fault` one of `init` (init fails), `inventory-trap`,
//! `inventory-loop` and `prepare-trap`; the other build ignores it.

mod attacks;

use std::cell::Cell;

wit_bindgen::generate!({
    world: "driver",
    path: "../../../wit",
});

use dra::driver::types::*;

thread_local! {
    static DEVICES: Cell<u32> = const { Cell::new(0) };
    static FAULT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    static INVENTORY: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    devices: u32,
    #[serde(default)]
    fail_init: bool,
    /// The build version that should misbehave (see the module docs).
    #[serde(default)]
    fault_version: Option<String>,
    #[serde(default)]
    fault: Option<String>,
    /// An inventory attack (`attacks.rs`).
    #[serde(default)]
    inventory: Option<String>,
}

/// This build's version, as in its Cargo.toml.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The fault this build was asked to inject, if the config names this build.
fn fault() -> Option<String> {
    FAULT.with_borrow(|f| f.clone())
}

struct Faulty;

fn no_edits() -> ContainerEdits {
    ContainerEdits {
        env: vec![],
        device_nodes: vec![],
        mounts: vec![],
        hooks: vec![],
        net_devices: vec![],
    }
}

/// Burn CPU forever: only the host's deadline ends this.
fn spin() -> ! {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, buf: &mut [u8; 256]) -> u64 {
    buf[(depth % 256) as usize] = depth as u8;
    let mut next = [0u8; 256];
    recurse(depth + 1, &mut next) + u64::from(buf[0])
}

impl exports::dra::driver::device_driver::Guest for Faulty {
    fn init(ctx: InitContext) -> Result<DriverInfo, DriverError> {
        let cfg: Config = if ctx.config.trim().is_empty() {
            Config::default()
        } else {
            serde_json::from_str(&ctx.config).map_err(|e| DriverError {
                kind: ErrorKind::InvalidConfig,
                message: e.to_string(),
            })?
        };
        if cfg.fail_init {
            return Err(DriverError {
                kind: ErrorKind::InvalidConfig,
                message: "failInit is set".into(),
            });
        }
        let fault = cfg.fault.filter(|_| cfg.fault_version.as_deref() == Some(VERSION));
        if fault.as_deref() == Some("init") {
            return Err(DriverError {
                kind: ErrorKind::InvalidConfig,
                message: format!("build {VERSION} was asked to fail init"),
            });
        }
        DEVICES.set(cfg.devices.max(1));
        FAULT.set(fault);
        INVENTORY.set(cfg.inventory);
        Ok(DriverInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: VERSION.into(),
        })
    }

    fn inventory() -> Result<Vec<Pool>, DriverError> {
        match fault().as_deref() {
            Some("inventory-trap") => panic!("build {VERSION} was asked to trap in inventory"),
            Some("inventory-loop") => spin(),
            _ => {}
        }
        let mut devices: Vec<Device> = (0..DEVICES.get())
            .map(|i| Device {
                name: format!("dev-{i}"),
                attributes: attacks::attributes(i),
                capacity: vec![],
                allow_multiple_allocations: false,
                taints: vec![],
            })
            .collect();
        devices.extend(INVENTORY.with_borrow(|mode| attacks::inventory(mode.as_deref()))?);
        Ok(vec![Pool {
            name: "faulty".into(),
            devices,
        }])
    }

    fn prepare(claim: Claim) -> Result<PreparedClaim, DriverError> {
        if fault().as_deref() == Some("prepare-trap") {
            panic!("build {VERSION} was asked to trap in prepare");
        }
        let name = claim.ref_.name.as_str();
        let mut devices: Vec<PreparedDevice> = claim
            .devices
            .iter()
            .map(|d| PreparedDevice {
                pool: d.pool.clone(),
                device: d.device.clone(),
                share_id: d.share_id.clone(),
                edits: ContainerEdits {
                    env: vec![
                        EnvVar {
                            name: "FAULTY_DEVICE".into(),
                            value: d.device.clone(),
                        },
                        EnvVar {
                            name: "FAULTY_VERSION".into(),
                            value: VERSION.into(),
                        },
                    ],
                    ..no_edits()
                },
                cdi_device_ids: vec![],
                status: None,
            })
            .collect();
        let mut state = claim.ref_.uid.clone().into_bytes();
        attacks::prepare(name, &mut devices)?;
        if name.starts_with("loop") {
            spin();
        } else if name.starts_with("oom") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0xa5; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        } else if name.starts_with("trap") {
            panic!("asked to trap by claim {name}");
        } else if name.starts_with("stack") {
            let mut buf = [0u8; 256];
            state.push(recurse(0, &mut buf) as u8);
        } else if name.starts_with("unallocated") {
            devices.push(PreparedDevice {
                pool: "faulty".into(),
                device: "not-allocated".into(),
                share_id: None,
                edits: no_edits(),
                cdi_device_ids: vec![],
                status: None,
            });
        } else if name.starts_with("escape") {
            if let Some(d) = devices.first_mut() {
                d.edits.mounts.push(Mount {
                    host_path: "/etc".into(),
                    container_path: "/host-etc".into(),
                    mount_type: None,
                    options: vec!["bind".into()],
                });
            }
        } else if name.starts_with("bigstate") {
            state = vec![7; 1 << 20];
        } else if name.starts_with("status") {
            for (i, d) in devices.iter_mut().enumerate() {
                d.status = Some(DeviceStatus {
                    conditions: vec![Condition {
                        condition_type: "Ready".into(),
                        status: ConditionStatus::True,
                        reason: "Prepared".into(),
                        message: format!("device {} is ready", d.device),
                    }],
                    data: Some(format!("{{\"slot\":{i}}}")),
                    network_data: Some(NetworkData {
                        interface_name: format!("net{i}"),
                        ips: vec![format!("192.0.2.{}/24", 10 + i)],
                        hardware_address: format!("02:00:00:00:00:{i:02x}"),
                    }),
                });
            }
        } else if name.starts_with("badenv")
            && let Some(d) = devices.first_mut()
        {
            d.edits.env.push(EnvVar {
                name: "A=B".into(),
                value: "x".into(),
            });
        }
        Ok(PreparedClaim { devices, state })
    }

    /// The state is the claim UID (possibly followed by bytes); anything else
    /// means the host handed back the wrong claim's state.
    fn unprepare(claim: ClaimRef, state: Vec<u8>) -> Result<(), DriverError> {
        if !state.is_empty() && !state.starts_with(claim.uid.as_bytes()) && !state.starts_with(&[7]) {
            return Err(DriverError {
                kind: ErrorKind::Internal,
                message: format!(
                    "state {:?} is not claim {}'s",
                    String::from_utf8_lossy(&state),
                    claim.uid
                ),
            });
        }
        Ok(())
    }

    fn on_event(_event: Event) -> Result<Vec<DeviceHealth>, DriverError> {
        Ok(vec![])
    }
}

export!(Faulty);
