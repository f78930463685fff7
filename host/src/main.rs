//! The `dra-wasm-host` binary: `run` is node mode; `demo` walks through a
//! prepare/unprepare with the example guest and an in-process test kubelet.

mod call;
mod demo;
mod harness;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dra_wasm_host::config::{ClaimsConfig, Config, DriverConfig, HotSwapConfig};
use dra_wasm_host::driver::{Driver, DriverParts, GuestUpdates};
use dra_wasm_host::guest::{CompileCache, ErrorBudget, Guest, GuestFileWatcher, GuestSpec, Limits, Runtime, types};
use dra_wasm_host::health::Health;
use dra_wasm_host::imports::{Capabilities, Grant, Imports, net, nvml};
use dra_wasm_host::kube::client::ApiClient;
use dra_wasm_host::kube::events::EventRecorder;
use dra_wasm_host::kube::publisher::{self, Publisher};
use dra_wasm_host::kube::slices::{Desired, desired_pools};
use dra_wasm_host::kube::{ApiClaims, ClaimSource, FileClaims};
use dra_wasm_host::kubelet::{self, PluginPaths, liveness};
use dra_wasm_host::metrics::{self, Metrics};
use dra_wasm_host::state::cdi::CdiWriter;
use dra_wasm_host::state::checkpoint::Checkpoint;
use dra_wasm_host::state::serialize::SerializeLock;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

#[derive(Parser)]
#[command(
    name = "dra-wasm-host",
    version,
    about = "Kubernetes DRA driver host for WebAssembly guest drivers"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "DRA_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured drivers to the kubelet (node mode).
    Run {
        /// The host config file (TOML).
        #[arg(long, env = "DRA_CONFIG")]
        config: PathBuf,
        /// Serve in the kubelet's rolling-update mode (kubelet >= 1.33,
        /// DaemonSet `maxSurge: 1`): sockets named with this pod UID, claim
        /// operations serialized with the other pod by a file lock. Pass the
        /// pod's `metadata.uid` from the downward API.
        #[arg(long, value_name = "POD_UID")]
        rolling_update_uid: Option<String>,
    },
    /// Walk through registration, prepare and unprepare with the example guest.
    Demo {
        /// Keep the demo's temporary directory instead of removing it.
        #[arg(long)]
        keep: bool,
    },
    /// Work with guest components without serving them.
    #[command(subcommand)]
    Guest(GuestCommand),
    /// Call a DRA plugin's sockets as the kubelet does (prints JSON).
    #[command(subcommand)]
    Call(call::CallCommand),
    /// The CDI createRuntime hook of network drivers: reads the OCI state
    /// from stdin and asks the host to move the prepared link into the
    /// container's network namespace (prints the result as JSON).
    NetAttach {
        /// The driver's plugin directory (holds the host's attach sockets).
        #[arg(long)]
        dir: PathBuf,
        /// The prepared link (a name the host gave it, `dwh…`).
        #[arg(long)]
        link: String,
    },
    /// Copy this binary to a path on the node, for container runtimes to run
    /// as the network attach hook (a DaemonSet init container does this).
    InstallHook {
        /// Destination, e.g. /opt/dra-wasm-host/bin/dra-wasm-host.
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Load each driver's guest as `run` would, run its self-test (init +
    /// inventory) and print the inventory as JSON.
    ///
    /// With FILE, load that component instead of the configured one, with the
    /// driver's grants and config: the same checks and self-test a hot swap
    /// runs before it lets a new guest serve.
    Validate {
        /// A candidate guest component for the driver (needs --driver when
        /// the config has several drivers).
        file: Option<PathBuf>,
        #[arg(long, env = "DRA_CONFIG")]
        config: PathBuf,
        /// Only this driver.
        #[arg(long)]
        driver: Option<String>,
    },
    /// Describe a guest component without running it: world, WIT version,
    /// the guest SDK version it was built with, imports and the grants they
    /// need, size, SHA-256, and whether this host can link it (prints JSON).
    Inspect { file: PathBuf },
    /// Run a guest locally as the host would (grants, config, policy and
    /// limits of a host config's driver) with no kubelet, API server or root:
    /// print its ResourceSlices, prepare and unprepare ResourceClaim files,
    /// feed it GPU and link events.
    Run(harness::RunArgs),
    /// Print a ConfigMap (YAML) holding guest components as binaryData, for
    /// the DaemonSet's guests volume. Fails past the 1 MiB ConfigMap limit.
    Configmap {
        #[arg(long, default_value = "dra-wasm-host-guests")]
        name: String,
        #[arg(long, default_value = "dra-wasm-host")]
        namespace: String,
        /// Guest `.wasm` files; each becomes a key named after the file.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // A vendor running a guest wants its log lines (on stderr).
        Command::Guest(GuestCommand::Run(_)) => "info",
        Command::Demo { .. }
        | Command::Guest(_)
        | Command::Call(_)
        | Command::NetAttach { .. }
        | Command::InstallHook { .. } => "warn",
        Command::Run { .. } => "info",
    };
    init_tracing(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                config,
                rolling_update_uid,
            } => run(&config, rolling_update_uid).await,
            Command::Demo { keep } => demo::run(keep).await,
            Command::Guest(GuestCommand::Validate { file, config, driver }) => {
                validate(&config, driver.as_deref(), file.as_deref()).await
            }
            Command::Guest(GuestCommand::Inspect { file }) => inspect(&file),
            Command::Guest(GuestCommand::Run(args)) => harness::run(args).await,
            Command::Guest(GuestCommand::Configmap { name, namespace, files }) => configmap(&name, &namespace, &files),
            Command::Call(cmd) => call::run(cmd).await,
            Command::NetAttach { dir, link } => net_attach(&dir, &link),
            Command::InstallHook { to } => install_hook(&to),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only on a terminal: in a pod log or a file, escape codes are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config_path: &std::path::Path, rolling_update_uid: Option<String>) -> Result<()> {
    let config = Config::load(config_path)?;
    if let Some(uid) = &rolling_update_uid {
        kubelet::validate_pod_uid(uid)?;
        tracing::info!(pod_uid = %uid, "rolling-update mode: sockets named with the pod UID, claim operations serialized by file lock");
    }
    let node = config.node_name().map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let rolling = rolling_update_uid.is_some();
    if let Some(addr) = config.metrics_addr {
        let (metrics, shutdown) = (Arc::clone(&metrics), stopped());
        serve_tcp(addr, "metrics", rolling, move |l| {
            metrics::serve(l, metrics, shutdown);
        })
        .await?;
    }
    let host = Host::new(&config, &node, Arc::clone(&metrics), rolling_update_uid, boot_id()).await?;

    let mut plugins = Vec::new();
    let mut probes = Vec::new();
    let mut attach_servers = Vec::new();
    for d in &config.drivers {
        match host.start_driver(d).await {
            Ok((plugin, probe, attach)) => {
                metrics.set_driver_up(&d.name, true);
                plugins.push(plugin);
                probes.push(probe);
                attach_servers.extend(attach);
            }
            Err(e) => {
                metrics.set_driver_up(&d.name, false);
                tracing::error!(driver = %d.name, error = format!("{e:#}"), "driver failed to start; the other drivers are served");
                if config.drivers.len() == 1 {
                    return Err(e);
                }
            }
        }
    }
    if plugins.is_empty() {
        bail!("no driver could be started");
    }
    if let Some(addr) = config.healthcheck_addr {
        let (live, shutdown) = (liveness::Liveness::new(probes), stopped());
        serve_tcp(addr, "liveness", rolling, move |l| {
            liveness::serve(l, live, shutdown);
        })
        .await?;
    }

    wait_for_signal().await?;
    tracing::info!("stopping: deregistering from the kubelet and draining calls");
    let _ = stop_tx.send(true);
    for plugin in plugins {
        plugin.stop().await;
    }
    // Removes only this process's attach sockets.
    drop(attach_servers);
    tracing::info!("stopped");
    Ok(())
}

/// Bind `addr` and hand the listener to `serve`.
///
/// In rolling-update mode on the host network (the networking driver's
/// DaemonSet), the pod being replaced still holds the port while this one
/// starts. Failing would stop the rollout, and sharing it (`SO_REUSEPORT`)
/// would let the old pod answer this one's liveness probe; so the port is
/// taken over when the old pod lets it go, checked twice a second.
async fn serve_tcp<F>(addr: std::net::SocketAddr, what: &'static str, rolling: bool, serve: F) -> Result<()>
where
    F: FnOnce(tokio::net::TcpListener) + Send + 'static,
{
    use std::io::ErrorKind::AddrInUse;
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            serve(listener);
            Ok(())
        }
        Err(e) if rolling && e.kind() == AddrInUse => {
            tracing::warn!(
                %addr, what,
                "port in use, presumably by the pod this one replaces; serving on it once that pod has let it go"
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(listener) => return serve(listener),
                        Err(e) if e.kind() == AddrInUse => continue,
                        Err(e) => return tracing::error!(%addr, what, error = %e, "cannot listen"),
                    }
                }
            });
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("serving {what} on {addr}")),
    }
}

/// What every driver of this process shares.
struct Host {
    node: String,
    metrics: Arc<Metrics>,
    runtime: Arc<Runtime>,
    claims: Arc<dyn ClaimSource>,
    /// The API-server client, when claims come from the API server (then
    /// ResourceSlices are published too).
    api: Option<ApiClient>,
    node_uid: Option<String>,
    /// Kubernetes Events (when an API server is configured), one sender for all drivers.
    events: Option<EventRecorder>,
    /// This boot's ID, recorded with prepared claims to notice reboots.
    boot_id: Option<String>,
    caps: Capabilities,
    limits: Limits,
    kubelet_root: PathBuf,
    cdi_dir: PathBuf,
    hot_swap: HotSwapConfig,
    rolling_update_uid: Option<String>,
}

impl Host {
    async fn new(
        config: &Config,
        node: &str,
        metrics: Arc<Metrics>,
        rolling_update_uid: Option<String>,
        boot_id: Option<String>,
    ) -> Result<Self> {
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

    /// What `new` makes, with the claim source given (`guest run` serves
    /// claims from files, with no API server).
    fn with_claims(
        config: &Config,
        node: &str,
        metrics: Arc<Metrics>,
        claims: Arc<dyn ClaimSource>,
        api: Option<ApiClient>,
        rolling_update_uid: Option<String>,
        boot_id: Option<String>,
    ) -> Result<Self> {
        let cache = CompileCache::new(config.cache_dir.clone())
            .with_context(|| format!("compile cache {:?}", config.cache_dir))?;
        let runtime = Runtime::new(cache, config.runtime.tick()).context("starting the wasm engine")?;
        let events = api.as_ref().map(|api| {
            EventRecorder::new(
                api.clone(),
                node,
                config.kubernetes.node_uid.clone(),
                Arc::clone(&metrics),
            )
        });
        Ok(Self {
            node: node.to_owned(),
            metrics,
            runtime,
            claims,
            api,
            node_uid: config.kubernetes.node_uid.clone(),
            events,
            boot_id,
            caps: capabilities(config)?,
            limits: limits(config),
            kubelet_root: config.kubelet_root_dir.clone(),
            cdi_dir: config.cdi_dir.clone(),
            hot_swap: config.hot_swap.clone(),
            rolling_update_uid,
        })
    }

    /// Load a driver's state and guest, and serve it to the kubelet.
    async fn start_driver(
        &self,
        d: &DriverConfig,
    ) -> Result<(
        kubelet::RunningPlugin,
        liveness::Probe,
        Option<net::attach::AttachServer>,
    )> {
        let paths = match &self.rolling_update_uid {
            Some(uid) => PluginPaths::rolling_update(&self.kubelet_root, &d.name, uid),
            None => PluginPaths::new(&self.kubelet_root, &d.name),
        };
        paths.validate().with_context(|| format!("driver {}", d.name))?;
        // In rolling-update mode the other pod may be committing claims right
        // now: open the checkpoint (which clears unfinished writes) under the
        // shared lock.
        let serialize = match &self.rolling_update_uid {
            Some(_) => {
                dra_wasm_host::state::fsutil::ensure_dir(&paths.plugin_dir, 0o750)
                    .with_context(|| format!("creating {}", paths.plugin_dir.display()))?;
                Some(SerializeLock::open(&paths.plugin_dir)?)
            }
            None => None,
        };
        let guard = match &serialize {
            Some(lock) => Some(lock.acquire().await?),
            None => None,
        };
        let checkpoint = Checkpoint::open(&paths.plugin_dir.join("claims"), &d.name)?;
        let net_driver = self.caps.net.as_ref().and_then(|n| n.driver(&d.name)).cloned();
        if let Some(nd) = &net_driver {
            // Under the same lock as the checkpoint: links and addresses of
            // claims that never reached the checkpoint (a crash in between)
            // or that were unprepared by nobody are released now.
            let prepared = checkpoint.records().into_iter().map(|r| r.claim.uid).collect();
            let released = nd
                .reconcile(&prepared)
                .with_context(|| format!("driver {}: reconciling network state", d.name))?;
            if !released.is_empty() {
                tracing::info!(driver = %d.name, claims = ?released, "released network resources of claims not in the checkpoint");
            }
        }
        let LoadedDriver {
            driver,
            spec,
            events_tx,
            events_rx,
        } = self.load_driver(d, checkpoint, net_driver.as_ref(), serialize).await?;
        if let Some(net) = &self.caps.net
            && net_driver.is_some()
        {
            net.watch(&d.name, events_tx.clone())
                .with_context(|| format!("driver {}: watching parent links", d.name))?;
        }
        tokio::spawn(Arc::clone(&driver).run_events(events_rx));
        // Before the kubelet can call: claims prepared in an earlier boot
        // describe device state that is gone. Reported inside.
        driver.prepare_after_reboot().await;
        let restored = driver
            .restore_cdi_specs()
            .with_context(|| format!("driver {}", d.name))?;
        drop(guard);
        if self.hot_swap.enabled {
            let watcher = GuestFileWatcher::new(&d.guest, self.hot_swap.debounce())
                .with_context(|| format!("driver {}", d.name))?;
            let updates = GuestUpdates {
                runtime: Arc::clone(&self.runtime),
                spec: spec.clone(),
                watcher,
            };
            tokio::spawn(Arc::clone(&driver).run_guest_updates(updates));
            tracing::info!(driver = %d.name, guest = %d.guest.display(), "watching the guest file for updates");
        }
        if restored > 0 {
            tracing::info!(driver = %d.name, restored, "restored CDI specs of prepared claims");
        }
        tracing::info!(driver = %d.name, prepared = driver.checkpoint().len(), "checkpoint loaded");
        let plugin = kubelet::serve(Arc::clone(&driver), &paths, Arc::clone(&self.metrics))
            .await
            .with_context(|| format!("driver {}", d.name))?;
        match &self.api {
            Some(api) => {
                let mut publisher = Publisher::new(
                    api.clone(),
                    &d.name,
                    &self.node,
                    self.node_uid.clone(),
                    Arc::clone(&self.metrics),
                );
                if let Some(events) = &self.events {
                    publisher = publisher.with_events(events.clone());
                }
                let inputs = publisher::Inputs {
                    inventory: driver.inventory(),
                    health: d.taint_unhealthy.then(|| driver.health().subscribe()),
                };
                tokio::spawn(publisher.run(inputs));
            }
            None if d.taint_unhealthy => {
                tracing::warn!(driver = %d.name, "taint_unhealthy needs claims.source = \"api-server\": no slices are published");
            }
            None => {}
        }
        let probe = liveness::Probe {
            driver: d.name.clone(),
            registration_socket: paths.registration_socket.clone(),
            dra_socket: paths.dra_socket.clone(),
        };
        let attach = match net_driver {
            Some(nd) => {
                let socket = net::attach::socket_path(&paths.plugin_dir, self.rolling_update_uid.as_deref());
                Some(
                    net::attach::serve(nd, &socket)
                        .with_context(|| format!("driver {}: attach socket {}", d.name, socket.display()))?,
                )
            }
            None => None,
        };
        Ok((plugin, probe, attach))
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

fn guest_spec(d: &DriverConfig, node: &str, limits: &Limits, imports: Imports) -> GuestSpec {
    GuestSpec {
        path: d.guest.clone(),
        ctx: types::InitContext {
            driver_name: d.name.clone(),
            node_name: node.to_owned(),
            config: d.guest_config_json(),
        },
        limits: limits.clone(),
        imports,
    }
}

/// A driver assembled around its loaded guest, before anything serves it.
struct LoadedDriver {
    driver: Arc<Driver>,
    /// What the guest was loaded with; hot swaps load new files with it.
    spec: GuestSpec,
    /// Where the driver's event sources (NVML, the link monitor) send.
    events_tx: mpsc::Sender<types::Event>,
    /// What [`Driver::run_events`] (or `guest run`) hands to the guest.
    events_rx: mpsc::Receiver<types::Event>,
}

impl Host {
    /// Load `d`'s guest with its grants, limits and config, run its
    /// self-test, and assemble the driver (CDI writer, checkpoint, policy,
    /// health) around it. `run` serves what this returns; `guest run` drives
    /// it locally, so both go through the same checks.
    async fn load_driver(
        &self,
        d: &DriverConfig,
        checkpoint: Checkpoint,
        net_driver: Option<&Arc<net::NetDriver>>,
        serialize: Option<SerializeLock>,
    ) -> Result<LoadedDriver> {
        let cdi = CdiWriter::new(&self.cdi_dir, &d.cdi_vendor(), &d.cdi_class())
            .with_context(|| format!("driver {}", d.name))?;
        let (events_tx, events_rx) = mpsc::channel(nvml::EVENT_QUEUE);
        let imports = Imports::new(&d.grants, &d.name, &self.caps, &events_tx)
            .map_err(|e| anyhow::anyhow!("driver {}: {e}", d.name))?;
        let spec = guest_spec(d, &self.node, &self.limits, imports);
        let (guest, report) = Guest::load(&self.runtime, &self.metrics, &spec)
            .await
            .with_context(|| format!("driver {}: loading guest", d.name))?;
        let mut policy = d.policy.clone();
        if let Some(nd) = net_driver {
            // The attach hook is the host's own program: allowed, but only
            // with the arguments the host hands out.
            policy.attach_hook = Some(dra_wasm_host::policy::AttachHook {
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
        let health = Arc::new(Health::new(&d.name, Arc::clone(&self.metrics)));
        health.set_inventory(&report.inventory);
        let driver = Arc::new(Driver::new(DriverParts {
            name: d.name.clone(),
            guest,
            claims: Arc::clone(&self.claims),
            cdi,
            checkpoint,
            policy,
            health,
            metrics: Arc::clone(&self.metrics),
            inventory: report.inventory,
            serialize,
            events: self.events.clone(),
            boot_id: self.boot_id.clone(),
        }));
        Ok(LoadedDriver {
            driver,
            spec,
            events_tx,
            events_rx,
        })
    }
}

/// Host capabilities, created only when some driver is granted them.
fn capabilities(config: &Config) -> Result<Capabilities> {
    let mut caps = Capabilities::default();
    if config.drivers.iter().any(|d| d.grants.contains(&Grant::Nvml)) {
        let backend: Box<dyn nvml::Backend> = match &config.nvml.simulated {
            Some(sim) => Box::new(
                nvml::simulated::SimulatedNvml::start(&sim.gpus, &sim.events_socket, &config.nvml.driver_root)
                    .context("simulated NVML")?,
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
            None => std::env::current_exe().context("finding this binary's path for the attach hook")?,
        };
        let plugin_dir = PluginPaths::new(&config.kubelet_root_dir, &d.name).plugin_dir;
        net_drivers.push(
            net::NetDriver::new(&d.name, n.parents.clone(), &plugin_dir, hook_path.display().to_string())
                .with_context(|| format!("driver {}: network state", d.name))?,
        );
    }
    if !net_drivers.is_empty() {
        caps.net = Some(net::Net::new(net_drivers));
    }
    Ok(caps)
}

/// `net-attach`: the CDI createRuntime hook.
fn net_attach(dir: &std::path::Path, link: &str) -> Result<()> {
    let answer = net::attach::run_hook(dir, link, std::io::stdin().lock())
        .with_context(|| format!("attaching {link} to the container's pod"))?;
    println!("{}", serde_json::to_string(&answer)?);
    Ok(())
}

/// `install-hook`: copy this binary to `to` (atomically, mode 0755).
fn install_hook(to: &std::path::Path) -> Result<()> {
    let me = std::env::current_exe().context("finding this binary")?;
    let bytes = std::fs::read(&me).with_context(|| format!("reading {}", me.display()))?;
    if let Some(dir) = to.parent() {
        dra_wasm_host::state::fsutil::ensure_dir(dir, 0o755).with_context(|| format!("creating {}", dir.display()))?;
    }
    dra_wasm_host::state::fsutil::write_atomic(to, &bytes, 0o755)
        .with_context(|| format!("installing the hook at {}", to.display()))?;
    println!("installed {} ({} bytes)", to.display(), bytes.len());
    Ok(())
}

/// `guest validate`: load each driver's guest as `run` would (grants, init
/// config, limits), run its self-test, check its inventory exactly as the
/// publisher does ([`desired_pools`]) and print what would be published as
/// JSON. Fails naming each device the API server would refuse.
async fn validate(config_path: &std::path::Path, only: Option<&str>, file: Option<&std::path::Path>) -> Result<()> {
    let mut config = Config::load(config_path)?;
    if let Some(file) = file {
        select_driver(&mut config, config_path, only, file)?;
    }
    let node = config.node_name().unwrap_or_else(|_| "validate".to_owned());
    let metrics = Metrics::new();
    let cache = CompileCache::new(config.cache_dir.clone())?;
    let runtime = Runtime::new(cache, config.runtime.tick())?;
    let caps = capabilities(&config)?;
    let mut out = serde_json::Map::new();
    let mut refused = Vec::new();
    for d in config.drivers.iter().filter(|d| only.is_none_or(|n| n == d.name)) {
        let (tx, _rx) = mpsc::channel(nvml::EVENT_QUEUE);
        let imports =
            Imports::new(&d.grants, &d.name, &caps, &tx).map_err(|e| anyhow::anyhow!("driver {}: {e}", d.name))?;
        let spec = guest_spec(d, &node, &limits(&config), imports);
        let (guest, report) = Guest::load(&runtime, &metrics, &spec)
            .await
            .with_context(|| format!("driver {}: loading guest", d.name))?;
        let id = guest.identity();
        let (desired, refusal) = check_inventory(&d.name, &report.inventory);
        refused.extend(refusal);
        let pools: Vec<_> = desired
            .pools
            .iter()
            .map(|p| serde_json::json!({ "name": p.name, "devices": p.slices.concat() }))
            .collect();
        out.insert(
            d.name.clone(),
            serde_json::json!({
                "guest": { "name": id.name, "version": id.version, "digest": id.digest },
                "loadMs": report.duration.as_millis() as u64,
                "cache": format!("{:?}", report.cache),
                "pools": pools,
            }),
        );
    }
    if out.is_empty() {
        bail!("no driver named {:?} in {}", only.unwrap_or(""), config_path.display());
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    if !refused.is_empty() {
        bail!("{}", refused.join("; "));
    }
    Ok(())
}

/// The publisher's inventory check ([`desired_pools`]) for the commands
/// that show a guest's inventory before it is served (`guest validate`,
/// `guest run slices`): each pool or device the API server would refuse is
/// named on stderr, and what the command fails with once it has printed the
/// valid rest is returned (`None`: every device is valid). The first publish
/// has no host taints, so none are applied.
fn check_inventory(driver: &str, inventory: &[types::Pool]) -> (Desired, Option<String>) {
    let desired = desired_pools(inventory, &[]);
    for e in &desired.invalid {
        eprintln!("driver {driver}: {e}");
    }
    let refusal = (!desired.invalid.is_empty()).then(|| {
        format!(
            "driver {driver}: {} devices of the inventory would not be published (the API server would refuse them)",
            desired.invalid_devices()
        )
    });
    (desired, refusal)
}

/// Keep only the driver `only` (or the config's one driver) and give it the
/// guest `file`: how `guest validate FILE` and `guest run FILE` pick the
/// grants, config and policy a candidate guest is loaded with.
fn select_driver(
    config: &mut Config,
    config_path: &std::path::Path,
    only: Option<&str>,
    file: &std::path::Path,
) -> Result<()> {
    let target = match only {
        Some(name) => name.to_owned(),
        None if config.drivers.len() == 1 => config.drivers[0].name.clone(),
        None => bail!(
            "{} configures {} drivers: name the one {} is for with --driver",
            config_path.display(),
            config.drivers.len(),
            file.display()
        ),
    };
    let Some(d) = config.drivers.iter_mut().find(|d| d.name == target) else {
        bail!("no driver named {target:?} in {}", config_path.display());
    };
    d.guest = file.to_owned();
    config.drivers.retain(|d| d.name == target);
    Ok(())
}

/// `guest inspect`: describe a component file as JSON.
fn inspect(file: &std::path::Path) -> Result<()> {
    let runtime = Runtime::new(CompileCache::new(None)?, std::time::Duration::from_millis(10))?;
    let inspection = dra_wasm_host::guest::inspect(runtime.engine(), file)?;
    println!("{}", serde_json::to_string_pretty(&inspection)?);
    if !inspection.compatible {
        bail!(
            "{} cannot be served by this host: {}",
            file.display(),
            inspection.problem.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}

/// The size limit of a ConfigMap (all of its data together).
const CONFIGMAP_LIMIT: usize = 1 << 20;

fn configmap(name: &str, namespace: &str, files: &[PathBuf]) -> Result<()> {
    use base64::Engine as _;
    let mut out =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\nbinaryData:\n");
    let mut total = 0;
    let mut keys = std::collections::HashSet::new();
    for f in files {
        let key = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!(
                "{}: the file name cannot be a ConfigMap key (letters, digits, '-', '_', '.')",
                f.display()
            );
        }
        if !keys.insert(key.clone()) {
            bail!("two files are named {key}");
        }
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        if !bytes.starts_with(b"\0asm") {
            bail!("{} is not a WebAssembly file", f.display());
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        total += encoded.len();
        out.push_str(&format!("  {key}: {encoded}\n"));
    }
    if total > CONFIGMAP_LIMIT {
        bail!(
            "the guests take {total} bytes encoded; a ConfigMap holds at most {CONFIGMAP_LIMIT}: build them smaller (release profile, opt-level \"s\", LTO, strip) or split them"
        );
    }
    print!("{out}");
    Ok(())
}

/// This boot's ID, or `None` (then reboots are not detected, and said so).
/// `DRA_TEST_BOOT_ID_FILE` replaces the kernel's file for end-to-end tests.
fn boot_id() -> Option<String> {
    use dra_wasm_host::state::boot::{BOOT_ID_PATH, TEST_BOOT_ID_FILE_ENV, read_boot_id};
    let path = match std::env::var_os(TEST_BOOT_ID_FILE_ENV) {
        Some(path) => {
            tracing::warn!(path = ?path, "{TEST_BOOT_ID_FILE_ENV} is set: the boot ID is read from a test file (never set this in production)");
            PathBuf::from(path)
        }
        None => PathBuf::from(BOOT_ID_PATH),
    };
    match read_boot_id(&path) {
        Ok(id) => {
            tracing::info!(boot_id = %id, "node boot ID");
            Some(id)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the node's boot ID: reboots will not be noticed, and claims prepared before one are not prepared again");
            None
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
