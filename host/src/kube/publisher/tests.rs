use super::*;
use k8s_openapi::api::resource::v1::Device;

fn device(name: &str) -> Device {
    Device {
        name: name.into(),
        ..Default::default()
    }
}

fn stored(name: &str, generation: i64, count: i64, devices: &[&str]) -> ResourceSlice {
    ResourceSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: ResourceSliceSpec {
            driver: "d".into(),
            node_name: Some("n".into()),
            pool: k8s_openapi::api::resource::v1::ResourcePool {
                name: "p".into(),
                generation,
                resource_slice_count: count,
            },
            devices: Some(devices.iter().map(|d| device(d)).collect()),
            ..Default::default()
        },
    }
}

fn desired(slices: &[&[&str]]) -> DesiredPool {
    DesiredPool {
        name: "p".into(),
        slices: slices
            .iter()
            .map(|s| DesiredSlice::Devices(s.iter().map(|d| device(d)).collect()))
            .collect(),
    }
}

#[test]
fn names_carry_the_index() {
    assert_eq!(
        name_prefix(2, 3, "gpu.example.com", "node-a"),
        "00002-gpu.example.com-node-a-"
    );
    assert_eq!(name_prefix(0x1f, 0x100000 + 1, "d", "n"), "00001f-d-n-");
    assert_eq!(parse_index("00002-gpu.example.com-node-a-x7k2p"), Some(2));
    assert_eq!(parse_index("node-a-gpu.example.com-x7k2p"), None);
}

#[test]
fn unchanged_pool_needs_no_write_and_keeps_its_generation() {
    let p = plan(
        &desired(&[&["a"], &["b"]]),
        vec![stored("00000-d-n-x", 3, 2, &["a"]), stored("00001-d-n-y", 3, 2, &["b"])],
    );
    assert_eq!(p.generation, 3);
    assert!(!p.rewrite_all && p.obsolete.is_empty());
    assert!(p.matched.iter().all(Option::is_some));
}

#[test]
fn one_changed_slice_keeps_the_generation_two_bump_it() {
    let existing = || vec![stored("00000-d-n-x", 3, 2, &["a"]), stored("00001-d-n-y", 3, 2, &["b"])];
    let p = plan(&desired(&[&["a"], &["b", "c"]]), existing());
    assert_eq!((p.generation, p.rewrite_all), (3, false));
    let p = plan(&desired(&[&["a", "z"], &["b", "c"]]), existing());
    assert_eq!((p.generation, p.rewrite_all), (4, true));
}

#[test]
fn stale_duplicate_and_out_of_range_slices_are_obsolete() {
    let p = plan(
        &desired(&[&["a"]]),
        vec![
            stored("00000-d-n-x", 3, 1, &["a"]),
            stored("00000-d-n-w", 3, 1, &["a"]), // duplicate index
            stored("00001-d-n-y", 3, 2, &["b"]), // out of range
            stored("00000-d-n-z", 2, 1, &["a"]), // older generation
            stored("weird-name", 3, 1, &["a"]),  // no index
        ],
    );
    assert_eq!(p.obsolete.len(), 4);
    assert_eq!(p.generation, 3);
    assert!(p.matched[0].is_some());
}

#[test]
fn a_new_pool_starts_at_generation_one() {
    let p = plan(&desired(&[&["a"]]), vec![]);
    assert_eq!((p.generation, p.rewrite_all), (1, true));
}
