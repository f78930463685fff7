//! The adapter between real HTTP/2 peers: h2's server (what tonic runs), and
//! on the client side either h2's client (a real HPACK encoder with dynamic
//! table and Huffman coding) or hand-built frames for what h2's client cannot
//! send (the authorities grpc-go and grpcio send on a Unix socket).

use super::*;
use bytes::{BufMut, Bytes};
use dra_proto::wire::encode_literal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn socket_info() -> Arc<SocketInfo> {
    Arc::new(SocketInfo {
        driver: "example.dra.dev".into(),
        kind: "registration",
        path: "/var/lib/kubelet/plugins_registry/example.dra.dev-reg.sock".into(),
        metrics: Metrics::new(),
    })
}

/// An h2 server on `io` that answers every request 200 and reports the
/// authority it saw (`None` when absent).
fn serve<T>(io: T) -> tokio::sync::mpsc::UnboundedReceiver<Option<String>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok(mut conn) = h2::server::handshake(io).await else {
            return;
        };
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            let _ = tx.send(request.uri().authority().map(|a| a.to_string()));
            let _ = respond.send_response(http::Response::new(()), true);
        }
    });
    rx
}

fn adapted(io: UnixStream, socket: &Arc<SocketInfo>) -> KubeletConn {
    KubeletConn::new(io, Arc::clone(socket))
}

/// Frames written by hand, as a client that h2 cannot imitate sends them.
struct RawClient {
    io: UnixStream,
    read: BytesMut,
}

/// What the server answered on a stream.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Headers,
    Reset(&'static str),
    GoAway(&'static str),
}

impl RawClient {
    async fn start(mut io: UnixStream) -> Self {
        io.write_all(frame::PREFACE).await.unwrap();
        // An empty SETTINGS frame, as grpc-go sends.
        let mut b = BytesMut::new();
        frame::FrameHeader {
            len: 0,
            kind: frame::SETTINGS,
            flags: 0,
            stream: 0,
        }
        .write(&mut b);
        io.write_all(&b).await.unwrap();
        RawClient {
            io,
            read: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// Read frames until the server answers `stream` (or the connection).
    async fn answer(&mut self, stream: u32) -> Answer {
        loop {
            while let Some(h) = frame::FrameHeader::peek(&self.read) {
                if self.read.len() < frame::HEADER_LEN + h.len {
                    break;
                }
                let f = self.read.split_to(frame::HEADER_LEN + h.len);
                let code = || frame::error_name(u32::from_be_bytes(f[9..13].try_into().unwrap()));
                match h.kind {
                    frame::SETTINGS if !h.has(frame::FLAG_ACK) => {
                        let mut ack = BytesMut::new();
                        frame::FrameHeader {
                            len: 0,
                            kind: frame::SETTINGS,
                            flags: frame::FLAG_ACK,
                            stream: 0,
                        }
                        .write(&mut ack);
                        self.io.write_all(&ack).await.unwrap();
                    }
                    frame::HEADERS if h.stream == stream => return Answer::Headers,
                    frame::RST_STREAM if h.stream == stream => return Answer::Reset(code()),
                    frame::GOAWAY => {
                        let code = frame::error_name(u32::from_be_bytes(f[13..17].try_into().unwrap()));
                        return Answer::GoAway(code);
                    }
                    _ => {}
                }
            }
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), self.io.read_buf(&mut self.read))
                .await
                .expect("the server answers")
                .unwrap();
            assert!(
                n > 0,
                "the server closed the connection without answering stream {stream}"
            );
        }
    }
}

fn literal_block(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        encode_literal(&mut block, name, value);
    }
    block
}

fn grpc_request(authority: Option<&[u8]>) -> Vec<u8> {
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/pluginregistration.Registration/GetInfo"),
    ];
    if let Some(a) = authority {
        headers.push((b":authority", a));
    }
    headers.extend([
        (&b"content-type"[..], &b"application/grpc"[..]),
        (b"user-agent", b"grpc-go/1.33.3"),
        (b"te", b"trailers"),
    ]);
    literal_block(&headers)
}

/// HEADERS (+ CONTINUATION) frames carrying `block`, the way an unusual but
/// valid client may send them: padded, with priority fields, split in two.
fn header_frames(stream: u32, block: &[u8], padded: bool, priority: bool, split: bool) -> Vec<u8> {
    let (first, second) = if split {
        block.split_at(block.len() / 2)
    } else {
        (block, &[][..])
    };
    let mut payload = Vec::new();
    let mut flags = frame::FLAG_END_STREAM;
    if padded {
        flags |= frame::FLAG_PADDED;
        payload.push(7);
    }
    if priority {
        flags |= frame::FLAG_PRIORITY;
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
    }
    payload.extend_from_slice(first);
    if padded {
        payload.extend_from_slice(&[0; 7]);
    }
    if !split {
        flags |= frame::FLAG_END_HEADERS;
    }
    let mut out = BytesMut::new();
    frame::FrameHeader {
        len: payload.len(),
        kind: frame::HEADERS,
        flags,
        stream,
    }
    .write(&mut out);
    out.put_slice(&payload);
    if split {
        frame::FrameHeader {
            len: second.len(),
            kind: frame::CONTINUATION,
            flags: frame::FLAG_END_HEADERS,
            stream,
        }
        .write(&mut out);
        out.put_slice(second);
    }
    out.to_vec()
}

const RAW_PATH: &[u8] = b"/var/lib/kubelet/plugins_registry/example.dra.dev-reg.sock";
const PERCENT_ENCODED: &[u8] = b"%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fexample.dra.dev-reg.sock";

#[tokio::test]
async fn without_the_adapter_h2_refuses_the_authorities_kubelet_clients_send() {
    // The premise of this module: if h2 ever accepts these, the adapter can go.
    for authority in [RAW_PATH, PERCENT_ENCODED, b""] {
        let (client, server) = UnixStream::pair().unwrap();
        let _seen = serve(server);
        let mut client = RawClient::start(client).await;
        client
            .send(&header_frames(1, &grpc_request(Some(authority)), false, false, false))
            .await;
        assert_eq!(client.answer(1).await, Answer::Reset("PROTOCOL_ERROR"));
    }
}

#[tokio::test]
async fn every_authority_a_kubelet_client_sends_is_accepted() {
    let socket = socket_info();
    let cases: [(Option<&[u8]>, Option<&str>); 5] = [
        (Some(RAW_PATH), Some("localhost")),
        (Some(PERCENT_ENCODED), Some("localhost")),
        (Some(b""), Some("localhost")),
        (Some(b"localhost"), Some("localhost")),
        (None, None),
    ];
    for (authority, expected) in cases {
        for (padded, priority, split) in [
            (false, false, false),
            (true, true, false),
            (true, false, true),
            (false, true, true),
        ] {
            let (client, server) = UnixStream::pair().unwrap();
            let mut seen = serve(adapted(server, &socket));
            let mut client = RawClient::start(client).await;
            // Two requests on one connection: stream ids 1 and 3.
            for stream in [1, 3] {
                client
                    .send(&header_frames(
                        stream,
                        &grpc_request(authority),
                        padded,
                        priority,
                        split,
                    ))
                    .await;
                let case = format!("authority {authority:?}, padded {padded}, priority {priority}, split {split}");
                assert_eq!(client.answer(stream).await, Answer::Headers, "{case}");
                assert_eq!(seen.recv().await.unwrap().as_deref(), expected, "{case}");
            }
        }
    }
    let metrics = socket.metrics.encode();
    assert!(
        metrics
            .contains(r#"dra_host_http2_authority_replaced_total{driver="example.dra.dev",socket="registration"} 24"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_real_hpack_encoder_with_its_dynamic_table_is_followed() {
    // h2's client indexes headers and Huffman-codes strings: later requests
    // refer to the table entries of earlier ones.
    let (client, server) = UnixStream::pair().unwrap();
    let mut seen = serve(adapted(server, &socket_info()));
    let (mut send, conn) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(conn);
    for i in 0..20 {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://localhost/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources?call={i}"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-repeated", "the same value every time")
            .body(())
            .unwrap();
        send = send.ready().await.unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200, "request {i}");
        assert_eq!(seen.recv().await.unwrap().as_deref(), Some("localhost"));
    }
}

#[tokio::test]
async fn large_header_blocks_are_split_at_the_servers_frame_size() {
    let (client, server) = UnixStream::pair().unwrap();
    let mut seen = serve(adapted(server, &socket_info()));
    let mut client = RawClient::start(client).await;
    let big = vec![b'v'; 12_000];
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/x"),
        (b":authority", RAW_PATH),
    ];
    // Two 12 KB values: 24 KB of literals, more than one 16 KiB frame.
    headers.push((b"x-one", &big));
    headers.push((b"x-two", &big));
    let block = literal_block(&headers);
    // Sent in frames of at most 16 KiB, as the client must.
    let (a, b) = block.split_at(16_000);
    let mut out = BytesMut::new();
    frame::FrameHeader {
        len: a.len(),
        kind: frame::HEADERS,
        flags: frame::FLAG_END_STREAM,
        stream: 1,
    }
    .write(&mut out);
    out.put_slice(a);
    frame::FrameHeader {
        len: b.len(),
        kind: frame::CONTINUATION,
        flags: frame::FLAG_END_HEADERS,
        stream: 1,
    }
    .write(&mut out);
    out.put_slice(b);
    client.send(&out).await;
    assert_eq!(client.answer(1).await, Answer::Headers);
    assert_eq!(seen.recv().await.unwrap().as_deref(), Some("localhost"));
}

#[tokio::test]
async fn data_and_other_frames_pass_byte_for_byte() {
    let socket = socket_info();
    let (client, server) = UnixStream::pair().unwrap();
    // The adapter in front of a plain socket: what the "server" reads is
    // exactly what the adapter hands on.
    let mut conn = adapted(server, &socket);
    let mut client = client;
    let mut sent = BytesMut::new();
    sent.put_slice(frame::PREFACE);
    frame::FrameHeader {
        len: 6,
        kind: frame::SETTINGS,
        flags: 0,
        stream: 0,
    }
    .write(&mut sent);
    sent.put_slice(&[0, 4, 0, 1, 0, 0]);
    let payload: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    frame::FrameHeader {
        len: payload.len(),
        kind: frame::DATA,
        flags: 0,
        stream: 1,
    }
    .write(&mut sent);
    sent.put_slice(&payload);
    frame::FrameHeader {
        len: 4,
        kind: 0x8,
        flags: 0,
        stream: 0,
    }
    .write(&mut sent);
    sent.put_slice(&[0, 1, 0, 0]);
    let sent = sent.freeze();
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            // In small pieces, so frames straddle reads.
            for piece in sent.chunks(1000) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
        })
    };
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(Bytes::from(got), sent);
}

#[tokio::test]
async fn refused_requests_are_counted_with_their_code() {
    let socket = socket_info();
    let (client, server) = UnixStream::pair().unwrap();
    let _seen = serve(adapted(server, &socket));
    let mut client = RawClient::start(client).await;
    // `te: gzip` is a stream error in HTTP/2.
    let block = literal_block(&[
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/x"),
        (b"te", b"gzip"),
    ]);
    client.send(&header_frames(1, &block, false, false, false)).await;
    assert_eq!(client.answer(1).await, Answer::Reset("PROTOCOL_ERROR"));
    // An undecodable block (an index past both tables) is a connection error.
    client.send(&header_frames(3, &[0xff, 0x7f], false, false, false)).await;
    assert_eq!(client.answer(3).await, Answer::GoAway("PROTOCOL_ERROR"));
    let metrics = socket.metrics.encode();
    for scope in ["stream", "connection"] {
        let series = format!(
            r#"dra_host_http2_refusals_total{{driver="example.dra.dev",socket="registration",scope="{scope}",code="PROTOCOL_ERROR"}} 1"#
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
}

#[test]
fn the_server_frame_reader_follows_frames_split_anywhere() {
    let mut written = BytesMut::new();
    frame::FrameHeader {
        len: 12,
        kind: frame::SETTINGS,
        flags: 0,
        stream: 0,
    }
    .write(&mut written);
    written.put_slice(&[0, 1, 0, 0, 0x10, 0, 0, 5, 0, 0, 0x80, 0]);
    frame::FrameHeader {
        len: 3,
        kind: frame::DATA,
        flags: 0,
        stream: 1,
    }
    .write(&mut written);
    written.put_slice(b"abc");
    frame::FrameHeader {
        len: 4,
        kind: frame::RST_STREAM,
        flags: 0,
        stream: 5,
    }
    .write(&mut written);
    written.put_u32(7);
    frame::FrameHeader {
        len: 10,
        kind: frame::GOAWAY,
        flags: 0,
        stream: 0,
    }
    .write(&mut written);
    written.put_u32(5);
    written.put_u32(1);
    written.put_slice(b"hi");
    for piece in [1, 2, 5, 9, 100] {
        let mut out = Outbound::default();
        let mut seen = Vec::new();
        for chunk in written.chunks(piece) {
            out.observe(chunk, |s| {
                seen.push(match s {
                    Seen::Settings(p) => format!("settings {p:?}"),
                    Seen::Headers(s) => format!("headers {s}"),
                    Seen::Reset { stream, code } => format!("reset {stream} {code}"),
                    Seen::GoAway {
                        last_stream,
                        code,
                        debug,
                    } => format!("goaway {last_stream} {code} {debug:?}"),
                })
            });
        }
        assert_eq!(
            seen,
            [
                "settings [0, 1, 0, 0, 16, 0, 0, 5, 0, 0, 128, 0]",
                "reset 5 7",
                "goaway 5 1 [104, 105]"
            ],
            "pieces of {piece}"
        );
    }
}

/// The HTTP/2 frame and header code the adapter runs on every kubelet
/// connection (`dra_proto::wire::ClientFrames`), fuzzed (issue 14, part 5):
/// generated client connections, encoded by a real HPACK encoder with its
/// dynamic table (and table size updates), framed with padding, priority
/// fields and CONTINUATION splits, interleaved with other frames, and cut
/// into arbitrary read sizes; and raw bytes after the preface.
mod fuzz {
    use crate::fuzzing::fuzz;
    use bytes::{BufMut, BytesMut};
    use dra_proto::wire::frame::{self, FrameHeader};
    use dra_proto::wire::{AuthorityRule, ClientFrames, Event, NORMALISED_AUTHORITY, is_valid_authority};
    use proptest::prelude::*;

    /// One request of a generated connection.
    #[derive(Clone, Debug)]
    struct Request {
        authority: Option<Vec<u8>>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
        /// A dynamic table size update (RFC 7541 §6.3) at the block's start.
        table_size: Option<usize>,
        padding: Option<u8>,
        priority: Option<[u8; 5]>,
        /// Where the block is cut into HEADERS + CONTINUATION frames (fractions of its length).
        cuts: Vec<u8>,
        end_stream: bool,
        /// Frames the client sends after the request's headers: (type, flags, payload).
        after: Vec<(u8, u8, Vec<u8>)>,
    }

    fn authority() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            Just(None),
            Just(Some(
                b"/var/lib/kubelet/plugins_registry/example.dra.dev-reg.sock".to_vec()
            )),
            Just(Some(
                b"%2Fvar%2Flib%2Fkubelet%2Fplugins%2Fexample.dra.dev%2Fdra.sock".to_vec()
            )),
            Just(Some(b"localhost".to_vec())),
            Just(Some(Vec::new())),
            proptest::collection::vec(any::<u8>(), 0..48).prop_map(Some),
        ]
    }

    fn request() -> impl Strategy<Value = Request> {
        let header = (
            prop_oneof![
                Just(b"grpc-timeout".to_vec()),
                Just(b"user-agent".to_vec()),
                Just(b"x-repeated".to_vec()),
                proptest::collection::vec(any::<u8>(), 1..24),
            ],
            prop_oneof![
                Just(b"the same value every time".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..64),
            ],
        );
        // A frame a client sends between header blocks: DATA, PRIORITY,
        // RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, or an unknown type.
        let other = (
            prop_oneof![Just(0u8), Just(2), Just(3), Just(4), Just(6), Just(8), Just(0xfa)],
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        );
        (
            authority(),
            proptest::collection::vec(header, 0..5),
            proptest::option::of(0usize..=4096),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<[u8; 5]>()),
            proptest::collection::vec(any::<u8>(), 0..3),
            any::<bool>(),
            proptest::collection::vec(other, 0..3),
        )
            .prop_map(
                |(authority, extra, table_size, padding, priority, cuts, end_stream, after)| Request {
                    authority,
                    extra,
                    table_size,
                    padding,
                    priority,
                    cuts,
                    end_stream,
                    after,
                },
            )
    }

    /// A header block's fields, in order.
    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    /// The connection's bytes, and what the server must get from the adapter:
    /// each request's headers (`:authority` as the rule leaves it) and the
    /// other frames byte for byte.
    struct Connection {
        bytes: Vec<u8>,
        expected_headers: Vec<Fields>,
        expected_other: Vec<Vec<u8>>,
    }

    fn connection(requests: &[Request]) -> Connection {
        let mut encoder = loona_hpack::Encoder::new();
        let mut out = BytesMut::new();
        out.put_slice(frame::PREFACE);
        let (mut expected_headers, mut expected_other) = (Vec::new(), Vec::new());
        for (i, r) in requests.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            let path = format!("/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources?{i}").into_bytes();
            let mut headers: Fields = vec![
                (b":method".to_vec(), b"POST".to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
                (b":path".to_vec(), path),
            ];
            if let Some(a) = &r.authority {
                headers.push((b":authority".to_vec(), a.clone()));
            }
            headers.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
            headers.extend(r.extra.iter().cloned());
            let mut block = Vec::new();
            if let Some(size) = r.table_size {
                encoder.set_max_table_size(size);
                loona_hpack::encoder::encode_integer_into(size, 5, 0x20, &mut block).unwrap();
            }
            encoder
                .encode_into(headers.iter().map(|(n, v)| (&n[..], &v[..])), &mut block)
                .unwrap();
            expected_headers.push(
                headers
                    .into_iter()
                    .map(|(n, v)| {
                        let v = if n == b":authority" && !is_valid_authority(&v) {
                            NORMALISED_AUTHORITY.to_vec()
                        } else {
                            v
                        };
                        (n, v)
                    })
                    .collect(),
            );
            // Cut the block into fragments at the generated points.
            let mut points: Vec<usize> = r.cuts.iter().map(|&c| usize::from(c) * block.len() / 256).collect();
            points.sort_unstable();
            points.dedup();
            let mut fragments = Vec::new();
            let mut start = 0;
            for p in points.into_iter().chain([block.len()]) {
                if p >= start {
                    fragments.push(&block[start..p]);
                    start = p;
                }
            }
            let last = fragments.len() - 1;
            for (j, fragment) in fragments.into_iter().enumerate() {
                let mut payload = Vec::new();
                let mut flags = if j == last { frame::FLAG_END_HEADERS } else { 0 };
                let kind = if j == 0 {
                    if r.end_stream {
                        flags |= frame::FLAG_END_STREAM;
                    }
                    if let Some(pad) = r.padding {
                        flags |= frame::FLAG_PADDED;
                        payload.push(pad);
                    }
                    if let Some(p) = r.priority {
                        flags |= frame::FLAG_PRIORITY;
                        payload.extend_from_slice(&p);
                    }
                    payload.extend_from_slice(fragment);
                    payload.resize(payload.len() + usize::from(r.padding.unwrap_or(0)), 0);
                    frame::HEADERS
                } else {
                    payload.extend_from_slice(fragment);
                    frame::CONTINUATION
                };
                FrameHeader {
                    len: payload.len(),
                    kind,
                    flags,
                    stream,
                }
                .write(&mut out);
                out.put_slice(&payload);
            }
            for (kind, flags, payload) in &r.after {
                let mut f = BytesMut::new();
                FrameHeader {
                    len: payload.len(),
                    kind: *kind,
                    flags: *flags,
                    stream,
                }
                .write(&mut f);
                f.put_slice(payload);
                out.put_slice(&f);
                expected_other.push(f.to_vec());
            }
        }
        Connection {
            bytes: out.to_vec(),
            expected_headers,
            expected_other,
        }
    }

    /// Feed `bytes` to a fresh adapter in reads of the given sizes, as a
    /// socket delivers them; returns what the server gets and the events.
    fn run(bytes: &[u8], reads: &[usize]) -> (Vec<u8>, Vec<Event>) {
        let mut frames = ClientFrames::new(AuthorityRule::ReplaceInvalid);
        let (mut input, mut output) = (BytesMut::new(), BytesMut::new());
        let mut events = Vec::new();
        let mut rest = bytes;
        let mut sizes = reads.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&rest.len())).clamp(1, rest.len());
            input.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            frames.process(&mut input, &mut output, &mut |e| events.push(e));
        }
        frames.finish(&mut input, &mut output);
        (output.to_vec(), events)
    }

    /// The server's view: header blocks decoded by a fresh HPACK decoder,
    /// every other frame as bytes.
    fn server_view(bytes: &[u8]) -> Result<(Vec<Fields>, Vec<Vec<u8>>), TestCaseError> {
        prop_assert!(bytes.starts_with(frame::PREFACE), "the preface passes first");
        let mut rest = &bytes[frame::PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let (mut blocks, mut other) = (Vec::new(), Vec::new());
        let mut open: Option<(u32, Vec<u8>)> = None;
        while !rest.is_empty() {
            let h = FrameHeader::peek(rest).ok_or_else(|| TestCaseError::fail("a cut frame header"))?;
            prop_assert!(rest.len() >= frame::HEADER_LEN + h.len, "a cut frame");
            prop_assert!(h.len <= frame::DEFAULT_MAX_FRAME_SIZE, "a frame over the server's size");
            let (f, tail) = rest.split_at(frame::HEADER_LEN + h.len);
            rest = tail;
            let payload = &f[frame::HEADER_LEN..];
            match (h.kind, &mut open) {
                (frame::HEADERS, None) => {
                    prop_assert!(!h.has(frame::FLAG_PADDED), "the adapter sends no padding");
                    let skip = if h.has(frame::FLAG_PRIORITY) { 5 } else { 0 };
                    open = Some((h.stream, payload[skip..].to_vec()));
                }
                (frame::CONTINUATION, Some((stream, block))) => {
                    prop_assert_eq!(*stream, h.stream);
                    block.extend_from_slice(payload);
                }
                (kind, open) => {
                    prop_assert!(open.is_none(), "a frame of type {} inside a header block", kind);
                    other.push(f.to_vec());
                    continue;
                }
            }
            if h.has(frame::FLAG_END_HEADERS) {
                let (_, block) = open.take().expect("open");
                let mut headers = Vec::new();
                decoder
                    .decode_with_cb(&block, |n, v| headers.push((n.to_vec(), v.to_vec())))
                    .map_err(|e| TestCaseError::fail(format!("the server cannot decode a block: {e:?}")))?;
                blocks.push(headers);
            }
        }
        prop_assert!(open.is_none(), "a header block left open");
        Ok((blocks, other))
    }

    #[test]
    fn fuzz_http2_client_frames() {
        let reads = proptest::collection::vec(1usize..200, 1..8);
        fuzz(
            "http2_client_frames",
            2,
            (proptest::collection::vec(request(), 1..6), reads),
            |(requests, reads)| {
                let c = connection(&requests);
                let (out, events) = run(&c.bytes, &reads);
                let blocks: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::Block { .. })).collect();
                prop_assert!(
                    !events.iter().any(|e| matches!(e, Event::GaveUp(_))),
                    "gave up on a valid connection: {:?}",
                    events
                );
                prop_assert_eq!(blocks.len(), requests.len());
                let (headers, other) = server_view(&out)?;
                prop_assert_eq!(headers, c.expected_headers);
                prop_assert_eq!(other, c.expected_other);
                Ok(())
            },
        );
        // Anything after the preface: no panic, nothing lost or invented.
        // Without a header block got through, the server gets the client's
        // bytes exactly.
        fuzz(
            "http2_client_frames_raw",
            1,
            (
                proptest::collection::vec(any::<u8>(), 0..512),
                proptest::collection::vec(1usize..64, 1..4),
            ),
            |(tail, reads)| {
                let bytes = [&frame::PREFACE[..], &tail].concat();
                let (out, events) = run(&bytes, &reads);
                if !events.iter().any(|e| matches!(e, Event::Block { .. })) {
                    prop_assert_eq!(out, bytes);
                }
                Ok(())
            },
        );
    }
}
