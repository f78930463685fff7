//! The host's end of the kubelet's HTTP/2 connections: every request gets
//! past hyper's h2 whatever `:authority` the kubelet's gRPC client sends, and
//! every refusal is visible.
//!
//! **Why.** The kubelet's grpc-go sends the socket path as `:authority`, which
//! hyper's h2 answers with RST_STREAM PROTOCOL_ERROR before tonic sees the
//! request, logging it only at debug level: the kubelet could never register
//! the plugin, and the host said nothing (details in [`dra_proto::wire`]).
//!
//! **What.** [`KubeletConn`] wraps each accepted Unix stream:
//! - client → server: [`ClientFrames`] passes the preface and every frame
//!   byte for byte, except header blocks, which are decoded and encoded again
//!   with an `:authority` h2 would refuse replaced by `localhost`. Anything it
//!   cannot follow (a broken header block, a frame inside a header block, an
//!   oversized block) switches it to pass-through for the rest of the
//!   connection, so the server sees the client's own bytes and answers with
//!   its own connection error.
//! - server → client: bytes pass through untouched while their frame headers
//!   are read, to learn the server's SETTINGS (maximum frame size, header
//!   table size) and to see every RST_STREAM and GOAWAY carrying an error:
//!   each is logged as a warning with the peer, the socket, the request and
//!   the likely reason, and counted in `dra_host_http2_refusals_total`.
//!
//! Alternatives considered: a fork or `[patch]` of h2 (not allowed, and
//! hyperium/h2 PR #487 has been open for years); asking the kubelet to send
//! `WithAuthority` (we do not control deployed kubelets); a gRPC server other
//! than tonic (the rest of the host is tonic, and the Rust alternatives parse
//! `:authority` the same way).

use crate::metrics::Metrics;
use bytes::{Buf, BytesMut};
use dra_proto::wire::{AuthorityRule, ClientFrames, Event, RequestSummary, frame, printable};
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// Requests remembered until the server answers them, for refusal logs. The
/// oldest is forgotten first; a gRPC client rarely has more streams open.
const MAX_TRACKED_STREAMS: usize = 128;

/// How much of a GOAWAY's debug data is kept for the log.
const MAX_GOAWAY_DEBUG: usize = 256;

/// Read from the socket at least this much at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Which socket a connection came in on: for logs and metric labels.
#[derive(Debug)]
pub struct SocketInfo {
    pub driver: String,
    /// `registration` or `dra`.
    pub kind: &'static str,
    pub path: PathBuf,
    pub metrics: Arc<Metrics>,
}

/// One accepted connection, adapted (see the module documentation).
pub struct KubeletConn {
    io: UnixStream,
    socket: Arc<SocketInfo>,
    peer: Peer,
    inbound: Inbound,
    outbound: Outbound,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    pid: Option<i32>,
    uid: Option<u32>,
}

impl std::fmt::Debug for KubeletConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletConn")
            .field("socket", &self.socket.path)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl KubeletConn {
    pub fn new(io: UnixStream, socket: Arc<SocketInfo>) -> Self {
        let cred = io.peer_cred().ok();
        KubeletConn {
            io,
            socket,
            peer: Peer {
                pid: cred.as_ref().and_then(|c| c.pid()),
                uid: cred.as_ref().map(|c| c.uid()),
            },
            inbound: Inbound::new(),
            outbound: Outbound::default(),
        }
    }
}

impl tonic::transport::server::Connected for KubeletConn {
    type ConnectInfo = <UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

// ---------------------------------------------------------------------------
// Client → server

struct Inbound {
    frames: ClientFrames,
    /// Read from the socket, not yet processed.
    input: BytesMut,
    /// Processed, not yet handed to the server.
    output: BytesMut,
    /// Requests the server has not answered yet, oldest first.
    requests: VecDeque<(u32, RequestSummary)>,
    /// Why the rewriter stopped following the connection, for the log of
    /// the server's GOAWAY that usually follows.
    gave_up: Option<String>,
    eof: bool,
}

impl Inbound {
    fn new() -> Self {
        Inbound {
            frames: ClientFrames::new(AuthorityRule::ReplaceInvalid),
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::with_capacity(READ_CHUNK),
            requests: VecDeque::new(),
            gave_up: None,
            eof: false,
        }
    }

    fn process(&mut self, socket: &SocketInfo) {
        let Inbound {
            frames,
            input,
            output,
            requests,
            gave_up,
            ..
        } = self;
        frames.process(input, output, &mut |event| match event {
            Event::Block { stream, summary } => {
                if let Some(original) = &summary.replaced_authority {
                    tracing::debug!(socket = %socket.path.display(), authority = %original, method = ?summary.path,
                        "replaced an :authority that the HTTP/2 server would refuse");
                    socket.metrics.http2_authority_replaced(&socket.driver, socket.kind);
                }
                // Requests only (trailers have no :path), once per stream.
                if summary.path.is_some() && !requests.iter().any(|(s, _)| *s == stream) {
                    if requests.len() == MAX_TRACKED_STREAMS {
                        requests.pop_front();
                    }
                    requests.push_back((stream, summary));
                }
            }
            Event::GaveUp(why) => {
                tracing::debug!(socket = %socket.path.display(), reason = %why,
                    "the HTTP/2 adapter passes the rest of this connection through");
                *gave_up = Some(why);
            }
        });
    }

    fn finish(&mut self) {
        self.eof = true;
        self.frames.finish(&mut self.input, &mut self.output);
    }

    fn take_request(&mut self, stream: u32) -> Option<RequestSummary> {
        let i = self.requests.iter().position(|(s, _)| *s == stream)?;
        self.requests.remove(i).map(|(_, r)| r)
    }
}

impl AsyncRead for KubeletConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let inbound = &mut this.inbound;
            if !inbound.output.is_empty() {
                let n = inbound.output.len().min(buf.remaining());
                buf.put_slice(&inbound.output[..n]);
                inbound.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if inbound.eof {
                return Poll::Ready(Ok(()));
            }
            inbound.input.reserve(READ_CHUNK);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut inbound.input
            ))?;
            if n == 0 {
                inbound.finish();
            } else {
                inbound.process(&this.socket);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Server → client

/// Reads the frame headers of what the server writes. Bytes are never changed.
#[derive(Default)]
struct Outbound {
    header: [u8; frame::HEADER_LEN],
    have: usize,
    state: OutState,
}

#[derive(Default)]
enum OutState {
    /// Reading a frame header (`have` bytes of it so far).
    #[default]
    Header,
    /// Skipping this many payload bytes.
    Skip(usize),
    /// Keeping the payload of an interesting frame: `keep` bytes of it, then
    /// skipping `skip` more.
    Keep {
        h: frame::FrameHeader,
        payload: Vec<u8>,
        keep: usize,
        skip: usize,
    },
}

/// A server frame the connection acts on.
enum Seen {
    Settings(Vec<u8>),
    Headers(u32),
    Reset {
        stream: u32,
        code: u32,
    },
    GoAway {
        last_stream: u32,
        code: u32,
        debug: Vec<u8>,
    },
}

impl Outbound {
    /// Follow `bytes`, which the server has just written; call `seen` for
    /// each complete frame of interest.
    fn observe(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Seen)) {
        while !bytes.is_empty() {
            match &mut self.state {
                OutState::Header => {
                    let n = (frame::HEADER_LEN - self.have).min(bytes.len());
                    self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                    self.have += n;
                    bytes = &bytes[n..];
                    if self.have < frame::HEADER_LEN {
                        return;
                    }
                    self.have = 0;
                    let h = frame::FrameHeader::parse(&self.header);
                    let keep = match h.kind {
                        frame::SETTINGS if !h.has(frame::FLAG_ACK) => h.len.min(6 * 64),
                        frame::RST_STREAM => h.len.min(4),
                        frame::GOAWAY => h.len.min(8 + MAX_GOAWAY_DEBUG),
                        frame::HEADERS => {
                            seen(Seen::Headers(h.stream));
                            0
                        }
                        _ => 0,
                    };
                    self.state = if keep > 0 {
                        OutState::Keep {
                            h,
                            payload: Vec::with_capacity(keep),
                            keep,
                            skip: h.len - keep,
                        }
                    } else {
                        OutState::Skip(h.len)
                    };
                    self.finish_keep(&mut seen);
                }
                OutState::Skip(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = OutState::Header;
                    }
                }
                OutState::Keep { payload, keep, .. } => {
                    let n = (*keep - payload.len()).min(bytes.len());
                    payload.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.finish_keep(&mut seen);
                }
            }
        }
    }

    /// A kept payload is complete: report it and skip the rest of the frame.
    fn finish_keep(&mut self, seen: &mut impl FnMut(Seen)) {
        let OutState::Keep { h, payload, keep, skip } = &mut self.state else {
            return;
        };
        if payload.len() < *keep {
            return;
        }
        let p = std::mem::take(payload);
        let word = |i: usize| {
            p.get(i..i + 4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        };
        match h.kind {
            frame::SETTINGS => seen(Seen::Settings(p.clone())),
            frame::RST_STREAM => {
                if let Some(code) = word(0) {
                    seen(Seen::Reset { stream: h.stream, code });
                }
            }
            frame::GOAWAY => {
                if let (Some(last), Some(code)) = (word(0), word(4)) {
                    seen(Seen::GoAway {
                        last_stream: last & 0x7fff_ffff,
                        code,
                        debug: p[8..].to_vec(),
                    });
                }
            }
            _ => {}
        }
        self.state = if *skip > 0 {
            OutState::Skip(*skip)
        } else {
            OutState::Header
        };
    }
}

impl KubeletConn {
    /// Act on what the server wrote (`bytes`, already sent).
    fn observe_written(&mut self, bytes: &[u8]) {
        let KubeletConn {
            outbound,
            inbound,
            socket,
            peer,
            ..
        } = self;
        outbound.observe(bytes, |seen| match seen {
            Seen::Settings(payload) => {
                for setting in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]) as usize;
                    match id {
                        frame::SETTINGS_MAX_FRAME_SIZE => inbound.frames.set_max_frame_size(value),
                        frame::SETTINGS_HEADER_TABLE_SIZE => inbound.frames.allow_table_size(value),
                        _ => {}
                    }
                }
            }
            Seen::Headers(stream) => {
                inbound.take_request(stream);
            }
            Seen::Reset { stream, code } => {
                let request = inbound.take_request(stream);
                if frame::is_refusal(code) {
                    refused(socket, peer, "stream", code, stream, request.as_ref(), None);
                }
            }
            Seen::GoAway {
                last_stream,
                code,
                debug,
            } => {
                if frame::is_refusal(code) {
                    // h2 treats some header faults (an upper-case name, an
                    // unknown pseudo-header) as connection errors: the
                    // newest unanswered request that broke a rule is the
                    // likely cause.
                    let reason = inbound
                        .gave_up
                        .clone()
                        .or_else(|| inbound.requests.iter().rev().find_map(|(_, r)| r.suspect.clone()));
                    let debug = (!debug.is_empty()).then(|| printable(&debug));
                    let detail = match (reason, debug) {
                        (Some(r), Some(d)) => Some(format!("{r}; server says: {d}")),
                        (Some(r), None) => Some(r),
                        (None, Some(d)) => Some(format!("server says: {d}")),
                        (None, None) => None,
                    };
                    refused(socket, peer, "connection", code, last_stream, None, detail);
                }
            }
        });
    }
}

/// The server refused something the client sent: say so where an operator looks.
fn refused(
    socket: &SocketInfo,
    peer: &Peer,
    scope: &'static str,
    code: u32,
    stream: u32,
    request: Option<&RequestSummary>,
    detail: Option<String>,
) {
    let code_name = frame::error_name(code);
    socket
        .metrics
        .http2_refusal(&socket.driver, socket.kind, scope, code_name);
    let reason = detail
        .or_else(|| request.and_then(|r| r.suspect.clone()))
        .unwrap_or_else(|| "no cause found in the request headers".to_owned());
    tracing::warn!(
        driver = %socket.driver,
        socket = %socket.path.display(),
        peer_pid = ?peer.pid,
        peer_uid = ?peer.uid,
        scope,
        code = code_name,
        stream,
        method = ?request.and_then(|r| r.path.as_deref()),
        reason = %reason,
        "the HTTP/2 server refused a client's {}",
        if scope == "stream" { "request" } else { "connection" }
    );
}

impl AsyncWrite for KubeletConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, data))?;
        this.observe_written(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let written = n;
        for buf in bufs {
            if n == 0 {
                break;
            }
            let k = buf.len().min(n);
            this.observe_written(&buf[..k]);
            n -= k;
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
