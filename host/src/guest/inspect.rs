//! `dra-wasm-host guest inspect`: what a component file is, without running it.

use super::error::GuestError;
use super::{PACKAGE, StoreState, check_import, digest};
use crate::imports::{Grant, Imports};
use crate::wit::{DriverPre, exported_versions};
use serde::Serialize;
use std::path::Path;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

/// The custom section the guest SDK's `export_driver!` writes into every
/// component built with it: the SDK's version, as UTF-8 text. A section of
/// its own, not the `producers` section, because that one is the
/// toolchain's: wasm-ld and wit-component rewrite and merge it, and a
/// stripped build may drop it, while the linker copies an unknown custom
/// section through as is.
pub const SDK_SECTION: &str = "dra-driver-sdk";

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
    /// The contract it exports, e.g. `dra:driver@0.2.0`: the version this
    /// host binds it to, or, when it cannot be served, the newest version of
    /// `dra:driver/device-driver` it exports. Absent when it exports none.
    pub contract: Option<String>,
    /// The version part of [`Self::contract`], e.g. `0.2.0`.
    pub wit_version: Option<String>,
    /// The version of the guest SDK (`dra-driver-sdk`) it was built with;
    /// absent for a guest written without the SDK.
    pub sdk_version: Option<String>,
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
        source: e.into(),
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
    let mut bound = None;
    // Link as `run` would, with exactly the grants it needs.
    let granted = Imports::for_inspection(&grants);
    let problem = (|| -> Result<(), GuestError> {
        for (name, item) in &imports {
            check_import(path, name, &item.ty, &granted)?;
        }
        let mut linker: Linker<StoreState> = Linker::new(engine);
        let link = |what| move |e: wasmtime::Error| GuestError::Link { what, source: e.into() };
        crate::wit::add_log(&mut linker, StoreState::imports_view).map_err(link("log"))?;
        crate::wit::add_granted(&mut linker, &granted, StoreState::imports_view).map_err(link("host imports"))?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(link("unknown imports as traps"))?;
        let incompatible = |e: wasmtime::Error| GuestError::Incompatible {
            path: path.to_owned(),
            source: e.into(),
        };
        let pre = linker.instantiate_pre(&component).map_err(incompatible)?;
        bound = Some(DriverPre::<StoreState>::new(pre).map_err(incompatible)?.version());
        Ok(())
    })()
    .err()
    .map(|e| crate::error::chain(&e));
    let wit_version = match bound {
        Some(v) => Some(v.to_owned()),
        None => newest(exported_versions(&component).into_iter().flatten()),
    };

    Ok(Inspection {
        path: path.display().to_string(),
        size_bytes: bytes.len(),
        sha256: digest(&bytes),
        world: world.to_owned(),
        contract: wit_version.as_ref().map(|v| format!("dra:driver@{v}")),
        wit_version,
        sdk_version: sdk_version(&bytes),
        grants_needed: grants.iter().map(|g| g.as_str()).collect(),
        imports: imports.into_iter().map(|(n, _)| n).collect(),
        exports,
        compatible: problem.is_none(),
        problem,
        // base64 in the ConfigMap's binaryData.
        fits_configmap: bytes.len().div_ceil(3) * 4 <= 1 << 20,
    })
}

/// The newest of `versions` (`major.minor.patch`; others sort first).
fn newest(versions: impl Iterator<Item = String>) -> Option<String> {
    let key = |v: &String| -> Vec<u64> { v.split('.').map(|n| n.parse().unwrap_or(0)).collect() };
    versions.max_by_key(key)
}

/// The SDK version recorded in [`SDK_SECTION`], in the component or any
/// module inside it (`export_driver!` writes it into the guest's core
/// module, which the component embeds).
fn sdk_version(bytes: &[u8]) -> Option<String> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        // The component compiled, so its sections parse; stop at anything else.
        let Ok(payload) = payload else { return None };
        if let wasmparser::Payload::CustomSection(section) = payload
            && section.name() == SDK_SECTION
        {
            let text = std::str::from_utf8(section.data()).ok()?;
            let plausible = !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_graphic());
            return plausible.then(|| text.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module with one custom section, and a component embedding it.
    fn module_with_section(name: &str, data: &[u8]) -> Vec<u8> {
        let mut payload = vec![name.len() as u8];
        payload.extend_from_slice(name.as_bytes());
        payload.extend_from_slice(data);
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        module.push(0); // custom section
        module.push(payload.len() as u8);
        module.extend(payload);
        module
    }

    fn component_embedding(module: &[u8]) -> Vec<u8> {
        let mut component = b"\0asm\x0d\0\x01\0".to_vec();
        component.push(1); // core module section
        component.push(module.len() as u8);
        component.extend_from_slice(module);
        component
    }

    #[test]
    fn the_newest_version_is_compared_by_number() {
        let versions = ["0.9.0", "0.10.0", "0.2.1"].map(str::to_owned);
        assert_eq!(newest(versions.into_iter()).as_deref(), Some("0.10.0"));
        assert_eq!(newest(std::iter::empty()), None);
    }

    #[test]
    fn sdk_version_is_read_from_the_embedded_module() {
        let module = module_with_section(SDK_SECTION, b"0.1.0");
        assert_eq!(sdk_version(&module).as_deref(), Some("0.1.0"));
        assert_eq!(sdk_version(&component_embedding(&module)).as_deref(), Some("0.1.0"));
        let other = module_with_section("producers", b"0.1.0");
        assert_eq!(sdk_version(&component_embedding(&other)), None);
        let garbage = module_with_section(SDK_SECTION, b"\x00\xff");
        assert_eq!(sdk_version(&garbage), None);
    }
}
