//! Problems found while loading a config: errors stop start-up, warnings do not.

use std::fmt;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Start-up is refused.
    Error,
    /// pgwarden carries on (possibly after correcting the value), and says so once.
    Warning,
    /// Nothing is wrong; worth one line in the log.
    Notice,
}

/// One problem with one key of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Dotted key path (`bootstrap.dcs.ttl`), or `line N` for YAML syntax errors,
    /// or empty for problems with the file as a whole.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Notice => "note",
        };
        if self.path.is_empty() {
            write!(f, "{level}: {}", self.message)
        } else {
            write!(f, "{level}: {}: {}", self.path, self.message)
        }
    }
}

/// Collects problems while a config is read, so that every problem is
/// reported at once instead of only the first.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem { severity: Severity::Error, path: path.into(), message: message.into() });
    }

    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem { severity: Severity::Warning, path: path.into(), message: message.into() });
    }

    pub fn notice(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem { severity: Severity::Notice, path: path.into(), message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|p| p.severity == Severity::Error)
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }
}
