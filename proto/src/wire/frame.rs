//! The few HTTP/2 framing facts the connection adapter needs (RFC 9113 §4, §6):
//! the 9-octet frame header, the frame types and flags it looks at, and the
//! error-code names used in logs and metrics.

use bytes::BufMut;

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame header.
pub const HEADER_LEN: usize = 9;

/// The smallest `SETTINGS_MAX_FRAME_SIZE` a peer may advertise, and the value
/// in force until it advertises one (RFC 9113 §6.5.2). The host's server
/// (tonic over h2) advertises none.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16_384;

/// `SETTINGS_HEADER_TABLE_SIZE` until a peer advertises another (RFC 9113 §6.5.2).
pub const DEFAULT_HEADER_TABLE_SIZE: usize = 4_096;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
/// On SETTINGS: this frame acknowledges the peer's settings.
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            // The reserved high bit is not part of the stream identifier.
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Parse the header at the start of `b`, if `b` holds one.
    pub fn peek(b: &[u8]) -> Option<Self> {
        b.get(..HEADER_LEN)
            .map(|h| Self::parse(h.try_into().expect("slice of HEADER_LEN")))
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub fn write(&self, out: &mut impl BufMut) {
        debug_assert!(self.len < 1 << 24);
        out.put_uint(self.len as u64, 3);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream);
    }
}

/// The name of an HTTP/2 error code (RFC 9113 §7), as logs and metrics show it.
pub fn error_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "UNKNOWN_ERROR_CODE",
    }
}

/// Whether a server's RST_STREAM or GOAWAY with this code means it refused
/// what the client sent. NO_ERROR is a graceful GOAWAY; CANCEL is the server
/// dropping a stream it no longer needs (a health stream whose watcher went).
pub fn is_refusal(code: u32) -> bool {
    !matches!(code, 0x0 | 0x8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_ignores_the_reserved_bit() {
        let h = FrameHeader {
            len: 0x01_02_03,
            kind: HEADERS,
            flags: FLAG_END_HEADERS | FLAG_PADDED,
            stream: 0x7fff_fffd,
        };
        let mut b = Vec::new();
        h.write(&mut b);
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(FrameHeader::peek(&b), Some(h));
        b[5] |= 0x80;
        assert_eq!(FrameHeader::peek(&b).unwrap().stream, 0x7fff_fffd);
        assert_eq!(FrameHeader::peek(&b[..8]), None);
    }

    #[test]
    fn refusals_are_the_error_codes_other_than_no_error_and_cancel() {
        assert!(!is_refusal(0x0));
        assert!(!is_refusal(0x8));
        assert!(is_refusal(0x1));
        assert!(is_refusal(0x7));
        assert_eq!(error_name(0x9), "COMPRESSION_ERROR");
        assert_eq!(error_name(0x42), "UNKNOWN_ERROR_CODE");
    }
}
