//! The host's own types for what it tells a guest and what a guest answers:
//! the inventory (pools, devices, attributes), the claim to prepare, the
//! prepared claim (container edits, device status), events and device
//! health, and a guest's identity and errors.
//!
//! They mirror the records of the `dra:driver` WIT package, but they are the
//! host's: the rest of the crate names only these, and `wit` converts them to
//! and from each supported WIT version at the guest-call boundary
//! (`wit/v0_1/convert.rs`, `wit/v0_2/convert.rs`). A new WIT version adds conversions, not changes
//! all over the host. The capabilities' own records live with them
//! (`imports::nvml::types`, `imports::net::types`).
//!
//! Field documentation is the contract's: see `wit/v0.2/driver.wit`.

use crate::claim::ClaimRef;

// ---- Inventory ----------------------------------------------------------

/// The value of a device attribute (resource.k8s.io/v1 `DeviceAttribute`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeValue {
    Boolean(bool),
    Integer(i64),
    /// A string of at most 64 bytes.
    Text(String),
    /// A semantic version 2.0.0 string such as `12.4.0`.
    Version(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// A C identifier (the driver's own domain is implied) or `<domain>/<identifier>`.
    pub name: String,
    pub value: AttributeValue,
}

/// A range of acceptable amounts for a consumable capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapacityRange {
    pub min: String,
    pub max: Option<String>,
    pub step: Option<String>,
}

/// How requests for a share of a capacity are checked and defaulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPolicy {
    pub default: Option<String>,
    pub valid_values: Vec<String>,
    pub valid_range: Option<CapacityRange>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub name: String,
    /// Kubernetes quantity, e.g. `80Gi`.
    pub value: String,
    pub request_policy: Option<RequestPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaintEffect {
    NoSchedule,
    NoExecute,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: TaintEffect,
}

/// One device as published in a ResourceSlice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Device {
    /// A DNS label, unique within its pool.
    pub name: String,
    pub attributes: Vec<Attribute>,
    pub capacity: Vec<Capacity>,
    pub allow_multiple_allocations: bool,
    pub taints: Vec<Taint>,
    /// What allocating the device uses up of its pool's shared counters
    /// (0.2; empty for 0.1 guests).
    pub consumes_counters: Vec<CounterConsumption>,
    /// Binding conditions (0.2).
    pub binding: Option<BindingConditions>,
    /// The node resources that belong to this device (0.2; empty for 0.1
    /// guests, whose answers the policy alone judges).
    pub node_resources: Vec<NodeResource>,
}

/// A named quantity of a counter set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    /// Kubernetes quantity.
    pub value: String,
}

/// Counters several devices of a pool draw on (resource.k8s.io/v1 `CounterSet`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterSet {
    pub name: String,
    pub counters: Vec<Counter>,
}

/// How much of one counter set a device consumes when allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterConsumption {
    pub counter_set: String,
    pub counters: Vec<Counter>,
}

/// resource.k8s.io/v1 device binding conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindingConditions {
    pub conditions: Vec<String>,
    pub failure_conditions: Vec<String>,
    pub binds_to_node: bool,
}

/// A resource of the node that belongs to a device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeResource {
    /// A device node, by its path on the host.
    DeviceNode(String),
    /// A network interface of the host namespace, by name.
    HostInterface(String),
}

impl std::fmt::Display for NodeResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeResource::DeviceNode(path) => write!(f, "device node {}", crate::guest_text::quoted(path)),
            NodeResource::HostInterface(name) => write!(f, "host interface {}", crate::guest_text::quoted(name)),
        }
    }
}

/// A pool of devices; published as one or more ResourceSlices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub devices: Vec<Device>,
    /// Counter sets the pool's devices consume (0.2), published in a slice
    /// of their own.
    pub shared_counters: Vec<CounterSet>,
}

// ---- The claim a guest prepares -----------------------------------------

/// One device allocated to a claim for this driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatedDevice {
    /// The request name, `request` or `request/subrequest`.
    pub request: String,
    pub pool: String,
    pub device: String,
    pub share_id: Option<String>,
    /// Consumed capacity of a shared device: (capacity name, quantity).
    pub consumed_capacity: Vec<(String, String)>,
    pub admin_access: bool,
}

/// Where an opaque configuration came from (class configs come first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    DeviceClass,
    ResourceClaim,
}

/// Opaque driver parameters from the claim or its DeviceClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpaqueConfig {
    pub source: ConfigSource,
    /// The requests this config applies to; empty means all of them.
    pub requests: Vec<String>,
    /// The `parameters` object, as JSON text.
    pub parameters: String,
}

/// A claim to prepare: only the devices and configs that belong to this driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub reference: ClaimRef,
    pub devices: Vec<AllocatedDevice>,
    pub configs: Vec<OpaqueConfig>,
}

// ---- What a guest prepared ----------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    pub host_path: Option<String>,
    /// `c`, `b`, `u` or `p`; looked up on the host when absent.
    pub node_type: Option<String>,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub file_mode: Option<u32>,
    /// A subset of `rwm`.
    pub permissions: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    pub mount_type: Option<String>,
    pub options: Vec<String>,
}

/// OCI hook stages that CDI supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookStage {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub stage: HookStage,
    /// Absolute path of the program on the host.
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout_seconds: Option<i64>,
}

/// A host network interface moved into the container (CDI 1.1 `netDevices`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetDevice {
    pub host_interface_name: String,
    /// The interface name inside the container.
    pub name: String,
}

/// What a container needs to use a device; checked by the policy, written
/// into the claim's CDI spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerEdits {
    pub env: Vec<EnvVar>,
    pub device_nodes: Vec<DeviceNode>,
    pub mounts: Vec<Mount>,
    pub hooks: Vec<Hook>,
    pub net_devices: Vec<NetDevice>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// A `metav1.Condition` for `status.devices[].conditions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub condition_type: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

/// `status.devices[].networkData`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkData {
    pub interface_name: String,
    pub ips: Vec<String>,
    pub hardware_address: String,
}

/// What the host writes into the claim's `status.devices` entry for a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStatus {
    pub conditions: Vec<Condition>,
    /// Free-form JSON.
    pub data: Option<String>,
    pub network_data: Option<NetworkData>,
}

/// The result of preparing one allocated device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreparedDevice {
    pub pool: String,
    pub device: String,
    pub share_id: Option<String>,
    pub edits: ContainerEdits,
    /// IDs of devices in CDI specs the operator installed.
    pub cdi_device_ids: Vec<String>,
    pub status: Option<DeviceStatus>,
    /// KEP-5304 device metadata for the workload (0.2).
    pub metadata: Option<DeviceMetadata>,
}

/// KEP-5304 `DeviceMetadata` of one device, as the guest gave it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceMetadata {
    pub attributes: Vec<Attribute>,
    pub network_data: Option<NetworkData>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedClaim {
    pub devices: Vec<PreparedDevice>,
    /// Opaque bytes the host checkpoints and passes back to `unprepare`.
    pub state: Vec<u8>,
}

// ---- Events and device health -------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceHealth {
    pub pool: String,
    pub device: String,
    pub status: HealthStatus,
    pub message: String,
}

/// Kinds of GPU events the `nvml` capability can deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuEventKind {
    XidCriticalError,
    DoubleBitEccError,
    SingleBitEccError,
    PstateChange,
    ClockChange,
    PowerSourceChange,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuEvent {
    /// The GPU's UUID; empty when NVML could not attribute the event to a GPU.
    pub uuid: String,
    pub kind: GpuEventKind,
    pub data: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    pub name: String,
    pub index: u32,
    /// Operational state is up.
    pub up: bool,
}

/// Something that happened on the node, delivered by a host event source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Gpu(GpuEvent),
    Link(LinkEvent),
}

// ---- A guest's identity and errors --------------------------------------

/// What `init` receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitContext {
    pub driver_name: String,
    pub node_name: String,
    /// The guest's configuration from the host config file, as JSON text.
    pub config: String,
}

/// What a guest says it is (its name and build version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    pub name: String,
    pub version: String,
}

/// What kind of error a guest returned (the WIT `error-kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverErrorKind {
    /// The driver or claim configuration is invalid.
    InvalidConfig,
    /// The claim cannot be served as allocated.
    InvalidClaim,
    /// The hardware or a host capability is not available.
    Unavailable,
    /// The device is busy; retrying later may work.
    Busy,
    /// The operation is not supported by this driver.
    Unsupported,
    /// The guest's own fault: counts against a new component's error budget.
    Internal,
}

/// An error a guest returned, as it said it (`guest::GuestError::Driver`
/// bounds the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverError {
    pub kind: DriverErrorKind,
    pub message: String,
}
