//! What a host device node really is: read from the node itself, so that a
//! guest cannot hand out another device under an allowed name.
//!
//! A runtime creates the container's device node from the type and numbers
//! in the CDI spec, and reads them from the host path only when they are
//! absent (the CDI library's `fillMissingInfo`, with `lstat`). So `/dev/nvidia0`
//! declared as `b 8:0` would give the container the node's first disk. The
//! host reads the node the same way (`lstat`, no symbolic links), refuses a
//! declaration that differs and fills in what is absent.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The kind of a device node, as CDI's `type` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

impl NodeKind {
    /// CDI's `type`: `c`, `b` or `p`.
    pub fn cdi_type(self) -> &'static str {
        match self {
            NodeKind::Char => "c",
            NodeKind::Block => "b",
            NodeKind::Fifo => "p",
        }
    }

    /// Whether a declared CDI type names this kind (`u`, unbuffered, is a
    /// character device).
    pub fn is(self, declared: &str) -> bool {
        matches!(
            (self, declared),
            (NodeKind::Char, "c" | "u") | (NodeKind::Block, "b") | (NodeKind::Fifo, "p")
        )
    }
}

/// A device node on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostDevice {
    pub kind: NodeKind,
    pub major: i64,
    pub minor: i64,
}

impl std::fmt::Display for HostDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            NodeKind::Fifo => f.write_str("p"),
            kind => write!(f, "{} {}:{}", kind.cdi_type(), self.major, self.minor),
        }
    }
}

/// Where the host finds the node path `host_path` when its device files are
/// mounted at `root` (`/` when the host sees the node's `/dev` as its own).
pub fn seen_at(root: &Path, host_path: &str) -> PathBuf {
    root.join(host_path.trim_start_matches('/'))
}

/// `lstat` the device node at `host_path` (a clean absolute path) under `root`.
pub fn lookup(root: &Path, host_path: &str) -> Result<HostDevice, String> {
    let at = seen_at(root, host_path);
    let meta = std::fs::symlink_metadata(&at).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "does not exist on this node (looked for {}; device_root is {})",
            at.display(),
            root.display()
        ),
        _ => format!("cannot be read ({}: {e})", at.display()),
    })?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        NodeKind::Char
    } else if ft.is_block_device() {
        NodeKind::Block
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_symlink() {
        return Err(format!(
            "is a symbolic link on this node ({}); name the device node itself, as runtimes do not follow links here",
            at.display()
        ));
    } else {
        return Err(format!("is not a device node on this node ({})", at.display()));
    };
    let rdev = meta.rdev();
    Ok(HostDevice {
        kind,
        major: i64::from(libc::major(rdev)),
        minor: i64::from(libc::minor(rdev)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_device_nodes() {
        // /dev/null is 1:3 on every Linux node.
        let null = lookup(Path::new("/"), "/dev/null").unwrap();
        assert_eq!(
            null,
            HostDevice {
                kind: NodeKind::Char,
                major: 1,
                minor: 3
            }
        );
        assert_eq!(null.to_string(), "c 1:3");
        assert!(null.kind.is("c") && null.kind.is("u") && !null.kind.is("b"));
    }

    #[test]
    fn missing_links_and_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/file"), b"").unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("dev/link")).unwrap();
        let e = lookup(dir.path(), "/dev/nvidia0").unwrap_err();
        assert!(e.contains("does not exist") && e.contains("device_root"), "{e}");
        let e = lookup(dir.path(), "/dev/link").unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let e = lookup(dir.path(), "/dev/file").unwrap_err();
        assert!(e.contains("not a device node"), "{e}");
    }
}
