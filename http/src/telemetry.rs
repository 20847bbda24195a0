//! Logging setup shared by every shoal binary: `RUST_LOG` filters (default
//! `info` for services, `warn` for one-shot commands),
//! `SHOAL_LOG_FORMAT=json` switches to one JSON object per line.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber for a long-running member (default level
/// `info`); safe to call once per process.
pub fn init(json: bool) {
    init_with_default(json, "info");
}

/// Installs the global subscriber with `default` as the filter when
/// `RUST_LOG` is not set: a one-shot command passes `warn`, so it prints
/// its answer with warnings and errors only.
pub fn init_with_default(json: bool, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}
