//! ResourceClaim objects (resource.k8s.io/v1) for the host's file claim
//! source, built the way the scheduler leaves them after allocation.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A ResourceClaim under construction.
#[derive(Clone, Debug)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    results: Vec<Value>,
    configs: Vec<Value>,
    allocated: bool,
    annotations: Vec<(String, String)>,
}

impl Claim {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            results: vec![],
            configs: vec![],
            allocated: true,
            annotations: vec![],
        }
    }

    /// Made from a ResourceClaimTemplate for the pod's claim `name`: the
    /// `resource.kubernetes.io/pod-claim-name` annotation the ResourceClaim
    /// controller sets.
    pub fn from_template(mut self, pod_claim_name: &str) -> Self {
        self.annotations
            .push(("resource.kubernetes.io/pod-claim-name".into(), pod_claim_name.into()));
        self
    }

    /// Add an allocated device (an entry of `status.allocation.devices.results`).
    pub fn device(mut self, driver: &str, pool: &str, device: &str, request: &str) -> Self {
        self.results
            .push(json!({ "request": request, "driver": driver, "pool": pool, "device": device }));
        self
    }

    /// Add an allocated share of a device that allows multiple allocations,
    /// with the capacity it consumes (name, quantity).
    pub fn shared_device(
        mut self,
        driver: &str,
        pool: &str,
        device: &str,
        request: &str,
        share_id: &str,
        consumed: &[(&str, &str)],
    ) -> Self {
        let mut r = json!({
            "request": request, "driver": driver, "pool": pool, "device": device, "shareID": share_id
        });
        if !consumed.is_empty() {
            r["consumedCapacity"] = consumed.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        }
        self.results.push(r);
        self
    }

    /// Add an opaque config (`source` is `FromClass` or `FromClaim`).
    pub fn opaque_config(mut self, source: &str, driver: &str, requests: &[&str], parameters: Value) -> Self {
        let mut c = json!({ "source": source, "opaque": { "driver": driver, "parameters": parameters } });
        if !requests.is_empty() {
            c["requests"] = json!(requests);
        }
        self.configs.push(c);
        self
    }

    /// Leave the claim unallocated (no `status.allocation`).
    pub fn unallocated(mut self) -> Self {
        self.allocated = false;
        self
    }

    pub fn to_json(&self) -> Value {
        let mut claim = json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": { "namespace": self.namespace, "name": self.name, "uid": self.uid },
            "spec": { "devices": { "requests": [] } },
        });
        if !self.annotations.is_empty() {
            claim["metadata"]["annotations"] = self.annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        }
        if self.allocated {
            claim["status"] =
                json!({ "allocation": { "devices": { "results": self.results, "config": self.configs } } });
        }
        claim
    }

    /// The claim as a real API server takes it, in two writes: the object
    /// (a request of class `<driver>` for each request name its results use,
    /// as many devices as it got), then the `status` the scheduler would
    /// write when it allocates on `node` (the node selector is what the API
    /// server's node authorization of `status.devices` reads). No UID: the
    /// API server gives one.
    pub fn api_object(&self, node: &str) -> (Value, Option<Value>) {
        let mut requests: Vec<(String, String, u64)> = vec![];
        for r in &self.results {
            let name = r["request"].as_str().unwrap_or_default();
            match requests.iter_mut().find(|(n, _, _)| n == name) {
                Some((_, _, count)) => *count += 1,
                None => requests.push((name.to_owned(), r["driver"].as_str().unwrap_or_default().to_owned(), 1)),
            }
        }
        let requests: Vec<Value> = requests
            .into_iter()
            .map(|(name, class, count)| {
                json!({ "name": name, "exactly": {
                    "deviceClassName": class, "allocationMode": "ExactCount", "count": count } })
            })
            .collect();
        let mut object = json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": { "namespace": self.namespace, "name": self.name },
            "spec": { "devices": { "requests": requests } },
        });
        if !self.annotations.is_empty() {
            object["metadata"]["annotations"] = self.annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        }
        let status = self.allocated.then(|| {
            json!({ "allocation": {
                "devices": { "results": self.results, "config": self.configs },
                "nodeSelector": { "nodeSelectorTerms": [{ "matchFields": [
                    { "key": "metadata.name", "operator": "In", "values": [node] }] }] },
            } })
        });
        (object, status)
    }

    /// The reference the kubelet sends for this claim.
    pub fn reference(&self) -> crate::kubelet::ClaimRef {
        crate::kubelet::ClaimRef::new(&self.namespace, &self.name, &self.uid)
    }
}

/// The claims file the host reads in `claims.source = "file"` mode.
#[derive(Debug)]
pub struct ClaimsFile {
    path: PathBuf,
    claims: Vec<Value>,
}

impl ClaimsFile {
    pub fn new(path: &Path) -> std::io::Result<Self> {
        let f = Self {
            path: path.to_owned(),
            claims: vec![],
        };
        f.write()?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Add (or replace, by namespace/name) claims and rewrite the file atomically.
    pub fn put(&mut self, claims: &[Claim]) -> std::io::Result<()> {
        for c in claims {
            let v = c.to_json();
            self.claims.retain(|old| {
                !(old["metadata"]["namespace"] == v["metadata"]["namespace"]
                    && old["metadata"]["name"] == v["metadata"]["name"])
            });
            self.claims.push(v);
        }
        self.write()
    }

    fn write(&self) -> std::io::Result<()> {
        let doc = json!({ "apiVersion": "v1", "kind": "List", "items": self.claims });
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// A UUID-shaped claim UID derived from a number, for readable tests.
pub fn uid(n: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", n >> 16, n)
}
