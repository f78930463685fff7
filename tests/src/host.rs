//! The real `dra-wasm-host` binary in a temporary node layout.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A temporary node: kubelet root, CDI directory, claims file, config.
#[derive(Debug)]
pub struct HostEnv {
    dir: tempfile::TempDir,
    pub kubelet_root: PathBuf,
    pub cdi_dir: PathBuf,
    pub claims_path: PathBuf,
    pub config_path: PathBuf,
    pub cache_dir: PathBuf,
    /// The host's `node_name` (default `test-node`).
    pub node_name: String,
    /// Set: claims come from the API server this kubeconfig names.
    pub kubeconfig: Option<PathBuf>,
    /// Set: the host serves Prometheus metrics on 127.0.0.1 at this port.
    pub metrics_port: Option<u16>,
    /// Extra environment variables for the host process (e.g. the test-only
    /// `DRA_TEST_BOOT_ID_FILE`).
    pub env: Vec<(String, String)>,
    /// `RUST_LOG` for the host; default `$DRA_TEST_LOG`, else `info`.
    pub log_filter: Option<String>,
}

/// One driver in the host config.
#[derive(Clone, Debug)]
pub struct DriverSpec {
    pub name: String,
    pub guest: PathBuf,
    /// TOML for the `[drivers.config]` table body, e.g. `devices = 4`.
    pub config_toml: String,
    /// Extra TOML lines for the `[[drivers]]` table (e.g. `grants = [...]`).
    pub extra_toml: String,
}

impl DriverSpec {
    pub fn new(name: &str, guest: &Path) -> Self {
        Self {
            name: name.into(),
            guest: guest.to_owned(),
            config_toml: String::new(),
            extra_toml: String::new(),
        }
    }
    pub fn config(mut self, toml: &str) -> Self {
        self.config_toml = toml.into();
        self
    }
    /// Extra keys of the `[[drivers]]` table, e.g. `grants = ["nvml"]`.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra_toml = toml.into();
        self
    }
}

impl HostEnv {
    /// A fresh layout; compiled guests are cached in `cache_dir` (share one
    /// across tests to compile each guest once).
    pub fn new(cache_dir: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("dra-host-").tempdir()?;
        let kubelet_root = dir.path().join("kubelet");
        let cdi_dir = dir.path().join("cdi");
        std::fs::create_dir_all(&kubelet_root)?;
        Ok(Self {
            claims_path: dir.path().join("claims.json"),
            config_path: dir.path().join("host.toml"),
            cache_dir: cache_dir.to_owned(),
            node_name: "test-node".to_owned(),
            kubeconfig: None,
            metrics_port: None,
            env: Vec::new(),
            log_filter: None,
            kubelet_root,
            cdi_dir,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Read claims from (and publish slices to) `server` through a kubeconfig.
    pub fn use_api_server(&mut self, server: &crate::apiserver::TestApiServer) -> Result<()> {
        let path = self.dir.path().join("kubeconfig");
        server.write_kubeconfig(&path)?;
        self.kubeconfig = Some(path);
        Ok(())
    }

    /// Read claims from (and publish slices to) the API server this kubeconfig names.
    pub fn use_kubeconfig(&mut self, path: &Path) {
        self.kubeconfig = Some(path.to_owned());
    }

    /// Serve metrics on a free local port; returns the port.
    pub fn enable_metrics(&mut self) -> Result<u16> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        self.metrics_port = Some(port);
        Ok(port)
    }

    /// Keep the directory after the environment is dropped (the demo's `--keep`).
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    /// Write the host config for `drivers`, with `runtime_toml` as the body of `[runtime]`.
    pub fn write_config(&self, drivers: &[DriverSpec], runtime_toml: &str) -> Result<()> {
        self.write_config_with(drivers, runtime_toml, "")
    }

    /// Like [`Self::write_config`], plus `tables`: TOML tables such as `[nvml]`.
    pub fn write_config_with(&self, drivers: &[DriverSpec], runtime_toml: &str, tables: &str) -> Result<()> {
        let claims = match &self.kubeconfig {
            Some(_) => "[claims]\nsource = \"api-server\"\n".to_owned(),
            None => format!("[claims]\nsource = \"file\"\npath = {:?}\n", self.claims_path),
        };
        let metrics = match self.metrics_port {
            Some(port) => format!("metrics_addr = \"127.0.0.1:{port}\"\n"),
            None => String::new(),
        };
        let mut text = format!(
            "node_name = {:?}\nkubelet_root_dir = {:?}\ncdi_dir = {:?}\ncache_dir = {:?}\n{metrics}\n{claims}\n[runtime]\n{runtime_toml}\n\n{tables}\n",
            self.node_name, self.kubelet_root, self.cdi_dir, self.cache_dir
        );
        for d in drivers {
            text.push_str(&format!(
                "\n[[drivers]]\nname = {:?}\nguest = {:?}\n{}\n",
                d.name, d.guest, d.extra_toml
            ));
            if !d.config_toml.is_empty() {
                text.push_str(&format!("[drivers.config]\n{}\n", d.config_toml));
            }
        }
        std::fs::write(&self.config_path, text)?;
        Ok(())
    }

    /// Start the binary in node mode with this environment's config.
    pub fn start(&self, binary: &Path) -> Result<HostProcess> {
        self.start_with_args(binary, &[])
    }

    /// Like [`Self::start`], with extra `run` arguments (e.g. `--rolling-update-uid`).
    pub fn start_with_args(&self, binary: &Path, args: &[&str]) -> Result<HostProcess> {
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = self.dir.path().join(format!("host-{n}.log"));
        let log = File::create(&log_path)?;
        let mut cmd = Command::new(binary);
        if let Some(kubeconfig) = &self.kubeconfig {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .args(["run", "--config"])
            .arg(&self.config_path)
            .args(args)
            .env(
                "RUST_LOG",
                self.log_filter
                    .clone()
                    .or_else(|| std::env::var("DRA_TEST_LOG").ok())
                    .unwrap_or_else(|| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(HostProcess {
            child: Some(child),
            log_path,
        })
    }
}

/// Numbers the log files of successive starts.
static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A running host. Killed (SIGKILL) when dropped if still running.
#[derive(Debug)]
pub struct HostProcess {
    child: Option<Child>,
    log_path: PathBuf,
}

impl HostProcess {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the host logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `kill -9`: no cleanup runs in the host.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("host is not running")
        };
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if rc != 0 {
            bail!("kill(SIGTERM): {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("host did not exit within {timeout:?} of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (and with what), without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("host is not running"),
        }
    }

    /// Wait for the process to exit on its own (e.g. after a start-up error).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("host still running after {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET `path` from an HTTP server on 127.0.0.1:`port` (the host's metrics
/// endpoint); the whole response, headers included.
pub async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}
