//! Unix socket files the host listens on: replaced when stale at start,
//! mode 0600, and unlinked on shutdown only if they are still ours.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// A bound socket file; unlinks itself when dropped, unless another process
/// has since replaced it (a new pod in a rolling update must keep its socket).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Bind `path`, replacing a stale socket file left by a previous run.
    pub fn bind(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket; refusing to replace it", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok((
            listener,
            SocketFile {
                path: path.to_owned(),
                dev: meta.dev(),
                ino: meta.ino(),
            },
        ))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove socket");
                }
            }
            Ok(_) => tracing::info!(path = %self.path.display(), "socket was replaced by another process; leaving it"),
            Err(_) => {}
        }
    }
}
