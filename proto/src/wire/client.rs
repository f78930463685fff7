//! The byte stream a client sends, rewritten on its way to the server:
//! the preface and every frame pass byte for byte, except header blocks
//! (HEADERS + CONTINUATION), which [`HeaderRewriter`] decodes and encodes
//! again under an [`AuthorityRule`].

use super::frame::{self, FrameHeader};
use super::headers::{AuthorityRule, HeaderRewriter, RequestSummary};
use bytes::BytesMut;

/// A header block larger than this is passed through unread: the server's
/// own header-list limit (16 KiB by default in hyper) refuses it long before.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// What [`ClientFrames::process`] reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A request's (or trailers') header block went through.
    Block { stream: u32, summary: RequestSummary },
    /// The rewriter stopped following the connection, for this reason; the
    /// rest passes through untouched, and the server sees (and refuses) the
    /// client's own bytes.
    GaveUp(String),
}

/// Where the client's byte stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the 24-octet connection preface has been seen whole.
    Preface,
    /// At a frame boundary.
    Frame,
    /// Inside the payload of a frame that passes through: this many bytes left.
    Payload(usize),
    /// Everything passes through untouched from here on.
    Passthrough,
}

/// The rewriter of one connection's client-to-server bytes.
pub struct ClientFrames {
    state: State,
    /// A header block whose END_HEADERS has not arrived yet.
    block: Option<PendingBlock>,
    rewriter: HeaderRewriter,
    /// Scratch space for a re-encoded block.
    encoded: Vec<u8>,
    /// The server's SETTINGS_MAX_FRAME_SIZE.
    max_frame_size: usize,
}

struct PendingBlock {
    /// The HEADERS frame's header.
    first: FrameHeader,
    /// PRIORITY fields of the HEADERS frame, re-sent as they came.
    priority: Option<[u8; 5]>,
    /// The header block fragments so far, padding removed.
    fragment: Vec<u8>,
    /// The frames as they came, for pass-through if the block cannot be used.
    raw: BytesMut,
}

impl ClientFrames {
    pub fn new(rule: AuthorityRule) -> Self {
        ClientFrames {
            state: State::Preface,
            block: None,
            rewriter: HeaderRewriter::new(rule),
            encoded: Vec::new(),
            max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
        }
    }

    /// The server advertised SETTINGS_MAX_FRAME_SIZE.
    pub fn set_max_frame_size(&mut self, size: usize) {
        self.max_frame_size = size.clamp(frame::DEFAULT_MAX_FRAME_SIZE, (1 << 24) - 1);
    }

    /// The server advertised SETTINGS_HEADER_TABLE_SIZE.
    pub fn allow_table_size(&mut self, size: usize) {
        self.rewriter.allow_table_size(size);
    }

    /// Move as much of `input` to `output` as can be processed now, calling
    /// `events` for each header block and for giving up.
    pub fn process(&mut self, input: &mut BytesMut, output: &mut BytesMut, events: &mut impl FnMut(Event)) {
        let mut io = Io { input, output, events };
        loop {
            match self.state {
                State::Preface => {
                    let n = io.input.len().min(frame::PREFACE.len());
                    if io.input[..n] != frame::PREFACE[..n] {
                        // Not HTTP/2 with prior knowledge: the server says so.
                        self.give_up(&mut io, "the client did not start with the HTTP/2 preface".into());
                    } else if n < frame::PREFACE.len() {
                        return;
                    } else {
                        io.pass(frame::PREFACE.len());
                        self.state = State::Frame;
                    }
                }
                State::Passthrough => {
                    let n = io.input.len();
                    io.pass(n);
                    return;
                }
                State::Payload(left) => {
                    let n = left.min(io.input.len());
                    io.pass(n);
                    if n < left {
                        self.state = State::Payload(left - n);
                        return;
                    }
                    self.state = State::Frame;
                }
                State::Frame => {
                    let Some(h) = FrameHeader::peek(io.input) else {
                        return;
                    };
                    let header_block = matches!(h.kind, frame::HEADERS | frame::CONTINUATION);
                    if self.block.is_some() && h.kind != frame::CONTINUATION {
                        self.give_up(&mut io, format!("a frame of type {} inside a header block", h.kind));
                    } else if header_block && h.len > self.max_frame_size {
                        // The server refuses it (FRAME_SIZE_ERROR); do not buffer it.
                        self.give_up(&mut io, format!("a header frame of {} bytes", h.len));
                    } else if header_block {
                        if io.input.len() < frame::HEADER_LEN + h.len {
                            return;
                        }
                        let raw = io.input.split_to(frame::HEADER_LEN + h.len);
                        self.header_frame(&mut io, h, raw);
                    } else {
                        io.pass(frame::HEADER_LEN);
                        self.state = State::Payload(h.len);
                    }
                }
            }
        }
    }

    /// The client's stream ended: whatever is held goes out as it came, so
    /// the server sees the same truncated frame the client sent.
    pub fn finish(&mut self, input: &mut BytesMut, output: &mut BytesMut) {
        if let Some(block) = self.block.take() {
            output.unsplit(block.raw);
        }
        output.unsplit(input.split());
    }

    /// Stop following the connection: whatever is held goes out as it came.
    fn give_up(&mut self, io: &mut Io<'_, impl FnMut(Event)>, why: String) {
        if let Some(block) = self.block.take() {
            io.output.unsplit(block.raw);
        }
        (io.events)(Event::GaveUp(why));
        self.state = State::Passthrough;
    }

    fn header_frame(&mut self, io: &mut Io<'_, impl FnMut(Event)>, h: FrameHeader, raw: BytesMut) {
        let payload = &raw[frame::HEADER_LEN..];
        let fragment = if h.kind == frame::HEADERS {
            match split_headers_payload(h, payload) {
                Some((priority, fragment)) => {
                    self.block = Some(PendingBlock {
                        first: h,
                        priority,
                        fragment: Vec::new(),
                        raw: BytesMut::new(),
                    });
                    fragment
                }
                None => {
                    io.output.unsplit(raw);
                    return self.give_up(io, "a HEADERS frame shorter than its padding or priority fields".into());
                }
            }
        } else {
            match &self.block {
                Some(b) if b.first.stream == h.stream => payload,
                _ => {
                    io.output.unsplit(raw);
                    return self.give_up(io, "a CONTINUATION frame outside a header block".into());
                }
            }
        };
        let block = self.block.as_mut().expect("a header block is open");
        if block.fragment.len() + fragment.len() > MAX_HEADER_BLOCK {
            block.raw.unsplit(raw);
            return self.give_up(io, format!("a header block over {MAX_HEADER_BLOCK} bytes"));
        }
        block.fragment.extend_from_slice(fragment);
        block.raw.unsplit(raw);
        if h.has(frame::FLAG_END_HEADERS) {
            self.finish_block(io);
        }
    }

    /// A whole header block is here: decode it, rewrite it, frame it again.
    fn finish_block(&mut self, io: &mut Io<'_, impl FnMut(Event)>) {
        let block = self.block.take().expect("a header block is open");
        self.encoded.clear();
        match self.rewriter.rewrite(&block.fragment, &mut self.encoded) {
            Ok(summary) => {
                self.write_block(io.output, &block);
                (io.events)(Event::Block {
                    stream: block.first.stream,
                    summary,
                });
            }
            Err(e) => {
                self.block = Some(block);
                self.give_up(io, format!("undecodable header block (HPACK: {e})"));
            }
        }
    }

    /// Frame `self.encoded` as HEADERS (+ CONTINUATION) for the server.
    fn write_block(&self, output: &mut BytesMut, block: &PendingBlock) {
        let priority_len = if block.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = self
            .encoded
            .split_at(self.encoded.len().min(self.max_frame_size - priority_len));
        output.reserve(self.encoded.len() + 2 * frame::HEADER_LEN + priority_len);
        FrameHeader {
            len: priority_len + first.len(),
            kind: frame::HEADERS,
            flags: block.first.flags & (frame::FLAG_END_STREAM | frame::FLAG_PRIORITY)
                | if rest.is_empty() { frame::FLAG_END_HEADERS } else { 0 },
            stream: block.first.stream,
        }
        .write(output);
        if let Some(p) = &block.priority {
            output.extend_from_slice(p);
        }
        output.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(self.max_frame_size));
            rest = tail;
            FrameHeader {
                len: chunk.len(),
                kind: frame::CONTINUATION,
                flags: if rest.is_empty() { frame::FLAG_END_HEADERS } else { 0 },
                stream: block.first.stream,
            }
            .write(output);
            output.extend_from_slice(chunk);
        }
    }
}

/// The PRIORITY fields and the header block fragment of a HEADERS frame's
/// payload (RFC 9113 §6.2), or `None` when padding or priority do not fit.
fn split_headers_payload(h: FrameHeader, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let (pad, rest) = if h.has(frame::FLAG_PADDED) {
        let (&pad, rest) = payload.split_first()?;
        (usize::from(pad), rest)
    } else {
        (0, payload)
    };
    let (priority, rest) = if h.has(frame::FLAG_PRIORITY) {
        let (p, rest) = rest.split_first_chunk::<5>()?;
        (Some(*p), rest)
    } else {
        (None, rest)
    };
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// The buffers and event sink of one [`ClientFrames::process`] call.
struct Io<'a, F> {
    input: &'a mut BytesMut,
    output: &'a mut BytesMut,
    events: &'a mut F,
}

impl<F> Io<'_, F> {
    /// Hand the next `n` input bytes to the server unchanged.
    fn pass(&mut self, n: usize) {
        let bytes = self.input.split_to(n);
        self.output.unsplit(bytes);
    }
}
