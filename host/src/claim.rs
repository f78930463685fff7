//! The host's own view of a claim: its identity as the kubelet names it, and
//! the devices it was prepared with. Shared by the kubelet service (answers),
//! the driver flow and the checkpoint (what is stored).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A ResourceClaim as the kubelet names it in NodePrepareResources.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// One prepared device, as answered to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDevice {
    /// Requests this device serves (subrequests stripped), as the Go helper answers.
    pub request_names: Vec<String>,
    pub pool: String,
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    pub cdi_device_ids: Vec<String>,
}

/// Whether a claim UID can safely name files (checkpoint, CDI spec).
///
/// Kubernetes UIDs (and share IDs) are UUIDs; the kubelet passes them
/// through from the API server. Anything else (a path separator, a leading
/// dot, `_`, which separates the parts of CDI device names, an empty string)
/// is refused rather than sanitised, so two claims can never map to one name.
pub fn is_safe_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 128
        && !uid.starts_with(['.', '-'])
        && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Whether `ns` / `name` are plausible Kubernetes object names (DNS subdomain
/// characters, at most 253 bytes). Checked before they reach logs or the API.
pub fn is_valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids() {
        assert!(is_safe_uid("0b5a4e3c-1f3e-4a8e-9b5c-2f6d7e8f9a0b"));
        for bad in ["", "../x", "a/b", ".x", "-x", "a b", "a_b", &"x".repeat(129)] {
            assert!(!is_safe_uid(bad), "{bad:?}");
        }
    }

    #[test]
    fn object_names() {
        assert!(is_valid_object_name("default"));
        assert!(is_valid_object_name("my-claim.v2"));
        for bad in ["", "Upper", "-x", "x-", "a/b", "a_b"] {
            assert!(!is_valid_object_name(bad), "{bad:?}");
        }
    }
}
