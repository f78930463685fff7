use super::*;

fn dev(name: &str) -> model::Device {
    model::Device {
        name: name.into(),
        attributes: vec![model::Attribute {
            name: "model".into(),
            value: model::AttributeValue::Text("X".into()),
        }],
        capacity: vec![model::Capacity {
            name: "memory".into(),
            value: "80Gi".into(),
            request_policy: None,
        }],
        allow_multiple_allocations: false,
        taints: vec![],
        ..Default::default()
    }
}

fn pool(n: usize) -> model::Pool {
    model::Pool {
        name: "node-a".into(),
        devices: (0..n).map(|i| dev(&format!("d{i}"))).collect(),
        shared_counters: vec![],
    }
}

#[test]
fn splits_at_128_and_at_64_once_tainted() {
    let p = desired_pools(&[pool(300)], &[]);
    assert!(p.invalid.is_empty());
    assert_eq!(
        p.pools[0].slices.iter().map(|s| s.devices().len()).collect::<Vec<_>>(),
        [128, 128, 44]
    );
    let taint = HostTaint {
        pool: "node-a".into(),
        device: "d0".into(),
        key: "x.com/unhealthy".into(),
        value: None,
        effect: "NoSchedule",
    };
    let p = desired_pools(&[pool(130)], &[taint]);
    assert_eq!(
        p.pools[0].slices.iter().map(|s| s.devices().len()).collect::<Vec<_>>(),
        [64, 66]
    );
    assert_eq!(
        desired_pools(&[pool(0)], &[]).pools[0].slices,
        vec![DesiredSlice::Devices(vec![])]
    );
}

/// The one bad device of each kind is left out, named with the reason;
/// the valid devices are kept.
fn refused(p: model::Pool) -> String {
    let d = desired_pools(&[p], &[]);
    assert_eq!(d.invalid.len(), 1, "{:?}", d.invalid);
    assert_eq!(d.pools[0].slices[0].devices().len(), 1, "the valid device is kept");
    d.invalid[0].to_string()
}

#[test]
fn bad_devices_are_left_out_and_named() {
    let mut p = pool(3);
    p.devices[2].name = "d0".into();
    let d = desired_pools(&[p], &[]);
    assert_eq!(d.invalid_devices(), 1);
    let e = d.invalid[0].to_string();
    assert!(e.contains("device \"d0\"") && e.contains("twice"), "{e}");
    assert_eq!(d.pools[0].slices[0].devices().len(), 2);
    assert_eq!(d.pools[0].slices[0].devices()[0].name, "d0", "the first is published");

    let mut p = pool(2);
    for i in 0..32 {
        p.devices[1].attributes.push(model::Attribute {
            name: format!("a{i}"),
            value: model::AttributeValue::Integer(i),
        });
    }
    assert!(refused(p).contains("at most 32"));

    let mut p = pool(2);
    p.devices[1].attributes[0].value = model::AttributeValue::Text("x".repeat(1_000_000));
    let e = refused(p);
    assert!(e.contains("longer than 64") && e.len() < 300, "{e}");

    let mut p = pool(2);
    p.devices[1].attributes[0].value = model::AttributeValue::Version("580.159.04".into());
    assert!(refused(p).contains("semantic version"));

    let mut p = pool(2);
    p.devices[1].capacity[0].value = "lots".into();
    assert!(refused(p).contains("not a quantity"));

    for bad in ["Upper", &"d".repeat(64), "-x", "a_b"] {
        let mut p = pool(2);
        p.devices[1].name = bad.to_owned();
        assert!(refused(p).contains("DNS label"), "{bad}");
    }

    let mut p = pool(2);
    p.devices[1].taints.push(model::Taint {
        key: "x.com/t".into(),
        value: Some("not a label value!".into()),
        effect: model::TaintEffect::NoSchedule,
    });
    assert!(refused(p).contains("label value"));
}

#[test]
fn quantities_in_milli_units() {
    assert_eq!(milli("81559Mi"), Some(81559 * (1 << 20) * 1000));
    assert_eq!(milli("5Gi"), Some(5 * (1 << 30) * 1000));
    assert_eq!(milli("1.5k"), Some(1_500_000));
    assert_eq!(milli("100m"), Some(100));
    assert_eq!(milli("2e3"), Some(2_000_000));
    assert_eq!(milli("-1"), Some(-1000));
    assert_eq!(milli("100"), Some(100_000));
    assert_eq!(milli("1n"), None, "finer than milli: not checked");
    assert_eq!(milli("Gi"), None);
    assert_eq!(milli("1e99"), None);
}

/// As a real 1.37 API server refused the GPU guest's first slices: a
/// range whose max is not min plus whole steps is left out, named.
#[test]
fn a_request_range_off_its_step_is_left_out() {
    let policy = |default: &str, max: &str| model::RequestPolicy {
        default: Some(default.into()),
        valid_values: vec![],
        valid_range: Some(model::CapacityRange {
            min: "5Gi".into(),
            max: Some(max.into()),
            step: Some("5Gi".into()),
        }),
    };
    let mut p = pool(2);
    p.devices[0].capacity[0] = model::Capacity {
        name: "memory".into(),
        value: "81559Mi".into(),
        request_policy: Some(policy("5Gi", "75Gi")),
    };
    p.devices[1].capacity[0] = model::Capacity {
        name: "memory".into(),
        value: "81559Mi".into(),
        request_policy: Some(policy("5Gi", "81559Mi")),
    };
    let e = refused(p.clone());
    assert!(
        e.contains("device \"d1\"")
            && e.contains("validRange.max 81559Mi is not validRange.min 5Gi plus whole steps of 5Gi"),
        "{e}"
    );
    p.devices[1].capacity[0].request_policy = Some(policy("7Gi", "75Gi"));
    assert!(refused(p.clone()).contains("requestPolicy.default 7Gi"));
    p.devices[1].capacity[0].value = "4Gi".into();
    p.devices[1].capacity[0].request_policy = Some(policy("5Gi", "5Gi"));
    assert!(refused(p).contains("more than the capacity 4Gi"));
}

#[test]
fn a_bad_or_repeated_pool_is_left_out_whole() {
    let mut bad = pool(3);
    bad.name = "Node_A".into();
    let d = desired_pools(&[bad, pool(2), pool(4)], &[]);
    assert_eq!(d.pools.len(), 1);
    assert_eq!(d.pools[0].slices[0].devices().len(), 2);
    assert_eq!(d.invalid.len(), 2);
    assert_eq!(d.invalid_devices(), 3 + 4);
    assert!(d.invalid[0].to_string().contains("pool \"Node_A\""), "{}", d.invalid[0]);
    assert!(d.invalid[1].to_string().contains("listed twice"), "{}", d.invalid[1]);
}

#[test]
fn guest_names_in_errors_are_quoted_bounded_and_escaped() {
    let mut p = pool(1);
    p.devices[0].name = format!("evil\n{}", "x".repeat(100_000));
    let e = desired_pools(&[p], &[]).invalid[0].to_string();
    assert!(!e.contains('\n') && e.len() < 1024, "{e}");
    assert!(e.contains("device \"evil\\nxxx"), "{e}");
}

#[test]
fn names_and_quantities() {
    assert!(check_qualified_name("gpu.example.com/productName").is_ok());
    assert!(check_qualified_name("index").is_ok());
    assert!(check_qualified_name("bad name").is_err());
    assert!(check_qualified_name("Example.com/x").is_err());
    for q in ["80Gi", "5", "1.5G", "100m", "1e3", "81559Mi"] {
        assert!(is_quantity(q), "{q}");
    }
    for q in ["", "Gi", "5GB", "1.2.3"] {
        assert!(!is_quantity(q), "{q}");
    }
    assert!(is_semver("12.4.0") && is_semver("1.0.0-rc.1") && !is_semver("1.0") && !is_semver("01.0.0"));
}

fn counter(name: &str, value: &str) -> model::Counter {
    model::Counter {
        name: name.into(),
        value: value.into(),
    }
}

/// A GPU with two memory slices and its partitions: the whole GPU takes
/// both, each half takes one.
fn partitioned(consume: &[(&str, &str, &str)]) -> model::Pool {
    let mut devices = vec![model::Device {
        consumes_counters: vec![model::CounterConsumption {
            counter_set: "gpu-0".into(),
            counters: vec![counter("slice-0", "1"), counter("slice-1", "1")],
        }],
        ..dev("gpu-0")
    }];
    for (name, set, c) in consume {
        devices.push(model::Device {
            consumes_counters: vec![model::CounterConsumption {
                counter_set: (*set).into(),
                counters: vec![counter(c, "1")],
            }],
            ..dev(name)
        });
    }
    model::Pool {
        name: "node-a".into(),
        devices,
        shared_counters: vec![model::CounterSet {
            name: "gpu-0".into(),
            counters: vec![counter("slice-0", "1"), counter("slice-1", "1")],
        }],
    }
}

#[test]
fn shared_counters_get_a_slice_of_their_own_before_the_devices() {
    let d = desired_pools(
        &[partitioned(&[
            ("half-0", "gpu-0", "slice-0"),
            ("half-1", "gpu-0", "slice-1"),
        ])],
        &[],
    );
    assert!(d.invalid.is_empty(), "{:?}", d.invalid);
    let slices = &d.pools[0].slices;
    assert_eq!(slices.len(), 2);
    let DesiredSlice::Counters(sets) = &slices[0] else {
        panic!("the first slice holds the counters: {slices:?}")
    };
    assert_eq!(sets[0].name, "gpu-0");
    assert_eq!(sets[0].counters["slice-1"].value.0, "1");
    assert_eq!(slices[1].devices().len(), 3);
    let half = &slices[1].devices()[1];
    let consumed = half.consumes_counters.as_ref().expect("consumesCounters published");
    assert_eq!(consumed[0].counter_set, "gpu-0");
    assert_eq!(consumed[0].counters.keys().collect::<Vec<_>>(), ["slice-0"]);

    let spec0 = spec("drv", "node-a", &d.pools[0], &slices[0], 1);
    assert!(
        spec0.devices.is_none() && spec0.shared_counters.is_some(),
        "never both in one slice"
    );
    let spec1 = spec("drv", "node-a", &d.pools[0], &slices[1], 1);
    assert!(spec1.shared_counters.is_none() && spec1.devices.is_some());
    assert_eq!(spec1.pool.resource_slice_count, 2);
}

#[test]
fn devices_that_consume_counters_split_at_64() {
    let mut pool = partitioned(&[]);
    let template = pool.devices[0].clone();
    pool.devices = (0..100)
        .map(|i| model::Device {
            name: format!("p{i}"),
            ..template.clone()
        })
        .collect();
    let d = desired_pools(&[pool], &[]);
    assert_eq!(
        d.pools[0].slices.iter().map(|s| s.devices().len()).collect::<Vec<_>>(),
        [0, 64, 36]
    );
}

#[test]
fn a_consumption_of_an_unknown_counter_set_or_counter_leaves_the_device_out_naming_it() {
    let d = desired_pools(
        &[partitioned(&[
            ("ghost", "gpu-9", "slice-0"),
            ("typo", "gpu-0", "slice-7"),
        ])],
        &[],
    );
    let reasons: Vec<String> = d.invalid.iter().map(ToString::to_string).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("\"ghost\"") && reasons[0].contains("no such counter set"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("\"typo\"") && reasons[1].contains("no counter \"slice-7\""),
        "{}",
        reasons[1]
    );
    assert_eq!(d.pools[0].devices().count(), 1, "the good device stays");
}

#[test]
fn a_bad_counter_set_leaves_the_pool_out_naming_the_set() {
    let mut pool = partitioned(&[]);
    pool.shared_counters.push(pool.shared_counters[0].clone());
    let d = desired_pools(&[pool], &[]);
    assert!(d.pools.is_empty());
    assert!(
        d.invalid[0].to_string().contains("counter set \"gpu-0\" listed twice"),
        "{}",
        d.invalid[0]
    );

    let mut pool = partitioned(&[]);
    pool.shared_counters[0].counters[0].value = "lots".into();
    let d = desired_pools(&[pool], &[]);
    assert!(
        d.invalid[0].to_string().contains("\"lots\" is not a quantity"),
        "{}",
        d.invalid[0]
    );

    let mut pool = partitioned(&[]);
    pool.shared_counters = (0..9)
        .map(|i| model::CounterSet {
            name: format!("s{i}"),
            counters: vec![counter("c", "1")],
        })
        .collect();
    let d = desired_pools(&[pool], &[]);
    assert!(
        d.invalid[0].to_string().contains("9 shared counter sets"),
        "{}",
        d.invalid[0]
    );
}

#[test]
fn binding_conditions_are_published_and_checked_like_the_api_server() {
    let bound = |conditions: &[&str], failure: &[&str]| model::Device {
        binding: Some(model::BindingConditions {
            conditions: conditions.iter().map(|s| (*s).into()).collect(),
            failure_conditions: failure.iter().map(|s| (*s).into()).collect(),
            binds_to_node: true,
        }),
        ..dev("d0")
    };
    let pool = |d: model::Device| model::Pool {
        name: "node-a".into(),
        devices: vec![d],
        shared_counters: vec![],
    };
    let d = desired_pools(&[pool(bound(&["example.com/attached"], &["Failed"]))], &[]);
    assert!(d.invalid.is_empty(), "{:?}", d.invalid);
    let published = &d.pools[0].slices[0].devices()[0];
    assert_eq!(
        published.binding_conditions.as_deref(),
        Some(&["example.com/attached".to_owned()][..])
    );
    assert_eq!(
        published.binding_failure_conditions.as_deref(),
        Some(&["Failed".to_owned()][..])
    );
    assert_eq!(published.binds_to_node, Some(true));

    for (conditions, failure, why) in [
        (&["Ready", "Ready"][..], &[][..], "listed twice"),
        (
            &["Ready"],
            &["Ready"],
            "both a binding condition and a binding failure condition",
        ),
        (&["a", "b", "c", "d", "e"], &[], "5 bindingConditions"),
        (&["not ok"], &[], "is not a label name"),
    ] {
        let d = desired_pools(&[pool(bound(conditions, failure))], &[]);
        assert!(
            d.invalid.first().is_some_and(|e| e.to_string().contains(why)),
            "{conditions:?}/{failure:?}: {:?}",
            d.invalid
        );
    }
}
