//! PostgreSQL version numbers as Patroni reads and prints them.

/// `15.4` → 150004, `9.6.24` → 90624 (`server_version_num`'s form), as
/// Patroni's `postgres_version` filter reads it: `X.Y` from version 10 on,
/// `X.Y.Z` before (a bare major, or `9.6`, is not a version here).
pub fn parse_postgres_version(text: &str) -> Result<u32, String> {
    let parts: Vec<u32> = text
        .trim()
        .split('.')
        .map(|part| part.parse::<u32>().ok().filter(|n| *n < 100))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("Invalid PostgreSQL version: {text}"))?;
    match parts.as_slice() {
        [major, minor] if *major >= 10 => Ok(major * 10_000 + minor),
        [major, minor, patch] => Ok(major * 10_000 + minor * 100 + patch),
        _ => Err(format!("Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {text}")),
    }
}

/// `server_version_num` as people write it: 150004 → `15.4`, 90624 → `9.6.24`.
pub fn format_postgres_version(number: u32) -> String {
    if number < 100_000 {
        format!("{}.{}.{}", number / 10_000, number / 100 % 100, number % 100)
    } else {
        format!("{}.{}", number / 10_000, number % 10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_prints_patronis_forms() {
        assert_eq!(parse_postgres_version("15.4"), Ok(150_004));
        assert_eq!(parse_postgres_version("10.1"), Ok(100_001));
        assert_eq!(parse_postgres_version("9.5.3"), Ok(90_503));
        assert_eq!(parse_postgres_version("15.4.1"), Ok(150_401));
        for wrong in ["10", "9.6", "a.b.c", "1.2.3.4", "", "15.x", "15.100"] {
            assert!(parse_postgres_version(wrong).is_err(), "{wrong}");
        }
        assert_eq!(format_postgres_version(150_018), "15.18");
        assert_eq!(format_postgres_version(100_000), "10.0");
        assert_eq!(format_postgres_version(90_624), "9.6.24");
        for text in ["15.4", "9.6.24", "18.1"] {
            assert_eq!(format_postgres_version(parse_postgres_version(text).expect("valid")), text);
        }
    }
}
