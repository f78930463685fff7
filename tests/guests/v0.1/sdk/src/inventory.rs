//! What a driver publishes: pools of devices, which the host turns into
//! ResourceSlices (checking names, sizes and quantities the way the API
//! server would, and splitting pools into slices). The records are the
//! WIT's; the SDK adds builders that take [`Quantity`] where the WIT has
//! quantity strings.

use crate::{Attribute, AttributeValue, Capacity, CapacityRange, Device, Pool, Quantity, RequestPolicy, Taint};

impl Pool {
    pub fn new(name: impl Into<String>, devices: Vec<Device>) -> Self {
        Self {
            name: name.into(),
            devices,
        }
    }
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
