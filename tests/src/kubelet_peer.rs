//! The kubelet's own DRA code as a peer: `tests/peers/kubelet` (the plugin
//! manager and DRA manager of k8s.io/kubernetes v1.37.2), built by its
//! `build.sh` into a cache and driven through its JSON-lines commands.
//!
//! [`KubeletPeer::start`] runs it on a kubelet root directory (it watches
//! `plugins_registry` there and keeps its DRA checkpoint there) with
//! credentials for the API server it reads Pods and ResourceClaims from.
//! Each command waits for its answer; the peer's events (what its plugin
//! watcher handed the DRA manager, health updates) are collected.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

/// A call's limit: above the DRA manager's own 45 s per plugin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Build (or find in the cache) the kubelet peer; its path. Built once per
/// test process.
pub fn binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/kubelet/build.sh");
            let out = std::process::Command::new("bash")
                .arg(&script)
                .output()
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} failed ({}): {}",
                    script.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            let path = stdout.lines().last().unwrap_or("").trim();
            Ok(PathBuf::from(path))
        })
        .clone()
        .map_err(|e| anyhow!("the kubelet peer could not be built: {e}"))
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running kubelet peer. Killed when dropped.
pub struct KubeletPeer {
    child: tokio::process::Child,
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    waiters: Waiters,
    events: Arc<Mutex<Vec<Value>>>,
    next: AtomicU64,
    log_path: PathBuf,
}

impl KubeletPeer {
    /// Start on kubelet root `root` for Node `node`, reading the API server
    /// through `kubeconfig`; its log (klog) goes to `log`.
    pub async fn start(root: &Path, kubeconfig: &Path, node: &str, log: &Path) -> Result<Self> {
        let program = tokio::task::spawn_blocking(binary).await??;
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| log.display().to_string())?;
        let mut child = tokio::process::Command::new(&program)
            .arg("-root")
            .arg(root)
            .arg("-kubeconfig")
            .arg(kubeconfig)
            .args(["-node", node])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = child.stdin.take().context("stdin")?;
        let waiters: Waiters = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (w, e) = (waiters.clone(), events.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    e.lock().unwrap().push(json!({"event": "unparsed", "line": line}));
                    continue;
                };
                match v["id"].as_u64() {
                    Some(id) => {
                        if let Some(tx) = w.lock().unwrap().remove(&id) {
                            let _ = tx.send(v);
                        }
                    }
                    None => e.lock().unwrap().push(v),
                }
            }
            // The peer ended: every caller still waiting learns it.
            w.lock().unwrap().clear();
        });
        let peer = KubeletPeer {
            child,
            stdin: tokio::sync::Mutex::new(stdin),
            waiters,
            events,
            next: AtomicU64::new(1),
            log_path: log.to_owned(),
        };
        Ok(peer)
    }

    /// Everything the peer logged so far (all peers sharing the log file).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The events so far: `{"event": "register", "driver", "endpoint", "versions", "error"}`, ...
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Send `request` (an object without "id") and wait for the answer line.
    pub async fn call(&self, mut request: Value) -> Result<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        request["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(id, tx);
        {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(format!("{request}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => bail!("the kubelet peer exited before answering {request}"),
            Err(_) => bail!("no answer to {request} in {CALL_TIMEOUT:?}"),
        }
    }

    /// A call that must succeed: its answer, or the peer's error.
    async fn ok(&self, request: Value) -> Result<Value> {
        let answer = self.call(request.clone()).await?;
        if answer["ok"] != true {
            bail!("{}: {}", request["op"], answer["error"].as_str().unwrap_or("?"));
        }
        Ok(answer)
    }

    /// Wait until the DRA plugin manager has `driver` registered.
    pub async fn wait_driver(&self, driver: &str, timeout: Duration) -> Result<()> {
        self.ok(json!({"op": "wait-driver", "driver": driver, "timeout_s": timeout.as_secs()}))
            .await
            .map(drop)
    }

    /// `PrepareResources(pod)` then `GetResources` for each container: the
    /// CDI device IDs each container gets, by container name.
    pub async fn prepare(&self, namespace: &str, pod: &str) -> Result<BTreeMap<String, Vec<String>>> {
        let a = self
            .ok(json!({"op": "prepare", "namespace": namespace, "pod": pod}))
            .await?;
        Ok(serde_json::from_value(a["containers"].clone())?)
    }

    /// `GetResources` for each container, without preparing.
    pub async fn resources(&self, namespace: &str, pod: &str) -> Result<BTreeMap<String, Vec<String>>> {
        let a = self
            .ok(json!({"op": "resources", "namespace": namespace, "pod": pod}))
            .await?;
        Ok(serde_json::from_value(a["containers"].clone())?)
    }

    /// `UpdateAllocatedResourcesStatus`: each container's
    /// `allocatedResourcesStatus` from the kubelet's health cache.
    pub async fn health(&self, namespace: &str, pod: &str) -> Result<BTreeMap<String, Value>> {
        let a = self
            .ok(json!({"op": "health", "namespace": namespace, "pod": pod}))
            .await?;
        Ok(serde_json::from_value(a["containers"].clone())?)
    }

    /// [`Self::health`], and that status written into the Pod's
    /// `status.containerStatuses` in the API server (as this node).
    pub async fn write_health(&self, namespace: &str, pod: &str) -> Result<BTreeMap<String, Value>> {
        let a = self
            .ok(json!({"op": "health", "namespace": namespace, "pod": pod, "write": true}))
            .await?;
        Ok(serde_json::from_value(a["containers"].clone())?)
    }

    /// `UnprepareResources(pod)`.
    pub async fn unprepare(&self, namespace: &str, pod: &str) -> Result<()> {
        self.ok(json!({"op": "unprepare", "namespace": namespace, "pod": pod}))
            .await
            .map(drop)
    }

    /// `kill -9`: the kubelet dies where it stands; its checkpoint stays.
    pub async fn kill9(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The DRA manager's checkpoint on kubelet root `root`
/// (`<root>/dra_manager_state`): per claim UID, its `ClaimInfoState` as the
/// kubelet stored it, with per driver the devices of the plugin's
/// NodePrepareResources answer (`PoolName`, `DeviceName`, `ShareID`,
/// `RequestNames`, `CDIDeviceIDs`). A claim is there from its prepare until
/// its unprepare.
pub fn checkpoint(root: &Path) -> Result<BTreeMap<String, Value>> {
    let path = root.join("dra_manager_state");
    let file: Value = serde_json::from_slice(&std::fs::read(&path).with_context(|| path.display().to_string())?)?;
    let data: Value = serde_json::from_str(file["Data"].as_str().context("the checkpoint has no Data")?)?;
    Ok(data["ClaimInfoStateList"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["ClaimUID"].as_str().unwrap_or_default().to_owned(), c.clone()))
        .collect())
}
