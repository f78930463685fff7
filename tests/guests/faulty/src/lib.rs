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
//! | anything else          | prepares normally with one env var per device    |
//!
//! `init` fails when the config says `{"failInit": true}`.

use std::cell::Cell;

wit_bindgen::generate!({
    world: "driver",
    path: "../../../wit",
});

use dra::driver::types::*;

thread_local! {
    static DEVICES: Cell<u32> = const { Cell::new(0) };
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    devices: u32,
    #[serde(default)]
    fail_init: bool,
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
        DEVICES.set(cfg.devices.max(1));
        Ok(DriverInfo {
            name: "faulty-driver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    fn inventory() -> Result<Vec<Pool>, DriverError> {
        let devices = (0..DEVICES.get())
            .map(|i| Device {
                name: format!("dev-{i}"),
                attributes: vec![],
                capacity: vec![],
                allow_multiple_allocations: false,
                taints: vec![],
            })
            .collect();
        Ok(vec![Pool {
            name: "faulty".into(),
            devices,
        }])
    }

    fn prepare(claim: Claim) -> Result<PreparedClaim, DriverError> {
        let name = claim.ref_.name.as_str();
        let mut devices: Vec<PreparedDevice> = claim
            .devices
            .iter()
            .map(|d| PreparedDevice {
                pool: d.pool.clone(),
                device: d.device.clone(),
                share_id: d.share_id.clone(),
                edits: ContainerEdits {
                    env: vec![EnvVar {
                        name: "FAULTY_DEVICE".into(),
                        value: d.device.clone(),
                    }],
                    ..no_edits()
                },
                cdi_device_ids: vec![],
                status: None,
            })
            .collect();
        let mut state = claim.ref_.uid.clone().into_bytes();
        if name.starts_with("loop") {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
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
        } else if name.starts_with("badenv") {
            if let Some(d) = devices.first_mut() {
                d.edits.env.push(EnvVar {
                    name: "A=B".into(),
                    value: "x".into(),
                });
            }
        }
        Ok(PreparedClaim { devices, state })
    }

    fn unprepare(_claim: ClaimRef, _state: Vec<u8>) -> Result<(), DriverError> {
        Ok(())
    }

    fn on_event(_event: Event) -> Result<Vec<DeviceHealth>, DriverError> {
        Ok(vec![])
    }
}

export!(Faulty);
