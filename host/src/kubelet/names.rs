//! Driver-name and endpoint rules, checked at start the way the kubelet
//! (1.38+, kubernetes PR #140837) checks them at registration, so that a bad
//! config fails loudly here instead of registering in a loop.

use std::path::{Component, Path, PathBuf};

/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 108;
/// `DriverNameMaxLength` in resource.k8s.io/v1.
pub const MAX_DRIVER_NAME: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NameError {
    #[error("driver name {name:?} is not valid: {reason}")]
    DriverName { name: String, reason: &'static str },
    #[error("socket path {} is not valid: {reason}", path.display())]
    Endpoint { path: PathBuf, reason: String },
    #[error("rolling-update pod UID {0:?} is not a valid UID (letters, digits and '-')")]
    PodUid(String),
}

/// A DNS subdomain of at most 63 characters, like `gpu.example.com`.
pub fn validate_driver_name(name: &str) -> Result<(), NameError> {
    let fail = |reason| {
        Err(NameError::DriverName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > MAX_DRIVER_NAME {
        return fail("it is longer than 63 characters");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return fail("it must be a DNS subdomain: lower-case letters, digits, '-' and '.'");
        }
    }
    Ok(())
}

/// An absolute socket path shorter than 108 bytes, inside the kubelet's root
/// directory after lexical cleaning.
pub fn validate_endpoint(path: &Path, kubelet_root: &Path) -> Result<(), NameError> {
    let fail = |reason: String| {
        Err(NameError::Endpoint {
            path: path.to_owned(),
            reason,
        })
    };
    if !path.is_absolute() {
        return fail("it is not absolute".into());
    }
    let len = path.as_os_str().len();
    if len >= MAX_SOCKET_PATH {
        return fail(format!(
            "it is {len} bytes; Unix socket paths must be shorter than {MAX_SOCKET_PATH} bytes (use a shorter kubelet root or driver name)"
        ));
    }
    let cleaned = clean(path);
    let root = clean(kubelet_root);
    if !cleaned.starts_with(&root) || cleaned == root {
        return fail(format!(
            "it is not inside the kubelet root directory {}",
            kubelet_root.display()
        ));
    }
    Ok(())
}

/// The registration socket of a rolling-update pod: the first of these names
/// whose full path is shorter than [`MAX_SOCKET_PATH`] (the kubelet-plugin
/// helper's `RollingUpdateRegistrarSocketFile`):
///
/// 1. `<driver>-<podUID>-reg.sock`
/// 2. `<driver>-<b64url(sha256(podUID))[..8 bytes]>-reg.sock`
/// 3. `dra-<b64url(sha256(driver NUL podUID))[..16 bytes]>-reg.sock`
///
/// Falls back to the last even if it is too long; [`validate_endpoint`] then
/// reports the length.
pub fn rolling_update_registration_socket(registry_dir: &Path, driver: &str, pod_uid: &str) -> PathBuf {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let uid_hash = Sha256::digest(pod_uid.as_bytes());
    let mut both = Sha256::new();
    both.update(driver.as_bytes());
    both.update([0u8]);
    both.update(pod_uid.as_bytes());
    let both = both.finalize();
    let candidates = [
        format!("{driver}-{pod_uid}-reg.sock"),
        format!("{driver}-{}-reg.sock", b64(&uid_hash[..8])),
        format!("dra-{}-reg.sock", b64(&both[..16])),
    ];
    let mut last = PathBuf::new();
    for name in candidates {
        last = registry_dir.join(name);
        if last.as_os_str().len() < MAX_SOCKET_PATH {
            break;
        }
    }
    last
}

/// A pod UID as the downward API gives it: it becomes part of file names.
pub fn validate_pod_uid(uid: &str) -> Result<(), NameError> {
    if crate::claim::is_safe_uid(uid) {
        Ok(())
    } else {
        Err(NameError::PodUid(uid.to_owned()))
    }
}

/// Lexical path cleaning (Go's `filepath.Clean`): drops `.`, resolves `..`.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names() {
        validate_driver_name("gpu.example.com").unwrap();
        for bad in [
            "",
            "../evil",
            "evil driver",
            "Upper.com",
            "-a.com",
            "a..b",
            &"a".repeat(64),
        ] {
            assert!(validate_driver_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rolling_update_registration_socket_names() {
        let uid = "0b4c6a2e-6f0e-4d6b-9a57-1c1a3e0d9f11";
        let short =
            rolling_update_registration_socket(Path::new("/var/lib/kubelet/plugins_registry"), "gpu.example.com", uid);
        assert_eq!(
            short,
            Path::new(&format!(
                "/var/lib/kubelet/plugins_registry/gpu.example.com-{uid}-reg.sock"
            ))
        );
        // A long driver name: the 11-character hash of the UID.
        let driver = format!("{}.example.com", "d".repeat(40));
        let hashed = rolling_update_registration_socket(Path::new("/var/lib/kubelet/plugins_registry"), &driver, uid);
        let name = hashed.file_name().unwrap().to_str().unwrap();
        let middle = name
            .strip_prefix(&format!("{driver}-"))
            .unwrap()
            .strip_suffix("-reg.sock")
            .unwrap();
        assert_eq!(middle.len(), 11, "{name}");
        assert!(hashed.as_os_str().len() < MAX_SOCKET_PATH);
        // A long directory too: the 22-character hash of driver and UID.
        let dir = format!("/{}/plugins_registry", "k".repeat(40));
        let last = rolling_update_registration_socket(Path::new(&dir), &driver, uid);
        let name = last.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("dra-") && name.len() == "dra-".len() + 22 + "-reg.sock".len(),
            "{name}"
        );
        // Deterministic, and different per pod.
        assert_eq!(last, rolling_update_registration_socket(Path::new(&dir), &driver, uid));
        assert_ne!(
            last,
            rolling_update_registration_socket(Path::new(&dir), &driver, "other-uid")
        );
        validate_pod_uid(uid).unwrap();
        assert!(validate_pod_uid("../x").is_err());
    }

    #[test]
    fn endpoints() {
        let root = Path::new("/var/lib/kubelet");
        validate_endpoint(Path::new("/var/lib/kubelet/plugins/x/dra.sock"), root).unwrap();
        validate_endpoint(Path::new("/var/lib/kubelet/plugins_registry/x-reg.sock"), root).unwrap();
        for bad in [
            "relative/dra.sock",
            "/var/lib/kubelet/../evil/dra.sock",
            "/var/lib/kubeletx/dra.sock",
            "/tmp/dra.sock",
        ] {
            assert!(validate_endpoint(Path::new(bad), root).is_err(), "{bad}");
        }
        let long = format!("/var/lib/kubelet/plugins/{}/dra.sock", "d".repeat(80));
        assert!(
            validate_endpoint(Path::new(&long), root)
                .unwrap_err()
                .to_string()
                .contains("108")
        );
    }
}
