//! Example DRA driver guest: simulated GPUs.
//!
//! [`logic`] holds the driver's decisions in plain Rust over the SDK's
//! types; [`dra_driver_sdk::export_driver!`] makes it the component's export
//! when built for `wasm32-wasip2`.

pub mod logic;

dra_driver_sdk::export_driver!(logic::ExampleDriver);
