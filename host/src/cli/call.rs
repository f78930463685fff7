//! `dra-wasm-host call`: talk to a DRA plugin's sockets as the kubelet does,
//! to see on a node what the kubelet would get. Prints JSON.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dra_proto::dra::v1;
use dra_proto::health::v1 as health;
use dra_proto::pluginregistration::InfoRequest;
use dra_proto::pluginregistration::registration_client::RegistrationClient;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum CallCommand {
    /// `GetInfo` on a registration socket.
    Info {
        /// e.g. /var/lib/kubelet/plugins_registry/gpu.example.com-reg.sock
        socket: PathBuf,
    },
    /// `NodePrepareResources` (v1) for claims given as NAMESPACE/NAME/UID.
    Prepare {
        /// The plugin's DRA socket, e.g. /var/lib/kubelet/plugins/gpu.example.com/dra.sock
        socket: PathBuf,
        #[arg(required = true)]
        claims: Vec<String>,
    },
    /// `NodeUnprepareResources` (v1) for claims given as NAMESPACE/NAME/UID.
    Unprepare {
        socket: PathBuf,
        #[arg(required = true)]
        claims: Vec<String>,
    },
    /// Open a `v1.DRAResourceHealth` stream and print what arrives.
    WatchHealth {
        socket: PathBuf,
        /// Stop after this many messages.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

fn claims(args: &[String]) -> Result<Vec<v1::Claim>> {
    args.iter()
        .map(|a| match a.split('/').collect::<Vec<_>>()[..] {
            [namespace, name, uid] => Ok(v1::Claim {
                namespace: namespace.into(),
                name: name.into(),
                uid: uid.into(),
            }),
            _ => bail!("claim {a:?} is not NAMESPACE/NAME/UID"),
        })
        .collect()
}

pub async fn run(cmd: CallCommand) -> Result<()> {
    let out = match cmd {
        CallCommand::Info { socket } => {
            let channel = dra_proto::connect_uds(&socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let info = RegistrationClient::new(channel)
                .get_info(InfoRequest {})
                .await?
                .into_inner();
            json!({ "type": info.r#type, "name": info.name, "endpoint": info.endpoint, "supportedVersions": info.supported_versions })
        }
        CallCommand::Prepare { socket, claims: args } => {
            let channel = dra_proto::connect_uds(&socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let response = v1::dra_plugin_client::DraPluginClient::new(channel)
                .node_prepare_resources(v1::NodePrepareResourcesRequest { claims: claims(&args)? })
                .await?
                .into_inner();
            let claims: serde_json::Map<_, _> = response
                .claims
                .into_iter()
                .map(|(uid, r)| {
                    let devices: Vec<_> = r
                        .devices
                        .into_iter()
                        .map(|d| {
                            json!({
                                "requestNames": d.request_names, "poolName": d.pool_name, "deviceName": d.device_name,
                                "cdiDeviceIDs": d.cdi_device_ids, "shareID": d.share_id,
                            })
                        })
                        .collect();
                    (uid, json!({ "devices": devices, "error": r.error }))
                })
                .collect();
            json!({ "claims": claims })
        }
        CallCommand::Unprepare { socket, claims: args } => {
            let channel = dra_proto::connect_uds(&socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let response = v1::dra_plugin_client::DraPluginClient::new(channel)
                .node_unprepare_resources(v1::NodeUnprepareResourcesRequest { claims: claims(&args)? })
                .await?
                .into_inner();
            let claims: serde_json::Map<_, _> = response
                .claims
                .into_iter()
                .map(|(uid, r)| (uid, json!({ "error": r.error })))
                .collect();
            json!({ "claims": claims })
        }
        CallCommand::WatchHealth { socket, count, timeout } => {
            let channel = dra_proto::connect_uds(&socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let mut stream = health::dra_resource_health_client::DraResourceHealthClient::new(channel)
                .node_watch_resources(health::NodeWatchResourcesRequest {})
                .await?
                .into_inner();
            let mut messages = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            while messages.len() < count {
                let Ok(next) = tokio::time::timeout_at(deadline, stream.message()).await else {
                    break;
                };
                let Some(m) = next? else { break };
                let devices: Vec<_> = m
                    .devices
                    .into_iter()
                    .map(|d| {
                        let id = d.device.unwrap_or_default();
                        json!({
                            "pool": id.pool_name, "device": id.device_name,
                            "health": health::HealthStatus::try_from(d.health).map(|h| h.as_str_name()).unwrap_or("?"),
                            "message": d.message, "lastUpdatedTime": d.last_updated_time,
                            "healthCheckTimeoutSeconds": d.health_check_timeout_seconds,
                        })
                    })
                    .collect();
                messages.push(json!({ "devices": devices }));
            }
            json!({ "messages": messages })
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
