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
type DeviceKey = (String, String);

/// Who owns each node resource an inventory declares. Built once per
/// inventory, when a guest publishes one ([`Policy::ownership`]), not per
/// answer: it reads the declared device nodes from the node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ownership {
    by_path: HashMap<String, Vec<DeviceKey>>,
    by_node: HashMap<HostDevice, Vec<DeviceKey>>,
    by_interface: HashMap<String, Vec<DeviceKey>>,
}

impl Ownership {
    /// Nothing declared (every 0.1 inventory): nothing to check.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty() && self.by_interface.is_empty()
    }
}

impl Policy {
    /// The owners of `inventory`'s declared node resources. Each declared
    /// device node is looked up once (the partitions of a GPU share it); one
    /// missing on this node owns only its path.
    pub fn ownership(&self, inventory: &[model::Pool]) -> Ownership {
        let mut owners = Ownership::default();
        for pool in inventory {
            for d in &pool.devices {
                for r in &d.node_resources {
                    let key = (pool.name.clone(), d.name.clone());
                    match r {
                        model::NodeResource::DeviceNode(path) => {
                            owners.by_path.entry(path.clone()).or_default().push(key);
                        }
                        model::NodeResource::HostInterface(name) => {
                            owners.by_interface.entry(name.clone()).or_default().push(key);
                        }
                    }
                }
            }
        }
        for (path, keys) in &owners.by_path {
            if let Ok(node) = devices::lookup(&self.device_root, path) {
                owners.by_node.entry(node).or_default().extend(keys.iter().cloned());
            }
        }
        owners
    }

    /// Refuse an answer that hands the claim a node resource declared only
    /// by devices not allocated to it. Runs after the edits were checked,
    /// so device nodes carry the type and numbers read from the node.
    pub(super) fn check_ownership(
        &self,
        claim: &model::Claim,
        owners: &Ownership,
        prepared: &model::PreparedClaim,
    ) -> Result<(), PolicyError> {
        if owners.is_empty() {
            return Ok(());
        }
        let allocated =
            |(pool, device): &&DeviceKey| claim.devices.iter().any(|a| a.pool == *pool && a.device == *device);
        let judge = |d: &model::PreparedDevice, field: String, found: Vec<&DeviceKey>| {
            if found.is_empty() || found.iter().any(allocated) {
                return Ok(());
            }
            let named: Vec<String> = found
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
        let interface = |name: &str| owners.by_interface.get(name).into_iter().flatten().collect();
        for d in &prepared.devices {
            for (i, n) in d.edits.device_nodes.iter().enumerate() {
                let host = n.host_path.as_deref().unwrap_or(&n.path);
                let by_node = as_host_device(n).and_then(|node| owners.by_node.get(&node));
                let found = owners.by_path.get(host).into_iter().chain(by_node).flatten().collect();
                judge(d, format!("deviceNodes[{i}] {}", quoted(host)), found)?;
            }
            for (i, n) in d.edits.net_devices.iter().enumerate() {
                let field = format!("netDevices[{i}] {}", quoted(&n.host_interface_name));
                judge(d, field, interface(&n.host_interface_name))?;
            }
            for (i, h) in d.edits.hooks.iter().enumerate() {
                let Some(link) = self.attach_hook.as_ref().and_then(|a| a.link(h)) else {
                    continue;
                };
                judge(d, format!("hooks[{i}] --link {}", quoted(link)), interface(link))?;
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
