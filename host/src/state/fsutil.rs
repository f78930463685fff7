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

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
        let mut v = bytes.to_vec();
        v.resize(len, b' ');
        v
    }

    #[test]
    fn a_removed_file_is_the_next_write_and_files_are_padded_to_blocks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let files = Recycler::open(dir.path(), 0o600).unwrap();
        files.write("a.json", b"{\"a\":1}").unwrap();
        let a = dir.path().join("a.json");
        assert_eq!(fs::read(&a).unwrap(), padded(b"{\"a\":1}", PAD_TO));
        assert_eq!(fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
        let inode = fs::metadata(&a).unwrap().ino();

        assert!(files.remove("a.json").unwrap());
        let left = names(dir.path());
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(
            left[0].starts_with(SPARE_MARKER) && !left[0].ends_with(".json"),
            "{left:?}"
        );

        files.write("b.json", b"{\"b\":2}").unwrap();
        let b = dir.path().join("b.json");
        assert_eq!(fs::metadata(&b).unwrap().ino(), inode, "the spare was not reused");
        assert_eq!(fs::read(&b).unwrap(), padded(b"{\"b\":2}", PAD_TO));
        assert_eq!(names(dir.path()), ["b.json"]);
        assert!(!files.remove("a.json").unwrap());
    }

    #[test]
    fn a_shorter_file_in_a_longer_spare_keeps_none_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let files = Recycler::open(dir.path(), 0o600).unwrap();
        files.write("long.json", &[b'x'; 5000]).unwrap();
        assert_eq!(
            fs::metadata(dir.path().join("long.json")).unwrap().len(),
            2 * PAD_TO as u64
        );
        assert!(files.remove("long.json").unwrap());
        files.write("short.json", b"[]").unwrap();
        assert_eq!(fs::read(dir.path().join("short.json")).unwrap(), padded(b"[]", PAD_TO));
        // And a longer one into a shorter spare.
        assert!(files.remove("short.json").unwrap());
        files.write("long.json", &[b'y'; 5000]).unwrap();
        assert_eq!(
            fs::read(dir.path().join("long.json")).unwrap(),
            padded(&[b'y'; 5000], 2 * PAD_TO)
        );
        files.write("empty.json", b"").unwrap();
        assert_eq!(fs::read(dir.path().join("empty.json")).unwrap(), padded(b"", PAD_TO));
    }

    #[test]
    fn a_spare_gone_from_the_directory_means_a_new_file() {
        // What a rolling update's other host process does to a spare both adopted.
        let dir = tempfile::tempdir().unwrap();
        let files = Recycler::open(dir.path(), 0o600).unwrap();
        files.write("a.json", b"1").unwrap();
        assert!(files.remove("a.json").unwrap());
        for name in names(dir.path()) {
            fs::remove_file(dir.path().join(name)).unwrap();
        }
        files.write("b.json", b"2").unwrap();
        assert_eq!(fs::read(dir.path().join("b.json")).unwrap(), padded(b"2", PAD_TO));
        assert_eq!(names(dir.path()), ["b.json"]);
    }

    #[test]
    fn spares_of_an_earlier_run_are_adopted_up_to_the_limit() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        for i in 0..MAX_SPARES + 8 {
            fs::write(dir.path().join(format!("{SPARE_MARKER}1-0-{i}")), [b' '; PAD_TO]).unwrap();
        }
        fs::write(dir.path().join("kept.json"), b"{}").unwrap();
        // Not a regular file: not a spare, left alone.
        fs::create_dir(dir.path().join(format!("{SPARE_MARKER}dir"))).unwrap();
        let files = Recycler::open(dir.path(), 0o600).unwrap();
        fs::remove_dir(dir.path().join(format!("{SPARE_MARKER}dir"))).unwrap();
        let left = names(dir.path());
        assert_eq!(left.len(), MAX_SPARES + 1, "{left:?}");
        let spares: Vec<u64> = left
            .iter()
            .filter(|n| n.starts_with(SPARE_MARKER))
            .map(|n| fs::metadata(dir.path().join(n)).unwrap().ino())
            .collect();
        files.write("new.json", b"{}").unwrap();
        assert!(spares.contains(&fs::metadata(dir.path().join("new.json")).unwrap().ino()));
        assert_eq!(names(dir.path()).len(), MAX_SPARES + 1);
        // A full list of spares: a removal unlinks.
        for i in 0..3 {
            files.write(&format!("{i}.json"), b"{}").unwrap();
        }
        for i in 0..3 {
            assert!(files.remove(&format!("{i}.json")).unwrap());
        }
        assert!(files.remove("new.json").unwrap());
        assert_eq!(names(dir.path()).len(), MAX_SPARES + 1, "{:?}", names(dir.path()));
    }

    #[test]
    fn concurrent_recycled_writes_each_keep_their_own_bytes() {
        // Two writers handed one spare would write into one inode: one of
        // them would read the other's bytes under its own name.
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(Recycler::open(dir.path(), 0o600).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        for t in 0..16 {
            let (files, dir, tx) = (Arc::clone(&files), dir.path().to_owned(), tx.clone());
            std::thread::spawn(move || {
                for i in 0..39 {
                    let name = format!("{t}.json");
                    let bytes = format!("{t}/{i}").repeat(1 + (t + i) % 1200);
                    files.write(&name, bytes.as_bytes()).unwrap();
                    let read = fs::read(dir.join(&name)).unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&read).trim_end(),
                        bytes,
                        "{name} has another file's bytes"
                    );
                    if i % 3 != 2 {
                        assert!(files.remove(&name).unwrap());
                    }
                }
                tx.send(t).unwrap();
            });
        }
        drop(tx);
        for _ in 0..16 {
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .expect("a writer hung or failed");
        }
        let (records, spares): (Vec<String>, Vec<String>) =
            names(dir.path()).into_iter().partition(|n| n.ends_with(".json"));
        assert_eq!(records.len(), 16);
        assert!(spares.len() <= MAX_SPARES, "{} spares", spares.len());
    }

    #[test]
    fn concurrent_removals_keep_no_more_spares_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(Recycler::open(dir.path(), 0o600).unwrap());
        let n = 3 * MAX_SPARES;
        for i in 0..n {
            files.write(&format!("{i}.json"), b"{}").unwrap();
        }
        let start = Arc::new(std::sync::Barrier::new(n));
        let removals: Vec<_> = (0..n)
            .map(|i| {
                let (files, start) = (Arc::clone(&files), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    files.remove(&format!("{i}.json")).unwrap()
                })
            })
            .collect();
        for r in removals {
            assert!(r.join().unwrap());
        }
        let left = names(dir.path());
        assert!(left.iter().all(|n| n.starts_with(SPARE_MARKER)), "{left:?}");
        assert_eq!(left.len(), MAX_SPARES, "{left:?}");
    }
}
