//! The `dra-wasm-host` binary: parses the command line and calls the
//! library (`run` is [`dra_wasm_host::node::run`]); the other subcommands
//! live in `cli/`. `demo` (built with the `demo` feature) walks through a
//! prepare/unprepare with the example guest and an in-process test kubelet.

mod cli;

use clap::{Parser, Subcommand};
use cli::{call, guest, harness, hook, probe};
use std::path::PathBuf;

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
        /// Serve in the kubelet's rolling-update mode (kubelet >= 1.33,
        /// DaemonSet `maxSurge: 1`): sockets named with this pod UID, claim
        /// operations serialized with the other pod by a file lock. Pass the
        /// pod's `metadata.uid` from the downward API.
        #[arg(long, value_name = "POD_UID")]
        rolling_update_uid: Option<String>,
    },
    /// Walk through registration, prepare and unprepare with the example guest.
    Demo {
        /// Keep the demo's temporary directory instead of removing it.
        #[arg(long)]
        keep: bool,
    },
    /// Work with guest components without serving them.
    #[command(subcommand)]
    Guest(GuestCommand),
    /// Call a DRA plugin's sockets as the kubelet does (prints JSON).
    #[command(subcommand)]
    Call(call::CallCommand),
    /// The CDI createRuntime hook of network drivers: reads the OCI state
    /// from stdin and asks the host to move the prepared link into the
    /// container's network namespace (prints the result as JSON).
    NetAttach {
        /// The driver's plugin directory (holds the host's attach sockets).
        #[arg(long)]
        dir: PathBuf,
        /// The prepared link (a name the host gave it, `dwh…`).
        #[arg(long)]
        link: String,
    },
    /// Check this pod's drivers as the liveness service does and exit
    /// non-zero naming the first that fails: the exec probe of hostNetwork
    /// pods, whose probe port the other pod of a rolling update may hold.
    Probe {
        /// The host config file (TOML), as `run` has it.
        #[arg(long)]
        config: PathBuf,
        /// The pod's UID when it runs with `--rolling-update-uid` (its
        /// sockets carry it); from `$POD_UID` when set.
        #[arg(long, env = "POD_UID")]
        rolling_update_uid: Option<String>,
    },
    /// Copy this binary to a path on the node, for container runtimes to run
    /// as the network attach hook (a DaemonSet init container does this).
    InstallHook {
        /// Destination, e.g. /opt/dra-wasm-host/bin/dra-wasm-host.
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Load each driver's guest as `run` would, run its self-test (init +
    /// inventory) and print the inventory as JSON.
    ///
    /// With FILE, load that component instead of the configured one, with the
    /// driver's grants and config: the same checks and self-test a hot swap
    /// runs before it lets a new guest serve.
    Validate {
        /// A candidate guest component for the driver (needs --driver when
        /// the config has several drivers).
        file: Option<PathBuf>,
        #[arg(long, env = "DRA_CONFIG")]
        config: PathBuf,
        /// Only this driver.
        #[arg(long)]
        driver: Option<String>,
    },
    /// Describe a guest component without running it: world, WIT version,
    /// the guest SDK version it was built with, imports and the grants they
    /// need, size, SHA-256, and whether this host can link it (prints JSON).
    Inspect { file: PathBuf },
    /// Run a guest locally as the host would (grants, config, policy and
    /// limits of a host config's driver) with no kubelet, API server or root:
    /// print its ResourceSlices, prepare and unprepare ResourceClaim files,
    /// feed it GPU and link events.
    Run(harness::RunArgs),
    /// Print a ConfigMap (YAML) holding guest components as binaryData, for
    /// the DaemonSet's guests volume. Fails past the 1 MiB ConfigMap limit.
    Configmap {
        #[arg(long, default_value = "dra-wasm-host-guests")]
        name: String,
        #[arg(long, default_value = "dra-wasm-host")]
        namespace: String,
        /// Guest `.wasm` files; each becomes a key named after the file.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // A vendor running a guest wants its log lines (on stderr).
        Command::Guest(GuestCommand::Run(_)) => "info",
        Command::Demo { .. }
        | Command::Guest(_)
        | Command::Call(_)
        | Command::NetAttach { .. }
        | Command::InstallHook { .. }
        | Command::Probe { .. } => "warn",
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
            Command::Run {
                config,
                rolling_update_uid,
            } => dra_wasm_host::node::run(&config, rolling_update_uid)
                .await
                .map_err(anyhow::Error::from),
            Command::Demo { keep } => cli::demo(keep).await,
            Command::Guest(GuestCommand::Validate { file, config, driver }) => {
                guest::validate(&config, driver.as_deref(), file.as_deref()).await
            }
            Command::Guest(GuestCommand::Inspect { file }) => guest::inspect(&file),
            Command::Guest(GuestCommand::Run(args)) => harness::run(args).await,
            Command::Guest(GuestCommand::Configmap { name, namespace, files }) => {
                guest::configmap(&name, &namespace, &files)
            }
            Command::Call(cmd) => call::run(cmd).await,
            Command::NetAttach { dir, link } => hook::net_attach(&dir, &link),
            Command::InstallHook { to } => hook::install_hook(&to),
            Command::Probe {
                config,
                rolling_update_uid,
            } => probe::run(&config, rolling_update_uid.as_deref()).await,
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
    // Colours only on a terminal: in a pod log or a file, escape codes are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
