//! The run's report: a summary table, the faults and operator actions, the
//! losses beside the replication lag, and an SVG timeline (nodes' writable
//! spans, faults, operator actions and acknowledged writes per second).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::nemesis::Kind;
use crate::{FaultRecord, Outcome};

/// For every moment no fault was in force any more (a heal that left none
/// active), how long the cluster took to converge; a new fault before
/// convergence interrupts it.
pub fn quiet_convergence(outcome: &mut Outcome) {
    let mut moments: Vec<f64> = Vec::new();
    for f in &outcome.faults {
        let Some(healed) = f.to else { continue };
        let still =
            outcome.faults.iter().any(|g| g.id != f.id && g.from <= healed && g.to.is_none_or(|to| to > healed));
        if !still {
            moments.push(healed);
        }
    }
    moments.sort_by(f64::total_cmp);
    moments.dedup();
    for quiet in moments {
        let next_fault =
            outcome.faults.iter().map(|f| f.from).filter(|&from| from > quiet).fold(f64::INFINITY, f64::min);
        let first = outcome.looks.iter().find(|l| l.at > quiet && l.converged(3) && !l.paused).map(|l| l.at);
        match first {
            Some(at) if at < next_fault => outcome.quiet_convergence.push(at - quiet),
            _ => outcome.interrupted_quiet += 1,
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

fn acked(outcome: &Outcome, prefix: &str) -> usize {
    outcome.acks.iter().filter(|a| a.table.starts_with(prefix)).map(|a| a.acked.len()).sum()
}

fn lost(outcome: &Outcome, prefix: &str) -> usize {
    outcome.lost.iter().filter(|(t, _)| t.starts_with(prefix)).map(|(_, l)| l.len()).sum()
}

/// The fault that lost an acknowledged write: the latest one in force when
/// it was acknowledged (an isolated primary acknowledging until it fences),
/// else the first injected after it.
fn culprit(faults: &[FaultRecord], acked_at: f64) -> Option<&FaultRecord> {
    let in_force = faults
        .iter()
        .filter(|f| f.from <= acked_at && f.to.is_none_or(|to| to >= acked_at))
        .max_by(|a, b| a.from.total_cmp(&b.from));
    in_force.or_else(|| faults.iter().filter(|f| f.from >= acked_at).min_by(|a, b| a.from.total_cmp(&b.from)))
}

/// Of the time under the nemesis (start to last heal): the share of whole
/// seconds with an acknowledged write through HAProxy, and the share of time
/// some node accepted writes (the union of the probes' spans).
pub fn availability(o: &Outcome) -> (f64, f64) {
    let (start, end) = (o.heal_at - o.duration, o.heal_at);
    if o.duration <= 0.0 {
        return (0.0, 0.0);
    }
    let seconds = o.duration.floor() as usize;
    let mut acked = vec![false; seconds.max(1)];
    for a in o.acks.iter().filter(|a| a.table.starts_with("hap")) {
        for (_, at) in &a.acked {
            let k = (at - start).floor();
            if k >= 0.0 && (k as usize) < acked.len() {
                acked[k as usize] = true;
            }
        }
    }
    let acked_share = acked.iter().filter(|&&b| b).count() as f64 / acked.len() as f64;
    let mut spans: Vec<(f64, f64)> =
        o.spans.iter().map(|s| (s.from.max(start), s.to.min(end))).filter(|(a, b)| b > a).collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut covered, mut reach) = (0.0, start);
    for (from, to) in spans {
        let from = from.max(reach);
        if to > from {
            covered += to - from;
            reach = to;
        }
    }
    (acked_share, covered / o.duration)
}

/// The summary table (also printed at the end of a run).
pub fn summary(o: &Outcome) -> String {
    let mut s = String::new();
    let two_writer = o.two_writers.iter().fold(0.0, |sum, (a, b, _, _)| sum + (b - a));
    let mut conv = o.quiet_convergence.clone();
    conv.sort_by(f64::total_cmp);
    let ok = |c: bool| if c { "ok" } else { "FAILED" };
    let _ = writeln!(s, "| check | result | |");
    let _ = writeln!(s, "|---|---|---|");
    let _ = writeln!(s, "| seed, mode, ttl | {}, {}, {} s | |", o.seed, o.mode, o.ttl);
    let _ = writeln!(s, "| faults injected | {} over {:.0} s | |", o.faults.len(), o.duration);
    let op_ok = o.ops.iter().filter(|r| r.status.is_some_and(|s| (200..300).contains(&s))).count();
    let _ = writeln!(s, "| operator actions | {} ({} accepted: 2xx) | |", o.ops.len(), op_ok);
    let _ = writeln!(
        s,
        "| acknowledged writes | {} through HAProxy, {} direct, {} local | |",
        acked(o, "hap"),
        acked(o, "direct_"),
        acked(o, "local_")
    );
    let _ = writeln!(s, "| acknowledged transfers | {} | |", o.transfers);
    let (acked_seconds, writable) = availability(o);
    let _ = writeln!(
        s,
        "| write availability | {:.1}% of the seconds under the nemesis had an acknowledged write through HAProxy; a node was writable {:.1}% of the time | |",
        acked_seconds * 100.0,
        writable * 100.0
    );
    let _ = writeln!(
        s,
        "| two-writer time | {two_writer:.3} s ({} interval(s)) | {} |",
        o.two_writers.len(),
        ok(o.two_writers.is_empty())
    );
    let lost_all: usize = o.lost.iter().map(|(_, l)| l.len()).sum();
    if o.mode == "sync" {
        let _ = writeln!(s, "| acknowledged writes lost (sync) | {lost_all} | {} |", ok(lost_all == 0));
    } else {
        let _ = writeln!(
            s,
            "| acknowledged writes lost (async, allowed) | {lost_all}: {} through HAProxy, {} direct, {} local | shown below |",
            lost(o, "hap"),
            lost(o, "direct_"),
            lost(o, "local_")
        );
    }
    let _ = writeln!(
        s,
        "| accounts' total | {} on the primary; {} of {} replica reads wrong | {} |",
        o.total.map_or("unread".into(), |t| t.to_string()),
        o.reads.wrong_totals.len(),
        o.reads.reads,
        ok(o.total == Some(crate::workload::ACCOUNTS * crate::workload::BALANCE) && o.reads.wrong_totals.is_empty())
    );
    let _ = writeln!(
        s,
        "| rows that went away on a replica | {} time(s), {} with acknowledged rows | {} |",
        o.reads.vanished.len(),
        o.vanished_acked.len(),
        if o.mode == "sync" { ok(o.vanished_acked.is_empty()) } else { "shown below" }
    );
    let _ = writeln!(
        s,
        "| converged after the last heal | {} | {} |",
        o.converge_after_heal.map_or("not within the bound".into(), |c| format!("{c:.1} s")),
        ok(o.converge_after_heal.is_some())
    );
    let _ = writeln!(
        s,
        "| convergence after each quiet point | {} measured: median {:.1} s, p90 {:.1} s, max {:.1} s; {} interrupted by the next fault | |",
        conv.len(),
        percentile(&conv, 0.5),
        percentile(&conv, 0.9),
        conv.last().copied().unwrap_or(f64::NAN),
        o.interrupted_quiet
    );
    let _ = writeln!(s, "| processes crashed or restarting | {} | {} |", o.crashed.len(), ok(o.crashed.is_empty()));
    s
}

pub fn markdown(o: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Chaos run: seed {}, {} mode, {:.0} s of faults\n", o.seed, o.mode, o.duration);
    let verdict =
        if o.failures.is_empty() { "passed".to_string() } else { format!("FAILED ({} check(s))", o.failures.len()) };
    let _ = writeln!(s, "Verdict: **{verdict}**. Link faults used: {}.\n", o.link_fault);
    s.push_str(&summary(o));
    if !o.failures.is_empty() {
        let _ = writeln!(s, "\n## Failures\n");
        for f in &o.failures {
            let _ = writeln!(s, "- {f}");
        }
    }
    let _ = writeln!(s, "\n## Faults by kind\n\n| kind | injected |\n|---|---|");
    let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    for f in &o.faults {
        *by_kind.entry(f.kind).or_default() += 1;
    }
    for kind in Kind::ALL {
        let _ = writeln!(s, "| {} | {} |", kind.label(), by_kind.get(&kind).copied().unwrap_or(0));
    }
    let overlapping = o
        .faults
        .iter()
        .filter(|f| {
            o.faults
                .iter()
                .any(|g| g.id != f.id && g.from < f.to.unwrap_or(f64::MAX) && f.from < g.to.unwrap_or(f64::MAX))
        })
        .count();
    let _ = writeln!(s, "\n{overlapping} of {} faults overlapped another.", o.faults.len());
    let _ = writeln!(
        s,
        "\n## Operator actions\n\n| action | asked | accepted (2xx) | refused (other answer) | no answer |\n|---|---|---|---|---|"
    );
    let mut by_op: BTreeMap<crate::nemesis::Op, (usize, usize, usize, usize)> = BTreeMap::new();
    for r in &o.ops {
        let e = by_op.entry(r.op).or_default();
        e.0 += 1;
        match r.status {
            Some(status) if (200..300).contains(&status) => e.1 += 1,
            Some(_) => e.2 += 1,
            None => e.3 += 1,
        }
    }
    for (op, (n, ok, other, none)) in by_op {
        let _ = writeln!(s, "| {} | {n} | {ok} | {other} | {none} |", op.label());
    }
    if !o.lost.is_empty() {
        let _ = writeln!(s, "\n## Acknowledged writes lost, by the fault that lost them\n");
        let _ = writeln!(
            s,
            "| fault | writes lost | acknowledged between | replication lag at the fault |\n|---|---|---|---|"
        );
        let mut by_fault: BTreeMap<Option<usize>, (usize, f64, f64)> = BTreeMap::new();
        for (_, ids) in &o.lost {
            for (_, at) in ids {
                let id = culprit(&o.faults, *at).map(|f| f.id);
                let e = by_fault.entry(id).or_insert((0, f64::MAX, f64::MIN));
                e.0 += 1;
                e.1 = e.1.min(*at);
                e.2 = e.2.max(*at);
            }
        }
        for (id, (n, from, to)) in by_fault {
            let fault = id.and_then(|id| o.faults.iter().find(|f| f.id == id));
            let _ = writeln!(
                s,
                "| {} | {n} | {from:.1}–{to:.1} s | {} |",
                fault.map_or("none after them".into(), |f| format!("#{} {} at {:.1} s", f.id, f.what, f.from)),
                fault.and_then(|f| f.lag).map_or("unknown".into(), |l| format!("{l} bytes"))
            );
        }
    }
    if !o.vanished_acked.is_empty() {
        let _ = writeln!(s, "\n## Acknowledged rows that went away on a replica\n");
        for v in &o.vanished_acked {
            let _ = writeln!(s, "- {v}");
        }
    }
    let _ = writeln!(s, "\n## Timeline\n\n![timeline](timeline.svg)\n\n```");
    for (at, line) in &o.timeline {
        let _ = writeln!(s, "[{at:7.1}s] {line}");
    }
    let _ = writeln!(s, "```");
    s
}

const WIDTH: f64 = 1400.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 20.0;

fn colour(kind: Kind) -> &'static str {
    match kind {
        Kind::PartitionFromAll | Kind::PartitionFromEtcd | Kind::PartitionFromReplicas | Kind::OneWayPartition => {
            "#ff7f0e"
        }
        Kind::PacketLoss | Kind::SlowLink => "#bcbd22",
        Kind::IsolateEtcdMember | Kind::IsolateEtcdLeader | Kind::KillEtcd | Kind::StopEtcd => "#9467bd",
        Kind::KillService | Kind::StopService => "#8c564b",
        Kind::KillPostgres | Kind::StopPostgres | Kind::KillNode => "#d62728",
        Kind::DiskFull => "#7f7f7f",
    }
}

pub fn svg(o: &Outcome) -> String {
    let end =
        o.spans.iter().map(|s| s.to).chain(o.faults.iter().filter_map(|f| f.to)).fold(o.heal_at + 5.0, f64::max).ceil();
    let x = |t: f64| LEFT + t / end * (WIDTH - LEFT - RIGHT);
    let lanes = 3.0;
    let lane_h = 22.0;
    let fault_rows = 3usize;
    let top = 40.0;
    let faults_top = top + lanes * lane_h + 20.0;
    let ops_top = faults_top + fault_rows as f64 * lane_h + 10.0;
    let acks_top = ops_top + 40.0;
    let acks_h = 110.0;
    let height = acks_top + acks_h + 50.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="14">chaos: seed {}, {} mode, ttl {} s: writable nodes, faults, operator actions, acknowledged writes</text>"#,
        o.seed, o.mode, o.ttl
    );
    for node in 0..3 {
        let y = top + node as f64 * lane_h;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">node{} writable</text>"#,
            LEFT - 6.0,
            y + 14.0,
            node + 1
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{y}" width="{}" height="{}" fill="#f4f4f4"/>"##,
            WIDTH - LEFT - RIGHT,
            lane_h - 4.0
        );
        for span in o.spans.iter().filter(|s| s.node == node) {
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{y}" width="{:.2}" height="{}" fill="#2ca02c"><title>node{} writable {:.2}–{:.2} s</title></rect>"##,
                x(span.from),
                (x(span.to) - x(span.from)).max(0.5),
                lane_h - 4.0,
                node + 1,
                span.from,
                span.to
            );
        }
    }
    for (from, to, a, b) in &o.two_writers {
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{top}" width="{:.2}" height="{}" fill="#d62728" opacity="0.6"><title>node{} and node{} both writable</title></rect>"##,
            x(*from),
            (x(*to) - x(*from)).max(1.0),
            lanes * lane_h,
            a + 1,
            b + 1
        );
    }
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">faults</text>"#, LEFT - 6.0, faults_top + 14.0);
    let mut row_end = vec![f64::MIN; fault_rows];
    for f in &o.faults {
        let to = f.to.unwrap_or(o.heal_at);
        let row = (0..fault_rows).find(|&r| row_end[r] <= f.from).unwrap_or(fault_rows - 1);
        row_end[row] = to;
        let y = faults_top + row as f64 * lane_h;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{y}" width="{:.2}" height="{}" fill="{}" opacity="0.8"><title>#{} {} ({:.1}–{:.1} s)</title></rect>"#,
            x(f.from),
            (x(to) - x(f.from)).max(1.0),
            lane_h - 4.0,
            colour(f.kind),
            f.id,
            f.what,
            f.from,
            to
        );
        if x(to) - x(f.from) > 18.0 {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{}" fill="white" font-size="9">#{}</text>"#,
                x(f.from) + 2.0,
                y + 12.0,
                f.id
            );
        }
    }
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">operator</text>"#, LEFT - 6.0, ops_top + 14.0);
    for r in &o.ops {
        let fill = if r.status.is_some_and(|s| (200..300).contains(&s)) { "#1f77b4" } else { "#aaaaaa" };
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{ops_top}" width="{:.2}" height="18" fill="{fill}"><title>{} at {:.1} s: {}</title></rect>"#,
            x(r.at),
            (x(r.done) - x(r.at)).max(2.0),
            r.what,
            r.at,
            r.status.map_or("no answer".into(), |s| s.to_string())
        );
    }
    // Acknowledged writes per second through HAProxy.
    let seconds = end as usize + 1;
    let mut per_second = vec![0u32; seconds];
    for a in o.acks.iter().filter(|a| a.table.starts_with("hap")) {
        for (_, at) in &a.acked {
            if let Some(c) = per_second.get_mut(*at as usize) {
                *c += 1;
            }
        }
    }
    let peak = f64::from(per_second.iter().copied().max().unwrap_or(1).max(1));
    let base = acks_top + acks_h;
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">writes/s</text>"#, LEFT - 6.0, acks_top + 10.0);
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{peak:.0}</text>"##,
        LEFT - 6.0,
        acks_top + 24.0
    );
    let _ = writeln!(svg, r##"<line x1="{LEFT}" y1="{base}" x2="{}" y2="{base}" stroke="#888"/>"##, WIDTH - RIGHT);
    let mut path = String::new();
    for (i, &c) in per_second.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            x(i as f64),
            base - f64::from(c) / peak * (acks_h - 10.0)
        );
    }
    let _ = writeln!(svg, r##"<path d="{path}" fill="none" stroke="#4a7fb5" stroke-width="1.2"/>"##);
    let step = if end > 600.0 {
        60.0
    } else if end > 120.0 {
        30.0
    } else {
        10.0
    };
    let mut t = 0.0;
    while t <= end {
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0}</text>"#, x(t), base + 15.0);
        t += step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the start</text>"#,
        WIDTH / 2.0,
        base + 32.0
    );
    let legend = [
        ("#ff7f0e", "partition"),
        ("#bcbd22", "loss/slow link"),
        ("#9467bd", "etcd"),
        ("#8c564b", "pgwarden service"),
        ("#d62728", "PostgreSQL/node"),
        ("#7f7f7f", "full disk"),
    ];
    for (i, (c, label)) in legend.iter().enumerate() {
        let lx = LEFT + 150.0 * i as f64;
        let _ = writeln!(svg, r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{c}"/>"#, height - 14.0);
        let _ = writeln!(svg, r#"<text x="{}" y="{}">{label}</text>"#, lx + 14.0, height - 5.0);
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Look;

    fn fault(id: usize, from: f64, to: f64) -> FaultRecord {
        FaultRecord { id, kind: Kind::KillPostgres, what: format!("f{id}"), from, to: Some(to), lag: Some(id as u64) }
    }

    fn converged_at(at: f64) -> Look {
        Look { at, primaries: vec![0], replicas: vec![1, 2], streaming: 2, leader_running: true, ..Look::default() }
    }

    #[test]
    fn convergence_is_measured_from_each_quiet_point_unless_a_fault_comes_first() {
        let mut outcome = Outcome {
            // 1 and 2 overlap: the quiet point is 2's heal (12 s); 3 heals
            // at 30 s and 4 starts at 31 s, before the cluster converged.
            faults: vec![fault(1, 0.0, 10.0), fault(2, 5.0, 12.0), fault(3, 20.0, 30.0), fault(4, 31.0, 40.0)],
            looks: vec![converged_at(11.0), converged_at(14.5), converged_at(33.0), converged_at(41.0)],
            ..Outcome::default()
        };
        quiet_convergence(&mut outcome);
        assert_eq!(outcome.quiet_convergence, vec![2.5, 1.0]);
        assert_eq!(outcome.interrupted_quiet, 1);
    }

    #[test]
    fn availability_counts_seconds_with_a_write_and_the_union_of_writable_spans() {
        let acks =
            crate::workload::Acks { table: "hap0".into(), acked: vec![(1, 10.2), (2, 10.7), (3, 13.5)], failed: 0 };
        let span = |node, from, to| crate::workload::Span { node, from, to };
        let outcome = Outcome {
            duration: 10.0,
            heal_at: 20.0,
            acks: vec![acks],
            // Overlapping spans of two nodes count once; 2 + 3 of 10 s.
            spans: vec![span(0, 8.0, 12.0), span(1, 11.0, 12.0), span(1, 15.0, 18.0)],
            ..Outcome::default()
        };
        let (acked, writable) = availability(&outcome);
        assert!((acked - 0.2).abs() < 1e-9, "{acked}");
        assert!((writable - 0.5).abs() < 1e-9, "{writable}");
    }

    #[test]
    fn a_lost_write_is_blamed_on_the_fault_in_force_else_the_next_one() {
        let faults = [fault(1, 0.0, 10.0), fault(2, 20.0, 25.0), fault(3, 40.0, 45.0)];
        assert_eq!(culprit(&faults, 22.0).map(|f| f.id), Some(2), "acknowledged by a node cut off");
        assert_eq!(culprit(&faults, 15.0).map(|f| f.id), Some(2), "acknowledged just before the fault");
        assert!(culprit(&faults, 50.0).is_none());
    }
}
