//! `net-attach` (the CDI createRuntime hook of network drivers) and
//! `install-hook` (the binary copied onto the node for container runtimes).

use anyhow::{Context, Result};
use dra_wasm_host::imports::net;
use dra_wasm_host::state::fsutil;
use std::path::Path;

/// `net-attach`: the CDI createRuntime hook.
pub(crate) fn net_attach(dir: &Path, link: &str) -> Result<()> {
    let answer = net::attach::run_hook(dir, link, std::io::stdin().lock())
        .with_context(|| format!("attaching {link} to the container's pod"))?;
    println!("{}", serde_json::to_string(&answer)?);
    Ok(())
}

/// `install-hook`: copy this binary to `to` (atomically, mode 0755).
pub(crate) fn install_hook(to: &Path) -> Result<()> {
    let me = std::env::current_exe().context("finding this binary")?;
    let bytes = std::fs::read(&me).with_context(|| format!("reading {}", me.display()))?;
    if let Some(dir) = to.parent() {
        fsutil::ensure_dir(dir, 0o755).with_context(|| format!("creating {}", dir.display()))?;
    }
    fsutil::write_atomic(to, &bytes, 0o755).with_context(|| format!("installing the hook at {}", to.display()))?;
    println!("installed {} ({} bytes)", to.display(), bytes.len());
    Ok(())
}
