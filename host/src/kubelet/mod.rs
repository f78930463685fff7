//! Everything the kubelet talks to: the registration socket, the DRA socket
//! (DRAPlugin v1 and v1beta1, DRAResourceHealth v1 and v1alpha1) and the
//! gRPC liveness service.
//!
//! Start order matters: the DRA socket is listening before the registration
//! socket appears, so the kubelet can call the plugin as soon as it sees it.
//! Stop order is the reverse: health streams end, the registration socket goes
//! (the kubelet deregisters the plugin), then the DRA server drains and its
//! socket goes.

mod connection;
pub mod health;
pub mod liveness;
pub mod names;
mod plugin;
pub mod registration;
mod socket;

pub use names::{NameError, validate_driver_name, validate_endpoint, validate_pod_uid};
pub use registration::RegistrationState;

use crate::driver::Driver;
use crate::metrics::Metrics;
use connection::{KubeletConn, SocketInfo};
use dra_proto::dra::{v1, v1beta1};
use dra_proto::health as health_api;
use dra_proto::pluginregistration::PluginInfo;
use dra_proto::pluginregistration::registration_server::RegistrationServer;
use dra_proto::services;
use futures_util::TryStreamExt;
use socket::SocketFile;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

/// Where one driver's sockets live.
#[derive(Clone, Debug)]
pub struct PluginPaths {
    pub kubelet_root: PathBuf,
    /// `<root>/plugins_registry/<driver>-reg.sock`, or in rolling-update
    /// mode a name with the pod UID (see [`names::rolling_update_registration_socket`]).
    pub registration_socket: PathBuf,
    /// `<root>/plugins/<driver>`: the driver's own directory.
    pub plugin_dir: PathBuf,
    /// `<plugin dir>/dra.sock`, or `<plugin dir>/dra-<pod UID>.sock`.
    pub dra_socket: PathBuf,
    /// Rolling-update mode: this pod's UID.
    pub rolling_update_uid: Option<String>,
}

impl PluginPaths {
    pub fn new(kubelet_root: &Path, driver: &str) -> Self {
        let plugin_dir = kubelet_root.join("plugins").join(driver);
        Self {
            kubelet_root: kubelet_root.to_owned(),
            registration_socket: kubelet_root.join("plugins_registry").join(format!("{driver}-reg.sock")),
            dra_socket: plugin_dir.join("dra.sock"),
            plugin_dir,
            rolling_update_uid: None,
        }
    }

    /// Socket names for the kubelet's rolling-update mode (kubelet >= 1.33):
    /// two pods of the DaemonSet, old and new, serve the driver side by side,
    /// each on sockets named with its pod UID.
    pub fn rolling_update(kubelet_root: &Path, driver: &str, pod_uid: &str) -> Self {
        let plugin_dir = kubelet_root.join("plugins").join(driver);
        Self {
            kubelet_root: kubelet_root.to_owned(),
            registration_socket: names::rolling_update_registration_socket(
                &kubelet_root.join("plugins_registry"),
                driver,
                pod_uid,
            ),
            dra_socket: plugin_dir.join(format!("dra-{pod_uid}.sock")),
            plugin_dir,
            rolling_update_uid: Some(pod_uid.to_owned()),
        }
    }

    /// Check both socket paths as the kubelet will.
    pub fn validate(&self) -> Result<(), NameError> {
        if let Some(uid) = &self.rolling_update_uid {
            validate_pod_uid(uid)?;
        }
        validate_endpoint(&self.dra_socket, &self.kubelet_root)?;
        validate_endpoint(&self.registration_socket, &self.kubelet_root)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("socket {}", path.display())]
    Socket { path: PathBuf, source: std::io::Error },
}

/// In rolling-update mode, how long the DRA socket keeps serving after the
/// registration socket is gone: the kubelet notices the removal (inotify on
/// `plugins_registry`) and sends new calls to the other pod; calls it had
/// already routed here still get answers.
pub const ROLLING_UPDATE_DEREGISTER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A driver's running servers.
pub struct RunningPlugin {
    driver: String,
    rolling_update: bool,
    registration: Server,
    dra: Server,
    state: watch::Receiver<RegistrationState>,
    stopping: watch::Sender<bool>,
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    socket: SocketFile,
}

/// How long a stopping server waits for calls in flight and for clients to
/// close their connections. The kubelet closes on GOAWAY at once; a client
/// that does not must not keep the host (and its sockets) alive.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::warn!(socket = ?self.socket, "clients did not close within {DRAIN_TIMEOUT:?}; closing their connections");
                task.abort();
            }
        }
        drop(self.socket);
    }
}

impl RunningPlugin {
    pub fn registration_state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Deregister (remove the registration socket), then drain and close the DRA socket.
    pub async fn stop(self) {
        // Long-lived health streams end first, so the drain below only waits
        // for prepare/unprepare calls in flight.
        self.stopping.send_replace(true);
        self.registration.stop().await;
        if self.rolling_update {
            tokio::time::sleep(ROLLING_UPDATE_DEREGISTER_GRACE).await;
        }
        self.dra.stop().await;
        tracing::info!(driver = %self.driver, "plugin sockets closed");
    }
}

/// The services a plugin advertises, preferred first (the kubelet picks the
/// first one it knows).
pub fn supported_versions() -> Vec<String> {
    [
        services::DRA_PLUGIN_V1,
        services::DRA_PLUGIN_V1BETA1,
        services::HEALTH_V1,
        services::HEALTH_V1ALPHA1,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Serve a driver: DRA socket first, then the registration socket.
pub async fn serve(
    driver: Arc<Driver>,
    paths: &PluginPaths,
    metrics: Arc<Metrics>,
) -> Result<RunningPlugin, ServeError> {
    validate_driver_name(driver.name())?;
    paths.validate()?;
    let socket_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ServeError::Socket { path, source }
    };
    crate::state::fsutil::ensure_dir(&paths.plugin_dir, 0o750).map_err(socket_err(&paths.plugin_dir))?;
    let reg_dir = paths.registration_socket.parent().unwrap_or(Path::new("/"));
    crate::state::fsutil::ensure_dir(reg_dir, 0o750).map_err(socket_err(reg_dir))?;

    let service = plugin::DraService::new(Arc::clone(&driver), Arc::clone(&metrics));
    let (stopping, stopping_rx) = watch::channel(false);
    let health = health::HealthService::new(
        driver.name(),
        Arc::clone(driver.health()),
        stopping_rx,
        Arc::clone(&metrics),
    );
    let socket_info = |kind, path: &Path| {
        Arc::new(SocketInfo {
            driver: driver.name().to_owned(),
            kind,
            path: path.to_owned(),
            metrics: Arc::clone(&metrics),
        })
    };
    let (listener, socket) = SocketFile::bind(&paths.dra_socket).map_err(socket_err(&paths.dra_socket))?;
    let router = tonic::transport::Server::builder()
        .add_service(v1::dra_plugin_server::DraPluginServer::new(service.clone()))
        .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(service))
        .add_service(health_api::v1::dra_resource_health_server::DraResourceHealthServer::new(health.clone()))
        .add_service(health_api::v1alpha1::dra_resource_health_server::DraResourceHealthServer::new(health));
    let dra = spawn(router, listener, socket, socket_info("dra", &paths.dra_socket));

    let info = PluginInfo {
        r#type: services::DRA_PLUGIN_TYPE.to_owned(),
        name: driver.name().to_owned(),
        endpoint: paths.dra_socket.to_string_lossy().into_owned(),
        supported_versions: supported_versions(),
    };
    let registration_info = socket_info("registration", &paths.registration_socket);
    let (registration, state) = registration::RegistrationService::new(info, metrics);
    let (listener, socket) =
        SocketFile::bind(&paths.registration_socket).map_err(socket_err(&paths.registration_socket))?;
    let router = tonic::transport::Server::builder().add_service(RegistrationServer::new(registration));
    let registration = spawn(router, listener, socket, registration_info);
    tracing::info!(
        driver = %driver.name(),
        dra_socket = %paths.dra_socket.display(),
        registration_socket = %paths.registration_socket.display(),
        "plugin sockets open"
    );
    Ok(RunningPlugin {
        driver: driver.name().to_owned(),
        rolling_update: paths.rolling_update_uid.is_some(),
        registration,
        dra,
        state,
        stopping,
    })
}

/// Serve `router` on `listener`, each connection through the adapter that
/// lets the kubelet's own gRPC clients in (see [`connection`]).
fn spawn(
    router: tonic::transport::server::Router,
    listener: tokio::net::UnixListener,
    socket: SocketFile,
    info: Arc<SocketInfo>,
) -> Server {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let what = info.kind;
        let incoming = UnixListenerStream::new(listener).map_ok(move |io| KubeletConn::new(io, Arc::clone(&info)));
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(server = what, error = %e, "gRPC server failed");
        }
    });
    Server { stop, task, socket }
}
