//! The handlers in process, with the real example guest, CDI writer and
//! checkpoint (on a tmpfs when there is one). `fuzz_grpc_handlers` (see
//! [`crate::fuzzing`]): arbitrary requests (structured, and protobuf bytes
//! mangled before decoding) get one answer per claim UID, never touch files
//! outside the driver's folders, and leave nothing behind after unprepare.

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
            metadata: crate::state::metadata::MetadataWriter::new(
                &root.path().join("plugin"),
                &root.path().join("cdi"),
                DRIVER,
            )
            .expect("metadata"),
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
                .timed(V1_PREPARE, 1, std::future::pending::<Result<Response<()>, Status>>()),
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
