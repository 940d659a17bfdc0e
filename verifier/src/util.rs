//! Small parsing and formatting helpers shared by the service and the CLI.

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

/// A duration could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a duration; use a number with a unit s, m, h or d (for example 90s, 30m, 7d)"
)]
pub struct DurationError(pub String);

/// Parses `90s`, `30m`, `12h`, `7d` (or plain seconds) into seconds.
pub fn parse_duration(s: &str) -> Result<i64, DurationError> {
    let err = || DurationError(s.to_owned());
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (t.get(..i), 1),
        Some((i, 'm')) => (t.get(..i), 60),
        Some((i, 'h')) => (t.get(..i), 3600),
        Some((i, 'd')) => (t.get(..i), 86_400),
        Some(_) => (Some(t), 1),
        None => return Err(err()),
    };
    let n: i64 = num.ok_or_else(err)?.parse().map_err(|_| err())?;
    if n < 0 {
        return Err(err());
    }
    n.checked_mul(mult).ok_or_else(err)
}

/// A time could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a time; use RFC 3339 (2025-01-31T12:00:00Z) or Unix seconds")]
pub struct TimeError(pub String);

/// Parses an RFC 3339 time or Unix seconds.
pub fn parse_time(s: &str) -> Result<i64, TimeError> {
    if let Ok(n) = s.trim().parse::<i64>() {
        return Ok(n);
    }
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| TimeError(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("12").unwrap(), 12);
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_time("1970-01-01T00:01:00Z").unwrap(), 60);
        assert_eq!(parse_time("42").unwrap(), 42);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(rfc3339(60), "1970-01-01T00:01:00Z");
    }
}
