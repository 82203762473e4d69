//! All output: data on stdout (text tables or JSON), progress on stderr (a spinner on a
//! terminal, plain lines otherwise), the log lines' format, and the one question cgcloud asks
//! (`confirm`). Nothing else prints.

use crate::cli::OutputFormat;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

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

    /// Bars for phases a group of `total` things goes through (e.g. a cluster's nodes:
    /// launched, running, SSH-ready, configured), each `k/N`, plus a line for the laggard.
    pub fn phases(&self, title: impl Into<String>, total: u64, phases: &[&str]) -> PhaseProgress {
        PhaseProgress::new(title.into(), total, phases, self.quiet)
    }

    /// A bar for `total` steps (e.g. provisioning), with the current step's name.
    pub fn steps(&self, total: u64) -> StepProgress {
        StepProgress::new(total, self.quiet)
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

/// Rows as aligned text. Every cell goes through `tags::printable`: cells show tag values
/// that boxes write themselves (`cgcloud:configured`, `cgcloud:failure`, ...), and a box is not
/// trusted with the terminal of whoever lists it (escape sequences, `\r` overwriting a line).
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|c| cgcloud_core::tags::printable(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
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

/// What [`Printer::phases`] shows: on a terminal, one bar per phase and a line naming the
/// slowest member; elsewhere, a line each time a phase's count changes; nothing when quiet.
pub struct PhaseProgress {
    title: String,
    names: Vec<String>,
    counts: Vec<u64>,
    totals: Vec<u64>,
    multi: Option<MultiProgress>,
    bars: Vec<ProgressBar>,
    laggard: Option<ProgressBar>,
    quiet: bool,
    started: Instant,
}

impl PhaseProgress {
    fn new(title: String, total: u64, phases: &[&str], quiet: bool) -> PhaseProgress {
        let tty = !quiet && std::io::stderr().is_terminal();
        let width = phases.iter().map(|p| p.len()).max().unwrap_or(0);
        let (multi, bars, laggard) = if tty {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template(&format!("{{prefix:>{width}}} [{{bar:30}}] {{pos:>4}}/{{len}} {{msg}}"))
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            let bars: Vec<ProgressBar> = phases
                .iter()
                .map(|p| {
                    let b = multi.add(ProgressBar::new(total));
                    b.set_style(style.clone());
                    b.set_prefix((*p).to_owned());
                    b
                })
                .collect();
            let laggard = multi.add(ProgressBar::new_spinner());
            laggard.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            laggard.set_message(title.clone());
            laggard.enable_steady_tick(Duration::from_millis(120));
            (Some(multi), bars, Some(laggard))
        } else {
            if !quiet {
                eprintln!("{title} ...");
            }
            (None, Vec::new(), None)
        };
        PhaseProgress {
            title,
            names: phases.iter().map(|p| (*p).to_owned()).collect(),
            counts: vec![0; phases.len()],
            totals: vec![total; phases.len()],
            multi,
            bars,
            laggard,
            quiet,
            started: Instant::now(),
        }
    }

    /// How many have passed phase `i` now.
    pub fn set(&mut self, i: usize, count: u64) {
        if i >= self.counts.len() || self.counts[i] == count {
            return;
        }
        self.counts[i] = count;
        if let Some(b) = self.bars.get(i) {
            b.set_position(count);
        } else if !self.quiet {
            eprintln!(
                "{}: {} {count}/{} ({:.1} s)",
                self.title,
                self.names[i],
                self.totals[i],
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// How many phase `i` counts to, when not all members go through it.
    pub fn set_total(&mut self, i: usize, total: u64) {
        if let Some(t) = self.totals.get_mut(i) {
            *t = total;
        }
        if let Some(b) = self.bars.get(i) {
            b.set_length(total);
        }
    }

    /// The member the group waits for, and why (terminals only: elsewhere it would repeat).
    pub fn laggard(&self, text: impl Into<String>) {
        if let Some(l) = &self.laggard {
            l.set_message(format!("{}: slowest {}", self.title, text.into()));
        }
    }

    /// Ends the bars with one summary line.
    pub fn finish(self, done: impl std::fmt::Display) {
        self.clear();
        if !self.quiet {
            eprintln!("{done} ({:.1} s)", self.started.elapsed().as_secs_f64());
        }
    }

    fn clear(&self) {
        for b in &self.bars {
            b.finish_and_clear();
        }
        if let Some(l) = &self.laggard {
            l.finish_and_clear();
        }
        if let Some(m) = &self.multi {
            // Clearing the bars of a terminal that has gone changes nothing.
            let _ = m.clear();
        }
    }
}

impl Drop for PhaseProgress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// What [`Printer::steps`] shows: on a terminal a bar `k/N` with the step's name; elsewhere a
/// line per step as it ends (`[k/N] name: status (s)`); nothing when quiet. The agent names a
/// step and the total only when the step starts, so both are kept from there.
pub struct StepProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
    total: u64,
    name: String,
    started: Instant,
    step_started: Instant,
    /// Where plain lines go: stderr, or a buffer in tests.
    sink: Box<dyn FnMut(&str) + Send>,
}

impl StepProgress {
    fn new(total: u64, quiet: bool) -> StepProgress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("[{bar:30}] {pos:>3}/{len} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let mut s = Self::plain(total, quiet, Box::new(|line: &str| eprintln!("{line}")));
        s.bar = bar;
        s
    }

    /// Plain lines to `sink`, never a bar (tests of what scripts see).
    #[cfg(test)]
    pub fn plain_to(total: u64, sink: impl FnMut(&str) + Send + 'static) -> StepProgress {
        Self::plain(total, false, Box::new(sink))
    }

    /// Without a bar: plain lines to `sink`.
    fn plain(total: u64, quiet: bool, sink: Box<dyn FnMut(&str) + Send>) -> StepProgress {
        StepProgress {
            bar: None,
            quiet,
            total,
            name: String::new(),
            started: Instant::now(),
            step_started: Instant::now(),
            sink,
        }
    }

    /// Step `i` (from 1) of the total starts.
    pub fn start(&mut self, i: u64, name: &str) {
        self.step_started = Instant::now();
        self.name = name.to_owned();
        if let Some(b) = &self.bar {
            b.set_position(i.saturating_sub(1));
            b.set_message(name.to_owned());
        }
    }

    /// Step `i`, the one that started last, ended with `status` (`changed`, `ok`, `skipped`).
    pub fn done(&mut self, i: u64, status: &str) {
        let line = format!(
            "[{i}/{}] {}: {status} ({:.1} s)",
            self.total,
            self.name,
            self.step_started.elapsed().as_secs_f64()
        );
        if let Some(b) = &self.bar {
            b.set_position(i);
            if status == "changed" && self.step_started.elapsed() > Duration::from_secs(5) {
                // Slow steps stay visible above the bar: they are where the time went.
                b.println(line);
            }
        } else if !self.quiet {
            (self.sink)(&line);
        }
    }

    pub fn finish(mut self, done: impl std::fmt::Display) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if !self.quiet {
            let line = format!("{done} ({:.1} s)", self.started.elapsed().as_secs_f64());
            (self.sink)(&line);
        }
    }
}

impl Drop for StepProgress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Log lines: info as plain text, warnings and errors prefixed, debug with the target.
pub struct LogFormat;

impl<S, N> FormatEvent<S, N> for LogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        match *event.metadata().level() {
            Level::INFO => {}
            Level::WARN => write!(writer, "warning: ")?,
            Level::ERROR => write!(writer, "error: ")?,
            _ => {
                write!(writer, "{}: {}: ", event.metadata().level().as_str().to_lowercase(), event.metadata().target())?
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Asks the user to confirm on the terminal; `yes` answers for them.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<bool> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question} — refusing to ask on a non-interactive input; pass --yes to confirm");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align() {
        let t = super::render_table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22");
    }

    /// The attack of a box on whoever lists it: a tag value that clears the screen, or
    /// returns to the start of the line to print over the real values.
    #[test]
    fn tables_show_no_control_characters() {
        let evil = "true\x1b[2J\x1b]0;pwned\x07\rfailed\u{9b}31m";
        let t = super::render_table(&["INSTANCE", "CONFIGURED"], &[vec!["i-1".into(), evil.into()]]);
        assert!(t.chars().filter(|c| c.is_control()).all(|c| c == '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 2, "{t:?}");
        assert!(t.ends_with("true [2J ]0;pwned  failed 31m"), "{t:?}");
    }
}
