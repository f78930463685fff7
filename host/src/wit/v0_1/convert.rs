//! Conversions between the host's domain types and their 0.1 WIT records,
//! at the guest-call boundary: the one place each is written.

use super::dra::driver::types;
use crate::claim::ClaimRef;

impl From<&ClaimRef> for types::ClaimRef {
    fn from(c: &ClaimRef) -> Self {
        Self {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            uid: c.uid.clone(),
        }
    }
}

impl From<types::ClaimRef> for ClaimRef {
    fn from(c: types::ClaimRef) -> Self {
        Self {
            namespace: c.namespace,
            name: c.name,
            uid: c.uid,
        }
    }
}
