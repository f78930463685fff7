//! `dra-wasm-host guest inspect`: what a component file is, without running it.

use super::bindings::DriverHostPre as HostPre;
use super::error::GuestError;
use super::{PACKAGE, StoreState, check_import, digest};
use crate::imports::{Grant, Imports};
use serde::Serialize;
use std::path::Path;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

/// The export every guest implements.
const DRIVER_EXPORT: &str = "dra:driver/device-driver";

/// What a guest component is and needs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    pub path: String,
    pub size_bytes: usize,
    /// SHA-256 of the file: the identity logs, metrics and the checkpoint use.
    pub sha256: String,
    /// `driver`, `gpu-driver` or `net-driver`: the smallest world covering its imports.
    pub world: String,
    /// The `dra:driver` package version it implements, e.g. `0.1.0`.
    pub wit_version: Option<String>,
    /// Capabilities an operator must grant it in the host config.
    pub grants_needed: Vec<&'static str>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Whether this host can link it (given the grants it needs).
    pub compatible: bool,
    /// Why not, when it is not.
    pub problem: Option<String>,
    /// Whether it fits a ConfigMap (1 MiB, all keys together).
    pub fits_configmap: bool,
}

/// Compile `path` (nothing runs) and describe it.
pub fn inspect(engine: &Engine, path: &Path) -> Result<Inspection, GuestError> {
    let bytes = std::fs::read(path).map_err(|source| GuestError::Read {
        path: path.to_owned(),
        source,
    })?;
    let component = Component::new(engine, &bytes).map_err(|e| GuestError::Compile {
        path: path.to_owned(),
        message: format!("{e:#}"),
    })?;
    let ty = component.component_type();
    let imports: Vec<(String, _)> = ty.imports(engine).map(|(n, i)| (n.to_owned(), i)).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();

    let mut grants = Vec::new();
    for (name, _) in &imports {
        if let Some(rest) = name.strip_prefix(PACKAGE) {
            let interface = rest.split('@').next().unwrap_or(rest);
            if let Some(g) = Grant::for_interface(interface)
                && !grants.contains(&g)
            {
                grants.push(g);
            }
        }
    }
    let world = match (grants.contains(&Grant::Nvml), grants.contains(&Grant::Net)) {
        (false, false) => "driver",
        (true, false) => "gpu-driver",
        (false, true) => "net-driver",
        (true, true) => "driver-host (imports both nvml and net: not a guest world)",
    };
    let wit_version = exports
        .iter()
        .find_map(|e| e.strip_prefix(DRIVER_EXPORT)?.strip_prefix('@').map(str::to_owned));

    // Link as `run` would, with exactly the grants it needs.
    let granted = Imports::for_inspection(&grants);
    let problem = (|| -> Result<(), GuestError> {
        for (name, item) in &imports {
            check_import(path, name, &item.ty, &granted)?;
        }
        let mut linker: Linker<StoreState> = Linker::new(engine);
        super::bindings::dra::driver::log::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| GuestError::Runtime(format!("{e:#}")))?;
        crate::imports::add_granted(&mut linker, &granted).map_err(|e| GuestError::Runtime(format!("{e:#}")))?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| GuestError::Runtime(format!("{e:#}")))?;
        let incompatible = |e: wasmtime::Error| GuestError::Incompatible {
            path: path.to_owned(),
            message: format!("{e:#}"),
        };
        let pre = linker.instantiate_pre(&component).map_err(incompatible)?;
        HostPre::new(pre).map_err(incompatible)?;
        Ok(())
    })()
    .err()
    .map(|e| e.to_string());

    Ok(Inspection {
        path: path.display().to_string(),
        size_bytes: bytes.len(),
        sha256: digest(&bytes),
        world: world.to_owned(),
        wit_version,
        grants_needed: grants.iter().map(|g| g.as_str()).collect(),
        imports: imports.into_iter().map(|(n, _)| n).collect(),
        exports,
        compatible: problem.is_none(),
        problem,
        // base64 in the ConfigMap's binaryData.
        fits_configmap: bytes.len().div_ceil(3) * 4 <= 1 << 20,
    })
}
