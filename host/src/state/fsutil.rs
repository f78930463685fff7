//! Durable file operations: every state file the host writes goes through
//! here, so "write-to-temp + fsync + rename + fsync the directory" is
//! implemented once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
