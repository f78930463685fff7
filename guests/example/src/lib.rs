//! Example DRA driver guest: simulated GPUs.
//!
//! [`logic`] holds the driver's decisions in plain Rust; `component` adapts
//! them to the `dra:driver` WIT world when built for `wasm32-wasip2`.

pub mod logic;

#[cfg(target_arch = "wasm32")]
mod component;
