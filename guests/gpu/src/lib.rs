//! NVIDIA GPU DRA guest.
//!
//! [`logic`] holds the decisions in plain Rust (inventory attributes, opaque
//! config, container edits, Xid → health); `component` adapts them to the
//! `dra:driver` `gpu-driver` world and asks the host's `nvml` import for the
//! GPUs when built for `wasm32-wasip2`.

pub mod logic;
pub mod quantity;

#[cfg(target_arch = "wasm32")]
mod component;
