//! `dra-wasm-host guest run`: a vendor's local harness.
//!
//! It loads a guest the way `run` does — the driver's entry of a host config
//! (grants, `[drivers.config]`, policy, runtime limits), through the same
//! assembly, [`Node::assemble`] — and drives the assembled [`Driver`] from files and
//! arguments instead of a kubelet and an API server:
//!
//! - `slices`: the inventory as the ResourceSlices the publisher would write;
//! - `prepare CLAIM…`: ResourceClaims as `kubectl get resourceclaim -o yaml`
//!   prints them, prepared through [`Driver::prepare`] (allocation checks,
//!   guest call, policy, CDI spec, checkpoint, `status.devices`);
//! - `unprepare CLAIM…`: [`Driver::unprepare`] from the checkpoint;
//! - `events EVENT…`: Xid/ECC errors on simulated GPUs and link changes, routed
//!   by the host's own event routers to [`Driver::handle_event`].
//!
//! Everything the host would write under `/var/lib/kubelet` and `/var/run/cdi`
//! goes to a state directory (`--state-dir`, else a temporary one), so no
//! root is needed (except by a `net` guest's own netlink calls, which
//! the kernel checks). Output is YAML on stdout; logs go to stderr.

use super::guest::{check_inventory, select_driver};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use dra_wasm_host::claim::ClaimRef;
use dra_wasm_host::config::{Config, SimulatedNvmlConfig};
use dra_wasm_host::driver::{Driver, OperationError};
use dra_wasm_host::error::chain;
use dra_wasm_host::imports::net::Net;
use dra_wasm_host::imports::net::netlink::LinkState;
use dra_wasm_host::imports::nvml::Nvml;
use dra_wasm_host::kube::publisher::name_prefix;
use dra_wasm_host::kube::slices;
use dra_wasm_host::kube::{ClaimSource, FetchError, FetchFuture, StatusFuture};
use dra_wasm_host::metrics::Metrics;
use dra_wasm_host::model;
use dra_wasm_host::node::{AssembledDriver, EventDelivery, Node};
use dra_wasm_host::state::cdi::CdiError;
use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, ResourceClaim, ResourceSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// `guest run`'s arguments.
#[derive(Args)]
pub(crate) struct RunArgs {
    /// The guest component (`.wasm`).
    file: PathBuf,
    /// The host config whose `[[drivers]]` entry the guest is loaded with
    /// (grants, config, policy); its `[runtime]` limits apply too.
    #[arg(long, env = "DRA_CONFIG")]
    config: PathBuf,
    /// The driver of the config (needed when it has several).
    #[arg(long)]
    driver: Option<String>,
    /// The node name (default: the config's `node_name`, `$NODE_NAME`, or `local-node`).
    #[arg(long)]
    node: Option<String>,
    /// Keep the checkpoint, CDI specs and network state here, so that a
    /// later `unprepare` finds what `prepare` did (default: a temporary
    /// directory, removed at exit).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Simulated GPUs for a driver granted `nvml` (the JSON file of
    /// `[nvml.simulated] gpus`), instead of the node's NVML.
    #[arg(long)]
    gpus: Option<PathBuf>,
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand)]
enum Step {
    /// Print the ResourceSlices the host would publish (YAML, resource.k8s.io/v1).
    /// Fails naming each device the API server would refuse (the host
    /// publishes the others and reports these), as `guest validate` does.
    Slices,
    /// Prepare ResourceClaims (YAML or JSON files, as `kubectl get
    /// resourceclaim -o yaml` prints them) and print, per claim, the policy
    /// verdict, the kubelet's answer, the CDI spec and the `status.devices`
    /// entries (YAML). Fails when a claim is not prepared.
    Prepare {
        #[arg(required = true, value_name = "CLAIM")]
        claims: Vec<PathBuf>,
    },
    /// Unprepare claims (the same files) from the checkpoint in --state-dir.
    Unprepare {
        #[arg(required = true, value_name = "CLAIM")]
        claims: Vec<PathBuf>,
    },
    /// Feed events to the guest in order and print the device health each
    /// one leads to (YAML). EVENT: `xid=GPU:XID` (GPU: index or UUID of a
    /// simulated GPU), `ecc=GPU` (double-bit ECC error), `link=NAME:up` or
    /// `link=NAME:down` (a parent link of a `net` driver).
    Events {
        #[arg(required = true, value_name = "EVENT")]
        events: Vec<String>,
    },
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let harness = Harness::load(&args).await?;
    match &args.step {
        Step::Slices => harness.slices(),
        Step::Prepare { claims } => harness.prepare(claims).await,
        Step::Unprepare { claims } => harness.unprepare(claims).await,
        Step::Events { events } => harness.events(events).await,
    }
}

/// One driver loaded as `run` loads it, with its state in a local directory.
struct Harness {
    node: Node,
    driver_name: String,
    driver: Arc<Driver>,
    claims: Arc<LocalClaims>,
    /// What the host's event routers send to the driver (the guest's imports
    /// and the link router hold the senders).
    events_rx: tokio::sync::Mutex<mpsc::Receiver<model::Event>>,
    _temp: Option<tempfile::TempDir>,
}

impl Harness {
    async fn load(args: &RunArgs) -> Result<Self> {
        let mut config = Config::load(&args.config)?;
        select_driver(&mut config, &args.config, args.driver.as_deref(), &args.file)?;
        let (state, temp) = match &args.state_dir {
            Some(dir) => {
                dra_wasm_host::state::fsutil::ensure_dir(dir, 0o755)
                    .with_context(|| format!("--state-dir {}", dir.display()))?;
                (std::path::absolute(dir)?, None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("dra-guest-run-").tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        localize(&mut config, &state, args.gpus.as_deref())?;
        let node = match &args.node {
            Some(n) => n.clone(),
            None => config.node_name().unwrap_or_else(|_| "local-node".to_owned()),
        };
        let claims = Arc::new(LocalClaims::default());
        let node = Node::with_claims(
            &config,
            &node,
            Metrics::new(),
            Arc::clone(&claims) as Arc<dyn ClaimSource>,
            None,
            None,
            // A local run has no reboots to notice: its state is its own.
            None,
        )?;
        let d = &config.drivers[0];
        let paths = node.paths(&d.name);
        let AssembledDriver { driver, events, .. } = node.assemble(d, &paths, EventDelivery::Local).await?;
        let events_rx = events.context("a local assembly hands back the driver's events (a host bug)")?;
        Ok(Self {
            node,
            driver_name: d.name.clone(),
            driver,
            claims,
            events_rx: tokio::sync::Mutex::new(events_rx),
            _temp: temp,
        })
    }

    /// The inventory as the ResourceSlices a first publish writes: the
    /// valid devices, as the publisher leaves the others out. Fails after
    /// printing them when a device was left out (each named on stderr, as
    /// by `guest validate`).
    fn slices(&self) -> Result<()> {
        let inventory = self.driver.inventory().borrow().clone();
        let (desired, refusal) = check_inventory(&self.driver_name, &inventory);
        let mut docs = Vec::new();
        for pool in &desired.pools {
            for (index, devices) in pool.slices.iter().enumerate() {
                // The publisher's name less the random suffix the API
                // server adds to its `generateName`.
                let prefix = name_prefix(index, pool.slices.len(), &self.driver_name, self.node.loader().node());
                let slice = ResourceSlice {
                    metadata: ObjectMeta {
                        name: Some(prefix.trim_end_matches('-').to_owned()),
                        ..Default::default()
                    },
                    // A pool's first generation, as the publisher starts it.
                    spec: slices::spec(&self.driver_name, self.node.loader().node(), pool, devices, 1),
                };
                docs.push(slice);
            }
        }
        print_yaml(&docs)?;
        match refusal {
            Some(refusal) => bail!("{refusal}"),
            None => Ok(()),
        }
    }

    async fn prepare(&self, files: &[PathBuf]) -> Result<()> {
        let claims = read_claim_files(files)?;
        for (file, where_, claim) in &claims {
            let drivers = result_drivers(claim);
            if !drivers.iter().any(|d| d == &self.driver_name) {
                bail!(
                    "{}: {where_}status.allocation.devices.results: no result is for driver {} (found: {})",
                    file.display(),
                    self.driver_name,
                    drivers.join(", ")
                );
            }
            self.claims.add(claim.clone());
        }
        let refs: Vec<ClaimRef> = claims.iter().map(|(_, _, c)| claim_ref(c)).collect();
        let results: HashMap<String, _> = self.driver.prepare(refs.clone()).await.into_iter().collect();
        let mut docs = Vec::new();
        let mut failed = 0;
        for r in &refs {
            let mut report = PrepareReport {
                claim: format!("{}/{}", r.namespace, r.name),
                uid: r.uid.clone(),
                verdict: "Accepted",
                reason: None,
                devices: Vec::new(),
                cdi_spec_file: None,
                cdi_spec: None,
                status_devices: Vec::new(),
            };
            let result = results
                .get(&r.uid)
                .ok_or_else(|| anyhow!("claim {}: the driver gave no answer (a host bug)", r.uid))?;
            match result {
                Ok(devices) => {
                    report.devices = devices.clone();
                    let spec = self.driver.cdi().spec_path(&r.uid);
                    if spec.exists() {
                        let text = std::fs::read_to_string(&spec)?;
                        report.cdi_spec_file = spec.file_name().map(|n| n.to_string_lossy().into_owned());
                        report.cdi_spec = Some(serde_json::from_str(&text)?);
                    }
                    report.status_devices = self.claims.status(&r.uid);
                }
                Err(e) => {
                    failed += 1;
                    let rejected = matches!(
                        e,
                        OperationError::Rejected(_) | OperationError::Cdi(CdiError::Invalid(_))
                    );
                    report.verdict = if rejected { "Rejected" } else { "Failed" };
                    report.reason = Some(chain(e));
                }
            }
            docs.push(report);
        }
        print_yaml(&docs)?;
        if failed > 0 {
            bail!(
                "{failed} of {} claims were not prepared (see their verdict)",
                refs.len()
            );
        }
        Ok(())
    }

    async fn unprepare(&self, files: &[PathBuf]) -> Result<()> {
        let claims = read_claim_files(files)?;
        let refs: Vec<ClaimRef> = claims.iter().map(|(_, _, c)| claim_ref(c)).collect();
        let known: Vec<bool> = refs
            .iter()
            .map(|r| self.driver.checkpoint().get(&r.uid).is_some())
            .collect();
        let results: HashMap<String, _> = self.driver.unprepare(refs.clone()).await.into_iter().collect();
        let mut docs = Vec::new();
        let mut failed = 0;
        for (r, checkpointed) in refs.iter().zip(known) {
            let answer = results
                .get(&r.uid)
                .ok_or_else(|| anyhow!("claim {}: the driver gave no answer (a host bug)", r.uid))?;
            let (result, reason) = match answer {
                Ok(()) => ("Unprepared", None),
                Err(e) => {
                    failed += 1;
                    ("Failed", Some(chain(e)))
                }
            };
            docs.push(UnprepareReport {
                claim: format!("{}/{}", r.namespace, r.name),
                uid: r.uid.clone(),
                checkpointed,
                result,
                reason,
            });
        }
        print_yaml(&docs)?;
        if failed > 0 {
            bail!("{failed} of {} claims were not unprepared", refs.len());
        }
        Ok(())
    }

    async fn events(&self, events: &[String]) -> Result<()> {
        // Every event is checked before the first is delivered.
        let events: Vec<(&String, Resolved)> = events
            .iter()
            .map(|text| Ok((text, self.resolve(text, parse_event(text)?)?)))
            .collect::<Result<_>>()?;
        let mut out = Yaml::default();
        for (text, event) in events {
            let before = self.driver.health().snapshot();
            let delivered = match event {
                Resolved::Gpu(nvml, event) => nvml.router().deliver(event),
                Resolved::Link(net, link) => net.router().changed(&link),
            };
            let mut reports = Vec::new();
            let mut errors = Vec::new();
            let mut rx = self.events_rx.lock().await;
            while let Ok(e) = rx.try_recv() {
                match self.driver.handle_event(e).await {
                    Ok(r) => reports.extend(r.iter().map(HealthReport::from)),
                    Err(e) => errors.push(chain(&e)),
                }
            }
            let after = self.driver.health().snapshot();
            let changes = after
                .iter()
                .filter_map(|now| {
                    let was = before.iter().find(|b| b.pool == now.pool && b.device == now.device);
                    let changed = was.is_none_or(|b| b.status != now.status || b.message != now.message);
                    changed.then(|| HealthChange {
                        pool: now.pool.clone(),
                        device: now.device.clone(),
                        from: was.map(|b| b.status.as_str()),
                        to: now.status.as_str(),
                        message: now.message.clone(),
                    })
                })
                .collect();
            out.print(&EventReport {
                event: text.clone(),
                delivered,
                reports,
                errors,
                changes,
            })?;
        }
        Ok(())
    }

    /// What the host's router for the event's kind is given: a GPU event
    /// names its GPU by UUID (an index is looked up in the simulated GPUs),
    /// a link event carries the state the link monitor would report.
    fn resolve(&self, text: &str, event: Injected) -> Result<Resolved> {
        match event {
            Injected::Gpu { gpu, kind, data } => {
                let nvml = self.node.loader().capabilities().nvml.clone().ok_or_else(|| {
                    anyhow!(
                        "event {text:?}: driver {} is not granted nvml (grants = [\"nvml\"] in its [[drivers]] entry)",
                        self.driver_name
                    )
                })?;
                let uuid = match gpu.parse::<u32>() {
                    Ok(index) => {
                        let count = nvml.backend().device_count().unwrap_or(0);
                        nvml.backend()
                            .device_info(index)
                            .map_err(|_| anyhow!("event {text:?}: no GPU with index {index} (the node has {count})"))?
                            .uuid
                    }
                    Err(_) => gpu,
                };
                Ok(Resolved::Gpu(nvml, model::GpuEvent { uuid, kind, data }))
            }
            Injected::Link { name, up } => {
                let net = self.node.loader().capabilities().net.clone().ok_or_else(|| {
                    anyhow!(
                        "event {text:?}: driver {} is not granted net (grants = [\"net\"] and a [drivers.net] section)",
                        self.driver_name
                    )
                })?;
                let link = LinkState {
                    name,
                    index: 0,
                    kind: String::new(),
                    mtu: 0,
                    mac: String::new(),
                    up,
                    parent_index: None,
                    addresses: Vec::new(),
                };
                Ok(Resolved::Link(net, link))
            }
        }
    }
}

/// An event ready for its router.
enum Resolved {
    Gpu(Arc<Nvml>, model::GpuEvent),
    Link(Arc<Net>, LinkState),
}

/// Point everything the host writes into `state`, and use simulated GPUs
/// when asked to.
fn localize(config: &mut Config, state: &Path, gpus: Option<&Path>) -> Result<()> {
    config.kubelet_root_dir = state.join("kubelet");
    config.cdi_dir = state.join("cdi");
    let events_socket = state.join("nvml-events.sock");
    match gpus {
        Some(gpus) => {
            let d = &config.drivers[0];
            if !d.grants.contains(&dra_wasm_host::imports::Grant::Nvml) {
                bail!(
                    "--gpus: driver {} is not granted nvml (grants = [\"nvml\"] in its [[drivers]] entry)",
                    d.name
                );
            }
            config.nvml.simulated = Some(SimulatedNvmlConfig {
                gpus: std::path::absolute(gpus)?,
                events_socket,
            });
        }
        None => {
            if let Some(sim) = &mut config.nvml.simulated {
                sim.events_socket = events_socket;
            }
        }
    }
    Ok(())
}

/// An event from the command line.
#[derive(Debug, PartialEq)]
enum Injected {
    Gpu {
        gpu: String,
        kind: model::GpuEventKind,
        data: u64,
    },
    Link {
        name: String,
        up: bool,
    },
}

fn parse_event(text: &str) -> Result<Injected> {
    let bad = |why: &str| anyhow!("event {text:?}: {why} (xid=GPU:XID, ecc=GPU, link=NAME:up|down)");
    let (kind, value) = text.split_once('=').ok_or_else(|| bad("no '='"))?;
    match kind {
        "xid" => {
            let (gpu, xid) = value
                .split_once(':')
                .ok_or_else(|| bad("no ':' between the GPU and the Xid"))?;
            let xid = xid
                .parse()
                .map_err(|_| bad(&format!("the Xid {xid:?} is not a number")))?;
            if gpu.is_empty() {
                return Err(bad("no GPU"));
            }
            Ok(Injected::Gpu {
                gpu: gpu.to_owned(),
                kind: model::GpuEventKind::XidCriticalError,
                data: xid,
            })
        }
        "ecc" if !value.is_empty() => Ok(Injected::Gpu {
            gpu: value.to_owned(),
            kind: model::GpuEventKind::DoubleBitEccError,
            data: 0,
        }),
        "ecc" => Err(bad("no GPU")),
        "link" => {
            let (name, state) = value.rsplit_once(':').ok_or_else(|| bad("no ':' before up or down"))?;
            let up = match state {
                "up" => true,
                "down" => false,
                other => return Err(bad(&format!("the state {other:?} is not up or down"))),
            };
            if !dra_wasm_host::imports::net::is_valid_ifname(name) {
                return Err(bad(&format!("{name:?} is not an interface name")));
            }
            Ok(Injected::Link {
                name: name.to_owned(),
                up,
            })
        }
        other => Err(bad(&format!("unknown kind {other:?}"))),
    }
}

/// What `prepare` prints per claim.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PrepareReport {
    claim: String,
    uid: String,
    /// `Accepted`; `Rejected` when the host refused the guest's answer
    /// (policy, CDI rules); `Failed` for anything else.
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The kubelet's answer.
    devices: Vec<dra_wasm_host::claim::PreparedDevice>,
    /// Its name in the CDI directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    cdi_spec_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cdi_spec: Option<Value>,
    /// What the host writes into the claim's `status.devices`.
    status_devices: Vec<AllocatedDeviceStatus>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UnprepareReport {
    claim: String,
    uid: String,
    /// Whether the checkpoint had it; unknown claims get an unprepare with
    /// empty state, as the host does after a crash between prepare and commit.
    checkpointed: bool,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventReport {
    event: String,
    /// Drivers the host's router handed it to (0: the guest did not subscribe to it).
    delivered: usize,
    /// What the guest's `on-event` returned.
    reports: Vec<HealthReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
    /// Health the host now reports to the kubelet, where it changed.
    changes: Vec<HealthChange>,
}

#[derive(Serialize)]
struct HealthReport {
    pool: String,
    device: String,
    status: &'static str,
    message: String,
}

impl From<&model::DeviceHealth> for HealthReport {
    fn from(h: &model::DeviceHealth) -> Self {
        Self {
            pool: h.pool.clone(),
            device: h.device.clone(),
            status: match h.status {
                model::HealthStatus::Healthy => "Healthy",
                model::HealthStatus::Unhealthy => "Unhealthy",
                model::HealthStatus::Unknown => "Unknown",
            },
            message: h.message.clone(),
        }
    }
}

#[derive(Serialize)]
struct HealthChange {
    pool: String,
    device: String,
    from: Option<&'static str>,
    to: &'static str,
    message: String,
}

/// Print YAML documents, `---` between them.
fn print_yaml<T: Serialize>(docs: &[T]) -> Result<()> {
    let mut out = Yaml::default();
    docs.iter().try_for_each(|d| out.print(d))
}

/// YAML documents on stdout, each as soon as it is ready.
#[derive(Default)]
struct Yaml {
    started: bool,
}

impl Yaml {
    fn print<T: Serialize>(&mut self, doc: &T) -> Result<()> {
        let text = serde_saphyr::to_string(doc).context("writing YAML")?;
        if std::mem::replace(&mut self.started, true) {
            println!("---");
        }
        print!("{text}");
        Ok(())
    }
}

/// ResourceClaims by (namespace, name), from the files given; what the
/// driver writes into `status.devices` is kept to be printed.
#[derive(Debug, Default)]
struct LocalClaims {
    claims: Mutex<HashMap<(String, String), ResourceClaim>>,
    status: Mutex<HashMap<String, Vec<AllocatedDeviceStatus>>>,
}

impl LocalClaims {
    fn add(&self, claim: ResourceClaim) {
        let key = (
            claim.metadata.namespace.clone().unwrap_or_default(),
            claim.metadata.name.clone().unwrap_or_default(),
        );
        lock(&self.claims).insert(key, claim);
    }

    fn status(&self, uid: &str) -> Vec<AllocatedDeviceStatus> {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn claim_ref(c: &ResourceClaim) -> ClaimRef {
    ClaimRef {
        namespace: c.metadata.namespace.clone().unwrap_or_default(),
        name: c.metadata.name.clone().unwrap_or_default(),
        uid: c.metadata.uid.clone().unwrap_or_default(),
    }
}

fn result_drivers(c: &ResourceClaim) -> Vec<String> {
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
type ClaimInFile = (PathBuf, String, ResourceClaim);

/// Every claim in `files`; two claims with one UID are an error.
fn read_claim_files(files: &[PathBuf]) -> Result<Vec<ClaimInFile>> {
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
fn read_claims(path: &Path) -> Result<Vec<(String, ResourceClaim)>> {
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
fn claim_from(path: &Path, where_: &str, mut v: Value) -> Result<ResourceClaim> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_yaml(extra: &str) -> String {
        format!(
            "apiVersion: resource.k8s.io/v1\nkind: ResourceClaim\nmetadata:\n  name: c\n  uid: 0b7e5b8e-1c1d-4c55-9f6a-2b1f3e4d5c6a\n{extra}"
        )
    }

    const ALLOCATED: &str = "status:\n  allocation:\n    devices:\n      results:\n      - {request: gpu, driver: example.dra.dev, pool: node-a, device: gpu-0}\n";

    fn read(text: &str) -> Result<Vec<(String, ResourceClaim)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claim.yaml");
        std::fs::write(&path, text).unwrap();
        read_claims(&path)
    }

    fn error(text: &str) -> String {
        format!("{:#}", read(text).unwrap_err())
    }

    #[test]
    fn claims_are_read_as_kubectl_prints_them() {
        let claims = read(&claim_yaml(ALLOCATED)).unwrap();
        assert_eq!(claims[0].1.metadata.namespace.as_deref(), Some("default"));
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            claim_yaml(ALLOCATED).replace('\n', "\n  ").trim_end()
        );
        let claims = read(&list).unwrap();
        assert_eq!(claims[0].0, "items[0].");
        let two = format!(
            "{}---\n{}",
            claim_yaml(ALLOCATED),
            claim_yaml(ALLOCATED).replace("name: c", "name: d")
        );
        assert_eq!(read(&two).unwrap().len(), 2);
    }

    #[test]
    fn json_claims_and_lists_are_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claims.json");
        let claim: Value = serde_saphyr::from_str(&claim_yaml(ALLOCATED)).unwrap();
        std::fs::write(&path, json!({ "kind": "List", "items": [claim] }).to_string()).unwrap();
        let claims = read_claims(&path).unwrap();
        assert_eq!(claims[0].1.metadata.name.as_deref(), Some("c"));
        std::fs::write(&path, "{\"kind\": ").unwrap();
        let e = format!("{:#}", read_claims(&path).unwrap_err());
        assert!(e.contains("claims.json: not JSON"), "{e}");
    }

    #[test]
    fn bad_claims_name_the_file_and_the_field() {
        let e = error(&claim_yaml(""));
        assert!(
            e.contains("claim.yaml: status.allocation.devices.results: missing"),
            "{e}"
        );
        let e = error(&claim_yaml(ALLOCATED).replace("pool: node-a, ", ""));
        assert!(e.contains("status.allocation.devices.results[0].pool: missing"), "{e}");
        let e = error(&claim_yaml(ALLOCATED).replace("  uid: 0b7e5b8e-1c1d-4c55-9f6a-2b1f3e4d5c6a\n", ""));
        assert!(e.contains("claim.yaml: metadata.uid: missing"), "{e}");
        let e = error(&claim_yaml(ALLOCATED).replace("resource.k8s.io/v1", "resource.k8s.io/v1beta2"));
        assert!(e.contains("apiVersion: \"resource.k8s.io/v1beta2\""), "{e}");
        let e = error(&claim_yaml(ALLOCATED).replace("kind: ResourceClaim", "kind: Pod"));
        assert!(e.contains("kind: \"Pod\", not ResourceClaim"), "{e}");
        let e = error("a: [1,\n");
        assert!(e.contains("claim.yaml: not YAML"), "{e}");
        let e = error("apiVersion: v1\nkind: List\n");
        assert!(e.contains("items: missing"), "{e}");
        let e = error(&claim_yaml(ALLOCATED).replace("device: gpu-0}", "device: gpu-0, adminAccess: maybe}"));
        assert!(e.contains("claim.yaml") && e.contains("maybe"), "{e}");
    }

    #[test]
    fn events_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_event("xid=0:79").unwrap(),
            Injected::Gpu {
                gpu: "0".into(),
                kind: model::GpuEventKind::XidCriticalError,
                data: 79
            }
        );
        assert_eq!(
            parse_event("link=eth1:down").unwrap(),
            Injected::Link {
                name: "eth1".into(),
                up: false
            }
        );
        assert!(matches!(parse_event("ecc=GPU-1").unwrap(), Injected::Gpu { .. }));
        for (bad, why) in [
            ("xid=0:abc", "\"abc\" is not a number"),
            ("xid=0", "no ':'"),
            ("link=eth1:sideways", "\"sideways\" is not up or down"),
            ("link=a/b:up", "not an interface name"),
            ("reboot=now", "unknown kind \"reboot\""),
            ("xid", "no '='"),
        ] {
            let e = parse_event(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(why), "{bad}: {e}");
        }
    }
}
