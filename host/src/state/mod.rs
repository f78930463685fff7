//! Host-owned durable state: the checkpoint of prepared claims and the CDI
//! spec files the container runtime reads, and the lock that serializes
//! claim operations across host processes during a rolling update.

pub mod cdi;
pub mod checkpoint;
pub mod fsutil;
pub mod serialize;
