//! The check of a guest's answer against the driver's [`Policy`]: every
//! device, edit, reference and size (the module docs list what is bounded),
//! each refusal naming the field and the [`Rule`] that refused it.

use super::status::{check_metadata, check_status};
use super::*;

/// A refusal of one field: the rule and the reason.
type Refusal = (String, Rule, String);

fn refuse<T>(field: impl Into<String>, rule: Rule, reason: impl Into<String>) -> Result<T, Refusal> {
    Err((field.into(), rule, reason.into()))
}

type Key<'a> = (&'a str, &'a str, Option<&'a str>);

impl Policy {
    /// Check a guest's answer to `prepare(claim)`, and complete it: device
    /// nodes get the type and numbers read from the node. The one entry
    /// point for an answer: its devices and edits, then the host links it
    /// hands the claim's containers. `inventory` is the driver's published
    /// inventory (for references to operator CDI devices by an attribute of
    /// the allocated device); `owners`, who owns the node resources it
    /// declares ([`Policy::ownership`] of the same inventory, built when it
    /// was published); `link_owners` names the claim each link the
    /// host created for this driver belongs to (see
    /// [`Policy::host_links`]: needed only when the answer names one).
    pub fn check(
        &self,
        claim: &model::Claim,
        inventory: &[model::Pool],
        owners: &Ownership,
        link_owners: &HashMap<String, String>,
        prepared: &mut model::PreparedClaim,
    ) -> Result<(), PolicyError> {
        self.check_devices(claim, inventory, prepared)?;
        self.check_ownership(claim, owners, prepared)?;
        self.check_claim_links(&claim.reference.uid, prepared, |link| link_owners.get(link).cloned())
    }

    /// The answer's devices: each allocated, once, every field within the
    /// policy.
    pub(super) fn check_devices(
        &self,
        claim: &model::Claim,
        inventory: &[model::Pool],
        prepared: &mut model::PreparedClaim,
    ) -> Result<(), PolicyError> {
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
        let mut seen: HashSet<(String, String, Option<String>)> = HashSet::new();
        for d in &mut prepared.devices {
            let key = (d.pool.as_str(), d.device.as_str(), d.share_id.as_deref());
            let guest_named = |d: &model::PreparedDevice| {
                (
                    text::bounded(&d.pool, text::QUOTED_BYTES),
                    text::bounded(&d.device, text::QUOTED_BYTES),
                    d.share_id.as_deref().map(|s| text::bounded(s, text::QUOTED_BYTES)),
                )
            };
            if !allocated.contains(&key) {
                let (pool, device, share_id) = guest_named(d);
                return Err(PolicyError::NotAllocated { pool, device, share_id });
            }
            if !seen.insert((d.pool.clone(), d.device.clone(), d.share_id.clone())) {
                let (pool, device, share_id) = guest_named(d);
                return Err(PolicyError::Duplicate { pool, device, share_id });
            }
            self.check_device(d, inventory)
                .map_err(|(field, rule, reason)| PolicyError::Refused {
                    pool: d.pool.clone(),
                    device: d.device.clone(),
                    field,
                    rule,
                    reason,
                })?;
        }
        if let Some(missing) = claim
            .devices
            .iter()
            .find(|d| !seen.contains(&(d.pool.clone(), d.device.clone(), d.share_id.clone())))
        {
            return Err(PolicyError::Missing {
                pool: missing.pool.clone(),
                device: missing.device.clone(),
                share_id: missing.share_id.clone(),
            });
        }
        Ok(())
    }

    /// The links the host created (`dwh…`) that an answer hands to the
    /// claim's containers, as `netDevices` or as the attach hook's `--link`:
    /// (device, field, link).
    pub fn host_links<'a>(
        &'a self,
        prepared: &'a model::PreparedClaim,
    ) -> impl Iterator<Item = (&'a model::PreparedDevice, &'static str, &'a str)> + 'a {
        prepared.devices.iter().flat_map(move |d| {
            let moved = d
                .edits
                .net_devices
                .iter()
                .map(|n| ("netDevices", n.host_interface_name.as_str()));
            let attached = d
                .edits
                .hooks
                .iter()
                .filter_map(move |h| Some(("hooks", self.attach_hook.as_ref()?.link(h)?)));
            moved
                .chain(attached)
                .filter(|(_, link)| link.starts_with(crate::imports::net::LINK_PREFIX))
                .map(move |(field, link)| (d, field, link))
        })
    }

    /// Every [`Policy::host_links`] link must be one the host created for
    /// this claim: `owner` names the claim a link was created for (`None`:
    /// not a link the host created for this driver). The policy's other
    /// rules only say which interfaces a driver may move at all; without
    /// this a guest could give one claim's pod another claim's interface.
    pub(super) fn check_claim_links(
        &self,
        claim_uid: &str,
        prepared: &model::PreparedClaim,
        owner: impl Fn(&str) -> Option<String>,
    ) -> Result<(), PolicyError> {
        for (d, field, link) in self.host_links(prepared) {
            let reason = match owner(link) {
                Some(o) if o == claim_uid => continue,
                Some(o) => format!("the host created this link for claim {o}, not for this claim"),
                None => "not a link the host created for this driver's claims".to_owned(),
            };
            return Err(PolicyError::Refused {
                pool: d.pool.clone(),
                device: d.device.clone(),
                field: format!("{field} {}", quoted(link)),
                rule: Rule::Allocation,
                reason,
            });
        }
        Ok(())
    }

    /// Check the size of a claim's CDI spec; `devices` are its devices with
    /// the bytes each one's entry takes, to name the largest in a refusal.
    pub fn check_spec_size<'a>(
        &self,
        spec_bytes: usize,
        devices: impl IntoIterator<Item = (&'a str, &'a str, usize)>,
    ) -> Result<(), PolicyError> {
        if spec_bytes <= self.max_cdi_spec_bytes {
            return Ok(());
        }
        let (pool, device, bytes) = devices
            .into_iter()
            .max_by_key(|(_, _, bytes)| *bytes)
            .unwrap_or(("", "", spec_bytes));
        Err(PolicyError::Refused {
            pool: pool.to_owned(),
            device: device.to_owned(),
            field: "containerEdits".into(),
            rule: Rule::MaxCdiSpecBytes,
            reason: format!(
                "the claim's CDI spec would be {spec_bytes} bytes, {bytes} of them this device's edits; \
                 at most {} bytes are allowed",
                self.max_cdi_spec_bytes
            ),
        })
    }

    fn check_device(&self, d: &mut model::PreparedDevice, inventory: &[model::Pool]) -> Result<(), Refusal> {
        let (pool, device) = (d.pool.clone(), d.device.clone());
        self.check_edits(&mut d.edits)?;
        self.check_cdi_ids(&d.cdi_device_ids, inventory, &pool, &device)?;
        if let Some(status) = &d.status {
            check_status(status).or_else(|(rule, reason)| refuse("status", rule, reason))?;
        }
        if let Some(metadata) = &d.metadata {
            check_metadata(metadata).or_else(|(rule, reason)| refuse("metadata", rule, reason))?;
        }
        Ok(())
    }

    fn check_cdi_ids(
        &self,
        ids: &[String],
        inventory: &[model::Pool],
        pool: &str,
        device: &str,
    ) -> Result<(), Refusal> {
        bounded("cdiDeviceIDs", ids.len(), bounds::CDI_IDS_PER_DEVICE)?;
        for (i, id) in ids.iter().enumerate() {
            let field = format!("cdiDeviceIDs[{i}] {}", quoted(id));
            let Some((kind, name)) = id.split_once('=') else {
                return refuse(field, Rule::Format, "is not of the form vendor/class=name");
            };
            let valid_name = !name.is_empty()
                && name.len() <= 253
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name.ends_with(|c: char| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
            if !valid_name {
                return refuse(
                    field,
                    Rule::Format,
                    format!("{} is not a valid CDI device name", quoted(name)),
                );
            }
            let Some(rule) = self.cdi_devices.iter().find(|r| r.kind == kind) else {
                let kinds: Vec<&str> = self.cdi_devices.iter().map(|r| r.kind.as_str()).collect();
                return refuse(
                    field,
                    Rule::CdiDevices,
                    format!("kind {} is not one of the allowed kinds {kinds:?}", quoted(kind)),
                );
            };
            if name == "all" {
                if rule.allow_all {
                    continue;
                }
                return refuse(
                    field,
                    Rule::CdiDevices,
                    format!("names every device of {kind}, but the claim was allocated this one (allow_all is false)"),
                );
            }
            let attr = &rule.name_attribute;
            let value = |d: &model::Device| {
                d.attributes
                    .iter()
                    .find(|a| &a.name == attr)
                    .and_then(|a| match &a.value {
                        model::AttributeValue::Text(s) | model::AttributeValue::Version(s) => Some(s.clone()),
                        model::AttributeValue::Integer(n) => Some(n.to_string()),
                        model::AttributeValue::Boolean(_) => None,
                    })
            };
            let own = inventory
                .iter()
                .filter(|p| p.name == pool)
                .flat_map(|p| &p.devices)
                .find(|x| x.name == device)
                .and_then(value);
            let Some(own) = own else {
                return refuse(
                    field,
                    Rule::CdiDevices,
                    format!(
                        "the device has no {attr:?} attribute in this driver's inventory to check the name against"
                    ),
                );
            };
            if name != own {
                return refuse(
                    field,
                    Rule::CdiDevices,
                    format!(
                        "names {}, but the allocated device's {attr} is {}",
                        quoted(name),
                        quoted(&own)
                    ),
                );
            }
            let holders = inventory
                .iter()
                .flat_map(|p| &p.devices)
                .filter(|x| value(x).as_deref() == Some(name))
                .count();
            if holders > 1 {
                return refuse(
                    field,
                    Rule::CdiDevices,
                    format!(
                        "{attr} {} is published by {holders} devices of this driver, so it names none of them alone",
                        quoted(name)
                    ),
                );
            }
        }
        Ok(())
    }

    fn check_edits(&self, e: &mut model::ContainerEdits) -> Result<(), Refusal> {
        bounded("env", e.env.len(), bounds::ENV_PER_DEVICE)?;
        bounded("deviceNodes", e.device_nodes.len(), bounds::DEVICE_NODES_PER_DEVICE)?;
        bounded("mounts", e.mounts.len(), bounds::MOUNTS_PER_DEVICE)?;
        bounded("hooks", e.hooks.len(), bounds::HOOKS_PER_DEVICE)?;
        bounded("netDevices", e.net_devices.len(), bounds::NET_DEVICES_PER_DEVICE)?;
        for (i, v) in e.env.iter().enumerate() {
            if v.name.is_empty() || v.name.contains(['=', '\0']) || v.name.len() > 1024 {
                return refuse(
                    format!("env[{i}]"),
                    Rule::Format,
                    format!("environment variable name {} is not valid", quoted(&v.name)),
                );
            }
            if v.value.contains('\0') || v.value.len() > bounds::ENV_VALUE_BYTES {
                return refuse(
                    format!("env[{i}] {}", quoted(&v.name)),
                    Rule::Bounds,
                    format!(
                        "the value has a NUL or more than {} bytes ({})",
                        bounds::ENV_VALUE_BYTES,
                        v.value.len()
                    ),
                );
            }
        }
        for (i, n) in e.device_nodes.iter_mut().enumerate() {
            let host = n.host_path.clone().unwrap_or_else(|| n.path.clone());
            let field = format!("deviceNodes[{i}] {}", quoted(&host));
            self.check_device_node(n, &host)
                .or_else(|(rule, reason)| refuse(field, rule, reason))?;
        }
        for (i, m) in e.mounts.iter_mut().enumerate() {
            let field = format!("mounts[{i}] {}", quoted(&m.host_path));
            self.check_mount(m)
                .or_else(|(rule, reason)| refuse(field, rule, reason))?;
        }
        for (i, h) in e.hooks.iter().enumerate() {
            let field = format!("hooks[{i}] {}", quoted(&h.path));
            self.check_hook(h)
                .or_else(|(rule, reason)| refuse(field, rule, reason))?;
        }
        if !e.net_devices.is_empty() && !self.allow_net_devices {
            return refuse(
                "netDevices",
                Rule::AllowNetDevices,
                "network devices are not allowed for this driver",
            );
        }
        for (i, n) in e.net_devices.iter().enumerate() {
            for name in [&n.host_interface_name, &n.name] {
                if !is_interface_name(name) {
                    return refuse(
                        format!("netDevices[{i}]"),
                        Rule::Format,
                        format!("{} is not a valid network interface name", quoted(name)),
                    );
                }
            }
            if !self
                .net_host_interfaces
                .iter()
                .any(|p| paths::name_matches(p, &n.host_interface_name))
            {
                return refuse(
                    format!("netDevices[{i}] {}", quoted(&n.host_interface_name)),
                    Rule::NetHostInterfaces,
                    format!(
                        "not in net_host_interfaces {:?}: the runtime would move this interface of the node into the pod",
                        self.net_host_interfaces
                    ),
                );
            }
        }
        Ok(())
    }

    /// A device node: an allowed host path, the type and numbers it really
    /// has (filled in when absent).
    fn check_device_node(&self, n: &mut model::DeviceNode, host: &str) -> Result<(), (Rule, String)> {
        paths::check_clean(&n.path)
            .map_err(|why| (Rule::Format, format!("container path {} {why}", quoted(&n.path))))?;
        paths::check_clean(host).map_err(|why| (Rule::Format, format!("host path {why}")))?;
        if !paths::any_matches(&self.device_nodes, host) {
            return Err((
                Rule::DeviceNodes,
                format!("not in device_nodes {:?}", self.device_nodes),
            ));
        }
        if let Some(p) = &n.permissions
            && (p.is_empty() || !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')))
        {
            return Err((
                Rule::Format,
                format!("permissions {} are not a subset of \"rwm\"", quoted(p)),
            ));
        }
        if let Some(t) = &n.node_type
            && !matches!(t.as_str(), "c" | "b" | "u" | "p")
        {
            return Err((Rule::Format, format!("type {} is not one of c, b, u, p", quoted(t))));
        }
        if n.major.is_some_and(|m| m < 0) || n.minor.is_some_and(|m| m < 0) {
            return Err((Rule::Format, "negative device numbers (a wildcard to runtimes)".into()));
        }
        let real = devices::lookup(&self.device_root, host).map_err(|why| (Rule::DeviceNodes, why))?;
        let type_ok = n.node_type.as_deref().is_none_or(|t| real.kind.is(t));
        let numbers_ok = match real.kind {
            // CDI gives FIFOs no numbers.
            NodeKind::Fifo => n.major.unwrap_or(0) == 0 && n.minor.unwrap_or(0) == 0,
            _ => n.major.is_none_or(|m| m == real.major) && n.minor.is_none_or(|m| m == real.minor),
        };
        if !(type_ok && numbers_ok) {
            let number = |m: Option<i64>| m.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
            return Err((
                Rule::DeviceNodes,
                format!(
                    "declared {} {}:{}, but it is {real} on this node: a container gets the device its numbers name",
                    n.node_type.as_deref().unwrap_or("(no type)"),
                    number(n.major),
                    number(n.minor)
                ),
            ));
        }
        n.node_type = Some(real.kind.cdi_type().to_owned());
        if real.kind != NodeKind::Fifo {
            n.major = Some(real.major);
            n.minor = Some(real.minor);
        }
        Ok(())
    }

    /// A mount: a bind of an allowed host path (or an allowed type), options
    /// from the allow-list, read-only unless allowed.
    fn check_mount(&self, m: &mut model::Mount) -> Result<(), (Rule, String)> {
        paths::check_clean(&m.container_path).map_err(|why| {
            (
                Rule::Format,
                format!("container path {} {why}", quoted(&m.container_path)),
            )
        })?;
        if m.options.len() > bounds::MOUNT_OPTIONS {
            return Err((
                Rule::Bounds,
                format!(
                    "{} options; at most {} are allowed",
                    m.options.len(),
                    bounds::MOUNT_OPTIONS
                ),
            ));
        }
        let bind = match m.mount_type.as_deref() {
            None | Some("bind") => true,
            Some(t) if self.mount_types.iter().any(|a| a == t) => false,
            Some(t) => {
                return Err((
                    Rule::MountTypes,
                    format!(
                        "type {} is not a bind mount, and mount_types {:?} does not allow it: \
                         the runtime would mount what the type and options say, not this path",
                        quoted(t),
                        self.mount_types
                    ),
                ));
            }
        };
        for o in &m.options {
            let allowed = o == "rw"
                || DEFAULT_MOUNT_OPTIONS.contains(&o.as_str())
                || self.mount_options.iter().any(|a| glob_option(a, o));
            if !allowed {
                return Err((
                    Rule::MountOptions,
                    format!(
                        "option {} is not in the default allow-list {DEFAULT_MOUNT_OPTIONS:?} or mount_options {:?}",
                        quoted(o),
                        self.mount_options
                    ),
                ));
            }
        }
        if !bind {
            // The source of a non-bind mount ("tmpfs", "none") is not a host path.
            if m.host_path.is_empty() || m.host_path.len() > bounds::PATH_BYTES || m.host_path.contains('\0') {
                return Err((
                    Rule::Format,
                    "the mount source is empty, too long or contains NUL".into(),
                ));
            }
            return Ok(());
        }
        paths::check_clean(&m.host_path).map_err(|why| (Rule::Format, format!("host path {why}")))?;
        if !paths::any_matches(&self.mount_host_paths, &m.host_path) {
            return Err((
                Rule::MountHostPaths,
                format!("host path not in mount_host_paths {:?}", self.mount_host_paths),
            ));
        }
        let read_only = m.options.iter().any(|o| o == "ro") && !m.options.iter().any(|o| o == "rw");
        if !read_only && !paths::any_matches(&self.mount_rw_host_paths, &m.host_path) {
            return Err((
                Rule::MountRwHostPaths,
                format!(
                    "the mount is read-write (no \"ro\" option), and mount_rw_host_paths {:?} does not allow it",
                    self.mount_rw_host_paths
                ),
            ));
        }
        // A mount without a type is a bind only with the bind option; the
        // runtime would otherwise mount the path as a filesystem source.
        if !m.options.iter().any(|o| o == "bind" || o == "rbind") {
            m.options.push("bind".into());
        }
        Ok(())
    }

    fn check_hook(&self, h: &model::Hook) -> Result<(), (Rule, String)> {
        if let Some(attach) = self.attach_hook.as_ref().filter(|a| a.path == h.path) {
            return attach.accepts(h).map_err(|why| (Rule::HookPaths, why));
        }
        if !self.hook_paths.iter().any(|p| p == &h.path) {
            return Err((Rule::HookPaths, format!("not in hook_paths {:?}", self.hook_paths)));
        }
        if h.args.len() > bounds::ARGS_PER_HOOK {
            return Err((
                Rule::Bounds,
                format!(
                    "{} arguments; at most {} are allowed",
                    h.args.len(),
                    bounds::ARGS_PER_HOOK
                ),
            ));
        }
        if h.args
            .iter()
            .chain(&h.env)
            .any(|a| a.contains('\0') || a.len() > bounds::PATH_BYTES)
        {
            return Err((
                Rule::Format,
                "an argument or environment entry is too long or has a NUL".into(),
            ));
        }
        if h.timeout_seconds.is_some_and(|t| t <= 0) {
            return Err((Rule::Format, "the timeout is not positive".into()));
        }
        Ok(())
    }
}

/// An allowed mount option (exact, or a glob such as `size=*`) covers `o`.
fn glob_option(allowed: &str, o: &str) -> bool {
    // A glob never matches a `/`, so `lowerdir=*` does not allow `lowerdir=/`.
    allowed == o || paths::name_matches(allowed, o)
}

/// `vendor/class` as CDI writes kinds.
pub(super) fn check_kind(kind: &str) -> Result<(), &'static str> {
    let Some((vendor, class)) = kind.split_once('/') else {
        return Err("is not vendor/class");
    };
    let part = |s: &str, max: usize| {
        s.len() <= max
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if part(vendor, 253) && part(class, 63) {
        Ok(())
    } else {
        Err("is not a valid CDI kind (vendor/class, letters, digits, '_', '-', '.')")
    }
}

/// Share IDs must be usable in CDI names like claim UIDs.
pub fn is_valid_share_id(id: &str) -> bool {
    is_safe_uid(id)
}

fn bounded(field: &str, n: usize, max: usize) -> Result<(), Refusal> {
    if n > max {
        refuse(field, Rule::Bounds, format!("{n} entries; at most {max} are allowed"))
    } else {
        Ok(())
    }
}

fn is_interface_name(name: &str) -> bool {
    // IFNAMSIZ is 16 including the NUL.
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

pub(super) fn is_cidr(s: &str) -> bool {
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
