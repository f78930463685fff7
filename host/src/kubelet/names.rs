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
