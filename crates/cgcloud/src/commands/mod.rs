//! Dispatch: one exhaustive match from command to implementation.

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
use std::process::ExitCode;

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
        Command::ScaleCluster(a) => cluster::scale(&ctx, a).await,
        Command::StartCluster(a) => cluster::power(&ctx, a, cluster::Power::Start).await,
        Command::StopCluster(a) => cluster::power(&ctx, a, cluster::Power::Stop).await,
        Command::TerminateCluster(a) => cluster::power(&ctx, a, cluster::Power::Terminate).await,
        Command::SshCluster(a) => cluster::ssh(&ctx, a).await,
        Command::RsyncCluster(a) => cluster::rsync(&ctx, a).await,
        Command::ListClusters(a) => cluster::list(&ctx, a).await,
    }
}
