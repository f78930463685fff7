//! rtnetlink operations, each on a short-lived thread of its own.
//!
//! Why a thread per operation: a netlink socket talks to the network
//! namespace of the thread that opened it, and entering a pod's namespace
//! (`setns`) changes the calling thread for good. A fresh thread, optionally
//! moved into a namespace, with a current-thread runtime for rtnetlink,
//! keeps the host's own threads in the node's namespace whatever happens.
//! Guest calls run on blocking threads already, so waiting here is allowed.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode};
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec, RouteMessageBuilder};
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

/// A netlink failure, with the operation it belongs to.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The host refused or could not do the operation (its own words).
    #[error("{op}: {message}")]
    Failed {
        op: String,
        message: String,
        errno: Option<i32>,
    },
    /// The kernel (or rtnetlink) failed the operation.
    #[error("{op}")]
    Kernel {
        op: String,
        #[source]
        source: Box<rtnetlink::Error>,
        errno: Option<i32>,
    },
    #[error("entering network namespace {path}")]
    Namespace { path: String, source: std::io::Error },
    #[error("netlink worker thread failed: {what}")]
    Worker {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink worker thread failed: {0}")]
    Died(&'static str),
}

impl NetlinkError {
    fn op(op: impl Into<String>, e: rtnetlink::Error) -> Self {
        let errno = match &e {
            rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
            _ => None,
        };
        NetlinkError::Kernel {
            op: op.into(),
            source: Box::new(e),
            errno,
        }
    }

    /// The errno the kernel answered, when it answered one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Failed { errno, .. } | NetlinkError::Kernel { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// What the host reports of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub index: u32,
    pub kind: String,
    pub mtu: u32,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Administratively up with carrier (IFF_UP and IFF_LOWER_UP).
    pub up: bool,
    /// The index of the link this one sits on (a macvlan's parent).
    pub parent_index: Option<u32>,
    /// CIDR strings.
    pub addresses: Vec<String>,
}

/// Run `f` with a netlink handle on a thread of its own, inside the network
/// namespace `netns` (a `/proc/<pid>/ns/net` or `/run/netns/<name>` file)
/// when given, else in the host's.
pub fn run<T, F, Fut>(netns: Option<File>, f: F) -> Result<T, NetlinkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetlinkError>>,
{
    std::thread::Builder::new()
        .name("netlink".into())
        .spawn(move || {
            if let Some(ns) = &netns {
                // SAFETY: setns on a descriptor we hold open; it changes only
                // this thread, which ends with this operation.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(NetlinkError::Namespace {
                        path: "(descriptor)".into(),
                        source: std::io::Error::last_os_error(),
                    });
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|source| NetlinkError::Worker {
                    what: "runtime",
                    source,
                })?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetlinkError::Worker {
                    what: "netlink socket",
                    source,
                })?;
                let conn = tokio::spawn(conn);
                let result = f(handle).await;
                conn.abort();
                result
            })
        })
        .map_err(|source| NetlinkError::Worker {
            what: "starting it",
            source,
        })?
        .join()
        .map_err(|_| NetlinkError::Died("panicked"))?
}

/// Open a network namespace file (`/proc/<pid>/ns/net`, `/run/netns/<name>`).
pub fn open_netns(path: &Path) -> Result<File, NetlinkError> {
    File::open(path).map_err(|source| NetlinkError::Namespace {
        path: path.display().to_string(),
        source,
    })
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(text: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    (bytes.len() == 6).then_some(bytes)
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut s = LinkState {
        name: String::new(),
        index: msg.header.index,
        kind: String::new(),
        mtu: 0,
        mac: String::new(),
        up: msg.header.flags.contains(LinkFlags::Up) && msg.header.flags.contains(LinkFlags::LowerUp),
        parent_index: None,
        addresses: Vec::new(),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Mtu(m) => s.mtu = *m,
            LinkAttribute::Address(b) => s.mac = format_mac(b),
            LinkAttribute::Link(i) => s.parent_index = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    if s.kind.is_empty() {
        s.kind = "device".into();
    }
    s
}

/// The state of a link message from a multicast notification.
pub fn state_of(msg: &LinkMessage) -> LinkState {
    link_state(msg)
}

/// Every link of the namespace with its addresses.
pub async fn list(handle: &Handle) -> Result<Vec<LinkState>, NetlinkError> {
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| NetlinkError::op("listing links", e))?
    {
        links.push(link_state(&msg));
    }
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| NetlinkError::op("listing addresses", e))?
    {
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let ip = ip.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let (Some(ip), Some(link)) = (ip, links.iter_mut().find(|l| l.index == msg.header.index)) {
            link.addresses.push(format!("{ip}/{}", msg.header.prefix_len));
        }
    }
    Ok(links)
}

/// One link by name, if it exists.
pub async fn by_name(handle: &Handle, name: &str) -> Result<Option<LinkState>, NetlinkError> {
    Ok(list(handle).await?.into_iter().find(|l| l.name == name))
}

pub fn macvlan_mode(mode: &str) -> MacVlanMode {
    match mode {
        "private" => MacVlanMode::Private,
        "vepa" => MacVlanMode::Vepa,
        "passthru" => MacVlanMode::Passthrough,
        _ => MacVlanMode::Bridge,
    }
}

/// Create a macvlan named `name` on `parent`; an existing macvlan of that
/// name on the same parent is returned as it is (a retried prepare).
pub async fn create_macvlan(
    handle: &Handle,
    name: &str,
    parent: &LinkState,
    mode: MacVlanMode,
    mtu: Option<u32>,
    mac: Option<Vec<u8>>,
) -> Result<LinkState, NetlinkError> {
    if let Some(existing) = by_name(handle, name).await? {
        if existing.kind == InfoKind::MacVlan.to_string() && existing.parent_index == Some(parent.index) {
            return Ok(existing);
        }
        return Err(NetlinkError::Failed {
            op: format!("creating macvlan {name}"),
            message: format!("a {} link of that name exists on another parent", existing.kind),
            errno: Some(libc::EEXIST),
        });
    }
    let mut builder = LinkMacVlan::new(name, parent.index, mode);
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    if let Some(mac) = mac {
        builder = builder.address(mac);
    }
    handle
        .link()
        .add(builder.build())
        .execute()
        .await
        .map_err(|e| NetlinkError::op(format!("creating macvlan {name} on {}", parent.name), e))?;
    by_name(handle, name).await?.ok_or_else(|| NetlinkError::Failed {
        op: format!("creating macvlan {name}"),
        message: "the link vanished right after it was created".into(),
        errno: None,
    })
}

/// Delete a link by index; false when it was already gone.
pub async fn delete(handle: &Handle, index: u32) -> Result<bool, NetlinkError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) => {
            let e = NetlinkError::op(format!("deleting link {index}"), e);
            if e.errno() == Some(libc::ENODEV) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Move a link into the namespace `netns`.
pub async fn move_to_netns(handle: &Handle, index: u32, netns: &File) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).setns_by_fd(netns.as_raw_fd()).build())
        .execute()
        .await
        .map_err(|e| NetlinkError::op("moving the link into the pod's network namespace", e))
}

/// Rename a (down) link.
pub async fn rename(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).down().name(name).build())
        .execute()
        .await
        .map_err(|e| NetlinkError::op(format!("renaming link {index} to {name}"), e))
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| NetlinkError::op(format!("setting link {index} up"), e))
}

/// Add `cidr` to a link unless it is there already.
pub async fn add_address(handle: &Handle, link: &LinkState, cidr: &str) -> Result<(), NetlinkError> {
    if link.addresses.iter().any(|a| a == cidr) {
        return Ok(());
    }
    let (ip, prefix) = parse_cidr(cidr).ok_or_else(|| NetlinkError::Failed {
        op: "adding an address".into(),
        message: format!("{cidr:?} is not an address in CIDR notation"),
        errno: None,
    })?;
    match handle.address().add(link.index, ip, prefix).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = NetlinkError::op(format!("adding {cidr} to {}", link.name), e);
            if e.errno() == Some(libc::EEXIST) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Add an IPv4 route through `index` (a route that exists already is fine).
pub async fn add_route(
    handle: &Handle,
    index: u32,
    destination: &str,
    gateway: Option<Ipv4Addr>,
) -> Result<(), NetlinkError> {
    let (ip, prefix) = parse_cidr(destination).ok_or_else(|| NetlinkError::Failed {
        op: "adding a route".into(),
        message: format!("{destination:?} is not a CIDR"),
        errno: None,
    })?;
    let IpAddr::V4(dest) = ip else {
        return Err(NetlinkError::Failed {
            op: "adding a route".into(),
            message: format!("{destination}: only IPv4 routes are supported"),
            errno: None,
        });
    };
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest, prefix)
        .output_interface(index);
    if let Some(gw) = gateway {
        b = b.gateway(gw);
    }
    match handle.route().add(b.build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = NetlinkError::op(format!("adding route {destination}"), e);
            if e.errno() == Some(libc::EEXIST) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// `192.0.2.5/24` → (address, prefix length).
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

/// Link speed (Mbit/s) and PCI address from sysfs, when the NIC has them.
pub fn sysfs_details(name: &str) -> (Option<u32>, Option<String>) {
    let base = Path::new("/sys/class/net").join(name);
    let speed = std::fs::read_to_string(base.join("speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|s| u32::try_from(s).ok())
        .filter(|s| *s > 0);
    let pci = std::fs::read_link(base.join("device"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| is_pci_address(n));
    (speed, pci)
}

/// `0000:3b:00.0`.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_cidrs_parse() {
        assert_eq!(parse_mac("02:00:00:aa:bb:0c"), Some(vec![2, 0, 0, 0xaa, 0xbb, 0x0c]));
        assert_eq!(parse_mac("02:00:00:aa:bb"), None);
        assert_eq!(parse_mac("zz:00:00:aa:bb:0c"), None);
        assert_eq!(format_mac(&[2, 0, 0, 0xaa, 0xbb, 0x0c]), "02:00:00:aa:bb:0c");
        assert_eq!(parse_cidr("192.0.2.5/24"), Some(("192.0.2.5".parse().unwrap(), 24)));
        assert_eq!(parse_cidr("192.0.2.5/33"), None);
        assert_eq!(parse_cidr("192.0.2.5"), None);
        assert!(is_pci_address("0000:3b:00.0"));
        assert!(!is_pci_address("virtual"));
    }
}
