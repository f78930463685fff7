//! How the host prints an error: its own words, then each cause, `: `
//! between them, as `anyhow` prints `{:#}`.
//!
//! The crate's error types say what the host was doing in their `Display`
//! and keep what went wrong underneath as their `source` (never both, so
//! nothing prints twice). Wherever an error becomes text someone reads (the
//! kubelet's answer for a claim, an Event, a log line, a guest's `net-error`),
//! it is printed with [`Chain`], so the causes are not lost.

use std::error::Error;
use std::fmt;

/// An error and its causes, `: ` between them. A cause whose text the line
/// already holds is not repeated (foreign errors, such as kube's, sometimes
/// print their own source).
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

/// [`Chain`] as a `String`.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing {what}")]
    struct Outer {
        what: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let e = Outer {
            what: "x",
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use"),
        };
        assert_eq!(chain(&e), "writing x: Address in use");
        assert_eq!(format!("{:#}", anyhow::Error::new(e)), "writing x: Address in use");
    }
}
