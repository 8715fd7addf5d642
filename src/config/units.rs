//! Human units in the config file: durations (`"500ms"`, `"10s"`, `"5m"`, `"1h"`)
//! and sizes (`"64KiB"`, `"16MiB"`, `"100B"`). Pure parsing, no I/O.

use std::time::Duration;

/// Parses `"<n><unit>"` where unit is `ms`, `s`, `m`, `h` or `d`. A bare `"0"` is
/// accepted as zero because "0 means off" reads naturally without a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| {
            format!("duration {s:?} has no unit (use ms, s, m, h or d, e.g. \"10s\")")
        })?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("duration {s:?} does not start with a number (e.g. \"500ms\", \"10s\")")
    })?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "duration {s:?} has unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(format!("duration {s:?} is out of range (at most 365d)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `"<n><unit>"` with binary (`KiB`, `MiB`, `GiB`) or decimal (`KB`, `MB`,
/// `GB`) units, or `B`/no unit for bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = match num.parse() {
        Ok(n) => n,
        Err(_) if !num.is_empty() => return Err(format!("size {s:?} is too large")),
        Err(_) => {
            return Err(format!(
                "size {s:?} does not start with a whole number (e.g. \"64KiB\", \"16MiB\")"
            ))
        }
    };
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "size {s:?} has unknown unit {other:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten s").is_err());
        assert!(parse_duration("10parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1KB").unwrap(), 1000);
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999999GiB").is_err());
        assert_eq!(
            parse_size("99999999999999999999GiB").unwrap_err(),
            "size \"99999999999999999999GiB\" is too large"
        );
        assert!(parse_size("lots")
            .unwrap_err()
            .contains("does not start with a whole number"));
    }
}
