//! What the host accepts from a guest's `prepare` (invariant 2: the host
//! never trusts guest output).
//!
//! The threat: a buggy or malicious guest, or a compromised guests
//! ConfigMap, returns container edits that give a container more of the
//! node than its claim was allocated. The runtime applies a CDI spec as it
//! is written, as root, so everything in it is bounded here, per driver, by
//! what the operator allowed (`[drivers.policy]`, docs/operations.md "The
//! policy model"):
//!
//! - devices: only those allocated to the claim for this driver, each once;
//! - device nodes: only host paths named by `device_nodes` (exact paths and
//!   globs, [`paths`]), and with the type and numbers the node really has
//!   ([`devices`]: read from the node, filled in when absent, a mismatch
//!   refused);
//! - mounts: binds only (unless `mount_types` allows more) of host paths
//!   named by `mount_host_paths`, read-only unless `mount_rw_host_paths`
//!   names them, with options from an allow-list (`mount_options` adds);
//! - hooks: programs named by `hook_paths` (and the host's own network
//!   attach hook, with exactly the arguments the host hands out);
//! - network devices: only when `allow_net_devices`, and only interfaces
//!   named by `net_host_interfaces` (by default the links the host creates);
//! - the links the host created (`dwh…`), in `netDevices` or the attach
//!   hook: only the claim's own (part of [`Policy::check`], against the
//!   driver's network state);
//! - references to operator CDI devices (`nvidia.com/gpu=<uuid>`): kinds in
//!   `cdi_devices`, the name equal to an attribute of the allocated device
//!   (its `uuid`), `all` only when allowed;
//! - sizes: every list and string, and the claim's whole CDI spec
//!   (`max_cdi_spec_bytes`).
//!
//! A refusal names the device, the field and the policy key ([`Rule`]) that
//! refused it, so an operator knows what to change, or that the guest is at
//! fault.
//!
//! This file is the model: the `[drivers.policy]` section as the operator
//! writes it, validated into a [`Policy`]. `check.rs` is the check of a
//! guest's answer against it; `paths.rs` and `devices.rs` are its path rules
//! and the node's device nodes.

mod check;
mod devices;
mod error;
mod ownership;
mod paths;
mod status;
#[cfg(test)]
mod tests;

use check::check_kind;
pub use check::is_valid_share_id;
pub use devices::{HostDevice, NodeKind};
pub use error::{PolicyError, Rule};
pub use ownership::Ownership;
pub use paths::PathRule;

use crate::claim::is_safe_uid;
use crate::guest_text::{self as text, quoted};
use crate::model;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// A driver's policy, checked and ready (from `[drivers.policy]`; the keys
/// and their defaults are documented on [`PolicyConfig`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(try_from = "PolicyConfig")]
pub struct Policy {
    pub device_nodes: Vec<PathRule>,
    pub device_root: PathBuf,
    pub mount_host_paths: Vec<PathRule>,
    pub mount_rw_host_paths: Vec<PathRule>,
    pub mount_types: Vec<String>,
    pub mount_options: Vec<String>,
    pub hook_paths: Vec<String>,
    pub allow_net_devices: bool,
    pub net_host_interfaces: Vec<String>,
    pub cdi_devices: Vec<CdiDeviceRule>,
    pub max_cdi_spec_bytes: usize,
    /// Set by the host (never from the config) for drivers granted `net`:
    /// the network attach hook. It is accepted only with exactly the
    /// arguments the host hands out (`net-attach --dir <plugin dir> --link
    /// dwh…`): the same program with other arguments (`install-hook --to
    /// …`) would let a guest write files on the node as root.
    pub attach_hook: Option<AttachHook>,
}

/// `[drivers.policy]` as written. Everything is refused unless named here;
/// the defaults allow nothing beyond environment variables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyConfig {
    /// Host device nodes a guest may hand to containers: exact paths or
    /// globs (`/dev/nvidia[0-9]*`). Default: none.
    #[serde(default)]
    device_nodes: Vec<PathRule>,
    /// Where this process sees the node's device nodes, to read their type
    /// and numbers: a device node's host path is looked up beneath it.
    /// Default `/` (the host's own `/dev` is the node's, as in a privileged
    /// pod); `/host` when the node's `/dev` is mounted at `/host/dev`.
    #[serde(default = "default_device_root")]
    device_root: PathBuf,
    /// Host paths a guest may bind-mount into containers, read-only: exact
    /// paths, globs, or `dir/**` for a directory and everything beneath it.
    /// Default: none.
    #[serde(default)]
    mount_host_paths: Vec<PathRule>,
    /// Of the mountable host paths, those a guest may mount read-write
    /// (without `ro`). Default: none.
    #[serde(default)]
    mount_rw_host_paths: Vec<PathRule>,
    /// Mount types besides bind mounts, e.g. `tmpfs`. A guest may then mount
    /// any source of that type: never list `overlay`, `proc`, `sysfs`,
    /// `devtmpfs` or a block filesystem. Default: none.
    #[serde(default)]
    mount_types: Vec<String>,
    /// Mount options besides [`DEFAULT_MOUNT_OPTIONS`], exact or as globs
    /// (`size=*`). Default: none.
    #[serde(default)]
    mount_options: Vec<String>,
    /// Programs a guest may run as OCI hooks, as root on the node (exact
    /// paths). Default: none.
    #[serde(default)]
    hook_paths: Vec<String>,
    /// Whether a guest may move host network interfaces into containers
    /// (CDI `netDevices`).
    #[serde(default)]
    allow_net_devices: bool,
    /// Which host interfaces it may move, by name or glob. Default `dwh*`:
    /// only the links the host creates for a driver granted `net`, never a
    /// NIC of the node.
    #[serde(default = "default_net_host_interfaces")]
    net_host_interfaces: Vec<String>,
    /// Operator-installed CDI devices a guest may reference by ID.
    #[serde(default)]
    cdi_devices: Vec<CdiDeviceRule>,
    /// The largest CDI spec one claim may have (runtimes parse every spec
    /// at every container create). Default 256 KiB, at most 4 MiB.
    #[serde(default = "default_max_cdi_spec_bytes")]
    max_cdi_spec_bytes: usize,
    // Keys of the policy before issue 13, refused with the key that replaced them.
    #[serde(default)]
    device_node_prefixes: Option<IgnoredAny>,
    #[serde(default)]
    mount_host_prefixes: Option<IgnoredAny>,
    #[serde(default)]
    cdi_kinds: Option<IgnoredAny>,
}

/// Operator CDI devices of one kind a guest may reference, e.g. the GPU
/// operator's `nvidia.com/gpu` spec from `nvidia-ctk cdi generate`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CdiDeviceRule {
    /// `vendor/class`, e.g. `nvidia.com/gpu`.
    pub kind: String,
    /// The attribute of the allocated device (in the guest's inventory)
    /// whose value a reference must name, e.g. `uuid`: `nvidia.com/gpu=<the
    /// allocated GPU's uuid>`, never another GPU's.
    pub name_attribute: String,
    /// Whether `<kind>=all` (every device of that spec) may be referenced.
    #[serde(default)]
    pub allow_all: bool,
}

/// Mount options every driver may use: read-only, bind, no set-uid, no
/// device files, no execution, and the propagation modes that do not let
/// mounts made in the container reach the node (`shared` and `rshared` need
/// `mount_options`). `rw` is allowed only for `mount_rw_host_paths`.
pub const DEFAULT_MOUNT_OPTIONS: &[&str] = &[
    "ro",
    "bind",
    "rbind",
    "nosuid",
    "nodev",
    "noexec",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

fn default_device_root() -> PathBuf {
    PathBuf::from("/")
}

fn default_net_host_interfaces() -> Vec<String> {
    vec![format!("{}*", crate::imports::net::LINK_PREFIX)]
}

fn default_max_cdi_spec_bytes() -> usize {
    256 << 10
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            device_nodes: vec![],
            device_root: default_device_root(),
            mount_host_paths: vec![],
            mount_rw_host_paths: vec![],
            mount_types: vec![],
            mount_options: vec![],
            hook_paths: vec![],
            allow_net_devices: false,
            net_host_interfaces: default_net_host_interfaces(),
            cdi_devices: vec![],
            max_cdi_spec_bytes: default_max_cdi_spec_bytes(),
            attach_hook: None,
        }
    }
}

impl TryFrom<PolicyConfig> for Policy {
    type Error = String;

    fn try_from(c: PolicyConfig) -> Result<Self, String> {
        if c.device_node_prefixes.is_some() {
            return Err("device_node_prefixes was replaced by device_nodes, which names device nodes exactly or by glob: \
                 e.g. device_nodes = [\"/dev/nvidia[0-9]*\", \"/dev/nvidiactl\"] (docs/operations.md, \"The policy model\")"
                .into());
        }
        if c.mount_host_prefixes.is_some() {
            return Err(
                "mount_host_prefixes was replaced by mount_host_paths: write a directory and everything \
                 beneath it as \"/run/nvidia/driver/**\" (docs/operations.md, \"The policy model\")"
                    .into(),
            );
        }
        if c.cdi_kinds.is_some() {
            return Err("cdi_kinds was replaced by cdi_devices, which also says what a reference may name: \
                 cdi_devices = [{ kind = \"nvidia.com/gpu\", name_attribute = \"uuid\" }] (docs/operations.md, \"The policy model\")"
                .into());
        }
        if !c.device_root.is_absolute() {
            return Err(format!(
                "device_root {} must be an absolute path",
                c.device_root.display()
            ));
        }
        for t in &c.mount_types {
            let ok = !t.is_empty()
                && t.len() <= 64
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(format!("mount_types: {t:?} is not a filesystem type name"));
            }
        }
        for o in &c.mount_options {
            if o.is_empty() || o.len() > 256 || o.contains(['\0', ',']) {
                return Err(format!("mount_options: {o:?} is not one mount option"));
            }
        }
        for n in &c.net_host_interfaces {
            paths::check_name_glob(n).map_err(|why| format!("net_host_interfaces: {why}"))?;
        }
        for h in &c.hook_paths {
            paths::check_clean(h).map_err(|why| format!("hook_paths: {h:?} {why}"))?;
        }
        let mut kinds = HashSet::new();
        for r in &c.cdi_devices {
            check_kind(&r.kind).map_err(|why| format!("cdi_devices: kind {:?} {why}", r.kind))?;
            if !kinds.insert(&r.kind) {
                return Err(format!("cdi_devices: kind {:?} is listed twice", r.kind));
            }
            if r.name_attribute.is_empty() || r.name_attribute.len() > 96 {
                return Err(format!(
                    "cdi_devices: name_attribute {:?} of kind {:?} is not an attribute name",
                    r.name_attribute, r.kind
                ));
            }
        }
        if !(4 << 10..=4 << 20).contains(&c.max_cdi_spec_bytes) {
            return Err(format!(
                "max_cdi_spec_bytes {} must be between 4096 and 4194304",
                c.max_cdi_spec_bytes
            ));
        }
        Ok(Self {
            device_nodes: c.device_nodes,
            device_root: c.device_root,
            mount_host_paths: c.mount_host_paths,
            mount_rw_host_paths: c.mount_rw_host_paths,
            mount_types: c.mount_types,
            mount_options: c.mount_options,
            hook_paths: c.hook_paths,
            allow_net_devices: c.allow_net_devices,
            net_host_interfaces: c.net_host_interfaces,
            cdi_devices: c.cdi_devices,
            max_cdi_spec_bytes: c.max_cdi_spec_bytes,
            attach_hook: None,
        })
    }
}

/// The attach hook the host allows a network driver's guest to return.
#[derive(Clone, Debug, PartialEq)]
pub struct AttachHook {
    pub path: String,
    pub plugin_dir: String,
}

impl AttachHook {
    /// Where the link is in the hook's arguments:
    /// `<argv0> net-attach --dir <plugin dir> --link <link>`.
    const LINK_ARG: usize = 5;

    /// The link a hook names, when it is this hook (its path).
    fn link<'a>(&self, h: &'a model::Hook) -> Option<&'a str> {
        (h.path == self.path)
            .then(|| h.args.get(Self::LINK_ARG))
            .flatten()
            .map(String::as_str)
    }

    fn accepts(&self, h: &model::Hook) -> Result<(), String> {
        let ok = h.stage == model::HookStage::CreateRuntime
            && h.env.is_empty()
            && h.args.len() == 6
            && h.args[1] == "net-attach"
            && h.args[2] == "--dir"
            && h.args[3] == self.plugin_dir
            && h.args[4] == "--link"
            && h.args[Self::LINK_ARG].starts_with(crate::imports::net::LINK_PREFIX)
            && crate::imports::net::is_valid_ifname(&h.args[Self::LINK_ARG]);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} is the network attach hook but not as the host prepared it (stage createRuntime, net-attach --dir {} --link dwh…)",
                quoted(&h.path),
                self.plugin_dir
            ))
        }
    }
}

/// Bounds on guest output. The Kubernetes ones come from resource.k8s.io/v1.
pub mod bounds {
    pub const STATE_BYTES: usize = 64 << 10;
    pub const ENV_PER_DEVICE: usize = 256;
    pub const ENV_VALUE_BYTES: usize = 32 << 10;
    pub const DEVICE_NODES_PER_DEVICE: usize = 64;
    pub const MOUNTS_PER_DEVICE: usize = 256;
    pub const MOUNT_OPTIONS: usize = 32;
    pub const HOOKS_PER_DEVICE: usize = 16;
    pub const NET_DEVICES_PER_DEVICE: usize = 16;
    pub const CDI_IDS_PER_DEVICE: usize = 16;
    pub const PATH_BYTES: usize = super::paths::PATH_BYTES;
    pub const ARGS_PER_HOOK: usize = 64;
    pub const CONDITIONS: usize = 8;
    pub const STATUS_DATA_BYTES: usize = 10 << 10;
    pub const IPS: usize = 16;
    pub const INTERFACE_NAME_BYTES: usize = 256;
    pub const HARDWARE_ADDRESS_BYTES: usize = 128;
    /// KEP-5304 `Device.attributes` (`maxProperties=32` in v1beta1).
    pub const METADATA_ATTRIBUTES: usize = 32;
    pub const CONDITION_MESSAGE_BYTES: usize = 32 << 10;
}
