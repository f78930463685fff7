//! What the host accepts from a guest's `prepare` (invariant 2: the host
//! never trusts guest output).
//!
//! A guest may only prepare devices allocated to the claim for its driver,
//! must prepare each of them once, and its container edits must stay inside
//! what the operator allowed for the driver: device nodes under allowed
//! prefixes, host mounts under allowed prefixes, hooks from an allow-list,
//! network devices only when enabled. Every size is bounded.

use crate::claim::is_safe_uid;
use crate::guest::types;
use serde::Deserialize;
use std::collections::HashSet;

/// Per-driver policy from the host config (`[drivers.policy]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Host device nodes a guest may hand to containers.
    #[serde(default = "default_device_prefixes")]
    pub device_node_prefixes: Vec<String>,
    /// Host paths a guest may bind-mount into containers.
    #[serde(default)]
    pub mount_host_prefixes: Vec<String>,
    /// Programs a guest may run as OCI hooks (exact paths).
    #[serde(default)]
    pub hook_paths: Vec<String>,
    /// Whether a guest may move host network interfaces into containers.
    #[serde(default)]
    pub allow_net_devices: bool,
    /// Kinds (`vendor/class`) of operator-installed CDI specs whose devices
    /// a guest may reference by ID, e.g. `nvidia.com/gpu`.
    #[serde(default)]
    pub cdi_kinds: Vec<String>,
    /// Set by the host (never from the config) for drivers granted `net`:
    /// the network attach hook. It is accepted only with exactly the
    /// arguments the host hands out (`net-attach --dir <plugin dir> --link
    /// dwh…`): the same program with other arguments (`install-hook --to
    /// …`) would let a guest write files on the node as root.
    #[serde(skip)]
    pub attach_hook: Option<AttachHook>,
}

/// The attach hook the host allows a network driver's guest to return.
#[derive(Clone, Debug, PartialEq)]
pub struct AttachHook {
    pub path: String,
    pub plugin_dir: String,
}

impl AttachHook {
    fn accepts(&self, h: &types::Hook) -> Result<(), String> {
        let ok = h.stage == types::HookStage::CreateRuntime
            && h.env.is_empty()
            && h.args.len() == 6
            && h.args[1] == "net-attach"
            && h.args[2] == "--dir"
            && h.args[3] == self.plugin_dir
            && h.args[4] == "--link"
            && h.args[5].starts_with(crate::imports::net::LINK_PREFIX)
            && crate::imports::net::is_valid_ifname(&h.args[5]);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "hook {:?} is the network attach hook but not as the host prepared it (stage createRuntime, net-attach --dir {} --link dwh…)",
                h.path, self.plugin_dir
            ))
        }
    }
}

fn default_device_prefixes() -> Vec<String> {
    vec!["/dev/".to_owned()]
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            device_node_prefixes: default_device_prefixes(),
            mount_host_prefixes: vec![],
            hook_paths: vec![],
            allow_net_devices: false,
            cdi_kinds: vec![],
            attach_hook: None,
        }
    }
}

/// Bounds on guest output. The Kubernetes ones come from resource.k8s.io/v1.
pub mod bounds {
    pub const STATE_BYTES: usize = 64 << 10;
    pub const ENV_PER_DEVICE: usize = 256;
    pub const ENV_VALUE_BYTES: usize = 32 << 10;
    pub const DEVICE_NODES_PER_DEVICE: usize = 64;
    pub const MOUNTS_PER_DEVICE: usize = 256;
    pub const HOOKS_PER_DEVICE: usize = 16;
    pub const NET_DEVICES_PER_DEVICE: usize = 16;
    pub const CDI_IDS_PER_DEVICE: usize = 16;
    pub const PATH_BYTES: usize = 4096;
    pub const ARGS_PER_HOOK: usize = 64;
    pub const CONDITIONS: usize = 8;
    pub const STATUS_DATA_BYTES: usize = 10 << 10;
    pub const IPS: usize = 16;
    pub const INTERFACE_NAME_BYTES: usize = 256;
    pub const HARDWARE_ADDRESS_BYTES: usize = 128;
    pub const CONDITION_MESSAGE_BYTES: usize = 32 << 10;
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("guest prepared device {pool}/{device}{}, which is not allocated to this claim for this driver", share(.share_id))]
    NotAllocated {
        pool: String,
        device: String,
        share_id: Option<String>,
    },
    #[error("guest prepared device {pool}/{device}{} more than once", share(.share_id))]
    Duplicate {
        pool: String,
        device: String,
        share_id: Option<String>,
    },
    #[error("guest did not prepare allocated device {pool}/{device}{}", share(.share_id))]
    Missing {
        pool: String,
        device: String,
        share_id: Option<String>,
    },
    #[error("guest returned {size} bytes of state; at most {} are kept", bounds::STATE_BYTES)]
    StateTooLarge { size: usize },
    #[error("device {pool}/{device}: {reason}")]
    Device {
        pool: String,
        device: String,
        reason: String,
    },
}

fn share(id: &Option<String>) -> String {
    id.as_deref().map(|s| format!(" (share {s})")).unwrap_or_default()
}

type Key<'a> = (&'a str, &'a str, Option<&'a str>);

impl Policy {
    /// Check a guest's answer to `prepare(claim)`.
    pub fn check(&self, claim: &types::Claim, prepared: &types::PreparedClaim) -> Result<(), PolicyError> {
        if prepared.state.len() > bounds::STATE_BYTES {
            return Err(PolicyError::StateTooLarge {
                size: prepared.state.len(),
            });
        }
        let allocated: HashSet<Key<'_>> = claim
            .devices
            .iter()
            .map(|d| (d.pool.as_str(), d.device.as_str(), d.share_id.as_deref()))
            .collect();
        let mut seen: HashSet<Key<'_>> = HashSet::new();
        for d in &prepared.devices {
            let key = (d.pool.as_str(), d.device.as_str(), d.share_id.as_deref());
            if !allocated.contains(&key) {
                return Err(PolicyError::NotAllocated {
                    pool: d.pool.clone(),
                    device: d.device.clone(),
                    share_id: d.share_id.clone(),
                });
            }
            if !seen.insert(key) {
                return Err(PolicyError::Duplicate {
                    pool: d.pool.clone(),
                    device: d.device.clone(),
                    share_id: d.share_id.clone(),
                });
            }
            let fail = |reason: String| PolicyError::Device {
                pool: d.pool.clone(),
                device: d.device.clone(),
                reason,
            };
            self.check_edits(&d.edits).map_err(fail)?;
            self.check_cdi_ids(&d.cdi_device_ids).map_err(fail)?;
            if let Some(status) = &d.status {
                check_status(status).map_err(fail)?;
            }
        }
        if let Some(missing) = claim
            .devices
            .iter()
            .find(|d| !seen.contains(&(d.pool.as_str(), d.device.as_str(), d.share_id.as_deref())))
        {
            return Err(PolicyError::Missing {
                pool: missing.pool.clone(),
                device: missing.device.clone(),
                share_id: missing.share_id.clone(),
            });
        }
        Ok(())
    }

    fn check_cdi_ids(&self, ids: &[String]) -> Result<(), String> {
        bounded("CDI device IDs", ids.len(), bounds::CDI_IDS_PER_DEVICE)?;
        for id in ids {
            let Some((kind, name)) = id.split_once('=') else {
                return Err(format!("CDI device ID {id:?} is not of the form vendor/class=name"));
            };
            if !self.cdi_kinds.iter().any(|k| k == kind) {
                return Err(format!(
                    "CDI device ID {id:?}: kind {kind:?} is not in the allowed kinds {:?}",
                    self.cdi_kinds
                ));
            }
            let valid_name = !name.is_empty()
                && name.len() <= 253
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name.ends_with(|c: char| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
            if !valid_name {
                return Err(format!("CDI device ID {id:?}: {name:?} is not a valid CDI device name"));
            }
        }
        Ok(())
    }

    fn check_edits(&self, e: &types::ContainerEdits) -> Result<(), String> {
        bounded("environment variables", e.env.len(), bounds::ENV_PER_DEVICE)?;
        bounded("device nodes", e.device_nodes.len(), bounds::DEVICE_NODES_PER_DEVICE)?;
        bounded("mounts", e.mounts.len(), bounds::MOUNTS_PER_DEVICE)?;
        bounded("hooks", e.hooks.len(), bounds::HOOKS_PER_DEVICE)?;
        bounded("network devices", e.net_devices.len(), bounds::NET_DEVICES_PER_DEVICE)?;
        for v in &e.env {
            if v.name.is_empty() || v.name.contains(['=', '\0']) || v.name.len() > 1024 {
                return Err(format!("environment variable name {:?} is not valid", v.name));
            }
            if v.value.contains('\0') || v.value.len() > bounds::ENV_VALUE_BYTES {
                return Err(format!(
                    "environment variable {} has an invalid or oversized value",
                    v.name
                ));
            }
        }
        for n in &e.device_nodes {
            clean_absolute(&n.path).map_err(|r| format!("device node path {:?}: {r}", n.path))?;
            let host = n.host_path.as_deref().unwrap_or(&n.path);
            clean_absolute(host).map_err(|r| format!("device node host path {host:?}: {r}"))?;
            if !under_any(host, &self.device_node_prefixes) {
                return Err(format!(
                    "device node {host:?} is outside the allowed prefixes {:?}",
                    self.device_node_prefixes
                ));
            }
            if let Some(p) = &n.permissions
                && (p.is_empty() || !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')))
            {
                return Err(format!(
                    "device node {:?}: permissions {p:?} are not a subset of \"rwm\"",
                    n.path
                ));
            }
            if let Some(t) = &n.node_type
                && !matches!(t.as_str(), "c" | "b" | "u" | "p")
            {
                return Err(format!("device node {:?}: type {t:?} is not one of c, b, u, p", n.path));
            }
        }
        for m in &e.mounts {
            clean_absolute(&m.host_path).map_err(|r| format!("mount host path {:?}: {r}", m.host_path))?;
            clean_absolute(&m.container_path)
                .map_err(|r| format!("mount container path {:?}: {r}", m.container_path))?;
            if !under_any(&m.host_path, &self.mount_host_prefixes) {
                return Err(format!(
                    "mount of host path {:?} is outside the allowed prefixes {:?}",
                    m.host_path, self.mount_host_prefixes
                ));
            }
            if m.options.iter().any(|o| o.contains('\0') || o.len() > 256) {
                return Err(format!("mount {:?} has an invalid option", m.container_path));
            }
        }
        for h in &e.hooks {
            if let Some(attach) = self.attach_hook.as_ref().filter(|a| a.path == h.path) {
                attach.accepts(h)?;
                continue;
            }
            if !self.hook_paths.iter().any(|p| p == &h.path) {
                return Err(format!(
                    "hook {:?} is not in the allowed hook paths {:?}",
                    h.path, self.hook_paths
                ));
            }
            bounded("hook arguments", h.args.len(), bounds::ARGS_PER_HOOK)?;
            if h.args
                .iter()
                .chain(&h.env)
                .any(|a| a.contains('\0') || a.len() > bounds::PATH_BYTES)
            {
                return Err(format!(
                    "hook {:?} has an invalid argument or environment entry",
                    h.path
                ));
            }
            if h.timeout_seconds.is_some_and(|t| t <= 0) {
                return Err(format!("hook {:?} has a timeout that is not positive", h.path));
            }
        }
        if !e.net_devices.is_empty() && !self.allow_net_devices {
            return Err("network devices are not allowed for this driver (policy allow_net_devices)".into());
        }
        for n in &e.net_devices {
            for name in [&n.host_interface_name, &n.name] {
                if !is_interface_name(name) {
                    return Err(format!("{name:?} is not a valid network interface name"));
                }
            }
        }
        Ok(())
    }
}

fn check_status(s: &types::DeviceStatus) -> Result<(), String> {
    bounded("conditions", s.conditions.len(), bounds::CONDITIONS)?;
    for c in &s.conditions {
        let valid_type = !c.condition_type.is_empty()
            && c.condition_type.len() <= 316
            && c.condition_type
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | '/'));
        if !valid_type {
            return Err(format!("condition type {:?} is not valid", c.condition_type));
        }
        if c.message.len() > bounds::CONDITION_MESSAGE_BYTES {
            return Err(format!("condition {} has an oversized message", c.condition_type));
        }
        // metav1.Condition: a CamelCase reason is required.
        let valid_reason = c.reason.len() <= 1024
            && c.reason.starts_with(|ch: char| ch.is_ascii_alphabetic())
            && c.reason
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | ',' | ':'))
            && !c.reason.ends_with([',', ':']);
        if !valid_reason {
            return Err(format!(
                "condition {}: reason {:?} is not a CamelCase word",
                c.condition_type, c.reason
            ));
        }
    }
    if let Some(data) = &s.data {
        if data.len() > bounds::STATUS_DATA_BYTES {
            return Err(format!(
                "status data is {} bytes; at most {} are allowed",
                data.len(),
                bounds::STATUS_DATA_BYTES
            ));
        }
        serde_json::from_str::<serde_json::Value>(data).map_err(|e| format!("status data is not JSON: {e}"))?;
    }
    if let Some(n) = &s.network_data {
        bounded("IP addresses", n.ips.len(), bounds::IPS)?;
        if n.interface_name.len() > bounds::INTERFACE_NAME_BYTES {
            return Err("network interface name is too long".into());
        }
        if n.hardware_address.len() > bounds::HARDWARE_ADDRESS_BYTES {
            return Err("hardware address is too long".into());
        }
        let mut seen = HashSet::new();
        for ip in &n.ips {
            if !is_cidr(ip) {
                return Err(format!("{ip:?} is not an IP address in CIDR form"));
            }
            if !seen.insert(ip) {
                return Err(format!("IP address {ip} is listed twice"));
            }
        }
    }
    Ok(())
}

/// Share IDs must be usable in CDI names like claim UIDs.
pub fn is_valid_share_id(id: &str) -> bool {
    is_safe_uid(id)
}

fn bounded(what: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        Err(format!("{n} {what}; at most {max} are allowed"))
    } else {
        Ok(())
    }
}

/// An absolute path with no `.`/`..` components, empty components or NULs,
/// so that a prefix check on it means what it says.
fn clean_absolute(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("not absolute");
    }
    if path.len() > bounds::PATH_BYTES || path.contains('\0') {
        return Err("too long or contains NUL");
    }
    let rest = path.strip_suffix('/').unwrap_or(path);
    if rest.len() > 1 && rest[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("not a clean path (empty, `.` or `..` components)");
    }
    Ok(())
}

fn under_any(path: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        let p = p.trim_end_matches('/');
        path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')) || p.is_empty()
    })
}

fn is_interface_name(name: &str) -> bool {
    // IFNAMSIZ is 16 including the NUL.
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

fn is_cidr(s: &str) -> bool {
    let Some((addr, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else { return false };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use types::*;

    fn edits() -> ContainerEdits {
        ContainerEdits {
            env: vec![],
            device_nodes: vec![],
            mounts: vec![],
            hooks: vec![],
            net_devices: vec![],
        }
    }

    fn claim() -> Claim {
        Claim {
            ref_: ClaimRef {
                namespace: "ns".into(),
                name: "c".into(),
                uid: "u".into(),
            },
            devices: vec![AllocatedDevice {
                request: "r".into(),
                pool: "p".into(),
                device: "d".into(),
                share_id: None,
                consumed_capacity: vec![],
                admin_access: false,
            }],
            configs: vec![],
        }
    }

    fn prepared(e: ContainerEdits) -> PreparedClaim {
        PreparedClaim {
            devices: vec![PreparedDevice {
                pool: "p".into(),
                device: "d".into(),
                share_id: None,
                edits: e,
                cdi_device_ids: vec![],
                status: None,
            }],
            state: vec![],
        }
    }

    #[test]
    fn accepts_allocated_device_with_allowed_edits() {
        let mut e = edits();
        e.env.push(EnvVar {
            name: "A".into(),
            value: "b".into(),
        });
        e.device_nodes.push(DeviceNode {
            path: "/dev/x".into(),
            host_path: None,
            node_type: Some("c".into()),
            major: None,
            minor: None,
            file_mode: None,
            permissions: Some("rw".into()),
            uid: None,
            gid: None,
        });
        Policy::default().check(&claim(), &prepared(e)).unwrap();
    }

    #[test]
    fn refuses_unallocated_missing_and_duplicate_devices() {
        let p = Policy::default();
        let mut out = prepared(edits());
        out.devices[0].device = "other".into();
        assert!(matches!(p.check(&claim(), &out), Err(PolicyError::NotAllocated { .. })));
        let mut out = prepared(edits());
        out.devices.push(out.devices[0].clone());
        assert!(matches!(p.check(&claim(), &out), Err(PolicyError::Duplicate { .. })));
        let mut out = prepared(edits());
        out.devices.clear();
        assert!(matches!(p.check(&claim(), &out), Err(PolicyError::Missing { .. })));
    }

    #[test]
    fn refuses_escapes() {
        let p = Policy {
            mount_host_prefixes: vec!["/opt/driver".into()],
            ..Policy::default()
        };
        let mount = |host: &str| {
            let mut e = edits();
            e.mounts.push(Mount {
                host_path: host.into(),
                container_path: "/x".into(),
                mount_type: None,
                options: vec![],
            });
            prepared(e)
        };
        p.check(&claim(), &mount("/opt/driver/lib")).unwrap();
        for bad in [
            "/etc",
            "/opt/driver/../../etc",
            "/opt/driverx",
            "relative",
            "/opt//driver",
        ] {
            assert!(p.check(&claim(), &mount(bad)).is_err(), "{bad}");
        }
        let mut e = edits();
        e.hooks.push(Hook {
            stage: HookStage::CreateRuntime,
            path: "/bin/sh".into(),
            args: vec![],
            env: vec![],
            timeout_seconds: None,
        });
        assert!(p.check(&claim(), &prepared(e)).is_err());
        let mut e = edits();
        e.net_devices.push(NetDevice {
            host_interface_name: "eth0".into(),
            name: "net1".into(),
        });
        assert!(p.check(&claim(), &prepared(e)).is_err());
    }

    #[test]
    fn the_attach_hook_is_accepted_only_as_the_host_prepared_it() {
        let p = Policy {
            attach_hook: Some(AttachHook {
                path: "/opt/dwh/bin/dra-wasm-host".into(),
                plugin_dir: "/var/lib/kubelet/plugins/net.dra.dev".into(),
            }),
            ..Policy::default()
        };
        let with = |stage: HookStage, args: &[&str]| {
            let mut e = edits();
            e.hooks.push(Hook {
                stage,
                path: "/opt/dwh/bin/dra-wasm-host".into(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                env: vec![],
                timeout_seconds: Some(10),
            });
            prepared(e)
        };
        let good = [
            "dra-wasm-host",
            "net-attach",
            "--dir",
            "/var/lib/kubelet/plugins/net.dra.dev",
            "--link",
            "dwh0123456789ab",
        ];
        p.check(&claim(), &with(HookStage::CreateRuntime, &good)).unwrap();
        assert!(p.check(&claim(), &with(HookStage::Poststop, &good)).is_err());
        let install = ["dra-wasm-host", "install-hook", "--to", "/usr/bin/x", "--link", "dwh0"];
        let e = p
            .check(&claim(), &with(HookStage::CreateRuntime, &install))
            .unwrap_err();
        assert!(e.to_string().contains("not as the host prepared it"), "{e}");
        let mut other_dir = good;
        other_dir[3] = "/etc";
        assert!(p.check(&claim(), &with(HookStage::CreateRuntime, &other_dir)).is_err());
        let mut other_link = good;
        other_link[5] = "eth0";
        assert!(p.check(&claim(), &with(HookStage::CreateRuntime, &other_link)).is_err());
    }

    #[test]
    fn references_to_installed_cdi_specs_need_an_allowed_kind() {
        let p = Policy {
            cdi_kinds: vec!["nvidia.com/gpu".into()],
            ..Policy::default()
        };
        let with = |id: &str| {
            let mut out = prepared(edits());
            out.devices[0].cdi_device_ids.push(id.into());
            out
        };
        p.check(&claim(), &with("nvidia.com/gpu=GPU-1234")).unwrap();
        for bad in [
            "vendor.com/x=1",
            "nvidia.com/gpu",
            "nvidia.com/gpu=",
            "nvidia.com/gpu=a/b",
        ] {
            assert!(p.check(&claim(), &with(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_state_and_status() {
        let p = Policy::default();
        let mut out = prepared(edits());
        out.state = vec![0; bounds::STATE_BYTES + 1];
        assert!(matches!(
            p.check(&claim(), &out),
            Err(PolicyError::StateTooLarge { .. })
        ));
        let mut out = prepared(edits());
        out.devices[0].status = Some(DeviceStatus {
            conditions: vec![],
            data: None,
            network_data: Some(NetworkData {
                interface_name: "net1".into(),
                ips: vec!["10.0.0.5/24".into(), "not-an-ip".into()],
                hardware_address: String::new(),
            }),
        });
        assert!(p.check(&claim(), &out).is_err());
    }
}
