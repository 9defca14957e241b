//! `query`: SQL on a member, chosen by role or name, as `patronictl query`
//! runs it: the result of the last statement, in tsv (default), pretty,
//! json or yaml; an error is printed as a row (a timestamp and the SQLSTATE)
//! and the command still succeeds, as patronictl's does.

use std::time::Duration;

use anyhow::{Context as _, bail};
use dcs::{ClusterView, MemberEntry};
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Column as _, ConnectOptions as _, Either, Row as _, ValueRef as _};
use tokio_stream::StreamExt as _;

use crate::Format;

/// Members by Patroni's role names (`patronictl`'s `--role`): `leader`,
/// `primary` and `standby-leader` are the leader key's holder (the last
/// only in a standby cluster), `replica` and `standby` every other member,
/// `any` all; the leader first.
pub fn with_role<'a>(view: &'a ClusterView, role: &str) -> anyhow::Result<Vec<&'a MemberEntry>> {
    let leader = view.leader.as_ref().and_then(|l| view.member(&l.name));
    let is_leader = |m: &MemberEntry| leader.is_some_and(|l| l.name == m.name);
    let standby_cluster = leader.is_some_and(|l| l.data.member_role() == dcs::MemberRole::StandbyLeader);
    Ok(match role {
        "leader" | "master" => leader.into_iter().collect(),
        "primary" => leader.filter(|_| !standby_cluster).into_iter().collect(),
        "standby-leader" => leader.filter(|_| standby_cluster).into_iter().collect(),
        "replica" | "standby" => view.members.iter().filter(|m| !is_leader(m)).collect(),
        "any" => leader.into_iter().chain(view.members.iter().filter(|m| !is_leader(m))).collect(),
        other => bail!("role {other:?}: expected one of leader, primary, standby-leader, replica, standby, any"),
    })
}

/// What `query` was asked.
pub struct Query {
    pub role: Option<String>,
    pub member: Option<String>,
    pub command: Option<String>,
    pub file: Option<String>,
    pub username: Option<String>,
    pub password: bool,
    pub dbname: Option<String>,
    pub format: Format,
    pub delimiter: String,
}

/// The SQL to run, from `--command` or `--file` (one of them).
fn sql(query: &Query) -> anyhow::Result<String> {
    match (&query.command, &query.file) {
        (Some(_), Some(_)) => bail!("--file and --command are mutually exclusive options"),
        (Some(command), None) => Ok(command.clone()),
        (None, Some(path)) => crate::operations::read_source(path),
        (None, None) => bail!("You need to specify either --command or --file"),
    }
}

/// The time as patronictl prints it (`2026-12-05 17:30:00`), in UTC.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"))
        .unwrap_or_default()
}

/// One value as text (the simple query protocol sends every value as text);
/// NULL as patronictl prints it.
fn text(row: &PgRow, index: usize) -> String {
    match row.try_get_raw(index) {
        Ok(value) if value.is_null() => "None".into(),
        Ok(value) => value.as_str().map(String::from).unwrap_or_else(|_| "<binary>".into()),
        Err(e) => format!("<{e}>"),
    }
}

/// Runs the last result's rows and column names, or an error row.
async fn run_sql(options: PgConnectOptions, sql: &str) -> (Vec<Vec<String>>, Option<Vec<String>>) {
    let error_row = |e: &sqlx::Error| {
        let what = match e {
            sqlx::Error::Database(db) => db.code().map_or_else(|| db.message().to_string(), |c| c.to_string()),
            other => other.to_string(),
        };
        (vec![vec![now(), format!("ERROR, SQLSTATE: {}", what.replace('\n', " "))]], None)
    };
    let mut conn = match options.connect().await {
        Ok(conn) => conn,
        Err(e) => return error_row(&e),
    };
    let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).fetch_many(&mut conn);
    let (mut last, mut current): (Vec<PgRow>, Vec<PgRow>) = (Vec::new(), Vec::new());
    loop {
        match results.next().await {
            Some(Ok(Either::Right(row))) => current.push(row),
            Some(Ok(Either::Left(_))) => last = std::mem::take(&mut current),
            None => break,
            Some(Err(e)) => return error_row(&e),
        }
    }
    let header = last.first().map(|row| row.columns().iter().map(|c| c.name().to_string()).collect());
    let rows = last.iter().map(|row| (0..row.len()).map(|i| text(row, i)).collect()).collect();
    (rows, header)
}

/// Prints rows as patronictl's `print_output` does for `query`.
fn render(rows: &[Vec<String>], header: Option<&[String]>, format: Format, delimiter: &str) -> anyhow::Result<String> {
    Ok(match format {
        Format::Tsv => {
            let mut out = String::new();
            for line in header.into_iter().map(<[String]>::to_vec).chain(rows.iter().cloned()) {
                out.push_str(&line.join(delimiter));
                out.push('\n');
            }
            out
        }
        Format::Pretty => {
            let header: Vec<String> = header.map(<[String]>::to_vec).unwrap_or_default();
            crate::table::draw_untitled(&header, rows)
        }
        Format::Json | Format::Yaml => {
            let records: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| match header {
                    Some(names) => serde_json::Value::Object(
                        names.iter().cloned().zip(row.iter().map(|v| v.clone().into())).collect(),
                    ),
                    None => serde_json::Value::Array(row.iter().map(|v| v.clone().into()).collect()),
                })
                .collect();
            if matches!(format, Format::Json) {
                format!("{}\n", serde_json::to_string(&records)?)
            } else {
                serde_saphyr::to_string(&records)?
            }
        }
    })
}

/// Runs `query` once against the cluster as `view` shows it.
pub async fn run(view: &ClusterView, query: &Query) -> anyhow::Result<String> {
    let sql = sql(query)?;
    if query.role.is_some() && query.member.is_some() {
        bail!("--role and --member are mutually exclusive options");
    }
    let role = query.role.as_deref().unwrap_or(if query.member.is_some() { "any" } else { "leader" });
    let member = with_role(view, role)?
        .into_iter()
        .find(|m| query.member.as_ref().is_none_or(|name| *name == m.name) && m.data.host_port().is_some());
    let Some(member) = member else {
        let message = match (&query.member, &query.role) {
            (Some(name), _) => format!("No connection to member {name} is available"),
            (None, Some(role)) => format!("No connection to role '{role}' is available"),
            (None, None) => "No connection is available".to_string(),
        };
        return render(&[vec![now(), message]], None, query.format, &query.delimiter);
    };
    let (host, port) = member.data.host_port().context("checked above")?;
    // libpq's environment (PGUSER, PGPASSWORD, PGSSLMODE, ~/.pgpass) as
    // the base, as psycopg connects.
    let mut options = PgConnectOptions::new().host(&host).port(port).application_name("pgwardenctl");
    if let Some(user) = &query.username {
        options = options.username(user);
    }
    if query.password {
        options = options.password(&prompt_password()?);
    }
    if let Some(dbname) = &query.dbname {
        options = options.database(dbname);
    }
    let (rows, header) = tokio::time::timeout(Duration::from_secs(30), run_sql(options, &sql))
        .await
        .unwrap_or_else(|_| (vec![vec![now(), "ERROR: no answer within 30 s".into()]], None));
    render(&rows, header.as_deref(), query.format, &query.delimiter)
}

/// `--password`: asked on the terminal, not echoed.
fn prompt_password() -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    eprint!("Password: ");
    std::io::stderr().flush()?;
    let echo = std::process::Command::new("stty").arg("-echo").status();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if echo.is_ok() {
        let _ = std::process::Command::new("stty").arg("echo").status();
    }
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcs::{LeaderView, MemberData};

    fn view() -> ClusterView {
        let member = |name: &str, role: &str| MemberEntry {
            name: name.into(),
            lease: 1,
            data: MemberData { role: role.into(), ..MemberData::default() },
        };
        ClusterView {
            leader: Some(LeaderView { name: "b".into(), lease: 1, mod_revision: 1 }),
            members: vec![member("a", "replica"), member("b", "primary"), member("c", "replica")],
            ..ClusterView::default()
        }
    }

    #[test]
    fn roles_pick_members_as_patronictl_does() {
        let view = view();
        let names = |role: &str| -> Vec<String> {
            with_role(&view, role).expect(role).into_iter().map(|m| m.name.clone()).collect()
        };
        assert_eq!(names("leader"), ["b"]);
        assert_eq!(names("primary"), ["b"]);
        assert!(names("standby-leader").is_empty());
        assert_eq!(names("replica"), ["a", "c"]);
        assert_eq!(names("any"), ["b", "a", "c"]);
        assert!(with_role(&view, "master-ish").is_err());
    }

    #[test]
    fn renders_patronictls_formats() {
        let header = vec!["x".to_string(), "y".to_string()];
        let rows = vec![vec!["1".to_string(), "None".to_string()]];
        assert_eq!(render(&rows, Some(&header), Format::Tsv, "\t").expect("tsv"), "x\ty\n1\tNone\n");
        assert_eq!(render(&rows, Some(&header), Format::Tsv, ",").expect("tsv"), "x,y\n1,None\n");
        assert_eq!(render(&rows, Some(&header), Format::Json, "\t").expect("json"), "[{\"x\":\"1\",\"y\":\"None\"}]\n");
        let pretty = render(&rows, Some(&header), Format::Pretty, "\t").expect("pretty");
        assert!(pretty.contains("| x | y    |") && pretty.contains("| 1 | None |"), "{pretty}");
    }
}
