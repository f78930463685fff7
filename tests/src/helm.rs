//! Real Helm on the chart in `deploy/chart/dra-wasm-host`: `helm` v4.3.2,
//! built from `helm.sh/helm/v4` by `tests/helm/build.sh` (once per machine,
//! into a cache), the same command operators run.
//!
//! Helm's own state (repositories, plugins, caches) goes to a directory of
//! this process, never to the user's `~/.config/helm`.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The repository's root (this crate lives in `tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("deploy/chart/dra-wasm-host")
}

/// The chart's example values files (`examples/*.yaml`), sorted.
pub fn example_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("examples"))
        .expect("the chart's examples/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The `helm` binary, built on first use (panics with the build's output
/// when it cannot be built: a chart test never skips Helm).
pub fn binary() -> &'static Path {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = HELM.get_or_init(|| {
        let out = Command::new(repo_root().join("tests/helm/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running tests/helm/build.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tests/helm/build.sh failed ({}); it needs Go >= 1.26 and the Go module proxy",
                out.status
            ));
        }
        let path = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        Ok(PathBuf::from(path))
    });
    match built {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// Helm's home for this process (config, data, cache).
fn home() -> &'static Path {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::Builder::new().prefix("dwh-helm-").tempdir().unwrap())
        .path()
}

/// Run `helm ARGS`, with `stdin` if given; its standard output, or an error
/// with the command and its standard error.
pub fn run(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let h = home();
    let mut child = Command::new(binary())
        .args(args)
        .env("HELM_CONFIG_HOME", h.join("config"))
        .env("HELM_DATA_HOME", h.join("data"))
        .env("HELM_CACHE_HOME", h.join("cache"))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting helm")?;
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "helm {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm template dra-wasm-host <chart> -n dra-wasm-host` with `args`
/// (values files, `--set`), as YAML.
pub fn template_yaml(args: &[&str]) -> Result<String> {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        "dra-wasm-host",
        chart.to_str().unwrap(),
        "--namespace",
        "dra-wasm-host",
    ];
    all.extend_from_slice(args);
    run(&all, None)
}

/// [`template_yaml`], as one JSON value per rendered object.
pub fn template(args: &[&str]) -> Result<Vec<Value>> {
    yaml_to_json(&template_yaml(args)?)
}

/// The documents of a YAML stream as JSON values (PyYAML, which tests/run.sh
/// installs with kubernetes-validate), empty documents left out.
pub fn yaml_to_json(yaml: &str) -> Result<Vec<Value>> {
    const SCRIPT: &str =
        "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3")?;
    child.stdin.take().unwrap().write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("parsing YAML: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The object of `kind` named `name` among `objects`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// Every object of `kind` among `objects`.
pub fn all_of<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}
