//! Fuzzing the decoder (see [`crate::fuzzing`]): whatever the bytes, it
//! returns an error or a record, never panics, and never takes a damaged
//! record for a good one.

use super::*;
use crate::fuzzing::fuzz;
use proptest::collection::vec;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{0,16}",
        any::<String>(),
        Just(String::new()),
        Just("\"\\\u{0}\u{ffff}/".to_owned()),
    ]
}

fn device() -> impl Strategy<Value = PreparedDevice> {
    (
        vec(text(), 0..3),
        text(),
        text(),
        proptest::option::of(text()),
        vec(text(), 0..3),
    )
        .prop_map(
            |(request_names, pool, device, share_id, cdi_device_ids)| PreparedDevice {
                request_names,
                pool,
                device,
                share_id,
                cdi_device_ids,
            },
        )
}

fn allocation() -> impl Strategy<Value = RecordedAllocation> {
    let device = (
        text(),
        text(),
        text(),
        proptest::option::of(text()),
        vec((text(), text()), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(request, pool, device, share_id, consumed_capacity, admin_access)| RecordedDevice {
                request,
                pool,
                device,
                share_id,
                consumed_capacity,
                admin_access,
            },
        );
    let config = (text(), vec(text(), 0..3), text()).prop_map(|(source, requests, parameters)| RecordedConfig {
        source,
        requests,
        parameters,
    });
    (vec(device, 0..4), vec(config, 0..3), proptest::option::of(text())).prop_map(
        |(devices, configs, pod_claim_name)| RecordedAllocation {
            devices,
            configs,
            pod_claim_name,
        },
    )
}

pub(super) fn record() -> impl Strategy<Value = ClaimRecord> {
    let claim = (text(), text(), text()).prop_map(|(namespace, name, uid)| ClaimRef { namespace, name, uid });
    let guest = (text(), text(), text()).prop_map(|(name, version, digest)| GuestIdentity { name, version, digest });
    let status = vec(
        (text(), text(), text()).prop_map(|(driver, pool, device)| RecordedDeviceStatus {
            driver,
            pool,
            device,
            ..Default::default()
        }),
        0..2,
    );
    (
        claim,
        vec(device(), 0..4),
        proptest::option::of(text()),
        vec(any::<u8>(), 0..256),
        guest,
        any::<u64>(),
        status,
        proptest::option::of(text()),
        proptest::option::of(allocation()),
        vec(
            (text(), text(), text()).prop_map(|(request, file, cdi_spec)| RecordedMetadata {
                request,
                file,
                cdi_spec,
            }),
            0..2,
        ),
    )
        .prop_map(
            |(claim, devices, cdi_spec, state, guest, prepared_at, device_status, boot_id, allocation, metadata)| {
                ClaimRecord {
                    claim,
                    devices,
                    cdi_spec,
                    state,
                    guest,
                    prepared_at,
                    device_status,
                    boot_id,
                    allocation,
                    metadata,
                }
            },
        )
}

#[derive(Debug, Clone)]
enum Input {
    /// Any bytes.
    Raw(Vec<u8>),
    /// A good file, then one byte replaced.
    OneByte(ClaimRecord, usize, u8),
    /// A good file, cut short.
    Truncated(ClaimRecord, usize),
    /// A good file, then several bytes replaced, inserted or removed.
    Mangled(ClaimRecord, Vec<(usize, u8, u8)>),
    /// A good file.
    Good(ClaimRecord),
}

#[test]
fn fuzz_checkpoint_decoder() {
    let input = prop_oneof![
        vec(any::<u8>(), 0..1024).prop_map(Input::Raw),
        (record(), any::<usize>(), any::<u8>()).prop_map(|(r, at, b)| Input::OneByte(r, at, b)),
        (record(), any::<usize>()).prop_map(|(r, at)| Input::Truncated(r, at)),
        (record(), vec((any::<usize>(), 0u8..3, any::<u8>()), 1..8)).prop_map(|(r, m)| Input::Mangled(r, m)),
        record().prop_map(Input::Good),
    ];
    fuzz("checkpoint decoder", 1, input, |input| {
        match input {
            Input::Raw(bytes) => {
                if let Ok(r) = decode_record(&bytes, "drv", None) {
                    let again = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(decode_record(&again, "drv", None), Ok(r));
                }
            }
            Input::Good(r) => {
                let bytes = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decode_record(&bytes, "drv", Some(&r.claim.uid)), Ok(r.clone()));
                prop_assert!(decode_record(&bytes, "other", None).is_err());
            }
            Input::OneByte(r, at, b) => {
                let mut bytes = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                let at = at % bytes.len();
                bytes[at] = b;
                // A changed byte is caught (JSON syntax, envelope fields, or
                // the CRC, which detects every single-byte change).
                if let Ok(decoded) = decode_record(&bytes, "drv", None) {
                    prop_assert_eq!(decoded, r, "a changed file decoded to another record");
                }
            }
            Input::Truncated(r, at) => {
                let bytes = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                let at = at % bytes.len();
                prop_assert!(
                    decode_record(&bytes[..at], "drv", None).is_err(),
                    "a prefix of {at} bytes decoded"
                );
            }
            Input::Mangled(r, edits) => {
                let mut bytes = encode_record(&r, "drv").map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (at, op, b) in edits {
                    let at = at % (bytes.len() + 1);
                    match op {
                        0 if at < bytes.len() => bytes[at] = b,
                        1 => bytes.insert(at, b),
                        _ if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => {}
                    }
                }
                let _ = decode_record(&bytes, "drv", None);
            }
        }
        Ok(())
    });
}
