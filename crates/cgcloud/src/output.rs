//! All output: data on stdout (text tables or JSON), progress on stderr (a spinner on a
//! terminal, plain lines otherwise). Nothing else prints.

use crate::cli::OutputFormat;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether errors go to stderr as a JSON object (`--output json`, from wherever it was set).
pub fn set_json_errors(on: bool) {
    JSON_ERRORS.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn json_errors() -> bool {
    JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed)
}

/// An error as `--output json` prints it on stderr:
/// `{"error": {"kind": ..., "message": ..., "hint": ...}}`.
pub fn error_json(kind: &str, message: &str, hint: Option<&str>) -> String {
    serde_json::json!({"error": {"kind": kind, "message": message, "hint": hint}}).to_string()
}

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: OutputFormat,
    pub quiet: bool,
}

impl Printer {
    /// Prints `value` as JSON, or `text` in text mode.
    pub fn record<T: Serialize + ?Sized>(&self, value: &T, text: impl FnOnce() -> String) {
        let s = match self.format {
            OutputFormat::Json => {
                serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            }
            OutputFormat::Text => text(),
        };
        write_stdout(&s);
    }

    /// Prints `value` in JSON mode only (commands whose text mode says everything on stderr).
    pub fn json_only<T: Serialize + ?Sized>(&self, value: &T) {
        if self.format == OutputFormat::Json {
            self.record(value, String::new);
        }
    }

    /// Prints rows as an aligned table, or `json` in JSON mode.
    pub fn table<T: Serialize + ?Sized>(&self, headers: &[&str], rows: &[Vec<String>], json: &T) {
        self.record(json, || render_table(headers, rows));
    }

    /// A progress indicator for a wait; silent in quiet mode.
    pub fn progress(&self, message: impl Into<String>) -> Progress {
        Progress::new(message.into(), self.quiet)
    }

    /// A line on stderr, unless quiet.
    pub fn note(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }
}

fn write_stdout(s: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (e.g. `| head`) is not an error worth reporting.
    let _ = writeln!(out, "{}", s.trim_end_matches('\n'));
}

pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == cells.len() { (*c).to_owned() } else { format!("{c:<w$}", w = widths[i]) })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}

/// A spinner with elapsed time on a terminal; on a pipe, one line at start and one at the end.
pub struct Progress {
    bar: Option<ProgressBar>,
    message: String,
    started: Instant,
    quiet: bool,
}

impl Progress {
    fn new(message: String, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(message.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if bar.is_none() && !quiet {
            eprintln!("{message} ...");
        }
        Progress { bar, message, started: Instant::now(), quiet }
    }

    pub fn set_message(&mut self, message: impl Into<String>) {
        self.message = message.into();
        if let Some(bar) = &self.bar {
            bar.set_message(self.message.clone());
        } else if !self.quiet {
            eprintln!("{} ...", self.message);
        }
    }

    /// Ends the indicator with a final line that includes the elapsed time.
    pub fn finish(self, done: impl std::fmt::Display) {
        let line = format!("{done} ({:.1} s)", self.started.elapsed().as_secs_f64());
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align() {
        let t = super::render_table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22");
    }
}
