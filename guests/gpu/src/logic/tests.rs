use super::*;
use dra_driver_sdk::nvml::PciInfo;
use dra_driver_sdk::{AllocatedClaim, ConfigSource, ErrorKind, HealthStatus, Instance};

fn node(n: u32) -> Node {
    Node {
        driver_version: "580.159.04".into(),
        cuda_driver_version: (13, 0),
        gpus: (0..n)
            .map(|i| GpuInfo {
                index: i,
                uuid: format!("GPU-{i:08x}-0000-0000-0000-000000000000"),
                product_name: "NVIDIA H100 80GB HBM3".into(),
                brand: "Nvidia".into(),
                architecture: "Hopper".into(),
                cuda_compute_capability: (9, 0),
                memory_total_bytes: 85_520_809_984,
                pci: PciInfo {
                    bus_id: format!("00000000:{:02X}:00.0", 0x19 + i),
                    device_id: 0,
                    subsystem_id: 0,
                },
                minor_number: i,
                mig_enabled: false,
                numa_node: None,
            })
            .collect(),
        files: vec![DriverFile {
            kind: DriverFileKind::Library,
            host_path: "/run/nvidia/driver/usr/lib64/libcuda.so.580.159.04".into(),
            container_path: "/usr/lib64/libcuda.so.580.159.04".into(),
        }],
        mig: BTreeMap::new(),
    }
}

fn driver(config: &str, gpus: u32) -> GpuDriver {
    let config: Config = serde_json::from_str(config).unwrap();
    GpuDriver::new(config, node(gpus), "node-a", Arc::new(FakeMig::default())).unwrap()
}

/// An H100 80GB's profiles (the simulated NVML's default table).
fn h100() -> Vec<MigProfile> {
    let p = |id, name: &str, slice_count, gib: u64, multiprocessors, size, starts: &[u32]| MigProfile {
        id,
        name: name.into(),
        slice_count,
        memory_bytes: gib << 30,
        multiprocessors,
        placements: starts.iter().map(|&start| MigPlacement { start, size }).collect(),
    };
    vec![
        p(19, "1g.10gb", 1, 10, 16, 1, &[0, 1, 2, 3, 4, 5, 6]),
        p(15, "1g.20gb", 1, 20, 26, 2, &[0, 2, 4, 6]),
        p(14, "2g.20gb", 2, 20, 32, 2, &[0, 2, 4]),
        p(9, "3g.40gb", 3, 40, 60, 4, &[0, 4]),
        p(5, "4g.40gb", 4, 40, 64, 4, &[0]),
        p(0, "7g.80gb", 7, 80, 132, 8, &[0]),
    ]
}

/// NVML's MIG functions over a list of instances; `busy` GPUs refuse creation.
#[derive(Debug, Default)]
struct FakeMig {
    devices: std::sync::Mutex<Vec<MigDevice>>,
    busy: BTreeSet<u32>,
    creates: std::sync::atomic::AtomicU32,
}

fn nvml_err(reason: nvml::Reason) -> nvml::Error {
    nvml::Error {
        call: "fake".into(),
        reason,
    }
}

impl MigOps for FakeMig {
    fn devices(&self, gpu: u32) -> std::result::Result<Vec<MigDevice>, nvml::Error> {
        Ok(self
            .devices
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.gpu == gpu)
            .cloned()
            .collect())
    }

    fn create(
        &self,
        gpu: u32,
        profile_id: u32,
        placement: MigPlacement,
    ) -> std::result::Result<MigDevice, nvml::Error> {
        let mut devices = self.devices.lock().unwrap();
        let overlaps = devices.iter().any(|d| {
            d.gpu == gpu
                && d.placement.start < placement.start + placement.size
                && placement.start < d.placement.start + d.placement.size
        });
        if self.busy.contains(&gpu) || overlaps {
            return Err(nvml_err(nvml::Reason::InUse));
        }
        let n = self.creates.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let d = MigDevice {
            gpu,
            gpu_instance_id: n,
            compute_instance_id: 0,
            profile_id,
            placement,
            uuid: format!("MIG-{n}"),
            device_nodes: vec![format!("/dev/nvidia-caps/nvidia-cap{}", 3 + n * 9)],
        };
        devices.push(d.clone());
        Ok(d)
    }

    fn destroy(&self, gpu: u32, gpu_instance_id: u32) -> std::result::Result<(), nvml::Error> {
        let mut devices = self.devices.lock().unwrap();
        let at = devices
            .iter()
            .position(|d| d.gpu == gpu && d.gpu_instance_id == gpu_instance_id)
            .ok_or_else(|| nvml_err(nvml::Reason::NotFound))?;
        devices.remove(at);
        Ok(())
    }
}

/// `n` GPUs, those in `mig` with MIG mode on; GPU 0 on NUMA node 1.
fn mig_driver(n: u32, mig: &[u32], fake: Arc<FakeMig>) -> GpuDriver {
    let mut node = node(n);
    for g in &mut node.gpus {
        g.mig_enabled = mig.contains(&g.index);
    }
    node.gpus[0].numa_node = Some(1);
    node.mig = mig.iter().map(|&i| (i, h100())).collect();
    GpuDriver::new(Config::default(), node, "node-a", fake).unwrap()
}

/// Whether devices fit their pool's counters together, as the scheduler counts.
fn fit(pool: &Pool, names: &[&str]) -> bool {
    let mut left: BTreeMap<(String, String), u64> = BTreeMap::new();
    for set in &pool.shared_counters {
        for c in &set.counters {
            left.insert((set.name.clone(), c.name.clone()), c.value.parse().unwrap());
        }
    }
    for name in names {
        let d = pool
            .devices
            .iter()
            .find(|d| d.name == *name)
            .unwrap_or_else(|| panic!("{name}"));
        for use_ in &d.consumes_counters {
            for c in &use_.counters {
                let key = (use_.counter_set.clone(), c.name.clone());
                let have = left.get_mut(&key).unwrap_or_else(|| panic!("{key:?}"));
                let want: u64 = c.value.parse().unwrap();
                if *have < want {
                    return false;
                }
                *have -= want;
            }
        }
    }
    true
}

fn prepare(d: &GpuDriver, claim: AllocatedClaim) -> Result<PreparedClaim> {
    d.prepare(claim.resolve()?)
}

fn claim() -> AllocatedClaim {
    AllocatedClaim::new("default", "c", "uid").device("gpu", "node-a", "gpu-0")
}

fn has_env(p: &PreparedDevice, name: &str, value: &str) -> bool {
    p.edits.env.iter().any(|e| e.name == name && e.value == value)
}

#[test]
fn inventory_attributes_and_shared_capacity() {
    let d = driver(r#"{"sharing": {}}"#, 2);
    let pools = d.inventory().unwrap();
    assert_eq!(pools[0].name, "node-a");
    let devices = &pools[0].devices;
    assert_eq!(devices.len(), 2);
    let attr = |name: &str| {
        devices[1]
            .attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.clone())
    };
    assert_eq!(attr("driverVersion"), Some(AttributeValue::version("580.159.4")));
    assert_eq!(attr("cudaComputeCapability"), Some(AttributeValue::version("9.0.0")));
    assert_eq!(attr("pciBusID"), Some(AttributeValue::Text("00000000:1A:00.0".into())));
    assert_eq!(attr("index"), Some(AttributeValue::Integer(1)));
    let memory = &devices[0].capacity[0];
    assert_eq!(memory.value, "81559Mi");
    let policy = memory.request_policy.as_ref().unwrap();
    assert_eq!(policy.default.as_deref(), Some("5Gi"));
    assert_eq!(policy.valid_range.as_ref().unwrap().step.as_deref(), Some("5Gi"));
    // min + whole steps, as the API server demands: 15 steps of 5Gi fit 81559Mi.
    assert_eq!(policy.valid_range.as_ref().unwrap().max.as_deref(), Some("75Gi"));
    assert!(devices[0].allow_multiple_allocations);
    let whole = driver("{}", 1).inventory().unwrap();
    assert!(!whole[0].devices[0].allow_multiple_allocations);
    assert!(whole[0].devices[0].capacity[0].request_policy.is_none());
}

#[test]
fn whole_gpu_in_mounts_mode() {
    let d = driver("{}", 2);
    let p = prepare(
        &d,
        AllocatedClaim::new("default", "c", "uid").device("gpu", "node-a", "gpu-1"),
    )
    .unwrap();
    let dev = &p.devices[0];
    assert_eq!(dev.edits.device_nodes[0].path, "/dev/nvidia1");
    assert!(dev.edits.device_nodes.iter().any(|n| n.path == "/dev/nvidia-uvm"));
    assert!(
        dev.edits
            .mounts
            .iter()
            .any(|m| m.container_path == "/usr/lib64/libcuda.so.1")
    );
    assert!(has_env(dev, "NVIDIA_VISIBLE_DEVICES", "void"));
    d.unprepare(&claim().ref_, &p.state).unwrap();
}

#[test]
fn shares_get_their_memory_limit_and_base_spec_references() {
    let d = driver(
        r#"{"sharing": {}, "cdi": {"mode": "base-spec", "kind": "nvidia.com/gpu"}}"#,
        1,
    );
    let p = prepare(
        &d,
        AllocatedClaim::new("default", "c", "uid")
            .share("gpu", "node-a", "gpu-0", "s1", &[("memory", "10Gi")])
            .share("gpu", "node-a", "gpu-0", "s2", &[("memory", "5Gi")]),
    )
    .unwrap();
    let uuid = &d.node.gpus[0].uuid;
    assert_eq!(p.devices[0].cdi_device_ids, [format!("nvidia.com/gpu={uuid}")]);
    assert_eq!(p.devices[1].share_id.as_deref(), Some("s2"));
    assert!(has_env(
        &p.devices[0],
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
        &format!("{uuid}=10240M")
    ));
    assert!(has_env(
        &p.devices[1],
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
        &format!("{uuid}=5120M")
    ));
    assert!(p.devices[0].edits.mounts.is_empty() && p.devices[0].edits.device_nodes.is_empty());
}

#[test]
fn opaque_config_errors_name_the_field() {
    let d = driver("{}", 1);
    let bad = |params: &str| {
        prepare(&d, claim().config(ConfigSource::ResourceClaim, &[], params))
            .unwrap_err()
            .message
    };
    assert!(bad(r#"{"memoryLimt": "5Gi"}"#).contains("memoryLimt"));
    assert!(bad(r#"{"sharing": {"strategy": "Sometimes"}}"#).contains("Sometimes"));
    assert!(bad(r#"{"memoryLimit": "500Gi"}"#).contains("memoryLimit"));
    assert!(bad(r#"{"memoryLimit": "lots"}"#).contains("memoryLimit"));
    let ok = prepare(
        &d,
        claim().config(
            ConfigSource::ResourceClaim,
            &["gpu"],
            r#"{"sharing":{"strategy":"MPS"},"memoryLimit":"8Gi"}"#,
        ),
    )
    .unwrap();
    assert!(has_env(&ok.devices[0], "DRA_GPU_0_SHARING_STRATEGY", "MPS"));
    for (config, field) in [
        (r#"{"sharng": {}}"#, "sharng"),
        (r#"{"sharing": {"memoryStep": "0"}}"#, "sharing.memoryStep"),
        (r#"{"sharing": {"defaultMemory": "lots"}}"#, "sharing.defaultMemory"),
        (
            r#"{"sharing": {"defaultMemory": "7Gi", "memoryStep": "5Gi"}}"#,
            "sharing.defaultMemory",
        ),
        (r#"{"cdi": {"mode": "base-spec", "kind": "gpu"}}"#, "cdi.kind"),
    ] {
        // Through the SDK as the host calls it: config errors come
        // before NVML is asked anything (natively NVML is not there).
        let e = Instance::<GpuDriver>::start("node-a", config).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidConfig, "{config}: {e}");
        assert!(e.message.contains(field), "{config}: {e}");
    }
    let e = Instance::<GpuDriver>::start("node-a", "{}").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("NVML not available"), "{e}");
}

#[test]
fn mig_gpus_publish_counters_and_a_device_per_profile_and_placement() {
    let d = mig_driver(2, &[0], Arc::new(FakeMig::default()));
    let pools = d.inventory().unwrap();
    assert_eq!(pools.len(), 1);
    let pool = &pools[0];
    assert_eq!(pool.shared_counters.len(), 1, "one set, for the MIG GPU");
    let set = &pool.shared_counters[0];
    assert_eq!(set.name, "gpu-0");
    let counters: Vec<(&str, &str)> = set
        .counters
        .iter()
        .map(|c| (c.name.as_str(), c.value.as_str()))
        .collect();
    assert_eq!(counters.len(), 9);
    assert_eq!(counters[0], ("memory-slice-0", "1"));
    assert_eq!(counters[7], ("memory-slice-7", "1"));
    assert_eq!(counters[8], ("compute-slices", "7"));
    // The full GPU, 7 + 4 + 3 + 2 + 1 + 1 partitions, and GPU 1 without MIG.
    assert_eq!(pool.devices.len(), 1 + 18 + 1);
    let dev = |name: &str| pool.devices.iter().find(|d| d.name == name).unwrap();
    let attr = |d: &Device, name: &str| d.attributes.iter().find(|a| a.name == name).map(|a| a.value.clone());
    let full = dev("gpu-0");
    assert_eq!(
        full.consumes_counters[0].counters.len(),
        9,
        "the full GPU takes everything"
    );
    assert!(!full.allow_multiple_allocations);
    let part = dev("gpu-0-mig-1g10gb-3");
    assert_eq!(attr(part, "profile"), Some(AttributeValue::Text("1g.10gb".into())));
    assert_eq!(
        attr(part, "parentUUID"),
        Some(AttributeValue::Text(d.node.gpus[0].uuid.clone()))
    );
    assert_eq!(attr(part, "type"), Some(AttributeValue::Text("mig".into())));
    assert_eq!(attr(part, NUMA_NODE), Some(AttributeValue::Integer(1)));
    assert_eq!(attr(full, NUMA_NODE), Some(AttributeValue::Integer(1)));
    assert_eq!(attr(dev("gpu-1"), NUMA_NODE), None, "NUMA node unknown");
    assert!(dev("gpu-1").consumes_counters.is_empty());
    let used: Vec<(&str, &str)> = part.consumes_counters[0]
        .counters
        .iter()
        .map(|c| (c.name.as_str(), c.value.as_str()))
        .collect();
    assert_eq!(used, [("memory-slice-3", "1"), ("compute-slices", "1")]);
    assert_eq!(dev("gpu-0-mig-3g40gb-4").capacity[0].value, "40Gi");
    // Every device of a GPU declares its /dev/nvidiaN.
    for d in [full, part, dev("gpu-1")] {
        assert_eq!(d.node_resources.len(), 1, "{}", d.name);
    }
    assert_eq!(
        part.node_resources,
        [dra_driver_sdk::NodeResource::DeviceNode("/dev/nvidia0".into())]
    );
}

#[test]
fn counters_admit_exactly_what_fits_on_the_gpu() {
    let d = mig_driver(1, &[0], Arc::new(FakeMig::default()));
    let pool = &d.inventory().unwrap()[0];
    let all_1g: Vec<String> = (0..7).map(|i| format!("gpu-0-mig-1g10gb-{i}")).collect();
    let all_1g: Vec<&str> = all_1g.iter().map(String::as_str).collect();
    assert!(fit(pool, &all_1g), "seven 1g.10gb");
    assert!(fit(pool, &["gpu-0-mig-3g40gb-0", "gpu-0-mig-3g40gb-4"]));
    assert!(fit(pool, &["gpu-0-mig-4g40gb-0", "gpu-0-mig-3g40gb-4"]));
    assert!(fit(
        pool,
        &["gpu-0-mig-4g40gb-0", "gpu-0-mig-2g20gb-4", "gpu-0-mig-1g20gb-6"]
    ));
    assert!(fit(pool, &["gpu-0"]));
    assert!(
        !fit(pool, &["gpu-0", "gpu-0-mig-1g10gb-6"]),
        "the full GPU and a partition"
    );
    assert!(
        !fit(pool, &["gpu-0-mig-3g40gb-0", "gpu-0-mig-1g10gb-3"]),
        "overlapping placements"
    );
    assert!(!fit(pool, &["gpu-0-mig-4g40gb-0", "gpu-0-mig-2g20gb-2"]));
    assert!(!fit(pool, &["gpu-0-mig-7g80gb-0", "gpu-0-mig-1g20gb-6"]));
}

#[test]
fn more_than_eight_mig_gpus_spill_into_another_pool() {
    let mig: Vec<u32> = (0..10).collect();
    let d = mig_driver(10, &mig, Arc::new(FakeMig::default()));
    let pools = d.inventory().unwrap();
    assert_eq!(pools.len(), 2);
    assert_eq!(pools[0].shared_counters.len(), 8);
    assert_eq!(
        (pools[1].name.as_str(), pools[1].shared_counters.len()),
        ("node-a-mig-1", 2)
    );
    assert!(pools[1].devices.iter().any(|d| d.name == "gpu-9-mig-7g80gb-0"));
    let health = d.on_xid(&d.node.gpus[9].uuid, 79);
    assert_eq!(health.len(), 19, "the GPU and its partitions");
    assert!(health.iter().all(|h| h.pool == "node-a-mig-1"));
}

fn mig_claim(uid: &str, devices: &[&str]) -> AllocatedClaim {
    devices.iter().fold(AllocatedClaim::new("default", "c", uid), |c, d| {
        c.device("gpu", "node-a", d)
    })
}

#[test]
fn preparing_a_partition_makes_its_mig_device_once() {
    let fake = Arc::new(FakeMig::default());
    let d = mig_driver(2, &[1], Arc::clone(&fake));
    let claim = mig_claim("uid-1", &["gpu-1-mig-2g20gb-2"]);
    let p = prepare(&d, claim.clone()).unwrap();
    let made = fake.devices(1).unwrap();
    assert_eq!(made.len(), 1);
    assert_eq!((made[0].profile_id, made[0].placement.start), (14, 2));
    let dev = &p.devices[0];
    assert!(has_env(dev, "DRA_GPU_1_MIG_2_UUID", &made[0].uuid));
    assert!(has_env(dev, "NVIDIA_VISIBLE_DEVICES", "void"));
    let nodes: Vec<&str> = dev.edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(nodes[0], "/dev/nvidia1", "the parent's node");
    assert_eq!(
        nodes.last(),
        Some(&made[0].device_nodes[0].as_str()),
        "its capabilities"
    );

    // A retried prepare finds the instance and makes no other.
    let again = prepare(&d, claim.clone()).unwrap();
    assert_eq!(fake.creates.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(has_env(&again.devices[0], "DRA_GPU_1_MIG_2_UUID", &made[0].uuid));

    d.unprepare(&claim.ref_, &p.state).unwrap();
    assert!(fake.devices(1).unwrap().is_empty(), "destroyed at unprepare");
    d.unprepare(&claim.ref_, &again.state).unwrap();
    // A stale unprepare leaves an instance made since for another claim.
    let other = prepare(&d, mig_claim("uid-2", &["gpu-1-mig-2g20gb-2"])).unwrap();
    d.unprepare(&claim.ref_, &p.state).unwrap();
    assert_eq!(fake.devices(1).unwrap().len(), 1, "the other claim's instance stays");
    drop(other);
}

#[test]
fn a_busy_gpu_fails_prepare_naming_the_device_and_undoes_the_rest() {
    let fake = Arc::new(FakeMig {
        busy: [1].into(),
        ..FakeMig::default()
    });
    let d = mig_driver(2, &[0, 1], Arc::clone(&fake));
    let e = prepare(&d, mig_claim("uid-1", &["gpu-0-mig-3g40gb-0", "gpu-1-mig-1g10gb-0"])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Busy, "{e}");
    assert!(e.message.contains("\"gpu-1-mig-1g10gb-0\""), "{e}");
    assert!(e.message.contains("busy"), "{e}");
    assert!(fake.devices(0).unwrap().is_empty(), "GPU 0's instance destroyed again");
    // Overlap with an instance the claim did not make.
    fake.create(0, 19, MigPlacement { start: 1, size: 1 }).unwrap();
    let e = prepare(&d, mig_claim("uid-2", &["gpu-0-mig-2g20gb-0"])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Busy, "{e}");
    let base = GpuDriver::new(
        serde_json::from_str(r#"{"cdi": {"mode": "base-spec", "kind": "nvidia.com/gpu"}}"#).unwrap(),
        d.node.clone(),
        "node-a",
        fake,
    )
    .unwrap();
    let e = prepare(&base, mig_claim("uid-3", &["gpu-0-mig-1g10gb-6"])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
}

#[test]
fn xids_map_to_health() {
    let d = driver(r#"{"ignoredXids": [63]}"#, 2);
    let uuid = d.node.gpus[1].uuid.clone();
    assert_eq!(
        d.on_xid(&uuid, 79),
        vec![DeviceHealth::unhealthy(
            "node-a",
            "gpu-1",
            "Xid 79: GPU has fallen off the bus"
        )]
    );
    assert!(d.on_xid(&uuid, 13).is_empty());
    assert!(d.on_xid(&uuid, 63).is_empty(), "configured ignore list");
    assert!(d.on_xid("GPU-unknown", 79).is_empty());
    assert_eq!(d.on_xid("", 48).len(), 2);
    let ecc = d
        .on_event(Event::Gpu(dra_driver_sdk::GpuEvent {
            uuid: uuid.clone(),
            kind: GpuEventKind::DoubleBitEccError,
            data: 0,
        }))
        .unwrap();
    assert_eq!(ecc[0].status, HealthStatus::Unhealthy);
}

/// With MIG mode on, CUDA sees a GPU only through MIG devices: the whole
/// GPU is prepared as the instance spanning it (7g.80gb on an H100).
#[test]
fn the_whole_of_a_mig_gpu_is_prepared_as_the_instance_spanning_it() {
    let fake = Arc::new(FakeMig::default());
    let d = mig_driver(2, &[1], Arc::clone(&fake));
    let claim = mig_claim("uid-1", &["gpu-1"]);
    let p = prepare(&d, claim.clone()).unwrap();
    let made = fake.devices(1).unwrap();
    assert_eq!(made.len(), 1);
    assert_eq!(
        (made[0].profile_id, made[0].placement.start, made[0].placement.size),
        (0, 0, 8),
        "7g.80gb over all 8 memory slices"
    );
    assert!(has_env(&p.devices[0], "DRA_GPU_1_MIG_0_UUID", &made[0].uuid));
    d.unprepare(&claim.ref_, &p.state).unwrap();
    assert!(fake.devices(1).unwrap().is_empty(), "destroyed at unprepare");

    // A GPU without MIG mode is prepared as before: no MIG device.
    let plain = prepare(&d, mig_claim("uid-2", &["gpu-0"])).unwrap();
    assert!(has_env(
        &plain.devices[0],
        "DRA_GPU_0_UUID",
        "GPU-00000000-0000-0000-0000-000000000000"
    ));
    assert!(fake.devices(0).unwrap().is_empty());
}
