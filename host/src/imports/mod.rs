//! Host implementations of the WIT imports a guest may be granted.
//!
//! `log` is granted to every guest. `nvml` and `net` are capabilities an
//! operator grants per driver in the host config; a guest that imports one it
//! was not granted fails to load (see `guest::check_import`).

pub mod log;

use crate::guest::StoreState;
use wasmtime::component::Linker;

/// A capability an operator can grant a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// `dra:driver/nvml`: NVIDIA Management Library access.
    Nvml,
    /// `dra:driver/net`: link management.
    Net,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Nvml => "nvml",
            Grant::Net => "net",
        }
    }

    /// The grant that covers a `dra:driver` interface.
    pub fn for_interface(interface: &str) -> Option<Self> {
        match interface {
            "nvml" => Some(Grant::Nvml),
            "net" => Some(Grant::Net),
            _ => None,
        }
    }
}

/// The host imports one guest is linked with. Cloned into every store.
#[derive(Clone, Debug, Default)]
pub struct Imports {
    grants: Vec<Grant>,
}

impl Imports {
    /// Imports for a guest granted `grants`. Fails for capabilities this
    /// build cannot provide.
    pub fn new(grants: &[Grant]) -> Result<Self, String> {
        if let Some(g) = grants.first() {
            return Err(format!(
                "the {} capability is not available in this build of the host",
                g.as_str()
            ));
        }
        Ok(Self {
            grants: grants.to_vec(),
        })
    }

    pub fn grants(&self, grant: Grant) -> bool {
        self.grants.contains(&grant)
    }
}

/// Add the granted imports (besides `log`) to a guest's linker.
pub(crate) fn add_granted(_linker: &mut Linker<StoreState>, _imports: &Imports) -> wasmtime::Result<()> {
    Ok(())
}
