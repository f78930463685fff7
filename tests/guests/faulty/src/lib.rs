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
//! | `spike-N`              | grows its memory by N MiB, holds it a while, frees it, then prepares normally |
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

use dra_driver_sdk::{
    Claim, ClaimRef, Condition, ContainerEdits, Device, DeviceStatus, Driver, EnvVar, Error, InitContext, Mount,
    NetworkData, Pool, PreparedClaim, PreparedDevice, Result,
};
use serde::de::IgnoredAny;

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
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

pub struct Faulty {
    devices: u32,
    /// The fault this build was asked to inject, if the config names this build.
    fault: Option<String>,
    /// The inventory attack the config asks for (`attacks.rs`).
    inventory: Option<String>,
}

/// Burn CPU forever: only the host's deadline ends this.
fn spin() -> ! {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Burn CPU for a while (guests have no clock): long enough that the host's
/// epoch ticks make the call yield, so concurrent calls take other instances.
fn busy(iterations: u64) {
    let mut x: u64 = 1;
    for _ in 0..iterations {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// A memory spike that ends well: `mib` MiB allocated and every page
/// touched (fresh wasm pages are zero, so an untouched `vec![0; n]` would
/// cost the host nothing), held while the call runs on, then freed. The
/// instance's linear memory stays grown: wasm memory never shrinks.
fn spike(mib: usize) {
    let mut hoard = vec![0u8; mib << 20];
    for page in hoard.chunks_mut(4096) {
        page[0] = 0xa5;
    }
    busy(100_000_000);
    std::hint::black_box(&hoard);
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, buf: &mut [u8; 256]) -> u64 {
    buf[(depth % 256) as usize] = depth as u8;
    let mut next = [0u8; 256];
    recurse(depth + 1, &mut next) + u64::from(buf[0])
}

impl Driver for Faulty {
    type Config = Config;
    /// Opaque parameters are not looked at.
    type ClaimConfig = IgnoredAny;

    fn init(_: &InitContext, cfg: Config) -> Result<Self> {
        if cfg.fail_init {
            return Err(Error::invalid_config("failInit is set"));
        }
        let fault = cfg.fault.filter(|_| cfg.fault_version.as_deref() == Some(VERSION));
        if fault.as_deref() == Some("init") {
            return Err(Error::invalid_config(format!("build {VERSION} was asked to fail init")));
        }
        Ok(Faulty {
            devices: cfg.devices.max(1),
            fault,
            inventory: cfg.inventory,
        })
    }

    fn inventory(&self) -> Result<Vec<Pool>> {
        match self.fault.as_deref() {
            Some("inventory-trap") => panic!("build {VERSION} was asked to trap in inventory"),
            Some("inventory-loop") => spin(),
            _ => {}
        }
        let devices: Vec<Device> = (0..self.devices)
            .map(|i| attacks::with_attributes(Device::new(format!("dev-{i}")), i))
            .collect();
        Ok(vec![attacks::pool(self.inventory.as_deref(), devices)?])
    }

    fn prepare(&self, claim: Claim<IgnoredAny>) -> Result<PreparedClaim> {
        if self.fault.as_deref() == Some("prepare-trap") {
            panic!("build {VERSION} was asked to trap in prepare");
        }
        let name = claim.claim.name.as_str();
        let mut devices: Vec<PreparedDevice> = claim
            .devices
            .iter()
            .map(|d| {
                PreparedDevice::new(d).edits(
                    ContainerEdits::default()
                        .env("FAULTY_DEVICE", &d.device)
                        .env("FAULTY_VERSION", VERSION),
                )
            })
            .collect();
        let mut state = claim.claim.uid.clone().into_bytes();
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
            devices.push(PreparedDevice::named("faulty", "not-allocated", None));
        } else if name.starts_with("escape") {
            if let Some(d) = devices.first_mut() {
                d.edits.mounts.push(Mount::bind("/etc", "/host-etc"));
            }
        } else if let Some(mib) = name
            .strip_prefix("spike-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|n| n.parse::<usize>().ok())
        {
            spike(mib);
        } else if name.starts_with("bigstate") {
            state = vec![7; 1 << 20];
        } else if name.starts_with("status") {
            for (i, d) in devices.iter_mut().enumerate() {
                d.status = Some(DeviceStatus {
                    conditions: vec![Condition::ready("Prepared", format!("device {} is ready", d.device))],
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
    fn unprepare(&self, claim: &ClaimRef, state: &[u8]) -> Result<()> {
        if !state.is_empty() && !state.starts_with(claim.uid.as_bytes()) && !state.starts_with(&[7]) {
            return Err(Error::internal(format!(
                "state {:?} is not claim {}'s",
                String::from_utf8_lossy(state),
                claim.uid
            )));
        }
        Ok(())
    }
}

dra_driver_sdk::export_driver!(Faulty);
