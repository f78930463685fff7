//! The example guest's logic on the same inputs, natively and as a
//! component: what running a driver's decisions in the sandbox costs.
//!
//! Run: `cargo bench --bench guest` (options after `--`: `--iterations N`,
//! `--evict-mib N`).
//!
//! - **native**: the `example-driver` crate compiled into this benchmark,
//!   called through the guest SDK's `Instance` (what the component's exports
//!   do: resolve the claim's opaque configs, call the driver), on the SDK's
//!   copy of the claim built from the inputs in the timed region.
//! - **component**: the same crate built for `wasm32-wasip2` (the file the
//!   host serves), called through the host's own path, `Guest::prepare`:
//!   instance pool, deadline, fiber, canonical-ABI copies in and out, the
//!   call metric.
//!
//! Both run in alternating batches on one thread of the same process, so
//! that they see the same machine at the same time. Back to back, each call
//! finds the caches warm from the previous one; in the host a guest call
//! comes between gRPC decoding, file writes and fsyncs. `--evict-mib N`
//! writes N MiB of unrelated memory before every timed call (outside the
//! timing) to show what a cold cache does to both. The guest's share of an
//! end-to-end prepare comes from `cargo bench --bench prepare`, which reads
//! the host's own call metric.

use dra_driver_sdk::Instance;
use dra_test_support::bench::{Latencies, arg};
use dra_wasm_host::claim::ClaimRef;
use dra_wasm_host::guest::{CompileCache, Guest, GuestSpec, Limits, Runtime};
use dra_wasm_host::imports::Imports;
use dra_wasm_host::metrics::Metrics;
use dra_wasm_host::model;
use example_driver::logic::ExampleDriver;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WARMUP: usize = 1000;
/// Calls of one kind before the other takes its turn.
const BATCH: usize = 500;
const NODE: &str = "bench-node";

/// One input: a claim as the host hands it to the guest.
struct Case {
    label: &'static str,
    claim: model::Claim,
}

fn cases() -> Vec<Case> {
    let device = |request: &str, name: &str| model::AllocatedDevice {
        request: request.into(),
        pool: NODE.into(),
        device: name.into(),
        share_id: None,
        consumed_capacity: vec![],
        admin_access: false,
    };
    let claim_ref = |uid: &str| ClaimRef {
        namespace: "default".into(),
        name: "bench".into(),
        uid: uid.into(),
    };
    vec![
        Case {
            // What `cargo bench --bench prepare` prepares.
            label: "1 device, no config",
            claim: model::Claim {
                reference: claim_ref("0f0e0d0c-0000-4000-8000-000000000001"),
                devices: vec![device("gpu", "gpu-3")],
                configs: vec![],
            },
        },
        Case {
            label: "4 devices, class + claim opaque config",
            claim: model::Claim {
                reference: claim_ref("0f0e0d0c-0000-4000-8000-000000000004"),
                devices: (0..4).map(|i| device("gpus", &format!("gpu-{i}"))).collect(),
                configs: vec![
                    model::OpaqueConfig {
                        source: model::ConfigSource::DeviceClass,
                        requests: vec![],
                        parameters: r#"{"sharing":{"strategy":"SpacePartitioning"}}"#.into(),
                    },
                    model::OpaqueConfig {
                        source: model::ConfigSource::ResourceClaim,
                        requests: vec!["gpus".into()],
                        parameters: r#"{"sharing":{"strategy":"TimeSlicing","timeSlicing":{"interval":"Long"}}}"#
                            .into(),
                    },
                ],
            },
        },
    ]
}

/// The guest's input as the SDK's own copy of the WIT types, which is what
/// the component's export glue hands to `Instance::prepare`.
fn sdk_claim(claim: &model::Claim) -> dra_driver_sdk::AllocatedClaim {
    dra_driver_sdk::AllocatedClaim {
        ref_: sdk_ref(&claim.reference),
        devices: claim
            .devices
            .iter()
            .map(|d| dra_driver_sdk::AllocatedDevice {
                request: d.request.clone(),
                pool: d.pool.clone(),
                device: d.device.clone(),
                share_id: d.share_id.clone(),
                consumed_capacity: d.consumed_capacity.clone(),
                admin_access: d.admin_access,
            })
            .collect(),
        configs: claim
            .configs
            .iter()
            .map(|c| dra_driver_sdk::OpaqueConfig {
                source: match c.source {
                    model::ConfigSource::DeviceClass => dra_driver_sdk::ConfigSource::DeviceClass,
                    model::ConfigSource::ResourceClaim => dra_driver_sdk::ConfigSource::ResourceClaim,
                },
                requests: c.requests.clone(),
                parameters: c.parameters.clone(),
            })
            .collect(),
    }
}

fn sdk_ref(r: &ClaimRef) -> dra_driver_sdk::ClaimRef {
    dra_driver_sdk::ClaimRef {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        uid: r.uid.clone(),
    }
}

#[derive(Default)]
struct Samples {
    native_prepare: Vec<Duration>,
    component_prepare: Vec<Duration>,
    native_unprepare: Vec<Duration>,
    component_unprepare: Vec<Duration>,
}

/// Memory written between calls so that each call starts with cold caches.
struct Evict(Vec<u8>);

impl Evict {
    fn run(&mut self) {
        // One write per cache line.
        for line in self.0.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&self.0);
    }
}

fn main() {
    let iterations = arg("--iterations", 20_000usize);
    // As the host runs: a multi-threaded runtime (calls are made from one task).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let evict = Evict(vec![0; arg("--evict-mib", 0usize) << 20]);
    rt.block_on(run(iterations, evict));
}

async fn run(iterations: usize, mut evict: Evict) {
    let config = r#"{"devices": 8}"#;
    let native = Instance::<ExampleDriver>::init(dra_driver_sdk::InitContext {
        driver_name: "example.dra.dev".into(),
        node_name: NODE.into(),
        config: config.into(),
    })
    .expect("native driver");
    let path = PathBuf::from(dra_wasm_host::BUILT_GUESTS_DIR).join("example_driver.wasm");
    let cache_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-guest-cache");
    let runtime = Runtime::new(
        CompileCache::new(Some(cache_dir)).expect("cache"),
        Duration::from_millis(10),
    )
    .expect("engine");
    let spec = GuestSpec {
        path: path.clone(),
        ctx: model::InitContext {
            driver_name: "example.dra.dev".into(),
            node_name: NODE.into(),
            config: config.into(),
        },
        limits: Limits::default(),
        imports: Imports::default(),
    };
    let (guest, _) = Guest::load(&runtime, &Metrics::new(), &spec)
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));

    println!(
        "example guest logic, natively and as a component ({}), {iterations} calls each per input{}",
        path.display(),
        if evict.0.is_empty() {
            String::new()
        } else {
            format!(", {} MiB written before each call", evict.0.len() >> 20)
        }
    );
    for case in cases() {
        // Both must agree before either is timed.
        let expected = native.prepare(sdk_claim(&case.claim)).expect("native prepare");
        let (prepared, _) = guest.prepare(case.claim.clone()).await.expect("component prepare");
        assert_eq!(prepared.state, expected.state, "native and component disagree");
        assert_eq!(prepared.devices.len(), expected.devices.len());

        let mut s = Samples::default();
        let mut done = 0;
        let mut record = false;
        while done < iterations {
            let n = if record { BATCH.min(iterations - done) } else { WARMUP };
            for _ in 0..n {
                evict.run();
                let t = Instant::now();
                let p = native.prepare(sdk_claim(&case.claim)).expect("native prepare");
                let np = t.elapsed();
                evict.run();
                let t = Instant::now();
                native
                    .unprepare(&sdk_ref(&case.claim.reference), &p.state)
                    .expect("native unprepare");
                let nu = t.elapsed();
                std::hint::black_box(p);
                if record {
                    s.native_prepare.push(np);
                    s.native_unprepare.push(nu);
                }
            }
            for _ in 0..n {
                evict.run();
                let t = Instant::now();
                let (p, _) = guest.prepare(case.claim.clone()).await.expect("component prepare");
                let cp = t.elapsed();
                evict.run();
                let t = Instant::now();
                guest
                    .unprepare(case.claim.reference.clone(), p.state)
                    .await
                    .expect("component unprepare");
                let cu = t.elapsed();
                if record {
                    s.component_prepare.push(cp);
                    s.component_unprepare.push(cu);
                }
            }
            if record {
                done += n;
            }
            record = true;
        }
        println!("  {}:", case.label);
        compare("prepare", &s.native_prepare, &s.component_prepare);
        compare("unprepare", &s.native_unprepare, &s.component_unprepare);
    }
}

fn mean(samples: &[Duration]) -> Duration {
    samples.iter().sum::<Duration>() / samples.len().max(1) as u32
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn compare(what: &str, native: &[Duration], component: &[Duration]) {
    let (n, c) = (mean(native), mean(component));
    let line = |l: &Latencies| format!("p50 {:.2} µs, p99 {:.2} µs", us(l.p50), us(l.p99));
    let (ln, lc) = (
        Latencies::of(native).expect("samples"),
        Latencies::of(component).expect("samples"),
    );
    let ratio = |c: Duration, n: Duration| c.as_secs_f64() / n.as_secs_f64().max(1e-12);
    println!(
        "    {what:<9}  native: mean {:.2} µs ({})  component: mean {:.2} µs ({})  component / native: {:.1}× (means), {:.1}× (p50s)",
        us(n),
        line(&ln),
        us(c),
        line(&lc),
        ratio(c, n),
        ratio(lc.p50, ln.p50),
    );
}
