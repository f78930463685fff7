//! Prometheus metrics, and the small HTTP server that exposes them
//! ([`http`]).
//!
//! Names start with `dra_host_`. Label values are bounded sets (driver names
//! from the config, fixed operation and outcome names): never claim UIDs.
//!
//! One metric keeps an upstream name so that existing dashboards and alerts
//! work unchanged: `dra_grpc_operations_duration_seconds` (labels
//! `driver_name`, `method_name`, `grpc_status_code`, buckets
//! `ExponentialBucketsRange(0.1, 40, 15)`). Upstream it is the *kubelet's*
//! client-side histogram of its calls to a DRA plugin
//! (`pkg/kubelet/metrics/metrics.go`); here it is timed on the server side,
//! around each `DRAPlugin` call.

mod http;
pub use http::serve;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriverLabel {
    driver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    driver: String,
    operation: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    driver: String,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestCallLabels {
    driver: String,
    export: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestExportLabels {
    driver: String,
    export: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestDropLabels {
    driver: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestInfoLabels {
    driver: String,
    guest: String,
    version: String,
    digest: String,
    /// The `dra:driver` version the guest was built against (`0.1.0`, `0.2.0`).
    contract: &'static str,
}

/// Every metric the host exports.
pub struct Metrics {
    registry: Registry,
    claim_operations: Family<OperationLabels, Counter>,
    claim_duration: Family<DurationLabels, Histogram>,
    guest_calls: Family<GuestCallLabels, Counter>,
    guest_call_duration: Family<GuestExportLabels, Histogram>,
    guest_instances: Family<DriverLabel, Counter>,
    guest_instances_dropped: Family<GuestDropLabels, Counter>,
    prepared_claims: Family<DriverLabel, Gauge>,
    registered: Family<DriverLabel, Gauge>,
    guest_info: Family<GuestInfoLabels, Gauge>,
    health_changes: Family<HealthLabels, Counter>,
    health_streams: Family<DriverLabel, Gauge>,
    driver_up: Family<DriverLabel, Gauge>,
    slice_writes: Family<VerbLabels, Counter>,
    slice_sync_errors: Family<DriverLabel, Counter>,
    guest_swaps: Family<SwapLabels, Counter>,
    guest_swap_duration: Family<DriverLabel, Histogram>,
    http2_authority_replaced: Family<SocketLabels, Counter>,
    http2_refusals: Family<RefusalLabels, Counter>,
    /// The `guest_info` series of each driver, to remove it on a swap.
    guest_info_current: std::sync::Mutex<std::collections::HashMap<String, GuestInfoLabels>>,
    policy_rejections: Family<RuleLabels, Counter>,
    inventory_invalid_devices: Family<DriverLabel, Gauge>,
    checkpoint_quarantined: Family<ReasonLabels, Counter>,
    claims_reprepared: Family<SwapLabels, Counter>,
    kubernetes_events: Family<EventResultLabel, Counter>,
    dra_grpc_duration: Family<GrpcLabels, Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    driver: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventResultLabel {
    result: &'static str,
}

/// The kubelet's label names for `dra_grpc_operations_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    driver_name: String,
    method_name: &'static str,
    grpc_status_code: &'static str,
}

/// The kubelet's `DRADurationBuckets`: `ExponentialBucketsRange(0.1, 40, 15)`
/// of the Prometheus Go client, computed the same way (each bound is
/// `min * factor^i`, not a running product).
pub fn dra_duration_buckets() -> Vec<f64> {
    let (min, max, count) = (0.1f64, 40.0f64, 15);
    let factor = (max / min).powf(1.0 / f64::from(count - 1));
    (0..count).map(|i| min * factor.powf(f64::from(i))).collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    driver: String,
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SocketLabels {
    driver: String,
    socket: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    driver: String,
    socket: &'static str,
    scope: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwapLabels {
    driver: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    driver: String,
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    driver: String,
    health: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s: prepare is sub-millisecond when healthy, guests may take seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.0, 19,
    ))
}

fn guest_call_histogram() -> Histogram {
    // 2 µs .. ~17 s: a pooled guest call takes microseconds, a deadline ends
    // a stuck one after seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000002, 2.0, 24,
    ))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut root = Registry::default();
        let dra_grpc_duration =
            Family::new_with_constructor((|| Histogram::new(dra_duration_buckets())) as fn() -> Histogram);
        root.register(
            "dra_grpc_operations_duration_seconds",
            "Duration in seconds of the DRA gRPC operations (upstream a kubelet metric; here timed by the plugin around each DRAPlugin call)",
            dra_grpc_duration.clone(),
        );
        let registry = root.sub_registry_with_prefix("dra_host");
        let claim_operations = Family::default();
        registry.register(
            "claim_operations",
            "Claims prepared or unprepared, by driver, operation and result",
            claim_operations.clone(),
        );
        let claim_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "claim_operation_duration_seconds",
            "Time to prepare or unprepare one claim, including guest call, CDI write and checkpoint",
            claim_duration.clone(),
        );
        let guest_calls = Family::default();
        registry.register(
            "guest_calls",
            "Calls into guest components, by driver, export and outcome (ok, guest_error, trap, timeout, limit)",
            guest_calls.clone(),
        );
        let guest_call_duration = Family::new_with_constructor(guest_call_histogram as fn() -> Histogram);
        registry.register(
            "guest_call_duration_seconds",
            "Wall-clock time of calls into guest components",
            guest_call_duration.clone(),
        );
        let guest_instances = Family::default();
        registry.register(
            "guest_instances_created",
            "Guest instances created (first use, after a trap, or recycling)",
            guest_instances.clone(),
        );
        let guest_instances_dropped = Family::default();
        registry.register(
            "guest_instances_dropped",
            "Guest instances dropped instead of pooled, by reason: trap (timeouts and limits too), memory (grew past what an idle instance may keep), recycled (served its calls)",
            guest_instances_dropped.clone(),
        );
        let prepared_claims = Family::default();
        registry.register("prepared_claims", "Claims currently prepared", prepared_claims.clone());
        let registered = Family::default();
        registry.register(
            "kubelet_registered",
            "1 when the kubelet reported the plugin registered, 0 after a failed registration",
            registered.clone(),
        );
        let guest_info = Family::default();
        registry.register(
            "guest_info",
            "The guest component serving each driver, with the dra:driver version it was built against",
            guest_info.clone(),
        );
        let health_changes = Family::default();
        registry.register(
            "device_health_changes",
            "Device health changes, by driver and the health changed to",
            health_changes.clone(),
        );
        let health_streams = Family::default();
        registry.register("health_streams", "Open kubelet health streams", health_streams.clone());
        let slice_writes = Family::default();
        registry.register(
            "resourceslice_writes",
            "ResourceSlice creates, updates and deletes by driver",
            slice_writes.clone(),
        );
        let slice_sync_errors = Family::default();
        registry.register(
            "resourceslice_sync_errors",
            "Failed ResourceSlice syncs (API errors or an inventory the API would reject)",
            slice_sync_errors.clone(),
        );
        let driver_up = Family::default();
        registry.register(
            "driver_up",
            "1 when the driver's guest loaded and its sockets are served, 0 when it failed to start",
            driver_up.clone(),
        );
        let guest_swaps = Family::default();
        registry.register(
            "guest_swaps",
            "Guest component replacements, by driver and result (swapped, rejected, rolled_back)",
            guest_swaps.clone(),
        );
        let guest_swap_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "guest_swap_duration_seconds",
            "From noticing a changed guest file to the new component serving (load, checks, self-test, swap)",
            guest_swap_duration.clone(),
        );
        let policy_rejections = Family::default();
        registry.register(
            "policy_rejections",
            "Guest prepare answers refused by the driver's policy, by the rule that refused them (a policy key, or allocation, bounds, format)",
            policy_rejections.clone(),
        );
        let inventory_invalid_devices = Family::default();
        registry.register(
            "inventory_invalid_devices",
            "Devices of the guest's inventory left out of the ResourceSlices because the API server would reject them",
            inventory_invalid_devices.clone(),
        );
        let http2_authority_replaced = Family::default();
        registry.register(
            "http2_authority_replaced",
            "Requests whose :authority the HTTP/2 server would refuse (a socket path, as grpc-go and grpcio send on Unix sockets), replaced with localhost, by driver and socket",
            http2_authority_replaced.clone(),
        );
        let http2_refusals = Family::default();
        registry.register(
            "http2_refusals",
            "Requests (scope=stream, RST_STREAM) and connections (scope=connection, GOAWAY) the HTTP/2 server refused, by driver, socket and HTTP/2 error code",
            http2_refusals.clone(),
        );
        let checkpoint_quarantined = Family::default();
        registry.register(
            "checkpoint_quarantined",
            "Unusable checkpoint records moved to the quarantine folder, by driver and reason (corrupt, foreign, unreadable)",
            checkpoint_quarantined.clone(),
        );
        let claims_reprepared = Family::default();
        registry.register(
            "claims_reprepared",
            "Claims prepared again because the node rebooted since their prepare, by driver and result (ok, error)",
            claims_reprepared.clone(),
        );
        let kubernetes_events = Family::default();
        registry.register(
            "kubernetes_events",
            "Kubernetes Events by result: created, patched (a repeat counted up), rate_limited, dropped (queue full), failed",
            kubernetes_events.clone(),
        );
        Arc::new(Self {
            policy_rejections,
            inventory_invalid_devices,
            registry: root,
            http2_authority_replaced,
            http2_refusals,
            checkpoint_quarantined,
            claims_reprepared,
            kubernetes_events,
            dra_grpc_duration,
            guest_swaps,
            guest_swap_duration,
            guest_info_current: Default::default(),
            claim_operations,
            claim_duration,
            guest_calls,
            guest_call_duration,
            guest_instances,
            guest_instances_dropped,
            prepared_claims,
            registered,
            guest_info,
            health_changes,
            health_streams,
            driver_up,
            slice_writes,
            slice_sync_errors,
        })
    }

    pub fn claim_operation(&self, driver: &str, operation: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.claim_operations
            .get_or_create(&OperationLabels {
                driver: driver.to_owned(),
                operation,
                result,
            })
            .inc();
        self.claim_duration
            .get_or_create(&DurationLabels {
                driver: driver.to_owned(),
                operation,
            })
            .observe(took.as_secs_f64());
    }

    pub fn guest_call(&self, driver: &str, export: &'static str, outcome: &'static str, took: Duration) {
        self.guest_calls
            .get_or_create(&GuestCallLabels {
                driver: driver.to_owned(),
                export,
                outcome,
            })
            .inc();
        self.guest_call_duration
            .get_or_create(&GuestExportLabels {
                driver: driver.to_owned(),
                export,
            })
            .observe(took.as_secs_f64());
    }

    pub fn guest_instance_created(&self, driver: &str) {
        self.guest_instances
            .get_or_create(&DriverLabel {
                driver: driver.to_owned(),
            })
            .inc();
    }

    pub fn guest_instance_dropped(&self, driver: &str, reason: &'static str) {
        self.guest_instances_dropped
            .get_or_create(&GuestDropLabels {
                driver: driver.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn set_prepared_claims(&self, driver: &str, n: usize) {
        self.prepared_claims
            .get_or_create(&DriverLabel {
                driver: driver.to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_registered(&self, driver: &str, registered: bool) {
        self.registered
            .get_or_create(&DriverLabel {
                driver: driver.to_owned(),
            })
            .set(i64::from(registered));
    }

    pub fn set_guest_info(
        &self,
        driver: &str,
        guest: &crate::state::checkpoint::GuestIdentity,
        contract: &'static str,
    ) {
        let labels = GuestInfoLabels {
            driver: driver.to_owned(),
            guest: guest.name.clone(),
            version: guest.version.clone(),
            digest: guest.digest.clone(),
            contract,
        };
        // One series per driver: forget the previous component's.
        let mut current = self.guest_info_current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = current.insert(driver.to_owned(), labels.clone()) {
            self.guest_info.remove(&old);
        }
        self.guest_info.get_or_create(&labels).set(1);
    }

    /// A guest replacement ended with `result` (`swapped`, `rejected`, `rolled_back`).
    pub fn guest_swap(&self, driver: &str, result: &'static str) {
        self.guest_swaps
            .get_or_create(&SwapLabels {
                driver: driver.to_owned(),
                result,
            })
            .inc();
    }

    pub fn guest_swap_duration(&self, driver: &str, took: Duration) {
        self.guest_swap_duration
            .get_or_create(&DriverLabel {
                driver: driver.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn health_change(&self, driver: &str, health: &'static str) {
        self.health_changes
            .get_or_create(&HealthLabels {
                driver: driver.to_owned(),
                health,
            })
            .inc();
    }

    pub fn health_stream_opened(&self, driver: &str, delta: i64) {
        self.health_streams
            .get_or_create(&DriverLabel {
                driver: driver.to_owned(),
            })
            .inc_by(delta);
    }

    pub fn set_driver_up(&self, driver: &str, up: bool) {
        self.driver_up
            .get_or_create(&DriverLabel {
                driver: driver.to_owned(),
            })
            .set(i64::from(up));
    }

    pub fn slice_write(&self, driver: &str, verb: &'static str) {
        self.slice_writes
            .get_or_create(&VerbLabels {
                driver: driver.to_owned(),
                verb,
            })
            .inc();
    }

    pub fn policy_rejection(&self, driver: &str, rule: &'static str) {
        self.policy_rejections
            .get_or_create(&RuleLabels {
                driver: driver.to_owned(),
                rule,
            })
            .inc();
    }

    pub fn set_inventory_invalid_devices(&self, driver: &str, n: usize) {
        self.inventory_invalid_devices
            .get_or_create(&DriverLabel {
                driver: driver.to_owned(),
            })
            .set(n as i64);
    }

    pub fn slice_sync_error(&self, driver: &str) {
        self.slice_sync_errors
            .get_or_create(&DriverLabel {
                driver: driver.to_owned(),
            })
            .inc();
    }

    pub fn http2_authority_replaced(&self, driver: &str, socket: &'static str) {
        self.http2_authority_replaced
            .get_or_create(&SocketLabels {
                driver: driver.to_owned(),
                socket,
            })
            .inc();
    }

    /// A checkpoint record was quarantined (`corrupt`, `foreign`, `unreadable`).
    pub fn checkpoint_quarantined(&self, driver: &str, reason: &'static str) {
        self.checkpoint_quarantined
            .get_or_create(&ReasonLabels {
                driver: driver.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn http2_refusal(&self, driver: &str, socket: &'static str, scope: &'static str, code: &'static str) {
        self.http2_refusals
            .get_or_create(&RefusalLabels {
                driver: driver.to_owned(),
                socket,
                scope,
                code,
            })
            .inc();
    }

    /// A claim was prepared again after a reboot, or that failed.
    pub fn claim_reprepared(&self, driver: &str, ok: bool) {
        self.claims_reprepared
            .get_or_create(&SwapLabels {
                driver: driver.to_owned(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// What became of a Kubernetes Event.
    pub fn kubernetes_event(&self, result: &'static str) {
        self.kubernetes_events.get_or_create(&EventResultLabel { result }).inc();
    }

    /// One `DRAPlugin` call: `method` is the full gRPC path, `code` the Go
    /// name of the status code (`OK`, `Unavailable`, ...).
    pub fn dra_grpc_operation(&self, driver: &str, method: &'static str, code: &'static str, took: Duration) {
        self.dra_grpc_duration
            .get_or_create(&GrpcLabels {
                driver_name: driver.to_owned(),
                method_name: method,
                grpc_status_code: code,
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests;
