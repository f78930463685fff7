//! `dra:driver/nvml`: NVIDIA Management Library access for guests granted
//! `nvml`.
//!
//! One [`Nvml`] per process, over one [`Backend`]:
//! - [`real`]: `libnvidia-ml.so.1` loaded at run time through nvml-wrapper.
//!   On a node without the driver the host still starts; every call answers
//!   `not-available` and a GPU guest's `init` fails with that reason.
//! - [`simulated`]: GPUs described in a JSON file, events injected through a
//!   Unix socket. For tests and the demo, only when the config says so.
//!
//! Events are pushed, never polled: the backend delivers each event to the
//! [`EventRouter`], which forwards it to every driver subscribed to that GPU
//! and kind; the driver hands it to its guest's `on-event`.

pub mod real;
pub mod simulated;

use crate::imports::ImportsView;
pub mod types;

use crate::model::{Event, GpuEvent, GpuEventKind};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use types::{DriverFile, GpuInfo, MigDevice, MigPlacement, MigProfile, NvmlError};

/// NVML access for drivers granted `nvml`: the host config's `[nvml]`
/// section, owned by the capability that uses it (`config` names it).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NvmlConfig {
    /// Root of the NVIDIA driver's user-space files on this node (`/` for a
    /// driver installed on the host, `/run/nvidia/driver` under the GPU operator).
    #[serde(default = "default_driver_root")]
    pub driver_root: PathBuf,
    /// Use simulated GPUs instead of the real NVML (tests and demos only).
    #[serde(default)]
    pub simulated: Option<SimulatedNvmlConfig>,
}

impl Default for NvmlConfig {
    fn default() -> Self {
        Self {
            driver_root: default_driver_root(),
            simulated: None,
        }
    }
}

fn default_driver_root() -> PathBuf {
    PathBuf::from("/")
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimulatedNvmlConfig {
    /// JSON file describing the GPUs.
    pub gpus: PathBuf,
    /// Unix socket that accepts injected events as JSON lines.
    pub events_socket: PathBuf,
}

/// Events waiting for a driver's guest beyond this are dropped (and counted):
/// an event storm must not grow the host's memory without bound.
pub const EVENT_QUEUE: usize = 1024;

/// What an NVML implementation provides.
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn driver_version(&self) -> Result<String, NvmlError>;
    fn cuda_driver_version(&self) -> Result<(u32, u32), NvmlError>;
    fn device_count(&self) -> Result<u32, NvmlError>;
    fn device_info(&self, index: u32) -> Result<GpuInfo, NvmlError>;
    fn driver_files(&self) -> Result<Vec<DriverFile>, NvmlError>;
    /// Start delivering events to `router` (called once, at the first
    /// subscription). Fails for kinds this backend cannot watch.
    fn start_events(&self, router: Arc<EventRouter>, kinds: &[GpuEventKind]) -> Result<(), NvmlError>;
    /// The kinds of event this backend can deliver.
    fn event_kinds(&self) -> &'static [GpuEventKind];
    /// The MIG profiles of a GPU with MIG mode on (`NotSupported` otherwise).
    fn mig_profiles(&self, gpu: u32) -> Result<Vec<MigProfile>, NvmlError>;
    /// The MIG devices that exist on a GPU now.
    fn mig_devices(&self, gpu: u32) -> Result<Vec<MigDevice>, NvmlError>;
    /// Create a GPU instance at a placement and one compute instance spanning it.
    fn create_mig_device(&self, gpu: u32, profile_id: u32, placement: MigPlacement) -> Result<MigDevice, NvmlError>;
    /// Destroy a GPU instance and its compute instances.
    fn destroy_mig_device(&self, gpu: u32, gpu_instance_id: u32) -> Result<(), NvmlError>;
}

/// One driver's subscription.
#[derive(Debug)]
struct Subscription {
    uuids: Vec<String>,
    kinds: Vec<GpuEventKind>,
    sink: mpsc::Sender<Event>,
}

/// Routes backend events to the drivers that subscribed to them.
#[derive(Debug, Default)]
pub struct EventRouter {
    subscriptions: Mutex<HashMap<String, Subscription>>,
    dropped: std::sync::atomic::AtomicU64,
}

impl EventRouter {
    /// Deliver one event; returns how many drivers received it.
    pub fn deliver(&self, event: GpuEvent) -> usize {
        let subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        for (driver, sub) in subs.iter() {
            let wants_gpu = event.uuid.is_empty() || sub.uuids.contains(&event.uuid);
            if !wants_gpu || !sub.kinds.contains(&event.kind) {
                continue;
            }
            match sub.sink.try_send(Event::Gpu(event.clone())) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(driver = %driver, uuid = %event.uuid, "GPU event dropped: the driver's event queue is full");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// Events dropped because a driver's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The process-wide NVML access.
#[derive(Debug)]
pub struct Nvml {
    backend: Box<dyn Backend>,
    router: Arc<EventRouter>,
    events_started: Mutex<bool>,
}

impl Nvml {
    pub fn new(backend: Box<dyn Backend>) -> Arc<Self> {
        Arc::new(Self {
            backend,
            router: Arc::new(EventRouter::default()),
            events_started: Mutex::new(false),
        })
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn router(&self) -> &Arc<EventRouter> {
        &self.router
    }

    fn subscribe(
        &self,
        driver: &str,
        uuids: Vec<String>,
        kinds: Vec<GpuEventKind>,
        sink: mpsc::Sender<Event>,
    ) -> Result<(), NvmlError> {
        let supported = self.backend.event_kinds();
        if kinds.iter().any(|k| !supported.contains(k)) {
            return Err(NvmlError::NotSupported);
        }
        {
            let mut started = self.events_started.lock().unwrap_or_else(|p| p.into_inner());
            if !*started {
                self.backend.start_events(Arc::clone(&self.router), supported)?;
                *started = true;
            }
        }
        let mut subs = self.router.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        let changed = subs.get(driver).is_none_or(|s| s.uuids != uuids || s.kinds != kinds);
        if changed {
            tracing::info!(driver, gpus = uuids.len(), kinds = ?kinds, "GPU event subscription");
        }
        subs.insert(driver.to_owned(), Subscription { uuids, kinds, sink });
        Ok(())
    }
}

/// A driver's grant of `nvml`: the process-wide access plus where its events go.
#[derive(Clone, Debug)]
pub struct NvmlGrant {
    pub nvml: Arc<Nvml>,
    pub driver: Arc<str>,
    pub events: mpsc::Sender<Event>,
}

/// An NVML call's outcome for the guest: a trap (its deadline passed), or
/// NVML's answer.
pub type NvmlAnswer<T> = wasmtime::Result<Result<T, NvmlError>>;

fn grant(state: &ImportsView<'_>) -> Result<NvmlGrant, NvmlError> {
    // Linking only adds this interface for guests granted `nvml`, so a
    // missing grant here means a host bug, not a guest's doing.
    state.imports.nvml.clone().ok_or(NvmlError::NotAvailable)
}

/// Run one NVML query for the guest on the blocking pool
/// ([`crate::imports::blocking`]): the real library can take milliseconds,
/// or much longer on a GPU that fell off the bus.
fn run<T, F>(state: &ImportsView<'_>, op: F) -> impl Future<Output = NvmlAnswer<T>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(&NvmlGrant) -> Result<T, NvmlError> + Send + 'static,
{
    let grant = grant(state);
    let deadline = state.deadline;
    async move {
        let grant = match grant {
            Ok(g) => g,
            Err(e) => return Ok(Err(e)),
        };
        Ok(crate::imports::blocking(deadline, move || op(&grant))
            .await?
            .unwrap_or(Err(NvmlError::Failed)))
    }
}

/// What a guest's `nvml` calls do, with the host's types (the WIT adapters
/// are each version's `wit::v0_*::imports`).
impl ImportsView<'_> {
    pub fn nvml_driver_version(&self) -> impl Future<Output = NvmlAnswer<String>> + Send + 'static {
        run(self, |g| g.nvml.backend.driver_version())
    }

    pub fn nvml_cuda_driver_version(&self) -> impl Future<Output = NvmlAnswer<(u32, u32)>> + Send + 'static {
        run(self, |g| g.nvml.backend.cuda_driver_version())
    }

    pub fn nvml_device_count(&self) -> impl Future<Output = NvmlAnswer<u32>> + Send + 'static {
        run(self, |g| g.nvml.backend.device_count())
    }

    pub fn nvml_device_info(&self, index: u32) -> impl Future<Output = NvmlAnswer<GpuInfo>> + Send + 'static {
        run(self, move |g| g.nvml.backend.device_info(index))
    }

    pub fn nvml_driver_files(&self) -> impl Future<Output = NvmlAnswer<Vec<DriverFile>>> + Send + 'static {
        run(self, |g| g.nvml.backend.driver_files())
    }

    pub async fn nvml_subscribe(&self, uuids: Vec<String>, kinds: Vec<GpuEventKind>) -> NvmlAnswer<()> {
        const MAX_GPUS: usize = 1024;
        if uuids.len() > MAX_GPUS || kinds.len() > 16 {
            return Ok(Err(NvmlError::Failed));
        }
        run(self, move |g| {
            g.nvml.subscribe(&g.driver, uuids, kinds, g.events.clone())
        })
        .await
    }

    pub fn nvml_mig_profiles(&self, gpu: u32) -> impl Future<Output = NvmlAnswer<Vec<MigProfile>>> + Send + 'static {
        run(self, move |g| g.nvml.backend.mig_profiles(gpu))
    }

    pub fn nvml_mig_devices(&self, gpu: u32) -> impl Future<Output = NvmlAnswer<Vec<MigDevice>>> + Send + 'static {
        run(self, move |g| g.nvml.backend.mig_devices(gpu))
    }

    pub fn nvml_create_mig_device(
        &self,
        gpu: u32,
        profile_id: u32,
        placement: MigPlacement,
    ) -> impl Future<Output = NvmlAnswer<MigDevice>> + Send + 'static {
        run(self, move |g| {
            g.nvml.backend.create_mig_device(gpu, profile_id, placement)
        })
    }

    pub fn nvml_destroy_mig_device(
        &self,
        gpu: u32,
        gpu_instance_id: u32,
    ) -> impl Future<Output = NvmlAnswer<()>> + Send + 'static {
        run(self, move |g| g.nvml.backend.destroy_mig_device(gpu, gpu_instance_id))
    }
}
