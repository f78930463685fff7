//! A standard `grpc.health.v1` service on TCP for the pod's liveness probe.
//!
//! `Check` answers SERVING only when, for every driver, `GetInfo` on its own
//! registration socket and an empty `NodePrepareResources` on its own DRA
//! socket both succeed: the probe exercises the same sockets and servers the
//! kubelet uses, so a wedged server restarts the pod.

use dra_proto::dra::v1;
use dra_proto::pluginregistration::InfoRequest;
use dra_proto::pluginregistration::registration_client::RegistrationClient;
use std::path::PathBuf;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The sockets of one driver that the check exercises.
#[derive(Clone, Debug)]
pub struct Probe {
    pub driver: String,
    pub registration_socket: PathBuf,
    pub dra_socket: PathBuf,
}

impl Probe {
    /// The check of `driver` served at `paths`.
    pub fn of(driver: &str, paths: &super::PluginPaths) -> Self {
        Self {
            driver: driver.to_owned(),
            registration_socket: paths.registration_socket.clone(),
            dra_socket: paths.dra_socket.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Liveness {
    probes: Vec<Probe>,
}

impl Liveness {
    pub fn new(probes: Vec<Probe>) -> Self {
        Self { probes }
    }

    /// Check every driver's sockets once: `Err` names the driver and what
    /// failed. The gRPC service and the `probe` command both run this.
    pub async fn healthy(&self) -> Result<(), String> {
        for p in &self.probes {
            let check = async {
                let channel = dra_proto::connect_uds(&p.registration_socket)
                    .await
                    .map_err(|e| format!("registration socket: {e}"))?;
                let info = RegistrationClient::new(channel)
                    .get_info(InfoRequest {})
                    .await
                    .map_err(|e| format!("GetInfo: {e}"))?;
                if info.get_ref().name != p.driver {
                    return Err(format!("GetInfo answered driver {:?}", info.get_ref().name));
                }
                let channel = dra_proto::connect_uds(&p.dra_socket)
                    .await
                    .map_err(|e| format!("DRA socket: {e}"))?;
                v1::dra_plugin_client::DraPluginClient::new(channel)
                    .node_prepare_resources(v1::NodePrepareResourcesRequest { claims: vec![] })
                    .await
                    .map_err(|e| format!("NodePrepareResources: {e}"))?;
                Ok(())
            };
            match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("driver {}: {e}", p.driver)),
                Err(_) => return Err(format!("driver {}: no answer within {CHECK_TIMEOUT:?}", p.driver)),
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Health for Liveness {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !service.is_empty() && service != "liveness" {
            return Err(Status::not_found(format!(
                "unknown service {service:?}; ask for \"\" or \"liveness\""
            )));
        }
        let status = match self.healthy().await {
            Ok(()) => ServingStatus::Serving,
            Err(reason) => {
                tracing::warn!(reason = %reason, "liveness check failed");
                ServingStatus::NotServing
            }
        };
        Ok(Response::new(HealthCheckResponse { status: status as i32 }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, _request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("use Check; liveness is computed on demand"))
    }
}

/// Serve the liveness service on `listener` until `shutdown` resolves.
pub fn serve(
    listener: tokio::net::TcpListener,
    liveness: Liveness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving gRPC liveness");
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(HealthServer::new(liveness))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "liveness server failed");
        }
    })
}
