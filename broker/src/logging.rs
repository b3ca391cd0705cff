//! Log output that fits where the broker runs: colours only on a terminal,
//! JSON lines with `FJORD_LOG_FORMAT=json` for log collectors, the level
//! filter from `FJORD_LOG` (default `info`).

use std::io::IsTerminal;

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FJORD_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("FJORD_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}
