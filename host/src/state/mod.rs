//! Host-owned durable state: the checkpoint of prepared claims and the CDI
//! spec files the container runtime reads (and the device metadata files
//! they mount), and the lock that serializes
//! claim operations across host processes during a rolling update, and the
//! node's boot ID that tells a restart from a reboot.

pub mod boot;
pub mod cdi;
pub mod checkpoint;
pub mod fsutil;
pub mod metadata;
pub mod serialize;
