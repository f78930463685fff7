//! The container runtime's CDI injection (`cdi-inject`, tests/peers/go/cdi:
//! tags.cncf.io/container-device-interface as containerd uses it), and a
//! workload's reading of the device metadata file a CDI spec mounts
//! (`metadata-decode`, tests/peers/go/metadata).

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The OCI runtime spec of a container given the CDI devices `ids`, as
/// `program` (cdi-inject) injects them from the spec directory `cdi_dir`;
/// Err: what the library refused, with the file or device it names.
pub fn inject(program: &Path, cdi_dir: &Path, ids: &[String]) -> Result<Value, String> {
    inject_from(program, &[cdi_dir], ids)
}

/// [`inject`] from several spec directories, in the runtime's order of
/// precedence (later ones win), as a runtime configured with `/etc/cdi` and
/// `/var/run/cdi` reads both.
pub fn inject_from(program: &Path, cdi_dirs: &[&Path], ids: &[String]) -> Result<Value, String> {
    let mut cmd = Command::new(program);
    for dir in cdi_dirs {
        cmd.arg("-spec-dir").arg(dir);
    }
    cmd.args(ids);
    json_of(cmd, "an OCI spec")
}

/// What `program` (metadata-decode: k8s.io/dynamic-resource-allocation's
/// devicemetadata package) decodes from the device metadata file `file`: its
/// report (`decodedVersion`, `validationError`, `streamVersions`,
/// `reencodedIdentical`, `decoded`); Err: what the package refused.
pub fn decode_metadata(program: &Path, file: &Path) -> Result<Value, String> {
    let mut cmd = Command::new(program);
    cmd.arg(file);
    json_of(cmd, "a report")
}

/// The JSON a peer program prints (`what` it should be); Err: its exit
/// status and standard error.
fn json_of(mut cmd: Command, what: &str) -> Result<Value, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| format!("running {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{program} printed no {what}: {e}"))
}
