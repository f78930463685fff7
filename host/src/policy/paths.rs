//! Host path rules of the policy: what a driver may hand out, named exactly.
//!
//! A rule is an absolute, clean path. Each of its components is matched
//! against the same component of a path, so a rule never reaches into a
//! neighbouring directory:
//!
//! - an exact path: `/dev/nvidiactl`;
//! - a glob: `*` (any characters), `?` (one character) and `[…]` (one of a
//!   set: `[0-9]`, `[abc]`, `[!0-9]`) within a component, as in
//!   `/dev/nvidia[0-9]*` (every `/dev/nvidiaN`, not `/dev/nvidiactl`);
//! - a directory and everything beneath it: `/run/nvidia/driver/**` (`**`
//!   only as the last component).
//!
//! Paths are checked to be absolute and clean (no `.`, `..` or empty
//! components) before they are matched, so a rule means what it says.

use serde::Deserialize;
use std::fmt;

/// The longest path or rule, as PATH_MAX.
pub const PATH_BYTES: usize = 4096;

/// One rule of `device_nodes`, `mount_host_paths`, `mount_rw_host_paths`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PathRule {
    text: String,
    components: Vec<String>,
    /// Ends in `/**`: the directory and everything beneath it.
    subtree: bool,
}

impl fmt::Debug for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl fmt::Display for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for PathRule {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        PathRule::parse(&text)
    }
}

impl PathRule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("path rule {text:?} {why}");
        check_clean(text).map_err(bad)?;
        let mut components: Vec<String> = components(text).map(str::to_owned).collect();
        let subtree = components.last().is_some_and(|c| c == "**");
        if subtree {
            components.pop();
        }
        for c in &components {
            if c.contains("**") {
                return Err(bad("uses `**` other than as its whole last component"));
            }
            check_glob(c).map_err(|why| bad(&why))?;
        }
        Ok(Self {
            text: text.to_owned(),
            components,
            subtree,
        })
    }

    /// Whether the rule covers `path`, which must already be clean and
    /// absolute ([`check_clean`]).
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = components(path);
        for rule in &self.components {
            match parts.next() {
                Some(part) if glob(rule.as_bytes(), part.as_bytes()) => {}
                _ => return false,
            }
        }
        // An exact rule needs the path to end here; `/**` takes the rest.
        self.subtree || parts.next().is_none()
    }
}

/// Whether a glob of one component (no `/`) covers `name`: interface
/// names, mount options.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    !name.contains('/') && glob(pattern.as_bytes(), name.as_bytes())
}

/// Whether a glob of one component is well formed.
pub fn check_name_glob(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.contains(['/', '\0']) {
        return Err(format!("{pattern:?} is not one name or glob"));
    }
    check_glob(pattern)
}

/// Whether any rule covers `path`.
pub fn any_matches(rules: &[PathRule], path: &str) -> bool {
    rules.iter().any(|r| r.matches(path))
}

/// The components of a clean absolute path (none for `/`).
fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// An absolute path with no `.`, `..` or empty components and no NUL, at
/// most [`PATH_BYTES`] long: a rule or a match on it means what it says. A
/// trailing `/` is allowed (`/dev/`).
pub fn check_clean(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("is not absolute");
    }
    if path.len() > PATH_BYTES || path.contains('\0') {
        return Err("is too long or contains NUL");
    }
    let rest = path.strip_suffix('/').unwrap_or(path);
    if rest.len() > 1 && rest[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("is not a clean path (empty, `.` or `..` components)");
    }
    Ok(())
}

/// `[…]` sets must be closed and not empty.
fn check_glob(component: &str) -> Result<(), String> {
    let b = component.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            match class_end(b, i) {
                Some(end) => i = end,
                None => return Err(format!("has an unclosed or empty `[` in {component:?}")),
            }
        }
        i += 1;
    }
    Ok(())
}

/// The index of the `]` closing the set that starts at `b[start] == '['`.
/// A `]` right after `[` or `[!` is a member, as in shell globs.
fn class_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if i < b.len() && (b[i] == b'!' || b[i] == b'^') {
        i += 1;
    }
    if i < b.len() && b[i] == b']' {
        i += 1;
    }
    while i < b.len() {
        if b[i] == b']' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Whether `set` (the bytes between `[` and `]`) contains `c`.
fn in_class(set: &[u8], c: u8) -> bool {
    let (negated, set) = match set.first() {
        Some(b'!' | b'^') => (true, &set[1..]),
        _ => (false, set),
    };
    let mut i = 0;
    let mut found = false;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == b'-' {
            found |= set[i] <= c && c <= set[i + 2];
            i += 3;
        } else {
            found |= set[i] == c;
            i += 1;
        }
    }
    found != negated
}

/// Glob match of one component (bytes; multi-byte characters match `?` and
/// sets byte by byte, which only matters for non-ASCII rules). Iterative,
/// with one backtracking point for the last `*`: linear in practice.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some(end) = class_end(pattern, p)
                        && in_class(&pattern[p + 1..end], text[t])
                    {
                        p = end + 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        // Mismatch: let the last `*` take one more byte, or fail.
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> PathRule {
        PathRule::parse(s).unwrap()
    }

    #[test]
    fn exact_rules_match_only_that_path() {
        let r = rule("/dev/nvidiactl");
        assert!(r.matches("/dev/nvidiactl"));
        for other in ["/dev/nvidiactl2", "/dev/nvidiact", "/dev/nvidiactl/x", "/dev", "/"] {
            assert!(!r.matches(other), "{other}");
        }
    }

    #[test]
    fn globs_match_within_one_component() {
        let r = rule("/dev/nvidia[0-9]*");
        for ok in ["/dev/nvidia0", "/dev/nvidia7", "/dev/nvidia12", "/dev/nvidia1x"] {
            assert!(r.matches(ok), "{ok}");
        }
        for no in [
            "/dev/nvidia",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia0/x",
            "/dev/sda",
            "/dev/nvidia",
        ] {
            assert!(!r.matches(no), "{no}");
        }
        let caps = rule("/dev/nvidia-caps/nvidia-cap[0-9]*");
        assert!(caps.matches("/dev/nvidia-caps/nvidia-cap12"));
        assert!(!caps.matches("/dev/nvidia-caps/../sda"));
        let star = rule("/dev/*");
        assert!(star.matches("/dev/sda") && !star.matches("/dev/disk/by-id"));
        assert!(rule("/dev/tty?").matches("/dev/tty1") && !rule("/dev/tty?").matches("/dev/tty10"));
        assert!(rule("/dev/x[!0-9]").matches("/dev/xa") && !rule("/dev/x[!0-9]").matches("/dev/x5"));
        assert!(rule("/dev/[]a]").matches("/dev/]"));
        assert!(rule("/d*v/a*b*c").matches("/dev/aXbYbZc"));
        assert!(!rule("/d*v/a*b*c").matches("/dev/aXbYbZ"));
    }

    #[test]
    fn subtree_rules_cover_the_directory_and_everything_beneath() {
        let r = rule("/run/nvidia/driver/**");
        for ok in [
            "/run/nvidia/driver",
            "/run/nvidia/driver/usr/lib64/libcuda.so.1",
            "/run/nvidia/driver/",
        ] {
            assert!(r.matches(ok), "{ok}");
        }
        for no in ["/run/nvidia/driverx", "/run/nvidia", "/etc/passwd"] {
            assert!(!r.matches(no), "{no}");
        }
        assert!(rule("/**").matches("/etc/shadow"), "the operator's choice");
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (bad, why) in [
            ("dev/nvidia0", "not absolute"),
            ("/dev/../etc", "clean"),
            ("/dev//x", "clean"),
            ("/dev/nvidia[0-9", "unclosed"),
            ("/dev/[]", "unclosed"),
            ("/run/**/lib", "`**`"),
            ("/run/a**", "`**`"),
        ] {
            let e = PathRule::parse(bad).unwrap_err();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn clean_paths() {
        assert!(check_clean("/dev/nvidia0").is_ok());
        assert!(check_clean("/dev/").is_ok());
        assert!(check_clean("/").is_ok());
        for bad in ["", "dev", "/a/./b", "/a/../b", "/a//b", "/a/b/..", "/a\0"] {
            assert!(check_clean(bad).is_err(), "{bad:?}");
        }
    }
}
