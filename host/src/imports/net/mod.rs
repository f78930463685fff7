//! `dra:driver/net`: link management for guests granted `net`.
//!
//! What a guest may touch, enforced here and nowhere else:
//! - the parent links its driver's `[drivers.net] parents` names, read-only
//!   apart from creating macvlans on them;
//! - the links the host created for it. Those are named by the host
//!   (`dwh` + a digest of driver, claim and key, see [`link_name`]) and
//!   recorded in the driver's [`store::Store`], so a guest cannot name any
//!   other link of the node, nor another driver's;
//! - of those, only the claim's whose `prepare` or `unprepare` is running
//!   ([`ImportsView::claim`]): every claim-scoped call names that claim or
//!   one of its links. Which links an answer may hand to containers is
//!   checked by the policy (`Policy::check_claim_links`).
//!
//! Addresses come from the host's IPAM ([`store`]), persisted beside the
//! checkpoint. A prepared link is attached to its pod later, when the pod's
//! network namespace exists: the CDI `createRuntime` hook runs
//! `dra-wasm-host net-attach`, which asks this host over a Unix socket
//! ([`attach`]) to move the link into the pod, rename, address, route and set
//! it up. Parent link state comes from a netlink multicast subscription
//! ([`monitor`]) and reaches the guest's `on-event` as `link` events.

pub mod attach;
pub mod monitor;
pub mod netlink;
pub mod store;

use crate::imports::ImportsView;
use crate::wit::bindings_net::{
    AddressRequest, Attachment as WitAttachment, Host, Link, Macvlan, MacvlanMode, NetError,
};
use crate::wit::types::{Event, Hook, HookStage};
use netlink::NetlinkError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use store::{Attachment, LinkRecord, RouteRecord, Store, StoreError};
use tokio::sync::mpsc;

/// The prefix of every link name the host creates for guests.
pub const LINK_PREFIX: &str = "dwh";

/// Linux's limit on interface names (IFNAMSIZ less the NUL).
pub const IFNAME_MAX: usize = 15;

/// The name of the link for `driver`'s claim `claim_uid` and key `key`:
/// `dwh` + 12 hex digits of a SHA-256 over the three, so that the same
/// inputs always name the same link (a retried prepare finds it) and a
/// guest cannot choose a name.
pub fn link_name(driver: &str, claim_uid: &str, key: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [driver, claim_uid, key] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let digest = hex::encode(h.finalize());
    format!("{LINK_PREFIX}{}", &digest[..IFNAME_MAX - LINK_PREFIX.len()])
}

/// Whether `name` can be a Linux interface name.
pub fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a network operation failed; its text is what the guest sees.
#[derive(Debug, thiserror::Error)]
pub enum NetOpError {
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<NetOpError> for NetError {
    fn from(e: NetOpError) -> Self {
        NetError { message: e.to_string() }
    }
}

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

    fn check_parent(&self, parent: &str) -> Result<(), NetOpError> {
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

    fn record(&self, name: &str) -> Result<LinkRecord, NetOpError> {
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
                tracing::warn!(driver = %self.driver, claim.uid = %claim_uid, link = %l.name, error = %e, "could not delete a link of a released claim");
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

    pub fn prepare_attachment(&self, a: &WitAttachment) -> Result<Hook, NetOpError> {
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

/// Process-wide network access: the drivers granted `net` and the link
/// monitor that feeds their guests' `on-event`.
#[derive(Debug, Default)]
pub struct Net {
    drivers: HashMap<String, Arc<NetDriver>>,
    router: Arc<monitor::LinkRouter>,
    monitor_started: Mutex<bool>,
}

impl Net {
    pub fn new(drivers: Vec<NetDriver>) -> Arc<Self> {
        Arc::new(Self {
            drivers: drivers.into_iter().map(|d| (d.driver.clone(), Arc::new(d))).collect(),
            router: Arc::default(),
            monitor_started: Mutex::new(false),
        })
    }

    pub fn driver(&self, name: &str) -> Option<&Arc<NetDriver>> {
        self.drivers.get(name)
    }

    pub fn router(&self) -> &Arc<monitor::LinkRouter> {
        &self.router
    }

    /// Deliver `driver`'s parents' link events to `sink`, starting the
    /// netlink monitor at the first call; the current state of each parent
    /// is delivered at once, so health is right from the start.
    pub fn watch(&self, driver: &str, sink: mpsc::Sender<Event>) -> Result<(), NetOpError> {
        let Some(d) = self.drivers.get(driver) else {
            return Err(NetOpError::Denied(format!("driver {driver} is not granted net")));
        };
        {
            let mut started = self.monitor_started.lock().unwrap_or_else(|p| p.into_inner());
            if !*started {
                monitor::start(Arc::clone(&self.router))?;
                *started = true;
            }
        }
        self.router.subscribe(driver, d.parents.clone(), sink);
        let links = netlink::run(None, |h| async move { netlink::list(&h).await })?;
        for l in links.iter().filter(|l| d.parents.contains(&l.name)) {
            self.router.deliver_to(driver, l);
        }
        Ok(())
    }
}

/// A driver's grant of `net`.
#[derive(Clone, Debug)]
pub struct NetGrant {
    pub driver: Arc<NetDriver>,
}

fn grant(state: &ImportsView<'_>) -> Result<Arc<NetDriver>, NetError> {
    // Only guests granted `net` are linked with this interface.
    state
        .imports
        .net
        .as_ref()
        .map(|g| Arc::clone(&g.driver))
        .ok_or_else(|| NetError {
            message: "net is not granted to this driver".into(),
        })
}

/// What a guest's net call acts on, checked against the claim of the call
/// ([`ImportsView::claim`]) before the operation runs.
enum Acts {
    /// The node's links as the driver may see them (`list-links`).
    OnNode,
    /// A claim's links and addresses, by its UID: it must be the claim of
    /// the call.
    ForClaim(String),
    /// A link by name: it must be one the host created for the claim of the
    /// call.
    OnLink(String),
}

/// Run one net operation for the guest on the blocking pool
/// ([`crate::imports::blocking`]): each is netlink round trips and a
/// durable write of the driver's state. First, what it `acts` on must be the
/// claim of the call: a guest acting for another claim could take down that
/// claim's pod network (`release-claim`) or give its pod another pod's link.
/// A refusal is a net-error naming both claims, and a warning in the log.
fn run<T, F>(
    state: &ImportsView<'_>,
    acts: Acts,
    op: F,
) -> impl Future<Output = wasmtime::Result<Result<T, NetError>>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(&NetDriver) -> Result<T, NetOpError> + Send + 'static,
{
    let claim = state.claim.map(str::to_owned);
    let checked = grant(state).and_then(|driver| {
        let link = match acts {
            Acts::OnNode => None,
            Acts::ForClaim(asked) => {
                acting_for(claim.as_deref(), &asked)?;
                None
            }
            Acts::OnLink(name) => Some(name),
        };
        Ok((driver, link))
    });
    let deadline = state.deadline;
    async move {
        let (driver, link) = match checked {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let work = move || {
            if let Some(name) = &link {
                owned(&driver, name, claim.as_deref())?;
            }
            op(&driver)
        };
        Ok(match crate::imports::blocking(deadline, work).await? {
            Some(result) => result.map_err(NetError::from),
            None => Err(NetError {
                message: "the host's network operation failed (see the host's log)".into(),
            }),
        })
    }
}

/// [`Acts::ForClaim`]: `asked` must be `claim`, the claim of the call.
fn acting_for(claim: Option<&str>, asked: &str) -> Result<(), NetError> {
    let why = match claim {
        Some(current) if current == asked => return Ok(()),
        Some(current) => format!("claim {asked:?} is not the claim of this call ({current:?})"),
        None => format!("claim {asked:?}: the net import acts for a claim only during its prepare or unprepare"),
    };
    tracing::warn!(asked = %asked, call_claim = ?claim, "refused a guest's net call for another claim");
    Err(NetError { message: why })
}

/// [`Acts::OnLink`]: the link `name` must have been created for `claim`.
fn owned(d: &NetDriver, name: &str, claim: Option<&str>) -> Result<(), NetOpError> {
    let owner = d.record(name)?.claim_uid;
    if claim == Some(owner.as_str()) {
        return Ok(());
    }
    tracing::warn!(link = %name, link_claim = %owner, call_claim = ?claim, "refused a guest's net call on another claim's link");
    Err(NetOpError::Denied(match claim {
        Some(current) => {
            format!("link {name:?} belongs to claim {owner:?}, not to the claim of this call ({current:?})")
        }
        None => format!("link {name:?}: the net import acts on a claim's links only during its prepare or unprepare"),
    }))
}

impl Host for ImportsView<'_> {
    async fn list_links(&mut self) -> wasmtime::Result<Result<Vec<Link>, NetError>> {
        run(self, Acts::OnNode, |d| d.list_links()).await
    }

    async fn create_macvlan(&mut self, spec: Macvlan) -> wasmtime::Result<Result<Link, NetError>> {
        run(self, Acts::ForClaim(spec.claim_uid.clone()), move |d| {
            d.create_macvlan(&spec)
        })
        .await
    }

    async fn delete_link(&mut self, name: String) -> wasmtime::Result<Result<bool, NetError>> {
        run(self, Acts::OnLink(name.clone()), move |d| d.delete_link(&name)).await
    }

    async fn allocate_address(&mut self, request: AddressRequest) -> wasmtime::Result<Result<String, NetError>> {
        run(self, Acts::ForClaim(request.claim_uid.clone()), move |d| {
            d.allocate_address(&request)
        })
        .await
    }

    async fn release_claim(&mut self, claim_uid: String) -> wasmtime::Result<Result<u32, NetError>> {
        run(self, Acts::ForClaim(claim_uid.clone()), move |d| {
            d.release_claim(&claim_uid)
        })
        .await
    }

    async fn prepare_attachment(&mut self, attachment: WitAttachment) -> wasmtime::Result<Result<Hook, NetError>> {
        run(self, Acts::ForClaim(attachment.claim_uid.clone()), move |d| {
            d.prepare_attachment(&attachment)
        })
        .await
    }

    async fn configure_link(&mut self, name: String, addresses: Vec<String>) -> wasmtime::Result<Result<(), NetError>> {
        run(self, Acts::OnLink(name.clone()), move |d| {
            d.configure_link(&name, &addresses)
        })
        .await
    }

    async fn set_egress_rate(
        &mut self,
        name: String,
        bits_per_second: u64,
    ) -> wasmtime::Result<Result<bool, NetError>> {
        run(self, Acts::OnLink(name.clone()), move |d| {
            d.set_egress_rate(&name, bits_per_second)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver with `net` granted whose state records one link, created
    /// for claim "a"; nothing here reaches netlink.
    fn granted() -> (tempfile::TempDir, crate::imports::Imports) {
        let dir = tempfile::tempdir().unwrap();
        let driver = NetDriver::new("net.dra.dev", vec!["eth9".into()], dir.path(), "/hook".into()).unwrap();
        driver
            .store
            .update(|d| {
                d.links.push(LinkRecord {
                    name: "dwhofa".into(),
                    claim_uid: "a".into(),
                    parent: "eth9".into(),
                    mac: "02:00:00:00:00:01".into(),
                    attachment: None,
                    attached: None,
                    egress_rate_bps: None,
                });
                Ok(())
            })
            .unwrap();
        let imports = crate::imports::Imports {
            grants: vec![],
            nvml: None,
            net: Some(NetGrant {
                driver: Arc::new(driver),
            }),
        };
        (dir, imports)
    }

    #[tokio::test]
    async fn a_guest_acts_only_for_the_claim_of_the_call() {
        let (_dir, imports) = granted();
        fn refused<T>(r: wasmtime::Result<Result<T, NetError>>) -> String {
            match r.expect("no trap") {
                Ok(_) => panic!("the call was let through"),
                Err(e) => e.message,
            }
        }

        // The imports' view of a guest's store during a call for `claim`.
        let mut log = crate::imports::log::GuestLog::new(std::sync::Arc::from("test"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        fn view<'a>(
            imports: &'a crate::imports::Imports,
            log: &'a mut crate::imports::log::GuestLog,
            deadline: std::time::Instant,
            claim: Option<&'a str>,
        ) -> ImportsView<'a> {
            ImportsView {
                imports,
                log,
                deadline,
                claim,
            }
        }

        // During claim b's call: nothing of claim a's.
        let mut b = view(&imports, &mut log, deadline, Some("b"));
        let macvlan = Macvlan {
            parent: "eth9".into(),
            claim_uid: "a".into(),
            key: "k".into(),
            mode: MacvlanMode::Bridge,
            mtu: None,
            hardware_address: None,
        };
        let text = refused(b.create_macvlan(macvlan.clone()).await);
        assert!(
            text.contains("claim \"a\" is not the claim of this call (\"b\")"),
            "{text}"
        );
        refused(b.release_claim("a".into()).await);
        refused(
            b.allocate_address(AddressRequest {
                parent: "eth9".into(),
                pool: crate::wit::bindings_net::IpPool {
                    subnet: "192.0.2.0/24".into(),
                    range_start: None,
                    range_end: None,
                    gateway: None,
                },
                claim_uid: "a".into(),
                share_id: "s".into(),
                static_address: None,
            })
            .await,
        );
        refused(
            b.prepare_attachment(WitAttachment {
                link: "dwhofa".into(),
                claim_uid: "a".into(),
                pod_interface: "net1".into(),
                addresses: vec![],
                routes: vec![],
            })
            .await,
        );
        let text = refused(b.set_egress_rate("dwhofa".into(), 1_000_000).await);
        assert!(
            text.contains("belongs to claim \"a\", not to the claim of this call (\"b\")"),
            "{text}"
        );
        refused(b.configure_link("dwhofa".into(), vec![]).await);
        refused(b.delete_link("dwhofa".into()).await);

        // Outside any claim's call (init, inventory, on-event): no claim at all.
        let mut none = view(&imports, &mut log, deadline, None);
        let text = refused(none.release_claim("a".into()).await);
        assert!(text.contains("only during its prepare or unprepare"), "{text}");
        refused(none.set_egress_rate("dwhofa".into(), 1_000_000).await);

        // During claim a's call, on its own link: done (this one only
        // writes the driver's state).
        let mut a = view(&imports, &mut log, deadline, Some("a"));
        a.set_egress_rate("dwhofa".into(), 1_000_000).await.unwrap().unwrap();
        let Some(grant) = &imports.net else { unreachable!() };
        let record = grant.driver.store.read().unwrap().links.remove(0);
        assert_eq!(record.egress_rate_bps, Some(1_000_000));
        let owners = grant.driver.link_owners().unwrap();
        assert_eq!(owners.get("dwhofa").map(String::as_str), Some("a"));
        assert_eq!(owners.get("dwhnone"), None);
    }

    #[test]
    fn link_names_are_stable_short_and_prefixed() {
        let a = link_name("net.dra.dev", "uid-1", "share-1");
        assert_eq!(a, link_name("net.dra.dev", "uid-1", "share-1"));
        assert_eq!(a.len(), IFNAME_MAX);
        assert!(a.starts_with(LINK_PREFIX));
        assert_ne!(a, link_name("net.dra.dev", "uid-1", "share-2"));
        assert_ne!(a, link_name("other.dra.dev", "uid-1", "share-1"));
        // Length-prefixed parts: moving a boundary changes the name.
        assert_ne!(link_name("a", "bc", "d"), link_name("ab", "c", "d"));
        assert!(is_valid_ifname(&a));
    }

    #[test]
    fn interface_names_are_checked() {
        for ok in ["net1", "eth0", "a-b_c.d", "x23456789012345"] {
            assert!(is_valid_ifname(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "x234567890123456", "eth0\n"] {
            assert!(!is_valid_ifname(bad), "{bad:?}");
        }
    }
}
