//! pgwarden's own binaries run the way production runs them: as `postgres`,
//! from a copy the `postgres` user can read even when the checkout sits under
//! a private home directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::process::{ChildGuard, TestDir, run_as_postgres};

/// The workspace's `target/<profile>` directory, found from this binary
/// (a test in `target/<profile>/deps/`, or a program in `target/<profile>/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running binary");
    let dir = exe.parent().expect("a binary sits in a directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().map_or_else(|| dir.to_path_buf(), Path::to_path_buf)
    } else {
        dir.to_path_buf()
    }
}

/// A copy of the named pgwarden binary that `postgres` can execute.
pub fn binary(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = PathBuf::from(format!("/tmp/pgwarden-tests/{}-bin", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the binary directory");
        dir
    });
    let copy = dir.join(name);
    if !copy.exists() {
        let built = target_dir().join(name);
        assert!(built.exists(), "{} is not built: run `cargo build --workspace --bins` first", built.display());
        // Copied under another name, then renamed: a thread that finds the
        // name never executes a file still being written (ETXTBSY).
        let partial = dir.join(format!(".{name}.{:?}", std::thread::current().id()));
        std::fs::copy(&built, &partial).expect("copy the binary");
        std::fs::rename(&partial, &copy).expect("move the binary copy in place");
    }
    copy
}

/// Starts a pgwarden binary as `postgres` with `args`, logging to
/// `<dir>/<label>.log`.
pub fn spawn(name: &str, args: &[&str], dir: &TestDir, label: &str) -> anyhow::Result<ChildGuard> {
    spawn_with_env(name, args, dir, label, &[])
}

/// As [`spawn`], with extra environment variables.
pub fn spawn_with_env(
    name: &str,
    args: &[&str],
    dir: &TestDir,
    label: &str,
    env: &[(String, String)],
) -> anyhow::Result<ChildGuard> {
    let mut cmd = Command::new(binary(name));
    cmd.args(args);
    as_service(&mut cmd, dir, label, env)?;
    ChildGuard::spawn(run_as_postgres(&mut cmd), name, dir)
}

/// What every service gets: its directory, `RUST_LOG`, `env`, and its
/// output appended to `<dir>/<label>.log` (a restarted service's log keeps
/// its history).
fn as_service(cmd: &mut Command, dir: &TestDir, label: &str, env: &[(String, String)]) -> anyhow::Result<()> {
    let path = dir.path().join(format!("{label}.log"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    crate::process::give_to_postgres(&path);
    cmd.current_dir(dir.path())
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(())
}

/// As [`spawn_with_env`], in a private mount namespace where `resolv_conf`
/// is bind-mounted over `/etc/resolv.conf` (the system's resolver then asks
/// the name servers it lists: a test's own DNS server). `unshare`, `sh` and
/// `setpriv` each exec the next, so the child's pid is the service's.
pub fn spawn_with_resolv_conf(
    name: &str,
    args: &[&str],
    dir: &TestDir,
    label: &str,
    env: &[(String, String)],
    resolv_conf: &Path,
) -> anyhow::Result<ChildGuard> {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec setpriv --reuid=postgres --regid=postgres --init-groups "$@""#)
        .arg(resolv_conf)
        .arg(binary(name))
        .args(args)
        .env("HOME", crate::process::postgres_user().map(|u| u.dir).unwrap_or_default())
        .env("USER", "postgres");
    as_service(&mut cmd, dir, label, env)?;
    ChildGuard::spawn(&mut cmd, name, dir)
}

/// Runs a pgwarden binary as `postgres` to completion: (success, stdout, stderr).
pub fn run(name: &str, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<(bool, String, String)> {
    let mut cmd = Command::new(binary(name));
    cmd.args(args).current_dir("/").stdin(Stdio::null());
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let output = crate::process::retry_busy(|| run_as_postgres(&mut cmd).output())?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// As [`run`], with `input` on standard input.
pub fn run_with_input(name: &str, args: &[&str], input: &str) -> anyhow::Result<(bool, String, String)> {
    use std::io::Write as _;
    let mut cmd = Command::new(binary(name));
    cmd.args(args).current_dir("/").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = crate::process::retry_busy(|| run_as_postgres(&mut cmd).spawn())?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The response headers of `GET path` on 127.0.0.1:`port`, names in lower case.
pub fn response_headers(port: u16, path: &str) -> std::io::Result<Vec<(String, String)>> {
    use std::io::{Read as _, Write as _};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = std::time::Duration::from_secs(2);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let head = response.split_once("\r\n\r\n").map_or(response.as_str(), |(head, _)| head);
    Ok(head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect())
}

/// A minimal HTTP/1.0 request to 127.0.0.1: (status code, body).
pub fn http(method: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_with(method, port, path, &[], "", std::time::Duration::from_secs(2))
}

/// As [`http`], with extra headers, a body and a timeout (connect, write and read each).
pub fn http_with(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: std::time::Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    // A bounded connect: a frozen server's full accept queue drops SYNs,
    // and an unbounded connect would wait for the kernel to give up.
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request(method, path, headers, body).as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    parse_response(&response)
}

/// `GET path` as [`http_with`] does it, on the async runtime (a probe
/// inside a wait does not hold a runtime thread): the whole exchange
/// bounded by `timeout`.
pub async fn get_async(port: u16, path: &str, timeout: std::time::Duration) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(request("GET", path, &[], "").as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        parse_response(&response)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("GET {path}: no answer")))?
}

/// An HTTP/1.0 request to 127.0.0.1.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut text = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

/// (status code, body) of a whole HTTP response.
fn parse_response(response: &str) -> std::io::Result<(u16, String)> {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// `GET path` on a REST port: the status code, or 0 when nothing answers.
pub fn status_of(port: u16, path: &str) -> u16 {
    http("GET", port, path).map_or(0, |(status, _)| status)
}

/// `GET path` on a REST port: the body, when something answers.
pub fn body_of(port: u16, path: &str) -> Option<String> {
    http("GET", port, path).ok().map(|(_, body)| body)
}
