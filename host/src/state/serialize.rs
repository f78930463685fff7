//! Serializing prepare and unprepare across the host processes of one node.
//!
//! During a rolling update of the host (DaemonSet `maxSurge: 1`, the kubelet's
//! rolling-update mode) the old and the new pod serve the same driver at the
//! same time, over the same checkpoint directory. Each NodePrepareResources
//! and NodeUnprepareResources call then runs under an exclusive `flock` on
//! `<plugin data dir>/serialize.lock` (the file upstream's `kubeletplugin`
//! helper uses), and re-reads the checkpoint under it, so that neither
//! process acts on a stale view of the other's claims.
//!
//! `flock` locks belong to an open file description, so two calls of one
//! process sharing the descriptor would not exclude each other: an in-process
//! async mutex is taken first, then the file lock. The kernel drops the file
//! lock when the process dies, so a crashed pod never blocks the other.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The lock file's name in the plugin data directory.
pub const LOCK_FILE: &str = "serialize.lock";

#[derive(Debug, thiserror::Error)]
#[error("serialization lock {}", path.display())]
pub struct SerializeError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// An exclusive lock shared by the host processes serving one driver.
#[derive(Debug, Clone)]
pub struct SerializeLock {
    path: PathBuf,
    file: Arc<File>,
    local: Arc<tokio::sync::Mutex<()>>,
}

/// Held while a call runs; dropping it unlocks.
#[derive(Debug)]
pub struct SerializeGuard {
    file: Arc<File>,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for SerializeGuard {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor this guard keeps open.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl SerializeLock {
    /// Open (creating) the lock file in `dir`.
    pub fn open(dir: &Path) -> Result<Self, SerializeError> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| SerializeError {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            file: Arc::new(file),
            local: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wait for the lock: first among this process's calls, then among processes.
    ///
    /// Cancel-safe: the thread that waits in `flock` makes the guard itself,
    /// so if this future is dropped while it waits, the guard it ends up
    /// with is dropped too and the lock released; an abandoned wait never
    /// leaves the other pod locked out.
    ///
    /// A free file lock (the other pod idle, or no other pod) is taken
    /// without leaving the async worker; only a held one is waited for on a
    /// blocking thread.
    pub async fn acquire(&self) -> Result<SerializeGuard, SerializeError> {
        let local = Arc::clone(&self.local).lock_owned().await;
        let file = Arc::clone(&self.file);
        // SAFETY: flock on a descriptor the Arc keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(SerializeGuard { file, _local: local });
        }
        let result = tokio::task::spawn_blocking(move || {
            loop {
                // SAFETY: flock on a descriptor the Arc keeps open.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    return Ok(SerializeGuard { file, _local: local });
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("lock thread failed: {e}"))));
        result.map_err(|source| SerializeError {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn excludes_other_open_file_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        // Two opens stand in for two processes: flock excludes across them.
        let a = SerializeLock::open(dir.path()).unwrap();
        let b = SerializeLock::open(dir.path()).unwrap();
        let held = a.acquire().await.unwrap();
        let waiting = tokio::spawn(async move { b.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the second lock must wait for the first");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released lock is taken")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn excludes_calls_of_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let lock = SerializeLock::open(dir.path()).unwrap();
        let held = lock.acquire().await.unwrap();
        let other = lock.clone();
        let waiting = tokio::spawn(async move { other.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn an_abandoned_wait_does_not_keep_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let a = SerializeLock::open(dir.path()).unwrap();
        let b = SerializeLock::open(dir.path()).unwrap();
        let held = a.acquire().await.unwrap();
        // b waits, and its caller gives up (a kubelet deadline passing).
        let abandoned = tokio::time::timeout(Duration::from_millis(100), b.acquire()).await;
        assert!(abandoned.is_err(), "b must still be waiting when it is dropped");
        drop(held);
        // b's waiting thread takes the lock after all and must let it go.
        tokio::time::timeout(Duration::from_secs(5), a.acquire())
            .await
            .expect("the lock is free again after the abandoned wait")
            .unwrap();
    }
}
