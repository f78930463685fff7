//! The policy's unit tests (one per rule and per attack of issue 13) and its
//! property tests: generated `prepared-claim` values never crash the check,
//! and every answer it accepts is inside the policy by an oracle written
//! independently of the checking code. Device nodes are real: `/dev/null`
//! (1:3), `/dev/zero` (1:5) and `/dev/full` (1:7) exist on every Linux node.

use super::*;
use model::*;

fn edits() -> ContainerEdits {
    ContainerEdits {
        env: vec![],
        device_nodes: vec![],
        mounts: vec![],
        hooks: vec![],
        net_devices: vec![],
    }
}

fn allocated(device: &str) -> AllocatedDevice {
    AllocatedDevice {
        request: "r".into(),
        pool: "p".into(),
        device: device.into(),
        share_id: None,
        consumed_capacity: vec![],
        admin_access: false,
    }
}

fn claim() -> Claim {
    Claim {
        reference: crate::claim::ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: "u".into(),
        },
        devices: vec![allocated("d")],
        configs: vec![],
    }
}

fn device(name: &str, e: ContainerEdits) -> model::PreparedDevice {
    model::PreparedDevice {
        pool: "p".into(),
        device: name.into(),
        share_id: None,
        edits: e,
        cdi_device_ids: vec![],
        status: None,
        metadata: None,
    }
}

fn prepared(e: ContainerEdits) -> PreparedClaim {
    PreparedClaim {
        devices: vec![device("d", e)],
        state: vec![],
    }
}

/// An inventory of devices `d`, `e`, … with a `uuid` attribute each.
fn inventory(uuids: &[(&str, &str)]) -> Vec<Pool> {
    vec![Pool {
        name: "p".into(),
        devices: uuids
            .iter()
            .map(|(name, uuid)| Device {
                name: (*name).into(),
                attributes: vec![Attribute {
                    name: "uuid".into(),
                    value: AttributeValue::Text((*uuid).into()),
                }],
                capacity: vec![],
                allow_multiple_allocations: false,
                taints: vec![],
                ..Default::default()
            })
            .collect(),
        shared_counters: vec![],
    }]
}

fn node(path: &str) -> DeviceNode {
    DeviceNode {
        path: path.into(),
        host_path: None,
        node_type: None,
        major: None,
        minor: None,
        file_mode: None,
        permissions: Some("rw".into()),
        uid: None,
        gid: None,
    }
}

fn mount(host: &str, mount_type: Option<&str>, options: &[&str]) -> Mount {
    Mount {
        host_path: host.into(),
        container_path: "/x".into(),
        mount_type: mount_type.map(Into::into),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    }
}

/// A policy from TOML, as `[drivers.policy]` is read.
fn policy(toml_text: &str) -> Policy {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{toml_text}: {e}"))
}

/// The devices' part of the check (which link belongs to which claim is
/// `check_claim_links`'s, tested on its own below).
fn check(p: &Policy, out: &mut PreparedClaim) -> Result<(), PolicyError> {
    p.check_devices(&claim(), &inventory(&[("d", "UUID-D"), ("e", "UUID-E")]), out)
}

/// The whole check, as the driver makes it: ownership from the same
/// inventory, no host links.
fn check_with(p: &Policy, claim: &Claim, inventory: &[Pool], out: &mut PreparedClaim) -> Result<(), PolicyError> {
    p.check(claim, inventory, &p.ownership(inventory), &HashMap::new(), out)
}

/// The refusal's rule and text.
fn refused(p: &Policy, e: ContainerEdits) -> (Rule, String) {
    let err = check(p, &mut prepared(e)).unwrap_err();
    (err.rule(), err.to_string())
}

#[test]
fn defaults_allow_environment_variables_only() {
    let p = Policy::default();
    assert_eq!(p, policy(""));
    let mut e = edits();
    e.env.push(EnvVar {
        name: "A".into(),
        value: "b".into(),
    });
    check(&p, &mut prepared(e)).unwrap();
    let mut e = edits();
    e.device_nodes.push(node("/dev/null"));
    assert_eq!(refused(&p, e).0, Rule::DeviceNodes);
    let mut e = edits();
    e.mounts.push(mount("/opt", None, &["ro", "bind"]));
    assert_eq!(refused(&p, e).0, Rule::MountHostPaths);
    assert_eq!(p.max_cdi_spec_bytes, 256 << 10);
    assert_eq!(p.device_root, std::path::Path::new("/"));
}

#[test]
fn refuses_unallocated_missing_and_duplicate_devices() {
    let p = Policy::default();
    let mut out = prepared(edits());
    out.devices[0].device = "other\nforged".into();
    let e = check(&p, &mut out).unwrap_err();
    assert!(matches!(e, PolicyError::NotAllocated { .. }));
    assert!(e.to_string().contains("other\\nforged"), "guest names are escaped: {e}");
    let mut out = prepared(edits());
    out.devices.push(out.devices[0].clone());
    assert!(matches!(check(&p, &mut out), Err(PolicyError::Duplicate { .. })));
    let mut out = prepared(edits());
    out.devices.clear();
    assert!(matches!(check(&p, &mut out), Err(PolicyError::Missing { .. })));
}

#[test]
fn device_nodes_get_the_type_and_numbers_the_node_has() {
    let p = policy("device_nodes = [\"/dev/null\", \"/dev/z*\"]");
    let mut out = prepared(ContainerEdits {
        device_nodes: vec![node("/dev/null"), node("/dev/zero")],
        ..edits()
    });
    check(&p, &mut out).unwrap();
    let n = &out.devices[0].edits.device_nodes;
    assert_eq!(
        (n[0].node_type.as_deref(), n[0].major, n[0].minor),
        (Some("c"), Some(1), Some(3))
    );
    assert_eq!(
        (n[1].node_type.as_deref(), n[1].major, n[1].minor),
        (Some("c"), Some(1), Some(5))
    );

    // What a guest declares must be what the node has: `u` is a character
    // device too; a block device under an allowed name is not.
    let declared = |t: &str, major: i64, minor: i64| ContainerEdits {
        device_nodes: vec![DeviceNode {
            node_type: Some(t.into()),
            major: Some(major),
            minor: Some(minor),
            ..node("/dev/null")
        }],
        ..edits()
    };
    check(&p, &mut prepared(declared("u", 1, 3))).unwrap();
    let (rule, text) = refused(&p, declared("b", 8, 0));
    assert_eq!(rule, Rule::DeviceNodes);
    assert!(text.contains("declared b 8:0") && text.contains("c 1:3"), "{text}");
    assert!(text.contains("device p/d: deviceNodes[0] \"/dev/null\""), "{text}");
    assert_eq!(refused(&p, declared("c", 1, 5)).0, Rule::DeviceNodes);
    assert_eq!(refused(&p, declared("x", 1, 3)).0, Rule::Format);
    assert_eq!(refused(&p, declared("c", -1, -1)).0, Rule::Format);
}

#[test]
fn device_node_rules_name_exactly_what_may_be_handed_out() {
    // `/dev/z*` covers /dev/zero but not /dev/full, and a host path naming
    // another node is checked by that name.
    let p = policy("device_nodes = [\"/dev/z*\"]");
    let (rule, text) = refused(
        &p,
        ContainerEdits {
            device_nodes: vec![node("/dev/full")],
            ..edits()
        },
    );
    assert_eq!(rule, Rule::DeviceNodes);
    assert!(text.contains("not in device_nodes [\"/dev/z*\"]"), "{text}");
    let aliased = DeviceNode {
        host_path: Some("/dev/full".into()),
        ..node("/dev/zero")
    };
    assert_eq!(
        refused(
            &p,
            ContainerEdits {
                device_nodes: vec![aliased],
                ..edits()
            }
        )
        .0,
        Rule::DeviceNodes
    );
    for bad in ["/dev/../dev/zero", "dev/zero", "/dev//zero"] {
        let e = ContainerEdits {
            device_nodes: vec![node(bad)],
            ..edits()
        };
        assert_eq!(refused(&p, e).0, Rule::Format, "{bad}");
    }
}

#[test]
fn a_missing_device_node_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let p = policy(&format!(
        "device_nodes = [\"/dev/nvidia[0-9]*\"]\ndevice_root = {:?}",
        root.path()
    ));
    let (rule, text) = refused(
        &p,
        ContainerEdits {
            device_nodes: vec![node("/dev/nvidia0")],
            ..edits()
        },
    );
    assert_eq!(rule, Rule::DeviceNodes);
    assert!(
        text.contains("does not exist") && text.contains(&root.path().display().to_string()),
        "{text}"
    );
}

#[test]
fn mounts_are_read_only_binds_of_allowed_paths_unless_the_operator_allows_more() {
    let p = policy("mount_host_paths = [\"/opt/driver/**\"]");
    let ok = |m: Mount| {
        let mut out = prepared(ContainerEdits {
            mounts: vec![m],
            ..edits()
        });
        check(&p, &mut out).map(|()| out.devices[0].edits.mounts[0].clone())
    };
    let m = ok(mount("/opt/driver/lib", None, &["ro", "nosuid", "nodev", "bind"])).unwrap();
    assert_eq!(m.options, ["ro", "nosuid", "nodev", "bind"]);
    // A bind without the bind option gets it: the runtime would otherwise
    // mount the path as a filesystem source.
    let m = ok(mount("/opt/driver/lib", Some("bind"), &["ro"])).unwrap();
    assert_eq!(m.options, ["ro", "bind"]);
    ok(mount("/opt/driver", None, &["ro", "rbind", "rslave"])).unwrap();

    let rule = |m: Mount| ok(m).unwrap_err().rule();
    for bad in [
        "/etc",
        "/opt/driver/../../etc",
        "/opt/driverx",
        "relative",
        "/opt//driver",
    ] {
        assert!(ok(mount(bad, None, &["ro", "bind"])).is_err(), "{bad}");
    }
    assert_eq!(rule(mount("/etc", None, &["ro", "bind"])), Rule::MountHostPaths);
    assert_eq!(
        rule(mount("/opt/driver", Some("overlay"), &["lowerdir=/"])),
        Rule::MountTypes
    );
    for t in ["devtmpfs", "proc", "sysfs", "tmpfs", "ext4"] {
        assert_eq!(
            rule(mount("/opt/driver/dev", Some(t), &["ro"])),
            Rule::MountTypes,
            "{t}"
        );
    }
    assert_eq!(
        rule(mount("/opt/driver/lib", None, &["rbind", "rw"])),
        Rule::MountRwHostPaths
    );
    assert_eq!(rule(mount("/opt/driver/lib", None, &["bind"])), Rule::MountRwHostPaths);
    assert_eq!(
        rule(mount("/opt/driver/lib", None, &["ro", "rw", "bind"])),
        Rule::MountRwHostPaths
    );
    for o in ["suid", "dev", "exec", "shared", "rshared", "lowerdir=/", "remount"] {
        assert_eq!(
            rule(mount("/opt/driver/lib", None, &["ro", "bind", o])),
            Rule::MountOptions,
            "{o}"
        );
    }

    // What the operator allows, per key.
    let wider = policy(
        "mount_host_paths = [\"/opt/driver/**\"]\n\
         mount_rw_host_paths = [\"/opt/driver/scratch/**\"]\n\
         mount_types = [\"tmpfs\"]\n\
         mount_options = [\"size=*\", \"rshared\"]",
    );
    let mut out = prepared(ContainerEdits {
        mounts: vec![
            mount("/opt/driver/scratch/a", None, &["rbind", "rw"]),
            mount("tmpfs", Some("tmpfs"), &["nosuid", "size=64m"]),
            mount("/opt/driver/lib", None, &["ro", "bind", "rshared"]),
        ],
        ..edits()
    });
    check(&wider, &mut out).unwrap();
    let mut out = prepared(ContainerEdits {
        mounts: vec![mount("tmpfs", Some("tmpfs"), &["size=/"])],
        ..edits()
    });
    assert_eq!(
        check(&wider, &mut out).unwrap_err().rule(),
        Rule::MountOptions,
        "`*` never spans a `/`"
    );
}

#[test]
fn hooks_and_network_devices_need_the_operator() {
    let p = policy("hook_paths = [\"/opt/hooks/ldcache\"]");
    let hook = |path: &str| Hook {
        stage: HookStage::CreateContainer,
        path: path.into(),
        args: vec!["ldcache".into()],
        env: vec![],
        timeout_seconds: None,
    };
    let with = |h| ContainerEdits {
        hooks: vec![h],
        ..edits()
    };
    check(&p, &mut prepared(with(hook("/opt/hooks/ldcache")))).unwrap();
    assert_eq!(refused(&p, with(hook("/bin/sh"))).0, Rule::HookPaths);
    let nic = |host: &str| ContainerEdits {
        net_devices: vec![NetDevice {
            host_interface_name: host.into(),
            name: "net1".into(),
        }],
        ..edits()
    };
    assert_eq!(refused(&p, nic("dwh0123456789ab")).0, Rule::AllowNetDevices);
    // Allowed: the links the host creates, never a NIC of the node unless named.
    let net = policy("allow_net_devices = true");
    check(&net, &mut prepared(nic("dwh0123456789ab"))).unwrap();
    let (rule, text) = refused(&net, nic("eth0"));
    assert_eq!(rule, Rule::NetHostInterfaces);
    assert!(text.contains("\"eth0\"") && text.contains("[\"dwh*\"]"), "{text}");
    let eth1 = policy("allow_net_devices = true\nnet_host_interfaces = [\"eth1\"]");
    check(&eth1, &mut prepared(nic("eth1"))).unwrap();
    assert_eq!(refused(&eth1, nic("eth0")).0, Rule::NetHostInterfaces);
}

#[test]
fn the_attach_hook_is_accepted_only_as_the_host_prepared_it() {
    let p = Policy {
        attach_hook: Some(AttachHook {
            path: "/opt/dwh/bin/dra-wasm-host".into(),
            plugin_dir: "/var/lib/kubelet/plugins/net.dra.dev".into(),
        }),
        ..Policy::default()
    };
    let with = |stage: HookStage, args: &[&str]| {
        let mut e = edits();
        e.hooks.push(Hook {
            stage,
            path: "/opt/dwh/bin/dra-wasm-host".into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec![],
            timeout_seconds: Some(10),
        });
        prepared(e)
    };
    let good = [
        "dra-wasm-host",
        "net-attach",
        "--dir",
        "/var/lib/kubelet/plugins/net.dra.dev",
        "--link",
        "dwh0123456789ab",
    ];
    check(&p, &mut with(HookStage::CreateRuntime, &good)).unwrap();
    assert!(check(&p, &mut with(HookStage::Poststop, &good)).is_err());
    let install = ["dra-wasm-host", "install-hook", "--to", "/usr/bin/x", "--link", "dwh0"];
    let e = check(&p, &mut with(HookStage::CreateRuntime, &install)).unwrap_err();
    assert!(e.to_string().contains("not as the host prepared it"), "{e}");
    let mut other_dir = good;
    other_dir[3] = "/etc";
    assert!(check(&p, &mut with(HookStage::CreateRuntime, &other_dir)).is_err());
    let mut other_link = good;
    other_link[5] = "eth0";
    assert!(check(&p, &mut with(HookStage::CreateRuntime, &other_link)).is_err());
}

#[test]
fn references_to_operator_cdi_devices_name_the_allocated_device_only() {
    let p = policy("cdi_devices = [{ kind = \"nvidia.com/gpu\", name_attribute = \"uuid\" }]");
    let with = |id: &str| {
        let mut out = prepared(edits());
        out.devices[0].cdi_device_ids.push(id.into());
        out
    };
    check(&p, &mut with("nvidia.com/gpu=UUID-D")).unwrap();
    let refusal = |id: &str| check(&p, &mut with(id)).unwrap_err();
    for (bad, rule, needle) in [
        ("nvidia.com/gpu=all", Rule::CdiDevices, "allow_all"),
        ("nvidia.com/gpu=UUID-E", Rule::CdiDevices, "uuid is \"UUID-D\""),
        ("vendor.com/x=1", Rule::CdiDevices, "allowed kinds"),
        ("nvidia.com/gpu", Rule::Format, "vendor/class=name"),
        ("nvidia.com/gpu=", Rule::Format, "CDI device name"),
        ("nvidia.com/gpu=a/b", Rule::Format, "CDI device name"),
    ] {
        let e = refusal(bad);
        assert_eq!(e.rule(), rule, "{bad}: {e}");
        assert!(e.to_string().contains(needle), "{bad}: {e}");
    }
    let all = policy("cdi_devices = [{ kind = \"nvidia.com/gpu\", name_attribute = \"uuid\", allow_all = true }]");
    check(&all, &mut with("nvidia.com/gpu=all")).unwrap();
    // A uuid two devices publish names neither alone.
    let e = check_with(
        &p,
        &claim(),
        &inventory(&[("d", "UUID-D"), ("e", "UUID-D")]),
        &mut with("nvidia.com/gpu=UUID-D"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("published by 2 devices"), "{e}");
    // No such attribute in the inventory: nothing to check the name against.
    let e = check_with(&p, &claim(), &[], &mut with("nvidia.com/gpu=UUID-D")).unwrap_err();
    assert!(e.to_string().contains("no \"uuid\" attribute"), "{e}");
}

#[test]
fn the_spec_size_is_bounded_naming_the_largest_device() {
    let p = policy("max_cdi_spec_bytes = 4096");
    p.check_spec_size(4096, [("p", "a", 4000)]).unwrap();
    let e = p
        .check_spec_size(8 << 20, [("p", "a", 100), ("p", "b", 8 << 20)])
        .unwrap_err();
    assert_eq!(e.rule(), Rule::MaxCdiSpecBytes);
    assert!(e.to_string().starts_with("device p/b: containerEdits:"), "{e}");
    assert!(e.to_string().contains("8388608 bytes"), "{e}");
}

#[test]
fn bounds_state_and_status() {
    let p = Policy::default();
    let mut out = prepared(edits());
    out.state = vec![0; bounds::STATE_BYTES + 1];
    assert!(matches!(check(&p, &mut out), Err(PolicyError::StateTooLarge { .. })));
    let mut out = prepared(edits());
    out.devices[0].status = Some(DeviceStatus {
        conditions: vec![],
        data: None,
        network_data: Some(NetworkData {
            interface_name: "net1".into(),
            ips: vec!["10.0.0.5/24".into(), "not-an-ip".into()],
            hardware_address: String::new(),
        }),
    });
    assert_eq!(check(&p, &mut out).unwrap_err().rule(), Rule::Format);
    let mut e = edits();
    e.env = (0..=bounds::ENV_PER_DEVICE)
        .map(|i| EnvVar {
            name: format!("E{i}"),
            value: String::new(),
        })
        .collect();
    assert_eq!(refused(&p, e).0, Rule::Bounds);
}

#[test]
fn policy_config_errors_name_the_key_and_the_replacement() {
    let err = |t: &str| toml::from_str::<Policy>(t).unwrap_err().to_string();
    let e = err("mount_host_prefixes = [\"/run/nvidia/driver\"]");
    assert!(
        e.contains("mount_host_paths") && e.contains("/run/nvidia/driver/**"),
        "{e}"
    );
    assert!(err("device_node_prefixes = [\"/dev/\"]").contains("device_nodes"));
    assert!(err("cdi_kinds = [\"nvidia.com/gpu\"]").contains("cdi_devices"));
    assert!(err("device_nodes = [\"/dev/nvidia[0-9\"]").contains("unclosed"));
    assert!(err("device_nodes = [\"dev/x\"]").contains("not absolute"));
    assert!(err("device_root = \"dev\"").contains("absolute"));
    assert!(err("mount_types = [\"a,b\"]").contains("mount_types"));
    assert!(err("cdi_devices = [{ kind = \"gpu\", name_attribute = \"uuid\" }]").contains("vendor/class"));
    assert!(err("cdi_devices = [{ kind = \"nvidia.com/gpu\" }]").contains("name_attribute"));
    assert!(err("max_cdi_spec_bytes = 100").contains("max_cdi_spec_bytes"));
    assert!(err("net_host_interfaces = [\"a/b\"]").contains("net_host_interfaces"));
    assert!(err("device_nodez = []").contains("device_nodez"));
}

/// The TOML blocks of docs/operations.md's policy section, in order.
fn documented_policies() -> Vec<String> {
    let doc = include_str!("../../../docs/operations.md");
    let section = &doc[doc.find("## The policy model").expect("the policy section")..];
    let section = &section[..section.find("## Guest text").expect("the next section")];
    section
        .split("```toml\n")
        .skip(1)
        .map(|b| b[..b.find("```").expect("a closed block")].to_owned())
        .collect()
}

/// The `[drivers.policy]` table of a documented block.
fn documented_policy(block: &str) -> Policy {
    let table: toml::Table = toml::from_str(block).unwrap_or_else(|e| panic!("{block}: {e}"));
    let policy = table["drivers"]["policy"].clone();
    policy.try_into().unwrap_or_else(|e| panic!("{block}: {e}"))
}

#[test]
fn the_worked_examples_of_the_operations_guide_hold() {
    let blocks = documented_policies();
    assert_eq!(blocks.len(), 3, "GPU operator, driver on the node, macvlan");
    let operator = documented_policy(&blocks[0]);
    assert_eq!(operator.device_root, std::path::Path::new("/host"));
    assert!(paths::any_matches(
        &operator.mount_host_paths,
        "/run/nvidia/driver/usr/lib64/libcuda.so.580.159.04"
    ));
    assert!(!paths::any_matches(
        &operator.mount_host_paths,
        "/run/nvidia/driverx/etc"
    ));
    assert_eq!(operator.cdi_devices[0].name_attribute, "uuid");

    // Driver on the node: what the GPU guest mounts is allowed, nothing else.
    let on_node = documented_policy(&blocks[1]);
    for ok in [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.580.159.04",
        "/usr/bin/nvidia-smi",
        "/usr/bin/nvidia-cuda-mps-server",
        "/lib/firmware/nvidia/580.159.04/gsp_ga10x.bin",
    ] {
        assert!(paths::any_matches(&on_node.mount_host_paths, ok), "{ok}");
    }
    for no in [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/bin/bash",
        "/etc/shadow",
        "/lib/firmware/nvidia/580.159.04/sub/x.bin",
    ] {
        assert!(!paths::any_matches(&on_node.mount_host_paths, no), "{no}");
    }
    for (node, ok) in [
        ("/dev/nvidia0", true),
        ("/dev/nvidia15", true),
        ("/dev/nvidiactl", true),
        ("/dev/nvidia-uvm-tools", true),
        ("/dev/nvidia-modeset", false),
        ("/dev/sda", false),
    ] {
        assert_eq!(paths::any_matches(&on_node.device_nodes, node), ok, "{node}");
    }

    let macvlan = documented_policy(&blocks[2]);
    assert!(macvlan.allow_net_devices);
    assert_eq!(macvlan.net_host_interfaces, ["dwh*"]);
    assert!(macvlan.device_nodes.is_empty() && macvlan.mount_host_paths.is_empty());
}

/// Property tests: `PROPTEST_CASES` sets how many (256 by default; see
/// docs/operations.md for the long run).
mod properties {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    /// The policy the generated outputs are checked against.
    fn the_policy(allow_net: bool) -> Policy {
        policy(&format!(
            "device_nodes = [\"/dev/null\", \"/dev/z*\"]\n\
             mount_host_paths = [\"/opt/drv/**\"]\n\
             mount_rw_host_paths = [\"/opt/drv/rw/**\"]\n\
             mount_types = [\"tmpfs\"]\n\
             mount_options = [\"size=*\"]\n\
             hook_paths = [\"/bin/hook\"]\n\
             allow_net_devices = {allow_net}\n\
             cdi_devices = [{{ kind = \"nvidia.com/gpu\", name_attribute = \"uuid\" }}]\n\
             max_cdi_spec_bytes = 65536\n"
        ))
    }

    fn pick<T: Clone + std::fmt::Debug + 'static>(items: &[T]) -> impl Strategy<Value = T> + use<T> {
        proptest::sample::select(items.to_vec())
    }

    /// Strings a hostile guest might try, and some noise.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            pick(&["", "a", "A=B", "x\0y", "line\nbreak", "\u{1b}[31m"]).prop_map(str::to_owned),
            "[ -~]{0,12}",
            "\\PC{0,6}",
        ]
    }

    /// Host paths: mostly ones the policy allows, often hostile ones, some noise.
    fn host_path(allowed: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop_oneof![
            3 => pick(allowed).prop_map(str::to_owned),
            2 => pick(&[
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/zz-missing",
                "/dev/nvidia0",
                "/dev/sda",
                "/dev/../dev/null",
                "/dev//null",
                "dev/null",
                "/dev/null/",
                "/opt/drv",
                "/opt/drv/lib/libcuda.so.1",
                "/opt/drv/rw/scratch",
                "/opt/drvx",
                "/opt/drv/../../etc",
                "/etc/shadow",
                "/",
                "tmpfs",
            ])
            .prop_map(str::to_owned),
            1 => text(),
        ]
    }

    const NODES: &[&str] = &["/dev/null", "/dev/zero"];
    const MOUNTS: &[&str] = &["/opt/drv", "/opt/drv/lib/libcuda.so.1", "/opt/drv/rw/scratch"];

    /// Device nodes every Linux node has, outside the policy's rules.
    const OTHER_NODES: &[&str] = &["/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"];

    fn device_node() -> impl Strategy<Value = DeviceNode> {
        let path = || prop_oneof![2 => pick(OTHER_NODES).prop_map(str::to_owned), 3 => host_path(NODES)];
        (
            path(),
            prop_oneof![2 => Just(None), 1 => path().prop_map(Some)],
            prop_oneof![3 => Just(None), 1 => pick(&["c", "b", "u", "p", "x", ""]).prop_map(Some)],
            prop_oneof![3 => Just(None), 1 => pick(&[0i64, 1, 3, 5, 7, 8, -1, 195]).prop_map(Some)],
            prop_oneof![3 => Just(None), 1 => pick(&[0i64, 1, 3, 5, 7, 8, -1]).prop_map(Some)],
            prop_oneof![3 => Just(Some("rw")), 1 => proptest::option::of(pick(&["rwm", "", "x", "m"]))],
        )
            .prop_map(|(path, host_path, t, major, minor, permissions)| DeviceNode {
                path,
                host_path,
                node_type: t.map(str::to_owned),
                major,
                minor,
                file_mode: None,
                permissions: permissions.map(str::to_owned),
                uid: None,
                gid: None,
            })
    }

    fn mount_() -> impl Strategy<Value = Mount> {
        let option = prop_oneof![
            4 => pick(&["ro", "bind", "rbind", "nosuid", "nodev", "rslave", "size=1m"]),
            1 => pick(&["rw", "suid", "dev", "shared", "size=/", "lowerdir=/"]),
        ];
        (
            host_path(MOUNTS),
            prop_oneof![4 => Just("/x"), 1 => pick(&["/usr/lib/x", "x", "/a/../b"])],
            prop_oneof![
                3 => Just(None),
                1 => pick(&["bind", "tmpfs", "overlay", "devtmpfs", "proc"]).prop_map(Some),
            ],
            proptest::collection::vec(option, 0..5),
        )
            .prop_map(|(host_path, container, t, options)| Mount {
                host_path,
                container_path: container.to_owned(),
                mount_type: t.map(str::to_owned),
                options: options.into_iter().map(str::to_owned).collect(),
            })
    }

    fn hook() -> impl Strategy<Value = Hook> {
        (
            prop_oneof![3 => Just("/bin/hook"), 1 => pick(&["/bin/sh", "/bin/hook/", "bin/hook"])],
            proptest::collection::vec(text(), 0..3),
            proptest::option::of(pick(&[-1i64, 0, 5])),
        )
            .prop_map(|(path, args, timeout)| Hook {
                stage: HookStage::CreateContainer,
                path: path.to_owned(),
                args,
                env: vec![],
                timeout_seconds: timeout,
            })
    }

    fn net_device() -> impl Strategy<Value = NetDevice> {
        (
            pick(&["dwh0123456789ab", "dwh1", "eth0", "", "a/b"]),
            pick(&["net1", "net2", ""]),
        )
            .prop_map(|(h, n)| NetDevice {
                host_interface_name: h.into(),
                name: n.into(),
            })
    }

    /// Edits made of pieces the policy allows (a valid answer).
    fn allowed_edits(uuid: &'static str) -> impl Strategy<Value = (ContainerEdits, Vec<String>)> {
        let env = ("[A-Z_]{1,8}", "[ -~]{0,12}").prop_map(|(name, value)| EnvVar { name, value });
        let node = (pick(NODES), any::<bool>()).prop_map(|(path, typed)| DeviceNode {
            node_type: typed.then(|| "c".to_owned()),
            ..node(path)
        });
        let mount = prop_oneof![
            pick(&["/opt/drv", "/opt/drv/lib/libcuda.so.1"]).prop_map(|h| mount(h, None, &["ro", "nosuid", "bind"])),
            pick(&["/opt/drv/rw", "/opt/drv/rw/scratch"]).prop_map(|h| mount(h, None, &["rbind"])),
            Just(mount("tmpfs", Some("tmpfs"), &["nosuid", "size=1m"])),
        ];
        let hook = "[a-z]{0,5}".prop_map(|arg| Hook {
            stage: HookStage::CreateContainer,
            path: "/bin/hook".into(),
            args: vec![arg],
            env: vec![],
            timeout_seconds: Some(5),
        });
        (
            proptest::collection::vec(env, 0..3),
            proptest::collection::vec(node, 0..3),
            proptest::collection::vec(mount, 0..3),
            proptest::collection::vec(hook, 0..2),
            any::<bool>(),
        )
            .prop_map(move |(env, device_nodes, mounts, hooks, reference)| {
                let edits = ContainerEdits {
                    env,
                    device_nodes,
                    mounts,
                    hooks,
                    net_devices: vec![],
                };
                let ids = if reference {
                    vec![format!("nvidia.com/gpu={uuid}")]
                } else {
                    vec![]
                };
                (edits, ids)
            })
    }

    /// One piece of output that may well be outside the policy.
    #[derive(Clone, Debug)]
    enum Hostile {
        Env(EnvVar),
        Node(DeviceNode),
        Mount(Mount),
        Hook(Hook),
        Net(NetDevice),
        Reference(String),
        /// Prepared as another (pool, device, share).
        Identity(&'static str, &'static str, Option<&'static str>),
    }

    fn hostile() -> impl Strategy<Value = Hostile> {
        prop_oneof![
            1 => (text(), prop_oneof![4 => text(), 1 => Just("x".repeat(40_000))])
                .prop_map(|(name, value)| Hostile::Env(EnvVar { name, value })),
            3 => device_node().prop_map(Hostile::Node),
            3 => mount_().prop_map(Hostile::Mount),
            1 => hook().prop_map(Hostile::Hook),
            1 => net_device().prop_map(Hostile::Net),
            2 => prop_oneof![
                pick(&[
                    "nvidia.com/gpu=all",
                    "nvidia.com/gpu=UUID-D",
                    "nvidia.com/gpu=UUID-E",
                    "nvidia.com/gpu=UUID-F",
                    "x.com/y=1",
                    "nvidia.com/gpu",
                ])
                .prop_map(str::to_owned),
                text(),
            ]
            .prop_map(Hostile::Reference),
            2 => pick(&[("q", "d", None), ("", "e", None), ("p", "f", None), ("p", "d", Some("s1")), ("p", "e", None)])
                .prop_map(|(p, d, s)| Hostile::Identity(p, d, s)),
        ]
    }

    /// A prepared device for the allocated `name`: allowed edits, and often
    /// one hostile piece.
    fn prepared_device(name: &'static str, uuid: &'static str) -> impl Strategy<Value = model::PreparedDevice> {
        (
            allowed_edits(uuid),
            prop_oneof![2 => Just(None), 1 => hostile().prop_map(Some)],
        )
            .prop_map(move |((mut edits, cdi_device_ids), hostile)| {
                let (mut pool, mut device, mut share) = ("p", name, None);
                let mut ids = cdi_device_ids;
                match hostile {
                    None => {}
                    Some(Hostile::Env(v)) => edits.env.push(v),
                    Some(Hostile::Node(n)) => edits.device_nodes.push(n),
                    Some(Hostile::Mount(m)) => edits.mounts.push(m),
                    Some(Hostile::Hook(h)) => edits.hooks.push(h),
                    Some(Hostile::Net(n)) => edits.net_devices.push(n),
                    Some(Hostile::Reference(r)) => ids.push(r),
                    Some(Hostile::Identity(p, d, s)) => (pool, device, share) = (p, d, s),
                }
                model::PreparedDevice {
                    pool: pool.into(),
                    device: device.into(),
                    share_id: share.map(str::to_owned),
                    edits,
                    cdi_device_ids: ids,
                    status: None,
                    metadata: None,
                }
            })
    }

    /// The devices of an answer: `d` and `e` as allocated, sometimes one
    /// dropped, repeated, or in the other order.
    fn prepared_devices() -> impl Strategy<Value = Vec<model::PreparedDevice>> {
        (prepared_device("d", "UUID-D"), prepared_device("e", "UUID-E"), 0..10u8).prop_map(|(d, e, shape)| {
            let mut out = vec![d, e];
            match shape {
                0 => {
                    out.pop();
                }
                1 => out.push(out[0].clone()),
                2 => out.reverse(),
                _ => {}
            }
            out
        })
    }

    /// The claim allocates `d` and `e` of pool `p` (`f` is published but
    /// not allocated; `UUID-F` is shared by `f` and `g`).
    fn the_claim() -> Claim {
        Claim {
            devices: vec![allocated("d"), allocated("e")],
            ..claim()
        }
    }

    fn the_inventory() -> Vec<Pool> {
        inventory(&[("d", "UUID-D"), ("e", "UUID-E"), ("f", "UUID-F"), ("g", "UUID-F")])
    }

    /// What the node's device nodes are, as the test knows them.
    fn real_node(path: &str) -> Option<(&'static str, i64, i64)> {
        match path {
            "/dev/null" => Some(("c", 1, 3)),
            "/dev/zero" => Some(("c", 1, 5)),
            _ => None,
        }
    }

    /// Inside the policy, by rules restated without the checking code.
    fn inside(out: &PreparedClaim, allow_net: bool) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for d in &out.devices {
            if d.pool != "p" || !(d.device == "d" || d.device == "e") || d.share_id.is_some() {
                return Err(format!("unallocated device {}/{}", d.pool, d.device));
            }
            if !seen.insert(&d.device) {
                return Err("a device twice".into());
            }
            let e = &d.edits;
            for v in &e.env {
                if v.name.is_empty() || v.name.contains('=') || v.value.len() > bounds::ENV_VALUE_BYTES {
                    return Err(format!("env {:?}", v.name));
                }
            }
            for n in &e.device_nodes {
                let host = n.host_path.as_deref().unwrap_or(&n.path);
                // device_nodes = ["/dev/null", "/dev/z*"]; only /dev/zero exists under /dev/z*.
                let Some((t, major, minor)) = real_node(host) else {
                    return Err(format!("device node {host}"));
                };
                if n.node_type.as_deref() != Some(t) || n.major != Some(major) || n.minor != Some(minor) {
                    return Err(format!(
                        "device node {host} as {:?} {:?}:{:?}",
                        n.node_type, n.major, n.minor
                    ));
                }
                if !n.path.starts_with('/') || n.path.contains("/../") || n.path.contains("//") {
                    return Err(format!("container path {}", n.path));
                }
            }
            for m in &e.mounts {
                let has = |o: &str| m.options.iter().any(|x| x == o);
                let allowed_option = |o: &String| {
                    matches!(
                        o.as_str(),
                        "ro" | "rw" | "bind" | "rbind" | "nosuid" | "nodev" | "rslave"
                    ) || (o.starts_with("size=") && !o.contains('/'))
                };
                if !m.options.iter().all(allowed_option) {
                    return Err(format!("mount options {:?}", m.options));
                }
                match m.mount_type.as_deref() {
                    Some("tmpfs") => continue,
                    None | Some("bind") => {}
                    Some(t) => return Err(format!("mount type {t}")),
                }
                let under = |dir: &str| m.host_path == dir || m.host_path.starts_with(&format!("{dir}/"));
                let clean = !m.host_path.contains("/../") && !m.host_path.contains("//");
                if !clean || !under("/opt/drv") {
                    return Err(format!("mount of {}", m.host_path));
                }
                if !(has("bind") || has("rbind")) {
                    return Err("a mount that is not a bind".into());
                }
                if (!has("ro") || has("rw")) && !under("/opt/drv/rw") {
                    return Err(format!("read-write mount of {}", m.host_path));
                }
            }
            for h in &e.hooks {
                if h.path != "/bin/hook" {
                    return Err(format!("hook {}", h.path));
                }
            }
            if !e.net_devices.is_empty() && !allow_net {
                return Err("network devices".into());
            }
            for n in &e.net_devices {
                if !n.host_interface_name.starts_with("dwh") {
                    return Err(format!("network device {}", n.host_interface_name));
                }
            }
            for id in &d.cdi_device_ids {
                let own = if d.device == "d" { "UUID-D" } else { "UUID-E" };
                if *id != format!("nvidia.com/gpu={own}") {
                    return Err(format!("reference {id} from {}", d.device));
                }
            }
        }
        for want in ["d", "e"] {
            if !out.devices.iter().any(|d| d.device == want) {
                return Err(format!("{want} missing"));
            }
        }
        Ok(())
    }

    /// The generated outputs exercise both sides: a property that only ever
    /// met refusals would prove nothing about what is accepted.
    #[test]
    fn generated_outputs_are_both_accepted_and_refused() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = (prepared_devices(), any::<bool>());
        let (mut accepted, mut refused) = (0, std::collections::BTreeMap::<&str, usize>::new());
        for _ in 0..2000 {
            let (devices, allow_net) = strategy.new_tree(&mut runner).unwrap().current();
            let mut out = PreparedClaim { devices, state: vec![] };
            match check_with(&the_policy(allow_net), &the_claim(), &the_inventory(), &mut out) {
                Ok(()) => accepted += 1,
                Err(e) => *refused.entry(e.rule().as_str()).or_default() += 1,
            }
        }
        eprintln!("{accepted} of 2000 generated answers accepted; refused by rule: {refused:?}");
        assert!(
            accepted >= 200,
            "{accepted} of 2000 accepted; refused by rule: {refused:?}"
        );
        for rule in [
            "allocation",
            "device_nodes",
            "mount_host_paths",
            "mount_options",
            "cdi_devices",
            "format",
        ] {
            assert!(refused.get(rule).is_some_and(|n| *n >= 10), "{rule}: {refused:?}");
        }
    }

    proptest! {
        /// No generated output crashes the check, and none it accepts is
        /// outside the policy.
        #[test]
        fn accepted_outputs_are_inside_the_policy(devices in prepared_devices(), allow_net in any::<bool>()) {
            let p = the_policy(allow_net);
            let mut out = PreparedClaim { devices, state: vec![] };
            if check_with(&p, &the_claim(), &the_inventory(), &mut out).is_ok() {
                prop_assert_eq!(inside(&out, allow_net), Ok(()));
            }
        }

        /// Valid outputs built from the allowed pieces are accepted (the
        /// property above is not met by refusing everything).
        #[test]
        fn outputs_inside_the_policy_are_accepted(
            nodes in proptest::collection::vec(pick(&["/dev/null", "/dev/zero"]), 0..3),
            ro in proptest::collection::vec(pick(&["/opt/drv", "/opt/drv/lib/libcuda.so.1"]), 0..3),
            rw in proptest::collection::vec(pick(&["/opt/drv/rw", "/opt/drv/rw/scratch"]), 0..2),
            reference in any::<bool>(),
        ) {
            let edits = ContainerEdits {
                device_nodes: nodes.iter().map(|p| node(p)).collect(),
                mounts: ro
                    .iter()
                    .map(|h| mount(h, None, &["ro", "nosuid", "bind"]))
                    .chain(rw.iter().map(|h| mount(h, None, &["rbind"])))
                    .collect(),
                ..super::edits()
            };
            let mut d = device("d", edits.clone());
            if reference {
                d.cdi_device_ids.push("nvidia.com/gpu=UUID-D".into());
            }
            let mut out = PreparedClaim { devices: vec![d, device("e", edits)], state: vec![] };
            let p = the_policy(false);
            prop_assert_eq!(check_with(&p, &the_claim(), &the_inventory(), &mut out), Ok(()));
            prop_assert_eq!(inside(&out, false), Ok(()));
        }
    }
}

#[test]
fn a_host_created_link_goes_only_to_the_claim_it_was_created_for() {
    let p = Policy {
        allow_net_devices: true,
        attach_hook: Some(AttachHook {
            path: "/opt/dwh/bin/dra-wasm-host".into(),
            plugin_dir: "/var/lib/kubelet/plugins/net.dra.dev".into(),
        }),
        ..Policy::default()
    };
    // The claim "u" (see `claim()`) owns dwh-of-u; claim "v" owns dwh-of-v.
    let owner = |link: &str| match link {
        "dwhofu" => Some("u".to_owned()),
        "dwhofv" => Some("v".to_owned()),
        _ => None,
    };
    let nic = |host: &str| {
        prepared(ContainerEdits {
            net_devices: vec![NetDevice {
                host_interface_name: host.into(),
                name: "net1".into(),
            }],
            ..edits()
        })
    };
    let hooked = |link: &str| {
        let mut e = edits();
        e.hooks.push(Hook {
            stage: HookStage::CreateRuntime,
            path: "/opt/dwh/bin/dra-wasm-host".into(),
            args: [
                "dra-wasm-host",
                "net-attach",
                "--dir",
                "/var/lib/kubelet/plugins/net.dra.dev",
                "--link",
                link,
            ]
            .map(str::to_owned)
            .to_vec(),
            env: vec![],
            timeout_seconds: Some(10),
        });
        prepared(e)
    };
    for own in [nic("dwhofu"), hooked("dwhofu"), nic("eth1")] {
        p.check_claim_links("u", &own, owner).unwrap();
    }
    for (theirs, field) in [(nic("dwhofv"), "netDevices"), (hooked("dwhofv"), "hooks")] {
        let e = p.check_claim_links("u", &theirs, owner).unwrap_err();
        assert_eq!(e.rule(), Rule::Allocation);
        let text = e.to_string();
        assert!(
            text.contains(field) && text.contains("\"dwhofv\"") && text.contains("for claim v, not for this claim"),
            "{text}"
        );
    }
    let e = p.check_claim_links("u", &nic("dwhunknown"), owner).unwrap_err();
    assert!(e.to_string().contains("not a link the host created"), "{e}");
    // A driver without `net` owns no link: every `dwh…` name is refused.
    let e = p.check_claim_links("u", &hooked("dwhofu"), |_| None).unwrap_err();
    assert!(e.to_string().contains("not a link the host created"), "{e}");
}

mod ownership {
    //! dra:driver@0.2 inventories declare the node resources of each device;
    //! a claim gets only those of the devices allocated to it. Device nodes
    //! are real ones made with mknod(2) under a temporary device root
    //! (root only, like the e2e GPU tests).
    use super::*;

    /// `/dev/nvidia0` (195:0), `/dev/nvidia1` (195:1) and `/dev/other1`, a
    /// second path to 195:1.
    fn gpu_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("dev")).unwrap();
        for (name, minor) in [("nvidia0", 0), ("nvidia1", 1), ("other1", 1)] {
            let path = std::ffi::CString::new(root.path().join("dev").join(name).into_os_string().into_encoded_bytes())
                .unwrap();
            // SAFETY: mknod(2) with a valid NUL-terminated path.
            let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, minor)) };
            assert_eq!(rc, 0, "mknod {name} (needs root): {}", std::io::Error::last_os_error());
        }
        root
    }

    /// GPUs `d` (owns /dev/nvidia0) and `e` (owns /dev/nvidia1) and `d-half`,
    /// a partition of `d` sharing its node; `eth2` belongs to `e`.
    fn owned_inventory() -> Vec<Pool> {
        let mut pools = inventory(&[("d", "UUID-D"), ("e", "UUID-E"), ("d-half", "UUID-D")]);
        let owns = [
            vec![NodeResource::DeviceNode("/dev/nvidia0".into())],
            vec![
                NodeResource::DeviceNode("/dev/nvidia1".into()),
                NodeResource::HostInterface("eth2".into()),
            ],
            vec![NodeResource::DeviceNode("/dev/nvidia0".into())],
        ];
        for (d, owns) in pools[0].devices.iter_mut().zip(owns) {
            d.node_resources = owns;
        }
        pools
    }

    fn claim_of(device: &str) -> Claim {
        Claim {
            devices: vec![allocated(device)],
            ..claim()
        }
    }

    fn answer(device: &str, e: ContainerEdits) -> PreparedClaim {
        PreparedClaim {
            devices: vec![model::PreparedDevice {
                pool: "p".into(),
                device: device.into(),
                edits: e,
                ..Default::default()
            }],
            state: vec![],
        }
    }

    fn the_policy(root: &std::path::Path) -> Policy {
        policy(&format!(
            "device_nodes = [\"/dev/nvidia[0-9]*\", \"/dev/other*\"]\nallow_net_devices = true\n\
             net_host_interfaces = [\"eth*\"]\ndevice_root = {root:?}"
        ))
    }

    fn nodes(paths: &[&str]) -> ContainerEdits {
        ContainerEdits {
            device_nodes: paths.iter().map(|p| node(p)).collect(),
            ..edits()
        }
    }

    #[test]
    fn another_devices_node_is_refused_naming_both_devices() {
        let root = gpu_root();
        let p = the_policy(root.path());
        let err = check_with(
            &p,
            &claim_of("d"),
            &owned_inventory(),
            &mut answer("d", nodes(&["/dev/nvidia1"])),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, PolicyError::Refused { rule: Rule::Ownership, device, .. } if device == "d"),
            "{err:?}"
        );
        assert!(
            text.contains("device p/d: deviceNodes[0] \"/dev/nvidia1\"") && text.contains("\"p\"/\"e\""),
            "names the prepared device and the owner: {text}"
        );
        assert!(text.contains("not allocated to this claim"), "{text}");
    }

    #[test]
    fn another_path_to_the_same_device_is_refused_too() {
        let root = gpu_root();
        let p = the_policy(root.path());
        let err = check_with(
            &p,
            &claim_of("d"),
            &owned_inventory(),
            &mut answer("d", nodes(&["/dev/other1"])),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"p\"/\"e\""), "{err}");
    }

    #[test]
    fn own_and_shared_and_undeclared_nodes_pass() {
        let root = gpu_root();
        let p = the_policy(root.path());
        for (device, paths) in [
            ("d", &["/dev/nvidia0"][..]),
            // A partition gets its parent's node, which both declare.
            ("d-half", &["/dev/nvidia0"]),
            ("e", &["/dev/nvidia1", "/dev/other1"]),
        ] {
            let mut out = answer(device, nodes(paths));
            check_with(&p, &claim_of(device), &owned_inventory(), &mut out)
                .unwrap_or_else(|e| panic!("{device} {paths:?}: {e}"));
        }
    }

    #[test]
    fn another_devices_host_interface_is_refused() {
        let root = gpu_root();
        let p = the_policy(root.path());
        let moved = |iface: &str| ContainerEdits {
            net_devices: vec![NetDevice {
                host_interface_name: iface.into(),
                name: "net1".into(),
            }],
            ..edits()
        };
        let err = check_with(&p, &claim_of("d"), &owned_inventory(), &mut answer("d", moved("eth2"))).unwrap_err();
        assert!(
            err.to_string().contains("netDevices[0] \"eth2\"") && err.to_string().contains("\"p\"/\"e\""),
            "{err}"
        );
        // Undeclared interfaces are the path rules' business, as before.
        check_with(&p, &claim_of("d"), &owned_inventory(), &mut answer("d", moved("eth3"))).unwrap();
        check_with(&p, &claim_of("e"), &owned_inventory(), &mut answer("e", moved("eth2"))).unwrap();
    }

    #[test]
    fn without_declarations_the_policy_alone_judges_as_for_0_1_guests() {
        let root = gpu_root();
        let p = the_policy(root.path());
        let undeclared = inventory(&[("d", "UUID-D"), ("e", "UUID-E")]);
        check_with(
            &p,
            &claim_of("d"),
            &undeclared,
            &mut answer("d", nodes(&["/dev/nvidia1"])),
        )
        .expect("a 0.1 inventory declares nothing: only the path rules apply");
    }
}

/// KEP-5304 metadata is the workload's to read: bounded and formed like a
/// ResourceSlice's attributes and a status's network data.
#[test]
fn device_metadata_is_bounded_and_well_formed() {
    let p = policy("");
    let with = |m: DeviceMetadata| {
        let mut out = prepared(edits());
        out.devices[0].metadata = Some(m);
        check(&p, &mut out)
    };
    let attr = |name: &str, value: AttributeValue| Attribute {
        name: name.into(),
        value,
    };
    with(DeviceMetadata {
        attributes: vec![
            attr("uuid", AttributeValue::Text("GPU-0".into())),
            attr("example.com/index", AttributeValue::Integer(0)),
        ],
        network_data: Some(NetworkData {
            interface_name: "net1".into(),
            ips: vec!["192.0.2.5/24".into()],
            hardware_address: "02:42:ac:11:00:02".into(),
        }),
    })
    .expect("a valid metadata");
    let refused = |m: DeviceMetadata, needle: &str| {
        let e = with(m).unwrap_err().to_string();
        assert!(
            e.contains("device p/d: metadata") && e.contains(needle),
            "{needle}: {e}"
        );
    };
    refused(
        DeviceMetadata {
            attributes: (0..33)
                .map(|i| attr(&format!("a{i}"), AttributeValue::Integer(i)))
                .collect(),
            network_data: None,
        },
        "33 metadata attributes; at most 32",
    );
    refused(
        DeviceMetadata {
            attributes: vec![attr("bad name", AttributeValue::Boolean(true))],
            network_data: None,
        },
        "attribute \"bad name\"",
    );
    refused(
        DeviceMetadata {
            attributes: vec![attr("long", AttributeValue::Text("x".repeat(65)))],
            network_data: None,
        },
        "longer than 64",
    );
    refused(
        DeviceMetadata {
            attributes: vec![
                attr("twice", AttributeValue::Integer(1)),
                attr("twice", AttributeValue::Integer(2)),
            ],
            network_data: None,
        },
        "listed twice",
    );
    refused(
        DeviceMetadata {
            attributes: vec![],
            network_data: Some(NetworkData {
                interface_name: "net1".into(),
                ips: vec!["not-an-ip".into()],
                hardware_address: String::new(),
            }),
        },
        "not an IP address",
    );
}
