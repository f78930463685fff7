//! The container runtime's CDI injection (`cdi-inject`, tests/peers/go/cdi:
//! tags.cncf.io/container-device-interface as containerd uses it).

use serde_json::Value;
use std::path::Path;

/// The OCI runtime spec of a container given the CDI devices `ids`, as
/// `program` (cdi-inject) injects them from the spec directory `cdi_dir`;
/// Err: what the library refused, with the file or device it names.
pub fn inject(program: &Path, cdi_dir: &Path, ids: &[String]) -> Result<Value, String> {
    let out = std::process::Command::new(program)
        .arg("-spec-dir")
        .arg(cdi_dir)
        .args(ids)
        .output()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} ({}): {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cdi-inject printed no OCI spec: {e}"))
}
