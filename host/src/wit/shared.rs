//! What every version's bindings share: the conversions of records whose
//! shape did not change between `dra:driver` versions, and the host traits of
//! the capabilities' common functions, written once as macros and expanded
//! in each version's module (`convert.rs`, `imports.rs`), where the names
//! `types`, `log`, `nvml`, `net` are that version's generated modules. A
//! record that changes in a new version moves out of here into each
//! version's `convert.rs`.

/// A list converted element by element.
pub(crate) fn vec<A, B: From<A>>(v: Vec<A>) -> Vec<B> {
    v.into_iter().map(B::from).collect()
}

/// `From` conversions between the host's types and a version's records that
/// are the same in every version. Expects in scope: `types`, `log`, `nvml`,
/// `net` (the version's generated modules), `model`, `ClaimRef`, `Level`,
/// `host_net`, `host_nvml` and `vec`.
macro_rules! common_conversions {
    () => {
        // ---- Claims (host → guest) ----------------------------------------------

        impl From<&ClaimRef> for types::ClaimRef {
            fn from(c: &ClaimRef) -> Self {
                Self {
                    namespace: c.namespace.clone(),
                    name: c.name.clone(),
                    uid: c.uid.clone(),
                }
            }
        }

        impl From<ClaimRef> for types::ClaimRef {
            fn from(c: ClaimRef) -> Self {
                Self {
                    namespace: c.namespace,
                    name: c.name,
                    uid: c.uid,
                }
            }
        }

        impl From<types::ClaimRef> for ClaimRef {
            fn from(c: types::ClaimRef) -> Self {
                Self {
                    namespace: c.namespace,
                    name: c.name,
                    uid: c.uid,
                }
            }
        }

        impl From<model::ConfigSource> for types::ConfigSource {
            fn from(s: model::ConfigSource) -> Self {
                match s {
                    model::ConfigSource::DeviceClass => Self::DeviceClass,
                    model::ConfigSource::ResourceClaim => Self::ResourceClaim,
                }
            }
        }

        impl From<model::OpaqueConfig> for types::OpaqueConfig {
            fn from(c: model::OpaqueConfig) -> Self {
                Self {
                    source: c.source.into(),
                    requests: c.requests,
                    parameters: c.parameters,
                }
            }
        }

        impl From<model::AllocatedDevice> for types::AllocatedDevice {
            fn from(d: model::AllocatedDevice) -> Self {
                Self {
                    request: d.request,
                    pool: d.pool,
                    device: d.device,
                    share_id: d.share_id,
                    consumed_capacity: d.consumed_capacity,
                    admin_access: d.admin_access,
                }
            }
        }

        impl From<model::Claim> for types::Claim {
            fn from(c: model::Claim) -> Self {
                Self {
                    ref_: c.reference.into(),
                    devices: vec(c.devices),
                    configs: vec(c.configs),
                }
            }
        }

        impl From<&model::InitContext> for types::InitContext {
            fn from(c: &model::InitContext) -> Self {
                Self {
                    driver_name: c.driver_name.clone(),
                    node_name: c.node_name.clone(),
                    config: c.config.clone(),
                }
            }
        }

        // ---- Events (host → guest) ----------------------------------------------

        impl From<model::GpuEventKind> for types::GpuEventKind {
            fn from(k: model::GpuEventKind) -> Self {
                match k {
                    model::GpuEventKind::XidCriticalError => Self::XidCriticalError,
                    model::GpuEventKind::DoubleBitEccError => Self::DoubleBitEccError,
                    model::GpuEventKind::SingleBitEccError => Self::SingleBitEccError,
                    model::GpuEventKind::PstateChange => Self::PstateChange,
                    model::GpuEventKind::ClockChange => Self::ClockChange,
                    model::GpuEventKind::PowerSourceChange => Self::PowerSourceChange,
                }
            }
        }

        impl From<types::GpuEventKind> for model::GpuEventKind {
            fn from(k: types::GpuEventKind) -> Self {
                match k {
                    types::GpuEventKind::XidCriticalError => Self::XidCriticalError,
                    types::GpuEventKind::DoubleBitEccError => Self::DoubleBitEccError,
                    types::GpuEventKind::SingleBitEccError => Self::SingleBitEccError,
                    types::GpuEventKind::PstateChange => Self::PstateChange,
                    types::GpuEventKind::ClockChange => Self::ClockChange,
                    types::GpuEventKind::PowerSourceChange => Self::PowerSourceChange,
                }
            }
        }

        impl From<model::Event> for types::Event {
            fn from(e: model::Event) -> Self {
                match e {
                    model::Event::Gpu(g) => Self::Gpu(types::GpuEvent {
                        uuid: g.uuid,
                        kind: g.kind.into(),
                        data: g.data,
                    }),
                    model::Event::Link(l) => Self::Link(types::LinkEvent {
                        name: l.name,
                        index: l.index,
                        up: l.up,
                    }),
                }
            }
        }

        // ---- A guest's identity, errors and health (guest → host) ---------------

        impl From<types::DriverInfo> for model::DriverInfo {
            fn from(i: types::DriverInfo) -> Self {
                Self {
                    name: i.name,
                    version: i.version,
                }
            }
        }

        impl From<types::ErrorKind> for model::DriverErrorKind {
            fn from(kind: types::ErrorKind) -> Self {
                match kind {
                    types::ErrorKind::InvalidConfig => Self::InvalidConfig,
                    types::ErrorKind::InvalidClaim => Self::InvalidClaim,
                    types::ErrorKind::Unavailable => Self::Unavailable,
                    types::ErrorKind::Busy => Self::Busy,
                    types::ErrorKind::Unsupported => Self::Unsupported,
                    types::ErrorKind::Internal => Self::Internal,
                }
            }
        }

        impl From<types::DriverError> for model::DriverError {
            fn from(e: types::DriverError) -> Self {
                Self {
                    kind: e.kind.into(),
                    message: e.message,
                }
            }
        }

        impl From<types::DeviceHealth> for model::DeviceHealth {
            fn from(h: types::DeviceHealth) -> Self {
                Self {
                    pool: h.pool,
                    device: h.device,
                    status: match h.status {
                        types::HealthStatus::Healthy => model::HealthStatus::Healthy,
                        types::HealthStatus::Unhealthy => model::HealthStatus::Unhealthy,
                        types::HealthStatus::Unknown => model::HealthStatus::Unknown,
                    },
                    message: h.message,
                }
            }
        }

        // ---- Inventory (guest → host) -------------------------------------------

        impl From<types::AttributeValue> for model::AttributeValue {
            fn from(v: types::AttributeValue) -> Self {
                match v {
                    types::AttributeValue::Boolean(b) => Self::Boolean(b),
                    types::AttributeValue::Integer(n) => Self::Integer(n),
                    types::AttributeValue::Text(s) => Self::Text(s),
                    types::AttributeValue::Version(s) => Self::Version(s),
                }
            }
        }

        impl From<types::Attribute> for model::Attribute {
            fn from(a: types::Attribute) -> Self {
                Self {
                    name: a.name,
                    value: a.value.into(),
                }
            }
        }

        impl From<types::CapacityRange> for model::CapacityRange {
            fn from(r: types::CapacityRange) -> Self {
                Self {
                    min: r.min,
                    max: r.max,
                    step: r.step,
                }
            }
        }

        impl From<types::RequestPolicy> for model::RequestPolicy {
            fn from(p: types::RequestPolicy) -> Self {
                Self {
                    default: p.default,
                    valid_values: p.valid_values,
                    valid_range: p.valid_range.map(Into::into),
                }
            }
        }

        impl From<types::Capacity> for model::Capacity {
            fn from(c: types::Capacity) -> Self {
                Self {
                    name: c.name,
                    value: c.value,
                    request_policy: c.request_policy.map(Into::into),
                }
            }
        }

        impl From<types::Taint> for model::Taint {
            fn from(t: types::Taint) -> Self {
                Self {
                    key: t.key,
                    value: t.value,
                    effect: match t.effect {
                        types::TaintEffect::NoSchedule => model::TaintEffect::NoSchedule,
                        types::TaintEffect::NoExecute => model::TaintEffect::NoExecute,
                        types::TaintEffect::None => model::TaintEffect::None,
                    },
                }
            }
        }

        // ---- What a guest prepared (guest → host) -------------------------------

        impl From<types::EnvVar> for model::EnvVar {
            fn from(e: types::EnvVar) -> Self {
                Self {
                    name: e.name,
                    value: e.value,
                }
            }
        }

        impl From<types::DeviceNode> for model::DeviceNode {
            fn from(n: types::DeviceNode) -> Self {
                Self {
                    path: n.path,
                    host_path: n.host_path,
                    node_type: n.node_type,
                    major: n.major,
                    minor: n.minor,
                    file_mode: n.file_mode,
                    permissions: n.permissions,
                    uid: n.uid,
                    gid: n.gid,
                }
            }
        }

        impl From<types::Mount> for model::Mount {
            fn from(m: types::Mount) -> Self {
                Self {
                    host_path: m.host_path,
                    container_path: m.container_path,
                    mount_type: m.mount_type,
                    options: m.options,
                }
            }
        }

        impl From<types::HookStage> for model::HookStage {
            fn from(s: types::HookStage) -> Self {
                match s {
                    types::HookStage::Prestart => Self::Prestart,
                    types::HookStage::CreateRuntime => Self::CreateRuntime,
                    types::HookStage::CreateContainer => Self::CreateContainer,
                    types::HookStage::StartContainer => Self::StartContainer,
                    types::HookStage::Poststart => Self::Poststart,
                    types::HookStage::Poststop => Self::Poststop,
                }
            }
        }

        impl From<model::HookStage> for types::HookStage {
            fn from(s: model::HookStage) -> Self {
                match s {
                    model::HookStage::Prestart => Self::Prestart,
                    model::HookStage::CreateRuntime => Self::CreateRuntime,
                    model::HookStage::CreateContainer => Self::CreateContainer,
                    model::HookStage::StartContainer => Self::StartContainer,
                    model::HookStage::Poststart => Self::Poststart,
                    model::HookStage::Poststop => Self::Poststop,
                }
            }
        }

        impl From<types::Hook> for model::Hook {
            fn from(h: types::Hook) -> Self {
                Self {
                    stage: h.stage.into(),
                    path: h.path,
                    args: h.args,
                    env: h.env,
                    timeout_seconds: h.timeout_seconds,
                }
            }
        }

        impl From<model::Hook> for types::Hook {
            fn from(h: model::Hook) -> Self {
                Self {
                    stage: h.stage.into(),
                    path: h.path,
                    args: h.args,
                    env: h.env,
                    timeout_seconds: h.timeout_seconds,
                }
            }
        }

        impl From<types::NetDevice> for model::NetDevice {
            fn from(d: types::NetDevice) -> Self {
                Self {
                    host_interface_name: d.host_interface_name,
                    name: d.name,
                }
            }
        }

        impl From<types::ContainerEdits> for model::ContainerEdits {
            fn from(e: types::ContainerEdits) -> Self {
                Self {
                    env: vec(e.env),
                    device_nodes: vec(e.device_nodes),
                    mounts: vec(e.mounts),
                    hooks: vec(e.hooks),
                    net_devices: vec(e.net_devices),
                }
            }
        }

        impl From<types::Condition> for model::Condition {
            fn from(c: types::Condition) -> Self {
                Self {
                    condition_type: c.condition_type,
                    status: match c.status {
                        types::ConditionStatus::True => model::ConditionStatus::True,
                        types::ConditionStatus::False => model::ConditionStatus::False,
                        types::ConditionStatus::Unknown => model::ConditionStatus::Unknown,
                    },
                    reason: c.reason,
                    message: c.message,
                }
            }
        }

        impl From<types::NetworkData> for model::NetworkData {
            fn from(n: types::NetworkData) -> Self {
                Self {
                    interface_name: n.interface_name,
                    ips: n.ips,
                    hardware_address: n.hardware_address,
                }
            }
        }

        impl From<types::DeviceStatus> for model::DeviceStatus {
            fn from(s: types::DeviceStatus) -> Self {
                Self {
                    conditions: vec(s.conditions),
                    data: s.data,
                    network_data: s.network_data.map(Into::into),
                }
            }
        }

        impl From<types::PreparedClaim> for model::PreparedClaim {
            fn from(c: types::PreparedClaim) -> Self {
                Self {
                    devices: vec(c.devices),
                    state: c.state,
                }
            }
        }

        // ---- log ----------------------------------------------------------------

        impl From<log::Level> for Level {
            fn from(l: log::Level) -> Self {
                match l {
                    log::Level::Trace => Self::Trace,
                    log::Level::Debug => Self::Debug,
                    log::Level::Info => Self::Info,
                    log::Level::Warn => Self::Warn,
                    log::Level::Error => Self::Error,
                }
            }
        }

        // ---- nvml (host → guest) ------------------------------------------------

        impl From<host_nvml::DriverFile> for nvml::DriverFile {
            fn from(f: host_nvml::DriverFile) -> Self {
                Self {
                    kind: match f.kind {
                        host_nvml::DriverFileKind::Library => nvml::DriverFileKind::Library,
                        host_nvml::DriverFileKind::Binary => nvml::DriverFileKind::Binary,
                        host_nvml::DriverFileKind::Firmware => nvml::DriverFileKind::Firmware,
                    },
                    host_path: f.host_path,
                    container_path: f.container_path,
                }
            }
        }

        // ---- net ----------------------------------------------------------------

        impl From<host_net::NetError> for net::NetError {
            fn from(e: host_net::NetError) -> Self {
                Self { message: e.message }
            }
        }

        impl From<host_net::Link> for net::Link {
            fn from(l: host_net::Link) -> Self {
                Self {
                    name: l.name,
                    index: l.index,
                    kind: l.kind,
                    mtu: l.mtu,
                    hardware_address: l.hardware_address,
                    up: l.up,
                    addresses: l.addresses,
                    speed_mbps: l.speed_mbps,
                    pci_address: l.pci_address,
                }
            }
        }

        impl From<net::Macvlan> for host_net::Macvlan {
            fn from(m: net::Macvlan) -> Self {
                Self {
                    parent: m.parent,
                    claim_uid: m.claim_uid,
                    key: m.key,
                    mode: match m.mode {
                        net::MacvlanMode::Bridge => host_net::MacvlanMode::Bridge,
                        net::MacvlanMode::Private => host_net::MacvlanMode::Private,
                        net::MacvlanMode::Vepa => host_net::MacvlanMode::Vepa,
                        net::MacvlanMode::Passthru => host_net::MacvlanMode::Passthru,
                    },
                    mtu: m.mtu,
                    hardware_address: m.hardware_address,
                }
            }
        }

        impl From<net::AddressRequest> for host_net::AddressRequest {
            fn from(r: net::AddressRequest) -> Self {
                Self {
                    parent: r.parent,
                    pool: host_net::IpPool {
                        subnet: r.pool.subnet,
                        range_start: r.pool.range_start,
                        range_end: r.pool.range_end,
                        gateway: r.pool.gateway,
                    },
                    claim_uid: r.claim_uid,
                    share_id: r.share_id,
                    static_address: r.static_address,
                }
            }
        }

        impl From<net::Attachment> for host_net::Attachment {
            fn from(a: net::Attachment) -> Self {
                Self {
                    link: a.link,
                    claim_uid: a.claim_uid,
                    pod_interface: a.pod_interface,
                    addresses: a.addresses,
                    routes: a
                        .routes
                        .into_iter()
                        .map(|r| host_net::Route {
                            destination: r.destination,
                            gateway: r.gateway,
                        })
                        .collect(),
                }
            }
        }
    };
}

pub(crate) use common_conversions;

/// The host traits of `log` and `net` (the same in every version) for
/// [`crate::imports::ImportsView`]. Expects in scope: `log`, `net`, `types`
/// (the version's generated modules) and `answer`.
macro_rules! common_host_traits {
    () => {
        impl log::Host for ImportsView<'_> {
            fn log(&mut self, level: log::Level, message: String) {
                self.log.emit(level.into(), message);
            }
        }

        impl net::Host for ImportsView<'_> {
            async fn list_links(&mut self) -> wasmtime::Result<Result<Vec<net::Link>, net::NetError>> {
                Ok(self
                    .net_list_links()
                    .await?
                    .map(|links| links.into_iter().map(Into::into).collect())
                    .map_err(Into::into))
            }

            async fn create_macvlan(
                &mut self,
                spec: net::Macvlan,
            ) -> wasmtime::Result<Result<net::Link, net::NetError>> {
                answer(self.net_create_macvlan(spec.into()).await)
            }

            async fn delete_link(&mut self, name: String) -> wasmtime::Result<Result<bool, net::NetError>> {
                answer(self.net_delete_link(name).await)
            }

            async fn allocate_address(
                &mut self,
                request: net::AddressRequest,
            ) -> wasmtime::Result<Result<String, net::NetError>> {
                answer(self.net_allocate_address(request.into()).await)
            }

            async fn release_claim(&mut self, claim_uid: String) -> wasmtime::Result<Result<u32, net::NetError>> {
                answer(self.net_release_claim(claim_uid).await)
            }

            async fn prepare_attachment(
                &mut self,
                attachment: net::Attachment,
            ) -> wasmtime::Result<Result<types::Hook, net::NetError>> {
                answer(self.net_prepare_attachment(attachment.into()).await)
            }

            async fn configure_link(
                &mut self,
                name: String,
                addresses: Vec<String>,
            ) -> wasmtime::Result<Result<(), net::NetError>> {
                answer(self.net_configure_link(name, addresses).await)
            }

            async fn set_egress_rate(
                &mut self,
                name: String,
                bits_per_second: u64,
            ) -> wasmtime::Result<Result<bool, net::NetError>> {
                answer(self.net_set_egress_rate(name, bits_per_second).await)
            }
        }
    };
}

/// The `nvml` functions every version has, as methods of the version's
/// `nvml::Host` impl (which adds what is new in it). Expects `nvml`,
/// `types` and `answer` in scope.
macro_rules! common_nvml_methods {
    () => {
        async fn driver_version(&mut self) -> wasmtime::Result<Result<String, nvml::NvmlError>> {
            answer(self.nvml_driver_version().await)
        }

        async fn cuda_driver_version(&mut self) -> wasmtime::Result<Result<(u32, u32), nvml::NvmlError>> {
            answer(self.nvml_cuda_driver_version().await)
        }

        async fn device_count(&mut self) -> wasmtime::Result<Result<u32, nvml::NvmlError>> {
            answer(self.nvml_device_count().await)
        }

        async fn device_info(&mut self, index: u32) -> wasmtime::Result<Result<nvml::GpuInfo, nvml::NvmlError>> {
            answer(self.nvml_device_info(index).await)
        }

        async fn driver_files(&mut self) -> wasmtime::Result<Result<Vec<nvml::DriverFile>, nvml::NvmlError>> {
            Ok(self
                .nvml_driver_files()
                .await?
                .map(|files| files.into_iter().map(Into::into).collect())
                .map_err(Into::into))
        }

        async fn subscribe(
            &mut self,
            uuids: Vec<String>,
            kinds: Vec<types::GpuEventKind>,
        ) -> wasmtime::Result<Result<(), nvml::NvmlError>> {
            let kinds = kinds.into_iter().map(Into::into).collect();
            answer(self.nvml_subscribe(uuids, kinds).await)
        }
    };
}

/// A version's `add_log` and `add_granted`: link its `log`, and the
/// capabilities the driver's configuration grants, against the imports'
/// narrow view of the store. Expects `log`, `nvml` and `net` in scope.
macro_rules! linking {
    () => {
        pub(crate) fn add_log<T: Send + 'static>(
            linker: &mut wasmtime::component::Linker<T>,
            view: fn(&mut T) -> crate::imports::ImportsView<'_>,
        ) -> wasmtime::Result<()> {
            log::add_to_linker::<T, crate::wit::shared::Imported>(linker, view)
        }

        pub(crate) fn add_granted<T: Send + 'static>(
            linker: &mut wasmtime::component::Linker<T>,
            imports: &crate::imports::Imports,
            view: fn(&mut T) -> crate::imports::ImportsView<'_>,
        ) -> wasmtime::Result<()> {
            if imports.grants(crate::imports::Grant::Nvml) {
                nvml::add_to_linker::<T, crate::wit::shared::Imported>(linker, view)?;
            }
            if imports.grants(crate::imports::Grant::Net) {
                net::add_to_linker::<T, crate::wit::shared::Imported>(linker, view)?;
            }
            Ok(())
        }
    };
}

pub(crate) use {common_host_traits, common_nvml_methods, linking};

/// A host call's outcome in a version's records.
pub(crate) fn answer<T, U: From<T>, E, F: From<E>>(
    r: wasmtime::Result<Result<T, E>>,
) -> wasmtime::Result<Result<U, F>> {
    Ok(r?.map(U::from).map_err(F::from))
}

/// What the linked host traits are implemented for, in every version: the
/// imports' view of the store.
pub(crate) struct Imported;

impl wasmtime::component::HasData for Imported {
    type Data<'a> = crate::imports::ImportsView<'a>;
}
