//! The members table as `patronictl list` prints it (the 4.0 layout with one
//! `Lag in MB` column, as DESIGN.md fixes it).

use dcs::ClusterView;

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
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let sync: Vec<&str> = view.sync.as_ref().map(|s| s.members()).unwrap_or_default();
    let optime = view.status.as_ref().map(|s| s.optime);
    let addresses: Vec<Option<(String, u16)>> = view.members.iter().map(|m| m.data.host_port()).collect();
    let hosts: Vec<&str> = addresses.iter().flatten().map(|(h, _)| h.as_str()).collect();
    let show_ports = addresses.iter().flatten().any(|(_, p)| *p != 5432)
        || hosts.iter().enumerate().any(|(i, h)| hosts[..i].contains(h));
    let mut rows: Vec<(bool, [String; 6])> = Vec::new();
    for (member, address) in view.members.iter().zip(&addresses) {
        let host = match address {
            Some((h, p)) if show_ports => format!("{h}:{p}"),
            Some((h, _)) => h.clone(),
            None => String::new(),
        };
        let is_leader = Some(member.name.as_str()) == leader;
        let role = if is_leader {
            if member.data.role == "standby_leader" { "Standby Leader".into() } else { "Leader".into() }
        } else if sync.contains(&member.name.as_str()) {
            "Sync Standby".into()
        } else if member.data.role == "standby_leader" || member.data.role == "primary" {
            // A primary that does not hold the key is not the leader.
            title_case(&member.data.role)
        } else {
            "Replica".into()
        };
        let state = match (&member.data.replication_state, is_leader) {
            (Some(replication), false) => replication.clone(),
            _ => member.data.state.clone(),
        };
        // A member cloning its data directory: how far it has come.
        let state = match member.data.clone_progress() {
            Some(copy) => format!("{} {copy}", member.data.state),
            None => state,
        };
        let timeline = member.data.timeline.map(|t| t.to_string()).unwrap_or_default();
        let lag = if is_leader {
            String::new()
        } else {
            let position = member.data.replay_lsn.or(member.data.xlog_location);
            match (optime, position) {
                (Some(optime), Some(position)) => format!("{:.0}", optime.saturating_sub(position) as f64 / MIB),
                _ => "unknown".into(),
            }
        };
        let name =
            if topology && !is_leader && leader.is_some() { format!("+ {}", member.name) } else { member.name.clone() };
        rows.push((is_leader, [name, host, role, state, timeline, lag]));
    }
    if topology {
        // The leader first, its replicas indented below it.
        rows.sort_by_key(|(is_leader, _)| !*is_leader);
    }
    rows.into_iter().map(|(_, row)| row).collect()
}

/// A bordered table with a title in its top rule, as patronictl draws it.
fn draw(title: &str, header: &[&str], rows: &[Vec<String>], numeric_from: usize) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
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
    let row_line = |cells: &[String]| {
        let mut line = String::from("|");
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i >= numeric_from {
                line.push_str(&format!(" {cell:>w$} |"));
            } else {
                line.push_str(&format!(" {cell:<w$} |"));
            }
        }
        line + "\n"
    };
    let mut out = rule(Some(title));
    out.push_str(&row_line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>()));
    out.push_str(&rule(None));
    for row in rows {
        out.push_str(&row_line(row));
    }
    out.push_str(&rule(None));
    out
}

/// Renders the members table; members sorted by name (`topology`: the leader
/// first, replicas indented).
/// A member reports a parameter change waiting for a restart.
fn pending_restart(view: &ClusterView, name: &str) -> bool {
    let name = name.trim_start_matches("+ ");
    view.member(name).is_some_and(|m| m.data.extra.get("pending_restart") == Some(&serde_json::Value::Bool(true)))
}

/// When a restart is scheduled on the member.
fn scheduled_restart(view: &ClusterView, name: &str) -> Option<String> {
    let name = name.trim_start_matches("+ ");
    view.member(name)?.data.extra.get("scheduled_restart")?.get("schedule")?.as_str().map(String::from)
}

pub fn members_table(scope: &str, view: &ClusterView, topology: bool) -> String {
    let mut rows: Vec<Vec<String>> = rows(view, topology).into_iter().map(|r| r.to_vec()).collect();
    let mut header = HEADER.to_vec();
    // Patroni's column, shown only when some member has a restart pending.
    if rows.iter().any(|r| pending_restart(view, &r[0])) {
        header.push("Pending restart");
        for row in &mut rows {
            let mark = if pending_restart(view, &row[0]) { "*" } else { "" };
            row.push(mark.to_string());
        }
    }
    if rows.iter().any(|r| scheduled_restart(view, &r[0]).is_some()) {
        header.push("Scheduled restart");
        for row in &mut rows {
            let at = scheduled_restart(view, &row[0]).unwrap_or_default();
            row.push(at);
        }
    }
    let mut out = draw(&format!("Cluster: {scope} ({})", sysid(view)), &header, &rows, 4);
    if view.config.as_ref().is_some_and(|(c, _)| c.get("pause").and_then(serde_json::Value::as_bool) == Some(true)) {
        out.push_str(" Maintenance mode: on\n");
    }
    out
}

/// `list` in the chosen format; json/yaml/tsv carry the same columns plus `Cluster`.
pub fn render_list(snapshot: &Snapshot, format: Format) -> anyhow::Result<String> {
    let rows = rows(&snapshot.view, false);
    let records: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
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
            if pending_restart(&snapshot.view, &row[0]) {
                record.insert("Pending restart".into(), "*".into());
            }
            serde_json::Value::Object(record)
        })
        .collect();
    Ok(match format {
        Format::Pretty => members_table(&snapshot.scope, &snapshot.view, false),
        Format::Json => format!("{}\n", serde_json::to_string(&records)?),
        Format::Yaml => serde_saphyr::to_string(&records)?,
        Format::Tsv => {
            let mut out = format!("Cluster\t{}\n", HEADER.join("\t"));
            for row in &rows {
                out.push_str(&format!("{}\t{}\n", snapshot.scope, row.join("\t")));
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
                h.0.to_string(),
                ha_core::Lsn(h.1).to_string(),
                h.2.clone(),
                h.3.clone().unwrap_or_default(),
                h.4.clone().unwrap_or_default(),
            ]
        })
        .collect();
    Ok(match format {
        Format::Pretty => draw(&format!("Cluster: {} history", snapshot.scope), &header, &rows, 99),
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
        let table = members_table("batman", &view, false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("+ Cluster: batman (7277694203142172922) "), "{table}");
        assert!(lines[1].contains("| Member | Host") && lines[1].contains("| Lag in MB |"), "{table}");
        assert!(lines[3].contains("| pg0    | 127.0.0.1:5432 | Leader  | running   |  3 |"), "{table}");
        assert!(lines[4].contains("| Replica | streaming |  3 |         2 |"), "{table}");
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
    fn names_an_uninitialised_cluster() {
        let table = members_table("empty", &ClusterView::default(), false);
        assert!(table.starts_with("+ Cluster: empty (uninitialized) "), "{table}");
    }
}
