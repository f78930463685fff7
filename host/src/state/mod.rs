//! Host-owned durable state: the checkpoint of prepared claims and the CDI
//! spec files the container runtime reads.

pub mod cdi;
pub mod checkpoint;
pub mod fsutil;
