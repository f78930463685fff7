//! Kubernetes Events about this node's drivers (guest swaps that were refused
//! or rolled back, inventory devices that could not be published), so that
//! `kubectl describe node` and `kubectl get events` show what an operator's
//! guest update did.
//!
//! Events are best effort: they go through the rate-limited client in the
//! background and a failure is only logged. Like the kubelet's own node
//! events, they are core/v1 Events in the `default` namespace whose
//! `involvedObject` is the Node (legacy-style: first/last timestamp and
//! count, no `eventTime`, which would make the API server ask for a series).

use super::client::ApiClient;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::sync::Arc;

/// The component name events are reported under.
const COMPONENT: &str = "dra-wasm-host";
const NAMESPACE: &str = "default";

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

#[derive(Clone, Debug)]
pub struct EventRecorder {
    api: ApiClient,
    node: String,
    /// The Node's UID: `kubectl describe node` selects events by it. From
    /// the config, else looked up once, on the first event.
    node_uid: Arc<tokio::sync::OnceCell<String>>,
}

impl EventRecorder {
    pub fn new(api: ApiClient, node: &str, node_uid: Option<String>) -> Self {
        Self {
            api,
            node: node.to_owned(),
            node_uid: Arc::new(tokio::sync::OnceCell::new_with(node_uid)),
        }
    }

    /// Record an event about `driver` on this node, in the background.
    pub fn record(&self, driver: &str, kind: EventType, reason: &str, message: String) {
        self.record_action(driver, kind, reason, "SwapGuest", message);
    }

    /// [`Self::record`] for an event whose `action` (what the host was doing)
    /// is not a guest swap, e.g. `PublishInventory`.
    pub fn record_action(&self, driver: &str, kind: EventType, reason: &str, action: &'static str, message: String) {
        let this = self.clone();
        let (driver, reason) = (driver.to_owned(), reason.to_owned());
        tokio::spawn(async move {
            let uid = this.node_uid().await;
            let event = this.event(&driver, kind, &reason, action, message, uid);
            let api = this.api;
            let reason = event.reason.clone().unwrap_or_default();
            let result = api
                .call("create event", |client| {
                    let event = event.clone();
                    async move {
                        kube::Api::<Event>::namespaced(client, NAMESPACE)
                            .create(&kube::api::PostParams::default(), &event)
                            .await
                    }
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(reason = %reason, error = %e, "could not record a Kubernetes Event");
            }
        });
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

    fn event(
        &self,
        driver: &str,
        kind: EventType,
        reason: &str,
        action: &str,
        message: String,
        node_uid: Option<String>,
    ) -> Event {
        let now = k8s_openapi::jiff::Timestamp::now();
        Event {
            metadata: ObjectMeta {
                // The client-go convention: involved object's name, then the time in hex nanoseconds.
                name: Some(format!("{}.{:x}", self.node, now.as_nanosecond())),
                namespace: Some(NAMESPACE.to_owned()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(self.node.clone()),
                uid: node_uid,
                ..Default::default()
            },
            reason: Some(reason.to_owned()),
            // The API server rejects messages over 1 KiB; guest text in them
            // (versions, errors) is made inert like everywhere else.
            message: Some(crate::guest::text::bounded(
                &format!("driver {driver}: {message}"),
                crate::guest::text::MESSAGE_BYTES,
            )),
            type_: Some(kind.as_str().to_owned()),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(format!("{COMPONENT}-{}", self.node)),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            action: Some(action.to_owned()),
            count: Some(1),
            ..Default::default()
        }
    }
}
