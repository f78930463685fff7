//! Text a guest wrote (error messages, log lines, health messages, names,
//! paths) on its way into a kubelet answer, a log line, a Kubernetes Event or
//! a metric label: the one place where it is bounded and made inert
//! (invariant 2: the host never trusts guest output; invariant 8: answers
//! fit the kubelet's limits).
//!
//! - Control characters (newline, carriage return, escape, …) and the Unicode
//!   characters that reorder or break lines of text (bidirectional overrides
//!   and isolates, line and paragraph separators) are written as escapes
//!   (`\n`, `\u{1b}`): a guest cannot start a log line of its own, recolour
//!   a terminal or make text read backwards.
//! - Text is cut to a bound in bytes at a character boundary, and the cut is
//!   said (`… [1000048 bytes cut]`), so a reader knows there was more.
//!
//! The bounds are documented in docs/operations.md ("Guest text").

/// A guest's error message (the claim's `error` the kubelet reports in the
/// pod's events), a health message (the kubelet keeps 1024 characters) or
/// an Event message (the API server keeps 1 KiB).
pub const MESSAGE_BYTES: usize = 1024;
/// One guest log line.
pub const LOG_LINE_BYTES: usize = 4096;
/// A name, path or value of guest output quoted in one of the host's messages.
pub const QUOTED_BYTES: usize = 256;
/// A guest's name or version (log fields, metric labels, Events).
pub const IDENTITY_BYTES: usize = 64;

/// Room kept for the `… [N bytes cut]` marker.
const MARKER_BYTES: usize = 40;

/// `s` with control characters escaped, cut to at most `max` bytes
/// (`max` of at least 64).
pub fn bounded(s: &str, max: usize) -> String {
    bound(s, max, false)
}

/// `s` as a quoted string for one of the host's messages: `"…"`, with `"`
/// and `\` escaped too (so the quotes mean what they say), the inside cut
/// to [`QUOTED_BYTES`].
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", bound(s, QUOTED_BYTES, true))
}

fn bound(s: &str, max: usize, quotes: bool) -> String {
    let max = max.max(64);
    let mut buf = [0u8; 12];
    // Does all of it fit, escaped? (Stops reading as soon as it does not.)
    let mut len = 0;
    let fits = s.chars().all(|c| {
        len += escaped(c, quotes, &mut buf).len();
        len <= max
    });
    let limit = if fits { max } else { max - MARKER_BYTES };
    let mut out = String::with_capacity(len.min(max));
    for (i, c) in s.char_indices() {
        let piece = escaped(c, quotes, &mut buf);
        if out.len() + piece.len() > limit {
            out.push_str(&format!("… [{} bytes cut]", s.len() - i));
            break;
        }
        out.push_str(piece);
    }
    out
}

/// Whether `c` must not reach a log line or an answer as it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn escaped(c: char, quotes: bool, buf: &mut [u8; 12]) -> &str {
    match c {
        '\n' => "\\n",
        '\r' => "\\r",
        '\t' => "\\t",
        '"' if quotes => "\\\"",
        '\\' if quotes => "\\\\",
        c if needs_escape(c) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // At most `\u{10ffff}`: 10 bytes.
            let _ = write!(cursor, "\\u{{{:x}}}", c as u32);
            let n = cursor.position() as usize;
            std::str::from_utf8(&buf[..n]).unwrap_or("\\u{fffd}")
        }
        c => c.encode_utf8(buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_clean_text_is_unchanged() {
        assert_eq!(
            bounded("device gpu-0 is not a GPU", MESSAGE_BYTES),
            "device gpu-0 is not a GPU"
        );
        assert_eq!(bounded("é ü 漢字", MESSAGE_BYTES), "é ü 漢字");
    }

    #[test]
    fn control_and_reordering_characters_are_escaped() {
        let forged = "bad\n2026-01-01T00:00:00Z  INFO forged\r\x1b[31m\t\u{202e}evil\u{2028}x\u{7f}";
        let out = bounded(forged, MESSAGE_BYTES);
        assert_eq!(
            out,
            "bad\\n2026-01-01T00:00:00Z  INFO forged\\r\\u{1b}[31m\\t\\u{202e}evil\\u{2028}x\\u{7f}"
        );
        assert!(!out.chars().any(needs_escape));
    }

    #[test]
    fn long_text_is_cut_within_the_bound_and_says_so() {
        let long = format!("{}{}", "é".repeat(10), "x".repeat(1_000_028));
        let out = bounded(&long, MESSAGE_BYTES);
        assert!(out.len() <= MESSAGE_BYTES, "{}", out.len());
        assert!(out.starts_with("ééé"));
        assert!(out.ends_with("bytes cut]"), "{out}");
        // Exactly at the bound: nothing is cut.
        let exact = "y".repeat(MESSAGE_BYTES);
        assert_eq!(bounded(&exact, MESSAGE_BYTES), exact);
        let one_more = "y".repeat(MESSAGE_BYTES + 1);
        assert!(bounded(&one_more, MESSAGE_BYTES).ends_with("[41 bytes cut]"));
        // Escapes count against the bound.
        let newlines = "\n".repeat(MESSAGE_BYTES);
        assert!(bounded(&newlines, MESSAGE_BYTES).len() <= MESSAGE_BYTES);
    }

    #[test]
    fn bounding_twice_changes_nothing_more() {
        let once = bounded(&format!("a\nb{}", "z".repeat(5000)), MESSAGE_BYTES);
        assert_eq!(bounded(&once, MESSAGE_BYTES), once);
    }

    #[test]
    fn quoted_text_is_unambiguous_and_bounded() {
        assert_eq!(quoted("/dev/nvidia0"), "\"/dev/nvidia0\"");
        assert_eq!(quoted("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        let q = quoted(&"v".repeat(1_000_000));
        assert!(q.len() <= QUOTED_BYTES + 2, "{}", q.len());
        assert!(q.ends_with("bytes cut]\""), "{q}");
    }
}
