//! The hostile half of the faulty guest (issue 13): outputs that try to give
//! a container more of the node than its claim was allocated, break the
//! kubelet's answer or forge log lines, and inventories the API server would
//! reject. Kept apart from the fault injection in `lib.rs`. Written on the
//! guest SDK like every guest: its WIT records (public fields) let an attack
//! say exactly what it sends, where the SDK's builders would pick safe values.
//!
//! Prepare attacks, chosen by the claim name's prefix:
//!
//! | claim name starts with | the first prepared device gets ...                                   |
//! |------------------------|----------------------------------------------------------------------|
//! | `devnode-forged`       | `/dev/nvidia0` declared as `b 8:0` (the node's first disk), `rwm`    |
//! | `devnode-plain`        | `/dev/nvidia0` with no type or numbers (the host fills them in)      |
//! | `devnode-missing`      | `/dev/nvidia9`, which the test node does not have                    |
//! | `devnode-ctl`          | `/dev/nvidiactl`, outside a policy naming only `/dev/nvidia[0-9]*`   |
//! | `devnode-steal`        | the next device's node, `/dev/nvidia<index + 1>`, which the inventory declares for that device |
//! | `mount-overlay`        | a mount of the allowed `/run/nvidia/driver` as `overlay`, `lowerdir=/` |
//! | `mount-devtmpfs`       | a mount of the allowed `/run/nvidia/driver/dev` as `devtmpfs`        |
//! | `mount-rw`             | a read-write bind of the allowed `/run/nvidia/driver/lib`            |
//! | `mount-suid`           | a read-only bind of the allowed path with the `suid` and `dev` options |
//! | `mount-ro`             | a read-only bind of `/run/nvidia/driver/lib` (allowed)               |
//! | `cdi-all`              | a reference to `nvidia.com/gpu=all`                                  |
//! | `cdi-other`            | a reference to the next device's `uuid`                              |
//! | `cdi-own`              | a reference to its own `uuid` (allowed)                              |
//! | `bigspec`              | 256 environment variables of 32 KiB each (an 8 MiB CDI spec)         |
//! | `netdev-host-link`     | a `netDevices` entry moving `dwh0123456789ab` (a name of the host's links, none created for this claim) into the pod |
//! | `longerror`            | nothing: prepare fails with a 1,000,048-character message holding a newline, a forged log line and ANSI escapes |
//! | `forgelog`             | nothing: logs a line holding a newline, a forged log line and ANSI escapes, then prepares normally |
//!
//! Inventory attacks, and the 0.2 inventory features, chosen by the config's `inventory`:
//!
//! | `inventory`  | besides the valid devices `dev-0` … it publishes                     |
//! |--------------|----------------------------------------------------------------------|
//! | `invalid`    | `Dev-Upper` (uppercase), a 64-character name, `dev-0` again, `many-attributes` (100 attributes), `big-value` (a 1 MB attribute value) |
//! | `partitioned` | a counter set `card-0` (`memory` 8Gi, `slices` 2) with `card-0` consuming all of it and `card-0-half-0`, `card-0-half-1` consuming half each; `card-0-half-1` has binding conditions (`example.com/attached`, failure `example.com/failed`, binds to node) |
//!
//! Every device carries the attribute `uuid` = `FAULTY-<index>`, for the CDI
//! reference rule, and declares that it owns `/dev/nvidia<index>` (0.2
//! node resources), for the ownership rule.

use dra_driver_sdk::log::{Level, log};
use dra_driver_sdk::{
    BindingConditions, Device, DeviceNode, EnvVar, Error, Mount, NetDevice, Pool, PreparedDevice, Quantity, Result,
};

/// The `uuid` attribute of device `dev-<index>`.
pub fn uuid(index: u32) -> String {
    format!("FAULTY-{index}")
}

/// `device` (`dev-<index>`) with the attributes every device of the
/// inventory carries.
pub fn with_attributes(device: Device, index: u32) -> Device {
    device
        .attribute("uuid", uuid(index))
        .owns_device_node(format!("/dev/nvidia{index}"))
}

/// The pool `faulty`: the valid `devices`, then what the inventory mode adds.
pub fn pool(mode: Option<&str>, mut devices: Vec<Device>) -> Result<Pool> {
    match mode {
        None => {}
        Some("invalid") => devices.extend([
            Device::new("Dev-Upper"),
            Device::new("d".repeat(64)),
            Device::new("dev-0"),
            (0..100i64).fold(Device::new("many-attributes"), |d, i| d.attribute(format!("a{i}"), i)),
            Device::new("big-value").attribute("blob", "v".repeat(1_000_000)),
        ]),
        Some("partitioned") => {
            let half = || {
                [
                    ("memory".to_owned(), Quantity::binary(4 << 30)),
                    ("slices".to_owned(), Quantity::parse("1").expect("a quantity")),
                ]
            };
            let whole = [
                ("memory".to_owned(), Quantity::binary(8 << 30)),
                ("slices".to_owned(), Quantity::parse("2").expect("a quantity")),
            ];
            devices.extend([
                Device::new("card-0").consumes("card-0", whole.clone()),
                Device::new("card-0-half-0").consumes("card-0", half()),
                Device::new("card-0-half-1")
                    .consumes("card-0", half())
                    .binding_conditions(BindingConditions {
                        conditions: vec!["example.com/attached".into()],
                        failure_conditions: vec!["example.com/failed".into()],
                        binds_to_node: true,
                    }),
            ]);
            return Ok(Pool::new("faulty", devices).counter_set("card-0", whole));
        }
        Some(other) => return Err(Error::invalid_config(format!("unknown inventory mode {other:?}"))),
    }
    Ok(Pool::new("faulty", devices))
}

/// The host path every mount attack starts from (the policy allows it).
const DRIVER_ROOT: &str = "/run/nvidia/driver";

fn mount(host: &str, container: &str, mount_type: Option<&str>, options: &[&str]) -> Mount {
    Mount {
        host_path: host.into(),
        container_path: container.into(),
        mount_type: mount_type.map(Into::into),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    }
}

/// The index of `dev-<index>`.
fn index(device: &str) -> u32 {
    device.strip_prefix("dev-").and_then(|i| i.parse().ok()).unwrap_or(0)
}

/// Apply the attack the claim's name asks for, if any. `Err` is the
/// guest's answer to `prepare`.
pub fn prepare(name: &str, devices: &mut [PreparedDevice]) -> Result<()> {
    let Some(first) = devices.first_mut() else {
        return Ok(());
    };
    let edits = &mut first.edits;
    if name.starts_with("devnode-forged") {
        edits.device_nodes.push(DeviceNode {
            node_type: Some("b".into()),
            major: Some(8),
            minor: Some(0),
            permissions: Some("rwm".into()),
            ..DeviceNode::new("/dev/nvidia0")
        });
    } else if name.starts_with("devnode-plain") {
        edits.device_nodes.push(DeviceNode::new("/dev/nvidia0"));
    } else if name.starts_with("devnode-missing") {
        edits.device_nodes.push(DeviceNode::new("/dev/nvidia9"));
    } else if name.starts_with("devnode-ctl") {
        edits.device_nodes.push(DeviceNode::new("/dev/nvidiactl"));
    } else if name.starts_with("devnode-steal") {
        let next = index(&first.device) + 1;
        edits.device_nodes.push(DeviceNode::new(format!("/dev/nvidia{next}")));
    } else if name.starts_with("mount-overlay") {
        edits
            .mounts
            .push(mount(DRIVER_ROOT, "/host", Some("overlay"), &["lowerdir=/"]));
    } else if name.starts_with("mount-devtmpfs") {
        edits
            .mounts
            .push(mount(&format!("{DRIVER_ROOT}/dev"), "/host-dev", Some("devtmpfs"), &[]));
    } else if name.starts_with("mount-rw") {
        edits
            .mounts
            .push(mount(&format!("{DRIVER_ROOT}/lib"), "/driver", None, &["rbind", "rw"]));
    } else if name.starts_with("mount-suid") {
        edits.mounts.push(mount(
            &format!("{DRIVER_ROOT}/lib"),
            "/driver",
            None,
            &["ro", "bind", "suid", "dev"],
        ));
    } else if name.starts_with("mount-ro") {
        edits
            .mounts
            .push(Mount::read_only(format!("{DRIVER_ROOT}/lib"), "/driver"));
    } else if name.starts_with("cdi-all") {
        first.cdi_device_ids.push("nvidia.com/gpu=all".into());
    } else if name.starts_with("cdi-other") {
        let other = index(&first.device) + 1;
        first.cdi_device_ids.push(format!("nvidia.com/gpu={}", uuid(other)));
    } else if name.starts_with("cdi-own") {
        let own = index(&first.device);
        first.cdi_device_ids.push(format!("nvidia.com/gpu={}", uuid(own)));
    } else if name.starts_with("bigspec") {
        edits.env = (0..256)
            .map(|i| EnvVar {
                name: format!("BIG_{i}"),
                value: "x".repeat(32 << 10),
            })
            .collect();
    } else if name.starts_with("netdev-host-link") {
        edits.net_devices.push(NetDevice {
            host_interface_name: "dwh0123456789ab".into(),
            name: "net1".into(),
        });
    } else if name.starts_with("longerror") {
        return Err(Error::invalid_claim(long_error()));
    } else if name.starts_with("forgelog") {
        log(Level::Error, FORGED);
    }
    Ok(())
}

/// A newline followed by what looks like one of the host's own log lines,
/// and ANSI escapes (red, clear screen).
pub const FORGED: &str =
    "bad thing\n2026-01-01T00:00:00.000000Z  INFO dra_wasm_host::driver: FORGED claim prepared\x1b[31m\x1b[2J";

/// 1,000,048 characters: [`FORGED`], then padding.
fn long_error() -> String {
    let mut s = String::with_capacity(1_000_048);
    s.push_str(FORGED);
    while s.len() < 1_000_048 {
        s.push('e');
    }
    s
}
