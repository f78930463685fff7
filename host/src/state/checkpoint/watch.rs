//! Whether anyone changed the checkpoint directory since this process last
//! looked: an inotify watch on it, read without blocking.
//!
//! Why: in rolling-update mode every kubelet call re-reads the checkpoint
//! under the node-wide lock, because the other pod may have committed or
//! removed records since. Reading every record file costs a few syscalls
//! and a 4 KiB read per prepared claim on every call, under the lock. The
//! kernel already knows whether the directory changed: every create,
//! rename, unlink and write in it queues an event, synchronously, before
//! the system call returns, whichever process (and release) made it.
//!
//! How it stays exact: the queue is read at two points, both under the lock.
//! At the start of a call ([`DirWatch::changed`] in `Checkpoint::reload`)
//! any event, or a full queue, means "read the directory". At the end of a
//! call ([`DirWatch::changed`] in `Checkpoint::settle`) the events are
//! dropped: while this process holds the lock every writer of the directory
//! is this process (the other pod's writes all happen under the same lock),
//! so what is queued then is its own. Dropping events is never done at any
//! other time.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What changes the directory's contents, or the directory itself.
const EVENTS: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// An inotify watch on one directory.
#[derive(Debug)]
pub(super) struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    /// Watch `dir` from now on.
    pub(super) fn new(dir: &Path) -> io::Result<Self> {
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: plain system call; the descriptor is owned right away.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), EVENTS) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Whether anything happened in the directory since the last call (or
    /// since the watch began), emptying the queue. An overflowed queue counts
    /// as a change.
    pub(super) fn changed(&self) -> io::Result<bool> {
        let mut changed = false;
        // Room for many events at once (each is 16 bytes plus a name).
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer of the length given.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                changed = true;
                continue;
            }
            if n == 0 {
                return Ok(changed);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(changed),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }
}
