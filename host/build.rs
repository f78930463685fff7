//! Builds the guest components in `guests/` (and the fault-injection guests in
//! `tests/guests/`, and the frozen 0.1 guest in `tests/guests/v0.1`) for `wasm32-wasip2`, so that `cargo build` / `cargo test`
//! is the only step a developer needs.
//!
//! The guests are a separate cargo workspace. They are built by a nested
//! cargo into `target/guests` (its own target directory, so the nested build
//! never waits on the lock of the outer one). The folder holding the built
//! `.wasm` files is passed to the host crate as `DRA_GUEST_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ has a parent").to_path_buf();
    for watched in ["guests", "tests/guests", "wit"] {
        rerun_if_changed_tree(&root.join(watched));
    }

    let target_dir = std::env::var_os("DRA_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target_dir(&root).join("guests"));
    ensure_wasm_target();
    build_workspace(&root.join("guests"), &target_dir);
    let out = target_dir.join("wasm32-wasip2").join("release");
    // The 0.1 guest, built by its frozen 0.1 SDK in a workspace of its own
    // (as a vendor's would be), lands beside the others under its own name.
    let v0_1_target = target_dir.with_file_name("guests-v0.1");
    build_workspace(&root.join("tests/guests/v0.1"), &v0_1_target);
    let v0_1 = v0_1_target.join("wasm32-wasip2/release/example_driver.wasm");
    std::fs::copy(&v0_1, out.join("example_driver_v0_1.wasm"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", v0_1.display()));
    for guest in [
        "example_driver.wasm",
        "gpu_driver.wasm",
        "macvlan_driver.wasm",
        "faulty_driver.wasm",
        "faulty_next.wasm",
        "faulty_net.wasm",
        "example_driver_v0_1.wasm",
    ] {
        assert!(
            out.join(guest).is_file(),
            "guest build did not produce {}",
            out.join(guest).display()
        );
    }
    println!("cargo:rustc-env=DRA_GUEST_DIR={}", out.display());
}

/// `cargo build --release --target wasm32-wasip2` of the guest workspace in
/// `dir`, into `target_dir`.
fn build_workspace(dir: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(target_dir);
    // The outer build's settings are for the host, not for wasm guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the guests: {e}"));
    if !status.success() {
        panic!(
            "building the guest components failed ({status}). The wasm target may be missing: \
             run `rustup target add wasm32-wasip2` (rust-toolchain.toml names it)."
        );
    }
}

/// rustup installs the targets listed in rust-toolchain.toml only when it
/// installs the toolchain itself; on a machine that already had 1.95.0 the
/// wasm target may be missing. Add it, as rustup would have.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else { return };
    if sysroot.join("lib/rustlib/wasm32-wasip2").is_dir() {
        return;
    }
    let toolchain = sysroot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("cargo:warning=installing the wasm32-wasip2 target for {toolchain} (named in rust-toolchain.toml)");
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2", "--toolchain", &toolchain])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        panic!("the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; install it by hand");
    }
}

/// The outer build's target directory: `CARGO_TARGET_DIR` when set, else
/// `<workspace>/target`.
fn workspace_target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { root.join(dir) }
        }
        None => root.join("target"),
    }
}

fn rerun_if_changed_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    println!("cargo:rerun-if-changed={}", dir.display());
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rerun_if_changed_tree(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
