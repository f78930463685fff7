use super::*;

fn record(uid: &str) -> ClaimRecord {
    ClaimRecord {
        claim: ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: uid.into(),
        },
        devices: vec![PreparedDevice {
            request_names: vec!["gpu".into()],
            pool: "node".into(),
            device: "gpu-0".into(),
            share_id: None,
            cdi_device_ids: vec!["k8s.example.com/device=u-gpu-0".into()],
        }],
        cdi_spec: Some("{}".into()),
        state: vec![0, 1, 2, 255],
        guest: GuestIdentity {
            name: "g".into(),
            version: "1".into(),
            digest: "ab".into(),
        },
        prepared_at: 1,
        device_status: vec![],
        boot_id: None,
        allocation: None,
        metadata: vec![],
    }
}

#[test]
fn a_removed_claims_record_is_kept_as_a_spare_that_no_load_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Checkpoint::open(dir.path(), "drv").unwrap();
    cp.commit(record("u1")).unwrap();
    let bytes = std::fs::read(dir.path().join("u1.json")).unwrap();
    assert_eq!(bytes.len() % 4096, 0, "padded to whole blocks");
    assert!(bytes.ends_with(b" "));
    // Every decoder this project shipped parses the whole file with
    // serde_json::from_slice (this one trims the padding first): the padding
    // is whitespace, which JSON allows after the value.
    assert_eq!(decode_record(&bytes, "drv", Some("u1")).unwrap(), record("u1"));

    assert_eq!(cp.remove("u1").unwrap(), Some(record("u1")));
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 1, "the record's file stays, hidden, as a spare: {files:?}");
    // The spare still holds u1's record; neither a load nor a reload takes it for one.
    let reopened = Checkpoint::open(dir.path(), "drv").unwrap();
    assert!(reopened.is_empty());
    reopened.reload().unwrap();
    assert!(reopened.is_empty());
    assert!(reopened.take_quarantined().is_empty());

    // The next commit goes into it.
    reopened.commit(record("u2")).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["u2.json"]);
    assert_eq!(
        Checkpoint::open(dir.path(), "drv").unwrap().get("u2").unwrap(),
        record("u2")
    );
}

#[test]
fn records_survive_reopen_and_removal_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Checkpoint::open(dir.path(), "drv").unwrap();
    cp.commit(record("u1")).unwrap();
    cp.commit(record("u2")).unwrap();
    cp.remove("u2").unwrap();
    let cp = Checkpoint::open(dir.path(), "drv").unwrap();
    assert_eq!(cp.len(), 1);
    assert_eq!(cp.get("u1").unwrap(), record("u1"));
}

/// Every way a record goes bad on a node: moved to quarantine unchanged,
/// reported with its reason, and the good record still served.
#[test]
fn unusable_records_are_quarantined_and_the_rest_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let claims = dir.path().join("claims");
    let cp = Checkpoint::open(&claims, "drv").unwrap();
    for uid in ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"] {
        cp.commit(record(uid)).unwrap();
    }
    let path = |uid: &str| claims.join(format!("{uid}.json"));
    let good = std::fs::read_to_string(path("u0")).unwrap();
    let envelope = |field: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    };
    let damage: Vec<(&str, Vec<u8>, &str)> = vec![
        ("u1", good.replace("gpu-0", "gpu-1").into_bytes(), "corrupt"), // checksum
        ("u2", good.as_bytes()[..good.len() / 2].to_vec(), "corrupt"),  // truncated
        ("u3", Vec::new(), "corrupt"),                                  // empty
        ("u4", envelope("driver", "other".into()), "foreign"),
        ("u5", envelope("version", 2.into()), "foreign"),
        ("u6", good.clone().into_bytes(), "corrupt"), // u0's record under u6's name
    ];
    for (uid, bytes, _) in &damage {
        std::fs::write(path(uid), bytes).unwrap();
    }
    let cp = Checkpoint::open(&claims, "drv").unwrap();
    let mut loaded: Vec<_> = cp.records().into_iter().map(|r| r.claim.uid).collect();
    loaded.sort();
    assert_eq!(loaded, ["u0", "u7"]);
    let quarantined = cp.take_quarantined();
    assert_eq!(quarantined.len(), damage.len());
    for (uid, bytes, reason) in &damage {
        let q = quarantined
            .iter()
            .find(|q| q.uid.as_deref() == Some(*uid))
            .unwrap_or_else(|| panic!("{uid} not reported"));
        assert_eq!(q.reason, *reason, "{uid}: {}", q.detail);
        assert_eq!(q.path, path(uid));
        let moved = q.moved_to.as_ref().expect("moved");
        assert!(
            moved.starts_with(dir.path().join(QUARANTINE_DIR)),
            "{}",
            moved.display()
        );
        assert_eq!(&std::fs::read(moved).unwrap(), bytes, "moved unchanged");
        assert!(!path(uid).exists());
    }
    assert!(cp.take_quarantined().is_empty(), "reported once");
    // The same name going bad again does not overwrite the first copy.
    std::fs::write(path("u3"), b"").unwrap();
    cp.reload().unwrap();
    assert_eq!(cp.take_quarantined().len(), 1);
    assert_eq!(std::fs::read_dir(dir.path().join(QUARANTINE_DIR)).unwrap().count(), 7);
}

#[test]
fn decode_is_the_inverse_of_encode() {
    let mut r = record("u1");
    r.boot_id = Some("b".into());
    r.allocation = Some(RecordedAllocation {
        devices: vec![RecordedDevice {
            request: "gpu/small".into(),
            pool: "node".into(),
            device: "gpu-0".into(),
            share_id: None,
            consumed_capacity: vec![("memory".into(), "1Gi".into())],
            admin_access: false,
        }],
        configs: vec![RecordedConfig {
            source: "FromClaim".into(),
            requests: vec![],
            parameters: "{}".into(),
        }],
        pod_claim_name: Some("gpus".into()),
    });
    r.metadata = vec![RecordedMetadata {
        request: "gpu".into(),
        file: "{}\n".into(),
        cdi_spec: "{}".into(),
    }];
    let bytes = encode_record(&r, "drv").unwrap();
    assert_eq!(decode_record(&bytes, "drv", Some("u1")).unwrap(), r);
    assert_eq!(decode_record(&bytes, "drv", None).unwrap(), r);
    assert!(matches!(
        decode_record(&bytes, "drv", Some("u2")),
        Err(DecodeError::Corrupt(_))
    ));
    assert!(matches!(decode_record(&bytes, "x", None), Err(DecodeError::Foreign(_))));
}

/// Records written before boot IDs and allocations were recorded load.
#[test]
fn records_of_older_hosts_load() {
    let mut r = serde_json::to_value(record("u1")).unwrap();
    let fields = r.as_object_mut().unwrap();
    fields.remove("bootId");
    fields.remove("allocation");
    let raw = serde_json::to_string(&r).unwrap();
    let bytes = format!(
        r#"{{"kind":"{KIND}","version":1,"driver":"drv","checksum":{},"claim":{raw}}}"#,
        crc32fast::hash(raw.as_bytes())
    );
    let bytes = bytes.as_bytes();
    let decoded = decode_record(bytes, "drv", Some("u1")).unwrap();
    assert_eq!(decoded.boot_id, None);
    assert_eq!(decoded.allocation, None);
}

/// A record exactly as the released host (0.1.0, 546366c) writes it,
/// with every optional field, `status.devices` entries as
/// k8s-openapi 0.29 serialized them: it decodes, and encodes back to the
/// same bytes, so the format the checkpoint now owns is the released one.
#[test]
fn records_in_the_released_format_load_and_are_written_the_same() {
    let raw = concat!(
        r#"{"claim":{"namespace":"ns","name":"c","uid":"u1"},"#,
        r#""devices":[{"requestNames":["gpu"],"pool":"node","device":"gpu-0","shareId":"s1","cdiDeviceIds":["k8s.example.com/device=u1_gpu-0_s1"]}],"#,
        r#""cdiSpec":"{}","state":"AAEC/w==","guest":{"name":"g","version":"1","digest":"ab"},"preparedAt":1764990000,"#,
        r#""deviceStatus":[{"conditions":[{"lastTransitionTime":"2026-12-06T04:25:00Z","message":"up","reason":"Configured","status":"True","type":"Ready"}],"#,
        r#""data":{"speed":"fast"},"device":"gpu-0","driver":"example.dra.dev","networkData":{"hardwareAddress":"02:00:00:00:00:01","interfaceName":"net1","ips":["192.0.2.5/24"]},"pool":"node","shareID":"s1"},"#,
        r#"{"device":"gpu-1","driver":"example.dra.dev","pool":"node"}],"#,
        r#""bootId":"b-1","#,
        r#""allocation":{"devices":[{"request":"gpu/a","pool":"node","device":"gpu-0","shareId":"s1","consumedCapacity":[["memory","1Gi"]],"adminAccess":false}],"#,
        r#""configs":[{"source":"FromClaim","requests":["gpu"],"parameters":"{\"a\":1}"}]}}"#
    );
    // What k8s-openapi writes for these entries is what is recorded here.
    let entries: serde_json::Value = serde_json::from_str(raw).unwrap();
    let k8s: Vec<k8s_openapi::api::resource::v1::AllocatedDeviceStatus> =
        serde_json::from_value(entries["deviceStatus"].clone()).unwrap();
    assert_eq!(
        serde_json::to_string(&k8s).unwrap(),
        serde_json::to_string(&entries["deviceStatus"]).unwrap()
    );

    let bytes = format!(
        r#"{{"kind":"{KIND}","version":1,"driver":"drv","checksum":{},"claim":{raw}}}"#,
        crc32fast::hash(raw.as_bytes())
    );
    let decoded = decode_record(bytes.as_bytes(), "drv", Some("u1")).unwrap();
    assert_eq!(decoded.state, [0, 1, 2, 255]);
    assert_eq!(decoded.boot_id.as_deref(), Some("b-1"));
    let status = &decoded.device_status[0];
    assert_eq!(status.share_id.as_deref(), Some("s1"));
    let condition = &status.conditions.as_ref().unwrap()[0];
    assert_eq!(
        (condition.type_.as_str(), condition.last_transition_time.as_str()),
        ("Ready", "2026-12-06T04:25:00Z")
    );
    assert_eq!(
        status.network_data.as_ref().unwrap().ips.as_deref(),
        Some(&["192.0.2.5/24".to_owned()][..])
    );
    assert_eq!(decoded.device_status[1].conditions, None);
    assert_eq!(serde_json::to_string(&decoded).unwrap(), raw);
}

#[test]
fn unsafe_uids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Checkpoint::open(dir.path(), "drv").unwrap();
    assert!(matches!(
        cp.commit(record("../escape")).unwrap_err(),
        CheckpointError::BadUid(_)
    ));
    assert!(matches!(cp.remove(".hidden").unwrap_err(), CheckpointError::BadUid(_)));
}

/// Two processes of a rolling update on one directory: a reload decodes only
/// the files whose bytes changed, and sees every change the other made: a
/// record written again for the same claim (here into the very file its
/// earlier record was removed to), a claim added, one removed, one broken.
#[test]
fn a_reload_sees_every_change_the_other_process_made() {
    let dir = tempfile::tempdir().unwrap();
    let ours = Checkpoint::open(dir.path(), "drv").unwrap();
    let theirs = Checkpoint::open(dir.path(), "drv").unwrap();
    let with_state = |uid: &str, state: &[u8]| ClaimRecord {
        state: state.to_vec(),
        ..record(uid)
    };
    theirs.commit(with_state("u1", &[1])).unwrap();
    theirs.commit(with_state("u2", &[1])).unwrap();
    ours.reload().unwrap();
    assert_eq!(ours.get("u1").unwrap().state, [1]);
    let inode = |uid: &str| {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.path().join(format!("{uid}.json"))).unwrap())
    };
    let first = inode("u1");

    theirs.remove("u1").unwrap();
    theirs.commit(with_state("u1", &[2])).unwrap();
    assert_eq!(inode("u1"), first, "the spare the removal left is reused");
    theirs.commit(with_state("u3", &[3])).unwrap();
    theirs.remove("u2").unwrap();
    ours.reload().unwrap();
    assert_eq!(
        ours.get("u1").unwrap().state,
        [2],
        "the record written again is read again"
    );
    assert_eq!(ours.get("u3").unwrap().state, [3]);
    assert!(ours.get("u2").is_none());
    assert_eq!(ours.len(), 2);

    // Unchanged files are taken from memory, changed ones checked as at open.
    std::fs::write(dir.path().join("u3.json"), b"{ not json").unwrap();
    ours.reload().unwrap();
    assert!(ours.get("u3").is_none());
    let quarantined = ours.take_quarantined();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].reason, "corrupt");
    assert_eq!(ours.get("u1").unwrap().state, [2]);
}

/// With the directory watched (rolling-update mode), a reload reads nothing
/// when no one changed the directory since the last settle, and reads it when
/// the other process (here a second `Checkpoint` on the directory, as an
/// earlier release without a watch would be) committed, removed or broke a
/// record in between, or when this process's own changes were not settled.
#[test]
fn a_watched_reload_reads_the_directory_only_after_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let ours = Checkpoint::open(dir.path(), "drv").unwrap();
    ours.watch_for_changes().unwrap();
    let theirs = Checkpoint::open(dir.path(), "drv").unwrap();

    assert!(!ours.reload().unwrap(), "nothing changed since the watch began");
    theirs.commit(record("u1")).unwrap();
    assert!(ours.reload().unwrap(), "the other's commit");
    assert_eq!(ours.get("u1").unwrap(), record("u1"));
    assert!(!ours.reload().unwrap());

    // Our own call: its changes are settled before the lock is released.
    ours.commit(record("u2")).unwrap();
    ours.settle();
    assert!(!ours.reload().unwrap(), "our own settled changes");
    // Not settled (a call cut short): read again, which is merely slower.
    ours.remove("u2").unwrap();
    assert!(ours.reload().unwrap());
    assert!(ours.get("u2").is_none());

    theirs.remove("u1").unwrap();
    assert!(ours.reload().unwrap(), "the other's removal");
    assert!(ours.is_empty());

    std::fs::write(dir.path().join("u3.json"), b"{").unwrap();
    assert!(ours.reload().unwrap(), "a file written in place");
    assert_eq!(ours.take_quarantined().len(), 1);
    ours.settle();
    assert!(!ours.reload().unwrap(), "the quarantine move was ours");
}
