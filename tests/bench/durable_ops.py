#!/usr/bin/env python3
"""What one prepare + unprepare pair costs a disk, per way of making it durable.

Not a benchmark of the host: a measurement of the file system under the
checkpoint, to weigh a change to the checkpoint's layout before making it
(docs/benchmarks.md, "What one record file per claim costs"). One thread,
1 KiB records, CPU time (user + system, this process) and wall time per pair:

- record files: what the host did until the checkpoint recycled its files
  (fsutil::write_atomic and remove_durable, still used for CDI specs): write
  a temporary file, fsync, rename over `<uid>.json`, fsync the directory;
  then unlink and fsync the directory.
- recycled files: what the checkpoint does now (fsutil::Recycler): the
  record, padded with spaces to 4 KiB, overwrites a spare file left by an
  earlier removal and is fdatasync'd, then renamed over `<uid>.json`, fsync
  the directory; the removal renames the record to a new spare name and
  fsyncs the directory.
- journal: what an append-only journal would do: a 1 KiB entry appended to a
  preallocated file and fdatasync'd, then a 64-byte removal entry, fdatasync'd.

Run: python3 tests/bench/durable_ops.py [DIR] [PAIRS]   (DIR on the disk to
measure; default: a new directory under /var/tmp; PAIRS default 2000).
"""

import os
import resource
import sys
import tempfile
import time

RECORD = b"x" * 1024
REMOVAL = b"r" * 64


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_new_file(path, data):
    """A new temporary file, written and fsync'd, renamed over `path`."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def record_files(directory, pairs):
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        for i in range(pairs):
            path = os.path.join(directory, f"claim-{i % 4}.json")
            write_new_file(path, RECORD)
            os.fsync(dir_fd)
            os.unlink(path)
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def recycled_files(directory, pairs):
    dir_fd = os.open(directory, os.O_RDONLY)
    padded = RECORD + b" " * (4096 - len(RECORD))
    spares, made = [], 0
    try:
        for i in range(pairs):
            path = os.path.join(directory, f"claim-{i % 4}.json")
            if spares:
                spare = spares.pop()
                fd = os.open(spare, os.O_WRONLY)
                try:
                    os.pwrite(fd, padded, 0)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                os.rename(spare, path)
            else:
                write_new_file(path, padded)
            os.fsync(dir_fd)
            spare = os.path.join(directory, f".dra-spare-{made}")
            made += 1
            os.rename(path, spare)
            spares.append(spare)
            os.fsync(dir_fd)
    finally:
        for spare in spares:
            os.unlink(spare)
        os.close(dir_fd)


def journal(directory, pairs):
    path = os.path.join(directory, "claims.journal")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # Preallocated and fsync'd once, so that an fdatasync after an append
        # writes the data block and no metadata.
        os.posix_fallocate(fd, 0, pairs * (len(RECORD) + len(REMOVAL)) + 4096)
        os.fsync(fd)
        offset = 0
        for _ in range(pairs):
            os.pwrite(fd, RECORD, offset)
            offset += len(RECORD)
            os.fdatasync(fd)
            os.pwrite(fd, REMOVAL, offset)
            offset += len(REMOVAL)
            os.fdatasync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with tempfile.TemporaryDirectory(prefix="durable-ops-", dir=base) as directory:
        print(f"{pairs} pairs per row, one thread, in {directory}")
        # Twice each, alternating, so that both see the same disk.
        for name, run in [
            ("record files", record_files),
            ("recycled files", recycled_files),
            ("journal", journal),
        ] * 2:
            cpu, wall = cpu_seconds(), time.monotonic()
            run(directory, pairs)
            cpu, wall = cpu_seconds() - cpu, time.monotonic() - wall
            print(f"  {name:14s}  CPU {cpu / pairs * 1e6:5.0f} µs per pair   wall {wall / pairs * 1e6:5.0f} µs per pair")


if __name__ == "__main__":
    main()
