//! Quorum commit (`synchronous_mode: quorum`), decided purely: the leader
//! sets `synchronous_standby_names = 'ANY k (P)'` (a commit waits for any `k`
//! of the standbys `P`) and publishes the voters `V` and a `quorum` `q` in
//! the `sync` key. A member that would take over after the leader is lost
//! needs `q + 1` of `V` (itself counted when it is one, the former leader
//! counted too) to answer with a WAL position no further than its own
//! (`decide::quorum_reached`), as Patroni's leader race does.
//!
//! That race keeps every acknowledged commit (DESIGN invariant 4) if, at
//! every moment, any `q + 1` voters include one that holds each
//! acknowledged commit: at most `q` voters lack it. This module keeps that
//! true across every single write it asks for, each checked before it is
//! made (`Ledger::publish_is_safe`, `Ledger::configure_is_safe`):
//!
//! - a commit acknowledged under `ANY k (P)` is held by at least `k` of `P`,
//!   so at most `|V| - (k - |P \ V|)` voters lack it;
//! - a commit at or below a *mark* (the primary's position read once the
//!   current `synchronous_standby_names` was in effect in every WAL sender)
//!   is held by every standby that has flushed up to the mark;
//! - every configuration in effect since the mark (the *epochs*) is
//!   remembered until the next mark, so a commit acknowledged under an
//!   earlier one is still counted as that one promised.
//!
//! Hence the order Patroni's resolver follows too: a standby is added to
//! the voters (with a larger quorum) before it is added to `P`; it is taken
//! out of `P` before it leaves the voters; the quorum grows before `k`
//! shrinks and shrinks only after `k` grew and a new mark was taken. The
//! target is Patroni's: every healthy standby in both sets, `k =
//! min(synchronous_node_count, |P|)` and `q = |V| - k`.

use crate::sync::{Standby, healthy};

/// One `synchronous_standby_names` setting: a commit waits for `k` of
/// `names`. No names: nobody is waited for (or, strict, `ANY 1 (*)`: any
/// standby, which this module counts as holding nothing it can name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub k: usize,
    pub names: Vec<String>,
}

impl Config {
    /// At most this many of `voters` lack a commit acknowledged under this
    /// setting.
    fn may_lack(&self, voters: &[String]) -> usize {
        let outside = self.names.iter().filter(|n| !contains(voters, n)).count();
        let inside_at_least = self.k.saturating_sub(outside).min(voters.len());
        // A setting with no names (or k = 0) acknowledges on the primary alone.
        if self.names.is_empty() { voters.len() } else { voters.len() - inside_at_least }
    }
}

/// What the leader remembers between ticks: the epochs since the last mark
/// (oldest first; the last is the setting PostgreSQL runs with now) and the
/// mark. A new term (a promotion, an agent restart) starts with no mark.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ledger {
    pub epochs: Vec<Config>,
    pub mark: Option<u64>,
}

impl Ledger {
    /// A new term under `current` (what PostgreSQL runs with): nothing is
    /// known about the standbys until a mark is taken.
    pub fn new(current: Config) -> Self {
        Self { epochs: vec![current], mark: None }
    }

    pub fn current(&self) -> Config {
        self.epochs.last().cloned().unwrap_or_default()
    }

    /// The smallest quorum under which `voters` keep every acknowledged
    /// commit: `None` without a mark (unless there are no voters).
    pub fn quorum_for(&self, voters: &[String], standbys: &[Standby]) -> Option<usize> {
        if voters.is_empty() {
            return Some(0);
        }
        let mark = self.mark?;
        let below_mark =
            voters.iter().filter(|v| !standbys.iter().any(|s| s.name == **v && s.flush_lsn >= mark)).count();
        Some(self.epochs.iter().map(|e| e.may_lack(voters)).max().unwrap_or(0).max(below_mark))
    }

    /// `(voters, quorum)` in the `sync` key keeps every acknowledged commit.
    pub fn publish_is_safe(&self, voters: &[String], quorum: usize, standbys: &[Standby]) -> bool {
        self.quorum_for(voters, standbys).is_some_and(|q| q <= quorum)
    }

    /// Changing from `current` to `next` keeps every commit acknowledged
    /// meanwhile under the `sync` key's `(voters, quorum)`: the WAL senders
    /// take a new setting one by one, and one still on the old releases
    /// commits by its own `k` counting the standbys that already list
    /// themselves by the new one (`transition`).
    pub fn configure_is_safe(current: &Config, next: &Config, voters: &[String], quorum: usize) -> bool {
        transition(current, next).may_lack(voters) <= quorum && next.may_lack(voters) <= quorum
    }

    /// `synchronous_standby_names` was set to `next`: commits may be
    /// acknowledged as the transition allows, then as `next` says.
    pub fn configured(&mut self, next: Config) {
        let between = transition(&self.current(), &next);
        self.epochs.push(between);
        self.epochs.push(next);
    }
}

/// While WAL senders move from `from` to `to`, a commit waits for the
/// smaller `k` of either among the standbys either lists.
fn transition(from: &Config, to: &Config) -> Config {
    let mut names = from.names.clone();
    names.extend(to.names.iter().filter(|n| !contains(&from.names, n)).cloned());
    names.sort();
    let k = if from.names.is_empty() || to.names.is_empty() { 0 } else { from.k.min(to.k) };
    Config { k, names }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumInput {
    /// `synchronous_node_count`: the `k` wanted.
    pub node_count: usize,
    /// The `sync` key exists and names this leader.
    pub key_is_mine: bool,
    /// `V` and `q`, when the key is this leader's.
    pub voters: Vec<String>,
    pub quorum: usize,
    pub ledger: Ledger,
    /// `synchronous_mode_strict`: with no standby, `ANY 1 (*)`.
    pub strict: bool,
    pub standbys: Vec<Standby>,
    pub primary_lsn: u64,
    pub max_lag: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumStep {
    /// Nothing to do now; why.
    Idle(&'static str),
    /// Write the `sync` key (compare-and-swap): this leader, these voters, this quorum.
    Publish { voters: Vec<String>, quorum: usize },
    /// Set `synchronous_standby_names` to this and reload.
    Configure(Config),
    /// The setting is in effect: read the primary's position now (after
    /// this observation) and make it the mark.
    Mark,
}

fn contains(names: &[String], name: &str) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|n| contains(b, n))
}

/// Every WAL sender runs with the current setting: a listed standby has a
/// `sync_priority`, an unlisted one none (with `ANY 1 (*)`, every one has).
/// Only then do commits wait as the setting says. Senders that do not
/// stream yet count too: one still catching up with an older setting would
/// release commits by it once it streams.
pub fn in_effect(current: &Config, strict: bool, standbys: &[Standby]) -> bool {
    standbys.iter().all(|s| {
        let expected = if current.names.is_empty() { strict } else { contains(&current.names, &s.name) };
        s.listed == expected
    })
}

/// The next step towards every healthy standby voting and listed.
pub fn next_step(input: &QuorumInput) -> QuorumStep {
    let ledger = &input.ledger;
    let current = ledger.current();
    // A key left by another leader (or none): start from no voters, which
    // lets nobody but this leader take over.
    if !input.key_is_mine {
        return QuorumStep::Publish { voters: Vec::new(), quorum: 0 };
    }
    if !in_effect(&current, input.strict, &input.standbys) {
        return QuorumStep::Idle("waiting for every WAL sender to take synchronous_standby_names");
    }
    if ledger.mark.is_none() || ledger.epochs.len() > 1 {
        return QuorumStep::Mark;
    }
    let mut target: Vec<String> =
        healthy(&input.standbys, input.max_lag, input.primary_lsn).into_iter().map(|s| s.name.clone()).collect();
    target.sort();
    // One change of the setting at a time: the standbys that went first (so
    // that a voter that left is never what a new one waits behind), then
    // the ones to add, then the count.
    let kept: Vec<String> = current.names.iter().filter(|n| contains(&target, n)).cloned().collect();
    let names = if kept.len() < current.names.len() { kept } else { target.clone() };
    let goal = Config { k: input.node_count.max(1).min(names.len()), names };
    let (voters, quorum) = (&input.voters, input.quorum);
    let usable = |v: &[String], q: usize| v.is_empty() || q < v.len();
    if current.k != goal.k || !same_set(&current.names, &goal.names) {
        if Ledger::configure_is_safe(&current, &goal, voters, quorum) {
            return QuorumStep::Configure(goal);
        }
        // The key must cover the new setting first: its standbys as the
        // voters (or, failing that, the voters there are) with a quorum that
        // covers the epochs so far and the change.
        let mut with_goal = ledger.clone();
        with_goal.configured(goal.clone());
        for candidate in [&goal.names, voters] {
            if let Some(q) = with_goal.quorum_for(candidate, &input.standbys)
                && usable(candidate, q)
                && (q != quorum || !same_set(candidate, voters))
            {
                return QuorumStep::Publish { voters: candidate.clone(), quorum: q };
            }
        }
        return QuorumStep::Idle("waiting for the standbys to catch up before changing the voters");
    }
    match ledger.quorum_for(&target, &input.standbys) {
        Some(q) if usable(&target, q) && (q != quorum || !same_set(&target, voters)) => {
            QuorumStep::Publish { voters: target, quorum: q }
        }
        Some(_) if !same_set(&target, voters) => QuorumStep::Idle("waiting for the standbys to reach the mark"),
        _ => QuorumStep::Idle("voters and synchronous_standby_names are as wanted"),
    }
}

/// The setting a new term starts from (an agent restarted under its
/// primary, or a former primary that took its key back): what PostgreSQL
/// runs with, unless that would acknowledge commits more than `quorum` of
/// the `sync` key's voters lack (a primary started again runs with nothing,
/// or the placeholder, which this module reads as nothing); then one that
/// keeps the key's promise, `ANY (|V| - q) (V)`.
pub fn rebuild(live: Config, voters: &[String], quorum: usize) -> Config {
    if live.may_lack(voters) <= quorum {
        live
    } else {
        Config { k: voters.len().saturating_sub(quorum).max(1), names: voters.to_vec() }
    }
}

/// `synchronous_standby_names` for quorum commit, as Patroni writes it.
pub fn standby_names(config: &Config, strict: bool) -> String {
    if config.names.is_empty() {
        return if strict { "ANY 1 (*)".to_string() } else { String::new() };
    }
    let quoted: Vec<String> = config.names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
    format!("ANY {} ({})", config.k.max(1), quoted.join(","))
}

/// The setting a `synchronous_standby_names` value makes, as this module
/// counts it: `ANY k`/`FIRST k`/`k (...)` of the names (`FIRST k` holds a
/// commit on `k` of them too), a plain list on its first, `*` on nobody it
/// can name.
pub fn parse_config(value: &str) -> Config {
    let names = crate::sync::parse_standby_names(value);
    if names.is_empty() {
        return Config::default();
    }
    let text = value.trim();
    let after_keyword = ["FIRST", "ANY"]
        .iter()
        .find_map(|kw| {
            text.get(..kw.len())
                .filter(|head| head.eq_ignore_ascii_case(kw))
                .map(|_| text[kw.len()..].trim_start())
                .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .unwrap_or(text);
    let digits: String = after_keyword.chars().take_while(char::is_ascii_digit).collect();
    let k = match digits.parse::<usize>() {
        Ok(k) if after_keyword[digits.len()..].trim_start().starts_with('(') => k,
        _ => 1,
    };
    Config { k: k.min(names.len()), names }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn standby(name: &str, flush: u64, listed: bool) -> Standby {
        Standby {
            name: name.into(),
            streaming: true,
            sync: listed,
            flush_lsn: flush,
            eligible: true,
            priority: 1,
            listed,
        }
    }

    fn input(standbys: Vec<Standby>) -> QuorumInput {
        QuorumInput {
            node_count: 1,
            key_is_mine: true,
            voters: vec![],
            quorum: 0,
            ledger: Ledger { epochs: vec![Config::default()], mark: Some(100) },
            strict: false,
            standbys,
            primary_lsn: 100,
            max_lag: None,
        }
    }

    #[test]
    fn renders_and_reads_patronis_form() {
        let c = Config { k: 1, names: names(&["postgres-0", "postgres-2"]) };
        assert_eq!(standby_names(&c, false), "ANY 1 (\"postgres-0\",\"postgres-2\")");
        assert_eq!(standby_names(&Config::default(), false), "");
        assert_eq!(standby_names(&Config::default(), true), "ANY 1 (*)");
        assert_eq!(parse_config("ANY 1 (\"postgres-0\",\"postgres-2\")"), c);
        assert_eq!(parse_config("FIRST 2 (a, b, c)"), Config { k: 2, names: names(&["a", "b", "c"]) });
        assert_eq!(parse_config("2 (a, b)"), Config { k: 2, names: names(&["a", "b"]) });
        assert_eq!(parse_config("a, b"), Config { k: 1, names: names(&["a", "b"]) });
        assert_eq!(parse_config("ANY 1 (*)"), Config::default());
        assert_eq!(parse_config(""), Config::default());
        assert_eq!(parse_config("any 5 (a)"), Config { k: 1, names: names(&["a"]) });
    }

    #[test]
    fn a_first_standby_is_listed_then_marked_then_votes_once_caught_up() {
        let mut state = input(vec![standby("a", 50, false)]);
        assert_eq!(next_step(&state), QuorumStep::Configure(Config { k: 1, names: names(&["a"]) }));
        state.ledger.configured(Config { k: 1, names: names(&["a"]) });
        assert_eq!(
            next_step(&state),
            QuorumStep::Idle("waiting for every WAL sender to take synchronous_standby_names")
        );
        state.standbys[0].listed = true;
        assert_eq!(next_step(&state), QuorumStep::Mark);
        state.ledger = Ledger { epochs: vec![Config { k: 1, names: names(&["a"]) }], mark: Some(200) };
        assert_eq!(
            next_step(&state),
            QuorumStep::Idle("waiting for the standbys to reach the mark"),
            "a is behind the mark"
        );
        state.standbys[0].flush_lsn = 200;
        assert_eq!(next_step(&state), QuorumStep::Publish { voters: names(&["a"]), quorum: 0 });
    }

    #[test]
    fn a_second_standby_votes_before_it_is_listed_with_a_larger_quorum() {
        let mut state = input(vec![standby("a", 100, true), standby("b", 100, false)]);
        state.voters = names(&["a"]);
        state.ledger.epochs = vec![Config { k: 1, names: names(&["a"]) }];
        assert_eq!(next_step(&state), QuorumStep::Publish { voters: names(&["a", "b"]), quorum: 1 });
        state.voters = names(&["a", "b"]);
        state.quorum = 1;
        assert_eq!(next_step(&state), QuorumStep::Configure(Config { k: 1, names: names(&["a", "b"]) }));
    }

    #[test]
    fn a_larger_count_lists_first_and_a_smaller_one_raises_the_quorum_first() {
        let both = names(&["a", "b"]);
        let mut state = input(vec![standby("a", 100, true), standby("b", 100, true)]);
        state.voters = both.clone();
        state.quorum = 1;
        state.ledger.epochs = vec![Config { k: 1, names: both.clone() }];
        state.node_count = 2;
        assert_eq!(next_step(&state), QuorumStep::Configure(Config { k: 2, names: both.clone() }));
        state.ledger = Ledger { epochs: vec![Config { k: 2, names: both.clone() }], mark: Some(100) };
        assert_eq!(next_step(&state), QuorumStep::Publish { voters: both.clone(), quorum: 0 });
        state.quorum = 0;
        state.node_count = 1;
        assert_eq!(next_step(&state), QuorumStep::Publish { voters: both.clone(), quorum: 1 });
        state.quorum = 1;
        assert_eq!(next_step(&state), QuorumStep::Configure(Config { k: 1, names: both }));
    }

    #[test]
    fn a_lost_standby_leaves_the_setting_first_and_the_voters_after_a_mark() {
        let both = names(&["a", "b"]);
        let mut state = input(vec![standby("a", 100, true)]);
        state.voters = both.clone();
        state.quorum = 1;
        state.ledger.epochs = vec![Config { k: 1, names: both.clone() }];
        assert_eq!(next_step(&state), QuorumStep::Configure(Config { k: 1, names: names(&["a"]) }));
        // Until a mark, b may hold a commit a lacks: b stays a voter.
        state.ledger.configured(Config { k: 1, names: names(&["a"]) });
        assert_eq!(next_step(&state), QuorumStep::Mark);
        state.ledger = Ledger { epochs: vec![Config { k: 1, names: names(&["a"]) }], mark: Some(150) };
        assert!(matches!(next_step(&state), QuorumStep::Idle(_)), "a below the mark");
        state.standbys[0].flush_lsn = 150;
        assert_eq!(next_step(&state), QuorumStep::Publish { voters: names(&["a"]), quorum: 0 });
    }

    #[test]
    fn every_standby_gone_empties_the_voters_before_the_setting() {
        let mut state = input(vec![]);
        state.voters = names(&["a"]);
        state.ledger.epochs = vec![Config { k: 1, names: names(&["a"]) }];
        assert_eq!(next_step(&state), QuorumStep::Publish { voters: vec![], quorum: 0 });
        state.voters = vec![];
        assert_eq!(next_step(&state), QuorumStep::Configure(Config::default()));
    }

    #[test]
    fn a_new_term_keeps_the_keys_promise() {
        let v = names(&["a", "b", "c"]);
        // Started again with nothing: commits would need none of the voters.
        assert_eq!(rebuild(Config::default(), &v, 1), Config { k: 2, names: v.clone() });
        // What PostgreSQL runs with keeps it: as it is.
        let live = Config { k: 2, names: v.clone() };
        assert_eq!(rebuild(live.clone(), &v, 1), live);
        assert_eq!(rebuild(Config::default(), &[], 0), Config::default());
    }

    #[test]
    fn a_key_of_another_leader_and_a_new_term_start_over() {
        let mut state = input(vec![standby("a", 100, false)]);
        state.key_is_mine = false;
        assert_eq!(next_step(&state), QuorumStep::Publish { voters: vec![], quorum: 0 });
        state.key_is_mine = true;
        state.ledger.mark = None;
        assert_eq!(next_step(&state), QuorumStep::Mark);
    }

    /// A model of PostgreSQL's quorum commit under the steps: standbys
    /// flush a prefix of the primary's WAL at their own pace; a commit at
    /// position L is acknowledged once `k` listed standbys that run with the
    /// setting have flushed it (at once with no names); WAL senders take a
    /// new setting one by one, later. The property: at every moment, at
    /// most `quorum` voters of the `sync` key lack any acknowledged commit
    /// (so any `quorum + 1` voters include one that has it), and a non-empty
    /// voter list has a quorum below its length.
    #[derive(Debug, Clone)]
    struct Model {
        flush: Vec<u64>,
        streaming: Vec<bool>,
        /// Each WAL sender's setting (they take a new one one at a time).
        running_with: Vec<Config>,
        written: Config,
        primary: u64,
        waiting: Vec<u64>,
        acked: Vec<u64>,
        voters: Vec<String>,
        quorum: usize,
        ledger: Ledger,
    }

    const NAMES: [&str; 4] = ["a", "b", "c", "d"];

    impl Model {
        fn new(n: usize) -> Self {
            Model {
                flush: vec![0; n],
                streaming: vec![true; n],
                running_with: vec![Config::default(); n],
                written: Config::default(),
                primary: 0,
                waiting: vec![],
                acked: vec![],
                voters: vec![],
                quorum: 0,
                ledger: Ledger::new(Config::default()),
            }
        }

        fn standbys(&self) -> Vec<Standby> {
            (0..self.flush.len())
                .filter(|i| self.streaming[*i])
                .map(|i| {
                    let c = &self.running_with[i];
                    standby(NAMES[i], self.flush[i], contains(&c.names, NAMES[i]))
                })
                .collect()
        }

        /// Releases waiting commits that enough listed, streaming standbys
        /// (by the setting each WAL sender runs with) have flushed. A
        /// sender still on an older setting counts by that one, as
        /// PostgreSQL's sender releases waiters by its own.
        fn release(&mut self) {
            let n = self.flush.len();
            let waiting = std::mem::take(&mut self.waiting);
            for lsn in waiting {
                let released = self.written.names.is_empty()
                    || (0..n).any(|sender| {
                        let c = &self.running_with[sender];
                        self.streaming[sender]
                            && contains(&c.names, NAMES[sender])
                            && (0..n)
                                .filter(|i| {
                                    self.streaming[*i]
                                        && contains(&self.running_with[*i].names, NAMES[*i])
                                        && self.flush[*i] >= lsn
                                })
                                .count()
                                >= c.k.max(1)
                    });
                if released { self.acked.push(lsn) } else { self.waiting.push(lsn) }
            }
        }

        fn check(&self) -> Result<(), TestCaseError> {
            if !self.voters.is_empty() {
                prop_assert!(self.quorum < self.voters.len(), "quorum {} of {:?}", self.quorum, self.voters);
            }
            for lsn in &self.acked {
                let lacking = self
                    .voters
                    .iter()
                    .filter(|v| {
                        let i = NAMES.iter().position(|n| n == &v.as_str()).expect("a standby");
                        self.flush[i] < *lsn
                    })
                    .count();
                prop_assert!(
                    lacking <= self.quorum,
                    "commit {lsn} lacking on {lacking} of voters {:?} with quorum {} (flush {:?}, setting {:?})",
                    self.voters,
                    self.quorum,
                    self.flush,
                    self.written
                );
            }
            Ok(())
        }

        fn step(&mut self, event: u8, who: usize, node_count: usize) -> Result<(), TestCaseError> {
            let n = self.flush.len();
            let who = who % n;
            match event % 8 {
                // A commit.
                0 | 1 => {
                    self.primary += 10;
                    self.waiting.push(self.primary);
                }
                // A standby flushes more (up to the primary).
                2 | 3 if self.streaming[who] => self.flush[who] = (self.flush[who] + 10).min(self.primary),
                // A WAL sender takes the written setting.
                4 => self.running_with[who] = self.written.clone(),
                // A standby disconnects, or comes back with a new WAL
                // sender, which reads the setting written by then.
                5 => {
                    self.streaming[who] = !self.streaming[who];
                    self.running_with[who] = self.written.clone();
                }
                // The leader's agent restarts: its memory is gone; PostgreSQL
                // restarted with it, on nothing (the agent's placeholder)
                // when `who` says so.
                6 if who == 0 => {
                    self.ledger = Ledger::new(self.written.clone());
                }
                6 if who == 1 => {
                    let current = rebuild(Config::default(), &self.voters, self.quorum);
                    self.written = current.clone();
                    self.running_with.fill(current.clone());
                    self.ledger = Ledger::new(current);
                }
                // The agent's tick.
                _ => {
                    let input = QuorumInput {
                        node_count,
                        key_is_mine: true,
                        voters: self.voters.clone(),
                        quorum: self.quorum,
                        ledger: self.ledger.clone(),
                        strict: false,
                        standbys: self.standbys(),
                        primary_lsn: self.primary,
                        max_lag: None,
                    };
                    match next_step(&input) {
                        QuorumStep::Idle(_) => {}
                        QuorumStep::Publish { voters, quorum } => {
                            prop_assert!(self.ledger.publish_is_safe(&voters, quorum, &self.standbys()));
                            self.voters = voters;
                            self.quorum = quorum;
                        }
                        QuorumStep::Configure(config) => {
                            self.written = config.clone();
                            self.ledger.configured(config);
                        }
                        QuorumStep::Mark => {
                            // The agent reads the mark after its own session
                            // shows the new setting, so after the postmaster
                            // sent SIGHUP to every WAL sender; a sender
                            // re-reads the setting before it handles the next
                            // standby reply, so from here on every sender
                            // releases commits by the new setting (one that
                            // had an older one releases only WAL sent before,
                            // at or below the mark).
                            self.running_with.fill(self.written.clone());
                            self.ledger = Ledger { epochs: vec![self.written.clone()], mark: Some(self.primary) };
                        }
                    }
                }
            }
            self.release();
            self.check()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_quorum_plus_one_voters_hold_every_acknowledged_commit(
            standbys in 1usize..=4,
            node_count in 1usize..=3,
            events in proptest::collection::vec((0u8..9, 0usize..4), 0..200),
        ) {
            let mut model = Model::new(standbys);
            let mut node_count = node_count;
            for (event, who) in events {
                if event == 8 {
                    // An operator changes synchronous_node_count.
                    node_count = 1 + who % 3;
                    continue;
                }
                model.step(event, who, node_count)?;
            }
        }

        #[test]
        fn with_standbys_that_keep_up_it_reaches_every_one_voting_and_listed(
            standbys in 1usize..=4,
            node_count in 1usize..=3,
        ) {
            let mut model = Model::new(standbys);
            for _ in 0..40 {
                model.step(0, 0, node_count)?;
                for i in 0..standbys {
                    model.running_with[i] = model.written.clone();
                    model.flush[i] = model.primary;
                }
                model.step(7, 0, node_count)?;
            }
            let all: Vec<String> = NAMES[..standbys].iter().map(|s| s.to_string()).collect();
            let k = node_count.min(standbys);
            prop_assert_eq!(&model.voters, &all);
            prop_assert_eq!(model.quorum, standbys - k);
            prop_assert_eq!(&model.written, &Config { k, names: all });
        }
    }
}
