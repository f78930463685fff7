//! The rules of resource.k8s.io/v1 the host applies itself before it writes
//! anything, so that a guest's bad name or value is an error naming it
//! rather than a write the API server refuses: names (DNS labels and
//! subdomains, qualified names, label names and values, pool names),
//! quantities and semantic versions, and device attributes. One copy for
//! every writer: ResourceSlices (`kube::slices`), device metadata
//! (`state::metadata`) and the policy's check of a guest's metadata.

use crate::guest_text::quoted;
use crate::model;
use k8s_openapi::api::resource::v1 as resource;
use std::collections::BTreeMap;

/// `DeviceAttributeMaxValueLength`.
pub const MAX_VALUE_LENGTH: usize = 64;

/// Device attributes as the API server checks them (names, value lengths,
/// versions, no name twice), converted: for a slice's devices and for the
/// device metadata a guest returns (KEP-5304 uses the same type).
pub fn attributes(attrs: &[model::Attribute]) -> Result<BTreeMap<String, resource::DeviceAttribute>, String> {
    let mut attributes = BTreeMap::new();
    for a in attrs {
        check_qualified_name(&a.name).map_err(|r| format!("attribute {}: {r}", quoted(&a.name)))?;
        let mut v = resource::DeviceAttribute::default();
        match &a.value {
            model::AttributeValue::Boolean(b) => v.bool = Some(*b),
            model::AttributeValue::Integer(i) => v.int = Some(*i),
            model::AttributeValue::Text(s) => {
                if s.chars().count() > MAX_VALUE_LENGTH {
                    return Err(format!(
                        "attribute {}: string longer than {MAX_VALUE_LENGTH} characters ({} bytes)",
                        quoted(&a.name),
                        s.len()
                    ));
                }
                v.string = Some(s.clone());
            }
            model::AttributeValue::Version(s) => {
                if s.len() > MAX_VALUE_LENGTH || !is_semver(s) {
                    return Err(format!(
                        "attribute {}: {} is not a semantic version",
                        quoted(&a.name),
                        quoted(s)
                    ));
                }
                v.version = Some(s.clone());
            }
        }
        if attributes.insert(a.name.clone(), v).is_some() {
            return Err(format!("attribute {} listed twice", quoted(&a.name)));
        }
    }
    Ok(attributes)
}

/// An RFC 1123 label: device, counter and request names, and what may name
/// a directory or a CDI device.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub fn is_c_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `<C identifier ≤ 32>` or `<DNS subdomain ≤ 63>/<C identifier ≤ 32>`.
pub fn check_qualified_name(s: &str) -> Result<(), &'static str> {
    let ok = match s.split_once('/') {
        None => is_c_identifier(s),
        Some((domain, id)) => domain.len() <= 63 && is_dns_subdomain(domain) && is_c_identifier(id),
    };
    if ok {
        Ok(())
    } else {
        Err("not a C identifier (≤ 32) optionally prefixed by a DNS subdomain and '/'")
    }
}

/// A label name (`metav1validation.ValidateLabelName`): an optional DNS
/// subdomain prefix and '/', then at most 63 alphanumerics, '-', '_', '.',
/// alphanumeric at both ends.
pub fn is_label_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// DNS subdomains separated by '/', at most 253 characters.
pub fn is_pool_name(s: &str) -> bool {
    s.len() <= 253 && s.split('/').all(is_dns_subdomain)
}

/// A label value: empty, or at most 63 characters, alphanumeric at both ends,
/// `-`, `_`, `.` inside.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
}

pub fn is_semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p.len() == 1 || !p.starts_with('0')))
}

/// A quantity in thousandths of its unit, when that is exact and fits:
/// `81559Mi`, `5Gi`, `1.5k`, `100m`, `2e3`.
pub fn milli(s: &str) -> Option<i128> {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    if num_end == 0 {
        return None;
    }
    let (num, suffix) = s.split_at(num_end);
    milli_of(num, suffix)
}

pub fn milli_of(num: &str, suffix: &str) -> Option<i128> {
    let (negative, num) = match num.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits: String = [int, frac].concat();
    if digits.is_empty() || digits.len() > 30 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mantissa: i128 = digits.parse().ok()?;
    // value = mantissa / 10^frac.len() * multiplier; in milli: * 1000.
    let (numerator, denominator): (i128, i128) = match suffix {
        "" => (1000, 1),
        "n" => (1, 1_000_000),
        "u" => (1, 1_000),
        "m" => (1, 1),
        "k" => (1_000_000, 1),
        "M" => (1_000_000_000, 1),
        "G" => (1_000_000_000_000, 1),
        "T" => (1_000_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000_000, 1),
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            let power = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].iter().position(|p| *p == suffix)? as u32 + 1;
            (1000 * (1i128 << (10 * power)), 1)
        }
        e => {
            let exp: i32 = e.strip_prefix(['e', 'E'])?.parse().ok()?;
            match exp + 3 {
                x if (0..=30).contains(&x) => (10i128.pow(x as u32), 1),
                x if (-30..0).contains(&x) => (1, 10i128.pow((-x) as u32)),
                _ => return None,
            }
        }
    };
    let scaled = mantissa.checked_mul(numerator)?;
    let denominator = denominator.checked_mul(10i128.checked_pow(frac.len() as u32)?)?;
    if scaled % denominator != 0 {
        return None;
    }
    let v = scaled / denominator;
    Some(if negative { -v } else { v })
}

/// The forms of Kubernetes quantity a driver publishes: an integer or
/// decimal with an optional binary, decimal SI or exponent suffix.
pub fn is_quantity(s: &str) -> bool {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let num = num.strip_prefix(['+', '-']).unwrap_or(num);
    let valid_num =
        !num.is_empty() && num.bytes().filter(|b| *b == b'.').count() <= 1 && num.bytes().any(|b| b.is_ascii_digit());
    let valid_suffix = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || (suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .strip_prefix(['+', '-'])
            .unwrap_or(&suffix[1..])
            .bytes()
            .all(|b| b.is_ascii_digit())
        && suffix.len() > 1);
    valid_num && valid_suffix
}
