//! Plain log lines laid out by Patroni's `log.format` and `log.dateformat`.

use std::fmt::Write as _;

use pgwarden_config::logformat::{DatePart, LogField, LogPart};
use time::OffsetDateTime;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event by the parsed `log.format`.
pub struct PatroniFormat {
    pub parts: Vec<LogPart>,
    pub dateformat: Option<Vec<DatePart>>,
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `now` by the strftime parts, or Python's default `2024-05-01 12:00:00,123`.
pub fn asctime(now: OffsetDateTime, dateformat: Option<&[DatePart]>) -> String {
    let Some(parts) = dateformat else {
        return format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02},{:03}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.millisecond()
        );
    };
    let mut out = String::new();
    for part in parts {
        let _ = match part {
            DatePart::Text(text) => write!(out, "{text}"),
            DatePart::Directive(d) => match d {
                'Y' => write!(out, "{:04}", now.year()),
                'y' => write!(out, "{:02}", now.year().rem_euclid(100)),
                'm' => write!(out, "{:02}", u8::from(now.month())),
                'b' => write!(out, "{}", &MONTHS[usize::from(u8::from(now.month())) - 1][..3]),
                'B' => write!(out, "{}", MONTHS[usize::from(u8::from(now.month())) - 1]),
                'd' => write!(out, "{:02}", now.day()),
                'j' => write!(out, "{:03}", now.ordinal()),
                'a' => write!(out, "{}", &now.weekday().to_string()[..3]),
                'A' => write!(out, "{}", now.weekday()),
                'H' => write!(out, "{:02}", now.hour()),
                'I' => write!(out, "{:02}", (now.hour() + 11) % 12 + 1),
                'p' => write!(out, "{}", if now.hour() < 12 { "AM" } else { "PM" }),
                'M' => write!(out, "{:02}", now.minute()),
                'S' => write!(out, "{:02}", now.second()),
                'f' => write!(out, "{:06}", now.microsecond()),
                'z' => write!(out, "+0000"),
                'Z' => write!(out, "UTC"),
                other => write!(out, "%{other}"),
            },
        };
    }
    out
}

/// Starts `relativeCreated`'s clock (when logging is set up).
pub fn start_clock() {
    started();
}

/// When this process began logging (`relativeCreated` counts from it).
fn started() -> std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::Instant::now)
}

impl<S, N> FormatEvent<S, N> for PatroniFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let meta = event.metadata();
        let now = OffsetDateTime::now_utc();
        for part in &self.parts {
            let (field, left, width) = match part {
                LogPart::Text(text) => {
                    writer.write_str(text)?;
                    continue;
                }
                LogPart::Field { field, left, width } => (*field, *left, *width),
            };
            let text = match field {
                LogField::Message => {
                    ctx.field_format().format_fields(writer.by_ref(), event)?;
                    continue;
                }
                LogField::AscTime => asctime(now, self.dateformat.as_deref()),
                LogField::Created => format!("{:.6}", now.unix_timestamp_nanos() as f64 / 1e9),
                LogField::LevelName => level_name(meta.level()).to_string(),
                LogField::LevelNo => level_number(meta.level()).to_string(),
                LogField::Name => meta.target().to_string(),
                LogField::Module => meta.target().rsplit("::").next().unwrap_or_default().to_string(),
                LogField::Filename => meta.file().unwrap_or_default().to_string(),
                LogField::LineNo => meta.line().unwrap_or_default().to_string(),
                LogField::Process => std::process::id().to_string(),
                LogField::ThreadName => std::thread::current().name().unwrap_or("main").to_string(),
                LogField::FuncName => meta.target().rsplit("::").next().unwrap_or_default().to_string(),
                LogField::Msecs => now.millisecond().to_string(),
                LogField::RelativeCreated => started().elapsed().as_millis().to_string(),
                LogField::ProcessName => std::env::args()
                    .next()
                    .and_then(|arg0| arg0.rsplit('/').next().map(str::to_string))
                    .unwrap_or_default(),
            };
            if left {
                write!(writer, "{text:<width$}")?;
            } else {
                write!(writer, "{text:>width$}")?;
            }
        }
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_config::logformat::parse_dateformat;

    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pythons_other_record_fields_render() {
        let parts = pgwarden_config::logformat::parse_format(
            "%(levelname)s %(name)s %(funcName)s %(processName)s %(msecs)d %(relativeCreated)d| %(message)s",
        )
        .expect("a format Patroni users write");
        start_clock();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(PatroniFormat { parts, dateformat: None })
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || tracing::info!(target: "node_agent::ha", "hello"));
        let text = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf-8");
        let (fields, message) = text.split_once('|').expect("the separator");
        let fields: Vec<&str> = fields.split_whitespace().collect();
        assert_eq!(&fields[..3], ["INFO", "node_agent::ha", "ha"], "{text}");
        assert!(!fields[3].is_empty(), "the program's name: {text}");
        assert!(fields[4].parse::<u16>().is_ok_and(|ms| ms < 1000), "{text}");
        assert!(fields[5].parse::<u64>().is_ok(), "{text}");
        assert_eq!(message.trim(), "hello");
    }

    #[test]
    fn asctime_defaults_to_pythons_layout_and_follows_a_dateformat() {
        let at = time::macros::datetime!(2026-03-07 14:05:09.123456 UTC);
        assert_eq!(asctime(at, None), "2026-03-07 14:05:09,123");
        let parts = parse_dateformat("%d %b %Y %I:%M:%S %p %f %a %j%z").expect("parses");
        assert_eq!(asctime(at, Some(&parts)), "07 Mar 2026 02:05:09 PM 123456 Sat 066+0000");
    }
}
