//! The state blob: what `prepare` tells its later `unprepare`.
//!
//! Guest instances are disposable, so nothing a driver keeps in memory
//! reaches `unprepare`. The host checkpoints the bytes `prepare` returns
//! (fsync) and hands them back to `unprepare`, possibly days later and to a
//! newer build of the driver after a hot swap or an upgrade. So:
//!
//! - put a version number in it, and keep reading every version any build
//!   of the driver ever wrote (or refuse a newer one with a clear error);
//! - expect it empty: the host calls `unprepare` with no state for claims
//!   it has no record of (a crash between the guest's `prepare` and the
//!   checkpoint), so that the driver can still clean up by claim UID.
//!
//! These helpers store it as JSON, so that it stays readable in the
//! checkpoint file and serde's `#[serde(default)]` can add fields without a
//! new version.

use crate::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `state` as JSON bytes.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(state).map_err(|e| Error::internal(format!("encoding the prepare state: {e}")))
}

/// The state `prepare` returned; `None` when the host has none.
pub fn decode<T: DeserializeOwned>(state: &[u8]) -> Result<Option<T>> {
    if state.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(state)
        .map(Some)
        .map_err(|e| Error::invalid_claim(format!("unreadable prepare state: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct V1 {
        version: u32,
        devices: Vec<String>,
    }

    #[test]
    fn round_trip_empty_and_garbage() {
        let s = V1 {
            version: 1,
            devices: vec!["gpu-0".into()],
        };
        let bytes = encode(&s).unwrap();
        assert_eq!(bytes, br#"{"version":1,"devices":["gpu-0"]}"#);
        assert_eq!(decode::<V1>(&bytes).unwrap(), Some(s));
        assert_eq!(decode::<V1>(b"").unwrap(), None);
        let e = decode::<V1>(b"\x07\x07").unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::InvalidClaim);
        assert!(e.message.starts_with("unreadable prepare state"), "{e}");
    }
}
