use super::*;

#[test]
fn dra_buckets_are_the_kubelets() {
    let b = dra_duration_buckets();
    assert_eq!(b.len(), 15);
    assert_eq!(b[0], 0.1);
    assert!((b[14] - 40.0).abs() < 1e-9, "{b:?}");
    assert!((b[1] - 0.153_412_74).abs() < 1e-8, "{b:?}");
    assert!((b[7] - 2.0).abs() < 1e-9, "{b:?}");
}

#[test]
fn the_upstream_name_is_served_beside_the_host_metrics() {
    let m = Metrics::new();
    m.dra_grpc_operation(
        "d",
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
        "OK",
        Duration::from_millis(3),
    );
    m.set_prepared_claims("d", 1);
    let text = m.encode();
    assert!(
        text.contains("# TYPE dra_grpc_operations_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("dra_grpc_operations_duration_seconds_count{driver_name=\"d\",method_name=\"/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources\",grpc_status_code=\"OK\"} 1"), "{text}");
    assert!(text.contains("dra_host_prepared_claims{driver=\"d\"} 1"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
}
