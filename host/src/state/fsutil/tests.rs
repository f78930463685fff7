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
