//! Link management through the host (feature `net`; the operator grants it
//! with `grants = ["net"]` and names the parent links in `[drivers.net]`).
//!
//! The host restricts a driver to the parent links the operator granted and
//! to the links the host created for it (named by the host), and keeps every
//! address it hands out (IPAM) next to the checkpoint. A driver instance
//! remembers nothing. Built natively (unit tests) there is no host: every
//! call fails.

use crate::Hook;
use std::fmt;

pub use crate::bindings::dra::driver::net::{AddressRequest, Attachment, IpPool, Link, Macvlan, MacvlanMode, Route};

/// A `net` call the host refused or could not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What was asked, e.g. `creating a macvlan on eth1`.
    pub call: String,
    /// The host's reason.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.call, self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        crate::Error::unavailable(e.to_string())
    }
}

fn fail(call: String, message: String) -> Error {
    Error { call, message }
}

/// Links visible to this driver: its granted parents and the links it created.
pub fn list_links() -> Result<Vec<Link>, Error> {
    imp::list_links().map_err(|m| fail("listing links".to_owned(), m))
}

/// Create (or find, for the same claim and key) a macvlan on a granted parent.
pub fn create_macvlan(spec: &Macvlan) -> Result<Link, Error> {
    imp::create_macvlan(spec).map_err(|m| fail(format!("creating a macvlan on {}", spec.parent), m))
}

/// Delete a link this driver created, wherever it is now; false when it was already gone.
pub fn delete_link(name: &str) -> Result<bool, Error> {
    imp::delete_link(name).map_err(|m| fail(format!("deleting link {name}"), m))
}

/// Allocate (or find again) an address for a claim's share; CIDR.
pub fn allocate_address(request: &AddressRequest) -> Result<String, Error> {
    imp::allocate_address(request).map_err(|m| fail(format!("address on {}", request.parent), m))
}

/// Release everything the host holds for a claim (addresses, links).
/// Returns how many addresses were held; an unknown claim is no error.
pub fn release_claim(claim_uid: &str) -> Result<u32, Error> {
    imp::release_claim(claim_uid).map_err(|m| fail("releasing the claim's links and addresses".to_owned(), m))
}

/// Record how a link is attached to the pod and get the CDI
/// `createRuntime` hook that asks the host to do it.
pub fn prepare_attachment(attachment: &Attachment) -> Result<Hook, Error> {
    imp::prepare_attachment(attachment).map_err(|m| fail("arranging the attachment".to_owned(), m))
}

/// Address a link this driver created and set it up in the host namespace
/// (for CDI `netDevices`, where the runtime moves the link).
pub fn configure_link(name: &str, addresses: &[String]) -> Result<(), Error> {
    imp::configure_link(name, addresses).map_err(|m| fail(format!("configuring link {name}"), m))
}

/// Limit the egress rate of a link this driver created (bits per second);
/// false when the kernel offers no way to do it for this link.
pub fn set_egress_rate(name: &str, bits_per_second: u64) -> Result<bool, Error> {
    imp::set_egress_rate(name, bits_per_second).map_err(|m| fail(format!("egress limit of {name}"), m))
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{AddressRequest, Attachment, Link, Macvlan};
    use crate::Hook;
    use crate::bindings::dra::driver::net as wit;

    fn message(e: wit::NetError) -> String {
        e.message
    }

    pub fn list_links() -> Result<Vec<Link>, String> {
        wit::list_links().map_err(message)
    }

    pub fn create_macvlan(m: &Macvlan) -> Result<Link, String> {
        wit::create_macvlan(m).map_err(message)
    }

    pub fn delete_link(name: &str) -> Result<bool, String> {
        wit::delete_link(name).map_err(message)
    }

    pub fn allocate_address(r: &AddressRequest) -> Result<String, String> {
        wit::allocate_address(r).map_err(message)
    }

    pub fn release_claim(claim_uid: &str) -> Result<u32, String> {
        wit::release_claim(claim_uid).map_err(message)
    }

    pub fn prepare_attachment(a: &Attachment) -> Result<Hook, String> {
        wit::prepare_attachment(a).map_err(message)
    }

    pub fn configure_link(name: &str, addresses: &[String]) -> Result<(), String> {
        wit::configure_link(name, addresses).map_err(message)
    }

    pub fn set_egress_rate(name: &str, bps: u64) -> Result<bool, String> {
        wit::set_egress_rate(name, bps).map_err(message)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{AddressRequest, Attachment, Link, Macvlan};
    use crate::Hook;

    const NO_HOST: &str = "no host: built natively, the net import is not there";

    pub fn list_links() -> Result<Vec<Link>, String> {
        Err(NO_HOST.into())
    }

    pub fn create_macvlan(_: &Macvlan) -> Result<Link, String> {
        Err(NO_HOST.into())
    }

    pub fn delete_link(_: &str) -> Result<bool, String> {
        Err(NO_HOST.into())
    }

    pub fn allocate_address(_: &AddressRequest) -> Result<String, String> {
        Err(NO_HOST.into())
    }

    pub fn release_claim(_: &str) -> Result<u32, String> {
        Err(NO_HOST.into())
    }

    pub fn prepare_attachment(_: &Attachment) -> Result<Hook, String> {
        Err(NO_HOST.into())
    }

    pub fn configure_link(_: &str, _: &[String]) -> Result<(), String> {
        Err(NO_HOST.into())
    }

    pub fn set_egress_rate(_: &str, _: u64) -> Result<bool, String> {
        Err(NO_HOST.into())
    }
}
