//! Where settings come from ([`Env`]: the process environment, or a fixed
//! map in tests) and the one error every bad setting is
//! ([`ConfigError`]: names the variable, the value it had and what would
//! have been accepted).

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A configuration value that could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds a value of the wrong shape.
    #[error("{var}={value:?} is not valid: expected {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: String,
    },
    /// A required variable is not set.
    #[error("{var} is not set: {hint}")]
    Missing { var: &'static str, hint: String },
    /// A file named by a variable could not be read.
    #[error("{var}={path:?} could not be read: {source}")]
    File {
        var: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where configuration values come from: the process environment, or a
/// fixed map in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// A snapshot of the process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment made of the given pairs (tests, embedding).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Sets a variable (used by binaries to let flags override the environment).
    pub fn set(&mut self, var: &str, value: impl Into<String>) {
        self.vars.insert(var.to_string(), value.into());
    }

    /// The raw value of a variable; an empty value counts as unset.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Parses a variable with `FromStr`, or returns `default` when unset.
    pub fn parse_or<T: FromStr>(
        &self,
        var: &'static str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|_| invalid(var, raw, expected)),
        }
    }

    /// Parses a duration (`250ms`, `2s`, `1m`, or a bare number of seconds).
    pub fn duration_or(
        &self,
        var: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => parse_duration(raw)
                .ok_or_else(|| invalid(var, raw, "a duration such as 250ms, 5s or 2m")),
        }
    }

    /// Parses a variable, or takes `default` when unset, and checks that the
    /// value lies in `range`; `expected` says what is accepted, once for
    /// both failures (not a number, out of range).
    pub fn parse_in<T: FromStr + PartialOrd>(
        &self,
        var: &'static str,
        default: T,
        range: impl std::ops::RangeBounds<T>,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let value = self.parse_or(var, default, expected)?;
        self.in_range(var, value, range, expected)
    }

    /// [`Env::duration_or`], then a check that the duration lies in `range`.
    pub fn duration_in(
        &self,
        var: &'static str,
        default: Duration,
        range: impl std::ops::RangeBounds<Duration>,
        expected: &str,
    ) -> Result<Duration, ConfigError> {
        let value = match self.get(var) {
            None => default,
            Some(raw) => parse_duration(raw).ok_or_else(|| invalid(var, raw, expected))?,
        };
        self.in_range(var, value, range, expected)
    }

    fn in_range<T: PartialOrd>(
        &self,
        var: &'static str,
        value: T,
        range: impl std::ops::RangeBounds<T>,
        expected: &str,
    ) -> Result<T, ConfigError> {
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(invalid(var, self.get(var).unwrap_or_default(), expected))
        }
    }

    /// Parses a boolean (`1/0`, `true/false`, `yes/no`, `on/off`).
    pub fn bool_or(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(other) => Err(invalid(var, other, "true or false (also 1/0, yes/no)")),
        }
    }
}

/// Builds the error for a value of the wrong shape.
pub fn invalid(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `2m` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let (number, scale) = if let Some(n) = raw.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = raw.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = raw.strip_suffix('m') {
        (n, 60.0)
    } else {
        (raw, 1.0)
    };
    let value: f64 = number.trim().parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    // `try_`: a value too large for a Duration (`1e300s`) is refused, not a
    // panic (found by fuzzing).
    Duration::try_from_secs_f64(value * scale).ok()
}
