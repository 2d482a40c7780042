//! Durations as people write them in kiln's config and flags.

use std::time::Duration;

/// A duration that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected seconds (\"90\", \"2.5\") or a number with units (\"500ms\", \"30s\", \"2m\", \"1h 30m\", \"7d\")"
)]
pub struct InvalidDuration(pub String);

/// Parses a bare number of seconds (`"90"`, `"2.5"`) or what `humantime`
/// reads (`"500ms"`, `"30s"`, `"2m"`, `"1h 30m"`, `"7d"`, `"2w"`).
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| InvalidDuration(text.to_string()));
    }
    humantime::parse_duration(t).map_err(|_| InvalidDuration(text.to_string()))
}

/// Formats a duration the way [`parse_duration`] reads it back (`"2s"`,
/// `"500ms"`, `"1m 30s"`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seconds_and_units_and_formats_them_back() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(90),
            Duration::from_millis(1500),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }
}
