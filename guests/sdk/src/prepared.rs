//! What `prepare` returns: per device, the container edits the host writes
//! into the claim's CDI spec (after checking them against the operator's
//! policy), references to CDI devices the operator installed, and the status
//! the host writes into the claim's `status.devices`. The records are the
//! WIT's; the SDK adds builders.

use crate::{
    Allocation, Condition, ConditionStatus, ContainerEdits, DeviceMetadata, DeviceNode, DeviceStatus, EnvVar, Hook,
    Mount, NetDevice, PreparedClaim, PreparedDevice, ShareId,
};

// A generated type: `#[derive(Default)]` cannot be added to it.
#[allow(clippy::derivable_impls)]
impl Default for PreparedClaim {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            state: Vec::new(),
        }
    }
}

impl PreparedDevice {
    /// The prepared form of `allocation` (same pool, device and share),
    /// with no edits yet.
    pub fn new<C>(allocation: &Allocation<C>) -> Self {
        Self::named(&allocation.pool, &allocation.device, allocation.share_id.as_ref())
    }

    /// A prepared device by name. The host refuses devices that were not
    /// allocated to the claim.
    pub fn named(pool: &str, device: &str, share_id: Option<&ShareId>) -> Self {
        Self {
            pool: pool.to_owned(),
            device: device.to_owned(),
            share_id: share_id.map(|s| s.as_str().to_owned()),
            edits: ContainerEdits::default(),
            cdi_device_ids: Vec::new(),
            status: None,
            metadata: None,
        }
    }

    pub fn edits(mut self, edits: ContainerEdits) -> Self {
        self.edits = edits;
        self
    }

    /// Also hand the container the device `id` (`vendor/class=name`) of a
    /// CDI spec the operator installed; its kind must be allowed by the
    /// driver's policy.
    pub fn cdi_device(mut self, id: impl Into<String>) -> Self {
        self.cdi_device_ids.push(id.into());
        self
    }

    pub fn status(mut self, status: DeviceStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Facts about the prepared device for the workload (KEP-5304): the
    /// host writes them into the request's metadata file, mounted read-only
    /// into the claim's containers.
    pub fn metadata(mut self, metadata: DeviceMetadata) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// ```
/// use dra_driver_sdk::DeviceMetadata;
/// let m = DeviceMetadata::default().attribute("uuid", "GPU-0");
/// assert_eq!(m.attributes[0].name, "uuid");
/// ```
impl Default for DeviceMetadata {
    fn default() -> Self {
        Self {
            attributes: Vec::new(),
            network_data: None,
        }
    }
}

impl DeviceMetadata {
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<crate::AttributeValue>) -> Self {
        self.attributes.push(crate::Attribute {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    pub fn network_data(mut self, data: crate::NetworkData) -> Self {
        self.network_data = Some(data);
        self
    }
}

/// What a container needs to use a device (a CDI `containerEdits`).
///
/// ```
/// use dra_driver_sdk::{ContainerEdits, DeviceNode, Mount};
/// let edits = ContainerEdits::default()
///     .env("GPU_DEVICE_0", "gpu-0")
///     .device_node(DeviceNode::new("/dev/example-gpu-0").host_path("/dev/null"))
///     .mount(Mount::read_only("/opt/driver/lib", "/usr/lib/driver"));
/// assert_eq!(edits.env[0].name, "GPU_DEVICE_0");
/// ```
impl Default for ContainerEdits {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            device_nodes: Vec::new(),
            mounts: Vec::new(),
            hooks: Vec::new(),
            net_devices: Vec::new(),
        }
    }
}

impl ContainerEdits {
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push(EnvVar {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    pub fn device_node(mut self, node: DeviceNode) -> Self {
        self.device_nodes.push(node);
        self
    }

    pub fn mount(mut self, mount: Mount) -> Self {
        self.mounts.push(mount);
        self
    }

    /// An OCI hook; its path must be allowed by the driver's policy.
    pub fn hook(mut self, hook: Hook) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Move the host interface `host_interface_name` into the container as
    /// `name` (CDI 1.1 `netDevices`).
    pub fn net_device(mut self, host_interface_name: impl Into<String>, name: impl Into<String>) -> Self {
        self.net_devices.push(NetDevice {
            host_interface_name: host_interface_name.into(),
            name: name.into(),
        });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.mounts.is_empty()
            && self.hooks.is_empty()
            && self.net_devices.is_empty()
    }
}

impl DeviceNode {
    /// The device node `path` in the container, read-write (`rw`); its
    /// type and numbers are looked up on the host.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            host_path: None,
            node_type: None,
            major: None,
            minor: None,
            file_mode: None,
            permissions: Some("rw".to_owned()),
            uid: None,
            gid: None,
        }
    }

    /// The node on the host, when it is not `path`.
    pub fn host_path(mut self, host_path: impl Into<String>) -> Self {
        self.host_path = Some(host_path.into());
        self
    }

    /// A subset of `rwm`.
    pub fn permissions(mut self, permissions: impl Into<String>) -> Self {
        self.permissions = Some(permissions.into());
        self
    }
}

impl Mount {
    /// A bind mount of `host_path` at `container_path`.
    pub fn bind(host_path: impl Into<String>, container_path: impl Into<String>) -> Self {
        Self {
            host_path: host_path.into(),
            container_path: container_path.into(),
            mount_type: None,
            options: vec!["bind".to_owned()],
        }
    }

    /// A read-only bind mount with no setuid programs and no device files:
    /// how host libraries and tools are usually handed to a container.
    pub fn read_only(host_path: impl Into<String>, container_path: impl Into<String>) -> Self {
        Self {
            options: ["ro", "nosuid", "nodev", "bind"].map(str::to_owned).to_vec(),
            ..Self::bind(host_path, container_path)
        }
    }
}

#[allow(clippy::derivable_impls)]
impl Default for DeviceStatus {
    fn default() -> Self {
        Self {
            conditions: Vec::new(),
            data: None,
            network_data: None,
        }
    }
}

impl Condition {
    /// `Ready` is `True`, for `reason` (CamelCase).
    pub fn ready(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            condition_type: "Ready".to_owned(),
            status: ConditionStatus::True,
            reason: reason.into(),
            message: message.into(),
        }
    }
}
