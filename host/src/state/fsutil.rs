//! Durable file operations: every state file the host writes goes through
//! here, so "write-to-temp + fsync + rename + fsync the directory" is
//! implemented once.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Marker in the names of temporary files, so that leftovers of a crash can
/// be recognised and removed (see [`remove_stale_temp_files`]).
const TEMP_MARKER: &str = ".dra-tmp-";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replace `path` with `bytes` atomically and durably.
///
/// Readers see either the old file or the complete new one, never a partial
/// write, and once this returns the new content survives a power loss. The
/// temporary file is hidden (leading dot) and never ends in `.json`/`.yaml`,
/// so CDI runtimes scanning the directory do not pick it up.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}{TEMP_MARKER}{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Remove `path` durably. Returns `false` when it did not exist.
pub fn remove_durable(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(parent(path)?)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// fsync a directory, making renames and unlinks in it durable.
///
/// Group commit: concurrent callers for one directory share fsyncs. A caller
/// waits for an fsync that *started* after it asked (so it covers the rename
/// or unlink the caller made before asking) and starts one itself when none
/// is running. Under N concurrent claim operations this turns N directory
/// fsyncs into about two, and every caller still returns only once its own
/// change is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    DirSync::of(dir).sync(dir)
}

/// The fsync group of one directory.
#[derive(Default)]
struct DirSync {
    state: Mutex<DirSyncState>,
    done: Condvar,
}

#[derive(Default)]
struct DirSyncState {
    /// Tickets handed out: one per call, in the order of the calls.
    asked: u64,
    /// Every ticket up to this one is covered by a finished fsync.
    covered: u64,
    running: bool,
}

impl DirSync {
    fn of(dir: &Path) -> Arc<DirSync> {
        static GROUPS: OnceLock<Mutex<HashMap<PathBuf, Arc<DirSync>>>> = OnceLock::new();
        let mut groups = GROUPS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Arc::clone(groups.entry(dir.to_owned()).or_default())
    }

    fn sync(&self, dir: &Path) -> io::Result<()> {
        let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = lock();
        state.asked += 1;
        let ticket = state.asked;
        loop {
            if state.covered >= ticket {
                return Ok(());
            }
            if !state.running {
                // Everything asked so far was done before this fsync starts.
                let target = state.asked;
                state.running = true;
                drop(state);
                let result = File::open(dir).and_then(|d| d.sync_all());
                state = lock();
                state.running = false;
                if result.is_ok() {
                    state.covered = state.covered.max(target);
                }
                self.done.notify_all();
                // On an error only this caller fails; a waiter starts its own fsync.
                result?;
                continue;
            }
            state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Create `dir` (and parents) with `mode` if it does not exist.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new().recursive(true).mode(mode).create(dir),
        Err(e) => Err(e),
    }
}

/// Remove temporary files that a crash in [`write_atomic`] left in `dir`,
/// for target names accepted by `ours`. Returns the paths removed.
pub fn remove_stale_temp_files(dir: &Path, ours: impl Fn(&str) -> bool) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(target) = name
            .strip_prefix('.')
            .and_then(|n| n.split_once(TEMP_MARKER))
            .map(|(t, _)| t)
        else {
            continue;
        };
        if ours(target) {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

fn parent(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        _ => Ok(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn concurrent_durable_writes_in_one_directory_all_complete() {
        // 16 writers share the directory's fsyncs; none may hang or fail,
        // and every file is there with its content afterwards.
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for t in 0..16 {
            let (dir, tx) = (dir.path().to_owned(), tx.clone());
            std::thread::spawn(move || {
                for i in 0..20 {
                    let path = dir.join(format!("{t}-{i}.json"));
                    write_atomic(&path, format!("{t}/{i}").as_bytes(), 0o600).unwrap();
                    if i % 2 == 1 {
                        assert!(remove_durable(&path).unwrap());
                    }
                }
                tx.send(t).unwrap();
            });
        }
        drop(tx);
        for _ in 0..16 {
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .expect("a writer hung");
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 16 * 10);
        assert_eq!(fs::read_to_string(dir.path().join("3-4.json")).unwrap(), "3/4");
    }

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left behind"
        );
        assert!(remove_durable(&path).unwrap());
        assert!(!remove_durable(&path).unwrap());
    }

    #[test]
    fn stale_temp_files_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!(".x.json{TEMP_MARKER}1-2")), b"partial").unwrap();
        fs::write(dir.path().join(format!(".other.json{TEMP_MARKER}1-2")), b"partial").unwrap();
        fs::write(dir.path().join("x.json"), b"whole").unwrap();
        let removed = remove_stale_temp_files(dir.path(), |t| t == "x.json").unwrap();
        assert_eq!(removed.len(), 1);
        assert!(dir.path().join("x.json").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
