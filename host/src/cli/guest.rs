//! `guest validate`, `guest inspect` and `guest configmap`: guest components
//! checked, described and packaged without serving them (`guest run` is
//! [`super::harness`]).

use anyhow::{Context, Result, bail};
use dra_wasm_host::config::Config;
use dra_wasm_host::guest::{CompileCache, Runtime};
use dra_wasm_host::imports::nvml;
use dra_wasm_host::kube::slices::{Desired, DesiredSlice, desired_pools};
use dra_wasm_host::metrics::Metrics;
use dra_wasm_host::model;
use dra_wasm_host::node::GuestLoader;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// `guest validate`: load each driver's guest as `run` would (grants, init
/// config, limits: [`GuestLoader`]), run its self-test, check its inventory
/// exactly as the publisher does ([`desired_pools`]) and print what would be
/// published as JSON. Fails naming each device the API server would refuse.
pub(crate) async fn validate(config_path: &Path, only: Option<&str>, file: Option<&Path>) -> Result<()> {
    let mut config = Config::load(config_path)?;
    if let Some(file) = file {
        select_driver(&mut config, config_path, only, file)?;
    }
    let node = config.node_name().unwrap_or_else(|_| "validate".to_owned());
    let loader = GuestLoader::new(&config, &node, Metrics::new())?;
    let mut out = serde_json::Map::new();
    let mut refused = Vec::new();
    for d in config.drivers.iter().filter(|d| only.is_none_or(|n| n == d.name)) {
        let (tx, _rx) = mpsc::channel(nvml::EVENT_QUEUE);
        let (guest, report, _) = loader.load(d, &tx).await?;
        let id = guest.identity();
        let (desired, refusal) = check_inventory(&d.name, &report.inventory);
        refused.extend(refusal);
        let pools: Vec<_> = desired
            .pools
            .iter()
            .map(|p| {
                let counters: Vec<_> = p
                    .slices
                    .iter()
                    .filter_map(|s| match s {
                        DesiredSlice::Counters(c) => Some(c),
                        DesiredSlice::Devices(_) => None,
                    })
                    .flatten()
                    .collect();
                let devices: Vec<_> = p.devices().collect();
                serde_json::json!({ "name": p.name, "sharedCounters": counters, "devices": devices })
            })
            .collect();
        out.insert(
            d.name.clone(),
            serde_json::json!({
                "guest": { "name": id.name, "version": id.version, "digest": id.digest },
                "loadMs": report.duration.as_millis() as u64,
                "cache": format!("{:?}", report.cache),
                "pools": pools,
            }),
        );
    }
    if out.is_empty() {
        bail!("no driver named {:?} in {}", only.unwrap_or(""), config_path.display());
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    if !refused.is_empty() {
        bail!("{}", refused.join("; "));
    }
    Ok(())
}

/// The publisher's inventory check ([`desired_pools`]) for the commands
/// that show a guest's inventory before it is served (`guest validate`,
/// `guest run slices`): each pool or device the API server would refuse is
/// named on stderr, and what the command fails with once it has printed the
/// valid rest is returned (`None`: every device is valid). The first publish
/// has no host taints, so none are applied.
pub(crate) fn check_inventory(driver: &str, inventory: &[model::Pool]) -> (Desired, Option<String>) {
    let desired = desired_pools(inventory, &[]);
    for e in &desired.invalid {
        eprintln!("driver {driver}: {e}");
    }
    let refusal = (!desired.invalid.is_empty()).then(|| {
        format!(
            "driver {driver}: {} devices of the inventory would not be published (the API server would refuse them)",
            desired.invalid_devices()
        )
    });
    (desired, refusal)
}

/// Keep only the driver `only` (or the config's one driver) and give it the
/// guest `file`: how `guest validate FILE` and `guest run FILE` pick the
/// grants, config and policy a candidate guest is loaded with.
pub(crate) fn select_driver(config: &mut Config, config_path: &Path, only: Option<&str>, file: &Path) -> Result<()> {
    let target = match only {
        Some(name) => name.to_owned(),
        None if config.drivers.len() == 1 => config.drivers[0].name.clone(),
        None => bail!(
            "{} configures {} drivers: name the one {} is for with --driver",
            config_path.display(),
            config.drivers.len(),
            file.display()
        ),
    };
    let Some(d) = config.drivers.iter_mut().find(|d| d.name == target) else {
        bail!("no driver named {target:?} in {}", config_path.display());
    };
    d.guest = file.to_owned();
    config.drivers.retain(|d| d.name == target);
    Ok(())
}

/// `guest inspect`: describe a component file as JSON.
pub(crate) fn inspect(file: &Path) -> Result<()> {
    let runtime = Runtime::new(CompileCache::new(None)?, std::time::Duration::from_millis(10))?;
    let inspection = dra_wasm_host::guest::inspect(runtime.engine(), file)?;
    println!("{}", serde_json::to_string_pretty(&inspection)?);
    if !inspection.compatible {
        bail!(
            "{} cannot be served by this host: {}",
            file.display(),
            inspection.problem.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}

/// The size limit of a ConfigMap: the API server adds up every key and
/// every value, binaryData values as decoded bytes (not their base64).
const CONFIGMAP_LIMIT: usize = 1 << 20;

/// `guest configmap`: the guests as a ConfigMap's binaryData (YAML).
pub(crate) fn configmap(name: &str, namespace: &str, files: &[PathBuf]) -> Result<()> {
    use base64::Engine as _;
    // Larger than the 256 KiB annotation client-side apply keeps: say how to apply it.
    let mut out = format!(
        "# Apply server-side: kubectl apply --server-side -f <this file>\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\nbinaryData:\n"
    );
    let mut total = 0;
    let mut keys = std::collections::HashSet::new();
    for f in files {
        let key = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!(
                "{}: the file name cannot be a ConfigMap key (letters, digits, '-', '_', '.')",
                f.display()
            );
        }
        if !keys.insert(key.clone()) {
            bail!("two files are named {key}");
        }
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        if !bytes.starts_with(b"\0asm") {
            bail!("{} is not a WebAssembly file", f.display());
        }
        total += key.len() + bytes.len();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        out.push_str(&format!("  {key}: {encoded}\n"));
    }
    if total > CONFIGMAP_LIMIT {
        bail!(
            "the guests take {total} bytes (file names and contents, as the API server counts them); a ConfigMap holds at most {CONFIGMAP_LIMIT}: build them smaller (release profile, opt-level \"s\", LTO, strip) or split them"
        );
    }
    print!("{out}");
    Ok(())
}
