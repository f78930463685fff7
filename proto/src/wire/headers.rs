//! The client's request header blocks, decoded (HPACK, RFC 7541) and encoded
//! again with an `:authority` that hyper's h2 server accepts.
//!
//! Why every block is re-encoded, not only those with a bad `:authority`:
//! HPACK is stateful. A client's block may add entries to its dynamic table
//! (grpc-go indexes `:authority`, `:path` and `content-type`) and later blocks
//! refer to them by index; once one block is changed, the server's table no
//! longer mirrors the client's. So the adapter keeps the client's table here
//! (the decoder) and gives the server only literals *without indexing*: the
//! server's table stays empty and can never disagree. A request's headers are
//! a few hundred bytes; decoding and encoding them costs about a microsecond.

use super::hpack::{DecodeError, Decoder, encode_integer, static_name_index};
use std::fmt::Write as _;

/// What the server gets in place of an `:authority` it would refuse: what
/// grpc-go's `unix:` resolver and the kubelet's newer DRA client send.
pub const NORMALISED_AUTHORITY: &[u8] = b"localhost";

/// What becomes of each request's `:authority`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorityRule {
    /// A server in front of hyper's h2: an `:authority` that h2 would refuse
    /// becomes [`NORMALISED_AUTHORITY`]; a valid one is kept.
    ReplaceInvalid,
    /// A client that must send what another client sends: every
    /// `:authority` becomes this value. The test kubelet uses it to send the
    /// socket path, as the kubelet's grpc-go does; the host never does.
    Set(Vec<u8>),
}

/// At most this many characters of a client's header text are kept for a log.
const MAX_LOGGED: usize = 256;

/// The client's HPACK state, and the encoder for what the server gets.
pub struct HeaderRewriter {
    decoder: Decoder,
    table_limit: usize,
    rule: AuthorityRule,
}

/// What a request's header block said, kept until the server answers the
/// stream so that a refusal can be logged with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestSummary {
    /// `:path`, the gRPC method.
    pub path: Option<String>,
    /// The client's `:authority`, when the [`AuthorityRule`] replaced it.
    pub replaced_authority: Option<String>,
    /// The first thing in the block that an HTTP/2 server refuses a request
    /// for (h2's request checks), if any: the likely reason of a refusal.
    pub suspect: Option<String>,
}

impl HeaderRewriter {
    pub fn new(rule: AuthorityRule) -> Self {
        HeaderRewriter {
            decoder: Decoder::new(super::frame::DEFAULT_HEADER_TABLE_SIZE),
            table_limit: super::frame::DEFAULT_HEADER_TABLE_SIZE,
            rule,
        }
    }

    /// The server advertised `SETTINGS_HEADER_TABLE_SIZE = size`: the client
    /// may size its table up to it. (Smaller values take effect only once the
    /// client has acknowledged them; keeping the larger limit is the lenient,
    /// safe reading of both.)
    pub fn allow_table_size(&mut self, size: usize) {
        if size > self.table_limit {
            self.table_limit = size;
            self.decoder.set_max_allowed_table_size(size);
        }
    }

    /// Decode one complete header block and append its re-encoded form to
    /// `out`. On an error the client's HPACK state is unusable: the caller
    /// stops rewriting and lets the server see (and refuse) the raw bytes.
    pub fn rewrite(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<RequestSummary, DecodeError> {
        let mut summary = RequestSummary::default();
        let mut checks = Checks::default();
        let rule = &self.rule;
        self.decoder.decode(block, |name, value| {
            checks.see(name, value, &mut summary);
            let replacement = match rule {
                _ if name != b":authority" => None,
                AuthorityRule::ReplaceInvalid if !is_valid_authority(value) => Some(NORMALISED_AUTHORITY),
                AuthorityRule::ReplaceInvalid => None,
                AuthorityRule::Set(authority) if authority.as_slice() != value => Some(authority.as_slice()),
                AuthorityRule::Set(_) => None,
            };
            if let Some(replacement) = replacement {
                summary.replaced_authority = Some(printable(value));
                encode_literal(out, name, replacement);
            } else {
                if name == b":path" {
                    summary.path = Some(printable(value));
                }
                encode_literal(out, name, value);
            }
        })?;
        checks.finish(&mut summary);
        Ok(summary)
    }
}

/// Whether hyper's h2 server takes this `:authority` (it parses it with the
/// same function, `http::uri::Authority`, and resets the stream otherwise).
pub fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// RFC 9110 `tchar`, upper-case letters excluded (HTTP/2 field names are lower case).
fn is_lower_token_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// A client's header text as it may appear in a log line: lossy UTF-8,
/// control characters escaped, at most [`MAX_LOGGED`] characters.
pub fn printable(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut out = String::with_capacity(text.len().min(MAX_LOGGED));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_LOGGED {
            out.push('…');
            break;
        }
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// "Literal Header Field without Indexing" (RFC 7541 §6.2.2), the name by
/// static-table index where it has one, strings without Huffman coding.
pub fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match static_name_index(name) {
        Some(index) => encode_integer(out, index, 4, 0x00),
        None => {
            out.push(0x00);
            encode_string(out, name);
        }
    }
    encode_string(out, value);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// h2's checks of a request's header list (`frame/headers.rs` and
/// `server.rs` of h2 0.4), reduced to finding the first broken rule so that
/// a refusal can be explained. They decide nothing: the server does.
#[derive(Default)]
struct Checks {
    regular_seen: bool,
    method: bool,
    scheme: bool,
    path: bool,
    authority: bool,
    connect: bool,
}

impl Checks {
    fn see(&mut self, name: &[u8], value: &[u8], summary: &mut RequestSummary) {
        if summary.suspect.is_none() {
            summary.suspect = self.check(name, value);
        }
    }

    fn check(&mut self, name: &[u8], value: &[u8]) -> Option<String> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            let seen = match pseudo {
                b"method" => {
                    self.connect = value == b"CONNECT";
                    &mut self.method
                }
                b"scheme" => &mut self.scheme,
                b"path" => &mut self.path,
                b"authority" => &mut self.authority,
                b"protocol" => return None,
                _ => return Some(format!("unknown pseudo-header {}", printable(name))),
            };
            return if self.regular_seen {
                Some(format!("pseudo-header {} after regular headers", printable(name)))
            } else if std::mem::replace(seen, true) {
                Some(format!("pseudo-header {} repeated", printable(name)))
            } else if pseudo == b"path" && value.is_empty() {
                Some("empty :path".to_owned())
            } else {
                None
            };
        }
        self.regular_seen = true;
        if !name.iter().all(|&b| is_lower_token_char(b)) {
            Some(format!("header name {:?} is not a lower-case token", printable(name)))
        } else if matches!(
            name,
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
        ) {
            Some(format!("connection-specific header {}", printable(name)))
        } else if name == b"te" && value != b"trailers" {
            Some(format!("te: {} (HTTP/2 allows only \"trailers\")", printable(value)))
        } else {
            None
        }
    }

    fn finish(&self, summary: &mut RequestSummary) {
        if summary.suspect.is_some() || self.regular_seen && !self.method && !self.path {
            // A block of regular headers only is a trailer block.
            return;
        }
        summary.suspect = if !self.method {
            Some("missing :method".to_owned())
        } else if !self.connect && !self.scheme {
            Some("missing :scheme".to_owned())
        } else if !self.connect && !self.path {
            Some("missing :path".to_owned())
        } else {
            None
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;

    fn decode(block: &[u8]) -> Vec<(String, String)> {
        // A maintained decoder, as the server's side would read it.
        loona_hpack::Decoder::new()
            .decode(block)
            .expect("valid block")
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn request(authority: &str) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/pluginregistration.Registration/GetInfo".to_vec()),
            (b":authority", authority.as_bytes().to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
            (b"grpc-timeout", b"999933u".to_vec()),
        ]
    }

    #[test]
    fn authorities_hyper_refuses_become_localhost_and_the_rest_is_kept() {
        for (authority, replaced) in [
            ("/var/lib/kubelet/plugins_registry/example.dra.dev-reg.sock", true),
            (
                "%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fexample.dra.dev-reg.sock",
                true,
            ),
            ("", true),
            ("localhost", false),
            ("localhost:8080", false),
        ] {
            let mut encoder = Encoder::new();
            let headers = request(authority);
            let block = encoder.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())));
            let mut rewriter = HeaderRewriter::new(AuthorityRule::ReplaceInvalid);
            let mut out = Vec::new();
            let summary = rewriter.rewrite(&block, &mut out).unwrap();
            let got = decode(&out);
            let expected_authority = if replaced { "localhost" } else { authority };
            assert_eq!(
                got[3],
                (":authority".into(), expected_authority.into()),
                "{authority:?}"
            );
            assert_eq!(got.len(), headers.len());
            assert_eq!(got[6], ("grpc-timeout".into(), "999933u".into()));
            assert_eq!(summary.replaced_authority.is_some(), replaced, "{authority:?}");
            assert_eq!(
                summary.path.as_deref(),
                Some("/pluginregistration.Registration/GetInfo")
            );
            assert_eq!(summary.suspect, None, "{authority:?}");
        }
    }

    #[test]
    fn the_clients_dynamic_table_is_followed_across_blocks() {
        // The client's encoder indexes every field, so the second and third
        // blocks are mostly references into its dynamic table.
        let mut encoder = Encoder::new();
        let mut rewriter = HeaderRewriter::new(AuthorityRule::ReplaceInvalid);
        for i in 0..3 {
            let mut headers = request("/run/plugin.sock");
            headers.push((b"x-call", format!("{i}").into_bytes()));
            let block = encoder.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())));
            let mut out = Vec::new();
            rewriter.rewrite(&block, &mut out).unwrap();
            let got = decode(&out);
            assert_eq!(got[3].1, "localhost");
            assert_eq!(got[7], ("x-call".into(), i.to_string()));
            // What the server gets uses no table: a fresh decoder reads it.
            assert_eq!(decode(&out).len(), 8);
        }
    }

    #[test]
    fn huffman_coded_strings_and_size_updates_are_decoded() {
        // RFC 7541 C.4.1: a request with Huffman-coded strings, preceded by a
        // dynamic table size update to 0.
        let mut block = vec![0x20];
        block.extend_from_slice(&[
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ]);
        let mut out = Vec::new();
        let summary = HeaderRewriter::new(AuthorityRule::ReplaceInvalid)
            .rewrite(&block, &mut out)
            .unwrap();
        assert_eq!(
            decode(&out),
            [
                (":method".into(), "GET".into()),
                (":scheme".into(), "http".into()),
                (":path".into(), "/".into()),
                (":authority".into(), "www.example.com".into()),
            ]
        );
        assert_eq!(summary.replaced_authority, None);
    }

    #[test]
    fn table_size_updates_beyond_what_the_server_allows_are_errors() {
        let mut block = Vec::new();
        encode_integer(&mut block, 65_536, 5, 0x20);
        block.extend_from_slice(&[0x82, 0x86, 0x84]);
        let mut rewriter = HeaderRewriter::new(AuthorityRule::ReplaceInvalid);
        assert!(rewriter.rewrite(&block, &mut Vec::new()).is_err());
        let mut rewriter = HeaderRewriter::new(AuthorityRule::ReplaceInvalid);
        rewriter.allow_table_size(65_536);
        assert!(rewriter.rewrite(&block, &mut Vec::new()).is_ok());
    }

    #[test]
    fn refusal_suspects_name_the_broken_rule() {
        type Headers<'a> = &'a [(&'a [u8], &'a [u8])];
        let cases: [(Headers, Option<&str>); 7] = [
            (&[(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x")], None),
            (&[(b":method", b"POST"), (b":path", b"/x")], Some("missing :scheme")),
            (
                &[
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", b"/x"),
                    (b"Foo", b"1"),
                ],
                Some("header name \"Foo\" is not a lower-case token"),
            ),
            (
                &[
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", b"/x"),
                    (b"connection", b"x"),
                ],
                Some("connection-specific header connection"),
            ),
            (
                &[
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b"te", b"gzip"),
                    (b":path", b"/x"),
                ],
                Some("te: gzip (HTTP/2 allows only \"trailers\")"),
            ),
            (
                &[
                    (b":method", b"POST"),
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":path", b"/x"),
                ],
                Some("pseudo-header :method repeated"),
            ),
            (&[(b"grpc-status", b"0")], None),
        ];
        for (headers, suspect) in cases {
            let mut block = Vec::new();
            for (n, v) in headers {
                encode_literal(&mut block, n, v);
            }
            let summary = HeaderRewriter::new(AuthorityRule::ReplaceInvalid)
                .rewrite(&block, &mut Vec::new())
                .unwrap();
            assert_eq!(summary.suspect.as_deref(), suspect, "{headers:?}");
        }
    }

    #[test]
    fn printable_escapes_controls_and_bounds_length() {
        assert_eq!(printable(b"a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
        let long = printable(&[b'x'; 1000]);
        assert_eq!(long.chars().count(), MAX_LOGGED + 1);
    }
}
