//! A stand-in API server: the few endpoints the host uses, in memory, on
//! 127.0.0.1, with the semantics that matter on the wire.
//!
//! How the host works *with* the API server is tested against the real one
//! (kube-apiserver, etcd, kube-scheduler 1.37.2: `tests/cluster/`,
//! [`crate::controlplane`], and every e2e test that needs a claim object or
//! Events); this stand-in agrees with the host by construction. It has two
//! users left, each for what the real server cannot give:
//!
//! - `tests/e2e/api.rs`, `transient_api_errors_and_conflicts_are_retried`:
//!   a 503, a 429 and a 409 injected on cue;
//! - the net bench (`tests/bench/net.rs`): its figures are the host's
//!   prepare and attach, so the claim and its status are served from memory
//!   rather than through a real server's storage.
//!
//! Endpoints:
//!
//! - `GET /api/v1/nodes/{name}`
//! - `GET /apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{name}`
//! - `PUT …/resourceclaims/{name}/status` (replaces status only)
//! - `GET /apis/resource.k8s.io/v1/resourceslices` (list; `fieldSelector`;
//!   `watch=true` streams events after `resourceVersion`)
//! - `POST …/resourceslices` (`generateName`), `PUT …/resourceslices/{name}`,
//!   `DELETE …/resourceslices/{name}` (uid/resourceVersion preconditions)
//! - `POST /api/v1/namespaces/{ns}/events` (core/v1 Events; name required,
//!   as are `involvedObject`, `reason` and `type`; the involved object's
//!   namespace must be the event's, or empty with `default`, as the API
//!   server's legacy event validation demands)
//! - `PATCH /api/v1/namespaces/{ns}/events/{name}` (strategic-merge or merge
//!   patch, as client-go's event correlator sends to bump `count`; for the
//!   scalar fields an event patch changes both kinds merge alike; a
//!   `metadata.resourceVersion` in the patch is a precondition)
//!
//! Every object carries a `resourceVersion` from one counter; an update
//! naming an older one gets 409 Conflict; missing objects get 404; errors
//! are `Status` objects. The host reaches it through an ordinary kubeconfig.
//! Tests read the stored objects, count writes, and inject failures.

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

/// Writes the server accepted, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub slice_creates: usize,
    pub slice_updates: usize,
    pub slice_deletes: usize,
    pub claim_status_updates: usize,
    /// Not a write: LIST requests for ResourceSlices, to see a sync happen.
    pub slice_lists: usize,
    /// core/v1 Events created (POST) and patched (PATCH).
    pub event_creates: usize,
    pub event_patches: usize,
}

impl Writes {
    pub fn slices(&self) -> usize {
        self.slice_creates + self.slice_updates + self.slice_deletes
    }
}

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    names: u64,
    nodes: BTreeMap<String, Value>,
    claims: BTreeMap<(String, String), Value>,
    slices: BTreeMap<String, Value>,
    /// core/v1 Events, in the order they were created.
    events: Vec<Value>,
    history: Vec<WatchEvent>,
    writes: Writes,
    /// (path fragment, method or "", status code, remaining)
    faults: Vec<(String, String, u16, usize)>,
}

impl State {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }
}

/// The running server. Stops when dropped.
pub struct TestApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code })
}

type Body = BoxBody<Bytes, Infallible>;

fn reply(code: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    reply(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status(code, reason, message),
    )
}

fn not_found(resource: &str, name: &str) -> Response<Body> {
    let group = if resource == "nodes" {
        String::new()
    } else {
        ".resource.k8s.io".to_owned()
    };
    error(404, "NotFound", &format!("{resource}{group} \"{name}\" not found"))
}

fn conflict() -> Response<Body> {
    error(
        409,
        "Conflict",
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 7386 merge patch: objects merge key by key, `null` removes, anything
/// else replaces. (A strategic-merge patch of scalar fields and maps, all an
/// event patch holds, means the same.)
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            if let Some(t) = target.as_object_mut() {
                t.remove(key);
            }
        } else {
            merge_patch(&mut target[key.as_str()], value);
        }
    }
}

/// `spec.driver=x,spec.nodeName=y` (also `==`) against an object.
fn selected(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector else { return true };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (path, want) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .unwrap_or((term, ""));
        let mut v = object;
        for part in path.split('.') {
            v = &v[part];
        }
        v.as_str().unwrap_or("") == want
    })
}

impl TestApiServer {
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (events, _) = broadcast::channel(4096);
        let (s, e) = (Arc::clone(&state), events.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, e) = (Arc::clone(&s), e.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (s, e) = (Arc::clone(&s), e.clone());
                        async move { Ok::<_, Infallible>(handle(req, &s, &e).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            events,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server (plain HTTP, a bearer token it ignores).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\nusers:\n- name: test\n  user:\n    token: test-token\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n",
            self.url()
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn put_node(&self, name: &str, uid: &str) {
        let mut s = self.lock();
        let rv = s.next_rv();
        s.nodes.insert(
            name.into(),
            json!({ "apiVersion": "v1", "kind": "Node",
                    "metadata": { "name": name, "uid": uid, "resourceVersion": rv.to_string() } }),
        );
    }

    /// Store a ResourceClaim as given (its uid included), as the scheduler left it.
    pub fn put_claim(&self, claim: Value) {
        let mut s = self.lock();
        let rv = s.next_rv();
        let mut claim = claim;
        claim["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (
            claim["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            claim["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        );
        s.claims.insert(key, claim);
    }

    pub fn claim(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock().claims.get(&(namespace.into(), name.into())).cloned()
    }

    /// Change a stored claim as another client would (new resourceVersion).
    pub fn touch_claim(&self, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.lock();
        let rv = s.next_rv();
        if let Some(c) = s.claims.get_mut(&(namespace.into(), name.into())) {
            f(c);
            c["metadata"]["resourceVersion"] = json!(rv.to_string());
        }
    }

    pub fn delete_claim(&self, namespace: &str, name: &str) {
        self.lock().claims.remove(&(namespace.into(), name.into()));
    }

    /// The core/v1 Events created so far.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).events.clone()
    }

    pub fn slices(&self) -> Vec<Value> {
        self.lock().slices.values().cloned().collect()
    }

    /// Delete a slice as another client (e.g. the kubelet) would.
    pub fn delete_slice(&self, name: &str) -> bool {
        let mut s = self.lock();
        let Some(mut obj) = s.slices.remove(name) else {
            return false;
        };
        let rv = s.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = WatchEvent {
            rv,
            kind: "DELETED",
            object: obj,
        };
        s.history.push(event.clone());
        let _ = self.events.send(event);
        true
    }

    pub fn writes(&self) -> Writes {
        self.lock().writes
    }

    /// Answer the next `times` requests whose path contains `fragment` (and
    /// whose method is `method`, when not empty) with `code`.
    pub fn inject(&self, fragment: &str, method: &str, code: u16, times: usize) {
        self.lock().faults.push((fragment.into(), method.into(), code, times));
    }

    /// Faults injected but not yet used up.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.iter().map(|f| f.3).sum()
    }
}

async fn handle(
    req: Request<Incoming>,
    state: &Arc<Mutex<State>>,
    events: &broadcast::Sender<WatchEvent>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let q = query(&req);
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    // Injected faults first.
    {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = s
            .faults
            .iter_mut()
            .find(|f| f.3 > 0 && path.contains(&f.0) && (f.1.is_empty() || f.1 == method.as_str()))
        {
            f.3 -= 1;
            let code = f.2;
            let reason = match code {
                409 => "Conflict",
                429 => "TooManyRequests",
                _ => "InternalError",
            };
            return error(code, reason, "injected by the test");
        }
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(400, "BadRequest", "unreadable body"),
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    match (&method, parts.as_slice()) {
        (&Method::POST, ["api", "v1", "namespaces", ns, "events"]) => {
            let Ok(mut obj): Result<Value, _> = serde_json::from_slice(&body) else {
                return error(400, "BadRequest", "body is not JSON");
            };
            let missing = ["involvedObject", "reason", "type"]
                .into_iter()
                .find(|k| obj[*k].is_null())
                .or_else(|| obj["metadata"]["name"].as_str().is_none().then_some("metadata.name"));
            if let Some(field) = missing {
                return error(422, "Invalid", &format!("{field}: Required value"));
            }
            if obj["metadata"]["namespace"].as_str().is_some_and(|n| n != *ns) {
                return error(422, "Invalid", "metadata.namespace does not match the request");
            }
            if !matches!(obj["type"].as_str(), Some("Normal" | "Warning")) {
                return error(422, "Invalid", "type: Unsupported value");
            }
            // Legacy events (no eventTime): the involved object's namespace is
            // the event's, or empty (a cluster-scoped object) with "default".
            let involved_ns = obj["involvedObject"]["namespace"].as_str().unwrap_or("");
            let agrees = if involved_ns.is_empty() {
                *ns == "default"
            } else {
                involved_ns == *ns
            };
            if obj["eventTime"].is_null() && !agrees {
                return error(
                    422,
                    "Invalid",
                    "involvedObject.namespace: Invalid value: does not match event.namespace",
                );
            }
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            if s.events
                .iter()
                .any(|e| e["metadata"]["namespace"] == *ns && e["metadata"]["name"] == name)
            {
                return error(409, "AlreadyExists", &format!("events \"{name}\" already exists"));
            }
            let rv = s.next_rv();
            obj["metadata"]["namespace"] = json!(ns);
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            obj["metadata"]["uid"] = json!(format!("event-uid-{rv}"));
            s.events.push(obj.clone());
            s.writes.event_creates += 1;
            reply(StatusCode::CREATED, &obj)
        }
        (&Method::PATCH, ["api", "v1", "namespaces", ns, "events", name]) => {
            let kind = content_type.as_deref().unwrap_or("");
            if !matches!(
                kind,
                "application/strategic-merge-patch+json" | "application/merge-patch+json"
            ) {
                return error(
                    415,
                    "UnsupportedMediaType",
                    &format!("the test API server takes strategic-merge and merge patches of events, not {kind:?}"),
                );
            }
            let Ok(patch): Result<Value, _> = serde_json::from_slice(&body) else {
                return error(400, "BadRequest", "patch is not JSON");
            };
            let rv = s.rv + 1;
            let Some(stored) = s
                .events
                .iter_mut()
                .find(|e| e["metadata"]["namespace"] == *ns && e["metadata"]["name"] == *name)
            else {
                return error(404, "NotFound", &format!("events \"{name}\" not found"));
            };
            let precondition = &patch["metadata"]["resourceVersion"];
            if !precondition.is_null() && *precondition != stored["metadata"]["resourceVersion"] {
                return conflict();
            }
            merge_patch(stored, &patch);
            stored["metadata"]["resourceVersion"] = json!(rv.to_string());
            let out = stored.clone();
            s.rv = rv;
            s.writes.event_patches += 1;
            reply(StatusCode::OK, &out)
        }
        (&Method::GET, ["api", "v1", "nodes", name]) => match s.nodes.get(*name) {
            Some(n) => reply(StatusCode::OK, n),
            None => not_found("nodes", name),
        },
        (
            &Method::GET,
            [
                "apis",
                "resource.k8s.io",
                "v1",
                "namespaces",
                ns,
                "resourceclaims",
                name,
            ],
        ) => match s.claims.get(&((*ns).to_owned(), (*name).to_owned())) {
            Some(c) => reply(StatusCode::OK, c),
            None => not_found("resourceclaims", name),
        },
        (
            &Method::PUT,
            [
                "apis",
                "resource.k8s.io",
                "v1",
                "namespaces",
                ns,
                "resourceclaims",
                name,
                "status",
            ],
        ) => {
            let Ok(new): Result<Value, _> = serde_json::from_slice(&body) else {
                return error(400, "BadRequest", "body is not JSON");
            };
            let key = ((*ns).to_owned(), (*name).to_owned());
            let rv = s.rv + 1;
            let Some(stored) = s.claims.get_mut(&key) else {
                return not_found("resourceclaims", name);
            };
            if new["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                return conflict();
            }
            stored["status"] = new["status"].clone();
            stored["metadata"]["resourceVersion"] = json!(rv.to_string());
            let out = stored.clone();
            s.rv = rv;
            s.writes.claim_status_updates += 1;
            reply(StatusCode::OK, &out)
        }
        (&Method::GET, ["apis", "resource.k8s.io", "v1", "resourceslices"]) => {
            let selector = q.get("fieldSelector");
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let since: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
                let backlog: Vec<WatchEvent> = s
                    .history
                    .iter()
                    .filter(|e| e.rv > since && selected(&e.object, selector))
                    .cloned()
                    .collect();
                let live = events.subscribe();
                drop(s);
                return watch(backlog, live, selector.cloned());
            }
            s.writes.slice_lists += 1;
            let items: Vec<Value> = s.slices.values().filter(|o| selected(o, selector)).cloned().collect();
            reply(
                StatusCode::OK,
                &json!({ "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList",
                         "metadata": { "resourceVersion": s.rv.to_string() }, "items": items }),
            )
        }
        (&Method::POST, ["apis", "resource.k8s.io", "v1", "resourceslices"]) => {
            let Ok(mut obj): Result<Value, _> = serde_json::from_slice(&body) else {
                return error(400, "BadRequest", "body is not JSON");
            };
            let name = match (
                obj["metadata"]["name"].as_str(),
                obj["metadata"]["generateName"].as_str(),
            ) {
                (Some(n), _) if !n.is_empty() => n.to_owned(),
                (_, Some(prefix)) => {
                    s.names += 1;
                    format!("{prefix}{}", suffix(s.names))
                }
                _ => return error(422, "Invalid", "metadata.name or metadata.generateName is required"),
            };
            if s.slices.contains_key(&name) {
                return error(
                    409,
                    "AlreadyExists",
                    &format!("resourceslices.resource.k8s.io \"{name}\" already exists"),
                );
            }
            let rv = s.next_rv();
            obj["apiVersion"] = json!("resource.k8s.io/v1");
            obj["kind"] = json!("ResourceSlice");
            obj["metadata"]["name"] = json!(name);
            obj["metadata"]["uid"] = json!(format!("slice-uid-{rv}"));
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            s.slices.insert(name, obj.clone());
            s.writes.slice_creates += 1;
            push_event(&mut s, events, rv, "ADDED", &obj);
            reply(StatusCode::CREATED, &obj)
        }
        (&Method::PUT, ["apis", "resource.k8s.io", "v1", "resourceslices", name]) => {
            let Ok(mut obj): Result<Value, _> = serde_json::from_slice(&body) else {
                return error(400, "BadRequest", "body is not JSON");
            };
            let Some(stored) = s.slices.get(*name).cloned() else {
                return not_found("resourceslices", name);
            };
            if obj["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                return conflict();
            }
            let rv = s.next_rv();
            obj["apiVersion"] = json!("resource.k8s.io/v1");
            obj["kind"] = json!("ResourceSlice");
            obj["metadata"]["uid"] = stored["metadata"]["uid"].clone();
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            s.slices.insert((*name).to_owned(), obj.clone());
            s.writes.slice_updates += 1;
            push_event(&mut s, events, rv, "MODIFIED", &obj);
            reply(StatusCode::OK, &obj)
        }
        (&Method::DELETE, ["apis", "resource.k8s.io", "v1", "resourceslices", name]) => {
            let Some(stored) = s.slices.get(*name).cloned() else {
                return not_found("resourceslices", name);
            };
            let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            for (field, meta) in [("uid", "uid"), ("resourceVersion", "resourceVersion")] {
                let want = &options["preconditions"][field];
                if !want.is_null() && *want != stored["metadata"][meta] {
                    return error(409, "Conflict", &format!("precondition failed: {field}"));
                }
            }
            s.slices.remove(*name);
            let rv = s.next_rv();
            let mut obj = stored;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            s.writes.slice_deletes += 1;
            push_event(&mut s, events, rv, "DELETED", &obj);
            reply(StatusCode::OK, &obj)
        }
        _ => error(
            404,
            "NotFound",
            &format!("the test API server does not serve {method} {path}"),
        ),
    }
}

fn push_event(s: &mut State, events: &broadcast::Sender<WatchEvent>, rv: u64, kind: &'static str, obj: &Value) {
    let event = WatchEvent {
        rv,
        kind,
        object: obj.clone(),
    };
    s.history.push(event.clone());
    let _ = events.send(event);
}

/// Five characters from the alphabet the API server uses for generated names.
fn suffix(n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn watch(
    backlog: Vec<WatchEvent>,
    mut live: broadcast::Receiver<WatchEvent>,
    selector: Option<String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let last = backlog.last().map(|e| e.rv).unwrap_or(0);
    tokio::spawn(async move {
        let line = |e: &WatchEvent| Bytes::from(json!({ "type": e.kind, "object": e.object }).to_string() + "\n");
        for e in &backlog {
            if tx.send(Ok(Frame::data(line(e)))).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(e) if e.rv > last && selected(&e.object, selector.as_ref()) => {
                    if tx.send(Ok(Frame::data(line(&e)))).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return, // client lists again
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_decoding() {
        let obj = json!({ "spec": { "driver": "d.com", "nodeName": "n1" } });
        assert!(selected(&obj, Some(&"spec.driver=d.com,spec.nodeName=n1".to_owned())));
        assert!(!selected(&obj, Some(&"spec.driver==d.com,spec.nodeName=n2".to_owned())));
        assert_eq!(
            percent_decode("spec.driver%3Dd.com%2Cspec.nodeName%3Dn1"),
            "spec.driver=d.com,spec.nodeName=n1"
        );
        assert_ne!(suffix(1), suffix(2));
    }
}
