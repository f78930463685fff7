//! macvlan networking DRA guest.
//!
//! [`logic`] holds the decisions (configuration, which NICs to publish and
//! how, what each allocated share gets, link state → health) over the SDK's
//! types, and asks the host's `net` import (SDK feature `net`) to create
//! links and addresses. The host owns every link and address, so this guest
//! keeps nothing that a restart or a swap could lose.

pub mod logic;

dra_driver_sdk::export_driver!(logic::MacvlanDriver);
