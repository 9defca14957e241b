//! The members table as `patronictl list` prints it (the 4.0 layout with one
//! `Lag in MB` column, as DESIGN.md fixes it).

use dcs::{ClusterRole, ClusterView};

use crate::Format;
use crate::source::Snapshot;

const MIB: f64 = 1024.0 * 1024.0;

fn title_case(role: &str) -> String {
    role.split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

const HEADER: [&str; 6] = ["Member", "Host", "Role", "State", "TL", "Lag in MB"];

/// The system identifier as the table's title shows it.
fn sysid(view: &ClusterView) -> String {
    match view.initialize.as_deref() {
        None => "uninitialized".to_string(),
        Some("") => "initializing".to_string(),
        Some(id) => id.to_string(),
    }
}

/// One row per member, sorted by name, in the table's columns.
pub fn rows(view: &ClusterView, topology: bool) -> Vec<[String; 6]> {
    let addresses: Vec<Option<(String, u16)>> = view.members.iter().map(|m| m.data.host_port()).collect();
    let hosts: Vec<&str> = addresses.iter().flatten().map(|(h, _)| h.as_str()).collect();
    let show_ports = addresses.iter().flatten().any(|(_, p)| *p != 5432)
        || hosts.iter().enumerate().any(|(i, h)| hosts[..i].contains(h));
    let mut rows: Vec<[String; 6]> = Vec::new();
    for (summary, address) in view.summaries().into_iter().zip(&addresses) {
        let member = summary.entry;
        let host = match address {
            Some((h, p)) if show_ports => format!("{h}:{p}"),
            Some((h, _)) => h.clone(),
            None => String::new(),
        };
        let role = match summary.role {
            // A primary that does not hold the key is not the leader.
            ClusterRole::Replica
                if matches!(member.data.member_role(), dcs::MemberRole::StandbyLeader | dcs::MemberRole::Primary) =>
            {
                title_case(&member.data.role)
            }
            role => title_case(role.as_str()),
        };
        // A member cloning its data directory: how far it has come.
        let state = match member.data.clone_progress() {
            Some(copy) => format!("{} {copy}", member.data.state),
            None => summary.state.to_string(),
        };
        let timeline = member.data.timeline.map(|t| t.to_string()).unwrap_or_default();
        let lag = match summary.lag {
            _ if summary.role.leads() => String::new(),
            Some(lag) => format!("{:.0}", lag as f64 / MIB),
            None => "unknown".into(),
        };
        rows.push([member.name.clone(), host, role, state, timeline, lag]);
    }
    match view.leader.as_ref() {
        Some(leader) if topology => topology_order(view, &leader.name, rows),
        _ => rows,
    }
}

/// The rows as patronictl's topology draws them: the leader first, each
/// replica indented below the member it streams from (its `replicatefrom`,
/// when that names another replica; the leader otherwise), depth first.
fn topology_order(view: &ClusterView, leader: &str, rows: Vec<[String; 6]>) -> Vec<[String; 6]> {
    let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
    // The member `name` streams from by its tag, when that is another
    // replica here.
    let upstream = |name: &str| {
        view.member(name)
            .and_then(|m| m.data.known_tags().replicatefrom)
            .filter(|p| p != name && p != leader && names.contains(&p.as_str()))
    };
    let parent_of = |name: &str| -> String {
        let tag = upstream(name);
        // A chain of replicatefrom tags that loops hangs from the leader.
        let mut hop = tag.clone();
        for _ in 0..names.len() {
            match hop {
                Some(p) if p == name => return leader.to_string(),
                Some(p) => hop = upstream(&p),
                None => break,
            }
        }
        tag.unwrap_or_else(|| leader.to_string())
    };
    let mut ordered = Vec::new();
    let mut pending: Vec<(String, usize)> = vec![(leader.to_string(), 0)];
    while let Some((name, level)) = pending.pop() {
        if let Some(row) = rows.iter().find(|r| r[0] == name) {
            let mut row = row.clone();
            if level > 0 {
                row[0] = format!("{}+ {}", "  ".repeat(level - 1), row[0]);
            }
            ordered.push(row);
        }
        // Children in name order: pushed in reverse onto the stack.
        for child in rows.iter().rev().map(|r| &r[0]).filter(|c| **c != leader && parent_of(c) == name) {
            pending.push((child.clone(), level + 1));
        }
    }
    // A member the leader's tree does not reach (the leader has no member
    // key) still gets its row.
    for row in &rows {
        if !ordered.iter().any(|o| o[0].trim_start_matches([' ', '+']) == row[0]) {
            let mut row = row.clone();
            if row[0] != leader {
                row[0] = format!("+ {}", row[0]);
            }
            ordered.push(row);
        }
    }
    ordered
}

/// A bordered table with a title in its top rule, as patronictl draws it.
/// A cell may hold several lines (tags in YAML); then a rule separates
/// every row, as patronictl's.
fn draw(title: Option<&str>, header: &[&str], rows: &[Vec<String>], numeric: std::ops::Range<usize>) -> String {
    let columns = header.len().max(rows.iter().map(Vec::len).max().unwrap_or(0));
    let mut widths = vec![0; columns];
    for (w, h) in widths.iter_mut().zip(header) {
        *w = h.chars().count();
    }
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.lines().map(|l| l.chars().count()).max().unwrap_or(0));
        }
    }
    let rule = |title: Option<&str>| {
        let mut line = String::from("+");
        for w in &widths {
            line.push_str(&"-".repeat(w + 2));
            line.push('+');
        }
        if let Some(title) = title {
            let title = format!(" {title} ");
            if title.len() + 1 < line.len() {
                line.replace_range(1..1 + title.len(), &title);
            } else {
                line = format!("+{title}+");
            }
        }
        line + "\n"
    };
    let row_lines = |cells: &[String]| {
        let height = cells.iter().map(|c| c.lines().count()).max().unwrap_or(1).max(1);
        let mut out = String::new();
        for k in 0..height {
            let mut line = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).and_then(|c| c.lines().nth(k)).unwrap_or("");
                if numeric.contains(&i) {
                    line.push_str(&format!(" {cell:>w$} |"));
                } else {
                    line.push_str(&format!(" {cell:<w$} |"));
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    };
    let multi_line = rows.iter().flatten().any(|cell| cell.contains('\n'));
    let mut out = rule(title);
    if !header.is_empty() {
        out.push_str(&row_lines(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>()));
        out.push_str(&rule(None));
    }
    for (i, row) in rows.iter().enumerate() {
        out.push_str(&row_lines(row));
        if multi_line && i + 1 < rows.len() {
            out.push_str(&rule(None));
        }
    }
    out.push_str(&rule(None));
    out
}

/// A bordered table without a title (`query`'s pretty format).
pub fn draw_untitled(header: &[String], rows: &[Vec<String>]) -> String {
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    draw(None, &header, rows, 0..0)
}

/// Renders the members table; members sorted by name (`topology`: the leader
/// first, replicas indented).
/// The member a table row names (topology indents replicas).
fn row_member<'a>(view: &'a ClusterView, row: &[String]) -> Option<&'a dcs::MemberEntry> {
    view.member(row[0].trim_start_matches([' ', '+']))
}

/// A member's tags as patronictl shows them: YAML block lines (`pretty`), or
/// one flow mapping (`tsv`, `topology`); nothing without tags.
fn tags(member: &dcs::MemberEntry, flow: bool) -> String {
    let entries: Vec<String> = member
        .data
        .tags
        .iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => format!("{key}: {text}"),
            other => format!("{key}: {other}"),
        })
        .collect();
    match (entries.is_empty(), flow) {
        (true, _) => String::new(),
        (false, true) => format!("{{{}}}", entries.join(", ")),
        (false, false) => entries.join("\n"),
    }
}

/// What an optional column shows for a member.
type Cell<'a> = dyn Fn(&dcs::MemberEntry) -> String + 'a;

/// Patroni's optional columns, each shown when `extended` or when some
/// member has something to show in it: `Pending restart` (`*`), `Scheduled
/// restart` (with `if version < X`), `Tags`.
fn optional_columns(
    view: &ClusterView,
    rows: &[[String; 6]],
    extended: bool,
    flow_tags: bool,
) -> Vec<(&'static str, Vec<String>)> {
    let pending = |m: &dcs::MemberEntry| {
        if m.data.pending_restart() { "*".into() } else { String::new() }
    };
    let scheduled = |m: &dcs::MemberEntry| {
        let Some(restart) = m.data.scheduled_restart() else { return String::new() };
        let at = restart.get("schedule").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        match restart.get("postgres_version").and_then(serde_json::Value::as_str) {
            Some(version) => format!("{at} if version < {version}"),
            None => at,
        }
    };
    // Patroni's `param: old->new` lines; in pretty tables a long one hidden.
    let reason = |m: &dcs::MemberEntry| {
        let Some(reasons) = m.data.pending_restart_reason() else {
            return String::new();
        };
        let text =
            |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_str).unwrap_or("").to_string();
        reasons
            .iter()
            .map(|(name, values)| {
                let full = format!("{name}: {}->{}", text(values, "old_value"), text(values, "new_value"));
                if !flow_tags && full.len() > 50 { format!("{name}: [hidden - too long]") } else { full }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let columns: [(&'static str, &Cell); 4] = [
        ("Pending restart", &pending),
        ("Pending restart reason", &reason),
        ("Scheduled restart", &scheduled),
        ("Tags", &|m| tags(m, flow_tags)),
    ];
    columns
        .into_iter()
        .map(|(name, value)| {
            let cells: Vec<String> =
                rows.iter().map(|row| row_member(view, row).map(value).unwrap_or_default()).collect();
            (name, cells)
        })
        .filter(|(_, cells)| extended || cells.iter().any(|c| !c.is_empty()))
        .collect()
}

/// The members table: Patroni's columns, and its optional ones (see
/// [`optional_columns`]); `topology`: the leader first, replicas indented.
pub fn members_table(scope: &str, view: &ClusterView, topology: bool, extended: bool) -> String {
    let base = rows(view, topology);
    let optional = optional_columns(view, &base, extended, topology);
    let mut header = HEADER.to_vec();
    header.extend(optional.iter().map(|(name, _)| *name));
    let rows: Vec<Vec<String>> = base
        .iter()
        .enumerate()
        .map(|(i, row)| row.iter().cloned().chain(optional.iter().map(|(_, cells)| cells[i].clone())).collect())
        .collect();
    let mut out = draw(Some(&format!("Cluster: {scope} ({})", sysid(view))), &header, &rows, 4..6);
    if view.config.as_ref().is_some_and(|(c, _)| c.get("pause").and_then(serde_json::Value::as_bool) == Some(true)) {
        out.push_str(" Maintenance mode: on\n");
    }
    out
}

/// `list` in the chosen format; json/yaml/tsv carry the same columns plus
/// `Cluster` (json and yaml leave empty values out, as patronictl's).
pub fn render_list(snapshot: &Snapshot, format: Format, extended: bool) -> anyhow::Result<String> {
    let rows = rows(&snapshot.view, false);
    let optional = optional_columns(&snapshot.view, &rows, extended, true);
    let records: Vec<serde_json::Value> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut record = serde_json::Map::new();
            record.insert("Cluster".into(), snapshot.scope.clone().into());
            for (key, value) in HEADER.iter().zip(row) {
                let value = match *key {
                    "TL" | "Lag in MB" => {
                        value.parse::<u64>().map_or_else(|_| serde_json::Value::from(value.clone()), Into::into)
                    }
                    _ => value.clone().into(),
                };
                record.insert((*key).to_string(), value);
            }
            for (name, cells) in &optional {
                match (*name, snapshot.view.member(&row[0])) {
                    ("Tags", Some(member)) if !member.data.tags.is_empty() => {
                        record.insert("Tags".into(), serde_json::Value::Object(member.data.tags.clone()));
                    }
                    ("Tags", _) => {}
                    _ if !cells[i].is_empty() => {
                        record.insert((*name).to_string(), cells[i].clone().into());
                    }
                    _ => {}
                }
            }
            serde_json::Value::Object(record)
        })
        .collect();
    Ok(match format {
        Format::Pretty => members_table(&snapshot.scope, &snapshot.view, false, extended),
        Format::Json => format!("{}\n", serde_json::to_string(&records)?),
        Format::Yaml => serde_saphyr::to_string(&records)?,
        Format::Tsv => {
            let names: Vec<&str> = HEADER.iter().copied().chain(optional.iter().map(|(name, _)| *name)).collect();
            let mut out = format!("Cluster\t{}\n", names.join("\t"));
            for (i, row) in rows.iter().enumerate() {
                let extra: Vec<&str> = optional.iter().map(|(_, cells)| cells[i].as_str()).collect();
                let all: Vec<&str> = row.iter().map(String::as_str).chain(extra).collect();
                out.push_str(&format!("{}\t{}\n", snapshot.scope, all.join("\t")));
            }
            out
        }
    })
}

/// `history`: TL | LSN | Reason | Timestamp | New Leader.
pub fn render_history(snapshot: &Snapshot, format: Format) -> anyhow::Result<String> {
    let header = ["TL", "LSN", "Reason", "Timestamp", "New Leader"];
    let rows: Vec<Vec<String>> = snapshot
        .view
        .history
        .iter()
        .map(|h| {
            vec![
                h.timeline.to_string(),
                ha_core::Lsn(h.switch_lsn).to_string(),
                h.reason.clone(),
                h.timestamp.clone().unwrap_or_default(),
                h.new_leader.clone().unwrap_or_default(),
            ]
        })
        .collect();
    Ok(match format {
        Format::Pretty => draw(Some(&format!("Cluster: {} history", snapshot.scope)), &header, &rows, 0..0),
        Format::Json | Format::Yaml => {
            let records: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    serde_json::Value::Object(
                        header.iter().map(|h| h.to_string()).zip(row.iter().map(|v| v.clone().into())).collect(),
                    )
                })
                .collect();
            if matches!(format, Format::Json) {
                format!("{}\n", serde_json::to_string(&records)?)
            } else {
                serde_saphyr::to_string(&records)?
            }
        }
        Format::Tsv => {
            let mut out = format!("{}\n", header.join("\t"));
            for row in &rows {
                out.push_str(&format!("{}\n", row.join("\t")));
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcs::{LeaderView, MemberData, MemberEntry, Status};

    fn member(name: &str, port: u16, role: &str, state: &str, lsn: u64) -> MemberEntry {
        MemberEntry {
            name: name.into(),
            lease: 1,
            data: MemberData {
                conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
                role: role.into(),
                state: state.into(),
                timeline: Some(3),
                xlog_location: Some(lsn),
                ..MemberData::default()
            },
        }
    }

    #[test]
    fn prints_patronis_columns_with_lag_in_mb() {
        let view = ClusterView {
            initialize: Some("7277694203142172922".into()),
            leader: Some(LeaderView { name: "pg0".into(), lease: 1, mod_revision: 1 }),
            members: vec![
                member("pg0", 5432, "primary", "running", 50 << 20),
                member("pg1", 5433, "replica", "streaming", 48 << 20),
            ],
            status: Some(Status { optime: 50 << 20, ..Status::default() }),
            ..ClusterView::default()
        };
        let table = members_table("batman", &view, false, false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("+ Cluster: batman (7277694203142172922) "), "{table}");
        assert!(lines[1].contains("| Member | Host") && lines[1].contains("| Lag in MB |"), "{table}");
        assert!(lines[3].contains("| pg0    | 127.0.0.1:5432 | Leader  | running   |  3 |"), "{table}");
        assert!(lines[4].contains("| Replica | streaming |  3 |         2 |"), "{table}");
    }

    #[test]
    fn topology_indents_each_replica_below_the_member_it_streams_from() {
        let from = |name: &str, port: u16, upstream: Option<&str>| {
            let mut m = member(name, port, "replica", "streaming", 1);
            if let Some(upstream) = upstream {
                m.data.tags.insert("replicatefrom".into(), upstream.into());
            }
            m
        };
        let view = ClusterView {
            leader: Some(LeaderView { name: "pg0".into(), lease: 1, mod_revision: 1 }),
            members: vec![
                member("pg0", 5432, "primary", "running", 1),
                from("pg1", 5433, None),
                from("pg2", 5434, Some("pg1")),
                from("pg3", 5435, Some("pg2")),
                from("pg4", 5436, Some("pg0")),
                // A loop of tags, and a tag naming nobody: below the leader.
                from("pg5", 5437, Some("pg6")),
                from("pg6", 5438, Some("pg5")),
                from("pg7", 5439, Some("gone")),
            ],
            ..ClusterView::default()
        };
        let names: Vec<String> = rows(&view, true).into_iter().map(|r| r[0].clone()).collect();
        assert_eq!(names, ["pg0", "+ pg1", "  + pg2", "    + pg3", "+ pg4", "+ pg5", "+ pg6", "+ pg7"]);
        let table = members_table("batman", &view, true, true);
        assert!(table.contains("|     + pg3 |"), "{table}");
    }

    #[test]
    fn a_member_cloning_shows_how_far_it_has_come() {
        let mut cloning = member("pg2", 5434, "uninitialized", "creating replica", 0);
        cloning.data.timeline = None;
        let copy = dcs::CloneProgress::measure(100 << 20, 400 << 20, std::time::Duration::from_secs(10));
        cloning.data.extra.insert("clone_progress".into(), serde_json::to_value(copy).expect("json"));
        let view = ClusterView { members: vec![cloning], ..ClusterView::default() };
        let rows = rows(&view, false);
        assert_eq!(rows[0][3], "creating replica 25% (100 MB of 400 MB, 10.0 MB/s, 30 s left)");
    }

    #[test]
    fn optional_columns_show_when_extended_or_filled_and_tags_span_lines() {
        let mut tagged = member("pg1", 5433, "replica", "streaming", 50 << 20);
        tagged.data.tags.insert("nofailover".into(), serde_json::Value::Bool(true));
        tagged.data.tags.insert("clonefrom".into(), serde_json::Value::Bool(true));
        tagged.data.extra.insert(
            "scheduled_restart".into(),
            serde_json::json!({"schedule": "2026-12-06T01:00:00+00:00", "postgres_version": "15.4"}),
        );
        let plain = member("pg0", 5432, "primary", "running", 50 << 20);
        let view = ClusterView {
            leader: Some(LeaderView { name: "pg0".into(), lease: 1, mod_revision: 1 }),
            members: vec![plain.clone(), tagged],
            ..ClusterView::default()
        };
        let table = members_table("batman", &view, false, false);
        assert!(!table.contains("Pending restart"), "{table}");
        assert!(table.contains("| Scheduled restart") && table.contains("| Tags"), "{table}");
        assert!(table.contains("2026-12-06T01:00:00+00:00 if version < 15.4"), "{table}");
        // One tag per line, and a rule between the rows.
        assert!(table.contains("| clonefrom: true  |") && table.contains("| nofailover: true |"), "{table}");
        assert_eq!(table.lines().filter(|l| l.starts_with('+')).count(), 4, "{table}");
        // Extended: every optional column, also when empty.
        let quiet = ClusterView { members: vec![plain], ..view };
        assert!(!members_table("batman", &quiet, false, false).contains("Tags"));
        let extended = members_table("batman", &quiet, false, true);
        assert!(
            extended.contains("| Pending restart | Pending restart reason | Scheduled restart | Tags |"),
            "{extended}"
        );
        // Topology and tsv write tags as one flow mapping.
        let snapshot = Snapshot { scope: "batman".into(), view: view_with_tags(), from: "etcd".into() };
        let tsv = render_list(&snapshot, Format::Tsv, false).expect("tsv");
        assert!(tsv.lines().next().is_some_and(|h| h.ends_with("\tTags")), "{tsv}");
        assert!(tsv.contains("\t{nofailover: true}"), "{tsv}");
        let json = render_list(&snapshot, Format::Json, false).expect("json");
        assert!(json.contains("\"Tags\":{\"nofailover\":true}") && !json.contains("\"Tags\":{}"), "{json}");
    }

    fn view_with_tags() -> ClusterView {
        let mut tagged = member("pg1", 5433, "replica", "streaming", 50 << 20);
        tagged.data.tags.insert("nofailover".into(), serde_json::Value::Bool(true));
        ClusterView {
            leader: Some(LeaderView { name: "pg0".into(), lease: 1, mod_revision: 1 }),
            members: vec![member("pg0", 5432, "primary", "running", 50 << 20), tagged],
            ..ClusterView::default()
        }
    }

    #[test]
    fn names_an_uninitialised_cluster() {
        let table = members_table("empty", &ClusterView::default(), false, false);
        assert!(table.starts_with("+ Cluster: empty (uninitialized) "), "{table}");
    }
}
