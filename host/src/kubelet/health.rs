//! `DRAResourceHealth` (v1 and v1alpha1, same messages): a stream per kubelet
//! watch, carrying the complete device list of the driver.
//!
//! A stream sends the list when it opens, again at once after every change,
//! and again every [`RESEND`] when nothing changed, well inside
//! [`TIMEOUT_SECONDS`] (the kubelet marks devices Unknown when their report
//! is older). Streams end when the host stops.

use crate::health::{Health, Snapshot, Status};
use crate::metrics::Metrics;
use dra_proto::health::{v1, v1alpha1};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status as GrpcStatus};

/// How often an unchanged list is sent again. Under the 30 s the 1.34
/// kubelet (which ignores `health_check_timeout_seconds`) waits.
pub const RESEND: Duration = Duration::from_secs(20);
/// How long the kubelet may trust a report (1.35+).
pub const TIMEOUT_SECONDS: i64 = 60;

#[derive(Clone)]
pub struct HealthService {
    health: Arc<Health>,
    stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    driver: String,
}

impl HealthService {
    pub fn new(driver: &str, health: Arc<Health>, stopping: watch::Receiver<bool>, metrics: Arc<Metrics>) -> Self {
        Self {
            health,
            stopping,
            metrics,
            driver: driver.to_owned(),
        }
    }

    fn open<T: Send + 'static>(
        &self,
        version: &'static str,
        convert: fn(&Snapshot) -> T,
    ) -> ReceiverStream<Result<T, GrpcStatus>> {
        let (tx, rx) = mpsc::channel(4);
        let mut changes = self.health.subscribe();
        let mut stopping = self.stopping.clone();
        let metrics = Arc::clone(&self.metrics);
        let driver = self.driver.clone();
        tokio::spawn(async move {
            metrics.health_stream_opened(&driver, 1);
            tracing::info!(driver = %driver, version, "kubelet opened a health stream");
            let mut snapshot = changes.borrow_and_update().clone();
            let mut resend = tokio::time::interval_at(tokio::time::Instant::now() + RESEND, RESEND);
            loop {
                if tx.send(Ok(convert(&snapshot))).await.is_err() {
                    break;
                }
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() { break; }
                        snapshot = changes.borrow_and_update().clone();
                        resend.reset();
                    }
                    _ = resend.tick() => {}
                    _ = stopping.wait_for(|s| *s) => break,
                    _ = tx.closed() => break,
                }
            }
            metrics.health_stream_opened(&driver, -1);
            tracing::info!(driver = %driver, version, "health stream closed");
        });
        ReceiverStream::new(rx)
    }
}

fn v1_status(s: Status) -> v1::HealthStatus {
    match s {
        Status::Healthy => v1::HealthStatus::Healthy,
        Status::Unhealthy => v1::HealthStatus::Unhealthy,
        Status::Unknown => v1::HealthStatus::Unknown,
    }
}

fn to_v1(snapshot: &Snapshot) -> v1::NodeWatchResourcesResponse {
    v1::NodeWatchResourcesResponse {
        devices: snapshot
            .iter()
            .map(|d| v1::DeviceHealth {
                device: Some(v1::DeviceIdentifier {
                    pool_name: d.pool.clone(),
                    device_name: d.device.clone(),
                }),
                health: v1_status(d.status) as i32,
                last_updated_time: d.updated,
                health_check_timeout_seconds: TIMEOUT_SECONDS,
                message: d.message.clone(),
            })
            .collect(),
    }
}

/// v1alpha1 has the same fields and numbers as v1.
fn to_v1alpha1(snapshot: &Snapshot) -> v1alpha1::NodeWatchResourcesResponse {
    v1alpha1::NodeWatchResourcesResponse {
        devices: to_v1(snapshot)
            .devices
            .into_iter()
            .map(|d| v1alpha1::DeviceHealth {
                device: d.device.map(|i| v1alpha1::DeviceIdentifier {
                    pool_name: i.pool_name,
                    device_name: i.device_name,
                }),
                health: d.health,
                last_updated_time: d.last_updated_time,
                health_check_timeout_seconds: d.health_check_timeout_seconds,
                message: d.message,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl v1::dra_resource_health_server::DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = ReceiverStream<Result<v1::NodeWatchResourcesResponse, GrpcStatus>>;

    async fn node_watch_resources(
        &self,
        _request: Request<v1::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, GrpcStatus> {
        Ok(Response::new(self.open("v1", to_v1)))
    }
}

#[tonic::async_trait]
impl v1alpha1::dra_resource_health_server::DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = ReceiverStream<Result<v1alpha1::NodeWatchResourcesResponse, GrpcStatus>>;

    async fn node_watch_resources(
        &self,
        _request: Request<v1alpha1::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, GrpcStatus> {
        Ok(Response::new(self.open("v1alpha1", to_v1alpha1)))
    }
}
