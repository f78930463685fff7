//! Kubernetes Events, where an operator looks: on the Node (guest swaps,
//! refused and rolled-back guests, inventory devices that could not be
//! published, quarantined checkpoint records, claims prepared again after a
//! reboot) and on a ResourceClaim (a prepare or
//! unprepare that failed, with the error the kubelet got).
//!
//! Like the kubelet's own events they are legacy core/v1 Events (first/last
//! timestamp and `count`, no `eventTime`): Node events in `default`, claim
//! events in the claim's namespace.
//!
//! A retrying kubelet must not flood the API server, so every event goes
//! through a [`Correlator`] that does what client-go's `EventCorrelator` does
//! (`tools/record/events_cache.go`), with its defaults:
//! - the same event again (same source, object, type, reason and message)
//!   is one Event whose `count` and `lastTimestamp` are raised by a patch;
//! - more than 10 events of one object and reason whose messages differ,
//!   within 10 minutes, become one "(combined from similar events)" Event;
//! - per object, a burst of 25 events, then one per 5 minutes (token bucket);
//!   what is held back still counts, so the next patch carries the total.
//!
//! Events are best effort and never block a claim operation: one background
//! task sends them in order (a create before the patches of the same Event),
//! through the rate-limited, retrying client. Every outcome is counted in
//! `dra_host_kubernetes_events_total{result}` (created, patched,
//! rate_limited, dropped when the queue is full, failed), and failures are
//! logged.

use super::client::{ApiClient, status_code};
use crate::claim::ClaimRef;
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The component name events are reported under.
const COMPONENT: &str = "dra-wasm-host";
/// Node events live here, as the kubelet's do.
const NODE_EVENT_NAMESPACE: &str = "default";
/// Events waiting to be sent; more are dropped (and counted).
const QUEUE: usize = 1000;

/// client-go's defaults (`events_cache.go`).
const CACHE_ENTRIES: usize = 4096;
const AGGREGATE_MAX_EVENTS: usize = 10;
const AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);
const SPAM_BURST: f64 = 25.0;
const SPAM_QPS: f64 = 1.0 / 300.0;
const AGGREGATE_PREFIX: &str = "(combined from similar events): ";

/// `type` of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What an event is about.
#[derive(Clone, Debug)]
enum Regarding {
    Node,
    Claim(ClaimRef),
}

#[derive(Debug)]
struct Request {
    regarding: Regarding,
    kind: EventType,
    reason: String,
    action: &'static str,
    message: String,
}

/// Records events about this node's drivers. Cheap to clone: every clone
/// feeds the same background sender and correlator.
#[derive(Clone, Debug)]
pub struct EventRecorder {
    tx: mpsc::Sender<Request>,
    metrics: Arc<Metrics>,
}

impl EventRecorder {
    /// Start the sender (needs a Tokio runtime). `node_uid` from the config,
    /// else looked up once, on the first Node event (`kubectl describe node`
    /// selects events by it).
    pub fn new(api: ApiClient, node: &str, node_uid: Option<String>, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sender = Sender {
            api,
            node: node.to_owned(),
            node_uid: tokio::sync::OnceCell::new_with(node_uid),
            correlator: Correlator::default(),
            metrics: Arc::clone(&metrics),
        };
        tokio::spawn(sender.run(rx));
        Self { tx, metrics }
    }

    /// An event about `driver` on this node.
    pub fn node_event(&self, driver: &str, kind: EventType, reason: &str, action: &'static str, message: String) {
        self.send(Request {
            regarding: Regarding::Node,
            kind,
            reason: reason.to_owned(),
            action,
            message: format!("driver {driver}: {message}"),
        });
    }

    /// An event on the ResourceClaim the kubelet named as `claim`.
    pub fn claim_event(
        &self,
        claim: &ClaimRef,
        driver: &str,
        kind: EventType,
        reason: &str,
        action: &'static str,
        message: String,
    ) {
        self.send(Request {
            regarding: Regarding::Claim(claim.clone()),
            kind,
            reason: reason.to_owned(),
            action,
            message: format!("driver {driver}: {message}"),
        });
    }

    fn send(&self, request: Request) {
        if let Err(e) = self.tx.try_send(request) {
            self.metrics.kubernetes_event("dropped");
            let request = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            tracing::warn!(reason = %request.reason, message = %request.message, "Kubernetes Event dropped: {QUEUE} events are waiting to be sent");
        }
    }
}

/// The background task that correlates and sends events, one at a time.
struct Sender {
    api: ApiClient,
    node: String,
    node_uid: tokio::sync::OnceCell<String>,
    correlator: Correlator,
    metrics: Arc<Metrics>,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(request) = rx.recv().await {
            let event = self.event(request).await;
            let result = match self.correlator.correlate(event, Instant::now()) {
                Correlated::Skip(event) => {
                    tracing::debug!(reason = ?event.reason, object = ?event.involved_object.name, "Kubernetes Event held back by the per-object rate limit");
                    self.metrics.kubernetes_event("rate_limited");
                    continue;
                }
                Correlated::Create(event) => self.create(event).await.map(|e| (e, "created")),
                Correlated::Patch { event, patch } => self.patch(event, patch).await,
            };
            match result {
                Ok((stored, outcome)) => {
                    self.metrics.kubernetes_event(outcome);
                    self.correlator.update_state(&stored);
                }
                Err((event, e)) => {
                    self.metrics.kubernetes_event("failed");
                    tracing::warn!(reason = ?event.reason, object = ?event.involved_object.name, error = %e, "could not record a Kubernetes Event");
                }
            }
        }
    }

    async fn create(&self, event: Event) -> Result<Event, (Event, kube::Error)> {
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let result = self
            .api
            .call("create event", |client| {
                let (event, namespace) = (event.clone(), namespace.clone());
                async move {
                    kube::Api::<Event>::namespaced(client, &namespace)
                        .create(&super::client::write_params(), &event)
                        .await
                }
            })
            .await;
        result.map_err(|e| (event, e))
    }

    /// Raise the count of an existing Event; if it is gone (events expire
    /// after an hour), create it again, as client-go does.
    async fn patch(
        &self,
        event: Event,
        patch: serde_json::Value,
    ) -> Result<(Event, &'static str), (Event, kube::Error)> {
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let name = event.metadata.name.clone().unwrap_or_default();
        let result = self
            .api
            .call("patch event", |client| {
                let (patch, namespace, name) = (patch.clone(), namespace.clone(), name.clone());
                async move {
                    kube::Api::<Event>::namespaced(client, &namespace)
                        .patch(
                            &name,
                            &kube::api::PatchParams {
                                field_manager: Some(super::client::FIELD_MANAGER.to_owned()),
                                ..Default::default()
                            },
                            &kube::api::Patch::Strategic(patch),
                        )
                        .await
                }
            })
            .await;
        match result {
            Ok(stored) => Ok((stored, "patched")),
            Err(e) if status_code(&e) == Some(404) => {
                let mut event = event;
                event.metadata.resource_version = None;
                self.create(event).await.map(|e| (e, "created"))
            }
            Err(e) => Err((event, e)),
        }
    }

    async fn node_uid(&self) -> Option<String> {
        let lookup = || async {
            let node = self.node.clone();
            self.api
                .call("get node", |client| {
                    let node = node.clone();
                    async move { kube::Api::<Node>::all(client).get(&node).await }
                })
                .await
                .map_err(|e| tracing::warn!(error = %e, "cannot look up this node's UID for events"))
                .ok()
                .and_then(|n| n.metadata.uid)
                .ok_or(())
        };
        self.node_uid.get_or_try_init(lookup).await.ok().cloned()
    }

    async fn event(&self, r: Request) -> Event {
        let now = k8s_openapi::jiff::Timestamp::now();
        let (namespace, involved_object) = match &r.regarding {
            Regarding::Node => (
                NODE_EVENT_NAMESPACE.to_owned(),
                ObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Node".to_owned()),
                    name: Some(self.node.clone()),
                    uid: self.node_uid().await,
                    ..Default::default()
                },
            ),
            Regarding::Claim(c) => (
                c.namespace.clone(),
                ObjectReference {
                    api_version: Some("resource.k8s.io/v1".to_owned()),
                    kind: Some("ResourceClaim".to_owned()),
                    namespace: Some(c.namespace.clone()),
                    name: Some(c.name.clone()),
                    uid: Some(c.uid.clone()),
                    ..Default::default()
                },
            ),
        };
        let object_name = involved_object.name.clone().unwrap_or_default();
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(&object_name, now)),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object,
            reason: Some(r.reason),
            // The API server rejects messages over 1 KiB; guest text in them
            // (versions, errors) is made inert like everywhere else.
            message: Some(bounded(&r.message)),
            type_: Some(r.kind.as_str().to_owned()),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(format!("{COMPONENT}-{}", self.node)),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            action: Some(r.action.to_owned()),
            count: Some(1),
            ..Default::default()
        }
    }
}

/// client-go's convention: the involved object's name, then the time in hex nanoseconds.
fn event_name(object: &str, now: k8s_openapi::jiff::Timestamp) -> String {
    format!("{object}.{:x}", now.as_nanosecond())
}

/// What to do with an event.
#[derive(Debug)]
pub enum Correlated {
    /// Held back by the per-object rate limit.
    Skip(Event),
    /// A new Event object.
    Create(Event),
    /// The same Event again: patch `count`, `lastTimestamp` and `message` of
    /// the Event named in `event` (strategic-merge patch).
    Patch { event: Event, patch: serde_json::Value },
}

/// client-go's event correlation (see the module docs), as a pure state
/// machine over events and a clock the caller passes in.
#[derive(Debug, Default)]
pub struct Correlator {
    aggregates: Lru<AggregateRecord>,
    observed: Lru<Observation>,
    buckets: Lru<TokenBucket>,
}

#[derive(Debug, Clone)]
struct AggregateRecord {
    messages: HashSet<String>,
    last: Instant,
}

#[derive(Debug, Clone)]
struct Observation {
    count: i32,
    first: Option<Time>,
    name: String,
    resource_version: Option<String>,
}

#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl Correlator {
    /// Aggregate, count, then rate-limit `event`, observed at `now`.
    pub fn correlate(&mut self, event: Event, now: Instant) -> Correlated {
        let (event, key) = self.aggregate(event, now);
        let (event, patch) = self.observe(event, key);
        if !self.allow(&event, now) {
            return Correlated::Skip(event);
        }
        match patch {
            Some(patch) => Correlated::Patch { event, patch },
            None => Correlated::Create(event),
        }
    }

    /// Remember what the API server stored (name, resourceVersion, count).
    pub fn update_state(&mut self, stored: &Event) {
        self.observed.insert(
            event_key(stored),
            Observation {
                count: stored.count.unwrap_or(1),
                first: stored.first_timestamp.clone(),
                name: stored.metadata.name.clone().unwrap_or_default(),
                resource_version: stored.metadata.resource_version.clone(),
            },
        );
    }

    /// Replace the 10th distinct message of one object and reason within the
    /// interval by a combined event. Returns the event and its counting key.
    fn aggregate(&mut self, event: Event, now: Instant) -> (Event, String) {
        let key = aggregate_key(&event);
        let message = event.message.clone().unwrap_or_default();
        let fresh = self
            .aggregates
            .get_mut(&key)
            .is_some_and(|r| now.saturating_duration_since(r.last) <= AGGREGATE_INTERVAL);
        if !fresh {
            self.aggregates.insert(
                key.clone(),
                AggregateRecord {
                    messages: HashSet::new(),
                    last: now,
                },
            );
        }
        let Some(record) = self.aggregates.get_mut(&key) else {
            return (event.clone(), event_key(&event));
        };
        record.messages.insert(message.clone());
        record.last = now;
        if record.messages.len() < AGGREGATE_MAX_EVENTS {
            return (event.clone(), event_key(&event));
        }
        // Keep the set from growing past the threshold.
        if let Some(any) = record.messages.iter().next().cloned() {
            record.messages.remove(&any);
        }
        let stamp = event
            .last_timestamp
            .clone()
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        let object_name = event.involved_object.name.clone().unwrap_or_default();
        let combined = Event {
            metadata: ObjectMeta {
                name: Some(event_name(&object_name, stamp.0)),
                namespace: event.metadata.namespace.clone(),
                ..Default::default()
            },
            count: Some(1),
            first_timestamp: Some(stamp.clone()),
            last_timestamp: Some(stamp),
            message: Some(bounded(&format!("{AGGREGATE_PREFIX}{message}"))),
            ..event
        };
        (combined, key)
    }

    /// Count repeats of the event under `key`: a repeat takes the stored
    /// Event's name and first timestamp and gets a patch.
    fn observe(&mut self, mut event: Event, key: String) -> (Event, Option<serde_json::Value>) {
        let patch = match self.observed.get_mut(&key) {
            Some(seen) if seen.count > 0 => {
                event.metadata.name = Some(seen.name.clone());
                event.metadata.resource_version = seen.resource_version.clone();
                event.first_timestamp = seen.first.clone();
                event.count = Some(seen.count.saturating_add(1));
                Some(serde_json::json!({
                    "count": event.count,
                    "lastTimestamp": event.last_timestamp,
                    "message": event.message,
                }))
            }
            _ => None,
        };
        self.observed.insert(
            key,
            Observation {
                count: event.count.unwrap_or(1),
                first: event.first_timestamp.clone(),
                name: event.metadata.name.clone().unwrap_or_default(),
                resource_version: event.metadata.resource_version.clone(),
            },
        );
        (event, patch)
    }

    /// The per-object token bucket.
    fn allow(&mut self, event: &Event, now: Instant) -> bool {
        let key = spam_key(event);
        if self.buckets.get_mut(&key).is_none() {
            self.buckets.insert(
                key.clone(),
                TokenBucket {
                    tokens: SPAM_BURST,
                    last: now,
                },
            );
        }
        let Some(bucket) = self.buckets.get_mut(&key) else {
            return true;
        };
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * SPAM_QPS).min(SPAM_BURST);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn object_fields(e: &Event) -> [&str; 7] {
    let o = &e.involved_object;
    let source = e.source.as_ref();
    [
        source.and_then(|s| s.component.as_deref()).unwrap_or(""),
        source.and_then(|s| s.host.as_deref()).unwrap_or(""),
        o.kind.as_deref().unwrap_or(""),
        o.namespace.as_deref().unwrap_or(""),
        o.name.as_deref().unwrap_or(""),
        o.uid.as_deref().unwrap_or(""),
        o.api_version.as_deref().unwrap_or(""),
    ]
}

/// Keys join fields with a separator no field contains (client-go joins
/// them with nothing; a separator keeps "ab"+"c" apart from "a"+"bc").
fn join(fields: &[&str]) -> String {
    fields.join("\u{1f}")
}

/// Same source, object, type, reason and message: the same event.
fn event_key(e: &Event) -> String {
    let mut f = object_fields(e).to_vec();
    f.push(e.involved_object.field_path.as_deref().unwrap_or(""));
    f.push(e.type_.as_deref().unwrap_or(""));
    f.push(e.reason.as_deref().unwrap_or(""));
    f.push(e.message.as_deref().unwrap_or(""));
    join(&f)
}

/// Same source, object, type and reason (and reporter): similar events.
fn aggregate_key(e: &Event) -> String {
    let mut f = object_fields(e).to_vec();
    f.push(e.type_.as_deref().unwrap_or(""));
    f.push(e.reason.as_deref().unwrap_or(""));
    f.push(e.reporting_component.as_deref().unwrap_or(""));
    f.push(e.reporting_instance.as_deref().unwrap_or(""));
    join(&f)
}

/// Same source and object: one rate limit.
fn spam_key(e: &Event) -> String {
    join(&object_fields(e))
}

/// A map that forgets its least recently used entry past [`CACHE_ENTRIES`].
#[derive(Debug)]
struct Lru<V> {
    entries: HashMap<String, (V, u64)>,
    tick: u64,
    capacity: usize,
}

impl<V> Default for Lru<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            tick: 0,
            capacity: CACHE_ENTRIES,
        }
    }
}

impl<V> Lru<V> {
    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(v, used)| {
            *used = tick;
            v
        })
    }

    fn insert(&mut self, key: String, value: V) {
        self.tick += 1;
        self.entries.insert(key, (value, self.tick));
        if self.entries.len() > self.capacity
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
    }
}

/// An event message as the API server takes it (at most 1 KiB), with guest
/// text made inert ([`crate::guest_text`]).
fn bounded(message: &str) -> String {
    crate::guest_text::bounded(message, crate::guest_text::MESSAGE_BYTES)
}

#[cfg(test)]
mod tests;
