//! WAL positions (LSNs) and lag limits.

use std::fmt;
use std::str::FromStr;

/// A WAL position: bytes since the start of WAL, shown by PostgreSQL as `X/Y`
/// (the high and low 32 bits in hex). Patroni's keys store it as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `other` to `self`, zero if `other` is ahead.
    pub fn bytes_after(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (high, low) = text.trim().split_once('/').ok_or_else(|| format!("{text:?} is not an LSN (X/Y)"))?;
        let high = u32::from_str_radix(high, 16).map_err(|_| format!("{text:?} is not an LSN (X/Y)"))?;
        let low = u32::from_str_radix(low, 16).map_err(|_| format!("{text:?} is not an LSN (X/Y)"))?;
        Ok(Self((u64::from(high) << 32) | u64::from(low)))
    }
}

/// Parses a lag limit as Patroni's `?lag=` takes it: plain bytes, or a number
/// with `B`, `kB`, `MB`, `GB` or `TB` (powers of 1024, as PostgreSQL's units).
pub fn parse_lag(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_postgres_form() {
        let lsn: Lsn = "0/1552878".parse().expect("valid lsn");
        assert_eq!(lsn, Lsn(0x1552878));
        assert_eq!(Lsn(0x1_0000_00A0).to_string(), "1/A0");
        assert!("12345".parse::<Lsn>().is_err());
        assert!("G/1".parse::<Lsn>().is_err());
        assert_eq!(Lsn(100).bytes_after(Lsn(40)), 60);
        assert_eq!(Lsn(40).bytes_after(Lsn(100)), 0);
    }

    #[test]
    fn parses_lag_units() {
        assert_eq!(parse_lag("1048576"), Some(1_048_576));
        assert_eq!(parse_lag("16kB"), Some(16 * 1024));
        assert_eq!(parse_lag("1MB"), Some(1 << 20));
        assert_eq!(parse_lag("2GB"), Some(2 << 30));
        assert_eq!(parse_lag("fast"), None);
        assert_eq!(parse_lag("10XB"), None);
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(raw in any::<u64>()) {
            let lsn = Lsn(raw);
            prop_assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
    }
}
