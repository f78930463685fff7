//! `pluginregistration.Registration`: how the kubelet learns who we are.

use crate::metrics::Metrics;
use dra_proto::pluginregistration::registration_server::Registration;
use dra_proto::pluginregistration::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// What the kubelet last told us about our registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// GetInfo has not been followed by a status yet.
    Pending,
    Registered,
    Failed(String),
}

pub struct RegistrationService {
    info: PluginInfo,
    metrics: Arc<Metrics>,
    state: watch::Sender<RegistrationState>,
}

impl RegistrationService {
    pub fn new(info: PluginInfo, metrics: Arc<Metrics>) -> (Self, watch::Receiver<RegistrationState>) {
        let (state, rx) = watch::channel(RegistrationState::Pending);
        (Self { info, metrics, state }, rx)
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _request: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::info!(driver = %self.info.name, endpoint = %self.info.endpoint, versions = ?self.info.supported_versions, "kubelet asked for plugin info");
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        self.metrics.set_registered(&self.info.name, status.plugin_registered);
        if status.plugin_registered {
            tracing::info!(driver = %self.info.name, "kubelet registered the plugin");
            self.state.send_replace(RegistrationState::Registered);
            Ok(Response::new(RegistrationStatusResponse {}))
        } else {
            // As the Go helper does: record it and answer with an error.
            tracing::error!(driver = %self.info.name, error = %status.error, "kubelet refused to register the plugin");
            self.state.send_replace(RegistrationState::Failed(status.error.clone()));
            Err(Status::internal(format!(
                "failed registration process: {}",
                status.error
            )))
        }
    }
}
