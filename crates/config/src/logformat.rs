//! Patroni's `log.format` (Python logging's `%(name)s` style) and
//! `log.dateformat` (strftime), parsed when the config loads so that a
//! placeholder pgwarden cannot fill is refused with the key named.

/// A record attribute a format may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogField {
    /// The time, per `log.dateformat` (default `2024-05-01 12:00:00,123`).
    AscTime,
    /// Seconds since the epoch, with a fraction.
    Created,
    /// `DEBUG`, `INFO`, `WARNING`, `ERROR`.
    LevelName,
    /// 10, 20, 30, 40 as Python numbers its levels.
    LevelNo,
    /// The message and its fields (`message key=value ...`).
    Message,
    /// The logger: pgwarden's module path (`node_agent::ha`).
    Name,
    /// The last part of the module path.
    Module,
    /// The source file.
    Filename,
    /// The source line.
    LineNo,
    Process,
    /// The thread's name (`ThreadName` in Python's terms, the worker's name here).
    ThreadName,
    /// Python's function name: pgwarden's records carry none, so the last
    /// part of the module path, as `module`.
    FuncName,
    /// The millisecond part of the time.
    Msecs,
    /// Milliseconds since the process started.
    RelativeCreated,
    /// The program (`pgwarden-agent`, ...).
    ProcessName,
}

/// A piece of a parsed format: literal text or a field with its padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogPart {
    Text(String),
    /// `%(name)-8s`: `left` aligned in `width` columns.
    Field {
        field: LogField,
        left: bool,
        width: usize,
    },
}

fn field(name: &str) -> Option<LogField> {
    Some(match name {
        "asctime" => LogField::AscTime,
        "created" => LogField::Created,
        "levelname" => LogField::LevelName,
        "levelno" => LogField::LevelNo,
        "message" => LogField::Message,
        "name" => LogField::Name,
        "module" => LogField::Module,
        "filename" | "pathname" => LogField::Filename,
        "lineno" => LogField::LineNo,
        "process" => LogField::Process,
        "threadName" | "thread" => LogField::ThreadName,
        "funcName" => LogField::FuncName,
        "msecs" => LogField::Msecs,
        "relativeCreated" => LogField::RelativeCreated,
        "processName" => LogField::ProcessName,
        _ => return None,
    })
}

const FIELDS: &str = "asctime, created, levelname, levelno, message, name, module, funcName, filename, pathname, \
                      lineno, msecs, relativeCreated, process, processName, thread, threadName";

/// Parses a Python logging format string (`%(asctime)s %(levelname)s: %(message)s`).
pub fn parse_format(text: &str) -> Result<Vec<LogPart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        // From this `%` on, for messages (an index into `rest`, not `text`:
        // found by `make fuzz`, it sliced inside a character).
        let from_here = &rest[at..];
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('%') {
            literal.push('%');
            rest = after;
            continue;
        }
        let Some(inner) = rest.strip_prefix('(') else {
            return Err(format!("a bare % at {from_here:?}: write %(name)s, or %% for a percent sign"));
        };
        let close = inner.find(')').ok_or_else(|| format!("%( without a closing ) in {text:?}"))?;
        let name = &inner[..close];
        let field = field(name)
            .ok_or_else(|| format!("%({name}) is not a field pgwarden can fill; the fields are: {FIELDS}"))?;
        let spec = &inner[close + 1..];
        let left = spec.starts_with('-');
        let digits: String = spec[usize::from(left)..].chars().take_while(char::is_ascii_digit).collect();
        let after = &spec[usize::from(left) + digits.len()..];
        let mut conversion = after.chars();
        match conversion.next() {
            Some('s' | 'd' | 'f' | 'r') => {}
            _ => return Err(format!("%({name}) needs a conversion such as s or d, as in %({name})s")),
        }
        if !literal.is_empty() {
            parts.push(LogPart::Text(std::mem::take(&mut literal)));
        }
        parts.push(LogPart::Field { field, left, width: digits.parse().unwrap_or(0) });
        rest = conversion.as_str();
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(LogPart::Text(literal));
    }
    if !parts.iter().any(|p| matches!(p, LogPart::Field { field: LogField::Message, .. })) {
        return Err("the format has no %(message)s: every line would lose what happened".into());
    }
    Ok(parts)
}

/// A piece of a parsed strftime format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatePart {
    Text(String),
    /// A strftime directive letter (`Y`, `m`, `d`, `H`, `M`, `S`, `f`, `y`, `b`, `B`, `a`, `A`, `j`, `p`, `I`, `z`, `Z`).
    Directive(char),
}

/// Parses a strftime format (`%Y-%m-%d %H:%M:%S`); times are written in UTC.
pub fn parse_dateformat(text: &str) -> Result<Vec<DatePart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => literal.push('%'),
            Some(
                d @ ('Y' | 'm' | 'd' | 'H' | 'M' | 'S' | 'f' | 'y' | 'b' | 'B' | 'a' | 'A' | 'j' | 'p' | 'I' | 'z'
                | 'Z'),
            ) => {
                if !literal.is_empty() {
                    parts.push(DatePart::Text(std::mem::take(&mut literal)));
                }
                parts.push(DatePart::Directive(d));
            }
            Some(other) => {
                return Err(format!(
                    "%{other} is not supported; use %Y %m %d %H %M %S %f %y %b %B %a %A %j %p %I %z %Z or %%"
                ));
            }
            None => return Err("ends with a bare %".into()),
        }
    }
    if !literal.is_empty() {
        parts.push(DatePart::Text(literal));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patroni_default_format_parses() {
        let parts = parse_format("%(asctime)s %(levelname)s: %(message)s").expect("parses");
        assert_eq!(
            parts,
            vec![
                LogPart::Field { field: LogField::AscTime, left: false, width: 0 },
                LogPart::Text(" ".into()),
                LogPart::Field { field: LogField::LevelName, left: false, width: 0 },
                LogPart::Text(": ".into()),
                LogPart::Field { field: LogField::Message, left: false, width: 0 },
            ]
        );
        let padded = parse_format("%(levelname)-8s 100%% %(message)s").expect("parses");
        assert_eq!(padded[0], LogPart::Field { field: LogField::LevelName, left: true, width: 8 });
        assert_eq!(padded[1], LogPart::Text(" 100% ".into()));
    }

    #[test]
    fn unknown_fields_and_broken_formats_are_refused_with_the_reason() {
        assert!(parse_format("%(exc_info)s %(message)s").expect_err("refused").contains("not a field"));
        // Patroni users' formats with Python's other record fields load.
        for format in
            ["%(asctime)s %(funcName)s: %(message)s", "%(msecs)d %(relativeCreated)d %(processName)s %(message)s"]
        {
            parse_format(format).unwrap_or_else(|e| panic!("{format}: {e}"));
        }
        assert!(parse_format("%(asctime)s").expect_err("refused").contains("no %(message)s"));
        assert!(parse_format("%(message)").expect_err("refused").contains("conversion"));
        assert!(parse_format("50% %(message)s").expect_err("refused").contains("bare %"));
        assert!(parse_format("%(message s").expect_err("refused").contains("closing"));
        // Found by `make fuzz`: the message sliced `text` at an index into
        // the rest of it, inside this character.
        let err = parse_format("é%(message)s 5% x").expect_err("refused");
        assert!(err.contains("\"% x\""), "{err}");
    }

    #[test]
    fn dateformats_parse_and_unknown_directives_are_refused() {
        let parts = parse_dateformat("%Y-%m-%dT%H:%M:%S%z").expect("parses");
        assert_eq!(parts.len(), 12);
        assert!(parse_dateformat("%Q").expect_err("refused").contains("%Q is not supported"));
        assert!(parse_dateformat("%").is_err());
    }
}
