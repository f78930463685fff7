//! The `DRAPlugin` service, v1 and v1beta1 from one implementation: v1beta1
//! answers are the v1 answers without `share_id`, as the kubelet's own
//! v1beta1 conversion does.
//!
//! Every call is timed into `dra_grpc_operations_duration_seconds` with the
//! kubelet's labels (driver name, full gRPC method path, Go name of the
//! status code), so that dashboards built on the kubelet's metric of the
//! same name read this plugin's view too.

use crate::claim::ClaimRef;
use crate::driver::Driver;
use crate::metrics::Metrics;
use dra_proto::dra::{v1, v1beta1};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Process-wide request counter, like the Go helper's `requestID`, so the log
/// lines of one kubelet call can be found together.
static REQUEST_ID: AtomicU64 = AtomicU64::new(0);

/// Full gRPC method paths, as the kubelet's metric labels them.
const V1_PREPARE: &str = "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources";
const V1_UNPREPARE: &str = "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources";
const V1BETA1_PREPARE: &str = "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources";
const V1BETA1_UNPREPARE: &str = "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources";

#[derive(Clone)]
pub struct DraService {
    driver: Arc<Driver>,
    metrics: Arc<Metrics>,
}

impl DraService {
    pub fn new(driver: Arc<Driver>, metrics: Arc<Metrics>) -> Self {
        Self { driver, metrics }
    }

    /// Run one call and time it under `method`.
    async fn timed<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = std::time::Instant::now();
        let result = call.await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics
            .dra_grpc_operation(self.driver.name(), method, go_code_name(code), started.elapsed());
        result
    }

    async fn prepare(&self, claims: Vec<v1::Claim>, version: &'static str) -> v1::NodePrepareResourcesResponse {
        let id = REQUEST_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("NodePrepareResources", request_id = id, version, claims = claims.len());
        async {
            let refs: Vec<ClaimRef> = claims.into_iter().map(claim_ref).collect();
            let driver = Arc::clone(&self.driver);
            let uids = refs.iter().map(|c| c.uid.clone()).collect();
            let results = to_completion(uids, async move { driver.prepare(refs).await }).await;
            let claims: HashMap<String, v1::NodePrepareResourceResponse> = results
                .into_iter()
                .map(|(uid, result)| {
                    let response = match result {
                        Ok(devices) => v1::NodePrepareResourceResponse {
                            devices: devices
                                .into_iter()
                                .map(|d| v1::Device {
                                    request_names: d.request_names,
                                    pool_name: d.pool,
                                    device_name: d.device,
                                    cdi_device_ids: d.cdi_device_ids,
                                    share_id: d.share_id,
                                })
                                .collect(),
                            error: String::new(),
                        },
                        Err(error) => v1::NodePrepareResourceResponse { devices: vec![], error },
                    };
                    (uid, response)
                })
                .collect();
            v1::NodePrepareResourcesResponse { claims }
        }
        .instrument(span)
        .await
    }

    async fn unprepare(&self, claims: Vec<v1::Claim>, version: &'static str) -> v1::NodeUnprepareResourcesResponse {
        let id = REQUEST_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "NodeUnprepareResources",
            request_id = id,
            version,
            claims = claims.len()
        );
        async {
            let refs: Vec<ClaimRef> = claims.into_iter().map(claim_ref).collect();
            let driver = Arc::clone(&self.driver);
            let uids = refs.iter().map(|c| c.uid.clone()).collect();
            let claims = to_completion(uids, async move { driver.unprepare(refs).await })
                .await
                .into_iter()
                .map(|(uid, r)| {
                    let error = r.err().unwrap_or_default();
                    (uid, v1::NodeUnprepareResourceResponse { error })
                })
                .collect();
            v1::NodeUnprepareResourcesResponse { claims }
        }
        .instrument(span)
        .await
    }
}

/// Run a claim operation in a task of its own and wait for it. When the
/// kubelet's deadline (`grpc-timeout`, 45 s) passes or its connection goes,
/// tonic drops the handler future; were the operation that future, it would
/// stop at whatever it was awaiting: a guest's prepare done (a macvlan link
/// made, say) but never checkpointed, and so never undone. In its own task it
/// finishes and commits or undoes its work, and the kubelet's retry is
/// answered from the checkpoint. A panic in it is each claim's error.
async fn to_completion<T, E>(
    uids: Vec<String>,
    operation: impl Future<Output = Vec<(String, Result<T, E>)>> + Send + 'static,
) -> Vec<(String, Result<T, String>)>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::spawn(operation.in_current_span()).await {
        Ok(results) => results
            .into_iter()
            .map(|(uid, r)| (uid, r.map_err(|e| e.to_string())))
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "a claim operation panicked");
            uids.into_iter()
                .map(|uid| (uid, Err(format!("internal error in the driver host: {e}"))))
                .collect()
        }
    }
}

/// The name grpc-go's `codes.Code.String()` gives a status code (the
/// kubelet's `grpc_status_code` label): note `Canceled`, Go's spelling.
pub fn go_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn claim_ref(c: v1::Claim) -> ClaimRef {
    ClaimRef {
        namespace: c.namespace,
        name: c.name,
        uid: c.uid,
    }
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        request: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        self.timed(V1_PREPARE, async {
            Ok(Response::new(self.prepare(request.into_inner().claims, "v1").await))
        })
        .await
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        self.timed(V1_UNPREPARE, async {
            Ok(Response::new(self.unprepare(request.into_inner().claims, "v1").await))
        })
        .await
    }
}

fn claims_from_v1beta1(claims: Vec<v1beta1::Claim>) -> Vec<v1::Claim> {
    claims
        .into_iter()
        .map(|c| v1::Claim {
            namespace: c.namespace,
            uid: c.uid,
            name: c.name,
        })
        .collect()
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        request: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        self.timed(V1BETA1_PREPARE, async {
            let response = self
                .prepare(claims_from_v1beta1(request.into_inner().claims), "v1beta1")
                .await;
            let claims = response
                .claims
                .into_iter()
                .map(|(uid, r)| {
                    let devices = r
                        .devices
                        .into_iter()
                        .map(|d| v1beta1::Device {
                            request_names: d.request_names,
                            pool_name: d.pool_name,
                            device_name: d.device_name,
                            cdi_device_ids: d.cdi_device_ids,
                        })
                        .collect();
                    (
                        uid,
                        v1beta1::NodePrepareResourceResponse {
                            devices,
                            error: r.error,
                        },
                    )
                })
                .collect();
            Ok(Response::new(v1beta1::NodePrepareResourcesResponse { claims }))
        })
        .await
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        self.timed(V1BETA1_UNPREPARE, async {
            let response = self
                .unprepare(claims_from_v1beta1(request.into_inner().claims), "v1beta1")
                .await;
            let claims = response
                .claims
                .into_iter()
                .map(|(uid, r)| (uid, v1beta1::NodeUnprepareResourceResponse { error: r.error }))
                .collect();
            Ok(Response::new(v1beta1::NodeUnprepareResourcesResponse { claims }))
        })
        .await
    }
}
