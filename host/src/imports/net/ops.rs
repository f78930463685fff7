//! One driver's network operations: links created on its parents,
//! addresses from its IPAM, attachments, all recorded in its store.

use super::types::{AddressRequest, Attachment as AttachmentRequest, Link, Macvlan, MacvlanMode};
use super::*;
use crate::model::{Hook, HookStage};
use netlink::NetlinkError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use store::{Attachment, LinkRecord, RouteRecord, Store, StoreError};

/// One driver's network setup: its granted parents, its state, its hook.
#[derive(Debug)]
pub struct NetDriver {
    pub driver: String,
    pub parents: Vec<String>,
    pub store: Store,
    /// `<kubelet root>/plugins/<driver>`: where the attach sockets are.
    pub plugin_dir: PathBuf,
    /// The hook program as the container runtime sees it.
    pub hook_path: String,
}

impl NetDriver {
    pub fn new(driver: &str, parents: Vec<String>, plugin_dir: &Path, hook_path: String) -> Result<Self, StoreError> {
        Ok(Self {
            driver: driver.to_owned(),
            parents,
            store: Store::open(&plugin_dir.join("net"))?,
            plugin_dir: plugin_dir.to_owned(),
            hook_path,
        })
    }

    pub(super) fn check_parent(&self, parent: &str) -> Result<(), NetOpError> {
        if self.parents.iter().any(|p| p == parent) {
            Ok(())
        } else {
            Err(NetOpError::Denied(format!(
                "parent link {parent:?} is not granted to driver {} (granted: {:?})",
                self.driver, self.parents
            )))
        }
    }

    /// Which claim the host created each of this driver's links for, by
    /// link name (one read of the driver's state).
    pub fn link_owners(&self) -> Result<HashMap<String, String>, StoreError> {
        Ok(self
            .store
            .read()?
            .links
            .into_iter()
            .map(|l| (l.name, l.claim_uid))
            .collect())
    }

    pub(super) fn record(&self, name: &str) -> Result<LinkRecord, NetOpError> {
        self.store
            .read()?
            .links
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| {
                NetOpError::Denied(format!(
                    "link {name:?} is not a link the host created for driver {}",
                    self.driver
                ))
            })
    }

    /// The links this driver may see.
    pub fn list_links(&self) -> Result<Vec<Link>, NetOpError> {
        let ours: Vec<String> = self.store.read()?.links.into_iter().map(|l| l.name).collect();
        let links = netlink::run(None, |h| async move { netlink::list(&h).await })?;
        Ok(links
            .into_iter()
            .filter(|l| self.parents.contains(&l.name) || ours.contains(&l.name))
            .map(|l| {
                let (speed, pci) = if self.parents.contains(&l.name) {
                    netlink::sysfs_details(&l.name)
                } else {
                    (None, None)
                };
                Link {
                    name: l.name,
                    index: l.index,
                    kind: l.kind,
                    mtu: l.mtu,
                    hardware_address: l.mac,
                    up: l.up,
                    addresses: l.addresses,
                    speed_mbps: speed,
                    pci_address: pci,
                }
            })
            .collect())
    }

    pub fn create_macvlan(&self, spec: &Macvlan) -> Result<Link, NetOpError> {
        self.check_parent(&spec.parent)?;
        if !crate::claim::is_safe_uid(&spec.claim_uid) {
            return Err(NetOpError::Invalid(format!("{:?} is not a claim UID", spec.claim_uid)));
        }
        if spec.key.is_empty() || spec.key.len() > 253 {
            return Err(NetOpError::Invalid("the link key must have 1 to 253 bytes".into()));
        }
        let mac =
            match &spec.hardware_address {
                Some(m) => Some(netlink::parse_mac(m).ok_or_else(|| {
                    NetOpError::Invalid(format!("{m:?} is not a MAC address such as 02:00:00:00:00:01"))
                })?),
                None => None,
            };
        if spec.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
            return Err(NetOpError::Invalid("the MTU must be between 68 and 65535".into()));
        }
        let name = link_name(&self.driver, &spec.claim_uid, &spec.key);
        // Recorded before it exists, so that a crash right after creating it
        // still leaves a record that reconciliation can clean up.
        self.store.update(|d| {
            if !d.links.iter().any(|l| l.name == name) {
                d.links.push(LinkRecord {
                    name: name.clone(),
                    claim_uid: spec.claim_uid.clone(),
                    parent: spec.parent.clone(),
                    mac: String::new(),
                    attachment: None,
                    attached: None,
                    egress_rate_bps: None,
                });
            }
            Ok(())
        })?;
        let parent = spec.parent.clone();
        let mode = netlink::macvlan_mode(match spec.mode {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        });
        let mtu = spec.mtu;
        let n = name.clone();
        let link = netlink::run(None, move |h| async move {
            let parent_link = netlink::by_name(&h, &parent)
                .await?
                .ok_or_else(|| NetlinkError::Failed {
                    op: format!("creating a macvlan on {parent}"),
                    message: format!("the parent link {parent} does not exist on this node"),
                    errno: Some(libc::ENODEV),
                })?;
            netlink::create_macvlan(&h, &n, &parent_link, mode, mtu, mac).await
        })?;
        let mac = link.mac.clone();
        self.store.update(|d| {
            if let Some(r) = d.links.iter_mut().find(|l| l.name == name) {
                r.mac = mac;
            }
            Ok(())
        })?;
        tracing::info!(driver = %self.driver, claim.uid = %spec.claim_uid, link = %link.name, parent = %spec.parent, mac = %link.mac, "macvlan created");
        Ok(Link {
            name: link.name,
            index: link.index,
            kind: link.kind,
            mtu: link.mtu,
            hardware_address: link.mac,
            up: link.up,
            addresses: link.addresses,
            speed_mbps: None,
            pci_address: None,
        })
    }

    pub fn delete_link(&self, name: &str) -> Result<bool, NetOpError> {
        let record = self.record(name)?;
        let deleted = remove_link(&record)?;
        self.store.update(|d| {
            d.links.retain(|l| l.name != name);
            Ok(())
        })?;
        Ok(deleted)
    }

    pub fn allocate_address(&self, req: &AddressRequest) -> Result<String, NetOpError> {
        self.check_parent(&req.parent)?;
        if !crate::claim::is_safe_uid(&req.claim_uid) || req.share_id.len() > 253 {
            return Err(NetOpError::Invalid("invalid claim UID or share ID".into()));
        }
        let pool = store::Pool::parse(
            &req.pool.subnet,
            req.pool.range_start.as_deref(),
            req.pool.range_end.as_deref(),
            req.pool.gateway.as_deref(),
        )
        .map_err(|e| NetOpError::Invalid(format!("IP pool of {}: {e}", req.parent)))?;
        let address = self.store.allocate(
            &req.parent,
            &pool,
            &req.claim_uid,
            &req.share_id,
            req.static_address.as_deref(),
        )?;
        tracing::info!(driver = %self.driver, claim.uid = %req.claim_uid, share = %req.share_id, %address, "address allocated");
        Ok(address)
    }

    /// Release a claim's addresses and delete its links. Returns how many
    /// addresses it held.
    pub fn release_claim(&self, claim_uid: &str) -> Result<u32, NetOpError> {
        let links: Vec<LinkRecord> = self
            .store
            .read()?
            .links
            .into_iter()
            .filter(|l| l.claim_uid == claim_uid)
            .collect();
        for l in &links {
            if let Err(e) = remove_link(l) {
                tracing::warn!(driver = %self.driver, claim.uid = %claim_uid, link = %l.name, error = %crate::error::Chain(&e), "could not delete a link of a released claim");
                return Err(e);
            }
        }
        let released = self.store.update(|d| {
            d.links.retain(|l| l.claim_uid != claim_uid);
            let before = d.allocations.len();
            d.allocations.retain(|a| a.claim_uid != claim_uid);
            Ok((before - d.allocations.len()) as u32)
        })?;
        if released > 0 || !links.is_empty() {
            tracing::info!(driver = %self.driver, claim.uid = %claim_uid, addresses = released, links = links.len(), "claim's network resources released");
        }
        Ok(released)
    }

    pub fn prepare_attachment(&self, a: &AttachmentRequest) -> Result<Hook, NetOpError> {
        let record = self.record(&a.link)?;
        if record.claim_uid != a.claim_uid {
            return Err(NetOpError::Denied(format!(
                "link {} belongs to claim {}, not {}",
                a.link, record.claim_uid, a.claim_uid
            )));
        }
        if !is_valid_ifname(&a.pod_interface) {
            return Err(NetOpError::Invalid(format!(
                "{:?} is not a valid interface name (1 to 15 letters, digits, '-', '_', '.')",
                a.pod_interface
            )));
        }
        if a.addresses.len() > 16 || a.routes.len() > 64 {
            return Err(NetOpError::Invalid("at most 16 addresses and 64 routes".into()));
        }
        for cidr in &a.addresses {
            if netlink::parse_cidr(cidr).is_none() {
                return Err(NetOpError::Invalid(format!(
                    "{cidr:?} is not an address in CIDR notation"
                )));
            }
        }
        let mut routes = Vec::with_capacity(a.routes.len());
        for r in &a.routes {
            let dest_ok = matches!(netlink::parse_cidr(&r.destination), Some((std::net::IpAddr::V4(_), _)));
            let gateway = match &r.gateway {
                Some(g) => Some(
                    g.parse()
                        .map_err(|_| NetOpError::Invalid(format!("route gateway {g:?} is not an IPv4 address")))?,
                ),
                None => None,
            };
            if !dest_ok {
                return Err(NetOpError::Invalid(format!(
                    "route destination {:?} is not an IPv4 CIDR",
                    r.destination
                )));
            }
            routes.push(RouteRecord {
                destination: r.destination.clone(),
                gateway,
            });
        }
        let attachment = Attachment {
            pod_interface: a.pod_interface.clone(),
            addresses: a.addresses.clone(),
            routes,
        };
        self.store.update(|d| {
            if let Some(r) = d.links.iter_mut().find(|l| l.name == a.link) {
                r.attachment = Some(attachment);
            }
            Ok(())
        })?;
        let program = Path::new(&self.hook_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dra-wasm-host".into());
        Ok(Hook {
            stage: HookStage::CreateRuntime,
            path: self.hook_path.clone(),
            args: vec![
                program,
                "net-attach".into(),
                "--dir".into(),
                self.plugin_dir.display().to_string(),
                "--link".into(),
                a.link.clone(),
            ],
            env: vec![],
            timeout_seconds: Some(10),
        })
    }

    pub fn configure_link(&self, name: &str, addresses: &[String]) -> Result<(), NetOpError> {
        self.record(name)?;
        for cidr in addresses {
            if netlink::parse_cidr(cidr).is_none() {
                return Err(NetOpError::Invalid(format!(
                    "{cidr:?} is not an address in CIDR notation"
                )));
            }
        }
        let name = name.to_owned();
        let addresses = addresses.to_vec();
        netlink::run(None, move |h| async move {
            let link = netlink::by_name(&h, &name).await?.ok_or_else(|| NetlinkError::Failed {
                op: format!("configuring {name}"),
                message: "the link is not in the node's network namespace".into(),
                errno: Some(libc::ENODEV),
            })?;
            for cidr in &addresses {
                netlink::add_address(&h, &link, cidr).await?;
            }
            netlink::set_up(&h, link.index).await
        })?;
        Ok(())
    }

    pub fn set_egress_rate(&self, name: &str, bits_per_second: u64) -> Result<bool, NetOpError> {
        self.record(name)?;
        if bits_per_second < 8_000 {
            return Err(NetOpError::Invalid(
                "an egress rate below 8 kbit/s is not useful".into(),
            ));
        }
        let available = attach::tc_program().is_some();
        self.store.update(|d| {
            if let Some(r) = d.links.iter_mut().find(|l| l.name == name) {
                r.egress_rate_bps = Some(bits_per_second);
            }
            Ok(())
        })?;
        Ok(available)
    }

    /// Release what the state holds for claims outside `prepared` (the
    /// checkpoint's claims): links left by a crash between the guest's
    /// prepare and the checkpoint commit, or by an unprepare that never ran.
    /// Returns the claims released.
    pub fn reconcile(&self, prepared: &std::collections::HashSet<String>) -> Result<Vec<String>, NetOpError> {
        let orphans = store::orphans(&self.store.read()?, prepared);
        for uid in &orphans {
            self.release_claim(uid)?;
        }
        // A link is recorded before it is created (see `create_macvlan`), so
        // every link a crashed process may have left is among these.
        Ok(orphans)
    }
}

/// Delete a recorded link wherever it is: the node's namespace, or the
/// pod's it was attached to (when that namespace still exists). False when
/// it is gone (it vanishes with the pod's namespace).
fn remove_link(record: &LinkRecord) -> Result<bool, NetOpError> {
    let name = record.name.clone();
    let deleted = netlink::run(None, move |h| async move {
        match netlink::by_name(&h, &name).await? {
            Some(l) => netlink::delete(&h, l.index).await,
            None => Ok(false),
        }
    })?;
    if deleted {
        return Ok(true);
    }
    let (Some(at), Some(attachment)) = (record.attached, record.attachment.clone()) else {
        return Ok(false);
    };
    let Some(ns) = attach::pod_netns(at) else {
        return Ok(false);
    };
    let mac = record.mac.clone();
    Ok(netlink::run(Some(ns), move |h| async move {
        match netlink::by_name(&h, &attachment.pod_interface).await? {
            Some(l) if l.mac == mac => netlink::delete(&h, l.index).await,
            _ => Ok(false),
        }
    })?)
}
