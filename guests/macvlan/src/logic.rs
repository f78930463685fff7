//! The macvlan driver's decisions, over the SDK's types and its `net`
//! import. The host owns every link and address (named and recorded by the
//! host), so nothing here needs remembering across instances.

use dra_driver_sdk::net::{self, AddressRequest, Attachment, IpPool, Link, Macvlan, MacvlanMode, Route};
use dra_driver_sdk::{
    Allocation, Claim, ClaimRef, Condition, ContainerEdits, Device, DeviceHealth, DeviceStatus, Driver, Error, Event,
    InitContext, NetworkData, Pool, PreparedClaim, PreparedDevice, Quantity, RequestPolicy, Result, ShareId, state,
};
use serde::{Deserialize, Serialize};

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

/// What to do for one allocated device.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub device: String,
    pub share_id: Option<ShareId>,
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

/// A DNS label for a device from an interface name.
pub fn device_name(ifname: &str) -> String {
    let s: String = ifname
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b.to_ascii_lowercase())
            } else {
                '-'
            }
        })
        .collect();
    match s.trim_matches('-') {
        "" => "nic".into(),
        name => name.to_owned(),
    }
}

fn is_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The macvlan driver on one node.
#[derive(Debug)]
pub struct MacvlanDriver {
    pub config: Config,
    /// The pool: the node's name.
    pub pool: String,
}

/// A rate in bit/s from a quantity such as `100M`, `10G`, `2Gi`.
fn rate(q: &str) -> Option<u64> {
    Quantity::parse(q).and_then(|q| q.to_u64()).ok()
}

impl Driver for MacvlanDriver {
    type Config = Config;
    type ClaimConfig = ClaimParams;

    fn init(ctx: &InitContext, config: Config) -> Result<Self> {
        let driver = Self::new(config, &ctx.node_name)?;
        dra_driver_sdk::log::info(&format!(
            "{} parent NICs configured, mode {}, attach {:?}",
            driver.config.parents.len(),
            driver.config.mode,
            driver.config.attach
        ));
        Ok(driver)
    }

    fn inventory(&self) -> Result<Vec<Pool>> {
        let links = net::list_links()?;
        Ok(vec![Pool::new(&self.pool, self.devices(&links))])
    }

    fn prepare(&self, claim: Claim<ClaimParams>) -> Result<PreparedClaim> {
        let uid = &claim.claim.uid;
        let plans = self.plan(&claim.devices)?;
        let mut devices = Vec::with_capacity(plans.len());
        let mut links = Vec::with_capacity(plans.len());
        for plan in &plans {
            match self.prepare_one(uid, plan) {
                Ok((device, link)) => {
                    devices.push(device);
                    links.push(link);
                }
                Err(e) => {
                    // Leave nothing behind for a failed prepare.
                    if let Err(undo) = net::release_claim(uid) {
                        dra_driver_sdk::log::error(&format!("claim {uid}, after a failure: {undo}"));
                    }
                    return Err(e);
                }
            }
        }
        let state = state::encode(&State { v: 1, links })?;
        Ok(PreparedClaim { devices, state })
    }

    /// The host knows every link and address of the claim: even with no
    /// state (a crash before the checkpoint) everything is released.
    fn unprepare(&self, claim: &ClaimRef, _state: &[u8]) -> Result<()> {
        net::release_claim(&claim.uid)?;
        Ok(())
    }

    fn on_event(&self, event: Event) -> Result<Vec<DeviceHealth>> {
        let Event::Link(l) = event else { return Ok(Vec::new()) };
        Ok(self.on_link(&l.name, l.up).into_iter().collect())
    }
}

impl MacvlanDriver {
    pub fn new(config: Config, pool: &str) -> Result<Self> {
        if config.parents.is_empty() {
            return Err(Error::invalid_config("driver config: parents is empty"));
        }
        if !matches!(config.mode.as_str(), "bridge" | "private" | "vepa" | "passthru") {
            return Err(Error::invalid_config(format!(
                "driver config: mode {:?} is not bridge, private, vepa or passthru",
                config.mode
            )));
        }
        if !is_ifname(&config.pod_interface) {
            return Err(Error::invalid_config(format!(
                "driver config: podInterface {:?} is not an interface name",
                config.pod_interface
            )));
        }
        if rate(&config.default_bandwidth).is_none() {
            return Err(Error::invalid_config(format!(
                "driver config: defaultBandwidth {:?} is not a quantity",
                config.default_bandwidth
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &config.parents {
            if !names.insert(device_name(&p.name)) {
                return Err(Error::invalid_config(format!(
                    "driver config: parent {} is listed twice",
                    p.name
                )));
            }
            if let Some(b) = &p.bandwidth
                && rate(b).is_none()
            {
                return Err(Error::invalid_config(format!(
                    "parent {}: bandwidth {b:?} is not a quantity",
                    p.name
                )));
            }
            if !p.subnet.contains('/') {
                return Err(Error::invalid_config(format!(
                    "parent {}: subnet {:?} is not in CIDR notation",
                    p.name, p.subnet
                )));
            }
        }
        Ok(Self {
            config,
            pool: pool.to_owned(),
        })
    }

    /// The devices to publish: each configured parent that the host reports.
    pub fn devices(&self, links: &[Link]) -> Vec<Device> {
        self.config
            .parents
            .iter()
            .filter_map(|p| {
                let link = links.iter().find(|l| l.name == p.name)?;
                let mut device = Device::new(device_name(&p.name))
                    .attribute("interfaceName", p.name.as_str())
                    .attribute("subnet", p.subnet.as_str())
                    .attribute("mtu", p.mtu.unwrap_or(link.mtu))
                    .attribute("macvlanMode", self.config.mode.as_str());
                if let Some(s) = link.speed_mbps {
                    device = device.attribute("linkSpeedMbps", s);
                }
                if let Some(pci) = &link.pci_address {
                    device = device.attribute("pciAddress", pci.as_str());
                }
                let bandwidth = p
                    .bandwidth
                    .clone()
                    .or_else(|| link.speed_mbps.map(|s| format!("{s}M")))
                    .unwrap_or_else(|| "10G".into());
                // Checked in `new` (config) or built from a number above.
                let bandwidth = Quantity::parse(&bandwidth).ok()?;
                let default = Quantity::parse(&self.config.default_bandwidth).ok()?;
                let policy = RequestPolicy::range(default, Quantity::parse("1M").ok()?, Some(bandwidth.clone()), None);
                Some(device.shared(true).consumable("bandwidth", bandwidth, policy))
            })
            .collect()
    }

    fn parent_of(&self, device: &str) -> Option<&Parent> {
        self.config.parents.iter().find(|p| device_name(&p.name) == device)
    }

    /// What to do for each allocated device of a claim.
    pub fn plan(&self, allocations: &[Allocation<ClaimParams>]) -> Result<Vec<Plan>> {
        let mut plans: Vec<Plan> = Vec::with_capacity(allocations.len());
        for (i, a) in allocations.iter().enumerate() {
            let parent = self
                .parent_of(&a.device)
                .ok_or_else(|| Error::invalid_claim(format!("device {} is not a NIC of this driver", a.device)))?;
            let params = &a.config;
            let pod_interface = match &params.interface_name {
                Some(n) => n.clone(),
                None if i == 0 => self.config.pod_interface.clone(),
                None => next_name(&self.config.pod_interface, i),
            };
            if !is_ifname(&pod_interface) {
                return Err(Error::invalid_claim(format!(
                    "{pod_interface:?} is not an interface name"
                )));
            }
            if plans.iter().any(|p| p.pod_interface == pod_interface) {
                return Err(Error::invalid_claim(format!(
                    "two devices of the claim would both be {pod_interface} in the pod: name them with interfaceName"
                )));
            }
            let egress_bps = match a.consumed("bandwidth") {
                Some(q) => Some(
                    q.to_u64()
                        .map_err(|e| Error::invalid_claim(format!("consumed bandwidth: {e}")))?,
                ),
                None => None,
            };
            plans.push(Plan {
                device: a.device.clone(),
                key: match &a.share_id {
                    Some(s) => s.as_str().to_owned(),
                    None => format!("device-{}", a.device),
                },
                share_id: a.share_id.clone(),
                parent: parent.clone(),
                pod_interface,
                static_address: params.address.clone(),
                mac: params.mac.clone(),
                egress_bps,
            });
        }
        Ok(plans)
    }

    /// Create the link, address it and arrange its attachment, for one
    /// device; returns the prepared device and the link's name.
    fn prepare_one(&self, uid: &str, plan: &Plan) -> Result<(PreparedDevice, String)> {
        let p = &plan.parent;
        let link = net::create_macvlan(&Macvlan {
            parent: p.name.clone(),
            claim_uid: uid.to_owned(),
            key: plan.key.clone(),
            mode: match self.config.mode.as_str() {
                "private" => MacvlanMode::Private,
                "vepa" => MacvlanMode::Vepa,
                "passthru" => MacvlanMode::Passthru,
                _ => MacvlanMode::Bridge,
            },
            mtu: p.mtu,
            hardware_address: plan.mac.clone(),
        })?;
        let address = net::allocate_address(&AddressRequest {
            parent: p.name.clone(),
            pool: IpPool {
                subnet: p.subnet.clone(),
                range_start: p.range_start.clone(),
                range_end: p.range_end.clone(),
                gateway: p.gateway.clone(),
            },
            claim_uid: uid.to_owned(),
            share_id: plan.key.clone(),
            static_address: plan.static_address.clone(),
        })
        // The pool is exhausted or the claim's static address is taken.
        .map_err(|e| Error::invalid_claim(e.to_string()))?;
        if let Some(bps) = plan.egress_bps
            && !net::set_egress_rate(&link.name, bps)?
        {
            dra_driver_sdk::log::warn(&format!(
                "no egress limit for {} on this node (tc unavailable)",
                link.name
            ));
        }
        let mut edits = ContainerEdits::default();
        match self.config.attach {
            Attach::Hook => {
                let routes = match (&p.gateway, p.default_route) {
                    (Some(gw), true) => vec![Route {
                        destination: "0.0.0.0/0".into(),
                        gateway: Some(gw.clone()),
                    }],
                    _ => vec![],
                };
                edits = edits.hook(net::prepare_attachment(&Attachment {
                    link: link.name.clone(),
                    claim_uid: uid.to_owned(),
                    pod_interface: plan.pod_interface.clone(),
                    addresses: vec![address.clone()],
                    routes,
                })?);
            }
            Attach::NetDevices => {
                net::configure_link(&link.name, std::slice::from_ref(&address))?;
                edits = edits.net_device(&link.name, &plan.pod_interface);
            }
        }
        let status = DeviceStatus {
            conditions: vec![Condition::ready(
                "InterfacePrepared",
                format!("{} on {} as {}", link.name, p.name, plan.pod_interface),
            )],
            data: None,
            network_data: Some(NetworkData {
                interface_name: plan.pod_interface.clone(),
                ips: vec![address],
                hardware_address: link.hardware_address,
            }),
        };
        let device = PreparedDevice::named(&self.pool, &plan.device, plan.share_id.as_ref())
            .edits(edits)
            .status(status);
        Ok((device, link.name))
    }

    /// Health of the device on `link` after a link event (None: not ours).
    /// Healthy carries no message, as a device starts out, so the state
    /// delivered at start changes nothing.
    pub fn on_link(&self, link: &str, up: bool) -> Option<DeviceHealth> {
        let p = self.config.parents.iter().find(|p| p.name == link)?;
        Some(if up {
            DeviceHealth::healthy(&self.pool, device_name(&p.name))
        } else {
            DeviceHealth::unhealthy(
                &self.pool,
                device_name(&p.name),
                format!("parent link {} is down", p.name),
            )
        })
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
    use dra_driver_sdk::{AllocatedClaim, ConfigSource, ErrorKind, HealthStatus, Instance};

    const CONFIG: &str = r#"{"parents":[
        {"name":"eth1","subnet":"192.0.2.0/24","gateway":"192.0.2.1","bandwidth":"10G"},
        {"name":"ens2f0","subnet":"198.51.100.0/24"}]}"#;

    fn driver() -> MacvlanDriver {
        MacvlanDriver::new(serde_json::from_str(CONFIG).unwrap(), "node-a").unwrap()
    }

    fn link(name: &str, speed: Option<u32>) -> Link {
        Link {
            name: name.into(),
            index: 7,
            kind: "ether".into(),
            mtu: 9000,
            hardware_address: "02:00:00:00:00:01".into(),
            up: true,
            addresses: vec![],
            speed_mbps: speed,
            pci_address: speed.map(|_| "0000:3b:00.0".into()),
        }
    }

    fn plan(d: &MacvlanDriver, claim: AllocatedClaim) -> Result<Vec<Plan>> {
        d.plan(&claim.resolve()?.devices)
    }

    fn attr(device: &Device, name: &str) -> Option<dra_driver_sdk::AttributeValue> {
        device
            .attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.clone())
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
            let e = Instance::<MacvlanDriver>::start("node-a", bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidConfig);
            assert!(e.message.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn devices_describe_reported_parents_only() {
        let d = driver();
        let devices = d.devices(&[link("ens2f0", Some(25000)), link("lo", None)]);
        assert_eq!(devices.len(), 1, "eth1 is not on this node");
        let dev = &devices[0];
        assert_eq!(dev.name, "ens2f0");
        assert_eq!(attr(dev, "subnet"), Some("198.51.100.0/24".into()));
        assert_eq!(attr(dev, "linkSpeedMbps"), Some(25000u32.into()));
        assert_eq!(attr(dev, "pciAddress"), Some("0000:3b:00.0".into()));
        assert_eq!(attr(dev, "mtu"), Some(9000u32.into()));
        assert_eq!(dev.capacity[0].value, "25000M", "from the link speed");
        assert!(dev.allow_multiple_allocations);
        let policy = dev.capacity[0].request_policy.as_ref().unwrap();
        assert_eq!(policy.default.as_deref(), Some("100M"));
        let devices = d.devices(&[link("eth1", None)]);
        assert_eq!(devices[0].capacity[0].value, "10G", "from the config");
        assert_eq!(attr(&devices[0], "pciAddress"), None);
    }

    #[test]
    fn plans_follow_shares_params_and_bandwidth() {
        let d = driver();
        let plans = plan(
            &d,
            AllocatedClaim::new("default", "c", "uid")
                .share("nic", "node-a", "eth1", "s-1", &[("bandwidth", "250M")])
                .device("nic", "node-a", "ens2f0")
                .config(
                    ConfigSource::ResourceClaim,
                    &[],
                    r#"{"address":"192.0.2.50/24","mac":"02:00:00:00:00:09"}"#,
                ),
        )
        .unwrap();
        assert_eq!(plans[0].key, "s-1");
        assert_eq!(plans[0].pod_interface, "net1");
        assert_eq!(plans[0].egress_bps, Some(250_000_000));
        assert_eq!(plans[0].static_address.as_deref(), Some("192.0.2.50/24"));
        assert_eq!(plans[1].key, "device-ens2f0");
        assert_eq!(plans[1].pod_interface, "net2");
        assert_eq!(plans[1].egress_bps, None);

        let e = plan(
            &d,
            AllocatedClaim::new("default", "c", "uid").device("nic", "node-a", "eth9"),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidClaim);
        let typo = AllocatedClaim::new("default", "c", "uid")
            .device("nic", "node-a", "eth1")
            .config(ConfigSource::ResourceClaim, &[], r#"{"adress":"192.0.2.50"}"#);
        assert!(plan(&d, typo).unwrap_err().message.contains("adress"));
        let same = AllocatedClaim::new("default", "c", "uid")
            .share("nic", "node-a", "eth1", "a", &[])
            .share("nic", "node-a", "eth1", "b", &[])
            .config(ConfigSource::DeviceClass, &[], r#"{"interfaceName":"data"}"#);
        let e = plan(&d, same).unwrap_err();
        assert!(e.message.contains("both be data"), "{e}");
    }

    #[test]
    fn names() {
        assert_eq!(device_name("ens2f0.100"), "ens2f0-100");
        assert_eq!(device_name("ETH_1"), "eth-1");
        assert_eq!(next_name("net1", 2), "net3");
        assert_eq!(next_name("data", 1), "data1");
    }

    #[test]
    fn link_events_map_to_health() {
        let d = driver();
        let down = d.on_link("eth1", false).unwrap();
        assert_eq!(down.status, HealthStatus::Unhealthy);
        assert_eq!(
            (down.device.as_str(), down.message.as_str()),
            ("eth1", "parent link eth1 is down")
        );
        assert_eq!(d.on_link("eth1", true), Some(DeviceHealth::healthy("node-a", "eth1")));
        assert_eq!(d.on_link("lo", false), None);
    }
}
