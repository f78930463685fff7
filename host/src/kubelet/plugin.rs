//! The `DRAPlugin` service, v1 and v1beta1 from one implementation: v1beta1
//! answers are the v1 answers without `share_id`, as the kubelet's own
//! v1beta1 conversion does.
//!
//! Answers fit the kubelet (invariant 8): a claim's error is cut to
//! [`CLAIM_ERROR_BYTES`] with control characters escaped, and if the errors of
//! one call would still take the answer past grpc-go's 4 MiB receive limit
//! they are shortened further. The call never fails as a whole, and no good
//! claim of the batch loses its devices.
//!
//! Every call is timed into `dra_grpc_operations_duration_seconds` with the
//! kubelet's labels (driver name, full gRPC method path, Go name of the
//! status code), so that dashboards built on the kubelet's metric of the
//! same name read this plugin's view too.

use crate::claim::ClaimRef;
use crate::driver::Driver;
use crate::guest_text as text;
use crate::metrics::Metrics;
use dra_proto::dra::{v1, v1beta1};
use prost::Message;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Process-wide request counter, like the Go helper's `requestID`, so the log
/// lines of one kubelet call can be found together.
static REQUEST_ID: AtomicU64 = AtomicU64::new(0);

/// grpc-go's default receive limit, which the kubelet keeps, in bytes of
/// the encoded message.
pub const KUBELET_RECEIVE_LIMIT: usize = 4 << 20;
/// What one answer may take of it: room for the gRPC and HTTP/2 framing.
pub const ANSWER_LIMIT: usize = KUBELET_RECEIVE_LIMIT - (64 << 10);
/// One claim's error text (its guest's message is at most
/// [`text::MESSAGE_BYTES`] of it; the rest is the host's own words).
pub const CLAIM_ERROR_BYTES: usize = 2048;
/// An error is never shortened below this: an empty error reads as success.
const MIN_ERROR_BYTES: usize = 96;

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

    /// Run one call and time it under `method`. A call the kubelet
    /// abandons before the answer (its deadline passed or its connection
    /// closed: tonic drops this future) is recorded then, as `Canceled`.
    /// A call with no claims is not recorded: the kubelet never makes one,
    /// the liveness probe does (every 10 s), and it must not move the
    /// latency figures operators alert on.
    async fn timed<T>(
        &self,
        method: &'static str,
        claims: usize,
        call: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        if claims == 0 {
            return call.await;
        }
        let mut timer = CallTimer {
            service: self,
            method,
            started: std::time::Instant::now(),
            code: tonic::Code::Cancelled,
        };
        let result = call.await;
        timer.code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
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
            let mut response = v1::NodePrepareResourcesResponse { claims };
            fit_answer(&mut response, |r| r.claims.values_mut().map(|c| &mut c.error).collect());
            response
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
            let mut response = v1::NodeUnprepareResourcesResponse { claims };
            fit_answer(&mut response, |r| r.claims.values_mut().map(|c| &mut c.error).collect());
            response
        }
        .instrument(span)
        .await
    }
}

/// Run a claim operation to completion, whatever becomes of the call. When
/// the kubelet's deadline (`grpc-timeout`, 45 s) passes or its connection
/// goes, tonic drops the handler future; were the operation part of that
/// future, it would stop at whatever it was awaiting: a guest's prepare done
/// (a macvlan link made, say) but never checkpointed, and so never undone.
/// [`Detachable`] polls it in place, and if it is dropped unfinished the
/// rest runs on as a task of its own, which commits or undoes its work; the
/// kubelet's retry is answered from the checkpoint. A panic in it is each
/// claim's error.
async fn to_completion<T, E>(
    uids: Vec<String>,
    operation: impl Future<Output = Vec<(String, Result<T, E>)>> + Send + 'static,
) -> Vec<(String, Result<T, String>)>
where
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    match Detachable::new(operation.in_current_span()).await {
        Ok(results) => results
            .into_iter()
            .map(|(uid, r)| (uid, r.map_err(|e| claim_error(&crate::error::chain(&e)))))
            .collect(),
        Err(panic) => {
            tracing::error!(error = %panic, "a claim operation panicked");
            uids.into_iter()
                .map(|uid| {
                    let error = format!("internal error in the driver host: {panic}");
                    (uid, Err(claim_error(&error)))
                })
                .collect()
        }
    }
}

/// A future polled where it is awaited (no task, no thread hop on the common
/// path), which, if dropped before it completes, is spawned to finish on its
/// own. Spawning every operation up front would cost a task, and often the
/// wake-up of another worker thread, on every call.
struct Detachable<F: Future + Send + 'static> {
    future: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> Detachable<F> {
    fn new(future: F) -> Self {
        Self {
            future: Some(Box::pin(future)),
        }
    }
}

impl<F: Future + Send + 'static> Future for Detachable<F> {
    /// The operation's output, or the message of its panic.
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let future = this.future.as_mut().expect("Detachable polled after completion");
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                this.future = None;
                Poll::Ready(Ok(output))
            }
            Err(panic) => {
                // A panicked future is not polled again, here or in a task.
                this.future = None;
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                Poll::Ready(Err(message))
            }
        }
    }
}

impl<F: Future + Send + 'static> Drop for Detachable<F> {
    fn drop(&mut self) {
        let Some(rest) = self.future.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::info!("the kubelet gave up on the call; its claim operation finishes in the background");
                runtime.spawn(async move {
                    rest.await;
                });
            }
            Err(_) => tracing::error!("a claim operation was abandoned outside the runtime; it cannot finish"),
        }
    }
}

/// A claim's error as the kubelet gets it: bounded, control characters escaped.
fn claim_error(error: &str) -> String {
    text::bounded(error, CLAIM_ERROR_BYTES)
}

/// Shorten the error texts of an answer until it encodes to at most
/// [`ANSWER_LIMIT`] bytes. Each error keeps a share of what is left after
/// everything else, in proportion to its length, and never less than
/// [`MIN_ERROR_BYTES`]; devices are never touched.
fn fit_answer<M: Message>(answer: &mut M, errors: impl for<'a> Fn(&'a mut M) -> Vec<&'a mut String>) {
    let size = answer.encoded_len();
    if size <= ANSWER_LIMIT {
        return;
    }
    let mut errors = errors(answer);
    errors.retain(|e| !e.is_empty());
    let total: usize = errors.iter().map(|e| e.len()).sum();
    // A shorter string also needs fewer bytes for its length prefix: count
    // a few bytes per error as spent, so one pass suffices.
    let target = total.saturating_sub(size - ANSWER_LIMIT + 8 * errors.len());
    for e in &mut errors {
        let keep = ((e.len() as u128 * target as u128) / total.max(1) as u128) as usize;
        let keep = keep.max(MIN_ERROR_BYTES);
        if e.len() > keep {
            **e = text::bounded(e, keep);
        }
    }
    let shortened = errors.len();
    let size_now = answer.encoded_len();
    if size_now > ANSWER_LIMIT {
        tracing::error!(
            size = size_now,
            limit = KUBELET_RECEIVE_LIMIT,
            "the answer is still over the kubelet's receive limit with every error at its shortest"
        );
    } else {
        tracing::warn!(
            from = size,
            to = size_now,
            errors = shortened,
            "claim errors shortened to keep the answer under the kubelet's 4 MiB receive limit"
        );
    }
}

/// Records one call into `dra_grpc_operations_duration_seconds` when dropped.
struct CallTimer<'a> {
    service: &'a DraService,
    method: &'static str,
    started: std::time::Instant,
    code: tonic::Code,
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        self.service.metrics.dra_grpc_operation(
            self.service.driver.name(),
            self.method,
            go_code_name(self.code),
            self.started.elapsed(),
        );
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
        let claims = request.into_inner().claims;
        self.timed(V1_PREPARE, claims.len(), async {
            Ok(Response::new(self.prepare(claims, "v1").await))
        })
        .await
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        self.timed(V1_UNPREPARE, claims.len(), async {
            Ok(Response::new(self.unprepare(claims, "v1").await))
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
        let claims = claims_from_v1beta1(request.into_inner().claims);
        self.timed(V1BETA1_PREPARE, claims.len(), async {
            let response = self.prepare(claims, "v1beta1").await;
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
        let claims = claims_from_v1beta1(request.into_inner().claims);
        self.timed(V1BETA1_UNPREPARE, claims.len(), async {
            let response = self.unprepare(claims, "v1beta1").await;
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod in_process;
