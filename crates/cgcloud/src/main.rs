//! The `cgcloud` binary: parses the command line, sets up logging, dispatches to one command,
//! and turns any error into one line on stderr plus a hint, with a meaningful exit status.

mod cli;
mod commands;
mod complete;
mod context;
mod errors;
mod fdlimit;
mod output;
mod settings;

use clap::Parser as _;
use std::process::ExitCode;

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info,aws_config=error,aws_smithy_runtime=warn",
        (false, 1) => "debug,aws_config=info,aws_smithy_runtime=info,hyper=info,rustls=info,h2=info",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("CGCLOUD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(output::LogFormat)
        .init();
}

fn main() -> ExitCode {
    // When a shell asks for completions (CGCLOUD_COMPLETE set), answer and exit.
    clap_complete::CompleteEnv::with_factory(<cli::Cli as clap::CommandFactory>::command).var(complete::VAR).complete();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    output::set_json_errors(cli.global.output == Some(cli::OutputFormat::Json));
    init_logging(cli.global.verbose, cli.global.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let hint = errors::hint_for(&err);
            if output::json_errors() {
                eprintln!("{}", output::error_json(errors::error_kind(&err), &format!("{err:#}"), hint.as_deref()));
            } else {
                eprintln!("error: {err:#}");
                if let Some(hint) = hint {
                    eprintln!("hint: {hint}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refuses (or --help/--version, which clap reports the same way): as
/// clap prints it, or as a `usage` error object when JSON output was asked for.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Help or an error on a closed terminal: nothing left to tell anyone.
        let _ = e.print();
        return ExitCode::from(if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { 2 } else { 0 });
    }
    let args: Vec<String> = std::env::args().collect();
    let json = args.windows(2).any(|w| w[0] == "--output" && w[1] == "json")
        || args.iter().any(|a| a == "--output=json")
        || std::env::var("CGCLOUD_OUTPUT").is_ok_and(|v| v == "json");
    if json {
        let text = e.render().to_string();
        let head = text.split("\n\nUsage:").next().unwrap_or("").trim().trim_start_matches("error: ");
        let message = head.split_whitespace().collect::<Vec<_>>().join(" ");
        eprintln!("{}", output::error_json("usage", &message, Some("see `cgcloud --help`")));
    } else {
        // Help or an error on a closed terminal: nothing left to tell anyone.
        let _ = e.print();
    }
    ExitCode::from(2)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}
