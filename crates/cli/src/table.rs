//! The members table as `patronictl list` prints it (the 4.0 layout with one
//! `Lag in MB` column, as DESIGN.md fixes it).

use dcs::ClusterView;

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

/// Renders the table; members sorted by name.
pub fn members_table(scope: &str, view: &ClusterView) -> String {
    let sysid = match view.initialize.as_deref() {
        None => "uninitialized".to_string(),
        Some("") => "initializing".to_string(),
        Some(id) => id.to_string(),
    };
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let sync: Vec<&str> = view.sync.as_ref().map(|s| s.members()).unwrap_or_default();
    let optime = view.status.as_ref().map(|s| s.optime);
    let addresses: Vec<Option<(String, u16)>> = view.members.iter().map(|m| m.data.host_port()).collect();
    let hosts: Vec<&str> = addresses.iter().flatten().map(|(h, _)| h.as_str()).collect();
    let show_ports = addresses.iter().flatten().any(|(_, p)| *p != 5432)
        || hosts.iter().enumerate().any(|(i, h)| hosts[..i].contains(h));
    let header = ["Member", "Host", "Role", "State", "TL", "Lag in MB"];
    let mut rows: Vec<[String; 6]> = Vec::new();
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
        let timeline = member.data.timeline.map(|t| t.to_string()).unwrap_or_default();
        let lag = if is_leader {
            String::new()
        } else {
            let position = member.data.replay_lsn.or(member.data.xlog_location);
            match (optime, position) {
                (Some(optime), Some(position)) => {
                    format!("{:.0}", optime.saturating_sub(position) as f64 / MIB)
                }
                _ => "unknown".into(),
            }
        };
        rows.push([member.name.clone(), host, role, state, timeline, lag]);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
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
            let numeric = i >= 4;
            if numeric {
                line.push_str(&format!(" {cell:>w$} |"));
            } else {
                line.push_str(&format!(" {cell:<w$} |"));
            }
        }
        line + "\n"
    };
    let mut out = rule(Some(&format!("Cluster: {scope} ({sysid})")));
    out.push_str(&row_line(&header.map(String::from)));
    out.push_str(&rule(None));
    for row in &rows {
        out.push_str(&row_line(row));
    }
    out.push_str(&rule(None));
    if view.config.as_ref().is_some_and(|(c, _)| c.get("pause").and_then(serde_json::Value::as_bool) == Some(true)) {
        out.push_str(" Maintenance mode: on\n");
    }
    out
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
        let table = members_table("batman", &view);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("+ Cluster: batman (7277694203142172922) "), "{table}");
        assert!(lines[1].contains("| Member | Host") && lines[1].contains("| Lag in MB |"), "{table}");
        assert!(lines[3].contains("| pg0    | 127.0.0.1:5432 | Leader  | running   |  3 |"), "{table}");
        assert!(lines[4].contains("| Replica | streaming |  3 |         2 |"), "{table}");
    }

    #[test]
    fn names_an_uninitialised_cluster() {
        let table = members_table("empty", &ClusterView::default());
        assert!(table.starts_with("+ Cluster: empty (uninitialized) "), "{table}");
    }
}
