use super::*;

/// The GPU operator's layout: libnvidia-ml only under its driver root.
#[test]
fn nvml_is_loaded_from_the_driver_root_when_it_is_there() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(nvml_library(root.path()), None, "nothing there: the library path");
    let lib = root.path().join("usr/lib64");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("libnvidia-ml.so.580.159.04"), b"").unwrap();
    std::os::unix::fs::symlink("libnvidia-ml.so.580.159.04", lib.join("libnvidia-ml.so.1")).unwrap();
    assert_eq!(nvml_library(root.path()), Some(lib.join("libnvidia-ml.so.1")));
    // Not a 32-bit copy in lib/.
    let lib32 = root.path().join("lib");
    std::fs::create_dir_all(&lib32).unwrap();
    std::fs::write(lib32.join("libnvidia-ml.so.1"), b"").unwrap();
    assert_eq!(nvml_library(root.path()), Some(lib.join("libnvidia-ml.so.1")));
}

#[test]
fn numa_node_from_sysfs() {
    assert_eq!(sysfs_pci_address("00000000:3B:00.0").as_deref(), Some("0000:3b:00.0"));
    assert_eq!(
        sysfs_pci_address("00010000:C1:00.0").as_deref(),
        Some("10000:c1:00.0"),
        "a VMD domain"
    );
    assert_eq!(sysfs_pci_address("0000:3b:00.0").as_deref(), Some("0000:3b:00.0"));
    assert_eq!(sysfs_pci_address("../../etc"), None);
    assert_eq!(sysfs_pci_address("00000000:3B/../x"), None);
    let sys = tempfile::tempdir().unwrap();
    for (dev, node) in [("0000:3b:00.0", "1\n"), ("0000:19:00.0", "-1\n")] {
        std::fs::create_dir_all(sys.path().join(dev)).unwrap();
        std::fs::write(sys.path().join(dev).join("numa_node"), node).unwrap();
    }
    assert_eq!(numa_node(sys.path(), "00000000:3B:00.0"), Some(1));
    assert_eq!(numa_node(sys.path(), "00000000:19:00.0"), None, "-1: no NUMA node");
    assert_eq!(numa_node(sys.path(), "00000000:AA:00.0"), None, "no such device");
}

#[test]
fn mig_device_nodes_from_capability_files() {
    assert_eq!(
        cap_minor("DeviceFileMinor: 12\nDeviceFileMode: 292\nDeviceFileModify: 1\n"),
        Some(12)
    );
    assert_eq!(cap_minor("garbage"), None);
    let caps = tempfile::tempdir().unwrap();
    let gi = caps.path().join("gpu1/mig/gi2");
    std::fs::create_dir_all(gi.join("ci0")).unwrap();
    std::fs::write(gi.join("access"), "DeviceFileMinor: 156\nDeviceFileMode: 292\n").unwrap();
    std::fs::write(gi.join("ci0/access"), "DeviceFileMinor: 157\n").unwrap();
    assert_eq!(
        mig_cap_nodes(caps.path(), 1, 2, 0),
        ["/dev/nvidia-caps/nvidia-cap156", "/dev/nvidia-caps/nvidia-cap157"]
    );
    assert!(mig_cap_nodes(caps.path(), 1, 3, 0).is_empty());
}

#[test]
fn finds_versioned_libraries_binaries_and_firmware_inside_the_root() {
    let root = tempfile::tempdir().unwrap();
    let lib = root.path().join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("libcuda.so.580.159.04"), b"").unwrap();
    std::fs::write(lib.join("libcuda.so.570.1.1"), b"").unwrap(); // another version: skipped
    std::os::unix::fs::symlink("libcuda.so.580.159.04", lib.join("libcuda.so.1")).unwrap();
    // A second directory that links to the first offers nothing new.
    std::os::unix::fs::symlink("x86_64-linux-gnu", root.path().join("usr/lib/aarch64-linux-gnu")).unwrap();
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    std::fs::write(root.path().join("usr/bin/nvidia-smi"), b"").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("usr/bin/nvidia-debugdump")).unwrap();
    let fw = root.path().join("lib/firmware/nvidia/580.159.04");
    std::fs::create_dir_all(&fw).unwrap();
    std::fs::write(fw.join("gsp_ga10x.bin"), b"").unwrap();

    let files = find_driver_files(root.path(), "580.159.04");
    let paths: Vec<_> = files.iter().map(|f| f.container_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04",
            "/usr/bin/nvidia-smi",
            "/lib/firmware/nvidia/580.159.04/gsp_ga10x.bin"
        ],
        "a symlink escaping the root is not offered"
    );
    assert!(files[0].host_path.starts_with(&*root.path().to_string_lossy()));
}
