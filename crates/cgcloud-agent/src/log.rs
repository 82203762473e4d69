//! The agent's log lines. The agent runs under systemd, whose journal reads a line's priority
//! from its `<N>` prefix, so a plain stderr line is all the logging it needs (no logging crate).

/// Writes one line at `level` ("error", "warning", anything else is info).
pub fn log(level: &str, msg: impl AsRef<str>) {
    let p = match level {
        "error" => 3,
        "warning" => 4,
        _ => 6,
    };
    eprintln!("<{p}>{level}: {}", msg.as_ref());
}
