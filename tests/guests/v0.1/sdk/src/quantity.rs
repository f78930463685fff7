//! Kubernetes quantities (`80Gi`, `10G`, `1500k`, `1.5Gi`, `1e3`): checked
//! once when built, read as whole numbers when a driver computes with them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A Kubernetes quantity (`resource.Quantity`): a number with an optional
/// binary (`Ki` … `Ei`), decimal (`n` … `E`) or exponent (`e3`) suffix.
///
/// Built from text with [`Quantity::parse`] (or `"5Gi".parse()`, or serde,
/// which checks it the same way), or from a number with [`Quantity::binary`]
/// and [`Quantity::from`]. It keeps the text it was given: the host
/// publishes it as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity(String);

/// Why a text is not a quantity, or not the whole number a driver needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantityError {
    /// Not a Kubernetes quantity at all.
    Invalid(String),
    /// A quantity, but negative or fractional (`-1`, `1.5`, `100m`).
    NotWhole(String),
    /// More than `u64` can hold.
    TooLarge(String),
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantityError::Invalid(s) => write!(f, "\"{s}\" is not a Kubernetes quantity (e.g. 5Gi, 100M, 1500)"),
            QuantityError::NotWhole(s) => write!(f, "\"{s}\" is not a whole, non-negative amount"),
            QuantityError::TooLarge(s) => write!(f, "\"{s}\" is too large"),
        }
    }
}

impl std::error::Error for QuantityError {}

/// A quantity taken apart: the sign, its digits with the decimal point
/// removed, and the amount is `digits` × 10^`exp10` × 2^`exp2`.
struct Parts<'a> {
    negative: bool,
    digits: &'a str,
    exp10: i32,
    exp2: u32,
}

/// (suffix, power of ten, power of two)
const SUFFIXES: [(&str, i32, u32); 16] = [
    ("", 0, 0),
    ("Ki", 0, 10),
    ("Mi", 0, 20),
    ("Gi", 0, 30),
    ("Ti", 0, 40),
    ("Pi", 0, 50),
    ("Ei", 0, 60),
    ("n", -9, 0),
    ("u", -6, 0),
    ("m", -3, 0),
    ("k", 3, 0),
    ("M", 6, 0),
    ("G", 9, 0),
    ("T", 12, 0),
    ("P", 15, 0),
    ("E", 18, 0),
];

fn parts(s: &str) -> Option<Parts<'_>> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = rest
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.len() + frac.len() == 0 || frac.contains('.') {
        return None;
    }
    let (exp10, exp2) = match SUFFIXES.iter().find(|(name, _, _)| *name == suffix) {
        Some((_, exp10, exp2)) => (*exp10, *exp2),
        None => match suffix.as_bytes() {
            [b'e' | b'E', rest @ ..] => {
                let (sign, digits) = match rest {
                    [b'-', digits @ ..] => (-1, digits),
                    [b'+', digits @ ..] => (1, digits),
                    digits => (1, digits),
                };
                if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                (sign * digits.iter().fold(0i32, |n, d| n * 10 + i32::from(d - b'0')), 0)
            }
            _ => return None,
        },
    };
    Some(Parts {
        negative,
        digits: if frac.is_empty() { int } else { number },
        exp10: exp10 - frac.len() as i32,
        exp2,
    })
}

impl Quantity {
    /// Check `s` and keep it as written.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        match parts(s) {
            Some(_) => Ok(Self(s.to_owned())),
            None => Err(QuantityError::Invalid(s.to_owned())),
        }
    }

    /// `n` in the largest binary unit that holds it exactly (`5Gi`,
    /// `81559Mi`, `1000`): how memory sizes are usually published.
    pub fn binary(n: u64) -> Self {
        for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return Self(format!("{}{suffix}", n >> shift));
            }
        }
        Self(n.to_string())
    }

    /// A quantity the API server has already checked (consumed capacity
    /// of an allocation): kept as is, so that a driver that never reads it
    /// carries no parser. [`Quantity::to_u64`] still checks it.
    pub(crate) fn checked_by_api_server(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The exact amount as a whole number (`5Gi` → 5368709120, `1.5k` → 1500).
    pub fn to_u64(&self) -> Result<u64, QuantityError> {
        let p = parts(&self.0).ok_or_else(|| QuantityError::Invalid(self.0.clone()))?;
        let too_large = || QuantityError::TooLarge(self.0.clone());
        let mut value: u64 = 0;
        for d in p.digits.bytes().filter(|b| *b != b'.') {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
                .ok_or_else(too_large)?;
        }
        if value == 0 {
            return Ok(0);
        }
        if p.negative {
            return Err(QuantityError::NotWhole(self.0.clone()));
        }
        if value.leading_zeros() < p.exp2 {
            return Err(too_large());
        }
        value <<= p.exp2;
        for _ in 0..p.exp10.max(0) {
            value = value.checked_mul(10).ok_or_else(too_large)?;
        }
        for _ in p.exp10.min(0)..0 {
            if !value.is_multiple_of(10) {
                return Err(QuantityError::NotWhole(self.0.clone()));
            }
            value /= 10;
        }
        Ok(value)
    }

    /// The text, as given.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<u64> for Quantity {
    /// Plain digits, e.g. `1500`.
    fn from(n: u64) -> Self {
        Self(n.to_string())
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Result<u64, QuantityError> {
        Quantity::parse(s)?.to_u64()
    }

    #[test]
    fn whole_amounts_in_every_suffix() {
        assert_eq!(n("5Gi"), Ok(5 << 30));
        assert_eq!(n("10G"), Ok(10_000_000_000));
        assert_eq!(n("1500k"), Ok(1_500_000));
        assert_eq!(n("2Gi"), Ok(2 << 30));
        assert_eq!(n("1024"), Ok(1024));
        assert_eq!(n("1.5Gi"), Ok(3 << 29));
        assert_eq!(n("1.5G"), Ok(1_500_000_000));
        assert_eq!(n("1e3"), Ok(1000));
        assert_eq!(n("+7"), Ok(7));
        assert_eq!(n("0"), Ok(0));
        assert_eq!(n("-0"), Ok(0));
        assert_eq!(n("16Ei"), Err(QuantityError::TooLarge("16Ei".into())));
        assert_eq!(n("100m"), Err(QuantityError::NotWhole("100m".into())));
        assert_eq!(n("-1Gi"), Err(QuantityError::NotWhole("-1Gi".into())));
        assert_eq!(n("1.5"), Err(QuantityError::NotWhole("1.5".into())));
    }

    #[test]
    fn what_is_not_a_quantity() {
        for bad in ["", "Gi", "5GB", "1.2.3", "x", "5 Gi", "1e", "1e+", "--1", "."] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError::Invalid(bad.into())), "{bad:?}");
        }
        let e = Quantity::parse("lots").unwrap_err().to_string();
        assert!(e.contains("\"lots\" is not a Kubernetes quantity"), "{e}");
    }

    #[test]
    fn binary_formatting_is_exact() {
        assert_eq!(Quantity::binary(85_520_809_984).as_str(), "81559Mi");
        assert_eq!(Quantity::binary(5 << 30).as_str(), "5Gi");
        assert_eq!(Quantity::binary(1000).as_str(), "1000");
        assert_eq!(Quantity::binary(0).as_str(), "0");
        assert_eq!(Quantity::binary(3 << 40).to_u64(), Ok(3 << 40));
    }

    #[test]
    fn serde_checks_like_parse() {
        let q: Quantity = serde_json::from_str("\"80Gi\"").unwrap();
        assert_eq!(q.as_str(), "80Gi");
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"80Gi\"");
        let e = serde_json::from_str::<Quantity>("\"80GB\"").unwrap_err().to_string();
        assert!(e.contains("not a Kubernetes quantity"), "{e}");
    }
}
