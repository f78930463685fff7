//! `probe`: the liveness check of `healthcheck_addr` run once, as a command,
//! for pods whose probe port the other pod of a rolling update may hold.
//!
//! A hostNetwork host shares the node's ports: during a seamless update the
//! old pod still listens on the probe port, so the kubelet's gRPC probe of
//! the new pod would be answered by the old one. This command checks the
//! sockets of *this* pod (named with its UID in rolling-update mode): the
//! same `GetInfo` and empty `NodePrepareResources` on every driver's own
//! sockets as the gRPC service ([`liveness::Liveness::healthy`]).

use anyhow::{Context, Result, bail};
use dra_wasm_host::config::Config;
use dra_wasm_host::kubelet::PluginPaths;
use dra_wasm_host::kubelet::liveness::{Liveness, Probe};
use std::path::Path;

pub(crate) async fn run(config: &Path, rolling_update_uid: Option<&str>) -> Result<()> {
    let config = Config::load(config).with_context(|| format!("loading {}", config.display()))?;
    let probes = config
        .drivers
        .iter()
        .map(|d| {
            let paths = match rolling_update_uid {
                Some(uid) => PluginPaths::rolling_update(&config.kubelet_root_dir, &d.name, uid),
                None => PluginPaths::new(&config.kubelet_root_dir, &d.name),
            };
            Probe::of(&d.name, &paths)
        })
        .collect();
    if let Err(reason) = Liveness::new(probes).healthy().await {
        bail!("not serving: {reason}");
    }
    println!("serving: {} driver(s)", config.drivers.len());
    Ok(())
}
