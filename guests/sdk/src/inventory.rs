//! What a driver publishes: pools of devices, which the host turns into
//! ResourceSlices (checking names, sizes and quantities the way the API
//! server would, and splitting pools into slices). The records are the
//! WIT's; the SDK adds builders that take [`Quantity`] where the WIT has
//! quantity strings.

use crate::{
    Attribute, AttributeValue, BindingConditions, Capacity, CapacityRange, Counter, CounterConsumption, CounterSet,
    Device, NodeResource, Pool, Quantity, RequestPolicy, Taint,
};

impl Pool {
    pub fn new(name: impl Into<String>, devices: Vec<Device>) -> Self {
        Self {
            name: name.into(),
            devices,
            shared_counters: Vec::new(),
        }
    }

    /// A counter set the pool's devices draw on (at most 8 per pool): one
    /// per partitionable device, with what it has in total. Partitions
    /// [`consume`](Device::consumes) from it; the scheduler never
    /// allocates more than it holds. (`dra:driver@0.2.0`; the example in
    /// docs/guest-authoring.md.)
    ///
    /// ```
    /// use dra_driver_sdk::{Device, NodeResource, Pool, Quantity};
    /// let node = "node-a";
    /// let gpu = Device::new("gpu-0")
    ///     .consumes("gpu-0", [("memory".to_owned(), Quantity::binary(80 << 30))])
    ///     .owns_device_node("/dev/nvidia0");
    /// let half = Device::new("gpu-0-half")
    ///     .consumes("gpu-0", [("memory".to_owned(), Quantity::binary(40 << 30))])
    ///     .owns_device_node("/dev/nvidia0");
    /// let pool = Pool::new(node, vec![gpu, half])
    ///     .counter_set("gpu-0", [("memory".to_owned(), Quantity::binary(80 << 30))]);
    /// assert_eq!(pool.shared_counters[0].counters[0].value, "80Gi");
    /// assert_eq!(pool.devices[1].consumes_counters[0].counter_set, "gpu-0");
    /// assert_eq!(pool.devices[1].consumes_counters[0].counters[0].value, "40Gi");
    /// assert_eq!(pool.devices[1].node_resources, [NodeResource::DeviceNode("/dev/nvidia0".into())]);
    /// ```
    pub fn counter_set(
        mut self,
        name: impl Into<String>,
        counters: impl IntoIterator<Item = (String, Quantity)>,
    ) -> Self {
        self.shared_counters.push(CounterSet {
            name: name.into(),
            counters: counters_of(counters),
        });
        self
    }
}

fn counters_of(counters: impl IntoIterator<Item = (String, Quantity)>) -> Vec<Counter> {
    counters
        .into_iter()
        .map(|(name, value)| Counter {
            name,
            value: value.into_string(),
        })
        .collect()
}

/// ```
/// use dra_driver_sdk::{AttributeValue, Device, Quantity};
/// let gpu = Device::new("gpu-0")
///     .attribute("index", 0)
///     .attribute("model", "LATEST-GPU-MODEL")
///     .attribute("driverVersion", AttributeValue::version("1.0.0"))
///     .capacity("memory", Quantity::binary(80 << 30));
/// assert_eq!(gpu.capacity[0].value, "80Gi");
/// ```
impl Device {
    /// A device with no attributes or capacity, for one claim at a time.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            attributes: Vec::new(),
            capacity: Vec::new(),
            allow_multiple_allocations: false,
            taints: Vec::new(),
            consumes_counters: Vec::new(),
            binding: None,
            node_resources: Vec::new(),
        }
    }

    /// An attribute: a C identifier (the driver's domain is implied) or
    /// `<domain>/<identifier>`. At most 32 attributes and capacities together.
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<AttributeValue>) -> Self {
        self.attributes.push(Attribute {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// A capacity claims cannot ask a share of.
    pub fn capacity(mut self, name: impl Into<String>, value: Quantity) -> Self {
        self.capacity.push(Capacity {
            name: name.into(),
            value: value.into_string(),
            request_policy: None,
        });
        self
    }

    /// A consumable capacity of a shared device: how requests for a share
    /// of it are defaulted and checked (DRAConsumableCapacity).
    pub fn consumable(mut self, name: impl Into<String>, value: Quantity, policy: RequestPolicy) -> Self {
        self.capacity.push(Capacity {
            name: name.into(),
            value: value.into_string(),
            request_policy: Some(policy),
        });
        self
    }

    /// Let several claims be allocated shares of this device at once; each
    /// allocation then carries a [`ShareId`](crate::ShareId).
    pub fn shared(mut self, shared: bool) -> Self {
        self.allow_multiple_allocations = shared;
        self
    }

    pub fn taint(mut self, taint: Taint) -> Self {
        self.taints.push(taint);
        self
    }

    /// What allocating this device uses up of the pool's counter set
    /// `counter_set` (at most 2 sets per device).
    pub fn consumes(
        mut self,
        counter_set: impl Into<String>,
        counters: impl IntoIterator<Item = (String, Quantity)>,
    ) -> Self {
        self.consumes_counters.push(CounterConsumption {
            counter_set: counter_set.into(),
            counters: counters_of(counters),
        });
        self
    }

    /// Make the scheduler wait, before binding a pod to this device's node,
    /// until the guest reports every one of `conditions` as `True` in the
    /// claim's device status (and give up when a failure condition is).
    ///
    /// ```
    /// use dra_driver_sdk::{BindingConditions, Device};
    /// let fabric = Device::new("fabric-0").binding_conditions(BindingConditions {
    ///     conditions: vec!["FabricAttached".into()],
    ///     failure_conditions: vec!["FabricFailed".into()],
    ///     binds_to_node: true,
    /// });
    /// assert!(fabric.binding.unwrap().binds_to_node);
    /// ```
    pub fn binding_conditions(mut self, binding: BindingConditions) -> Self {
        self.binding = Some(binding);
        self
    }

    /// Declare that the host device node `host_path` belongs to this device:
    /// the host then refuses to hand it to a claim that was not allocated
    /// this device (or another device declaring it: partitions share their
    /// parent's node).
    pub fn owns_device_node(mut self, host_path: impl Into<String>) -> Self {
        self.node_resources.push(NodeResource::DeviceNode(host_path.into()));
        self
    }

    /// Declare that the host network interface `name` belongs to this device.
    ///
    /// ```
    /// use dra_driver_sdk::{Device, NodeResource};
    /// let nic = Device::new("nic-0").owns_host_interface("eth2");
    /// assert_eq!(nic.node_resources, [NodeResource::HostInterface("eth2".into())]);
    /// ```
    pub fn owns_host_interface(mut self, name: impl Into<String>) -> Self {
        self.node_resources.push(NodeResource::HostInterface(name.into()));
        self
    }
}

impl RequestPolicy {
    /// Shares between `min` and `max`, in steps of `step` when given;
    /// `default` when a request names no amount.
    pub fn range(default: Quantity, min: Quantity, max: Option<Quantity>, step: Option<Quantity>) -> Self {
        Self {
            default: Some(default.into_string()),
            valid_values: Vec::new(),
            valid_range: Some(CapacityRange {
                min: min.into_string(),
                max: max.map(Quantity::into_string),
                step: step.map(Quantity::into_string),
            }),
        }
    }
}

impl AttributeValue {
    /// A semantic version 2.0.0 string such as `12.4.0`.
    pub fn version(v: impl Into<String>) -> Self {
        Self::Version(v.into())
    }
}

impl From<bool> for AttributeValue {
    fn from(b: bool) -> Self {
        Self::Boolean(b)
    }
}

impl From<i64> for AttributeValue {
    fn from(i: i64) -> Self {
        Self::Integer(i)
    }
}

impl From<i32> for AttributeValue {
    fn from(i: i32) -> Self {
        Self::Integer(i64::from(i))
    }
}

impl From<u32> for AttributeValue {
    fn from(i: u32) -> Self {
        Self::Integer(i64::from(i))
    }
}

/// Text (at most 64 characters).
impl From<&str> for AttributeValue {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for AttributeValue {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}
