//! The host's network state for one driver: address allocations (IPAM),
//! the links it created for the guest, and how each is to be attached.
//!
//! One JSON file, `<plugin dir>/net/state.json`, replaced atomically (the
//! project's write-temp + fsync + rename). Every read-modify-write runs under
//! an exclusive `flock` on `<plugin dir>/net/.lock`, because during a rolling
//! update of the host two processes serve the driver at once, and the attach
//! hook may reach either of them. The file is re-read under the lock each
//! time, so neither process acts on a stale view.
//!
//! Allocations are keyed by claim UID + share ID: a retried prepare gets the
//! address it got before. [`NetDriver::reconcile`](super::NetDriver::reconcile) drops what belongs to claims
//! the checkpoint no longer has, so nothing leaks across crashes.

use crate::state::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("network state {}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("network state {} is corrupt", path.display())]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("{0}")]
    Ipam(String),
}

/// One allocated address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Allocation {
    pub claim_uid: String,
    pub share_id: String,
    pub parent: String,
    /// The subnet, CIDR; addresses are unique per subnet.
    pub subnet: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
}

/// A route to add in the pod.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteRecord {
    pub destination: String,
    pub gateway: Option<Ipv4Addr>,
}

/// How a link is configured inside the pod.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub pod_interface: String,
    pub addresses: Vec<String>,
    pub routes: Vec<RouteRecord>,
}

/// Where an attached link went: the pod's process and its namespace inode
/// (so that a reused PID is never mistaken for the pod).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attached {
    pub pid: u32,
    pub netns_inode: u64,
}

/// A link the host created for the guest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkRecord {
    pub name: String,
    pub claim_uid: String,
    pub parent: String,
    pub mac: String,
    #[serde(default)]
    pub attachment: Option<Attachment>,
    #[serde(default)]
    pub attached: Option<Attached>,
    /// Egress limit applied in the pod after the move (a qdisc does not
    /// survive a change of namespace).
    #[serde(default)]
    pub egress_rate_bps: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StoreData {
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    #[serde(default)]
    pub links: Vec<LinkRecord>,
}

/// The network state of one driver.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Held while the state is read and written; unlocks on drop.
struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor this guard owns.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// An IPv4 pool as the guest describes it, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
}

impl Pool {
    /// Check a pool: an IPv4 subnet of at most /30, range and gateway inside it.
    pub fn parse(
        subnet: &str,
        range_start: Option<&str>,
        range_end: Option<&str>,
        gateway: Option<&str>,
    ) -> Result<Self, String> {
        let (ip, prefix) = subnet
            .split_once('/')
            .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
            .ok_or_else(|| format!("subnet {subnet:?} is not an IPv4 CIDR such as 192.0.2.0/24"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("subnet {subnet}: the prefix length must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(ip) & mask;
        if network != u32::from(ip) {
            return Err(format!("subnet {subnet} has host bits set"));
        }
        let broadcast = network | !mask;
        let addr = |what: &str, s: Option<&str>, default: u32| -> Result<u32, String> {
            match s {
                None => Ok(default),
                Some(s) => {
                    let a = u32::from(
                        s.parse::<Ipv4Addr>()
                            .map_err(|_| format!("{what} {s:?} is not an IPv4 address"))?,
                    );
                    if a <= network || a >= broadcast {
                        return Err(format!("{what} {s} is not a host address of {subnet}"));
                    }
                    Ok(a)
                }
            }
        };
        let start = addr("rangeStart", range_start, network + 1)?;
        let end = addr("rangeEnd", range_end, broadcast - 1)?;
        if start > end {
            return Err(format!(
                "rangeStart {} is after rangeEnd {}",
                Ipv4Addr::from(start),
                Ipv4Addr::from(end)
            ));
        }
        let gateway = match gateway {
            Some(g) => Some(Ipv4Addr::from(addr("gateway", Some(g), 0)?)),
            None => None,
        };
        Ok(Self {
            network: Ipv4Addr::from(network),
            prefix,
            start: Ipv4Addr::from(start),
            end: Ipv4Addr::from(end),
            gateway,
        })
    }

    pub fn subnet(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    fn contains_host(&self, a: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        let network = u32::from(self.network);
        let a = u32::from(a);
        a & mask == network && a != network && a != network | !mask
    }
}

impl Store {
    /// The state under `dir`, created at the first write (so that merely
    /// loading a config, as `guest validate` does, leaves no trace).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        if dir.is_dir() {
            fsutil::remove_stale_temp_files(dir, |n| n == STATE_FILE).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        Ok(Self { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Locked, StoreError> {
        fsutil::ensure_dir(&self.dir, 0o750).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.dir.join(LOCK_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Locked(file));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io(e));
            }
        }
    }

    fn load(&self) -> Result<StoreData, StoreError> {
        let path = self.dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreData::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn save(&self, data: &StoreData) -> Result<(), StoreError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(data).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        fsutil::write_atomic(&path, &bytes, 0o640).map_err(|source| StoreError::Io { path, source })
    }

    /// Read the state, let `f` change it, write it back if `f` succeeded:
    /// all under the lock.
    pub fn update<T>(&self, f: impl FnOnce(&mut StoreData) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        let mut data = self.load()?;
        let out = f(&mut data)?;
        self.save(&data)?;
        Ok(out)
    }

    /// Read the state under the lock.
    pub fn read(&self) -> Result<StoreData, StoreError> {
        let _lock = self.lock()?;
        self.load()
    }

    /// Allocate (or find again) the address of `claim_uid`/`share_id` in
    /// `pool`, honouring a requested static address. Returns CIDR text.
    pub fn allocate(
        &self,
        parent: &str,
        pool: &Pool,
        claim_uid: &str,
        share_id: &str,
        requested: Option<&str>,
    ) -> Result<String, StoreError> {
        let requested = match requested {
            None => None,
            Some(text) => {
                let (ip, prefix) = match text.split_once('/') {
                    Some((ip, p)) => (ip, Some(p)),
                    None => (text, None),
                };
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| StoreError::Ipam(format!("static address {text:?} is not an IPv4 address")))?;
                if prefix.is_some_and(|p| p.parse::<u8>().ok() != Some(pool.prefix)) {
                    return Err(StoreError::Ipam(format!(
                        "static address {text} does not have the prefix length of subnet {}",
                        pool.subnet()
                    )));
                }
                if !pool.contains_host(ip) || Some(ip) == pool.gateway {
                    return Err(StoreError::Ipam(format!(
                        "static address {text} is not a free host address of subnet {}",
                        pool.subnet()
                    )));
                }
                Some(ip)
            }
        };
        let subnet = pool.subnet();
        self.update(|data| {
            if let Some(a) = data
                .allocations
                .iter()
                .find(|a| a.claim_uid == claim_uid && a.share_id == share_id)
            {
                if a.subnet != subnet || requested.is_some_and(|r| r != a.address) {
                    return Err(StoreError::Ipam(format!(
                        "claim {claim_uid} share {share_id} already holds {}/{} in {}",
                        a.address, a.prefix, a.subnet
                    )));
                }
                return Ok(format!("{}/{}", a.address, a.prefix));
            }
            let used: HashSet<Ipv4Addr> = data
                .allocations
                .iter()
                .filter(|a| a.subnet == subnet)
                .map(|a| a.address)
                .collect();
            let address = match requested {
                Some(ip) => {
                    if let Some(holder) = data.allocations.iter().find(|a| a.subnet == subnet && a.address == ip) {
                        return Err(StoreError::Ipam(format!(
                            "static address {ip} is already in use by claim {}",
                            holder.claim_uid
                        )));
                    }
                    ip
                }
                None => (u32::from(pool.start)..=u32::from(pool.end))
                    .map(Ipv4Addr::from)
                    .find(|ip| !used.contains(ip) && Some(*ip) != pool.gateway)
                    .ok_or_else(|| {
                        StoreError::Ipam(format!(
                            "no free address left in {}..{} of {subnet}",
                            pool.start, pool.end
                        ))
                    })?,
            };
            data.allocations.push(Allocation {
                claim_uid: claim_uid.to_owned(),
                share_id: share_id.to_owned(),
                parent: parent.to_owned(),
                subnet: subnet.clone(),
                address,
                prefix: pool.prefix,
            });
            Ok(format!("{address}/{}", pool.prefix))
        })
    }

    /// Claims the state holds anything for.
    pub fn claims(&self) -> Result<HashSet<String>, StoreError> {
        let data = self.read()?;
        Ok(data
            .allocations
            .iter()
            .map(|a| a.claim_uid.clone())
            .chain(data.links.iter().map(|l| l.claim_uid.clone()))
            .collect())
    }
}

/// The claim UIDs in `data` that `keep` does not hold.
pub fn orphans(data: &StoreData, keep: &HashSet<String>) -> Vec<String> {
    let mut out: Vec<String> = data
        .allocations
        .iter()
        .map(|a| &a.claim_uid)
        .chain(data.links.iter().map(|l| &l.claim_uid))
        .filter(|u| !keep.contains(*u))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::parse(
            "192.0.2.0/24",
            Some("192.0.2.10"),
            Some("192.0.2.12"),
            Some("192.0.2.10"),
        )
        .unwrap()
    }

    #[test]
    fn pools_are_checked() {
        assert!(
            Pool::parse("192.0.2.1/24", None, None, None)
                .unwrap_err()
                .contains("host bits")
        );
        assert!(
            Pool::parse("192.0.2.0/31", None, None, None)
                .unwrap_err()
                .contains("prefix")
        );
        assert!(
            Pool::parse("2001:db8::/64", None, None, None)
                .unwrap_err()
                .contains("IPv4")
        );
        assert!(
            Pool::parse("192.0.2.0/24", Some("192.0.3.1"), None, None)
                .unwrap_err()
                .contains("rangeStart")
        );
        assert!(
            Pool::parse("192.0.2.0/24", Some("192.0.2.9"), Some("192.0.2.8"), None)
                .unwrap_err()
                .contains("after")
        );
        let p = Pool::parse("10.1.0.0/16", None, None, None).unwrap();
        assert_eq!(
            (p.start, p.end),
            ("10.1.0.1".parse().unwrap(), "10.1.255.254".parse().unwrap())
        );
    }

    #[test]
    fn allocations_are_stable_distinct_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let p = pool();
        // The gateway (.10) is skipped.
        assert_eq!(s.allocate("eth1", &p, "c1", "a", None).unwrap(), "192.0.2.11/24");
        assert_eq!(s.allocate("eth1", &p, "c2", "a", None).unwrap(), "192.0.2.12/24");
        // A retried prepare gets the same address, across reopen too.
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.allocate("eth1", &p, "c1", "a", None).unwrap(), "192.0.2.11/24");
        let e = s.allocate("eth1", &p, "c3", "a", None).unwrap_err();
        assert!(e.to_string().contains("no free address"), "{e}");
        // Statics: inside the subnet, not the gateway, not taken.
        assert_eq!(
            s.allocate("eth1", &p, "c4", "a", Some("192.0.2.50/24")).unwrap(),
            "192.0.2.50/24"
        );
        let e = s.allocate("eth1", &p, "c5", "a", Some("192.0.2.50")).unwrap_err();
        assert!(e.to_string().contains("in use by claim c4"), "{e}");
        for bad in ["192.0.2.10", "192.0.3.4", "192.0.2.255", "192.0.2.4/16", "x"] {
            assert!(s.allocate("eth1", &p, "c6", "a", Some(bad)).is_err(), "{bad}");
        }
        // Releasing (what the driver does on unprepare) frees the address.
        s.update(|d| {
            d.allocations.retain(|a| a.claim_uid != "c1");
            Ok(())
        })
        .unwrap();
        assert_eq!(s.allocate("eth1", &p, "c3", "a", None).unwrap(), "192.0.2.11/24");
        let keep: HashSet<String> = ["c2".to_owned()].into();
        assert_eq!(orphans(&s.read().unwrap(), &keep), ["c3", "c4"]);
    }
}
