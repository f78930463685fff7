//! ResourceClaims from files (`kubectl get resourceclaim -o yaml`, one
//! object, a List, or several YAML documents), served to the driver as its
//! claim source.

use super::*;

/// ResourceClaims by (namespace, name), from the files given; what the
/// driver writes into `status.devices` is kept to be printed.
#[derive(Debug, Default)]
pub(super) struct LocalClaims {
    pub(super) claims: Mutex<HashMap<(String, String), ResourceClaim>>,
    pub(super) status: Mutex<HashMap<String, Vec<AllocatedDeviceStatus>>>,
}

impl LocalClaims {
    pub(super) fn add(&self, claim: ResourceClaim) {
        let key = (
            claim.metadata.namespace.clone().unwrap_or_default(),
            claim.metadata.name.clone().unwrap_or_default(),
        );
        lock(&self.claims).insert(key, claim);
    }

    pub(super) fn status(&self, uid: &str) -> Vec<AllocatedDeviceStatus> {
        lock(&self.status).get(uid).cloned().unwrap_or_default()
    }
}

impl ClaimSource for LocalClaims {
    fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> FetchFuture<'a> {
        let found = lock(&self.claims)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned();
        Box::pin(async move {
            found.ok_or_else(|| FetchError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        })
    }

    fn set_driver_status<'a>(
        &'a self,
        claim: &'a ClaimRef,
        _driver: &'a str,
        entries: Vec<AllocatedDeviceStatus>,
    ) -> StatusFuture<'a> {
        lock(&self.status).insert(claim.uid.clone(), entries);
        Box::pin(async { Ok(()) })
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn claim_ref(c: &ResourceClaim) -> ClaimRef {
    ClaimRef {
        namespace: c.metadata.namespace.clone().unwrap_or_default(),
        name: c.metadata.name.clone().unwrap_or_default(),
        uid: c.metadata.uid.clone().unwrap_or_default(),
    }
}

pub(super) fn result_drivers(c: &ResourceClaim) -> Vec<String> {
    let mut drivers: Vec<String> = c
        .status
        .iter()
        .flat_map(|s| s.allocation.iter())
        .flat_map(|a| a.devices.iter())
        .flat_map(|d| d.results.iter().flatten())
        .map(|r| r.driver.clone())
        .collect();
    drivers.dedup();
    drivers
}

/// A claim, the file it came from and where in it (`items[2].` in a List).
pub(super) type ClaimInFile = (PathBuf, String, ResourceClaim);

/// Every claim in `files`; two claims with one UID are an error.
pub(super) fn read_claim_files(files: &[PathBuf]) -> Result<Vec<ClaimInFile>> {
    let mut claims: Vec<ClaimInFile> = Vec::new();
    for file in files {
        for (where_, claim) in read_claims(file)? {
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            if let Some((other, other_where, _)) =
                claims.iter().find(|(_, _, c)| c.metadata.uid.as_deref() == Some(&uid))
            {
                bail!(
                    "{}: {where_}metadata.uid: {uid} is also the UID of the claim in {} {other_where}",
                    file.display(),
                    other.display()
                );
            }
            claims.push((file.clone(), where_, claim));
        }
    }
    Ok(claims)
}

/// The ResourceClaims in a file: one object, a `List` of them, or several
/// YAML documents; JSON or YAML.
pub(super) fn read_claims(path: &Path) -> Result<Vec<(String, ResourceClaim)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    let docs: Vec<Value> = if is_json {
        vec![serde_json::from_str(&text).map_err(|e| anyhow!("{}: not JSON: {e}", path.display()))?]
    } else {
        serde_saphyr::from_multiple(&text).map_err(|e| anyhow!("{}: not YAML: {e}", path.display()))?
    };
    let mut claims = Vec::new();
    for (d, doc) in docs.into_iter().enumerate() {
        let doc_where = if d == 0 {
            String::new()
        } else {
            format!("document {}: ", d + 1)
        };
        match doc.get("kind").and_then(Value::as_str) {
            Some("List" | "ResourceClaimList") => {
                let items = doc.get("items").and_then(Value::as_array).ok_or_else(|| {
                    anyhow!(
                        "{}: {doc_where}items: missing (a List holds its objects there)",
                        path.display()
                    )
                })?;
                for (i, item) in items.iter().enumerate() {
                    let where_ = format!("{doc_where}items[{i}].");
                    claims.push((where_.clone(), claim_from(path, &where_, item.clone())?));
                }
            }
            _ => claims.push((doc_where.clone(), claim_from(path, &doc_where, doc)?)),
        }
    }
    if claims.is_empty() {
        bail!("{}: no ResourceClaim in it", path.display());
    }
    Ok(claims)
}

/// Check the fields the host relies on, naming the one that is wrong, then
/// read the whole object.
pub(super) fn claim_from(path: &Path, where_: &str, mut v: Value) -> Result<ResourceClaim> {
    let field = |f: &str, why: &str| anyhow!("{}: {where_}{f}: {why}", path.display());
    let text = |v: &Value, f: &str| -> Result<String> {
        let mut cur = v;
        for part in f.split('.') {
            cur = cur.get(part).ok_or_else(|| field(f, "missing"))?;
        }
        cur.as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| field(f, "not a non-empty string"))
    };
    let kind = text(&v, "kind")?;
    if kind != "ResourceClaim" {
        return Err(field("kind", &format!("{kind:?}, not ResourceClaim")));
    }
    let api = text(&v, "apiVersion")?;
    if api != "resource.k8s.io/v1" {
        return Err(field(
            "apiVersion",
            &format!(
                "{api:?}; the host reads resource.k8s.io/v1 (kubectl get resourceclaims.v1.resource.k8s.io -o yaml)"
            ),
        ));
    }
    text(&v, "metadata.name")?;
    if v["metadata"].get("namespace").is_none() {
        // What `kubectl apply` would default it to.
        v["metadata"]["namespace"] = json!("default");
    }
    text(&v, "metadata.namespace")?;
    if v["metadata"].get("uid").is_none() {
        return Err(field(
            "metadata.uid",
            "missing; the kubelet names a claim by its UID (kubectl get -o yaml prints it; a claim written by hand needs one, any UUID)",
        ));
    }
    let uid = text(&v, "metadata.uid")?;
    if !dra_wasm_host::claim::is_safe_uid(&uid) {
        return Err(field("metadata.uid", &format!("{uid:?} is not a UID")));
    }
    let results = v
        .pointer("/status/allocation/devices/results")
        .ok_or_else(|| {
            field(
                "status.allocation.devices.results",
                "missing: the claim is not allocated (the harness prepares claims as the scheduler allocated them; see docs/guest-authoring.md)",
            )
        })?
        .as_array()
        .ok_or_else(|| field("status.allocation.devices.results", "not a list"))?;
    for (i, r) in results.iter().enumerate() {
        for f in ["request", "driver", "pool", "device"] {
            if r.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(field(
                    &format!("status.allocation.devices.results[{i}].{f}"),
                    "missing or not a non-empty string",
                ));
            }
        }
    }
    serde_json::from_value(v).map_err(|e| anyhow!("{}: {where_}{e}", path.display()))
}
