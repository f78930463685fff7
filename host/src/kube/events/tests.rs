use super::*;

fn claim_event(name: &str, reason: &str, message: &str) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.1")),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("ResourceClaim".into()),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            api_version: Some("resource.k8s.io/v1".into()),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some("node".into()),
        }),
        first_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        last_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        count: Some(1),
        ..Default::default()
    }
}

/// Send as the API server would: a create stores count 1, a patch the new count.
fn server(c: &mut Correlator, result: Correlated, rv: &mut u64) -> &'static str {
    let (mut stored, what) = match result {
        Correlated::Skip(_) => return "skip",
        Correlated::Create(e) => (e, "create"),
        Correlated::Patch { event, patch } => {
            assert_eq!(patch["count"], serde_json::json!(event.count), "{patch}");
            assert!(patch.get("lastTimestamp").is_some() && patch.get("message").is_some());
            (event, "patch")
        }
    };
    *rv += 1;
    stored.metadata.resource_version = Some(rv.to_string());
    c.update_state(&stored);
    what
}

#[test]
fn repeats_are_one_event_with_a_count_and_the_burst_is_25() {
    let mut c = Correlator::default();
    let t0 = Instant::now();
    let mut rv = 0;
    let mut outcomes = Vec::new();
    let mut last = None;
    for i in 0..30 {
        let result = c.correlate(claim_event("a", "PrepareFailed", "boom"), t0 + Duration::from_secs(i));
        if let Correlated::Patch { event, .. } = &result {
            last = Some(event.clone());
        }
        outcomes.push(server(&mut c, result, &mut rv));
    }
    assert_eq!(outcomes[0], "create");
    assert!(outcomes[1..25].iter().all(|o| *o == "patch"), "{outcomes:?}");
    assert!(outcomes[25..].iter().all(|o| *o == "skip"), "{outcomes:?}");
    let last = last.unwrap();
    assert_eq!(last.count, Some(25));
    assert_eq!(
        last.metadata.name.as_deref(),
        Some("a.1"),
        "patches name the first Event"
    );
    // Five minutes later one more token: the patch carries every occurrence.
    let later = c.correlate(
        claim_event("a", "PrepareFailed", "boom"),
        t0 + Duration::from_secs(29 + 301),
    );
    match later {
        Correlated::Patch { event, .. } => assert_eq!(event.count, Some(31)),
        other => panic!("{other:?}"),
    }
    // Another object has its own budget.
    assert!(matches!(
        c.correlate(claim_event("b", "PrepareFailed", "boom"), t0 + Duration::from_secs(30)),
        Correlated::Create(_)
    ));
}

#[test]
fn ten_different_messages_become_a_combined_event() {
    let mut c = Correlator::default();
    let t0 = Instant::now();
    let mut rv = 0;
    let mut messages = Vec::new();
    for i in 0..12 {
        let result = c.correlate(
            claim_event("a", "PrepareFailed", &format!("error {i}")),
            t0 + Duration::from_secs(i),
        );
        if let Correlated::Create(e) | Correlated::Patch { event: e, .. } = &result {
            messages.push((e.message.clone().unwrap(), e.count));
        }
        server(&mut c, result, &mut rv);
    }
    assert_eq!(messages[8], ("error 8".into(), Some(1)));
    assert_eq!(messages[9], ("(combined from similar events): error 9".into(), Some(1)));
    assert_eq!(
        messages[11],
        ("(combined from similar events): error 11".into(), Some(3)),
        "the combined event is counted up"
    );
    // After ten quiet minutes, messages are told apart again.
    let result = c.correlate(
        claim_event("a", "PrepareFailed", "error 99"),
        t0 + Duration::from_secs(11 + 601),
    );
    match result {
        Correlated::Create(e) => assert_eq!(e.message.as_deref(), Some("error 99")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_cache_forgets_the_least_recently_used() {
    let mut lru: Lru<u32> = Lru {
        capacity: 2,
        ..Default::default()
    };
    lru.insert("a".into(), 1);
    lru.insert("b".into(), 2);
    assert_eq!(lru.get_mut("a"), Some(&mut 1));
    lru.insert("c".into(), 3);
    assert!(lru.get_mut("b").is_none());
    assert!(lru.get_mut("a").is_some() && lru.get_mut("c").is_some());
}
