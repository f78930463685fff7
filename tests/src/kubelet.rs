//! A test kubelet: the plugin-facing half of the kubelet's DRA support.
//!
//! What it does, as the kubelet does (see shared/reference §1.3, §2.4, §2.5):
//! - watches `<root>/plugins_registry` with inotify (and walks it at start),
//!   considering only Unix sockets whose names do not start with `.`;
//! - for a new socket: dials it with the `:authority` the kubelet's grpc-go
//!   sends (the percent-encoded socket path), calls `GetInfo` with a 1 s timeout, checks
//!   type, name and endpoint, picks the first of the plugin's
//!   `supported_versions` that it knows, and calls
//!   `NotifyRegistrationStatus` with a 5 s timeout (false plus the reason when
//!   a check fails); a failed registration is retried from scratch after a
//!   back-off (500 ms, doubling), as the kubelet's reconciler does;
//! - on removal of the socket: deregisters the plugin;
//! - calls `NodePrepareResources` / `NodeUnprepareResources` with a 45 s
//!   deadline, through v1 or v1beta1 as picked, converting v1beta1 answers to
//!   v1 as the kubelet's wrapper does;
//! - watches device health as a 1.37 kubelet does: through
//!   `v1.DRAResourceHealth` when advertised, else `v1alpha1`, else not at all.
//!
//! The kubelet's own code (its plugin manager and DRA manager at 1.37.2,
//! [`crate::kubelet_peer`]) is the kubelet of the tests in `tests/cluster`
//! but four (listed below). This stand-in stays only where that code cannot
//! go; each user says why in its module doc:
//!
//! - calls the kubelet's code never sends, or not on cue: claims not
//!   allocated, replaced or missing, and calls during an API server outage
//!   (`tests/cluster/main.rs`); unknown, repeated, concurrent and
//!   partly failing batches (`tests/e2e/prepare.rs`, `faults.rs`,
//!   `policy.rs`, `guest_text.rs`, `instances.rs`); a deadline at a chosen
//!   moment (`deadlines.rs`); calls through either instance of a rolling
//!   update (`rolling.rs`, `net.rs`) and during swaps under load (`swap.rs`);
//!   a v1beta1-only kubelet (`registration.rs`); several health streams read
//!   message by message (`gpu.rs`, `net.rs`);
//! - claims the kubelet's DRA manager would refuse or cannot read: from the
//!   host's claims file, or allocated by hand and reserved for no Pod
//!   (`api.rs`, `cdi_runtime.rs`, `gpu.rs`, `lifecycle.rs`, `net.rs`,
//!   `nodestate.rs`, `quickstart.rs`);
//! - registration only: a host's first publication of its slices (two tests
//!   of `tests/cluster/main.rs`), which the kubelet code's start-up wipe of
//!   the node's slices would race with, and under raw HTTP/2 frames
//!   (`wire.rs`);
//! - measurements timed where the answer arrives, with load on cue
//!   (`tests/bench/health.rs`, `memory.rs`, `net.rs`, `prepare.rs`,
//!   `swap.rs`, `throughput.rs`): the Go peer would time itself behind its
//!   JSON-lines pipe;
//! - `dra-wasm-host demo` (`host/src/cli/demo.rs`): no cluster, no Go.
//!
//! What the real code does that this one does not is listed in
//! docs/operations.md ("Which kubelets were checked, and how").

use anyhow::{Context, Result, anyhow, bail};
use dra_proto::dra::{v1, v1beta1};
use dra_proto::health::{v1 as health_v1, v1alpha1 as health_v1alpha1};
use dra_proto::pluginregistration::registration_client::RegistrationClient;
use dra_proto::pluginregistration::{InfoRequest, RegistrationStatus};
use dra_proto::services;
use notify::Watcher;
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tonic::transport::Channel;

/// The kubelet's deadline for prepare/unprepare calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(45);
const GET_INFO_TIMEOUT: Duration = Duration::from_secs(1);
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// The kubelet's back-off before retrying a failed registration
/// (nestedpendingoperations: 500 ms, doubling, at most 2 min 2 s).
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(122);

/// Which DRAPlugin service the kubelet talks to a plugin through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    V1,
    V1beta1,
}

/// Which DRAResourceHealth service the kubelet watches a plugin through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthService {
    V1,
    V1alpha1,
}

/// A stream of complete device health lists, in v1 terms.
pub struct HealthWatch {
    rx: mpsc::Receiver<Result<Vec<health_v1::DeviceHealth>, tonic::Status>>,
}

impl HealthWatch {
    /// The next list, or `None` when nothing arrived within `timeout` or the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<Vec<health_v1::DeviceHealth>> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(Ok(list))) => Some(list),
            _ => None,
        }
    }

    /// Whether the stream has ended (the plugin closed it).
    pub async fn ended(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), self.rx.recv()).await {
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Something the test kubelet did, for tests and the demo to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Registered {
        driver: String,
        endpoint: String,
        supported_versions: Vec<String>,
        service: Service,
    },
    Refused {
        socket: PathBuf,
        reason: String,
    },
    Deregistered {
        driver: String,
    },
}

/// A registered plugin, ready to be called.
#[derive(Clone, Debug)]
pub struct Plugin {
    pub driver: String,
    pub endpoint: PathBuf,
    pub service: Service,
    pub health: Option<HealthService>,
    pub supported_versions: Vec<String>,
    registration_socket: PathBuf,
    inode: u64,
    channel: Channel,
}

/// A claim reference as the kubelet sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ClaimRef {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }
}

impl Plugin {
    /// Open a health stream as the kubelet does after registration.
    pub async fn watch_health(&self) -> Result<HealthWatch> {
        let (tx, rx) = mpsc::channel(64);
        match self.health {
            None => bail!("the plugin advertises no health service"),
            Some(HealthService::V1) => {
                let mut client =
                    health_v1::dra_resource_health_client::DraResourceHealthClient::new(self.channel.clone());
                let mut stream = client
                    .node_watch_resources(health_v1::NodeWatchResourcesRequest {})
                    .await?
                    .into_inner();
                tokio::spawn(async move {
                    loop {
                        let item = match stream.message().await {
                            Ok(Some(m)) => Ok(m.devices),
                            Ok(None) => break,
                            Err(e) => Err(e),
                        };
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Some(HealthService::V1alpha1) => {
                let mut client =
                    health_v1alpha1::dra_resource_health_client::DraResourceHealthClient::new(self.channel.clone());
                let mut stream = client
                    .node_watch_resources(health_v1alpha1::NodeWatchResourcesRequest {})
                    .await?
                    .into_inner();
                tokio::spawn(async move {
                    loop {
                        let item = match stream.message().await {
                            Ok(Some(m)) => Ok(m
                                .devices
                                .into_iter()
                                .map(|d| health_v1::DeviceHealth {
                                    device: d.device.map(|i| health_v1::DeviceIdentifier {
                                        pool_name: i.pool_name,
                                        device_name: i.device_name,
                                    }),
                                    health: d.health,
                                    last_updated_time: d.last_updated_time,
                                    health_check_timeout_seconds: d.health_check_timeout_seconds,
                                    message: d.message,
                                })
                                .collect()),
                            Ok(None) => break,
                            Err(e) => Err(e),
                        };
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        Ok(HealthWatch { rx })
    }

    /// `NodePrepareResources`, answered in v1 terms whatever the service.
    pub async fn prepare(
        &self,
        claims: &[ClaimRef],
    ) -> Result<HashMap<String, v1::NodePrepareResourceResponse>, tonic::Status> {
        match self.service {
            Service::V1 => {
                let mut client = v1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let claims = claims
                    .iter()
                    .map(|c| v1::Claim {
                        namespace: c.namespace.clone(),
                        uid: c.uid.clone(),
                        name: c.name.clone(),
                    })
                    .collect();
                let mut req = tonic::Request::new(v1::NodePrepareResourcesRequest { claims });
                req.set_timeout(CALL_TIMEOUT);
                Ok(client.node_prepare_resources(req).await?.into_inner().claims)
            }
            Service::V1beta1 => {
                let mut client = v1beta1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let claims = claims
                    .iter()
                    .map(|c| v1beta1::Claim {
                        namespace: c.namespace.clone(),
                        uid: c.uid.clone(),
                        name: c.name.clone(),
                    })
                    .collect();
                let mut req = tonic::Request::new(v1beta1::NodePrepareResourcesRequest { claims });
                req.set_timeout(CALL_TIMEOUT);
                let claims = client.node_prepare_resources(req).await?.into_inner().claims;
                Ok(claims
                    .into_iter()
                    .map(|(uid, r)| {
                        let devices = r
                            .devices
                            .into_iter()
                            .map(|d| v1::Device {
                                request_names: d.request_names,
                                pool_name: d.pool_name,
                                device_name: d.device_name,
                                cdi_device_ids: d.cdi_device_ids,
                                share_id: None,
                            })
                            .collect();
                        (
                            uid,
                            v1::NodePrepareResourceResponse {
                                devices,
                                error: r.error,
                            },
                        )
                    })
                    .collect())
            }
        }
    }

    /// `NodeUnprepareResources`, answered in v1 terms.
    pub async fn unprepare(&self, claims: &[ClaimRef]) -> Result<HashMap<String, String>, tonic::Status> {
        match self.service {
            Service::V1 => {
                let mut client = v1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let claims = claims
                    .iter()
                    .map(|c| v1::Claim {
                        namespace: c.namespace.clone(),
                        uid: c.uid.clone(),
                        name: c.name.clone(),
                    })
                    .collect();
                let mut req = tonic::Request::new(v1::NodeUnprepareResourcesRequest { claims });
                req.set_timeout(CALL_TIMEOUT);
                Ok(client
                    .node_unprepare_resources(req)
                    .await?
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|(k, v)| (k, v.error))
                    .collect())
            }
            Service::V1beta1 => {
                let mut client = v1beta1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let claims = claims
                    .iter()
                    .map(|c| v1beta1::Claim {
                        namespace: c.namespace.clone(),
                        uid: c.uid.clone(),
                        name: c.name.clone(),
                    })
                    .collect();
                let mut req = tonic::Request::new(v1beta1::NodeUnprepareResourcesRequest { claims });
                req.set_timeout(CALL_TIMEOUT);
                Ok(client
                    .node_unprepare_resources(req)
                    .await?
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|(k, v)| (k, v.error))
                    .collect())
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Per driver, every registered instance, oldest first. As in the
    /// kubelet (1.33+), two instances of one driver coexist during a rolling
    /// update and calls go to the newest one.
    plugins: Mutex<HashMap<String, Vec<Plugin>>>,
    events: Mutex<Vec<Event>>,
    changed: Notify,
}

impl Shared {
    fn push(&self, e: Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
        self.changed.notify_waiters();
    }
}

/// The test kubelet. Dropping it stops watching.
pub struct TestKubelet {
    root: PathBuf,
    shared: Arc<Shared>,
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestKubelet {
    /// A kubelet (1.34+) with root dir `root`, knowing v1 and v1beta1.
    pub fn start(root: &Path) -> Result<Self> {
        Self::start_with_services(root, &[services::DRA_PLUGIN_V1, services::DRA_PLUGIN_V1BETA1])
    }

    /// A kubelet that only knows `known` services (e.g. only v1beta1, like 1.32/1.33).
    pub fn start_with_services(root: &Path, known: &[&str]) -> Result<Self> {
        Self::start_with(root, known, RegistrationAuthority::GrpcGo)
    }

    /// A kubelet that registers plugins sending `authority`: benchmarks that
    /// compare against host builds from before the HTTP/2 adapter (which
    /// refuse the real kubelet's authority) use [`RegistrationAuthority::Localhost`].
    pub fn start_with(root: &Path, known: &[&str], authority: RegistrationAuthority) -> Result<Self> {
        let registry = root.join("plugins_registry");
        std::fs::create_dir_all(&registry).with_context(|| format!("creating {}", registry.display()))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
        let watch_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                for p in event.paths {
                    let _ = watch_tx.send(p);
                }
            }
        })?;
        watcher.watch(&registry, notify::RecursiveMode::Recursive)?;
        // Sockets that exist already, as the kubelet's start-up walk finds them.
        for entry in std::fs::read_dir(&registry)?.flatten() {
            let _ = tx.send(entry.path());
        }
        let shared = Arc::new(Shared::default());
        let known = Known {
            services: known.iter().map(|s| s.to_string()).collect(),
            authority,
        };
        let (root2, shared2) = (root.to_owned(), Arc::clone(&shared));
        let task = tokio::spawn(async move {
            // Failed registrations per socket path, for the retry back-off.
            let mut failures: HashMap<PathBuf, u32> = HashMap::new();
            while let Some(path) = rx.recv().await {
                if reconcile(&root2, &known, &shared2, &path).await {
                    failures.remove(&path);
                    continue;
                }
                // As the kubelet's reconciler does, retry a failed
                // registration from scratch, backing off exponentially.
                let n = failures.entry(path.clone()).or_insert(0);
                *n += 1;
                let delay = RETRY_INITIAL.saturating_mul(1 << (*n - 1).min(8)).min(RETRY_MAX);
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(path);
                });
            }
        });
        Ok(Self {
            root: root.to_owned(),
            shared,
            _watcher: watcher,
            task,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Everything the kubelet did so far.
    pub fn events(&self) -> Vec<Event> {
        self.shared.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The instance of `driver` the kubelet calls: the newest registered.
    pub fn plugin(&self, driver: &str) -> Option<Plugin> {
        self.plugins(driver).pop()
    }

    /// Every registered instance of `driver`, oldest first.
    pub fn plugins(&self, driver: &str) -> Vec<Plugin> {
        self.shared
            .plugins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(driver)
            .cloned()
            .unwrap_or_default()
    }

    /// Wait until `driver` has `n` registered instances.
    pub async fn wait_for_instances(&self, driver: &str, n: usize, timeout: Duration) -> Result<Vec<Plugin>> {
        self.wait(timeout, || {
            let all = self.plugins(driver);
            (all.len() == n).then_some(all)
        })
        .await
        .with_context(|| {
            format!(
                "driver {driver} did not have {n} registered instances within {timeout:?}; kubelet events: {:?}",
                self.events()
            )
        })
    }

    /// Wait until `driver` is registered.
    pub async fn wait_for_plugin(&self, driver: &str, timeout: Duration) -> Result<Plugin> {
        self.wait(timeout, || self.plugin(driver)).await.with_context(|| {
            format!(
                "driver {driver} did not register within {timeout:?}; kubelet events: {:?}",
                self.events()
            )
        })
    }

    /// Wait until `driver` is deregistered (its registration socket removed).
    pub async fn wait_for_deregistration(&self, driver: &str, timeout: Duration) -> Result<()> {
        self.wait(timeout, || self.plugin(driver).is_none().then_some(()))
            .await
            .with_context(|| format!("driver {driver} was still registered after {timeout:?}"))
    }

    async fn wait<T>(&self, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if let Some(v) = check() {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out");
            }
            // Also re-check periodically: a notification may race the check.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }
}

/// Bring the kubelet's view of `path` up to date; false when a socket there
/// failed to register (and should be tried again).
async fn reconcile(root: &Path, known: &Known, shared: &Shared, path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return true;
    };
    if name.starts_with('.') {
        return true;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let already = shared
                .plugins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .flatten()
                .any(|p| p.registration_socket == path && p.inode == meta.ino());
            if already {
                return true;
            }
            match register(root, known, path, meta.ino()).await {
                Ok(plugin) => {
                    shared.push(Event::Registered {
                        driver: plugin.driver.clone(),
                        endpoint: plugin.endpoint.display().to_string(),
                        supported_versions: plugin.supported_versions.clone(),
                        service: plugin.service,
                    });
                    {
                        let mut plugins = shared.plugins.lock().unwrap_or_else(|p| p.into_inner());
                        let instances = plugins.entry(plugin.driver.clone()).or_default();
                        // A socket registered again (a restart) replaces its old instance.
                        instances.retain(|p| p.registration_socket != plugin.registration_socket);
                        instances.push(plugin);
                    }
                    shared.changed.notify_waiters();
                    true
                }
                Err(e) => {
                    shared.push(Event::Refused {
                        socket: path.to_owned(),
                        reason: format!("{e:#}"),
                    });
                    false
                }
            }
        }
        Ok(_) => true,
        Err(_) => {
            // Removed: deregister whoever registered through this socket.
            let removed: Vec<String> = {
                let mut plugins = shared.plugins.lock().unwrap_or_else(|p| p.into_inner());
                let mut gone = Vec::new();
                for (driver, instances) in plugins.iter_mut() {
                    let before = instances.len();
                    instances.retain(|p| p.registration_socket != path);
                    if instances.len() != before {
                        gone.push(driver.clone());
                    }
                }
                plugins.retain(|_, instances| !instances.is_empty());
                gone
            };
            for driver in removed {
                shared.push(Event::Deregistered { driver });
            }
            true
        }
    }
}

/// The `:authority` the kubelet's grpc-go (>= 1.57; kubelet 1.31+ ships
/// 1.65 or newer) sends when it dials a socket path with the `passthrough`
/// resolver: the path, percent-encoded.
pub fn grpc_go_passthrough_authority(socket: &Path) -> Vec<u8> {
    socket.to_string_lossy().replace('/', "%2F").into_bytes()
}

/// What the `:authority` of the registration calls is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationAuthority {
    /// What every kubelet sends: the socket path, percent-encoded.
    GrpcGo,
    /// `localhost`, which no kubelet sends to the registration socket.
    Localhost,
}

/// What this kubelet knows and how it dials.
struct Known {
    services: Vec<String>,
    authority: RegistrationAuthority,
}

async fn register(root: &Path, known: &Known, socket: &Path, inode: u64) -> Result<Plugin> {
    // The plugin watcher dials the bare path without `WithAuthority`
    // (`operation_generator.go`), so the socket path is the `:authority`.
    let authority = match known.authority {
        RegistrationAuthority::GrpcGo => grpc_go_passthrough_authority(socket),
        RegistrationAuthority::Localhost => b"localhost".to_vec(),
    };
    let dial = dra_proto::wire::connect_uds_with_authority(socket, &authority);
    let channel = tokio::time::timeout(Duration::from_secs(10), dial)
        .await
        .context("dialing the registration socket timed out")??;
    let mut client = RegistrationClient::new(channel);
    let mut req = tonic::Request::new(InfoRequest {});
    req.set_timeout(GET_INFO_TIMEOUT);
    let info = client.get_info(req).await.context("GetInfo")?.into_inner();

    let checked = (|| -> Result<(PathBuf, Service, Option<HealthService>)> {
        if info.r#type != services::DRA_PLUGIN_TYPE {
            bail!("no handler registered for plugin type {:?}", info.r#type);
        }
        validate_driver_name(&info.name)?;
        let endpoint = if info.endpoint.is_empty() {
            socket.to_owned()
        } else {
            PathBuf::from(&info.endpoint)
        };
        validate_endpoint(&endpoint, root)?;
        if info.supported_versions.is_empty() {
            bail!("empty list of supported gRPC services (aka supported versions)");
        }
        let service = info
            .supported_versions
            .iter()
            .find(|v| known.services.contains(v))
            .ok_or_else(|| {
                anyhow!(
                    "none of the plugin's services {:?} is supported",
                    info.supported_versions
                )
            })?;
        let service = if service == services::DRA_PLUGIN_V1 {
            Service::V1
        } else {
            Service::V1beta1
        };
        // 1.37: v1 preferred whatever the plugin's order; only what is advertised.
        let has = |s: &str| info.supported_versions.iter().any(|v| v == s);
        let health = if has(services::HEALTH_V1) {
            Some(HealthService::V1)
        } else if has(services::HEALTH_V1ALPHA1) {
            Some(HealthService::V1alpha1)
        } else {
            None
        };
        Ok((endpoint, service, health))
    })();

    let (registered, error) = match &checked {
        Ok(_) => (true, String::new()),
        Err(e) => (false, format!("{e:#}")),
    };
    let mut req = tonic::Request::new(RegistrationStatus {
        plugin_registered: registered,
        error,
    });
    req.set_timeout(NOTIFY_TIMEOUT);
    let notified = client.notify_registration_status(req).await;
    let (endpoint, service, health) = checked?;
    notified.context("NotifyRegistrationStatus")?;
    // Kubelets since 1.34 dial `grpc.NewClient("unix:" + endpoint)`, whose
    // resolver sends `localhost`; 1.31-1.33 dialed the path as the plugin
    // watcher does (the Go and Python clients in tests/peers cover those).
    let channel = dra_proto::connect_uds(&endpoint)
        .await
        .with_context(|| format!("dialing {}", endpoint.display()))?;
    Ok(Plugin {
        driver: info.name,
        endpoint,
        service,
        health,
        supported_versions: info.supported_versions,
        registration_socket: socket.to_owned(),
        inode,
        channel,
    })
}

/// The kubelet's (1.38+) driver-name rule: a DNS subdomain of at most 63 characters.
fn validate_driver_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        bail!("driver name {name:?} is not valid");
    }
    Ok(())
}

/// The kubelet's (1.38+) endpoint rule: absolute, shorter than 108 bytes,
/// inside the kubelet root directory.
fn validate_endpoint(endpoint: &Path, root: &Path) -> Result<()> {
    if !endpoint.is_absolute() {
        bail!("endpoint {} is not absolute", endpoint.display());
    }
    if endpoint.as_os_str().len() >= 108 {
        bail!("endpoint {} is 108 bytes or longer", endpoint.display());
    }
    let mut cleaned = PathBuf::new();
    for c in endpoint.components() {
        match c {
            std::path::Component::ParentDir => {
                cleaned.pop();
            }
            std::path::Component::CurDir => {}
            other => cleaned.push(other.as_os_str()),
        }
    }
    if !cleaned.starts_with(root) {
        bail!(
            "endpoint {} is not inside the kubelet root directory {}",
            endpoint.display(),
            root.display()
        );
    }
    Ok(())
}
