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
    async fn timed<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: usize) -> v1::Device {
        v1::Device {
            request_names: vec!["gpu".into()],
            pool_name: "node-a".into(),
            device_name: format!("gpu-{n}"),
            cdi_device_ids: vec![format!("k8s.gpu.example.com/device=uid_gpu-{n}")],
            share_id: None,
        }
    }

    #[test]
    fn errors_are_shortened_to_fit_and_good_claims_keep_their_devices() {
        // 3,000 failed claims with 2 KiB errors (6 MiB) and one good claim.
        let mut claims: HashMap<String, v1::NodePrepareResourceResponse> = (0..3000)
            .map(|i| {
                let response = v1::NodePrepareResourceResponse {
                    devices: vec![],
                    error: format!("claim {i}: {}", "e".repeat(CLAIM_ERROR_BYTES - 20)),
                };
                (format!("uid-{i}"), response)
            })
            .collect();
        let good = v1::NodePrepareResourceResponse {
            devices: (0..8).map(device).collect(),
            error: String::new(),
        };
        claims.insert("good".into(), good.clone());
        let mut answer = v1::NodePrepareResourcesResponse { claims };
        assert!(answer.encoded_len() > KUBELET_RECEIVE_LIMIT);

        fit_answer(&mut answer, |r| r.claims.values_mut().map(|c| &mut c.error).collect());
        assert!(answer.encoded_len() <= ANSWER_LIMIT, "{}", answer.encoded_len());
        assert_eq!(answer.claims.len(), 3001);
        assert_eq!(answer.claims["good"], good);
        for (uid, c) in &answer.claims {
            if uid != "good" {
                assert!(c.error.starts_with("claim "), "{:?}", c.error);
                assert!(c.error.ends_with("bytes cut]"), "{:?}", c.error);
            }
        }
    }

    #[test]
    fn an_answer_under_the_limit_is_left_alone() {
        let mut answer = v1::NodeUnprepareResourcesResponse {
            claims: [(
                "a".to_owned(),
                v1::NodeUnprepareResourceResponse {
                    error: "x".repeat(4000),
                },
            )]
            .into(),
        };
        let before = answer.clone();
        fit_answer(&mut answer, |r| r.claims.values_mut().map(|c| &mut c.error).collect());
        assert_eq!(answer, before);
    }

    #[tokio::test]
    async fn an_abandoned_operation_finishes_in_the_background() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (done, finished) = tokio::sync::oneshot::channel();
        let call = Detachable::new(async move {
            let _ = wait.await;
            let _ = done.send("committed");
        });
        // The kubelet's deadline passes while the operation waits.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), call)
                .await
                .is_err()
        );
        go.send(()).unwrap();
        let finished = tokio::time::timeout(std::time::Duration::from_secs(5), finished).await;
        assert_eq!(finished.expect("the rest ran as a task").unwrap(), "committed");
    }

    #[tokio::test]
    async fn a_panicking_operation_is_an_error_not_a_lost_connection() {
        let outcome = Detachable::new(async { panic!("guest glue broke") }).await;
        assert_eq!(outcome.unwrap_err(), "guest glue broke");
        assert_eq!(Detachable::new(async { 7 }).await, Ok(7));
    }
}

/// The handlers in process, with the real example guest, CDI writer and
/// checkpoint (on a tmpfs when there is one). `fuzz_grpc_handlers` (see
/// [`crate::fuzzing`]): arbitrary requests (structured, and protobuf bytes
/// mangled before decoding) get one answer per claim UID, never touch files
/// outside the driver's folders, and leave nothing behind after unprepare.
#[cfg(test)]
mod in_process {
    use super::*;
    use crate::fuzzing::fuzz;
    use crate::guest::{CompileCache, Guest, GuestSpec, Limits, Runtime};
    use crate::health::Health;
    use crate::imports::{Capabilities, Imports};
    use crate::kube::{ClaimSource, FetchError, FetchFuture, StatusFuture};
    use crate::model;
    use crate::policy::Policy;
    use crate::state::cdi::CdiWriter;
    use crate::state::checkpoint::Checkpoint;
    use dra_proto::dra::v1::dra_plugin_server::DraPlugin as V1;
    use dra_proto::dra::v1beta1::dra_plugin_server::DraPlugin as V1beta1;
    use k8s_openapi::api::resource::v1::ResourceClaim;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use prost::Message;
    use std::collections::HashSet;

    const DRIVER: &str = "example.dra.dev";

    fn uid(n: u8) -> String {
        format!("00000000-0000-4000-8000-0000000000{n:02x}")
    }

    /// The claims the API server knows: `c<n>` in `default`, UID `uid(n)`.
    #[derive(Debug)]
    struct Claims(HashMap<(String, String), ResourceClaim>);

    impl Claims {
        fn new() -> Self {
            let devices: [&[(&str, &str)]; 5] = [
                &[(DRIVER, "gpu-0")],
                &[(DRIVER, "gpu-1"), (DRIVER, "gpu-2")],
                &[("other.example.com", "nic-0")],
                &[(DRIVER, "gpu-99")],
                &[(DRIVER, "gpu-3"), ("other.example.com", "nic-1")],
            ];
            let mut map = HashMap::new();
            for (n, devs) in devices.iter().enumerate() {
                let results: Vec<_> = devs
                    .iter()
                    .map(|(driver, device)| {
                        serde_json::json!({ "request": "r", "driver": driver, "pool": "fuzz-node", "device": device })
                    })
                    .collect();
                let claim: ResourceClaim = serde_json::from_value(serde_json::json!({
                    "metadata": { "namespace": "default", "name": format!("c{n}"), "uid": uid(n as u8) },
                    "spec": {},
                    "status": { "allocation": { "devices": { "results": results } } },
                }))
                .expect("claim");
                map.insert(("default".to_owned(), format!("c{n}")), claim);
            }
            Self(map)
        }
    }

    impl ClaimSource for Claims {
        fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> FetchFuture<'a> {
            let found = self.0.get(&(namespace.to_owned(), name.to_owned())).cloned();
            Box::pin(async move {
                found.ok_or_else(|| FetchError::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            })
        }

        fn set_driver_status<'a>(
            &'a self,
            _: &'a ClaimRef,
            _: &'a str,
            _: Vec<k8s_openapi::api::resource::v1::AllocatedDeviceStatus>,
        ) -> StatusFuture<'a> {
            Box::pin(async { Ok(()) })
        }
    }

    struct Bench {
        rt: tokio::runtime::Runtime,
        service: DraService,
        driver: Arc<Driver>,
        root: tempfile::TempDir,
        claims: Arc<Claims>,
        /// Answer entries with devices: inputs that reached the guest and the files.
        served: std::sync::atomic::AtomicU64,
    }

    fn bench() -> Bench {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let shm = std::path::Path::new("/dev/shm");
        let root = if shm.is_dir() {
            tempfile::tempdir_in(shm).expect("tmpfs dir")
        } else {
            tempfile::tempdir().expect("temp dir")
        };
        let metrics = Metrics::new();
        let claims = Arc::new(Claims::new());
        let driver = rt.block_on(async {
            let runtime = Runtime::new(
                CompileCache::new(None).expect("cache"),
                std::time::Duration::from_millis(10),
            )
            .expect("engine");
            let (tx, _rx) = tokio::sync::mpsc::channel(16);
            let spec = GuestSpec {
                path: std::path::PathBuf::from(crate::BUILT_GUESTS_DIR).join("example_driver.wasm"),
                ctx: model::InitContext {
                    driver_name: DRIVER.into(),
                    node_name: "fuzz-node".into(),
                    config: r#"{"devices":4}"#.into(),
                },
                limits: Limits::default(),
                imports: Imports::new(&[], DRIVER, &Capabilities::default(), &tx).expect("imports"),
            };
            let (guest, report) = Guest::load(&runtime, &metrics, &spec).await.expect("example guest");
            Arc::new(Driver::new(crate::driver::DriverParts {
                name: DRIVER.into(),
                guest,
                claims: Arc::clone(&claims) as Arc<dyn ClaimSource>,
                cdi: CdiWriter::new(&root.path().join("cdi"), "k8s.example.dra.dev", "device").expect("cdi"),
                checkpoint: Checkpoint::open(&root.path().join("claims"), DRIVER).expect("checkpoint"),
                policy: Policy::default(),
                health: Arc::new(Health::new(DRIVER, Arc::clone(&metrics))),
                metrics: Arc::clone(&metrics),
                inventory: report.inventory,
                serialize: None,
                events: None,
                boot_id: Some("fuzz".into()),
                net: None,
            }))
        });
        let service = DraService::new(Arc::clone(&driver), metrics);
        Bench {
            rt,
            service,
            driver,
            root,
            claims,
            served: Default::default(),
        }
    }

    fn claim() -> impl Strategy<Value = v1::Claim> {
        // Mostly references to claims the API server has, so that inputs
        // reach the guest, CDI and checkpoint; the rest anything at all.
        let known = (0u8..6).prop_map(|n| v1::Claim {
            namespace: "default".into(),
            name: format!("c{n}"),
            uid: uid(n),
        });
        let namespace = prop_oneof![Just("default".to_owned()), "[a-z]{1,8}", any::<String>()];
        let name = prop_oneof![(0u8..6).prop_map(|n| format!("c{n}")), any::<String>()];
        let uid = prop_oneof![
            4 => (0u8..6).prop_map(uid),
            1 => Just(String::new()),
            1 => Just("../../escape".to_owned()),
            1 => Just(".hidden".to_owned()),
            1 => Just("a_b".to_owned()),
            1 => "[a-zA-Z0-9./_-]{1,200}",
            1 => any::<String>(),
        ];
        let anything = (namespace, name, uid).prop_map(|(namespace, name, uid)| v1::Claim { namespace, name, uid });
        prop_oneof![3 => known, 2 => anything]
    }

    #[derive(Debug, Clone)]
    enum Input {
        Claims(Vec<v1::Claim>, bool),
        /// An encoded request, then bytes replaced, and decoded as the server would.
        Bytes(Vec<v1::Claim>, Vec<(usize, u8)>, bool),
    }

    /// One prepare and one unprepare, checked.
    fn exercise(b: &Bench, claims: Vec<v1::Claim>, beta: bool) -> Result<(), TestCaseError> {
        let uids: HashSet<String> = claims.iter().map(|c| c.uid.clone()).collect();
        let (prepared, unprepared) = b.rt.block_on(async {
            let request = v1::NodePrepareResourcesRequest { claims: claims.clone() };
            let prepared: HashMap<String, (Vec<(String, String)>, String)> = if beta {
                let request = v1beta1::NodePrepareResourcesRequest {
                    claims: claims
                        .iter()
                        .map(|c| v1beta1::Claim {
                            namespace: c.namespace.clone(),
                            uid: c.uid.clone(),
                            name: c.name.clone(),
                        })
                        .collect(),
                };
                V1beta1::node_prepare_resources(&b.service, Request::new(request))
                    .await
                    .expect("v1beta1 prepare answers")
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|(u, r)| {
                        (
                            u,
                            (
                                r.devices.into_iter().map(|d| (d.pool_name, d.device_name)).collect(),
                                r.error,
                            ),
                        )
                    })
                    .collect()
            } else {
                V1::node_prepare_resources(&b.service, Request::new(request))
                    .await
                    .expect("v1 prepare answers")
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|(u, r)| {
                        (
                            u,
                            (
                                r.devices.into_iter().map(|d| (d.pool_name, d.device_name)).collect(),
                                r.error,
                            ),
                        )
                    })
                    .collect()
            };
            let unprepared = V1::node_unprepare_resources(
                &b.service,
                Request::new(v1::NodeUnprepareResourcesRequest { claims: claims.clone() }),
            )
            .await
            .expect("unprepare answers")
            .into_inner()
            .claims;
            (prepared, unprepared)
        });
        let keys: HashSet<String> = prepared.keys().cloned().collect();
        prop_assert_eq!(&keys, &uids, "one prepare answer per claim UID");
        let keys: HashSet<String> = unprepared.keys().cloned().collect();
        prop_assert_eq!(&keys, &uids, "one unprepare answer per claim UID");
        for (u, (devices, error)) in &prepared {
            if !error.is_empty() {
                prop_assert!(devices.is_empty());
                continue;
            }
            // The first reference with this UID was served: its claim's devices.
            let c = claims.iter().find(|c| &c.uid == u).expect("requested");
            let object = b.claims.0.get(&(c.namespace.clone(), c.name.clone()));
            let allocated: Vec<(String, String)> = object
                .and_then(|o| {
                    o.status
                        .as_ref()?
                        .allocation
                        .as_ref()?
                        .devices
                        .as_ref()?
                        .results
                        .clone()
                })
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.driver == DRIVER)
                .map(|r| (r.pool, r.device))
                .collect();
            prop_assert_eq!(devices, &allocated, "claim {}", u);
            if !devices.is_empty() {
                b.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        prop_assert_eq!(b.driver.checkpoint().len(), 0, "unprepare left records");
        let left: Vec<_> = std::fs::read_dir(b.root.path().join("cdi"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        prop_assert!(left.is_empty(), "unprepare left CDI specs: {:?}", left);
        let mut top: Vec<_> = std::fs::read_dir(b.root.path())
            .expect("root")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        prop_assert!(
            top.iter().all(|n| n == "cdi" || n == "claims"),
            "files outside the driver's folders: {:?}",
            top
        );
        Ok(())
    }

    /// A call the kubelet abandons is timed too, as `Canceled`.
    #[test]
    fn abandoned_calls_are_recorded_as_canceled() {
        let b = bench();
        let abandoned = b.rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_millis(20),
                b.service
                    .timed(V1_PREPARE, std::future::pending::<Result<Response<()>, Status>>()),
            )
            .await
        });
        assert!(abandoned.is_err());
        let text = b.service.metrics.encode();
        assert!(
            text.contains(&format!("dra_grpc_operations_duration_seconds_count{{driver_name=\"{DRIVER}\",method_name=\"{V1_PREPARE}\",grpc_status_code=\"Canceled\"}} 1")),
            "{text}"
        );
    }

    #[test]
    fn fuzz_grpc_handlers() {
        let b = bench();
        let input = prop_oneof![
            3 => (vec(claim(), 0..6), any::<bool>()).prop_map(|(c, beta)| Input::Claims(c, beta)),
            1 => (vec(claim(), 0..6), vec((any::<usize>(), any::<u8>()), 0..6), any::<bool>())
                .prop_map(|(c, m, beta)| Input::Bytes(c, m, beta)),
        ];
        fuzz("gRPC handlers", 4, input, |input| match input {
            Input::Claims(claims, beta) => exercise(&b, claims, beta),
            Input::Bytes(claims, edits, beta) => {
                let mut bytes = v1::NodePrepareResourcesRequest { claims }.encode_to_vec();
                for (at, byte) in edits {
                    if !bytes.is_empty() {
                        let at = at % bytes.len();
                        bytes[at] = byte;
                    }
                }
                match v1::NodePrepareResourcesRequest::decode(bytes.as_slice()) {
                    Ok(request) => exercise(&b, request.claims, beta),
                    Err(_) => Ok(()),
                }
            }
        });
        let served = b.served.load(std::sync::atomic::Ordering::Relaxed);
        println!("fuzz gRPC handlers: {served} claims prepared with devices and unprepared");
        assert!(served > 0, "the inputs never reached the guest");
    }
}
