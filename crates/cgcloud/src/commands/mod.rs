//! Dispatch: one exhaustive match from command to implementation, plus the log format and the
//! hints printed under errors.

mod autostop;
mod boxes;
mod cleanup;
mod cluster;
mod create;
mod doctor;
mod images;
mod jenkins;
mod keys;
mod launch;
mod local;
mod profile;
mod provision;
mod roles;

use crate::cli::{Cli, Command};
use crate::context::Ctx;
use crate::output::Printer;
use crate::settings::{config_path, ConfigFile, Settings};
use anyhow::Result;
use std::fmt;
use std::process::ExitCode;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    // What needs no settings, and must work without a config or cloud.
    match &cli.command {
        Command::Completions(a) => {
            let script = crate::complete::registration(&a.shell)?;
            print!("{script}");
            return Ok(ExitCode::SUCCESS);
        }
        Command::ManPages(a) => {
            std::fs::create_dir_all(&a.dir)?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &a.dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let file = ConfigFile::load(&config_path())?;
    let settings = Settings::resolve(&cli.global, &file)?;
    tracing::debug!(
        "profile: {:?}, region: {:?}, endpoint: {:?}",
        settings.profile_name,
        settings.connect.region,
        settings.connect.endpoint
    );
    let out = Printer { format: settings.output, quiet: cli.global.quiet };
    crate::output::set_json_errors(settings.output == crate::cli::OutputFormat::Json);
    let ctx = Ctx::new(settings, out);
    match cli.command {
        Command::ListRoles => roles::list_roles(&ctx).await,
        Command::ListOptions(a) => roles::list_options(&ctx, &a.role).await,
        Command::Create(a) => create::create(&ctx, a).await,
        Command::Recreate(a) => create::recreate(&ctx, a).await,
        Command::Provision(a) => create::provision_existing(&ctx, a).await,
        Command::List(a) => boxes::list(&ctx, a).await,
        Command::Show(a) => boxes::show(&ctx, a).await,
        Command::UpdateInstanceProfile(a) => profile::update(&ctx, a).await,
        Command::Ssh(a) => boxes::ssh(&ctx, a).await,
        Command::Rsync(a) => boxes::rsync(&ctx, a).await,
        Command::Stop(a) => boxes::stop(&ctx, a).await,
        Command::Start(a) => boxes::start(&ctx, a).await,
        Command::Reboot(a) => boxes::reboot(&ctx, a).await,
        Command::Terminate(a) => boxes::terminate(&ctx, a).await,
        Command::Image(a) => images::image(&ctx, a).await,
        Command::ListImages(a) => images::list_images(&ctx, &a.role).await,
        Command::DeleteImage(a) => images::delete_image(&ctx, a).await,
        Command::RegisterKey(a) => keys::register_key(&ctx, a).await,
        Command::DeleteKey(a) => keys::delete_key(&ctx, a).await,
        Command::Metrics(a) => boxes::metrics(&ctx, a).await,
        Command::Cleanup(a) => cleanup::cleanup(&ctx, a).await,
        Command::ResetSecurity(a) => cleanup::reset_security(&ctx, a).await,
        Command::Local(c) => local::run(&ctx, c).await,
        Command::RegisterAgents(a) => jenkins::register_agents(&ctx, a).await,
        Command::Doctor => doctor::doctor(&ctx).await,
        Command::Autostop(a) => autostop::autostop(&ctx, a).await,
        Command::Completions(_) | Command::ManPages(_) => Ok(ExitCode::SUCCESS),
        Command::CreateCluster(a) => cluster::create(&ctx, a).await,
        Command::GrowCluster(a) => cluster::grow(&ctx, a).await,
        Command::StartCluster(a) => cluster::power(&ctx, a, cluster::Power::Start).await,
        Command::StopCluster(a) => cluster::power(&ctx, a, cluster::Power::Stop).await,
        Command::TerminateCluster(a) => cluster::power(&ctx, a, cluster::Power::Terminate).await,
        Command::SshCluster(a) => cluster::ssh(&ctx, a).await,
        Command::RsyncCluster(a) => cluster::rsync(&ctx, a).await,
        Command::ListClusters(a) => cluster::list(&ctx, a).await,
    }
}

/// The stable `kind` of an error, for `--output json` (docs/json.md lists them): scripts
/// branch on it, not on the message.
pub fn error_kind(err: &anyhow::Error) -> &'static str {
    use cgcloud_aws::AwsError;
    use cgcloud_core::model::SelectError;
    use cgcloud_remote::RemoteError;
    use cgcloud_roles::RoleError;
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<AwsError>() {
            return match e {
                AwsError::NoRegion => "no-region",
                AwsError::NoCredentials { .. } | AwsError::BadCredentials { .. } => "credentials",
                AwsError::Unreachable { .. } => "unreachable",
                AwsError::Throttled { .. } => "throttled",
                AwsError::WaitTimeout { .. } => "timeout",
                AwsError::Invalid(_) => "invalid-input",
                AwsError::Service { .. } | AwsError::Other { .. } => "aws",
            };
        }
        if let Some(e) = cause.downcast_ref::<SelectError>() {
            return match e {
                SelectError::Ambiguous { .. } => "ambiguous",
                _ => "not-found",
            };
        }
        if let Some(e) = cause.downcast_ref::<RoleError>() {
            return match e {
                RoleError::UnknownRole { .. } | RoleError::UnknownClusterType { .. } => "not-found",
                RoleError::UnknownOption { .. } | RoleError::BadOptionValue { .. } | RoleError::MalformedOption(_) => {
                    "invalid-input"
                }
                _ => "role",
            };
        }
        if let Some(e) = cause.downcast_ref::<RemoteError>() {
            return match e {
                RemoteError::MissingPrograms { .. } => "missing-program",
                RemoteError::NotReady { .. } => "timeout",
                RemoteError::HostKeyMismatch { .. } => "host-key",
                _ => "ssh",
            };
        }
        if cause.downcast_ref::<cgcloud_core::namespace::NamespaceError>().is_some()
            || cause.downcast_ref::<cgcloud_core::sshkey::KeyError>().is_some()
        {
            return "invalid-input";
        }
        if cause.downcast_ref::<cgcloud_roles::compile::CompileError>().is_some() {
            return "role";
        }
        if cause.downcast_ref::<cgcloud_localcloud::Error>().is_some() {
            return "local-cloud";
        }
    }
    if err.to_string() == "interrupted" {
        return "interrupted";
    }
    "failed"
}

/// A suggestion for the user, from the first error in the chain that has one.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<cgcloud_aws::AwsError>() {
            if let Some(h) = e.hint() {
                return Some(h);
            }
        }
        if cause.downcast_ref::<cgcloud_core::namespace::NamespaceError>().is_some() {
            return Some(
                "a namespace looks like / or /team/ or /team/project/ (lower case); __me__ stands for your user name"
                    .into(),
            );
        }
        if cause.downcast_ref::<cgcloud_core::sshkey::KeyError>().is_some() {
            return Some("create a key with `ssh-keygen -t ed25519` and pass its .pub file".into());
        }
        if let Some(cgcloud_remote::RemoteError::NotReady { .. }) = cause.downcast_ref::<cgcloud_remote::RemoteError>()
        {
            return Some(
                "check that the box is reachable from here (--ssh-address public|private) and that its security group allows SSH from your address".into(),
            );
        }
    }
    None
}

/// Log lines: info as plain text, warnings and errors prefixed, debug with the target.
pub struct LogFormat;

impl<S, N> FormatEvent<S, N> for LogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
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
pub fn confirm(question: &str, yes: bool) -> Result<bool> {
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
