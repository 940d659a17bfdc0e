//! Small parsing and formatting helpers shared by the service and the CLI.

pub use cli_support::units::{parse_duration, parse_time, rfc3339, UnitError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_parsers_are_the_ones_used() {
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_time("1970-01-01T00:01:00Z").unwrap(), 60);
        assert_eq!(rfc3339(60), "1970-01-01T00:01:00Z");
    }
}
