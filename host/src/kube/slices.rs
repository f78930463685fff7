//! From a guest's inventory to the ResourceSlices that publish it: device
//! conversion, the checks the API server would make (so a bad device is an
//! error naming it, not a rejected write), and splitting a pool into slices
//! within the per-slice limits.
//!
//! [`desired_pools`] is the one inventory check: the publisher publishes
//! what it accepts and reports what it refuses, and `dra-wasm-host guest
//! validate` runs it on a guest's inventory before anything is served. A
//! bad device is left out, never the whole inventory: the other devices of
//! the driver stay schedulable.

use crate::guest_text::quoted;
use crate::model;
use k8s_openapi::api::resource::v1 as resource;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::{BTreeMap, HashSet};

#[cfg(test)]
use crate::resource_rules::is_semver;
use crate::resource_rules::{
    attributes, check_qualified_name, is_dns_label, is_label_name, is_label_value, is_pool_name, is_quantity, milli,
};

/// `ResourceSliceMaxDevices`.
pub const MAX_DEVICES: usize = 128;
/// `ResourceSliceMaxDevicesWithAdvancedFeatures` (taints, counters, list attributes).
pub const MAX_DEVICES_WITH_TAINTS: usize = 64;
/// `ResourceSliceMaxAttributesAndCapacitiesPerDevice`.
pub const MAX_ATTRIBUTES_AND_CAPACITIES: usize = 32;
/// `DeviceTaintsMaxLength`.
pub const MAX_TAINTS: usize = 16;
/// `ResourceSliceMaxCounterSets`.
pub const MAX_COUNTER_SETS: usize = 8;
/// `ResourceSliceMaxCountersPerCounterSet`, and per counter consumption.
pub const MAX_COUNTERS: usize = 32;
/// `ResourceSliceMaxDeviceCounterConsumptionsPerDevice`.
pub const MAX_CONSUMPTIONS: usize = 2;
/// `BindingConditionsMaxSize`, `BindingFailureConditionsMaxSize`.
pub const MAX_BINDING_CONDITIONS: usize = 4;

/// A pool or device of the inventory the API server would refuse. Names
/// are the guest's, quoted, bounded and escaped.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum SliceError {
    /// The whole pool is left out (with its `devices`).
    #[error("pool {}: {reason}", quoted(.pool))]
    Pool {
        pool: String,
        devices: usize,
        reason: String,
    },
    #[error("pool {}, device {}: {reason}", quoted(.pool), quoted(.device))]
    Device {
        pool: String,
        device: String,
        reason: String,
    },
}

impl SliceError {
    /// How many devices this leaves out.
    pub fn devices(&self) -> usize {
        match self {
            SliceError::Pool { devices, .. } => *devices,
            SliceError::Device { .. } => 1,
        }
    }
}

/// A taint the host adds to a device (e.g. while it is unhealthy).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTaint {
    pub pool: String,
    pub device: String,
    pub key: String,
    pub value: Option<String>,
    pub effect: &'static str,
}

/// The slices one pool is published as, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredPool {
    pub name: String,
    pub slices: Vec<DesiredSlice>,
}

/// One slice of a pool: devices, or the pool's shared counters, which the
/// API server takes only in a slice of their own (1.35+).
#[derive(Clone, Debug, PartialEq)]
pub enum DesiredSlice {
    Devices(Vec<resource::Device>),
    Counters(Vec<resource::CounterSet>),
}

impl DesiredSlice {
    /// The devices of a device slice (none in a counter slice).
    pub fn devices(&self) -> &[resource::Device] {
        match self {
            DesiredSlice::Devices(d) => d,
            DesiredSlice::Counters(_) => &[],
        }
    }
}

impl DesiredPool {
    /// Every device of the pool, across its slices.
    pub fn devices(&self) -> impl Iterator<Item = &resource::Device> {
        self.slices.iter().flat_map(DesiredSlice::devices)
    }
}

/// What an inventory is published as, and what of it cannot be.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub pools: Vec<DesiredPool>,
    /// Pools and devices left out, in inventory order.
    pub invalid: Vec<SliceError>,
}

impl Desired {
    /// Devices left out (a pool left out counts all its devices).
    pub fn invalid_devices(&self) -> usize {
        self.invalid.iter().map(SliceError::devices).sum()
    }
}

/// Convert and check every pool and device; split each pool into slices.
/// A device the API server would refuse is left out (and listed in
/// `invalid`); of devices sharing a name, the first is kept; a pool whose
/// name is invalid or repeated is left out whole.
pub fn desired_pools(pools: &[model::Pool], taints: &[HostTaint]) -> Desired {
    let mut names = HashSet::new();
    let mut out = Desired::default();
    for pool in pools {
        let refuse_pool = |reason: &str| SliceError::Pool {
            pool: pool.name.clone(),
            devices: pool.devices.len(),
            reason: reason.to_owned(),
        };
        if !is_pool_name(&pool.name) {
            out.invalid
                .push(refuse_pool("not DNS subdomains separated by '/' (at most 253)"));
            continue;
        }
        if !names.insert(pool.name.as_str()) {
            out.invalid.push(refuse_pool("listed twice in the inventory"));
            continue;
        }
        let counter_sets = match counter_sets(&pool.shared_counters) {
            Ok(sets) => sets,
            Err(reason) => {
                out.invalid.push(refuse_pool(&reason));
                continue;
            }
        };
        let mut seen = HashSet::new();
        let mut devices = Vec::with_capacity(pool.devices.len());
        for d in &pool.devices {
            let refuse = |reason: String| SliceError::Device {
                pool: pool.name.clone(),
                device: d.name.clone(),
                reason,
            };
            if !seen.insert(d.name.as_str()) {
                out.invalid.push(refuse(
                    "device name used twice in the pool; only the first is published".into(),
                ));
                continue;
            }
            let extra: Vec<&HostTaint> = taints
                .iter()
                .filter(|t| t.pool == pool.name && t.device == d.name)
                .collect();
            match device(d, &extra, &counter_sets) {
                Ok(converted) => devices.push(converted),
                Err(reason) => out.invalid.push(refuse(reason)),
            }
        }
        // The counters in slice 0, then the devices (none when there are
        // none: the counter slice already makes the pool non-empty). A pool
        // without counters keeps the layout it always had.
        let mut slices = Vec::new();
        if !counter_sets.is_empty() {
            slices.push(DesiredSlice::Counters(counter_sets));
        }
        if slices.is_empty() || !devices.is_empty() {
            slices.extend(split(devices).into_iter().map(DesiredSlice::Devices));
        }
        out.pools.push(DesiredPool {
            name: pool.name.clone(),
            slices,
        });
    }
    out
}

/// The spec of one slice of `pool` (its `devices`, of generation
/// `generation`), as the publisher writes it and `guest run` prints it.
pub fn spec(
    driver: &str,
    node: &str,
    pool: &DesiredPool,
    slice: &DesiredSlice,
    generation: i64,
) -> resource::ResourceSliceSpec {
    let (devices, shared_counters) = match slice {
        DesiredSlice::Devices(d) => ((!d.is_empty()).then(|| d.clone()), None),
        DesiredSlice::Counters(c) => (None, Some(c.clone())),
    };
    resource::ResourceSliceSpec {
        driver: driver.to_owned(),
        node_name: Some(node.to_owned()),
        pool: resource::ResourcePool {
            name: pool.name.clone(),
            generation,
            resource_slice_count: pool.slices.len() as i64,
        },
        devices,
        shared_counters,
        ..Default::default()
    }
}

/// Greedy split: a slice holds 128 devices, or 64 once it holds a tainted
/// one or one that consumes counters.
/// An empty pool is still published as one empty slice ("empty pool" is not "no pool").
fn split(devices: Vec<resource::Device>) -> Vec<Vec<resource::Device>> {
    let mut slices = Vec::new();
    let mut current: Vec<resource::Device> = Vec::new();
    for d in devices {
        let tainted = current
            .iter()
            .chain(std::iter::once(&d))
            .any(|x| x.taints.is_some() || x.consumes_counters.is_some());
        let limit = if tainted { MAX_DEVICES_WITH_TAINTS } else { MAX_DEVICES };
        if current.len() + 1 > limit {
            slices.push(std::mem::take(&mut current));
        }
        current.push(d);
    }
    slices.push(current);
    slices
}

/// A pool's counter sets as the API server takes them, or why it would
/// refuse them (and with them, the pool: its devices consume them).
fn counter_sets(sets: &[model::CounterSet]) -> Result<Vec<resource::CounterSet>, String> {
    if sets.len() > MAX_COUNTER_SETS {
        return Err(format!(
            "{} shared counter sets; at most {MAX_COUNTER_SETS} are allowed",
            sets.len()
        ));
    }
    let mut out: Vec<resource::CounterSet> = Vec::with_capacity(sets.len());
    for set in sets {
        let what = format!("counter set {}", quoted(&set.name));
        if !is_dns_label(&set.name) {
            return Err(format!("{what}: the name is not a DNS label"));
        }
        if out.iter().any(|s| s.name == set.name) {
            return Err(format!("{what} listed twice"));
        }
        out.push(resource::CounterSet {
            name: set.name.clone(),
            counters: counters(&set.counters).map_err(|r| format!("{what}: {r}"))?,
        });
    }
    Ok(out)
}

/// Counters by name, checked: at least one, at most 32, DNS-label names,
/// quantities.
fn counters(counters: &[model::Counter]) -> Result<BTreeMap<String, resource::Counter>, String> {
    if counters.is_empty() {
        return Err("no counters".into());
    }
    if counters.len() > MAX_COUNTERS {
        return Err(format!(
            "{} counters; at most {MAX_COUNTERS} are allowed",
            counters.len()
        ));
    }
    let mut out = BTreeMap::new();
    for c in counters {
        if !is_dns_label(&c.name) {
            return Err(format!("counter {}: the name is not a DNS label", quoted(&c.name)));
        }
        if !is_quantity(&c.value) {
            return Err(format!(
                "counter {}: {} is not a quantity",
                quoted(&c.name),
                quoted(&c.value)
            ));
        }
        let counter = resource::Counter {
            value: Quantity(c.value.clone()),
        };
        if out.insert(c.name.clone(), counter).is_some() {
            return Err(format!("counter {} listed twice", quoted(&c.name)));
        }
    }
    Ok(out)
}

/// What a device consumes, checked against its pool's counter sets (the
/// check the upstream publisher makes because the API server cannot: each
/// set and counter named must exist in the pool).
fn consumption(
    consumes: &[model::CounterConsumption],
    sets: &[resource::CounterSet],
) -> Result<Option<Vec<resource::DeviceCounterConsumption>>, String> {
    if consumes.is_empty() {
        return Ok(None);
    }
    if consumes.len() > MAX_CONSUMPTIONS {
        return Err(format!(
            "consumes {} counter sets; at most {MAX_CONSUMPTIONS} are allowed",
            consumes.len()
        ));
    }
    let mut out: Vec<resource::DeviceCounterConsumption> = Vec::with_capacity(consumes.len());
    for c in consumes {
        let what = format!("consumption of counter set {}", quoted(&c.counter_set));
        let Some(set) = sets.iter().find(|s| s.name == c.counter_set) else {
            return Err(format!("{what}: the pool has no such counter set"));
        };
        if out.iter().any(|o| o.counter_set == c.counter_set) {
            return Err(format!("{what} listed twice"));
        }
        let counters = counters(&c.counters).map_err(|r| format!("{what}: {r}"))?;
        if let Some(unknown) = counters.keys().find(|name| !set.counters.contains_key(*name)) {
            return Err(format!("{what}: the set has no counter {}", quoted(unknown)));
        }
        out.push(resource::DeviceCounterConsumption {
            counter_set: c.counter_set.clone(),
            counters,
            ..Default::default()
        });
    }
    Ok(Some(out))
}

/// Binding conditions as the API server checks them: at most 4 of each,
/// label names, no duplicates, no condition in both lists.
fn binding(b: &model::BindingConditions) -> Result<(), String> {
    for (field, list) in [
        ("bindingConditions", &b.conditions),
        ("bindingFailureConditions", &b.failure_conditions),
    ] {
        if list.len() > MAX_BINDING_CONDITIONS {
            return Err(format!(
                "{} {field}; at most {MAX_BINDING_CONDITIONS} are allowed",
                list.len()
            ));
        }
        let mut seen = HashSet::new();
        for c in list {
            if !is_label_name(c) {
                return Err(format!("{field}: {} is not a label name", quoted(c)));
            }
            if !seen.insert(c) {
                return Err(format!("{field}: {} listed twice", quoted(c)));
            }
        }
    }
    if let Some(both) = b.failure_conditions.iter().find(|c| b.conditions.contains(c)) {
        return Err(format!(
            "{} is both a binding condition and a binding failure condition",
            quoted(both)
        ));
    }
    Ok(())
}

fn device(
    d: &model::Device,
    extra: &[&HostTaint],
    counter_sets: &[resource::CounterSet],
) -> Result<resource::Device, String> {
    if !is_dns_label(&d.name) {
        return Err("the name is not a DNS label (lower-case letters, digits, '-', at most 63)".into());
    }
    let total = d.attributes.len() + d.capacity.len();
    if total > MAX_ATTRIBUTES_AND_CAPACITIES {
        return Err(format!(
            "{total} attributes and capacities; at most {MAX_ATTRIBUTES_AND_CAPACITIES} are allowed"
        ));
    }
    let attributes = attributes(&d.attributes)?;
    let mut capacity = BTreeMap::new();
    for c in &d.capacity {
        check_qualified_name(&c.name).map_err(|r| format!("capacity {}: {r}", quoted(&c.name)))?;
        if attributes.contains_key(&c.name) {
            return Err(format!("{} is both an attribute and a capacity", quoted(&c.name)));
        }
        let q = |s: &str| {
            if is_quantity(s) {
                Ok(Quantity(s.to_owned()))
            } else {
                Err(format!("capacity {}: {} is not a quantity", quoted(&c.name), quoted(s)))
            }
        };
        let request_policy = match &c.request_policy {
            None => None,
            Some(p) => Some(resource::CapacityRequestPolicy {
                default: p.default.as_deref().map(q).transpose()?,
                valid_values: if p.valid_values.is_empty() {
                    None
                } else {
                    Some(p.valid_values.iter().map(|v| q(v)).collect::<Result<_, _>>()?)
                },
                valid_range: match &p.valid_range {
                    None => None,
                    Some(r) => Some(resource::CapacityRequestPolicyRange {
                        min: q(&r.min)?,
                        max: r.max.as_deref().map(q).transpose()?,
                        step: r.step.as_deref().map(q).transpose()?,
                    }),
                },
            }),
        };
        if let Some(reason) = request_policy
            .as_ref()
            .and_then(|p| range_off_step(&c.value, p.default.as_ref(), p.valid_range.as_ref()?))
        {
            return Err(format!("capacity {}: {reason}", quoted(&c.name)));
        }
        if request_policy
            .as_ref()
            .is_some_and(|p| p.valid_values.is_some() && p.valid_range.is_some())
        {
            return Err(format!(
                "capacity {}: validValues and validRange are mutually exclusive",
                quoted(&c.name)
            ));
        }
        if capacity
            .insert(
                c.name.clone(),
                resource::DeviceCapacity {
                    value: q(&c.value)?,
                    request_policy,
                },
            )
            .is_some()
        {
            return Err(format!("capacity {} listed twice", quoted(&c.name)));
        }
    }
    let mut taints: Vec<resource::DeviceTaint> = d
        .taints
        .iter()
        .map(|t| resource::DeviceTaint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: match t.effect {
                model::TaintEffect::NoSchedule => "NoSchedule",
                model::TaintEffect::NoExecute => "NoExecute",
                model::TaintEffect::None => "None",
            }
            .to_owned(),
            time_added: None,
        })
        .collect();
    taints.extend(extra.iter().map(|t| resource::DeviceTaint {
        key: t.key.clone(),
        value: t.value.clone(),
        effect: t.effect.to_owned(),
        time_added: None,
    }));
    if taints.len() > MAX_TAINTS {
        return Err(format!("{} taints; at most {MAX_TAINTS} are allowed", taints.len()));
    }
    for t in &taints {
        check_qualified_name(&t.key).map_err(|r| format!("taint key {}: {r}", quoted(&t.key)))?;
        if let Some(v) = &t.value
            && !is_label_value(v)
        {
            return Err(format!(
                "taint {}: value {} is not a label value (at most 63 letters, digits, '-', '_', '.')",
                quoted(&t.key),
                quoted(v)
            ));
        }
    }
    let consumes_counters = consumption(&d.consumes_counters, counter_sets)?;
    if let Some(b) = &d.binding {
        binding(b)?;
    }
    let list = |l: &Vec<String>| (!l.is_empty()).then(|| l.clone());
    Ok(resource::Device {
        name: d.name.clone(),
        attributes: (!attributes.is_empty()).then_some(attributes),
        capacity: (!capacity.is_empty()).then_some(capacity),
        allow_multiple_allocations: d.allow_multiple_allocations.then_some(true),
        taints: (!taints.is_empty()).then_some(taints),
        consumes_counters,
        binding_conditions: d.binding.as_ref().and_then(|b| list(&b.conditions)),
        binding_failure_conditions: d.binding.as_ref().and_then(|b| list(&b.failure_conditions)),
        binds_to_node: d.binding.as_ref().and_then(|b| b.binds_to_node.then_some(true)),
        ..Default::default()
    })
}

/// The API server's rules for a request range with a step (1.37's
/// `validateRequestPolicyRange`): one step above `min` fits the capacity,
/// and `default` and `max` are `min` plus whole steps. It refuses the whole
/// slice otherwise, so the device is left out here instead. `None` when the
/// range keeps them (or a value is too fine or too large to check exactly).
fn range_off_step(
    capacity: &str,
    default: Option<&Quantity>,
    range: &resource::CapacityRequestPolicyRange,
) -> Option<String> {
    let step_q = range.step.as_ref()?;
    let (value, min, step) = (milli(capacity)?, milli(&range.min.0)?, milli(&step_q.0)?);
    if step <= 0 {
        return Some(format!("validRange.step {} must be greater than zero", step_q.0));
    }
    if min + step > value {
        return Some(format!(
            "validRange.min {} plus one step {} is more than the capacity {capacity}",
            range.min.0, step_q.0
        ));
    }
    for (field, q) in [
        ("requestPolicy.default", default),
        ("validRange.max", range.max.as_ref()),
    ] {
        if let Some(q) = q
            && milli(&q.0).is_some_and(|v| (v - min) % step != 0)
        {
            return Some(format!(
                "{field} {} is not validRange.min {} plus whole steps of {}",
                q.0, range.min.0, step_q.0
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
