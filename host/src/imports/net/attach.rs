//! Attaching prepared links to pods, when the pod's network namespace exists.
//!
//! The timing problem: the kubelet calls NodePrepareResources before the
//! runtime creates the pod sandbox, so at prepare time there is no network
//! namespace to move a link into. The guest returns a CDI `createRuntime`
//! hook instead; the runtime runs it once the container's namespaces exist,
//! with the OCI state (`pid`, ...) on stdin. The hook is this binary's
//! `net-attach` subcommand: it sends `{link, pid}` to the host over a Unix
//! socket in the driver's plugin directory, and the host moves the link into
//! `/proc/<pid>/ns/net`, renames it, sets addresses, routes and up, and
//! applies the egress limit. For the second container of the same pod the
//! link is already there: the request succeeds without changes.
//!
//! Sockets are per host process: `net-attach.sock`, or in rolling-update
//! mode `net-attach-<pod UID>.sock`, so that during an update of the host
//! both processes serve and each removes only its own socket. The hook tries
//! every `net-attach*.sock` of the directory, newest first.

use super::netlink::{self, LinkState, NetlinkError};
use super::store::{Attached, LinkRecord};
use super::{NetDriver, NetOpError};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// The largest request or OCI state accepted (a runtime's state is small).
const MAX_MESSAGE: u64 = 64 * 1024;

/// What the hook asks the host.
#[derive(Debug, Serialize, Deserialize)]
pub struct AttachRequest {
    pub link: String,
    pub pid: u32,
}

/// The host's answer.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct AttachAnswer {
    pub ok: bool,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub interface: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// False when the link was already attached (a second container).
    #[serde(default)]
    pub moved: bool,
}

/// The socket of this host process in `plugin_dir`.
pub fn socket_path(plugin_dir: &Path, rolling_update_uid: Option<&str>) -> PathBuf {
    match rolling_update_uid {
        Some(uid) => plugin_dir.join(format!("net-attach-{uid}.sock")),
        None => plugin_dir.join("net-attach.sock"),
    }
}

/// A served attach socket; removed when dropped.
#[derive(Debug)]
pub struct AttachServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AttachServer {
    fn drop(&mut self) {
        self.task.abort();
        // Only our own socket: the other host process of a rolling update
        // keeps serving on its own.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AttachServer {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Serve `driver`'s attach requests on `path`.
pub fn serve(driver: Arc<NetDriver>, path: &Path) -> std::io::Result<AttachServer> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "attach socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let driver = Arc::clone(&driver);
            tokio::spawn(async move {
                if let Err(e) = handle(driver, stream).await {
                    tracing::warn!(error = %e, "attach connection failed");
                }
            });
        }
    });
    tracing::info!(socket = %path.display(), "serving network attach requests");
    Ok(AttachServer {
        path: path.to_owned(),
        task,
    })
}

async fn handle(driver: Arc<NetDriver>, stream: tokio::net::UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_MESSAGE))
        .read_line(&mut line)
        .await?;
    let answer = match serde_json::from_str::<AttachRequest>(&line) {
        Err(e) => AttachAnswer::error(format!("bad request: {e}")),
        Ok(req) => {
            let span = tracing::info_span!("net-attach", driver = %driver.driver, link = %req.link, pid = req.pid);
            let d = Arc::clone(&driver);
            let result = tokio::task::spawn_blocking(move || attach(&d, &req.link, req.pid)).await;
            let _g = span.enter();
            match result {
                Ok(Ok(a)) => {
                    tracing::info!(interface = %a.interface, moved = a.moved, "link attached to the pod");
                    a
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::error::Chain(&e), "attach failed");
                    AttachAnswer::error(crate::error::chain(&e))
                }
                Err(e) => AttachAnswer::error(format!("attach task failed: {e}")),
            }
        }
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

impl AttachAnswer {
    fn error(error: String) -> Self {
        Self {
            ok: false,
            error,
            interface: String::new(),
            mac: String::new(),
            addresses: vec![],
            moved: false,
        }
    }
}

/// The network namespace of an attached pod, if it is still the same one.
pub fn pod_netns(at: Attached) -> Option<File> {
    let file = File::open(format!("/proc/{}/ns/net", at.pid)).ok()?;
    (file.metadata().ok()?.ino() == at.netns_inode).then_some(file)
}

/// Where `tc` is, for egress limits.
pub fn tc_program() -> Option<PathBuf> {
    ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Move `link` into the network namespace of `pid` and configure it as its
/// attachment says. Idempotent: a link already in the pod is checked, not
/// changed.
pub fn attach(driver: &NetDriver, link: &str, pid: u32) -> Result<AttachAnswer, NetOpError> {
    if pid <= 1 {
        return Err(NetOpError::Invalid(format!("pid {pid} cannot be a container")));
    }
    let record: LinkRecord = driver
        .store
        .read()?
        .links
        .into_iter()
        .find(|l| l.name == link)
        .ok_or_else(|| NetOpError::Denied(format!("no prepared link {link:?} for driver {}", driver.driver)))?;
    let attachment = record
        .attachment
        .clone()
        .ok_or_else(|| NetOpError::Invalid(format!("link {link} was prepared without an attachment")))?;
    let ns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ns = netlink::open_netns(&ns_path)?;
    let inode = ns
        .metadata()
        .map_err(|source| NetlinkError::Namespace {
            path: ns_path.display().to_string(),
            source,
        })?
        .ino();

    // Step 1, in the node's namespace: move it if it is still here.
    let ns_for_move = ns.try_clone().map_err(|source| NetlinkError::Namespace {
        path: ns_path.display().to_string(),
        source,
    })?;
    let name = record.name.clone();
    let mac = record.mac.clone();
    let moved = netlink::run(None, move |h| async move {
        match netlink::by_name(&h, &name).await? {
            Some(l) if mac.is_empty() || l.mac == mac => {
                netlink::move_to_netns(&h, l.index, &ns_for_move).await?;
                Ok(true)
            }
            Some(l) => Err(NetlinkError::Failed {
                op: format!("attaching {name}"),
                message: format!("the link has MAC {} where {mac} was created", l.mac),
                errno: None,
            }),
            None => Ok(false),
        }
    })?;
    // Recorded before configuring, so that unprepare finds the link in the
    // pod even if what follows fails.
    driver.store.update(|d| {
        if let Some(r) = d.links.iter_mut().find(|l| l.name == link) {
            r.attached = Some(Attached {
                pid,
                netns_inode: inode,
            });
        }
        Ok(())
    })?;

    // Step 2, inside the pod: rename, address, up, routes, egress limit.
    let host_name = record.name.clone();
    let mac = record.mac.clone();
    let rate = record.egress_rate_bps;
    let a = attachment.clone();
    let state: LinkState = netlink::run(Some(ns), move |h| async move {
        let mut l = match netlink::by_name(&h, &host_name).await? {
            Some(l) => {
                netlink::rename(&h, l.index, &a.pod_interface).await?;
                l
            }
            None => match netlink::by_name(&h, &a.pod_interface).await? {
                Some(l) if mac.is_empty() || l.mac == mac => l,
                Some(l) => {
                    return Err(NetlinkError::Failed {
                        op: format!("attaching {host_name}"),
                        message: format!(
                            "the pod already has an interface {} (MAC {}) that is not this link",
                            a.pod_interface, l.mac
                        ),
                        errno: Some(libc::EEXIST),
                    });
                }
                None => {
                    return Err(NetlinkError::Failed {
                        op: format!("attaching {host_name}"),
                        message: "the link is neither on the node nor in the pod (was the claim unprepared?)".into(),
                        errno: Some(libc::ENODEV),
                    });
                }
            },
        };
        l.name = a.pod_interface.clone();
        for cidr in &a.addresses {
            netlink::add_address(&h, &l, cidr).await?;
        }
        netlink::set_up(&h, l.index).await?;
        for r in &a.routes {
            netlink::add_route(&h, l.index, &r.destination, r.gateway).await?;
        }
        if let (Some(bps), Some(tc)) = (rate, tc_program()) {
            // This thread is in the pod's namespace and a child process
            // inherits it: `tc` acts on the pod's interface.
            let burst = (bps / 8 / 100).max(16 * 1024);
            let out = std::process::Command::new(tc)
                .args(["qdisc", "replace", "dev", &a.pod_interface, "root", "tbf"])
                .args([
                    "rate",
                    &format!("{bps}bit"),
                    "burst",
                    &burst.to_string(),
                    "latency",
                    "50ms",
                ])
                .output()
                .map_err(|source| NetlinkError::Worker {
                    what: "running tc",
                    source,
                })?;
            if !out.status.success() {
                tracing::warn!(stderr = %String::from_utf8_lossy(&out.stderr).trim(), "egress limit not applied");
            }
        }
        Ok(netlink::by_name(&h, &a.pod_interface).await?.unwrap_or(l))
    })?;
    Ok(AttachAnswer {
        ok: true,
        error: String::new(),
        interface: state.name,
        mac: state.mac,
        addresses: state.addresses,
        moved,
    })
}

/// The OCI state a runtime passes to hooks on stdin (the fields we use).
#[derive(Debug, Deserialize)]
struct OciState {
    pid: Option<i64>,
}

/// Why the hook failed; printed by the binary, seen in the runtime's error.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("reading the OCI state from stdin")]
    Read(#[source] std::io::Error),
    #[error("reading the OCI state from stdin")]
    Parse(#[source] serde_json::Error),
    #[error("reading the OCI state from stdin: the state has no container pid")]
    NoPid,
    #[error("no attach socket in {}: is the network driver's host running on this node?", dir.display())]
    NoSocket { dir: PathBuf },
    #[error("the host refused: {0}")]
    Refused(String),
    #[error("talking to the host over {}", socket.display())]
    Io { socket: PathBuf, source: std::io::Error },
}

/// The `net-attach` hook: read the OCI state from `stdin`, ask the host to
/// attach `link` to the container's pod.
pub fn run_hook(dir: &Path, link: &str, stdin: impl Read) -> Result<AttachAnswer, HookError> {
    let mut text = String::new();
    stdin
        .take(MAX_MESSAGE)
        .read_to_string(&mut text)
        .map_err(HookError::Read)?;
    let state: OciState = serde_json::from_str(&text).map_err(HookError::Parse)?;
    let pid = state
        .pid
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 1)
        .ok_or(HookError::NoPid)?;
    request(
        dir,
        &AttachRequest {
            link: link.to_owned(),
            pid,
        },
    )
}

/// Send `req` to a host serving `dir`, trying each attach socket, newest first.
pub fn request(dir: &Path, req: &AttachRequest) -> Result<AttachAnswer, HookError> {
    let mut sockets: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|source| HookError::Io {
            socket: dir.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("net-attach") && n.ends_with(".sock")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    sockets.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut last = None;
    for (_, socket) in sockets {
        match ask(&socket, req) {
            Ok(a) if a.ok => return Ok(a),
            Ok(a) => return Err(HookError::Refused(a.error)),
            // A socket left by a host that is gone: try the next one.
            Err(source) => last = Some(HookError::Io { socket, source }),
        }
    }
    Err(last.unwrap_or(HookError::NoSocket { dir: dir.to_owned() }))
}

fn ask(socket: &Path, req: &AttachRequest) -> std::io::Result<AttachAnswer> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(8)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_MESSAGE)).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_needs_a_pid_and_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let e = run_hook(dir.path(), "dwh0", &b"{\"ociVersion\":\"1.2.0\"}"[..]).unwrap_err();
        assert!(e.to_string().contains("no container pid"), "{e}");
        let e = run_hook(dir.path(), "dwh0", &b"not json"[..]).unwrap_err();
        assert!(e.to_string().contains("OCI state"), "{e}");
        let e = run_hook(dir.path(), "dwh0", &b"{\"pid\": 4242}"[..]).unwrap_err();
        assert!(matches!(e, HookError::NoSocket { .. }), "{e}");
        // A stale socket file (no one listening) is an I/O error naming it.
        let _ = std::os::unix::net::UnixListener::bind(dir.path().join("net-attach.sock")).map(drop);
        let e = run_hook(dir.path(), "dwh0", &b"{\"pid\": 4242}"[..]).unwrap_err();
        assert!(e.to_string().contains("net-attach.sock"), "{e}");
    }

    #[test]
    fn sockets_are_per_process() {
        let d = Path::new("/p");
        assert_eq!(socket_path(d, None), Path::new("/p/net-attach.sock"));
        assert_eq!(socket_path(d, Some("u-1")), Path::new("/p/net-attach-u-1.sock"));
    }
}
