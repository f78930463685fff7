//! NVIDIA GPU DRA guest.
//!
//! [`logic`] holds the decisions (inventory attributes, opaque config,
//! container edits, Xid → health) over the SDK's types, and asks the host's
//! `nvml` import (SDK feature `nvml`) for the GPUs at `init`.

pub mod logic;

dra_driver_sdk::export_driver!(logic::GpuDriver);
