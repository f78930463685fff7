//! The composition root: how a driver is assembled from the host config.
//!
//! Every command that runs a guest goes through here, so that what a vendor
//! checks locally is what the node serves:
//!
//! - `run` ([`run`]) assembles each configured driver with
//!   [`Node::assemble`] and serves it to the kubelet ([`Node::start_driver`]);
//! - `guest run` assembles one driver the same way with its state in a local
//!   directory and drives it from files ([`EventDelivery::Local`]);
//! - `guest validate` loads each guest with [`GuestLoader`], the step of the
//!   assembly that links and self-tests a guest, without touching state.
//!
//! [`GuestLoader`] holds what loading a guest needs (engine, capabilities,
//! limits); [`Node`] adds what serving claims needs (claim source, API
//! client, Events, boot ID, paths).

mod error;
mod serve;

pub use error::{BoxError, Chain, StartError};
pub use serve::{ServedDriver, boot_id, run};

use crate::config::{ClaimsConfig, Config, DriverConfig, HotSwapConfig};
use crate::driver::{Driver, DriverParts};
use crate::guest::{CompileCache, ErrorBudget, Guest, GuestSpec, Limits, LoadReport, Runtime};
use crate::health::Health;
use crate::imports::{Capabilities, Grant, Imports, net, nvml};
use crate::kube::client::ApiClient;
use crate::kube::events::EventRecorder;
use crate::kube::{ApiClaims, ClaimSource, FileClaims};
use crate::kubelet::PluginPaths;
use crate::metrics::Metrics;
use crate::model;
use crate::state::cdi::CdiWriter;
use crate::state::checkpoint::Checkpoint;
use crate::state::metadata::MetadataWriter;
use crate::state::serialize::SerializeLock;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What loading a guest needs, shared by every driver of the process: the
/// engine, the host capabilities grants draw on, and the runtime limits.
pub struct GuestLoader {
    node: String,
    metrics: Arc<Metrics>,
    runtime: Arc<Runtime>,
    caps: Capabilities,
    limits: Limits,
}

impl GuestLoader {
    /// The engine (with the config's compile cache) and the capabilities
    /// some driver of `config` is granted.
    pub fn new(config: &Config, node: &str, metrics: Arc<Metrics>) -> Result<Self, StartError> {
        let cache = CompileCache::new(config.cache_dir.clone()).map_err(|source| StartError::CompileCache {
            dir: config.cache_dir.clone(),
            source,
        })?;
        let runtime = Runtime::new(cache, config.runtime.tick()).map_err(|e| StartError::Engine(e.into()))?;
        Ok(Self {
            node: node.to_owned(),
            metrics,
            runtime,
            caps: capabilities(config)?,
            limits: limits(config),
        })
    }

    /// The node name guests are initialised with.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Load `d`'s guest with its grants, limits and config, and run its
    /// self-test (init + inventory). Events the guest subscribes to go to
    /// `events`. The spec returned is what hot swaps load new files with.
    pub async fn load(
        &self,
        d: &DriverConfig,
        events: &mpsc::Sender<model::Event>,
    ) -> Result<(Guest, LoadReport, GuestSpec), StartError> {
        let imports = Imports::new(&d.grants, &d.name, &self.caps, events).map_err(|source| StartError::Grant {
            driver: d.name.clone(),
            source,
        })?;
        let spec = GuestSpec {
            path: d.guest.clone(),
            ctx: model::InitContext {
                driver_name: d.name.clone(),
                node_name: self.node.clone(),
                config: d.guest_config_json(),
            },
            limits: self.limits.clone(),
            imports,
        };
        let (guest, report) = Guest::load(&self.runtime, &self.metrics, &spec)
            .await
            .map_err(|source| StartError::LoadGuest {
                driver: d.name.clone(),
                source: Box::new(source),
            })?;
        Ok((guest, report, spec))
    }
}

/// What every driver of this process shares.
pub struct Node {
    loader: GuestLoader,
    claims: Arc<dyn ClaimSource>,
    /// The API-server client, when claims come from the API server (then
    /// ResourceSlices are published too).
    api: Option<ApiClient>,
    node_uid: Option<String>,
    /// Kubernetes Events (when an API server is configured), one sender for all drivers.
    events: Option<EventRecorder>,
    /// This boot's ID, recorded with prepared claims to notice reboots.
    boot_id: Option<String>,
    kubelet_root: PathBuf,
    cdi_dir: PathBuf,
    hot_swap: HotSwapConfig,
    rolling_update_uid: Option<String>,
}

/// Where a driver's events (GPU events, parent link changes) come from, and
/// who hands them to its guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventDelivery {
    /// `run`: the kernel's link monitor feeds the driver, and a task of its
    /// own hands every event to the guest's `on-event`.
    Served,
    /// `guest run`: link events are given to the host's router by the
    /// caller, which takes the receiver ([`AssembledDriver::events`]) and
    /// hands them to [`Driver::handle_event`] itself.
    Local,
}

/// A driver assembled around its loaded guest, its state opened and
/// reconciled, before anything serves it.
pub struct AssembledDriver {
    pub driver: Arc<Driver>,
    /// What the guest was loaded with; hot swaps load new files with it.
    pub spec: GuestSpec,
    /// The driver's network state, when it is granted `net`.
    pub net: Option<Arc<net::NetDriver>>,
    /// With [`EventDelivery::Local`], the events for the guest's `on-event`.
    pub events: Option<mpsc::Receiver<model::Event>>,
}

impl Node {
    /// The node of `config`: claims from the API server (with Events and
    /// ResourceSlices) or from a file, as the config says.
    pub async fn connect(
        config: &Config,
        node: &str,
        metrics: Arc<Metrics>,
        rolling_update_uid: Option<String>,
        boot_id: Option<String>,
    ) -> Result<Self, StartError> {
        let (claims, api): (Arc<dyn ClaimSource>, Option<ApiClient>) = match &config.claims {
            ClaimsConfig::File { path } => {
                tracing::warn!(path = %path.display(), "reading ResourceClaims from a local file (demo/test mode); no ResourceSlices are published");
                (Arc::new(FileClaims::new(path)), None)
            }
            ClaimsConfig::ApiServer => {
                let api = ApiClient::new(&config.kubernetes).await?;
                (Arc::new(ApiClaims::new(api.clone())), Some(api))
            }
        };
        Self::with_claims(config, node, metrics, claims, api, rolling_update_uid, boot_id)
    }

    /// What [`Node::connect`] makes, with the claim source given (`guest
    /// run` serves claims from files, with no API server).
    pub fn with_claims(
        config: &Config,
        node: &str,
        metrics: Arc<Metrics>,
        claims: Arc<dyn ClaimSource>,
        api: Option<ApiClient>,
        rolling_update_uid: Option<String>,
        boot_id: Option<String>,
    ) -> Result<Self, StartError> {
        let events = api.as_ref().map(|api| {
            EventRecorder::new(
                api.clone(),
                node,
                config.kubernetes.node_uid.clone(),
                Arc::clone(&metrics),
            )
        });
        Ok(Self {
            loader: GuestLoader::new(config, node, metrics)?,
            claims,
            api,
            node_uid: config.kubernetes.node_uid.clone(),
            events,
            boot_id,
            kubelet_root: config.kubelet_root_dir.clone(),
            cdi_dir: config.cdi_dir.clone(),
            hot_swap: config.hot_swap.clone(),
            rolling_update_uid,
        })
    }

    pub fn loader(&self) -> &GuestLoader {
        &self.loader
    }

    /// Where `driver`'s sockets and state live (named after the pod UID in
    /// rolling-update mode).
    pub fn paths(&self, driver: &str) -> PluginPaths {
        match &self.rolling_update_uid {
            Some(uid) => PluginPaths::rolling_update(&self.kubelet_root, driver, uid),
            None => PluginPaths::new(&self.kubelet_root, driver),
        }
    }

    /// Open `d`'s state under `paths` (checkpoint; network state reconciled
    /// with it), load its guest, assemble the driver, wire its events as
    /// `delivery` says, prepare again the claims prepared in an earlier
    /// boot and restore missing CDI specs. In rolling-update mode all of it
    /// happens under the lock shared with the other pod. What is left is
    /// serving it.
    pub async fn assemble(
        &self,
        d: &DriverConfig,
        paths: &PluginPaths,
        delivery: EventDelivery,
    ) -> Result<AssembledDriver, StartError> {
        // In rolling-update mode the other pod may be committing claims right
        // now: open the checkpoint (which clears unfinished writes) under the
        // shared lock.
        let serialize = match &self.rolling_update_uid {
            Some(_) => {
                crate::state::fsutil::ensure_dir(&paths.plugin_dir, 0o750).map_err(|source| StartError::CreateDir {
                    path: paths.plugin_dir.clone(),
                    source,
                })?;
                Some(SerializeLock::open(&paths.plugin_dir)?)
            }
            None => None,
        };
        let guard = match &serialize {
            Some(lock) => Some(lock.acquire().await?),
            None => None,
        };
        let checkpoint = Checkpoint::open(&paths.plugin_dir.join("claims"), &d.name)?;
        if guard.is_some()
            && let Err(e) = checkpoint.watch_for_changes()
        {
            // Correct without it, only slower: every call reads the directory.
            tracing::warn!(driver = %d.name, error = %e, "cannot watch the checkpoint directory for the other pod's changes (inotify); every claim operation reads it");
        }
        let net_driver = self.loader.caps.net.as_ref().and_then(|n| n.driver(&d.name)).cloned();
        if let Some(nd) = &net_driver {
            // Under the same lock as the checkpoint: links and addresses of
            // claims that never reached the checkpoint (a crash in between)
            // or that were unprepared by nobody are released now.
            let prepared = checkpoint.records().into_iter().map(|r| r.claim.uid).collect();
            let released = nd.reconcile(&prepared).map_err(|source| StartError::Reconcile {
                driver: d.name.clone(),
                source,
            })?;
            if !released.is_empty() {
                tracing::info!(driver = %d.name, claims = ?released, "released network resources of claims not in the checkpoint");
            }
        }
        let (events_tx, events_rx) = mpsc::channel(nvml::EVENT_QUEUE);
        let (driver, spec) = self
            .load_driver(d, paths, checkpoint, net_driver.as_ref(), serialize, &events_tx)
            .await?;
        let events = match delivery {
            EventDelivery::Served => {
                if let Some(net) = &self.loader.caps.net
                    && net_driver.is_some()
                {
                    net.watch(&d.name, events_tx.clone())
                        .map_err(|source| StartError::WatchLinks {
                            driver: d.name.clone(),
                            source,
                        })?;
                }
                tokio::spawn(Arc::clone(&driver).run_events(events_rx));
                None
            }
            EventDelivery::Local => {
                if let (Some(net), Some(nd)) = (&self.loader.caps.net, &net_driver) {
                    // Link events come from the caller instead of the
                    // kernel's link monitor; the router decides who gets
                    // them, as in `run`.
                    net.router().subscribe(&d.name, nd.parents.clone(), events_tx.clone());
                }
                Some(events_rx)
            }
        };
        // Before the kubelet can call: claims prepared in an earlier boot
        // describe device state that is gone. Reported inside.
        driver.prepare_after_reboot().await;
        let restored = driver.restore_cdi_specs().map_err(|source| StartError::Cdi {
            driver: d.name.clone(),
            source,
        })?;
        drop(guard);
        if restored > 0 {
            tracing::info!(driver = %d.name, restored, "restored CDI specs of prepared claims");
        }
        Ok(AssembledDriver {
            driver,
            spec,
            net: net_driver,
            events,
        })
    }

    /// Load `d`'s guest and assemble the driver (CDI writer, checkpoint,
    /// policy, health) around it.
    async fn load_driver(
        &self,
        d: &DriverConfig,
        paths: &PluginPaths,
        checkpoint: Checkpoint,
        net_driver: Option<&Arc<net::NetDriver>>,
        serialize: Option<SerializeLock>,
        events: &mpsc::Sender<model::Event>,
    ) -> Result<(Arc<Driver>, GuestSpec), StartError> {
        let cdi = CdiWriter::new(&self.cdi_dir, &d.cdi_vendor(), &d.cdi_class()).map_err(|source| StartError::Cdi {
            driver: d.name.clone(),
            source,
        })?;
        let metadata =
            MetadataWriter::new(&paths.plugin_dir, &self.cdi_dir, &d.name).map_err(|source| StartError::Cdi {
                driver: d.name.clone(),
                source,
            })?;
        let (guest, report, spec) = self.loader.load(d, events).await?;
        let mut policy = d.policy.clone();
        if let Some(nd) = net_driver {
            // The attach hook is the host's own program: allowed, but only
            // with the arguments the host hands out.
            policy.attach_hook = Some(crate::policy::AttachHook {
                path: nd.hook_path.clone(),
                plugin_dir: nd.plugin_dir.display().to_string(),
            });
        }
        let guest = guest.with_error_budget(ErrorBudget {
            calls: self.hot_swap.probation_calls,
            failures: self.hot_swap.max_failed_calls,
        });
        let id = guest.identity();
        tracing::info!(
            driver = %d.name, guest = %id.name, version = %id.version, digest = %id.digest,
            cache = ?report.cache, took_ms = report.duration.as_millis() as u64,
            pools = report.inventory.len(),
            devices = report.inventory.iter().map(|p| p.devices.len()).sum::<usize>(),
            "guest loaded"
        );
        let metrics = &self.loader.metrics;
        let health = Arc::new(Health::new(&d.name, Arc::clone(metrics)));
        health.set_inventory(&report.inventory);
        let driver = Arc::new(Driver::new(DriverParts {
            name: d.name.clone(),
            guest,
            claims: Arc::clone(&self.claims),
            cdi,
            metadata,
            checkpoint,
            policy,
            health,
            metrics: Arc::clone(metrics),
            inventory: report.inventory,
            serialize,
            events: self.events.clone(),
            boot_id: self.boot_id.clone(),
            net: net_driver.cloned(),
        }));
        Ok((driver, spec))
    }
}

fn limits(config: &Config) -> Limits {
    Limits {
        call_timeout: config.runtime.call_timeout(),
        memory_bytes: usize::try_from(config.runtime.memory_limit_mib << 20).unwrap_or(usize::MAX),
        max_instances: config.runtime.max_instances,
        ..Limits::default()
    }
}

/// Host capabilities, created only when some driver is granted them.
fn capabilities(config: &Config) -> Result<Capabilities, StartError> {
    let mut caps = Capabilities::default();
    if config.drivers.iter().any(|d| d.grants.contains(&Grant::Nvml)) {
        let backend: Box<dyn nvml::Backend> = match &config.nvml.simulated {
            Some(sim) => Box::new(
                nvml::simulated::SimulatedNvml::start(&sim.gpus, &sim.events_socket, &config.nvml.driver_root)
                    .map_err(StartError::SimulatedNvml)?,
            ),
            None => Box::new(nvml::real::RealNvml::load(&config.nvml.driver_root)),
        };
        caps.nvml = Some(nvml::Nvml::new(backend));
    }
    let mut net_drivers = Vec::new();
    for d in &config.drivers {
        let Some(n) = &d.net else { continue };
        let hook_path = match &n.hook_path {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(StartError::HookPath)?,
        };
        let plugin_dir = PluginPaths::new(&config.kubelet_root_dir, &d.name).plugin_dir;
        net_drivers.push(
            net::NetDriver::new(&d.name, n.parents.clone(), &plugin_dir, hook_path.display().to_string()).map_err(
                |source| StartError::NetState {
                    driver: d.name.clone(),
                    source,
                },
            )?,
        );
    }
    if !net_drivers.is_empty() {
        caps.net = Some(net::Net::new(net_drivers));
    }
    Ok(caps)
}
