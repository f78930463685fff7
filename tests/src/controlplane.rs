//! The real Kubernetes control plane for the tests: etcd, kube-apiserver,
//! kube-scheduler and kube-controller-manager at 1.37.2, built from Go modules
//! and started on loopback by `tests/k8s/up.sh` (the same command people run).
//!
//! [`ControlPlane::shared`] starts one per test binary, with the chart installed
//! by real Helm; tests that stop the API server start their own with
//! [`ControlPlane::start`]. `up.sh` dies with the test process (the parent-death
//! signal), and removes its directory when it does.
//!
//! Everything a test does to the cluster goes through the real `kubectl`
//! built beside the components: the same client an operator uses, so what a
//! test applies is what an operator would apply.

use crate::claims::Claim;
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The repository's root (this crate lives in `tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The namespace and ServiceAccount the chart gives the host (release `dra-wasm-host`).
pub const HOST_NAMESPACE: &str = "dra-wasm-host";
pub const HOST_SERVICE_ACCOUNT: &str = "dra-wasm-host";

/// A running `tests/k8s/up.sh --scheduler`.
#[derive(Debug)]
pub struct ControlPlane {
    /// The admin's kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    /// The CA that signed the API server's certificate.
    pub ca: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// up.sh's directory: certificates, kubeconfigs, `logs/`.
    pub dir: PathBuf,
    pid: u32,
    lines: Mutex<mpsc::Receiver<String>>,
}

impl ControlPlane {
    /// The control plane shared by the tests of this binary, started on first
    /// use, with the chart installed. Panics with up.sh's reason when it cannot
    /// start: a test of the API side never falls back to a stand-in.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        let cp = SHARED.get_or_init(|| {
            let cp = ControlPlane::start().map_err(|e| format!("{e:#}"))?;
            cp.install_chart().map_err(|e| format!("{e:#}"))?;
            Ok(cp)
        });
        match cp {
            Ok(cp) => cp,
            Err(e) => panic!("the real control plane (tests/k8s/up.sh) did not start: {e}"),
        }
    }

    /// Start a control plane of its own (stopped when dropped).
    pub fn start() -> Result<Self> {
        let script = repo_root().join("tests/k8s/up.sh");
        let (tx, rx) = mpsc::channel();
        let (pid_tx, pid_rx) = mpsc::channel();
        // The parent-death signal is sent when the *thread* that started the
        // child ends, so a thread that lives as long as up.sh starts it.
        std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || {
                let mut cmd = Command::new("bash");
                cmd.arg(&script).arg("--scheduler");
                cmd.stdout(Stdio::piped()).stdin(Stdio::null());
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    use std::os::unix::process::CommandExt;
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = pid_tx.send(Err(e));
                        return;
                    }
                };
                let _ = pid_tx.send(Ok(child.id()));
                let stdout = child.stdout.take().unwrap();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                let _ = child.wait();
            })?;
        let pid = pid_rx.recv()?.context("starting tests/k8s/up.sh")?;
        // A cold build of the components is tests/run.sh's job, before the
        // tests; here up.sh only finds them in the cache and starts them.
        let timeout = Duration::from_secs(600);
        let mut fields = std::collections::HashMap::new();
        for key in ["KUBECONFIG", "KUBECTL", "CA", "SERVER", "DIR"] {
            let line = rx.recv_timeout(timeout).map_err(|_| {
                anyhow!("tests/k8s/up.sh exited or stalled before printing {key}= (its errors are above)")
            })?;
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| anyhow!("tests/k8s/up.sh printed {line:?}, expected {key}=…"))?;
            ensure!(k == key, "tests/k8s/up.sh printed {line:?}, expected {key}=…");
            fields.insert(k.to_owned(), v.to_owned());
        }
        let cp = ControlPlane {
            kubeconfig: fields["KUBECONFIG"].clone().into(),
            kubectl: fields["KUBECTL"].clone().into(),
            ca: fields["CA"].clone().into(),
            server: fields["SERVER"].clone(),
            dir: fields["DIR"].clone().into(),
            pid,
            lines: Mutex::new(rx),
        };
        let version = cp.kubectl(&["version", "-o", "json"])?;
        let version: Value = serde_json::from_str(&version)?;
        ensure!(
            version["serverVersion"]["gitVersion"] == "v1.37.2",
            "the API server reports {}, not v1.37.2",
            version["serverVersion"]
        );
        Ok(cp)
    }

    /// Stop etcd and kube-apiserver (the API server goes away; the scheduler
    /// and controllers stay and retry).
    pub fn stop_api_server(&self) -> Result<()> {
        self.signal(libc::SIGUSR1, "stopped")
    }

    /// Start etcd and kube-apiserver again on the same ports and data; returns when ready.
    pub fn start_api_server(&self) -> Result<()> {
        self.signal(libc::SIGUSR2, "KUBECONFIG=")
    }

    fn signal(&self, sig: i32, expect: &str) -> Result<()> {
        // SAFETY: plain kill(2) on up.sh's pid.
        ensure!(unsafe { libc::kill(self.pid as i32, sig) } == 0, "up.sh is gone");
        let rx = self.lines.lock().unwrap();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(180))
                .map_err(|_| anyhow!("up.sh did not answer signal {sig} with {expect:?}"))?;
            if line.starts_with(expect) {
                return Ok(());
            }
        }
    }

    /// The last lines of one component's log, for failure messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{component}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `kubectl` as the admin; the error carries kubectl's stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_as(&self.kubeconfig, args, None)
    }

    /// `kubectl` with another identity's kubeconfig, optionally with `stdin`.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = Command::new(&self.kubectl);
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `kubectl get … -o json`, parsed.
    pub fn get(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
        Ok(serde_json::from_str(&self.kubectl(&all)?)?)
    }

    /// Server-side apply of YAML or JSON documents as the admin.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.kubectl_as(
            &self.kubeconfig,
            &["apply", "--server-side", "--field-manager=dra-test", "-f", "-"],
            Some(manifest),
        )
    }

    /// Install the chart (`deploy/chart/dra-wasm-host`) with real Helm, as
    /// an operator does: release `dra-wasm-host` in namespace
    /// [`HOST_NAMESPACE`], values from `tests/cluster/values.yaml` (every
    /// driver the tests run).
    pub fn install_chart(&self) -> Result<()> {
        let chart = crate::helm::chart_dir();
        let values = repo_root().join("tests/cluster/values.yaml");
        crate::helm::run(
            &[
                "install",
                "dra-wasm-host",
                chart.to_str().unwrap(),
                "--namespace",
                HOST_NAMESPACE,
                "--create-namespace",
                "--kubeconfig",
                self.kubeconfig.to_str().unwrap(),
                "-f",
                values.to_str().unwrap(),
            ],
            None,
        )
        .context("helm install of deploy/chart/dra-wasm-host")?;
        Ok(())
    }

    /// A Node object named `name` with room for pods, Ready. No kubelet runs:
    /// this does what the kubelet and the node lifecycle controller would
    /// (report capacity and readiness, lift the `not-ready` taint the API
    /// server puts on a new Node), which is all the scheduler looks at.
    /// Returns its UID.
    pub fn create_node(&self, name: &str) -> Result<String> {
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        });
        self.apply(&node.to_string())?;
        let status = serde_json::json!({"status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "no kubelet: a test node"}],
        }});
        self.kubectl(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])?;
        let node = self.get(&["node", name])?;
        if node["spec"]["taints"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["key"] == "node.kubernetes.io/not-ready"))
        {
            self.kubectl(&["taint", "node", name, "node.kubernetes.io/not-ready:NoSchedule-"])?;
        }
        Ok(node["metadata"]["uid"].as_str().context("node uid")?.to_owned())
    }

    /// The host's credentials on `node`, exactly as the DaemonSet's pod gets
    /// them: a token of the chart's ServiceAccount, bound to a Pod
    /// that is bound to the Node (so the token carries the node's name, which
    /// the admission policy reads). Written as a kubeconfig at `path`.
    pub fn host_kubeconfig(&self, node: &str, path: &Path) -> Result<PathBuf> {
        let pod = format!("dra-wasm-host-{node}");
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": HOST_NAMESPACE, "labels": {"app.kubernetes.io/name": "dra-wasm-host"}},
            "spec": {
                "nodeName": node,
                "serviceAccountName": HOST_SERVICE_ACCOUNT,
                "containers": [{"name": "host", "image": "dra-wasm-host:test"}],
            },
        });
        self.apply(&manifest.to_string())?;
        let token = self.kubectl(&[
            "create",
            "token",
            HOST_SERVICE_ACCOUNT,
            "-n",
            HOST_NAMESPACE,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &pod,
            "--duration",
            "2h",
        ])?;
        std::fs::write(path, token_kubeconfig(&self.server, &self.ca, token.trim()))?;
        Ok(path.to_owned())
    }

    /// A kubelet's credentials on `node`, as a kubelet's bootstrap ends with
    /// them: a client certificate for `system:node:<node>` in the group
    /// `system:nodes`, signed by the cluster's CA, so the API server's Node
    /// authorizer and NodeRestriction admission apply. Key, certificate and
    /// kubeconfig are written in `dir`; returns the kubeconfig's path.
    pub fn kubelet_kubeconfig(&self, node: &str, dir: &Path) -> Result<PathBuf> {
        let pki = self.dir.join("pki");
        let (key, csr, crt) = (
            dir.join("kubelet.key"),
            dir.join("kubelet.csr"),
            dir.join("kubelet.crt"),
        );
        let ext = dir.join("kubelet.ext");
        std::fs::write(
            &ext,
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
        )?;
        let openssl = |args: &[&std::ffi::OsStr]| -> Result<()> {
            let out = Command::new("openssl").args(args).output().context("running openssl")?;
            ensure!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let subject = format!("/O=system:nodes/CN=system:node:{node}");
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
            .to_string();
        openssl(&[
            "req".as_ref(),
            "-newkey".as_ref(),
            "ec".as_ref(),
            "-pkeyopt".as_ref(),
            "ec_paramgen_curve:prime256v1".as_ref(),
            "-nodes".as_ref(),
            "-subj".as_ref(),
            subject.as_ref(),
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            csr.as_os_str(),
        ])?;
        openssl(&[
            "x509".as_ref(),
            "-req".as_ref(),
            "-in".as_ref(),
            csr.as_os_str(),
            "-CA".as_ref(),
            pki.join("ca.crt").as_os_str(),
            "-CAkey".as_ref(),
            pki.join("ca.key").as_os_str(),
            // Not -CAcreateserial: tests sign at once, and would race on its file.
            "-set_serial".as_ref(),
            serial.as_ref(),
            "-days".as_ref(),
            "1".as_ref(),
            "-out".as_ref(),
            crt.as_os_str(),
            "-extfile".as_ref(),
            ext.as_os_str(),
        ])?;
        let path = dir.join("kubelet.kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
                 users:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\n\
                 contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                self.server,
                self.ca.display(),
                crt.display(),
                key.display()
            ),
        )?;
        Ok(path)
    }
}

/// Claims allocated by hand, for tests whose allocations the scheduler
/// cannot make (devices of drivers no host publishes, chosen shares, claims
/// of several drivers in one test's order).
impl ControlPlane {
    /// Create `claim` and write its allocation for `node` as the scheduler
    /// would (the admin's credentials, the status subresource). Creates the
    /// namespace if needed. Returns the claim with the UID the API server
    /// gave it.
    pub fn put_claim(&self, claim: &Claim, node: &str) -> Result<Claim> {
        self.ensure_namespace(&claim.namespace)?;
        let (object, status) = claim.api_object(node);
        self.apply(&object.to_string())
            .with_context(|| format!("creating claim {}/{}", claim.namespace, claim.name))?;
        if let Some(status) = status {
            self.kubectl(&[
                "patch",
                "resourceclaim",
                &claim.name,
                "-n",
                &claim.namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                &serde_json::json!({ "status": status }).to_string(),
            ])
            .with_context(|| format!("allocating claim {}/{}", claim.namespace, claim.name))?;
        }
        let stored = self.claim(&claim.namespace, &claim.name)?;
        let mut claim = claim.clone();
        claim.uid = stored["metadata"]["uid"].as_str().context("claim uid")?.to_owned();
        Ok(claim)
    }

    /// The claim as the API server stores it.
    pub fn claim(&self, namespace: &str, name: &str) -> Result<Value> {
        self.get(&["resourceclaim", name, "-n", namespace])
    }

    /// Delete a claim, waiting until it is gone.
    pub fn delete_claim(&self, namespace: &str, name: &str) -> Result<()> {
        self.kubectl(&["delete", "resourceclaim", name, "-n", namespace, "--wait=true"])?;
        Ok(())
    }

    /// Create `namespace` unless it exists.
    pub fn ensure_namespace(&self, namespace: &str) -> Result<()> {
        let ns = serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace } });
        self.apply(&ns.to_string()).map(drop)
    }

    /// Let the host write `status.devices` for these drivers too, as an
    /// operator adds a driver to the chart's values: a ClusterRole
    /// and binding per driver, for the same ServiceAccount. Test guests
    /// (`faulty.dra.dev`, …) are not in the shipped list.
    pub fn allow_drivers(&self, drivers: &[&str]) -> Result<()> {
        for driver in drivers {
            let name = format!("dra-wasm-host-test-driver-{driver}");
            let role = serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": name },
                "rules": [{ "apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims/driver"],
                            "resourceNames": [driver],
                            "verbs": ["associated-node:update", "associated-node:patch"] }],
            });
            let binding = serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": name },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
                "subjects": [{ "kind": "ServiceAccount", "name": HOST_SERVICE_ACCOUNT, "namespace": HOST_NAMESPACE }],
            });
            self.apply(&format!("{role}\n---\n{binding}"))?;
        }
        Ok(())
    }

    /// The Events whose involved object is `kind`/`name` (in `namespace`,
    /// or cluster-scoped when `None`).
    pub fn events_about(&self, kind: &str, name: &str, namespace: Option<&str>) -> Result<Vec<Value>> {
        let selector = format!("involvedObject.kind={kind},involvedObject.name={name}");
        let mut args = vec!["events", "--field-selector", selector.as_str()];
        match namespace {
            Some(ns) => args.extend_from_slice(&["-n", ns]),
            None => args.push("-A"),
        }
        let list = self.get(&args)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }
}

/// One request of a host, from the API server's audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedRequest {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub code: u16,
}

impl AuditedRequest {
    /// The request an audit log entry records.
    fn of(e: &Value) -> Self {
        let o = &e["objectRef"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Self {
            verb: s(&e["verb"]),
            resource: s(&o["resource"]),
            subresource: s(&o["subresource"]),
            name: s(&o["name"]),
            code: e["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

impl ControlPlane {
    /// Every request the host on `node` made so far, in the order the API
    /// server completed them: the audit log's entries of the host's
    /// ServiceAccount whose bound token names `node`.
    pub fn requests_of(&self, node: &str) -> Vec<AuditedRequest> {
        let text = std::fs::read_to_string(self.dir.join("logs/audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e["stage"] == "ResponseComplete")
            .filter(|e| e["user"]["extra"]["authentication.kubernetes.io/node-name"][0] == node)
            .map(|e| AuditedRequest::of(&e))
            .collect()
    }
}

/// A request of any node's host, with when the API server received it.
#[derive(Clone, Debug)]
pub struct HostRequest {
    pub node: String,
    /// `requestReceivedTimestamp` cut to the second (`2026-12-06T08:20:01`).
    pub second: String,
    pub request: AuditedRequest,
}

impl ControlPlane {
    /// Every request of every host so far (any node's bound token), from the
    /// audit log: completed requests, and watches when they started (a watch
    /// completes only when it ends).
    pub fn host_requests(&self) -> Vec<HostRequest> {
        let text = std::fs::read_to_string(self.dir.join("logs/audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| {
                e["stage"] == "ResponseComplete" && e["verb"] != "watch"
                    || e["stage"] == "ResponseStarted" && e["verb"] == "watch"
            })
            .filter_map(|e| {
                let node = e["user"]["extra"]["authentication.kubernetes.io/node-name"][0].as_str()?;
                Some(HostRequest {
                    node: node.to_owned(),
                    second: e["requestReceivedTimestamp"]
                        .as_str()
                        .unwrap_or_default()
                        .chars()
                        .take(19)
                        .collect(),
                    request: AuditedRequest::of(&e),
                })
            })
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // SAFETY: plain kill(2); up.sh stops its components and removes its directory.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
    }
}

/// A kubeconfig that authenticates with a bearer token.
pub fn token_kubeconfig(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
         users:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
        ca.display()
    )
}
