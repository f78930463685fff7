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

/// Marker at the start of a spare file's name (see [`Recycler`]): hidden,
/// without the [`TEMP_MARKER`] and never ending in `.json`, so that no host
/// version loads it, quarantines it or removes it as a crash's leftover.
const SPARE_MARKER: &str = ".dra-spare-";

/// How many spare files a [`Recycler`] keeps; past this a removal unlinks.
/// A spare is one file of a few 4 KiB blocks, so this is at most a few
/// hundred KiB of disk per directory.
const MAX_SPARES: usize = 32;

/// Files are padded to a whole number of these, so that a spare usually has
/// exactly the length of the next file written into it.
const PAD_TO: usize = 4096;

/// Durable replace and remove, like [`write_atomic`] and [`remove_durable`],
/// for a directory of many small files that come and go (the checkpoint's
/// one record per claim): a removed file is kept as a hidden *spare* and the
/// next write goes into it instead of into a new file.
///
/// Why: on ext4 a new file's fsync writes its data, its new inode and the
/// directory entry of its temporary name (three waits on the disk before the
/// flush), and its removal frees the inode and blocks again. Overwriting a
/// spare whose blocks are already allocated, at the same length, is a data
/// write: `fdatasync` writes the blocks and flushes. What the rename and the
/// directory fsync cost is unchanged. `tests/bench/durable_ops.py`, one
/// thread, two runs each: 0.63–0.73× the CPU and 0.65–0.74× the wall time
/// per write + removal pair on the test machine's ext4 (no journal), 0.63–0.73×
/// and 0.50–0.67× on an ext4 with a journal; through the host, 0.79–0.83× the
/// CPU per claim pair (docs/benchmarks.md, "Recycled record files").
///
/// The same guarantees as [`write_atomic`]: the new content is durable under
/// the spare's name before the rename gives it the target's name, so a crash
/// leaves the old file or the whole new one, never a partial one. A removal
/// is a rename to a new spare name plus the directory's fsync, as durable as
/// an unlink. A spare still holds its last file's bytes; it is hidden, and
/// readers of the directory skip names starting with a dot.
///
/// **Every file is padded with spaces** to a whole number of 4 KiB blocks,
/// so use it only for formats that ignore trailing whitespace (JSON does).
///
/// Spares left by an earlier run are adopted at [`Recycler::open`]. During a
/// rolling update two host processes may hold the same spare in their lists;
/// their writes never overlap in time (every claim operation runs under the
/// node-wide serialization lock), and a spare the other process used is gone
/// from the directory, so opening it fails and this process moves on to its
/// next spare or a new file. Within one process a spare is handed to one
/// writer at a time.
#[derive(Debug)]
pub struct Recycler {
    dir: PathBuf,
    mode: u32,
    spares: Mutex<Spares>,
    /// Start of this process's spare names: unique across processes and
    /// restarts (the PID alone is 1 in most containers).
    prefix: String,
}

#[derive(Debug, Default)]
struct Spares {
    files: Vec<PathBuf>,
    /// Removals between their check of the limit and their rename.
    incoming: usize,
}

impl Recycler {
    /// Recycle files in `dir` (which must exist), creating them with `mode`.
    /// Adopts the spares an earlier run left there, up to the limit, and
    /// removes the rest.
    pub fn open(dir: &Path, mode: u32) -> io::Result<Self> {
        let mut spares = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            // Only regular files are ours; anything else is left alone.
            if !entry.file_name().to_string_lossy().starts_with(SPARE_MARKER) || !entry.file_type()?.is_file() {
                continue;
            }
            if spares.len() < MAX_SPARES {
                spares.push(entry.path());
            } else {
                // Not durable, and need not be: a spare is never read.
                match fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Self {
            dir: dir.to_owned(),
            mode,
            spares: Mutex::new(Spares {
                files: spares,
                incoming: 0,
            }),
            prefix: format!("{SPARE_MARKER}{}-{started:x}-", std::process::id()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replace `name` in the directory with `bytes` (padded) atomically and
    /// durably.
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.dir.join(name);
        let mut padded = Vec::with_capacity(bytes.len().div_ceil(PAD_TO).max(1) * PAD_TO);
        padded.extend_from_slice(bytes);
        padded.resize(padded.capacity(), b' ');
        while let Some(spare) = self.take() {
            match fill(&spare, &padded) {
                Ok(()) => {}
                // The other host process of a rolling update used it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    // Half-written at most, and hidden: drop it.
                    let _ = fs::remove_file(&spare);
                    return Err(e);
                }
            }
            return match fs::rename(&spare, &path) {
                Ok(()) => sync_dir(&self.dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => Err(e),
            };
        }
        write_atomic(&path, &padded, self.mode)
    }

    /// Remove `name` from the directory durably, keeping its file as a
    /// spare. Returns `false` when it did not exist.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        let path = self.dir.join(name);
        {
            let mut spares = self.lock();
            if spares.files.len() + spares.incoming >= MAX_SPARES {
                drop(spares);
                return remove_durable(&path);
            }
            spares.incoming += 1;
        }
        let spare = self.dir.join(format!(
            "{}{}",
            self.prefix,
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let renamed = fs::rename(&path, &spare);
        {
            let mut spares = self.lock();
            spares.incoming -= 1;
            if renamed.is_ok() {
                // A spare whatever the fsync says: the name is gone or going.
                spares.files.push(spare);
            }
        }
        match renamed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        sync_dir(&self.dir)?;
        Ok(true)
    }

    fn take(&self) -> Option<PathBuf> {
        self.lock().files.pop()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Overwrite the spare at `path` with `padded` and make its data durable.
/// At the spare's own length (the common case) no metadata changes, so
/// `fdatasync` writes the data blocks and flushes; a length change is
/// metadata `fdatasync` writes too.
fn fill(path: &Path, padded: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new().write(true).open(path)?;
    if file.metadata()?.len() > padded.len() as u64 {
        file.set_len(padded.len() as u64)?;
    }
    file.write_all_at(padded, 0)?;
    file.sync_data()
}

fn parent(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        _ => Ok(Path::new(".")),
    }
}

#[cfg(test)]
mod tests;
