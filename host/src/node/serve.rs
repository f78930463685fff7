//! Node mode (`dra-wasm-host run`): every configured driver assembled and
//! served to the kubelet until SIGTERM or SIGINT.

use super::{EventDelivery, Node, StartError};
use crate::config::{Config, DriverConfig};
use crate::driver::GuestUpdates;
use crate::guest::GuestFileWatcher;
use crate::imports::net;
use crate::kube::publisher::{self, Publisher};
use crate::kubelet::{self, liveness};
use crate::metrics::{self, Metrics};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// What serves one driver; dropping it (after [`kubelet::RunningPlugin::stop`])
/// removes the driver's attach socket.
pub struct ServedDriver {
    pub plugin: kubelet::RunningPlugin,
    pub probe: liveness::Probe,
    pub attach: Option<net::attach::AttachServer>,
}

/// Serve the drivers of the config at `config_path` until SIGTERM or
/// SIGINT, then deregister and drain. A driver that fails to start is logged
/// and the others are served; it is an error when none starts (or the only
/// one fails).
pub async fn run(config_path: &Path, rolling_update_uid: Option<String>) -> Result<(), StartError> {
    let config = Config::load(config_path)?;
    if let Some(uid) = &rolling_update_uid {
        kubelet::validate_pod_uid(uid).map_err(StartError::PodUid)?;
        tracing::info!(pod_uid = %uid, "rolling-update mode: sockets named with the pod UID, claim operations serialized by file lock");
    }
    let node = config.node_name()?;
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
    let host = Node::connect(&config, &node, Arc::clone(&metrics), rolling_update_uid, boot_id()).await?;

    let mut plugins = Vec::new();
    let mut probes = Vec::new();
    let mut attach_servers = Vec::new();
    for d in &config.drivers {
        match host.start_driver(d).await {
            Ok(served) => {
                metrics.set_driver_up(&d.name, true);
                plugins.push(served.plugin);
                probes.push(served.probe);
                attach_servers.extend(served.attach);
            }
            Err(e) => {
                metrics.set_driver_up(&d.name, false);
                tracing::error!(driver = %d.name, error = %super::Chain(&e), "driver failed to start; the other drivers are served");
                if config.drivers.len() == 1 {
                    return Err(e);
                }
            }
        }
    }
    if plugins.is_empty() {
        return Err(StartError::NoDriver);
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

impl Node {
    /// Assemble `d` ([`Node::assemble`]) and serve it: the guest file
    /// watched for hot swaps, the kubelet's sockets, the ResourceSlice
    /// publisher, the attach socket of a `net` driver.
    pub async fn start_driver(&self, d: &DriverConfig) -> Result<ServedDriver, StartError> {
        let paths = self.paths(&d.name);
        paths.validate().map_err(|source| StartError::Paths {
            driver: d.name.clone(),
            source,
        })?;
        let assembled = self.assemble(d, &paths, EventDelivery::Served).await?;
        let driver = assembled.driver;
        if self.hot_swap.enabled {
            let watcher =
                GuestFileWatcher::new(&d.guest, self.hot_swap.debounce()).map_err(|source| StartError::WatchGuest {
                    driver: d.name.clone(),
                    source,
                })?;
            let updates = GuestUpdates {
                runtime: Arc::clone(&self.loader.runtime),
                spec: assembled.spec,
                watcher,
            };
            tokio::spawn(Arc::clone(&driver).run_guest_updates(updates));
            tracing::info!(driver = %d.name, guest = %d.guest.display(), "watching the guest file for updates");
        }
        tracing::info!(driver = %d.name, prepared = driver.checkpoint().len(), "checkpoint loaded");
        // The attach socket before registration: once the kubelet knows the
        // driver, everything a prepared claim's hook needs is there.
        let attach = match assembled.net {
            Some(nd) => {
                let socket = net::attach::socket_path(&paths.plugin_dir, self.rolling_update_uid.as_deref());
                Some(
                    net::attach::serve(nd, &socket).map_err(|source| StartError::AttachSocket {
                        driver: d.name.clone(),
                        path: socket,
                        source,
                    })?,
                )
            }
            None => None,
        };
        let metrics = &self.loader.metrics;
        let plugin = kubelet::serve(Arc::clone(&driver), &paths, Arc::clone(metrics))
            .await
            .map_err(|source| StartError::Serve {
                driver: d.name.clone(),
                source,
            })?;
        match &self.api {
            Some(api) => {
                let mut publisher = Publisher::new(
                    api.clone(),
                    &d.name,
                    self.loader.node(),
                    self.node_uid.clone(),
                    Arc::clone(metrics),
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
        let probe = liveness::Probe::of(&d.name, &paths);
        Ok(ServedDriver { plugin, probe, attach })
    }
}

/// Bind `addr` and hand the listener to `serve`.
///
/// In rolling-update mode on the host network (the networking driver's
/// DaemonSet), the pod being replaced still holds the port while this one
/// starts. Failing would stop the rollout, and sharing it (`SO_REUSEPORT`)
/// would let the old pod answer this one's liveness probe; so the port is
/// taken over when the old pod lets it go, checked twice a second.
async fn serve_tcp<F>(addr: std::net::SocketAddr, what: &'static str, rolling: bool, serve: F) -> Result<(), StartError>
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
                        Err(e) => return tracing::error!(%addr, what, error = %super::Chain(&e), "cannot listen"),
                    }
                }
            });
            Ok(())
        }
        Err(source) => Err(StartError::Listen { what, addr, source }),
    }
}

/// This boot's ID, or `None` (then reboots are not detected, and said so).
/// `DRA_TEST_BOOT_ID_FILE` replaces the kernel's file for end-to-end tests.
pub fn boot_id() -> Option<String> {
    use crate::state::boot::{BOOT_ID_PATH, TEST_BOOT_ID_FILE_ENV, read_boot_id};
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

async fn wait_for_signal() -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let handler = |signal| move |source| StartError::Signal { signal, source };
    let mut term = signal(SignalKind::terminate()).map_err(handler("SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(handler("SIGINT"))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
