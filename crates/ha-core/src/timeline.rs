//! PostgreSQL's timeline history files (`pg_wal/0000000N.history`): every
//! promotion that led to timeline N, which the `history` key must list.
//! Patroni rebuilds its `history` key from this file on the leader; pgwarden
//! does the same for entries the key lacks, so a promotion is recorded even
//! when the member that made it (a Patroni during a migration, an agent that
//! died right after promoting) never wrote its entry.

use std::str::FromStr as _;

use crate::Lsn;

/// One line of a history file: the timeline that ended, at which LSN, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub timeline: u64,
    pub lsn: u64,
    pub reason: String,
}

/// The name of timeline `timeline`'s history file in `pg_wal`.
pub fn history_file_name(timeline: u64) -> String {
    format!("{timeline:08X}.history")
}

/// Parses a history file: `parentTLI<TAB>switchpoint<TAB>reason` per line;
/// comments and malformed lines are skipped.
pub fn parse_history_file(text: &str) -> Vec<Switch> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.splitn(3, '\t');
            let timeline = fields.next()?.trim().parse().ok()?;
            let lsn = Lsn::from_str(fields.next()?.trim()).ok()?.0;
            let reason = fields.next().unwrap_or("").trim().to_string();
            Some(Switch { timeline, lsn, reason })
        })
        .collect()
}

/// The switches of `from_file` whose timeline `known` (the timelines the
/// `history` key lists) lacks, in timeline order.
pub fn missing_switches(known: &[u64], from_file: &[Switch]) -> Vec<Switch> {
    let mut missing: Vec<Switch> = from_file.iter().filter(|s| !known.contains(&s.timeline)).cloned().collect();
    missing.sort_by_key(|s| s.timeline);
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_postgres_history_files() {
        let text = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000060\tno recovery target specified\n";
        let switches = parse_history_file(text);
        assert_eq!(switches.len(), 2);
        assert_eq!(switches[0], Switch { timeline: 1, lsn: 0x300_0148, reason: "no recovery target specified".into() });
        assert_eq!(switches[1].timeline, 2);
        assert_eq!(history_file_name(3), "00000003.history");
        assert_eq!(history_file_name(26), "0000001A.history");
    }

    #[test]
    fn finds_the_promotions_the_key_lacks() {
        let switches = parse_history_file("1\t0/3000148\ta\n2\t0/5000060\tb\n3\t0/7000000\tc\n");
        let missing = missing_switches(&[1, 3], &switches);
        assert_eq!(missing.iter().map(|s| s.timeline).collect::<Vec<_>>(), vec![2]);
        assert!(missing_switches(&[1, 2, 3], &switches).is_empty());
    }
}
