//! The host's configuration file (TOML).
//!
//! ```toml
//! node_name = "node-1"                  # default: $NODE_NAME
//! kubelet_root_dir = "/var/lib/kubelet"
//! cdi_dir = "/var/run/cdi"
//! cache_dir = "/var/cache/dra-wasm-host"  # compiled guests; omit to disable
//! healthcheck_addr = "0.0.0.0:51515"    # gRPC liveness; omit to disable
//! metrics_addr = "0.0.0.0:9400"         # Prometheus; omit to disable
//!
//! [claims]
//! source = "api-server"                 # "file" only for the demo and tests
//!
//! [kubernetes]                          # API-server client (in-cluster config or $KUBECONFIG)
//! qps = 5.0                             # client-side rate limit, as client-go's
//! burst = 10
//! node_uid = "…"                        # optional; looked up once (GET node) when absent
//!
//! [nvml]                                # only for drivers granted "nvml"
//! driver_root = "/run/nvidia/driver"    # where the driver's user-space files are; default "/"
//!
//! [hot_swap]                           # replace guests when their files change
//! enabled = true
//! debounce_ms = 100                     # wait for a burst of file events to settle
//! probation_calls = 50                  # a new guest's first calls ...
//! max_failed_calls = 5                  # ... may fail this often; one more rolls back
//!
//! [runtime]
//! call_timeout_ms = 10000
//! memory_limit_mib = 64
//! max_instances = 8
//!
//! [[drivers]]
//! name = "gpu.example.com"
//! guest = "/etc/dra-wasm-host/guests/gpu_driver.wasm"
//! grants = ["nvml"]
//! [drivers.config]                     # handed to the guest's init as JSON
//! sharing = "mps"
//! [drivers.policy]                     # what the guest may hand containers (docs/operations.md)
//! device_nodes = ["/dev/nvidia[0-9]*", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
//! mount_host_paths = ["/run/nvidia/driver/**"]
//!
//! [[drivers]]                           # a network driver (docs/networking.md)
//! name = "net.example.com"
//! guest = "/etc/dra-wasm-host/guests/macvlan_driver.wasm"
//! grants = ["net"]
//! [drivers.net]
//! parents = ["eth1", "eth2"]            # the only links the guest may use
//! hook_path = "/opt/dra-wasm-host/bin/dra-wasm-host"  # the attach hook as runtimes see it
//! ```

use crate::imports::Grant;
pub use crate::imports::net::DriverNetConfig;
pub use crate::imports::nvml::{NvmlConfig, SimulatedNvmlConfig};
pub use crate::kube::client::KubernetesConfig;
use crate::policy::Policy;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name; `$NODE_NAME` (from the downward API) when absent.
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default = "default_kubelet_root")]
    pub kubelet_root_dir: PathBuf,
    #[serde(default = "default_cdi_dir")]
    pub cdi_dir: PathBuf,
    /// Compiled guests are cached here; no caching when absent.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub healthcheck_addr: Option<SocketAddr>,
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    #[serde(default)]
    pub claims: ClaimsConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub nvml: NvmlConfig,
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    #[serde(default)]
    pub hot_swap: HotSwapConfig,
    pub drivers: Vec<DriverConfig>,
}

/// Replacing a driver's guest while the host runs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HotSwapConfig {
    /// Watch each driver's guest file and swap in new content.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Quiet time after a file event before the file is read.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Calls a new guest is on probation for (0: no automatic rollback).
    #[serde(default = "default_probation_calls")]
    pub probation_calls: u64,
    /// Failed calls (traps, timeouts, limits, internal errors) tolerated during
    /// probation; one more returns to the previous guest.
    #[serde(default = "default_max_failed_calls")]
    pub max_failed_calls: u64,
}

impl Default for HotSwapConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            debounce_ms: default_debounce_ms(),
            probation_calls: default_probation_calls(),
            max_failed_calls: default_max_failed_calls(),
        }
    }
}

impl HotSwapConfig {
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
}

fn default_true() -> bool {
    true
}
fn default_debounce_ms() -> u64 {
    100
}
fn default_probation_calls() -> u64 {
    50
}
fn default_max_failed_calls() -> u64 {
    5
}

fn default_kubelet_root() -> PathBuf {
    PathBuf::from("/var/lib/kubelet")
}
fn default_cdi_dir() -> PathBuf {
    PathBuf::from("/var/run/cdi")
}

/// Where ResourceClaims are read from.
#[derive(Clone, Debug, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, tag = "source", rename_all = "kebab-case")]
pub enum ClaimsConfig {
    /// The Kubernetes API server (in-cluster config or `$KUBECONFIG`).
    #[default]
    ApiServer,
    /// A local file of ResourceClaim objects: for the demo and tests only.
    File { path: PathBuf },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Deadline for any one guest call.
    #[serde(default = "default_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Linear memory per guest instance.
    #[serde(default = "default_memory_mib")]
    pub memory_limit_mib: u64,
    /// Guest instances per driver alive at once.
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
    /// Granularity of deadlines.
    #[serde(default = "default_tick_ms")]
    pub epoch_tick_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_memory_mib() -> u64 {
    64
}
fn default_max_instances() -> usize {
    8
}
fn default_tick_ms() -> u64 {
    10
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            call_timeout_ms: default_timeout_ms(),
            memory_limit_mib: default_memory_mib(),
            max_instances: default_max_instances(),
            epoch_tick_ms: default_tick_ms(),
        }
    }
}

impl RuntimeConfig {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.epoch_tick_ms)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverConfig {
    /// The DRA driver name (DNS subdomain, at most 63 characters).
    pub name: String,
    /// The guest component (`.wasm`).
    pub guest: PathBuf,
    /// Capabilities granted to the guest beyond logging.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// CDI vendor; default `k8s.<driver name>`.
    #[serde(default)]
    pub cdi_vendor: Option<String>,
    /// CDI class; default `device`.
    #[serde(default)]
    pub cdi_class: Option<String>,
    /// Handed to the guest's `init` as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
    #[serde(default)]
    pub policy: Policy,
    /// Taint a device in its ResourceSlice (`<driver>/unhealthy`, NoSchedule)
    /// while it is unhealthy, so the scheduler avoids it.
    #[serde(default)]
    pub taint_unhealthy: bool,
    /// Network access for a driver granted `net`.
    #[serde(default)]
    pub net: Option<DriverNetConfig>,
}

impl DriverConfig {
    pub fn cdi_vendor(&self) -> String {
        self.cdi_vendor.clone().unwrap_or_else(|| format!("k8s.{}", self.name))
    }
    pub fn cdi_class(&self) -> String {
        self.cdi_class.clone().unwrap_or_else(|| "device".to_owned())
    }
    /// The guest config as JSON text (`{}` when absent).
    pub fn guest_config_json(&self) -> String {
        match &self.config {
            Some(table) => serde_json::to_string(table).unwrap_or_else(|_| "{}".to_owned()),
            None => "{}".to_owned(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // Relative paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        for d in &mut config.drivers {
            if d.guest.is_relative() {
                d.guest = base.join(&d.guest);
            }
        }
        if let ClaimsConfig::File { path: p } = &mut config.claims
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        if let Some(sim) = &mut config.nvml.simulated {
            for p in [&mut sim.gpus, &mut sim.events_socket] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.drivers.is_empty() {
            return Err("no [[drivers]] configured".into());
        }
        let mut names = HashSet::new();
        for d in &self.drivers {
            crate::kubelet::validate_driver_name(&d.name).map_err(|e| e.to_string())?;
            if !names.insert(&d.name) {
                return Err(format!("driver {} is configured twice", d.name));
            }
            validate_net(d)?;
        }
        for (what, dir) in [("kubelet_root_dir", &self.kubelet_root_dir), ("cdi_dir", &self.cdi_dir)] {
            if !dir.is_absolute() {
                return Err(format!("{what} {} must be an absolute path", dir.display()));
            }
        }
        let r = &self.runtime;
        if r.call_timeout_ms == 0 || r.epoch_tick_ms == 0 || r.epoch_tick_ms > r.call_timeout_ms {
            return Err(
                "runtime: call_timeout_ms and epoch_tick_ms must be positive, the tick no longer than the timeout"
                    .into(),
            );
        }
        if !(1..=4096).contains(&r.memory_limit_mib) {
            return Err("runtime.memory_limit_mib must be between 1 and 4096".into());
        }
        let k = &self.kubernetes;
        if !(k.qps > 0.0 && k.qps.is_finite()) || k.burst == 0 {
            return Err("kubernetes: qps must be positive and burst at least 1".into());
        }
        let h = &self.hot_swap;
        if h.debounce_ms > 10_000 {
            return Err("hot_swap.debounce_ms must be at most 10000".into());
        }
        if h.probation_calls > 0 && h.max_failed_calls >= h.probation_calls {
            return Err("hot_swap.max_failed_calls must be smaller than hot_swap.probation_calls".into());
        }
        if !(1..=256).contains(&r.max_instances) {
            return Err("runtime.max_instances must be between 1 and 256".into());
        }
        Ok(())
    }

    /// The node name: from the file, else `$NODE_NAME`.
    pub fn node_name(&self) -> Result<String, NoNodeName> {
        match &self.node_name {
            Some(n) if !n.is_empty() => Ok(n.clone()),
            _ => std::env::var("NODE_NAME")
                .ok()
                .filter(|n| !n.is_empty())
                .ok_or(NoNodeName),
        }
    }
}

/// Neither the config nor the environment names this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no node_name in the config and $NODE_NAME is not set")]
pub struct NoNodeName;

/// A driver granted `net` needs a `[drivers.net]` section and the other way round.
fn validate_net(d: &DriverConfig) -> Result<(), String> {
    let granted = d.grants.contains(&Grant::Net);
    let Some(net) = &d.net else {
        return match granted {
            true => Err(format!(
                "driver {} is granted net but has no [drivers.net] section naming its parent links",
                d.name
            )),
            false => Ok(()),
        };
    };
    if !granted {
        return Err(format!(
            "driver {} has a [drivers.net] section but is not granted net (add \"net\" to its grants)",
            d.name
        ));
    }
    if net.parents.is_empty() {
        return Err(format!("driver {}: [drivers.net] parents is empty", d.name));
    }
    let mut seen = HashSet::new();
    for p in &net.parents {
        if !crate::imports::net::is_valid_ifname(p) {
            return Err(format!("driver {}: {p:?} is not a valid interface name", d.name));
        }
        if p.starts_with(crate::imports::net::LINK_PREFIX) {
            return Err(format!(
                "driver {}: parent {p} uses the prefix {} that the host reserves for the links it creates",
                d.name,
                crate::imports::net::LINK_PREFIX
            ));
        }
        if !seen.insert(p) {
            return Err(format!("driver {}: parent {p} is listed twice", d.name));
        }
    }
    if let Some(h) = &net.hook_path
        && !h.is_absolute()
    {
        return Err(format!(
            "driver {}: net.hook_path {} must be absolute",
            d.name,
            h.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cause is the error's source, printed once by `{:#}` (it was
    /// in the message too, and printed twice).
    #[test]
    fn a_config_that_cannot_be_read_names_its_cause_once() {
        let e = Config::load(Path::new("/nonexistent/dra-host.toml")).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert!(
            chain.starts_with("reading config /nonexistent/dra-host.toml: "),
            "{chain}"
        );
        assert_eq!(chain.matches("os error 2").count(), 1, "{chain}");
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load("[[drivers]]\nname = \"gpu.example.com\"\nguest = \"gpu.wasm\"\n").unwrap();
        assert_eq!(c.kubelet_root_dir, Path::new("/var/lib/kubelet"));
        assert_eq!(c.claims, ClaimsConfig::ApiServer);
        assert_eq!(c.runtime.call_timeout(), Duration::from_secs(10));
        assert_eq!(c.drivers[0].cdi_vendor(), "k8s.gpu.example.com");
        assert!(c.drivers[0].guest.is_absolute());
        assert_eq!(c.drivers[0].guest_config_json(), "{}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = load("[[drivers]]\nname = \"Bad Name\"\nguest = \"g.wasm\"\n").unwrap_err();
        assert!(e.to_string().contains("Bad Name"), "{e}");
        let e = load("[[drivers]]\nname = \"a.b\"\nguest = \"g.wasm\"\ngrants = [\"disk\"]\n").unwrap_err();
        assert!(e.to_string().contains("disk"), "{e}");
        let e = load("nodename = \"x\"\n[[drivers]]\nname = \"a.b\"\nguest = \"g.wasm\"\n").unwrap_err();
        assert!(e.to_string().contains("nodename"), "{e}");
        let e = load("drivers = []\n").unwrap_err();
        assert!(e.to_string().contains("no [[drivers]]"), "{e}");
    }

    #[test]
    fn net_needs_grant_and_parents() {
        let base = "[[drivers]]\nname = \"net.dra.dev\"\nguest = \"m.wasm\"\n";
        let e = load(&format!("{base}grants = [\"net\"]\n")).unwrap_err();
        assert!(e.to_string().contains("no [drivers.net] section"), "{e}");
        let e = load(&format!("{base}[drivers.net]\nparents = [\"eth1\"]\n")).unwrap_err();
        assert!(e.to_string().contains("not granted net"), "{e}");
        let e = load(&format!("{base}grants = [\"net\"]\n[drivers.net]\nparents = []\n")).unwrap_err();
        assert!(e.to_string().contains("parents is empty"), "{e}");
        for (bad, why) in [
            ("dwh1", "reserves"),
            ("a/b", "valid interface"),
            ("eth1\", \"eth1", "twice"),
        ] {
            let e = load(&format!(
                "{base}grants = [\"net\"]\n[drivers.net]\nparents = [\"{bad}\"]\n"
            ))
            .unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let e = load(&format!(
            "{base}grants = [\"net\"]\n[drivers.net]\nparents = [\"eth1\"]\nhook_path = \"bin/x\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("must be absolute"), "{e}");
        let c = load(&format!(
            "{base}grants = [\"net\"]\n[drivers.net]\nparents = [\"eth1\", \"eth2\"]\n"
        ))
        .unwrap();
        assert_eq!(c.drivers[0].net.as_ref().unwrap().parents, ["eth1", "eth2"]);
    }

    #[test]
    fn guest_config_becomes_json() {
        let c = load("[[drivers]]\nname = \"a.b\"\nguest = \"g.wasm\"\n[drivers.config]\ndevices = 4\n").unwrap();
        assert_eq!(c.drivers[0].guest_config_json(), r#"{"devices":4}"#);
    }
}
