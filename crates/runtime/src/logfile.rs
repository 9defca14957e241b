//! Where the services' log lines go, as Patroni's `log:` section says: a file
//! per service in `log.dir` that rotates by size (`log.file_size`, keeping
//! `log.file_num` old files, as Python's `RotatingFileHandler`), and json
//! records with `log.static_fields` added.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A log file that, before a write would take it past `max_bytes`, is
/// renamed to `<path>.1` (the older ones shifted up to `<path>.<keep>`, the
/// oldest dropped) and started afresh. `max_bytes` or `keep` 0: never.
pub struct RotatingFile {
    path: PathBuf,
    mode: u32,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
}

fn open(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).mode(mode).open(path)?;
    // An existing file gets the mode too (log.mode changed, or created before).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(file)
}

impl RotatingFile {
    pub fn open(path: PathBuf, mode: u32, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = open(&path, mode)?;
        let size = file.metadata()?.len();
        Ok(Self { path, mode, max_bytes, keep, file, size })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.keep).rev() {
            let from = self.numbered(n);
            if from.exists() {
                std::fs::rename(&from, self.numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        self.file = open(&self.path, self.mode)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let rotates = self.max_bytes > 0 && self.keep > 0;
        if rotates && self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let written = self.file.write(buf)?;
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Adds `fields` to every json record written through it (a field the
/// record has already keeps its own value); anything else passes unchanged.
pub struct StaticFields<W: Write> {
    inner: W,
    fields: Map<String, Value>,
    pending: Vec<u8>,
}

impl<W: Write> StaticFields<W> {
    pub fn new(inner: W, fields: Map<String, Value>) -> Self {
        Self { inner, fields, pending: Vec::new() }
    }

    fn line(&mut self, line: &[u8]) -> io::Result<()> {
        match serde_json::from_slice::<Map<String, Value>>(line) {
            Ok(mut record) if !self.fields.is_empty() => {
                for (key, value) in &self.fields {
                    record.entry(key.clone()).or_insert_with(|| value.clone());
                }
                let mut text = serde_json::to_vec(&record).map_err(io::Error::other)?;
                text.push(b'\n');
                self.inner.write_all(&text)
            }
            _ => {
                self.inner.write_all(line)?;
                self.inner.write_all(b"\n")
            }
        }
    }
}

impl<W: Write> Write for StaticFields<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line[..line.len() - 1])?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for StaticFields<W> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            let _ = self.inner.write_all(&rest);
        }
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_file_num_old_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgwarden-agent.log");
        let mut log = RotatingFile::open(path.clone(), 0o640, 100, 2).expect("open");
        for i in 0..7 {
            log.write_all(format!("{i:039}\n").as_bytes()).expect("write");
        }
        // 40 bytes a line, 100 a file: two lines each; the oldest dropped.
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(&path), format!("{:039}\n", 6));
        assert_eq!(read(&dir.path().join("pgwarden-agent.log.1")), format!("{:039}\n{:039}\n", 4, 5));
        assert_eq!(read(&dir.path().join("pgwarden-agent.log.2")), format!("{:039}\n{:039}\n", 2, 3));
        assert!(!dir.path().join("pgwarden-agent.log.3").exists());
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // file_num 0 (or file_size 0): one file, never rotated.
        let kept = dir.path().join("kept.log");
        let mut log = RotatingFile::open(kept.clone(), 0o600, 100, 0).expect("open");
        for i in 0..7 {
            log.write_all(format!("{i:039}\n").as_bytes()).expect("write");
        }
        assert_eq!(read(&kept).lines().count(), 7);
    }

    #[test]
    fn static_fields_join_json_records_only() {
        let mut out = Vec::new();
        {
            let fields = serde_json::json!({"app": "pg", "level": "never"}).as_object().cloned().expect("map");
            let mut writer = StaticFields::new(&mut out, fields);
            writer.write_all(b"{\"level\":\"INFO\",\"message\":\"a\"}\n{\"level\":").expect("write");
            writer.write_all(b"\"WARN\"}\nplain text\n").expect("write");
        }
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        // (serde_json's map writes its keys in order.)
        assert_eq!(lines[0], r#"{"app":"pg","level":"INFO","message":"a"}"#);
        assert_eq!(lines[1], r#"{"app":"pg","level":"WARN"}"#);
        assert_eq!(lines[2], "plain text");
    }
}
