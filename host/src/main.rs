//! The `dra-wasm-host` binary: `run` is node mode; `demo` walks through a
//! prepare/unprepare with the example guest and an in-process test kubelet.

mod demo;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dra_wasm_host::config::{ClaimsConfig, Config};
use dra_wasm_host::driver::Driver;
use dra_wasm_host::guest::{CompileCache, Guest, GuestSpec, Limits, Runtime, types};
use dra_wasm_host::imports::Imports;
use dra_wasm_host::kube::{ClaimSource, FileClaims};
use dra_wasm_host::kubelet::{self, PluginPaths, liveness};
use dra_wasm_host::metrics::{self, Metrics};
use dra_wasm_host::state::cdi::CdiWriter;
use dra_wasm_host::state::checkpoint::Checkpoint;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "dra-wasm-host",
    version,
    about = "Kubernetes DRA driver host for WebAssembly guest drivers"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "DRA_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured drivers to the kubelet (node mode).
    Run {
        /// The host config file (TOML).
        #[arg(long, env = "DRA_CONFIG")]
        config: PathBuf,
    },
    /// Walk through registration, prepare and unprepare with the example guest.
    Demo {
        /// Keep the demo's temporary directory instead of removing it.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn",
        Command::Run { .. } => "info",
    };
    init_tracing(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(&config).await,
            Command::Demo { keep } => demo::run(keep).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config_path: &std::path::Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let node = config.node_name().map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if let Some(addr) = config.metrics_addr {
        metrics::serve(addr, Arc::clone(&metrics), stopped())
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
    }

    let cache =
        CompileCache::new(config.cache_dir.clone()).with_context(|| format!("compile cache {:?}", config.cache_dir))?;
    let runtime = Runtime::new(cache, config.runtime.tick()).context("starting the wasm engine")?;
    let claims: Arc<dyn ClaimSource> = match &config.claims {
        ClaimsConfig::File { path } => {
            tracing::warn!(path = %path.display(), "reading ResourceClaims from a local file (demo/test mode)");
            Arc::new(FileClaims::new(path))
        }
        ClaimsConfig::ApiServer => {
            bail!(
                "claims.source = \"api-server\" is not available in this build yet; use source = \"file\" for local runs"
            )
        }
    };
    let limits = Limits {
        call_timeout: config.runtime.call_timeout(),
        memory_bytes: usize::try_from(config.runtime.memory_limit_mib << 20).unwrap_or(usize::MAX),
        max_instances: config.runtime.max_instances,
        ..Limits::default()
    };

    let mut plugins = Vec::new();
    let mut probes = Vec::new();
    for d in &config.drivers {
        let paths = PluginPaths::new(&config.kubelet_root_dir, &d.name);
        paths.validate().with_context(|| format!("driver {}", d.name))?;
        let checkpoint = Checkpoint::open(&paths.plugin_dir.join("claims"), &d.name)?;
        let cdi = CdiWriter::new(&config.cdi_dir, &d.cdi_vendor(), &d.cdi_class())
            .with_context(|| format!("driver {}", d.name))?;
        let imports = Imports::new(&d.grants).map_err(|e| anyhow::anyhow!("driver {}: {e}", d.name))?;
        let spec = GuestSpec {
            path: d.guest.clone(),
            ctx: types::InitContext {
                driver_name: d.name.clone(),
                node_name: node.clone(),
                config: d.guest_config_json(),
            },
            limits: limits.clone(),
            imports,
        };
        let (guest, report) = Guest::load(&runtime, &metrics, &spec)
            .await
            .with_context(|| format!("driver {}: loading guest", d.name))?;
        let id = guest.identity();
        tracing::info!(
            driver = %d.name, guest = %id.name, version = %id.version, digest = %id.digest,
            cache = ?report.cache, took_ms = report.duration.as_millis() as u64,
            pools = report.inventory.len(),
            devices = report.inventory.iter().map(|p| p.devices.len()).sum::<usize>(),
            "guest loaded"
        );
        let driver = Arc::new(Driver::new(
            d.name.clone(),
            guest,
            Arc::clone(&claims),
            cdi,
            checkpoint,
            d.policy.clone(),
            Arc::clone(&metrics),
        ));
        let restored = driver
            .restore_cdi_specs()
            .with_context(|| format!("driver {}", d.name))?;
        if restored > 0 {
            tracing::info!(driver = %d.name, restored, "restored CDI specs of prepared claims");
        }
        tracing::info!(driver = %d.name, prepared = driver.checkpoint().len(), "checkpoint loaded");
        let plugin = kubelet::serve(Arc::clone(&driver), &paths, Arc::clone(&metrics))
            .await
            .with_context(|| format!("driver {}", d.name))?;
        probes.push(liveness::Probe {
            driver: d.name.clone(),
            registration_socket: paths.registration_socket.clone(),
            dra_socket: paths.dra_socket.clone(),
        });
        plugins.push(plugin);
    }
    if let Some(addr) = config.healthcheck_addr {
        liveness::serve(addr, liveness::Liveness::new(probes), stopped())
            .await
            .with_context(|| format!("serving liveness on {addr}"))?;
    }

    wait_for_signal().await?;
    tracing::info!("stopping: deregistering from the kubelet and draining calls");
    let _ = stop_tx.send(true);
    for plugin in plugins {
        plugin.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
