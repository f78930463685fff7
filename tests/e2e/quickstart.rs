//! `docs/guest-authoring.md`'s quick start, followed literally: every block
//! marked `<!-- quickstart: run -->` is run line by line in a vendor's
//! shell, every `<!-- quickstart: file PATH -->` block is written where it
//! says, in a fresh crate outside this workspace that depends on the SDK by
//! path. The SDK at that path is the crate `cargo package` makes of
//! `guests/sdk`, unpacked: what a vendor gets from a registry, not the
//! checkout (a file the SDK needs from outside itself fails here). Then the
//! real host serves the guest it built, with the doc's config and claim, to
//! the test kubelet. If the doc rots, this fails.
//!
//! The tonic test kubelet calls the host because the quick start runs without a
//! cluster (a claims file), as `demo` does.

use crate::common::*;
use crate::manifests::validate;
use dra_test_support::host::HostEnv;
use dra_test_support::kubelet::{ClaimRef, TestKubelet};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
enum Step {
    /// Shell lines; output kept under the name when the marker gives one.
    Run {
        name: Option<String>,
        lines: String,
    },
    File {
        path: String,
        text: String,
    },
}

/// The marked blocks of the doc, in order.
fn steps(doc: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(marker) = line
            .trim()
            .strip_prefix("<!-- quickstart:")
            .and_then(|m| m.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines
            .by_ref()
            .find(|l| l.starts_with("```"))
            .expect("a code block after the marker");
        assert!(fence.len() > 3, "the block after {line:?} names its language");
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        let text = body.join("\n") + "\n";
        let mut words = marker.split_whitespace();
        match words.next() {
            Some("run") => steps.push(Step::Run {
                name: words.next().map(str::to_owned),
                lines: text,
            }),
            Some("file") => steps.push(Step::File {
                path: words.next().expect("file PATH").to_owned(),
                text,
            }),
            other => panic!("unknown quickstart marker {other:?} in {line:?}"),
        }
    }
    steps
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// A vendor's shell: `dra-wasm-host` on the PATH, and none of the settings
/// this test's own cargo run put in the environment (target directory,
/// toolchain override, flags).
fn shell(line: &str, dir: &Path) -> Command {
    let bin_dir = binary().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", line]).current_dir(dir).env_clear().env("PATH", path);
    for keep in ["HOME", "CARGO_HOME", "RUSTUP_HOME", "TMPDIR", "USER", "LANG"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    // CI machines may have no network: the crates the SDK needs are in
    // cargo's cache from building this repository's guests.
    cmd.env("CARGO_NET_OFFLINE", "true")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn");
    cmd
}

/// `cargo package` the SDK (as a vendor's registry would receive it) and
/// unpack the `.crate` at `dest`.
fn unpack_packaged_sdk(dest: &Path, scratch: &Path) {
    let target = scratch.join("sdk-package");
    let manifest = repo_root().join("guests/Cargo.toml");
    // No verification build here: the doc's own build below compiles it.
    // `--allow-dirty`: a developer's uncommitted SDK changes are tested too.
    let line = format!(
        "cargo package --quiet --no-verify --allow-dirty --manifest-path {} -p dra-driver-sdk --target-dir {}",
        manifest.display(),
        target.display()
    );
    let out = shell(&line, scratch).output().unwrap();
    assert!(
        out.status.success(),
        "`{line}` failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let packaged: Vec<PathBuf> = std::fs::read_dir(target.join("package"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "crate"))
        .collect();
    assert_eq!(packaged.len(), 1, "{packaged:?}");
    let unpacked = scratch.join("sdk-unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&packaged[0])
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    let dir = std::fs::read_dir(&unpacked).unwrap().next().unwrap().unwrap().path();
    assert!(dir.join("wit/driver.wit").is_file(), "the packaged SDK carries its WIT");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::rename(&dir, dest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_works_as_written() {
    let doc = std::fs::read_to_string(repo_root().join("docs/guest-authoring.md")).unwrap();
    let steps = steps(&doc);
    assert!(steps.len() >= 10, "{steps:#?}");

    // The doc's crate lives next to a checkout of this repository; the SDK
    // in it is the packaged crate.
    let root = tempfile::Builder::new().prefix("dra-quickstart-").tempdir().unwrap();
    unpack_packaged_sdk(&root.path().join("dra-wasm-host/guests/sdk"), root.path());
    let mut cwd = root.path().to_owned();
    let mut outputs: HashMap<String, String> = HashMap::new();
    for step in &steps {
        match step {
            Step::File { path, text } => {
                let path = cwd.join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, text).unwrap();
            }
            Step::Run { name, lines } => {
                for line in lines
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    if let Some(dir) = line.strip_prefix("cd ") {
                        cwd = cwd.join(dir);
                        // Not the doc: its build directory is kept between
                        // test runs, so that the cache is warm as a
                        // vendor's would be on a second try.
                        let warm = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("quickstart-target");
                        std::fs::create_dir_all(&warm).unwrap();
                        std::os::unix::fs::symlink(&warm, cwd.join("target")).unwrap();
                        continue;
                    }
                    let out = shell(line, &cwd).output().unwrap();
                    assert!(
                        out.status.success(),
                        "quick start step `{line}` failed ({}):\n{}\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    if let Some(name) = name {
                        outputs
                            .entry(name.clone())
                            .or_default()
                            .push_str(&String::from_utf8_lossy(&out.stdout));
                    }
                }
            }
        }
    }
    let crate_dir = cwd;
    let wasm = crate_dir.join("target/wasm32-wasip2/release/my_driver.wasm");
    assert!(wasm.is_file(), "the doc's build makes {}", wasm.display());

    // What the doc's commands printed.
    let inspect: Value = serde_json::from_str(&outputs["inspect"]).unwrap();
    assert_eq!(inspect["world"], "driver", "{inspect:#}");
    assert_eq!(inspect["contract"], "dra:driver@0.2.0", "{inspect:#}");
    assert_eq!(inspect["grantsNeeded"], json!([]));
    assert_eq!(inspect["compatible"], true);
    assert!(inspect["sdkVersion"].is_string(), "{inspect:#}");
    let slices_file = crate_dir.join("slices.yaml");
    std::fs::write(&slices_file, &outputs["slices"]).unwrap();
    validate(&[
        slices_file,
        crate_dir.join("claim.yaml"),
        crate_dir.join("guests-configmap.yaml"),
    ]);
    let prepared: Value = serde_saphyr::from_str(&outputs["prepare"]).unwrap();
    assert_eq!(prepared["verdict"], "Accepted", "{prepared:#?}");
    let env = &prepared["cdiSpec"]["devices"][0]["containerEdits"]["env"];
    assert!(
        env.as_array().unwrap().contains(&json!("WIDGET_SPEED=fast")),
        "{prepared:#?}"
    );
    let unprepared: Value = serde_saphyr::from_str(&outputs["unprepare"]).unwrap();
    assert_eq!(unprepared["result"], "Unprepared");
    assert_eq!(unprepared["checkpointed"], true);

    // The real host with the doc's config and claim, the test kubelet
    // calling it: the same answer and CDI spec as the harness printed.
    let env = HostEnv::new(&cache_dir()).unwrap();
    let config = std::fs::read_to_string(crate_dir.join("host.toml")).unwrap();
    let config = format!(
        "kubelet_root_dir = {:?}\ncdi_dir = {:?}\ncache_dir = {:?}\n{}\n[claims]\nsource = \"file\"\npath = {:?}\n",
        env.kubelet_root,
        env.cdi_dir,
        env.cache_dir,
        config.replace(
            "guest = \"target/",
            &format!("guest = \"{}/target/", crate_dir.display())
        ),
        env.claims_path
    );
    std::fs::write(&env.config_path, config).unwrap();
    let claim: Value = serde_saphyr::from_str(&std::fs::read_to_string(crate_dir.join("claim.yaml")).unwrap()).unwrap();
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": [claim] });
    std::fs::write(&env.claims_path, serde_json::to_vec(&list).unwrap()).unwrap();
    let kubelet = TestKubelet::start(&env.kubelet_root).unwrap();
    let host = env.start(&binary()).unwrap();
    let driver = claim["status"]["allocation"]["devices"]["results"][0]["driver"]
        .as_str()
        .unwrap();
    let plugin = kubelet
        .wait_for_plugin(driver, START_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\nhost log:\n{}", host.log()));
    let meta = &claim["metadata"];
    let r = ClaimRef::new(
        meta["namespace"].as_str().unwrap(),
        meta["name"].as_str().unwrap(),
        meta["uid"].as_str().unwrap(),
    );
    let answer = plugin.prepare(std::slice::from_ref(&r)).await.unwrap();
    let entry = &answer[meta["uid"].as_str().unwrap()];
    assert_eq!(entry.error, "", "{}", host.log());
    assert_eq!(
        entry.devices[0].cdi_device_ids,
        [prepared["devices"][0]["cdiDeviceIds"][0].as_str().unwrap()]
    );
    let spec_file = env.cdi_dir.join(prepared["cdiSpecFile"].as_str().unwrap());
    let spec: Value = serde_json::from_slice(&std::fs::read(&spec_file).unwrap()).unwrap();
    assert_eq!(
        spec, prepared["cdiSpec"],
        "the host and the harness write the same spec"
    );
    let errors = plugin.unprepare(&[r]).await.unwrap();
    assert!(errors.values().all(String::is_empty), "{errors:?}");
}
