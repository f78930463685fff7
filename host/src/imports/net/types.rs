//! The `net` capability's own records: what a guest asks of it and what it
//! answers, as the host keeps them (`wit/shared.rs` converts them at the
//! guest-call boundary, for every contract version). Field documentation is the contract's: see the
//! `net` interface in `wit/v0.1/driver.wit` and `wit/v0.2/driver.wit`.

/// A link visible to a guest: a granted parent or one it created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub kind: String,
    pub mtu: u32,
    pub hardware_address: String,
    pub up: bool,
    /// CIDR strings.
    pub addresses: Vec<String>,
    pub speed_mbps: Option<u32>,
    pub pci_address: Option<String>,
}

/// Why a guest's net call failed; the message is what the guest sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetError {
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacvlanMode {
    Bridge,
    Private,
    Vepa,
    Passthru,
}

/// A macvlan to create on a granted parent, for a claim and the guest's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Macvlan {
    pub parent: String,
    pub claim_uid: String,
    pub key: String,
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub hardware_address: Option<String>,
}

/// An address range of one parent, from the guest's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPool {
    pub subnet: String,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressRequest {
    pub parent: String,
    pub pool: IpPool,
    pub claim_uid: String,
    pub share_id: String,
    pub static_address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// CIDR; `0.0.0.0/0` for a default route.
    pub destination: String,
    pub gateway: Option<String>,
}

/// How a prepared link is to appear inside the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub link: String,
    pub claim_uid: String,
    pub pod_interface: String,
    pub addresses: Vec<String>,
    pub routes: Vec<Route>,
}
