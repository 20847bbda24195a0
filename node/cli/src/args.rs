//! Flag values the subcommands share.

use std::time::Duration;

use shoal_node::parse_duration;

/// A duration flag: `500ms`, `3s`, `1m`.
pub(crate) fn duration_arg(raw: &str) -> Result<Duration, String> {
    parse_duration(raw).ok_or_else(|| format!("{raw:?} is not a duration such as 500ms, 3s or 1m"))
}
