//! The macvlan driver's decisions in plain Rust.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidConfig,
    InvalidClaim,
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    fn config(m: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidConfig,
            message: m.into(),
        }
    }
    fn claim(m: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidClaim,
            message: m.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// How a prepared interface gets into the pod.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Attach {
    /// A CDI `createRuntime` hook asks the host to move it (any runtime
    /// with CDI hook support: containerd ≥ 1.7, CRI-O ≥ 1.23).
    #[default]
    Hook,
    /// CDI 1.1 `netDevices`: the runtime moves it (CRI-O with CDI 1.1 and
    /// runc ≥ 1.4).
    NetDevices,
}

/// One parent NIC the driver publishes, with its address pool.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Parent {
    /// The node's interface name; must be granted in `[drivers.net] parents`.
    pub name: String,
    /// IPv4 subnet in CIDR notation.
    pub subnet: String,
    #[serde(default)]
    pub range_start: Option<String>,
    #[serde(default)]
    pub range_end: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    /// Add a default route via the gateway in the pod (off: the pod's
    /// primary interface keeps the default route).
    #[serde(default)]
    pub default_route: bool,
    /// Total bandwidth to share, a quantity in bit/s such as `10G`. Default:
    /// the link speed the NIC reports, else `10G`.
    #[serde(default)]
    pub bandwidth: Option<String>,
    /// MTU of the macvlans (default: the parent's).
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// The driver's configuration (`[drivers.config]` in the host config).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub parents: Vec<Parent>,
    /// macvlan mode: bridge, private, vepa or passthru.
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub attach: Attach,
    /// The interface name in the pod (`net1`, then `net2`, ... for further
    /// devices of one claim) unless the claim names one.
    #[serde(default = "default_interface")]
    pub pod_interface: String,
    /// Bandwidth a share gets when its request names none.
    #[serde(default = "default_bandwidth")]
    pub default_bandwidth: String,
}

fn default_mode() -> String {
    "bridge".into()
}
fn default_interface() -> String {
    "net1".into()
}
fn default_bandwidth() -> String {
    "100M".into()
}

/// Per-claim parameters (opaque config of the claim or its class).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimParams {
    /// A static address (IPv4, CIDR or plain) instead of one from the pool.
    #[serde(default)]
    pub address: Option<String>,
    /// The interface name in the pod.
    #[serde(default)]
    pub interface_name: Option<String>,
    /// The interface's MAC address.
    #[serde(default)]
    pub mac: Option<String>,
}

/// A link as the host reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub name: String,
    pub mtu: u32,
    pub mac: String,
    pub up: bool,
    pub speed_mbps: Option<u32>,
    pub pci_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Text(String),
}

/// A published device.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    pub attributes: Vec<(&'static str, Value)>,
    /// Total bandwidth, and the default request.
    pub bandwidth: String,
    pub default_bandwidth: String,
}

/// One allocated device of a claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub request: String,
    pub device: String,
    pub share_id: Option<String>,
    pub consumed_bandwidth: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpaqueConfig {
    pub requests: Vec<String>,
    pub parameters: String,
}

/// What to do for one allocated device.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub device: String,
    pub share_id: Option<String>,
    pub parent: Parent,
    /// The key of the link within the claim (the share ID, or the device).
    pub key: String,
    pub pod_interface: String,
    pub static_address: Option<String>,
    pub mac: Option<String>,
    /// Egress limit in bit/s, for a share that consumed bandwidth.
    pub egress_bps: Option<u64>,
}

/// The state checkpointed by the host: enough to explain what was done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub v: u32,
    pub links: Vec<String>,
}

#[derive(Debug)]
pub struct Driver {
    pub config: Config,
}

/// A DNS label for a device from an interface name.
pub fn device_name(ifname: &str) -> String {
    let mut s: String = ifname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s = s.trim_matches('-').to_owned();
    if s.is_empty() { "nic".into() } else { s }
}

/// Parse a Kubernetes quantity of bits per second (`100M`, `10G`, `1500k`,
/// `2Gi`, plain digits).
pub fn parse_rate(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn is_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Driver {
    pub fn new(config_json: &str) -> Result<Self, Error> {
        let config: Config =
            serde_json::from_str(config_json).map_err(|e| Error::config(format!("driver config: {e}")))?;
        if config.parents.is_empty() {
            return Err(Error::config("driver config: parents is empty"));
        }
        if !matches!(config.mode.as_str(), "bridge" | "private" | "vepa" | "passthru") {
            return Err(Error::config(format!(
                "driver config: mode {:?} is not bridge, private, vepa or passthru",
                config.mode
            )));
        }
        if !is_ifname(&config.pod_interface) {
            return Err(Error::config(format!(
                "driver config: podInterface {:?} is not an interface name",
                config.pod_interface
            )));
        }
        if parse_rate(&config.default_bandwidth).is_none() {
            return Err(Error::config(format!(
                "driver config: defaultBandwidth {:?} is not a quantity",
                config.default_bandwidth
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &config.parents {
            if !names.insert(device_name(&p.name)) {
                return Err(Error::config(format!(
                    "driver config: parent {} is listed twice",
                    p.name
                )));
            }
            if let Some(b) = &p.bandwidth
                && parse_rate(b).is_none()
            {
                return Err(Error::config(format!(
                    "parent {}: bandwidth {b:?} is not a quantity",
                    p.name
                )));
            }
            if !p.subnet.contains('/') {
                return Err(Error::config(format!(
                    "parent {}: subnet {:?} is not in CIDR notation",
                    p.name, p.subnet
                )));
            }
        }
        Ok(Self { config })
    }

    /// The devices to publish: each configured parent that the host reports.
    pub fn devices(&self, links: &[Link]) -> Vec<Device> {
        self.config
            .parents
            .iter()
            .filter_map(|p| {
                let link = links.iter().find(|l| l.name == p.name)?;
                let mut attributes = vec![
                    ("interfaceName", Value::Text(p.name.clone())),
                    ("subnet", Value::Text(p.subnet.clone())),
                    ("mtu", Value::Int(i64::from(p.mtu.unwrap_or(link.mtu)))),
                    ("macvlanMode", Value::Text(self.config.mode.clone())),
                ];
                if let Some(s) = link.speed_mbps {
                    attributes.push(("linkSpeedMbps", Value::Int(i64::from(s))));
                }
                if let Some(pci) = &link.pci_address {
                    attributes.push(("pciAddress", Value::Text(pci.clone())));
                }
                let bandwidth = p
                    .bandwidth
                    .clone()
                    .or_else(|| link.speed_mbps.map(|s| format!("{s}M")))
                    .unwrap_or_else(|| "10G".into());
                Some(Device {
                    name: device_name(&p.name),
                    attributes,
                    bandwidth,
                    default_bandwidth: self.config.default_bandwidth.clone(),
                })
            })
            .collect()
    }

    fn parent_of(&self, device: &str) -> Option<&Parent> {
        self.config.parents.iter().find(|p| device_name(&p.name) == device)
    }

    /// What to do for each allocated device of a claim.
    pub fn plan(&self, allocations: &[Allocation], configs: &[OpaqueConfig]) -> Result<Vec<Plan>, Error> {
        let mut plans: Vec<Plan> = Vec::with_capacity(allocations.len());
        for (i, a) in allocations.iter().enumerate() {
            let parent = self
                .parent_of(&a.device)
                .ok_or_else(|| Error::claim(format!("device {} is not a NIC of this driver", a.device)))?;
            let mut params = ClaimParams::default();
            let base_request = a.request.split('/').next().unwrap_or(&a.request);
            for c in configs
                .iter()
                .filter(|c| c.requests.is_empty() || c.requests.iter().any(|r| r == &a.request || r == base_request))
            {
                let p: ClaimParams =
                    serde_json::from_str(&c.parameters).map_err(|e| Error::claim(format!("claim parameters: {e}")))?;
                params.address = p.address.or(params.address);
                params.interface_name = p.interface_name.or(params.interface_name);
                params.mac = p.mac.or(params.mac);
            }
            let pod_interface = match params.interface_name {
                Some(n) => n,
                None if i == 0 => self.config.pod_interface.clone(),
                None => next_name(&self.config.pod_interface, i),
            };
            if !is_ifname(&pod_interface) {
                return Err(Error::claim(format!("{pod_interface:?} is not an interface name")));
            }
            if plans.iter().any(|p| p.pod_interface == pod_interface) {
                return Err(Error::claim(format!(
                    "two devices of the claim would both be {pod_interface} in the pod: name them with interfaceName"
                )));
            }
            let egress_bps = match &a.consumed_bandwidth {
                Some(q) => Some(
                    parse_rate(q).ok_or_else(|| Error::claim(format!("consumed bandwidth {q:?} is not a quantity")))?,
                ),
                None => None,
            };
            plans.push(Plan {
                device: a.device.clone(),
                share_id: a.share_id.clone(),
                parent: parent.clone(),
                key: a.share_id.clone().unwrap_or_else(|| format!("device-{}", a.device)),
                pod_interface,
                static_address: params.address,
                mac: params.mac,
                egress_bps,
            });
        }
        Ok(plans)
    }

    /// Health of the device on `link` after a link event (None: not ours).
    /// Healthy carries no message, as a device starts out, so the state
    /// delivered at start changes nothing.
    pub fn on_link(&self, link: &str, up: bool) -> Option<(String, bool, String)> {
        let p = self.config.parents.iter().find(|p| p.name == link)?;
        let message = if up {
            String::new()
        } else {
            format!("parent link {} is down", p.name)
        };
        Some((device_name(&p.name), up, message))
    }
}

/// `net1` → `net2` for the device at `index` 1.
fn next_name(base: &str, index: usize) -> String {
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit());
    let start: usize = base[stem.len()..].parse().unwrap_or(0);
    format!("{stem}{}", start + index)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"parents":[
        {"name":"eth1","subnet":"192.0.2.0/24","gateway":"192.0.2.1","bandwidth":"10G"},
        {"name":"ens2f0","subnet":"198.51.100.0/24"}]}"#;

    fn link(name: &str, speed: Option<u32>) -> Link {
        Link {
            name: name.into(),
            mtu: 9000,
            mac: "02:00:00:00:00:01".into(),
            up: true,
            speed_mbps: speed,
            pci_address: speed.map(|_| "0000:3b:00.0".into()),
        }
    }

    fn alloc(device: &str, share: Option<&str>, bw: Option<&str>) -> Allocation {
        Allocation {
            request: "nic".into(),
            device: device.into(),
            share_id: share.map(Into::into),
            consumed_bandwidth: bw.map(Into::into),
        }
    }

    #[test]
    fn config_errors_are_clear() {
        for (bad, why) in [
            ("{}", "parents"),
            (r#"{"parents":[]}"#, "parents is empty"),
            (r#"{"parents":[{"name":"e","subnet":"x"}]}"#, "CIDR"),
            (
                r#"{"parents":[{"name":"e","subnet":"10.0.0.0/8"}],"mode":"fast"}"#,
                "mode",
            ),
            (
                r#"{"parents":[{"name":"e","subnet":"10.0.0.0/8","bandwith":"1G"}]}"#,
                "bandwith",
            ),
            (
                r#"{"parents":[{"name":"e","subnet":"10.0.0.0/8","bandwidth":"lots"}]}"#,
                "bandwidth",
            ),
            (
                r#"{"parents":[{"name":"e","subnet":"10.0.0.0/8"},{"name":"e","subnet":"10.0.0.0/8"}]}"#,
                "twice",
            ),
        ] {
            let e = Driver::new(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidConfig);
            assert!(e.message.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn devices_describe_reported_parents_only() {
        let d = Driver::new(CONFIG).unwrap();
        let devices = d.devices(&[link("ens2f0", Some(25000)), link("lo", None)]);
        assert_eq!(devices.len(), 1, "eth1 is not on this node");
        let dev = &devices[0];
        assert_eq!(dev.name, "ens2f0");
        assert!(
            dev.attributes
                .contains(&("subnet", Value::Text("198.51.100.0/24".into())))
        );
        assert!(dev.attributes.contains(&("linkSpeedMbps", Value::Int(25000))));
        assert!(
            dev.attributes
                .contains(&("pciAddress", Value::Text("0000:3b:00.0".into())))
        );
        assert!(dev.attributes.contains(&("mtu", Value::Int(9000))));
        assert_eq!(dev.bandwidth, "25000M", "from the link speed");
        let devices = d.devices(&[link("eth1", None)]);
        assert_eq!(devices[0].bandwidth, "10G", "from the config");
        assert!(!devices[0].attributes.iter().any(|(n, _)| *n == "pciAddress"));
    }

    #[test]
    fn plans_follow_shares_params_and_bandwidth() {
        let d = Driver::new(CONFIG).unwrap();
        let configs = vec![OpaqueConfig {
            requests: vec![],
            parameters: r#"{"address":"192.0.2.50/24","mac":"02:00:00:00:00:09"}"#.into(),
        }];
        let plans = d
            .plan(
                &[alloc("eth1", Some("s-1"), Some("250M")), alloc("ens2f0", None, None)],
                &configs,
            )
            .unwrap();
        assert_eq!(plans[0].key, "s-1");
        assert_eq!(plans[0].pod_interface, "net1");
        assert_eq!(plans[0].egress_bps, Some(250_000_000));
        assert_eq!(plans[0].static_address.as_deref(), Some("192.0.2.50/24"));
        assert_eq!(plans[1].key, "device-ens2f0");
        assert_eq!(plans[1].pod_interface, "net2");
        assert_eq!(plans[1].egress_bps, None);

        let e = d.plan(&[alloc("eth9", None, None)], &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidClaim);
        let typo = vec![OpaqueConfig {
            requests: vec![],
            parameters: r#"{"adress":"192.0.2.50"}"#.into(),
        }];
        assert!(
            d.plan(&[alloc("eth1", None, None)], &typo)
                .unwrap_err()
                .message
                .contains("adress")
        );
        let same = vec![OpaqueConfig {
            requests: vec![],
            parameters: r#"{"interfaceName":"data"}"#.into(),
        }];
        let e = d
            .plan(&[alloc("eth1", Some("a"), None), alloc("eth1", Some("b"), None)], &same)
            .unwrap_err();
        assert!(e.message.contains("both be data"), "{e}");
    }

    #[test]
    fn quantities_and_names() {
        assert_eq!(parse_rate("100M"), Some(100_000_000));
        assert_eq!(parse_rate("2Gi"), Some(2 << 30));
        assert_eq!(parse_rate("1.5G"), None);
        assert_eq!(parse_rate("x"), None);
        assert_eq!(device_name("ens2f0.100"), "ens2f0-100");
        assert_eq!(device_name("ETH_1"), "eth-1");
        assert_eq!(next_name("net1", 2), "net3");
        assert_eq!(next_name("data", 1), "data1");
    }

    #[test]
    fn link_events_map_to_health() {
        let d = Driver::new(CONFIG).unwrap();
        assert_eq!(
            d.on_link("eth1", false),
            Some(("eth1".into(), false, "parent link eth1 is down".into()))
        );
        assert_eq!(d.on_link("eth1", true), Some(("eth1".into(), true, String::new())));
        assert_eq!(d.on_link("lo", false), None);
    }
}
