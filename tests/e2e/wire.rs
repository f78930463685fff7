//! The HTTP/2 level of the kubelet sockets, with frames written by hand:
//! what no gRPC library lets a test send. (The real grpc-go and grpcio
//! clients are in `kubelet_clients.rs`.)
//!
//! The tonic test kubelet only registers the host; the frames are the test's.

use crate::common::*;
use dra_test_support::host::{DriverSpec, HostEnv, http_get};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK "literal without indexing, new name" field (short strings only).
fn literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// Send one request's HEADERS and return the first frame the server sends
/// on that stream or the connection: (type, error code if any).
async fn send_headers(socket: &std::path::Path, fields: &[(&str, &str)]) -> (u8, Option<u32>) {
    let mut io = UnixStream::connect(socket).await.expect("connect");
    let block: Vec<u8> = fields.iter().flat_map(|(n, v)| literal(n, v)).collect();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, &block));
    io.write_all(&out).await.expect("write");
    let mut buf = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, stream) = (buf[3], u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]));
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            let code = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
            match kind {
                HEADERS if stream == 1 => return (HEADERS, None),
                RST_STREAM if stream == 1 => return (RST_STREAM, Some(code(0))),
                GOAWAY => return (GOAWAY, Some(code(4))),
                _ => {}
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), io.read_buf(&mut buf))
            .await
            .expect("the host answers within 10 s")
            .expect("read");
        assert!(n > 0, "the host closed the connection without answering");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_authority_is_accepted_and_a_refused_request_is_logged_and_counted() {
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    let port = env.enable_metrics().unwrap();
    let spec = DriverSpec::new(DRIVER, &guest("example_driver.wasm")).config("devices = 1");
    let node = Node::start_in(env, vec![spec], "", "").await;
    let registration = node
        .env
        .kubelet_root
        .join("plugins_registry")
        .join(format!("{DRIVER}-reg.sock"));
    let path = registration.to_str().unwrap();
    let percent_encoded = path.replace('/', "%2F");
    let get_info = |authority: Option<&'static str>| {
        let mut fields = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/pluginregistration.Registration/GetInfo"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        if let Some(a) = authority {
            fields.insert(3, (":authority", a));
        }
        fields
    };
    let replaced_series =
        format!(r#"dra_host_http2_authority_replaced_total{{driver="{DRIVER}",socket="registration"}} "#);
    // The test kubelet registered with grpc-go's authority (the encoded path).
    let replaced = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(replaced_series.as_str()))
            .map_or(0, |v| v.trim().parse().expect("a counter value"))
    };
    let replaced_before = replaced(&http_get(port, "/metrics").await.unwrap());
    assert!(
        replaced_before >= 2,
        "the test kubelet's GetInfo and NotifyRegistrationStatus were rewritten"
    );
    // What grpc-go < 1.57 (raw path), grpc-go >= 1.57 (percent-encoded path),
    // the unix: resolver (localhost) and other clients (empty, none) send.
    let leaked = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    for authority in [
        Some(leaked(path.to_owned())),
        Some(leaked(percent_encoded)),
        Some("localhost"),
        Some(""),
        None,
    ] {
        let (kind, code) = send_headers(&registration, &get_info(authority)).await;
        assert_eq!((kind, code), (HEADERS, None), "GetInfo with :authority {authority:?}");
    }

    // `te: gzip` is refused by HTTP/2 itself: the host must say so.
    let mut bad = get_info(Some("localhost"));
    bad.retain(|(n, _)| *n != "te");
    bad.push(("te", "gzip"));
    let (kind, code) = send_headers(&registration, &bad).await;
    assert_eq!(
        (kind, code),
        (RST_STREAM, Some(0x1)),
        "a request with te: gzip is reset"
    );
    let log = eventually("the refusal in the host's log", &node, || {
        let log = node.host.log();
        log.lines()
            .find(|l| l.contains("the HTTP/2 server refused a client's request"))
            .map(str::to_owned)
    })
    .await;
    for expected in [
        "WARN",
        &format!("peer_pid=Some({})", std::process::id()),
        &format!("socket={path}"),
        "code=\"PROTOCOL_ERROR\"",
        "te: gzip",
        "/pluginregistration.Registration/GetInfo",
    ] {
        assert!(log.contains(expected), "{expected:?} missing from the log line:\n{log}");
    }
    let metrics = http_get(port, "/metrics").await.unwrap();
    let refused = format!(
        r#"dra_host_http2_refusals_total{{driver="{DRIVER}",socket="registration",scope="stream",code="PROTOCOL_ERROR"}} 1"#
    );
    assert!(metrics.contains(&refused), "{refused} missing from\n{metrics}");
    // The raw path, the encoded path and the empty authority were replaced.
    assert_eq!(replaced(&metrics), replaced_before + 3, "{metrics}");
}
