//! HPACK (RFC 7541): the decoder that follows a client's header blocks, and
//! the integer encoding the rewriter writes with.
//!
//! Why our own and not a crate's: the adapter decodes every request header
//! block the kubelet sends, on the claim path. The maintained pure-Rust
//! decoders either build their Huffman tables for each string (a `HashMap`
//! of 257 codes per string: 5 % of the host's CPU per prepare in a profile)
//! or validate values as h2 does, which the adapter must not do (the server
//! decides; the adapter only explains). Decoding is small and fully
//! specified: integers (§5.1), strings (§5.2), the static table (Appendix A),
//! the dynamic table (§4) and the Huffman code (Appendix B), which is
//! canonical, so its 257 code lengths define it. A maintained encoder
//! (loona-hpack) and decoder check this one in the tests and the fuzz target.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Why a header block could not be decoded. The connection's HPACK state is
/// unusable after any of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the block ends inside a field")]
    Truncated,
    #[error("an integer longer than HPACK allows")]
    IntegerOverflow,
    #[error("index {0} is in neither the static nor the dynamic table")]
    BadIndex(usize),
    #[error("invalid Huffman-coded string")]
    Huffman,
    #[error("dynamic table size update to {size} octets, above the {allowed} the server allows")]
    TableSizeAboveLimit { size: usize, allowed: usize },
    #[error("dynamic table size update after a header field")]
    LateTableSizeUpdate,
}

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The static table's index of `name` (first entry with that name), for the
/// names the encoder writes by index.
pub fn static_name_index(name: &[u8]) -> Option<usize> {
    STATIC_TABLE.iter().position(|(n, _)| *n == name).map(|i| i + 1)
}

/// An entry's size for the table's bound (§4.1): its octets plus 32.
const ENTRY_OVERHEAD: usize = 32;

/// The decoding side of one connection: the client's dynamic table and the
/// limit the server's `SETTINGS_HEADER_TABLE_SIZE` puts on it.
pub struct Decoder {
    dynamic: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Octets in `dynamic`, as §4.1 counts them.
    size: usize,
    /// The table's current maximum (the client's last size update).
    max_size: usize,
    /// What a size update may ask for.
    max_allowed: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Decoder {
    /// A decoder whose client may size its table up to `max_allowed`
    /// (the table starts at that size, as §4.2 and the HTTP/2 default say).
    pub fn new(max_allowed: usize) -> Self {
        Decoder {
            dynamic: VecDeque::new(),
            size: 0,
            max_size: max_allowed,
            max_allowed,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    pub fn set_max_allowed_table_size(&mut self, size: usize) {
        self.max_allowed = size;
    }

    /// Decode one complete header block, calling `field(name, value)` for each
    /// field in order.
    pub fn decode(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<(), DecodeError> {
        let mut buf = block;
        let mut fields = 0usize;
        while let Some(&first) = buf.first() {
            if first & 0x80 != 0 {
                // §6.1 Indexed Header Field.
                let index = integer(&mut buf, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value);
            } else if first & 0xe0 == 0x20 {
                // §6.3 Dynamic Table Size Update: only before the first field
                // (§4.2), as h2 checks.
                if fields > 0 {
                    return Err(DecodeError::LateTableSizeUpdate);
                }
                let size = integer(&mut buf, 5)?;
                if size > self.max_allowed {
                    return Err(DecodeError::TableSizeAboveLimit {
                        size,
                        allowed: self.max_allowed,
                    });
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // §6.2: with incremental indexing (01), without (0000) or
                // never indexed (0001).
                let indexing = first & 0xc0 == 0x40;
                let index = integer(&mut buf, if indexing { 6 } else { 4 })?;
                let mut name = std::mem::take(&mut self.name);
                let mut value = std::mem::take(&mut self.value);
                let decoded = (|| {
                    name.clear();
                    if index == 0 {
                        string(&mut buf, &mut name)?;
                    } else {
                        name.extend_from_slice(self.entry(index)?.0);
                    }
                    value.clear();
                    string(&mut buf, &mut value)
                })();
                if decoded.is_ok() {
                    field(&name, &value);
                    if indexing {
                        self.insert(&name, &value);
                    }
                }
                self.name = name;
                self.value = value;
                decoded?;
            }
            fields += 1;
        }
        Ok(())
    }

    /// Entry `index` of the static table followed by the dynamic one (§2.3.3).
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        match index {
            0 => Err(DecodeError::BadIndex(0)),
            i if i <= STATIC_TABLE.len() => Ok(STATIC_TABLE[i - 1]),
            i => self
                .dynamic
                .get(i - STATIC_TABLE.len() - 1)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(DecodeError::BadIndex(i)),
        }
    }

    /// Add an entry (§4.4): evict until it fits; one larger than the whole
    /// table empties it and is not added.
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.dynamic.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.dynamic.push_front((name.to_vec(), value.to_vec()));
        self.size += size;
    }

    /// Evict the oldest entries until `room` more octets fit (§4.3).
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((n, v)) = self.dynamic.pop_back() else { break };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}

/// Take an integer with an N-bit prefix (§5.1) off the front of `buf`.
fn integer(buf: &mut &[u8], prefix_bits: u8) -> Result<usize, DecodeError> {
    let (&first, rest) = buf.split_first().ok_or(DecodeError::Truncated)?;
    *buf = rest;
    let max = (1usize << prefix_bits) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok(value);
    }
    // Five continuation octets carry 35 bits: more than any length or index
    // a header block can use.
    for shift in (0..35).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or(DecodeError::Truncated)?;
        *buf = rest;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::IntegerOverflow)
}

/// Take a string literal (§5.2) off the front of `buf`, appending its
/// octets (Huffman-decoded where flagged) to `out`.
fn string(buf: &mut &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let huffman = buf.first().ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = integer(buf, 7)?;
    if len > buf.len() {
        return Err(DecodeError::Truncated);
    }
    let (octets, rest) = buf.split_at(len);
    *buf = rest;
    if huffman {
        huffman_decode(octets, out)
    } else {
        out.extend_from_slice(octets);
        Ok(())
    }
}

/// Append the integer `value` with an N-bit prefix (§5.1), the prefix
/// octet's other bits set to `leading`.
pub fn encode_integer(out: &mut Vec<u8>, value: usize, prefix_bits: u8, leading: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(leading | value as u8);
        return;
    }
    out.push(leading | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// The length in bits of each symbol's Huffman code, octets 0–255 then EOS
/// (RFC 7541 Appendix B). The code is canonical: codes are assigned in order
/// of (length, symbol), so the lengths define it.
const HUFFMAN_CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20 ' '
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30 '0'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40 '@'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50 'P'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60 '`'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70 'p'
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

const EOS: u16 = 256;

/// The Huffman code as a state machine read four bits at a time. A state is
/// an inner node of the code tree (0 = the root: a symbol just ended); each
/// of its 16 transitions says where four more bits lead and which symbol,
/// if any, they completed (codes are at least 5 bits, so at most one).
struct HuffmanTable {
    transitions: Vec<[Transition; 16]>,
    /// Whether the input may end in this state: at the root, or in padding,
    /// which must be at most 7 bits of the EOS code's leading ones (§5.2).
    may_end: Vec<bool>,
}

#[derive(Clone, Copy, Default)]
struct Transition {
    next: u8,
    /// The completed symbol, or [`Transition::NONE`].
    symbol: u16,
}

impl Transition {
    const NONE: u16 = u16::MAX;
    /// Four bits that complete EOS: an error wherever it appears.
    const INVALID: u16 = u16::MAX - 1;
}

fn huffman_table() -> &'static HuffmanTable {
    static TABLE: OnceLock<HuffmanTable> = OnceLock::new();
    TABLE.get_or_init(build_huffman_table)
}

/// Each symbol's (code, length in bits), from the lengths: in order of
/// (length, symbol), each code is the previous one plus one, shifted left by
/// the growth in length.
fn huffman_codes() -> [(u32, u8); 257] {
    let mut symbols: Vec<usize> = (0..HUFFMAN_CODE_LENGTHS.len()).collect();
    symbols.sort_by_key(|&s| (HUFFMAN_CODE_LENGTHS[s], s));
    let mut codes = [(0, 0); 257];
    let (mut code, mut previous_len) = (0u32, HUFFMAN_CODE_LENGTHS[symbols[0]]);
    for (i, &symbol) in symbols.iter().enumerate() {
        let len = HUFFMAN_CODE_LENGTHS[symbol];
        if i > 0 {
            code = (code + 1) << (len - previous_len);
        }
        previous_len = len;
        codes[symbol] = (code, len);
    }
    codes
}

fn build_huffman_table() -> HuffmanTable {
    // The tree: inner nodes with two children each, a child either an inner
    // node or a leaf (symbol).
    #[derive(Clone, Copy)]
    enum Child {
        Empty,
        Node(usize),
        Leaf(u16),
    }
    let mut nodes: Vec<[Child; 2]> = vec![[Child::Empty; 2]];
    // (depth, all bits so far were ones) per inner node.
    let mut paths: Vec<(u8, bool)> = vec![(0, true)];
    for (symbol, (code, len)) in (0..=EOS).zip(huffman_codes()) {
        let mut node = 0;
        for bit in (0..len).rev() {
            let b = ((code >> bit) & 1) as usize;
            if bit == 0 {
                nodes[node][b] = Child::Leaf(symbol);
                break;
            }
            node = match nodes[node][b] {
                Child::Node(n) => n,
                Child::Empty => {
                    let (depth, ones) = paths[node];
                    nodes.push([Child::Empty; 2]);
                    paths.push((depth + 1, ones && b == 1));
                    nodes[node][b] = Child::Node(nodes.len() - 1);
                    nodes.len() - 1
                }
                Child::Leaf(_) => unreachable!("a prefix code has no leaf on another code's path"),
            };
        }
    }
    assert_eq!(nodes.len(), 256, "257 symbols make 256 inner nodes");
    let transitions = (0..nodes.len())
        .map(|state| {
            let mut row = [Transition::default(); 16];
            for (nibble, t) in row.iter_mut().enumerate() {
                let mut node = state;
                let mut symbol = Transition::NONE;
                for bit in (0..4).rev() {
                    match nodes[node][(nibble >> bit) & 1] {
                        Child::Node(n) => node = n,
                        Child::Leaf(EOS) => {
                            symbol = Transition::INVALID;
                            break;
                        }
                        Child::Leaf(s) => {
                            symbol = s;
                            node = 0;
                        }
                        Child::Empty => unreachable!("the code is complete"),
                    }
                }
                *t = Transition {
                    next: node as u8,
                    symbol,
                };
            }
            row
        })
        .collect();
    let may_end = paths
        .iter()
        .map(|&(depth, ones)| depth == 0 || ones && depth <= 7)
        .collect();
    HuffmanTable { transitions, may_end }
}

/// Decode a Huffman-coded string (§5.2), appending to `out`.
fn huffman_decode(octets: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let table = huffman_table();
    out.reserve(octets.len() * 8 / 5);
    let mut state = 0usize;
    for &octet in octets {
        for nibble in [octet >> 4, octet & 0x0f] {
            let t = table.transitions[state][usize::from(nibble)];
            match t.symbol {
                Transition::NONE => {}
                Transition::INVALID => return Err(DecodeError::Huffman),
                s => out.push(s as u8),
            }
            state = usize::from(t.next);
        }
    }
    if table.may_end[state] {
        Ok(())
    } else {
        Err(DecodeError::Huffman)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
        let mut fields = Vec::new();
        decoder.decode(block, |n, v| {
            fields.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(fields)
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc_7541_c3_requests_without_huffman_share_one_table() {
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode_all(&mut d, &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d")).unwrap(),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.size, 57);
        assert_eq!(
            decode_all(&mut d, &hex("8286 84be 5808 6e6f 2d63 6163 6865")).unwrap(),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(d.size, 110);
        assert_eq!(
            decode_all(
                &mut d,
                &hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65")
            )
            .unwrap(),
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode_all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap(),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        decode_all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            decode_all(
                &mut d,
                &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")
            )
            .unwrap(),
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc_7541_c5_responses_evict_the_oldest_entries() {
        // A 256-octet table: the third response evicts.
        let mut d = Decoder::new(256);
        decode_all(
            &mut d,
            &hex(
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
                 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
                 6c65 2e63 6f6d",
            ),
        )
        .unwrap();
        assert_eq!(d.size, 222);
        decode_all(&mut d, &hex("4803 3330 37c1 c0bf")).unwrap();
        assert_eq!(d.size, 222);
        let third = decode_all(
            &mut d,
            &hex(
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
                 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
                 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
                 3d31",
            ),
        )
        .unwrap();
        assert_eq!(third[0], (":status".into(), "200".into()));
        assert_eq!(third[5].0, "set-cookie");
        assert_eq!(d.size, 215);
        assert_eq!(d.dynamic.len(), 3);
    }

    /// Huffman-code `octets` with the codes derived from our lengths, padded
    /// with ones.
    fn huffman_encode(octets: &[u8]) -> Vec<u8> {
        let codes = huffman_codes();
        let (mut out, mut bits, mut pending) = (Vec::new(), 0u32, 0u64);
        for &o in octets {
            let (code, len) = codes[usize::from(o)];
            pending = (pending << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((pending >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((pending << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    #[test]
    fn the_derived_codes_are_the_ones_a_maintained_decoder_knows() {
        // loona-hpack's decoder has the code table of Appendix B written
        // out: a wrong length here would decode to other octets there.
        let mut strings: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        strings.push((0..=255u8).collect());
        strings.push((0..=255u8).rev().collect());
        strings.push(b"%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fexample.dra.dev-reg.sock".to_vec());
        for s in strings {
            let coded = huffman_encode(&s);
            let theirs = loona_hpack::huffman::HuffmanDecoder::new().decode(&coded).unwrap();
            assert_eq!(theirs, s);
            let mut ours = Vec::new();
            huffman_decode(&coded, &mut ours).unwrap();
            assert_eq!(ours, s);
        }
        let codes = huffman_codes();
        assert_eq!(codes[usize::from(EOS)], (0x3fff_ffff, 30));
        assert_eq!(codes[usize::from(b'a')], (0b00011, 5));
    }

    #[test]
    fn huffman_padding_and_eos_are_checked() {
        // 'a' is 00011 (5 bits): padded with three ones it is valid...
        let mut out = Vec::new();
        huffman_decode(&[0b0001_1111], &mut out).unwrap();
        assert_eq!(out, b"a");
        // ...padded with a zero it is not (padding must be EOS's ones).
        assert_eq!(
            huffman_decode(&[0b0001_1110], &mut Vec::new()),
            Err(DecodeError::Huffman)
        );
        // Padding longer than 7 bits: a whole octet of ones, alone or after a symbol.
        assert_eq!(huffman_decode(&[0xff], &mut Vec::new()), Err(DecodeError::Huffman));
        assert_eq!(
            huffman_decode(&[0b0001_1111, 0xff], &mut Vec::new()),
            Err(DecodeError::Huffman)
        );
        // Seven ones are padding: 'a' (00011), ' ' (010100) twice, 1111111.
        let mut out = Vec::new();
        huffman_decode(&[0b0001_1010, 0b1000_1010, 0b0111_1111], &mut out).unwrap();
        assert_eq!(out, b"a  ");
        // EOS itself (30 ones) in the string.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xfc], &mut Vec::new()),
            Err(DecodeError::Huffman)
        );
        assert_eq!(huffman_decode(&[], &mut Vec::new()), Ok(()));
    }

    #[test]
    fn integers_round_trip_and_overlong_ones_are_refused() {
        for prefix in 1..=8u8 {
            for value in [0, 1, 30, 31, 127, 128, 255, 1337, 65_536, (1 << 28) + 5] {
                let mut out = Vec::new();
                encode_integer(&mut out, value, prefix, 0);
                let mut buf = out.as_slice();
                assert_eq!(
                    integer(&mut buf, prefix),
                    Ok(value),
                    "{value} with a {prefix}-bit prefix"
                );
                assert!(buf.is_empty());
            }
        }
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        encode_integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        let mut overlong: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(integer(&mut overlong, 7), Err(DecodeError::IntegerOverflow));
        let mut cut: &[u8] = &[0x7f, 0xff];
        assert_eq!(integer(&mut cut, 7), Err(DecodeError::Truncated));
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        let cases: [(&[u8], DecodeError); 6] = [
            (&[0x80], DecodeError::BadIndex(0)),
            (&[0xbe], DecodeError::BadIndex(62)),
            (&[0x40, 0x05, b'a'], DecodeError::Truncated),
            (&[0x82, 0x20], DecodeError::LateTableSizeUpdate),
            (
                &[0x3f, 0xe1, 0x1f],
                DecodeError::TableSizeAboveLimit {
                    size: 4096,
                    allowed: 100,
                },
            ),
            (&[0x00, 0x81, 0x00, 0x00], DecodeError::Huffman),
        ];
        for (block, error) in cases {
            let mut d = Decoder::new(100);
            assert_eq!(d.decode(block, |_, _| {}), Err(error), "{block:02x?}");
        }
    }

    #[test]
    fn size_updates_shrink_the_table_and_oversized_entries_empty_it() {
        let mut d = Decoder::new(4096);
        decode_all(&mut d, &hex("4003 6162 6303 7879 7a")).unwrap(); // abc: xyz, 38 octets
        assert_eq!((d.dynamic.len(), d.size), (1, 38));
        decode_all(&mut d, &[0x20]).unwrap(); // size 0: evicts everything
        assert_eq!((d.dynamic.len(), d.size), (0, 0));
        assert_eq!(decode_all(&mut d, &[0xbe]), Err(DecodeError::BadIndex(62)));
        // An entry larger than the table empties it and is not added.
        let mut block = Vec::new();
        encode_integer(&mut block, 40, 5, 0x20);
        block.extend_from_slice(&hex("4003 6162 6303 7879 7a 4001 6101 62"));
        decode_all(&mut d, &block).unwrap();
        assert_eq!((d.dynamic.len(), d.size), (1, 34));
        let mut big = Vec::new();
        big.extend_from_slice(&hex("4001 61"));
        encode_integer(&mut big, 20, 7, 0);
        big.extend_from_slice(&[b'x'; 20]);
        decode_all(&mut d, &big).unwrap();
        assert_eq!((d.dynamic.len(), d.size), (0, 0));
    }

    #[test]
    fn static_name_indices_are_the_first_of_each_name() {
        assert_eq!(static_name_index(b":authority"), Some(1));
        assert_eq!(static_name_index(b":method"), Some(2));
        assert_eq!(static_name_index(b":path"), Some(4));
        assert_eq!(static_name_index(b":scheme"), Some(6));
        assert_eq!(static_name_index(b"content-type"), Some(31));
        assert_eq!(static_name_index(b"user-agent"), Some(58));
        assert_eq!(static_name_index(b"www-authenticate"), Some(61));
        assert_eq!(static_name_index(b"te"), None);
    }
}
