use super::*;

fn device(n: usize) -> v1::Device {
    v1::Device {
        request_names: vec!["gpu".into()],
        pool_name: "node-a".into(),
        device_name: format!("gpu-{n}"),
        cdi_device_ids: vec![format!("k8s.gpu.example.com/device=uid_gpu-{n}")],
        share_id: None,
    }
}

#[test]
fn errors_are_shortened_to_fit_and_good_claims_keep_their_devices() {
    // 3,000 failed claims with 2 KiB errors (6 MiB) and one good claim.
    let mut claims: HashMap<String, v1::NodePrepareResourceResponse> = (0..3000)
        .map(|i| {
            let response = v1::NodePrepareResourceResponse {
                devices: vec![],
                error: format!("claim {i}: {}", "e".repeat(CLAIM_ERROR_BYTES - 20)),
            };
            (format!("uid-{i}"), response)
        })
        .collect();
    let good = v1::NodePrepareResourceResponse {
        devices: (0..8).map(device).collect(),
        error: String::new(),
    };
    claims.insert("good".into(), good.clone());
    let mut answer = v1::NodePrepareResourcesResponse { claims };
    assert!(answer.encoded_len() > KUBELET_RECEIVE_LIMIT);

    fit_answer(&mut answer, |r| r.claims.values_mut().map(|c| &mut c.error).collect());
    assert!(answer.encoded_len() <= ANSWER_LIMIT, "{}", answer.encoded_len());
    assert_eq!(answer.claims.len(), 3001);
    assert_eq!(answer.claims["good"], good);
    for (uid, c) in &answer.claims {
        if uid != "good" {
            assert!(c.error.starts_with("claim "), "{:?}", c.error);
            assert!(c.error.ends_with("bytes cut]"), "{:?}", c.error);
        }
    }
}

#[test]
fn an_answer_under_the_limit_is_left_alone() {
    let mut answer = v1::NodeUnprepareResourcesResponse {
        claims: [(
            "a".to_owned(),
            v1::NodeUnprepareResourceResponse {
                error: "x".repeat(4000),
            },
        )]
        .into(),
    };
    let before = answer.clone();
    fit_answer(&mut answer, |r| r.claims.values_mut().map(|c| &mut c.error).collect());
    assert_eq!(answer, before);
}

#[tokio::test]
async fn an_abandoned_operation_finishes_in_the_background() {
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let (done, finished) = tokio::sync::oneshot::channel();
    let call = Detachable::new(async move {
        let _ = wait.await;
        let _ = done.send("committed");
    });
    // The kubelet's deadline passes while the operation waits.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(20), call)
            .await
            .is_err()
    );
    go.send(()).unwrap();
    let finished = tokio::time::timeout(std::time::Duration::from_secs(5), finished).await;
    assert_eq!(finished.expect("the rest ran as a task").unwrap(), "committed");
}

#[tokio::test]
async fn a_panicking_operation_is_an_error_not_a_lost_connection() {
    let outcome = Detachable::new(async { panic!("guest glue broke") }).await;
    assert_eq!(outcome.unwrap_err(), "guest glue broke");
    assert_eq!(Detachable::new(async { 7 }).await, Ok(7));
}
