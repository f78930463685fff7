//! Noticing that a guest file may have changed.
//!
//! A ConfigMap volume does not change a file in place: the kubelet writes the
//! new data into a fresh timestamped directory, points a temporary symlink at
//! it and renames that over `..data`; the file the config names
//! (`gpu.wasm -> ..data/gpu.wasm`) then resolves to the new bytes. A plain
//! `cp` or `mv` onto the file changes it in place or replaces its directory
//! entry. To see all of these, the watcher watches the file's *directory*
//! (inotify on one level) and treats any event there as "maybe changed";
//! whether it really changed is decided by the content hash
//! ([`super::Guest::replace`]), so spurious events cost one read and one hash.
//!
//! Events come in bursts (a ConfigMap update is four or five of them, a `cp`
//! of a large file many writes); one check is made when the directory has
//! been quiet for the debounce interval, or at the latest after
//! [`MAX_DELAY`].

use notify::Watcher;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// However busy the directory, a check happens at least this often.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("watching {} for guest updates", dir.display())]
pub struct WatchError {
    pub dir: PathBuf,
    #[source]
    pub source: notify::Error,
}

/// Watches the directory of one guest file. Dropping it stops the watch.
pub struct GuestFileWatcher {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<()>,
    debounce: Duration,
}

impl std::fmt::Debug for GuestFileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestFileWatcher")
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

impl GuestFileWatcher {
    /// Watch the directory holding `file`.
    pub fn new(file: &Path, debounce: Duration) -> Result<Self, WatchError> {
        let dir = file.parent().unwrap_or(Path::new("/")).to_owned();
        let (tx, rx) = mpsc::unbounded_channel();
        let err = |source| WatchError {
            dir: dir.clone(),
            source,
        };
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if event.kind.is_access() => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "guest file watch error; checking the file anyway");
                let _ = tx.send(());
            }
        })
        .map_err(err)?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive).map_err(err)?;
        Ok(Self {
            _watcher: watcher,
            rx,
            debounce,
        })
    }

    /// Wait for the next burst of changes to settle. `None` once the watch
    /// has ended.
    pub async fn changed(&mut self) -> Option<()> {
        self.rx.recv().await?;
        let started = Instant::now();
        loop {
            let quiet_until = Instant::now() + self.debounce;
            let deadline = quiet_until.min(started + MAX_DELAY);
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(())) if Instant::now() < started + MAX_DELAY => continue,
                Ok(Some(())) | Err(_) => return Some(()),
                Ok(None) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ConfigMap update sequence, as the kubelet's atomic writer does it.
    fn configmap_update(dir: &Path, generation: u32, bytes: &[u8]) {
        let data = dir.join(format!("..gen_{generation}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("guest.wasm"), bytes).unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    }

    #[tokio::test]
    async fn a_configmap_swap_is_one_settled_change() {
        let dir = tempfile::tempdir().unwrap();
        configmap_update(dir.path(), 1, b"one");
        std::os::unix::fs::symlink("..data/guest.wasm", dir.path().join("guest.wasm")).unwrap();
        let file = dir.path().join("guest.wasm");
        let mut w = GuestFileWatcher::new(&file, Duration::from_millis(50)).unwrap();

        configmap_update(dir.path(), 2, b"two");
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("a change is reported")
            .unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        // The burst was reported once: nothing more is pending.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), w.changed())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_plain_replace_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("guest.wasm");
        std::fs::write(&file, b"one").unwrap();
        let mut w = GuestFileWatcher::new(&file, Duration::from_millis(20)).unwrap();
        let tmp = dir.path().join(".guest.wasm.tmp");
        std::fs::write(&tmp, b"two").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("a change is reported")
            .unwrap();
    }
}
