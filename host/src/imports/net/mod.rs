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
//!
//! | file | what |
//! |---|---|
//! | `ops.rs` | [`NetDriver`]: one driver's network operations on its links and addresses |
//! | `registry.rs` | [`Net`]: the process-wide registry of drivers granted `net`, and the link monitor |
//! | `host.rs` | the guest's `net` calls (`ImportsView::net_*`) and their authorisation (the claim of the call); the WIT adapter is `wit/shared.rs` (the same in every contract version) |
//! | `types.rs` | the capability's records: links, macvlans, address requests, attachments, `NetError` |

pub mod attach;
mod host;
pub mod monitor;
pub mod netlink;
mod ops;
mod registry;
pub mod store;
pub mod types;

pub use host::NetGrant;
pub use ops::NetDriver;
pub use registry::Net;

use netlink::NetlinkError;
use serde::Deserialize;
use std::path::PathBuf;
use store::StoreError;
use types::NetError;

/// What a driver granted `net` may use: its `[drivers.net]` section,
/// owned by the capability that uses it (`config` names it).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriverNetConfig {
    /// The parent links (host NICs) the guest may create macvlans on and
    /// watch; it sees no other link of the node.
    pub parents: Vec<String>,
    /// Where the container runtime finds the attach hook program (this
    /// binary, installed on the node by `dra-wasm-host install-hook`).
    /// Default: this binary's own path, for a host running on the node
    /// itself. It is added to the driver's allowed hook paths.
    #[serde(default)]
    pub hook_path: Option<PathBuf>,
}

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
        NetError {
            message: crate::error::chain(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
