//! Which node resources belong to which device, and the check that a claim
//! gets only its own devices' (dra:driver@0.2).
//!
//! The policy's path rules say which device nodes and interfaces a driver
//! may hand out at all; they cannot say which device a node belongs to, so
//! with `device_nodes = ["/dev/nvidia[0-9]*"]` a guest could answer a claim
//! allocated GPU 0 with `/dev/nvidia1`. A 0.2 inventory declares the node
//! resources of each device; a prepared answer that hands a claim a
//! resource declared only by devices the claim was not allocated is
//! refused, naming both devices. A resource no device declares is left to
//! the path rules, as before (and everything of a 0.1 guest, which cannot
//! declare any).
//!
//! Device nodes are matched by path and by what the node is (type and
//! numbers, read from the node), so another path to the same device does
//! not slip through.

use super::devices::{self, HostDevice};
use super::*;

/// A device of the inventory: (pool, device).
type DeviceKey<'a> = (&'a str, &'a str);

/// The declared owners of each node resource of an inventory.
#[derive(Default)]
struct Owners<'a> {
    by_path: HashMap<&'a str, Vec<DeviceKey<'a>>>,
    by_node: HashMap<HostDevice, Vec<DeviceKey<'a>>>,
    by_interface: HashMap<&'a str, Vec<DeviceKey<'a>>>,
}

impl<'a> Owners<'a> {
    /// `None` when the inventory declares nothing (every 0.1 inventory):
    /// nothing to check, nothing read from the node.
    fn of(inventory: &'a [model::Pool], device_root: &std::path::Path) -> Option<Self> {
        let mut owners = Owners::default();
        let mut declared = false;
        for pool in inventory {
            for d in &pool.devices {
                for r in &d.node_resources {
                    declared = true;
                    let key = (pool.name.as_str(), d.name.as_str());
                    match r {
                        model::NodeResource::DeviceNode(path) => {
                            owners.by_path.entry(path.as_str()).or_default().push(key);
                        }
                        model::NodeResource::HostInterface(name) => {
                            owners.by_interface.entry(name.as_str()).or_default().push(key);
                        }
                    }
                }
            }
        }
        if !declared {
            return None;
        }
        // One lookup per declared path (the partitions of a GPU share it). A
        // declared node missing on this node owns only its path.
        for (path, keys) in &owners.by_path {
            if let Ok(node) = devices::lookup(device_root, path) {
                owners.by_node.entry(node).or_default().extend(keys.iter().copied());
            }
        }
        Some(owners)
    }
}

impl Policy {
    /// Refuse an answer that hands the claim a node resource declared only
    /// by devices not allocated to it. Runs after the edits were checked,
    /// so device nodes carry the type and numbers read from the node.
    pub(super) fn check_ownership(
        &self,
        claim: &model::Claim,
        inventory: &[model::Pool],
        prepared: &model::PreparedClaim,
    ) -> Result<(), PolicyError> {
        let Some(owners) = Owners::of(inventory, &self.device_root) else {
            return Ok(());
        };
        let allocated: HashSet<DeviceKey<'_>> = claim
            .devices
            .iter()
            .map(|d| (d.pool.as_str(), d.device.as_str()))
            .collect();
        let judge = |d: &model::PreparedDevice, field: String, owners: Vec<DeviceKey<'_>>| {
            if owners.is_empty() || owners.iter().any(|o| allocated.contains(o)) {
                return Ok(());
            }
            let named: Vec<String> = owners
                .iter()
                .map(|(pool, device)| format!("{}/{}", quoted(pool), quoted(device)))
                .collect();
            Err(PolicyError::Refused {
                pool: d.pool.clone(),
                device: d.device.clone(),
                field,
                rule: Rule::Ownership,
                reason: format!(
                    "the inventory declares it for device {}, which is not allocated to this claim",
                    named.join(", ")
                ),
            })
        };
        for d in &prepared.devices {
            for (i, n) in d.edits.device_nodes.iter().enumerate() {
                let host = n.host_path.as_deref().unwrap_or(&n.path);
                let mut found: Vec<DeviceKey<'_>> = owners.by_path.get(host).cloned().unwrap_or_default();
                if let Some(node) = as_host_device(n) {
                    found.extend(owners.by_node.get(&node).into_iter().flatten().copied());
                }
                judge(d, format!("deviceNodes[{i}] {}", quoted(host)), found)?;
            }
            for (i, n) in d.edits.net_devices.iter().enumerate() {
                let found = owners.by_interface.get(n.host_interface_name.as_str()).cloned();
                judge(
                    d,
                    format!("netDevices[{i}] {}", quoted(&n.host_interface_name)),
                    found.unwrap_or_default(),
                )?;
            }
            for (i, h) in d.edits.hooks.iter().enumerate() {
                let Some(link) = self.attach_hook.as_ref().and_then(|a| a.link(h)) else {
                    continue;
                };
                let found = owners.by_interface.get(link).cloned();
                judge(
                    d,
                    format!("hooks[{i}] --link {}", quoted(link)),
                    found.unwrap_or_default(),
                )?;
            }
        }
        Ok(())
    }
}

/// What a checked device node is (the check filled in its type and numbers).
fn as_host_device(n: &model::DeviceNode) -> Option<HostDevice> {
    let kind = match n.node_type.as_deref()? {
        "c" | "u" => devices::NodeKind::Char,
        "b" => devices::NodeKind::Block,
        _ => return None,
    };
    Some(HostDevice {
        kind,
        major: n.major?,
        minor: n.minor?,
    })
}
