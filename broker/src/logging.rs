//! Log output that fits where the broker runs: colours only on a terminal,
//! JSON lines with `FJORD_LOG_FORMAT=json` for log collectors, the level
//! filter from `FJORD_LOG` (default `info`).

use std::io::IsTerminal;

pub fn init() {
    // openraft narrates every vote and append at info: keep it to warnings
    // unless FJORD_LOG names it.
    let spec = std::env::var("FJORD_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("openraft") {
        spec
    } else {
        format!("{spec},openraft=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| "info,openraft=warn".into());
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
