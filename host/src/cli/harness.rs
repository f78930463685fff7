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

mod claims;
mod events;
mod report;

use claims::*;
use events::*;
use report::*;

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

#[cfg(test)]
mod tests;
