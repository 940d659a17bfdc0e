//! One parser per kind of value, shared by every command of `cvm` and `cvm-verifier`, so
//! the same text means the same thing everywhere.
//!
//! | kind | accepted | examples |
//! |---|---|---|
//! | size ([`parse_size`]) | a whole number of bytes with an optional binary unit `K`, `M`, `G`, `T` (also written `KB`/`KiB`, …, any case; a space may separate them) | `4096`, `512M`, `512 MiB`, `2G` |
//! | duration ([`parse_duration`]) | a whole number with an optional unit `s`, `m`, `h`, `d`, `w` (plain: seconds) | `30s`, `15m`, `7d` |
//! | rate ([`parse_rate`]) | a whole number per second with an optional decimal unit `k`, `M`, `G`, `T` (×1000, any case), optionally followed by `bit/s`, `bps`, `pps` or `/s` | `100M` (bits/s for `*-bps`), `20k` (packets/s for `*-pps`), `1Gbit/s` |
//! | time ([`parse_time`]) | RFC 3339, or Unix seconds | `2025-01-31T12:00:00Z`, `1738324800` |
//!
//! The error messages say what was wrong and show a valid example.

/// A value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a size.
    #[error("`{0}` is not a size; use a number with an optional unit K, M, G or T (for example 512M, 2G)")]
    Size(String),
    /// A size that does not fit in 64 bits.
    #[error("`{0}` is too large")]
    SizeTooLarge(String),
    /// Not a duration.
    #[error("`{0}` is not a duration; use a number with a unit s, m, h, d or w (for example 90s, 30m, 7d)")]
    Duration(String),
    /// Not a rate.
    #[error("`{0}` is not a rate; use a whole number per second with an optional unit k, M, G or T (for example 100M, 20k)")]
    Rate(String),
    /// Not a time.
    #[error("`{0}` is not a time; use RFC 3339 (2025-01-31T12:00:00Z) or Unix seconds")]
    Time(String),
}

/// Parses a size in bytes (see the module docs).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(UnitError::Size(s.to_owned()));
    }
    let mult: u64 = match unit.trim_start().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(UnitError::Size(s.to_owned())),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| UnitError::SizeTooLarge(s.to_owned()))?;
    n.checked_mul(mult)
        .ok_or_else(|| UnitError::SizeTooLarge(s.to_owned()))
}

/// Parses a duration into seconds (see the module docs).
pub fn parse_duration(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Duration(s.to_owned());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let mult: u64 = match unit.trim_start() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(err()),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(err)
}

/// Parses a rate per second (see the module docs): decimal units, as network rates
/// are written (`100M` = 100,000,000).
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Rate(s.to_owned());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, rest) = t.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let rest = rest.trim_start();
    let lower = rest.to_ascii_lowercase();
    let (mult, suffix): (u64, &str) = match lower.chars().next() {
        Some('k') => (1_000, &lower[1..]),
        Some('m') => (1_000_000, &lower[1..]),
        Some('g') => (1_000_000_000, &lower[1..]),
        Some('t') => (1_000_000_000_000, &lower[1..]),
        _ => (1, lower.as_str()),
    };
    if !matches!(suffix, "" | "bit/s" | "bit" | "bps" | "pps" | "/s" | "b/s") {
        return Err(err());
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(err)
}

/// Parses a time into Unix seconds (see the module docs).
pub fn parse_time(s: &str) -> Result<i64, UnitError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Ok(n);
    }
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map(|v| v.unix_timestamp())
        .map_err(|_| UnitError::Time(s.to_owned()))
}

/// Formats Unix seconds as RFC 3339 (UTC), or the number if out of range.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1500").unwrap(), 1500);
        assert_eq!(parse_rate("100M").unwrap(), 100_000_000);
        assert_eq!(parse_rate("20k").unwrap(), 20_000);
        assert_eq!(parse_rate("1 Gbit/s").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("10kpps").unwrap(), 10_000);
        for bad in ["", "M", "10X", "10MB", "-1", "99999999999999T"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        for bad in ["", "M", "12X", "1.5G", "-1M", "4 lightyears"] {
            assert_eq!(parse_size(bad), Err(UnitError::Size(bad.into())), "{bad}");
        }
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(UnitError::SizeTooLarge(_))
        ));
        assert!(matches!(
            parse_size("16777216T"),
            Err(UnitError::SizeTooLarge(_))
        ));
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("2w").unwrap(), 1_209_600);
        assert_eq!(parse_duration("12").unwrap(), 12);
        for bad in ["x", "-1h", "", "1.5h", "3y"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_time("1970-01-01T00:01:00Z").unwrap(), 60);
        assert_eq!(parse_time("42").unwrap(), 42);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(rfc3339(60), "1970-01-01T00:01:00Z");
    }
}
