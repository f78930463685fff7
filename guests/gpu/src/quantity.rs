//! Kubernetes quantities for memory sizes: parse `5Gi`, `500Mi`, `10G`,
//! `1073741824`; format bytes as the largest exact binary unit.

/// Bytes of a quantity; `None` when it is not a valid non-negative memory size.
pub fn parse_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (digits, suffix) = q.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `bytes` in the largest binary unit that represents it exactly.
pub fn format_bytes(bytes: u64) -> String {
    for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse_bytes("5Gi"), Some(5 << 30));
        assert_eq!(parse_bytes("10G"), Some(10_000_000_000));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("5.5Gi"), None);
        assert_eq!(parse_bytes("Gi"), None);
        assert_eq!(parse_bytes("-1Gi"), None);
        assert_eq!(format_bytes(85_520_809_984), "81559Mi");
        assert_eq!(format_bytes(5 << 30), "5Gi");
        assert_eq!(format_bytes(1000), "1000");
    }
}
