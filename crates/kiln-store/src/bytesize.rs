//! Byte sizes as people write them (`10GB`, `512MiB`, `1.5G`) and as kiln
//! prints them.

/// A size that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid size {0:?}: expected a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")]
pub struct InvalidSize(pub String);

/// Parses a size: a number (decimals allowed) and an optional unit. `K`,
/// `M`, `G`, `T` and their `-iB` forms are powers of 1024; `KB`, `MB`,
/// `GB`, `TB` powers of 1000 (as disk vendors and Docker write them).
pub fn parse_size(text: &str) -> Result<u64, InvalidSize> {
    let bad = || InvalidSize(text.to_string());
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(bad()),
    };
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Formats a size with a binary unit, e.g. `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2m").unwrap(), 2 << 20);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(12), "12 B");
    }
}
