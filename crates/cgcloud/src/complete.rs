//! Shell completion: `cgcloud completions SHELL` prints the script a shell sources once; the
//! script calls cgcloud back (with `CGCLOUD_COMPLETE` set) for every completion, so commands
//! and flags come from the clap definitions and role, cluster-type and cluster names from the
//! role registry (plugins included) and the namespace's boxes, as they are now.

use clap_complete::engine::CompletionCandidate;
use std::time::Duration;

/// The environment variable the shell scripts set when they ask cgcloud for completions.
pub const VAR: &str = "CGCLOUD_COMPLETE";

/// The shells a registration script can be written for.
pub const SHELLS: &[&str] = &["bash", "zsh", "fish", "elvish", "powershell"];

fn registry() -> Option<cgcloud_roles::Registry> {
    cgcloud_roles::Registry::load(&crate::settings::plugin_dirs()).ok()
}

/// Roles one can create, and the role names cluster nodes are listed under.
pub fn roles() -> Vec<CompletionCandidate> {
    let Some(reg) = registry() else { return Vec::new() };
    let mut out: Vec<CompletionCandidate> =
        reg.list().into_iter().map(|r| CompletionCandidate::new(r.name).help(Some(r.description.into()))).collect();
    for (t, _) in reg.cluster_types() {
        if let Ok(role) = reg.cluster_type(&t) {
            if let Some(c) = role.cluster {
                out.push(CompletionCandidate::new(c.leader).help(Some(format!("leader of {t} clusters").into())));
                out.push(CompletionCandidate::new(c.worker).help(Some(format!("workers of {t} clusters").into())));
            }
        }
    }
    out
}

/// Cluster types (`create-cluster TYPE`).
pub fn cluster_types() -> Vec<CompletionCandidate> {
    let Some(reg) = registry() else { return Vec::new() };
    reg.cluster_types().into_iter().map(|(t, role)| CompletionCandidate::new(t).help(Some(role.into()))).collect()
}

/// The names of the namespace's clusters, asked of the cloud with the settings of the
/// environment and config file (flags on the line being completed are not known yet); none if
/// that takes more than a few seconds or fails.
pub fn clusters() -> Vec<CompletionCandidate> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return Vec::new() };
    rt.block_on(async {
        let work = async {
            let file = crate::settings::ConfigFile::load(&crate::settings::config_path()).ok()?;
            let settings = crate::settings::Settings::resolve(&crate::cli::GlobalArgs::default(), &file).ok()?;
            let out = crate::output::Printer { format: crate::cli::OutputFormat::Text, quiet: true };
            let ctx = crate::context::Ctx::new(settings, out);
            let ns = ctx.namespace().await.ok()?.clone();
            let boxes = ctx.cloud().await.ok()?.list_boxes(ns.as_str(), None).await.ok()?;
            let mut names: Vec<String> = boxes.into_iter().filter_map(|b| b.cluster).collect();
            names.sort();
            names.dedup();
            Some(names.into_iter().map(CompletionCandidate::new).collect::<Vec<_>>())
        };
        tokio::time::timeout(Duration::from_secs(4), work).await.ok().flatten().unwrap_or_default()
    })
}

/// The script `shell` sources to complete cgcloud's commands, flags and names.
pub fn registration(shell: &str) -> anyhow::Result<String> {
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells
        .completer(shell)
        .ok_or_else(|| anyhow::anyhow!("no completions for shell '{shell}' (shells: {})", SHELLS.join(", ")))?;
    // Completes the command as typed (`cgcloud`), by calling this very executable.
    let exe = std::env::current_exe()?;
    let mut buf = Vec::new();
    completer.write_registration(VAR, "cgcloud", "cgcloud", &exe.to_string_lossy(), &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
