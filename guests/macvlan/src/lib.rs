//! macvlan networking DRA guest.
//!
//! [`logic`] holds the decisions in plain Rust (configuration, which NICs to
//! publish and how, what each allocated share gets, link state → health);
//! `component` adapts them to the `dra:driver` `net-driver` world and asks
//! the host's `net` import to create links and addresses when built for
//! `wasm32-wasip2`. The host owns every link and address, so this guest
//! keeps nothing that a restart or a swap could lose.

pub mod logic;

#[cfg(target_arch = "wasm32")]
mod component;
