//! `create-cluster --share PATH`: a local file or directory every node of the cluster sees. On
//! a cluster type with a shared directory (`[cluster] shared_dir`, e.g. `/shared`) it is copied
//! there once, through the leader, and every node, present or added later, sees it. On the
//! others it is copied to `~/shared` on every node, and grow-cluster gives the workers it adds
//! the leader's `~/shared` (the original's workers pulled it from the leader at boot).

use super::*;
use cgcloud_roles::role::ClusterDecl;
use std::path::Path;

/// rsync `source` to `dest` on each target at once; the nodes it failed on are named.
async fn rsync_to(
    targets: &[(BoxInfo, cgcloud_remote::SshTarget)],
    ssh_opts: &str,
    flags: &[&str],
    source: &str,
    dest: &str,
) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for (b, target) in targets {
        let mut cmd = tokio::process::Command::new("rsync");
        cmd.arg("-e")
            .arg(target.rsync_shell(ssh_opts))
            .args(flags)
            .arg(source)
            .arg(format!("{}:{dest}", target.address))
            .stdin(Stdio::null());
        let id = b.instance_id.clone();
        set.spawn(async move { (id, cmd.status().await) });
    }
    let mut failed = Vec::new();
    while let Some(r) = set.join_next().await {
        let (id, status) = r?;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => failed.push(format!("{id} (rsync exit {})", s.code().unwrap_or(255))),
            Err(e) => failed.push(format!("{id} ({e})")),
        }
    }
    if !failed.is_empty() {
        failed.sort();
        bail!("copying {source} failed on {}", failed.join(", "));
    }
    Ok(())
}

/// At create-cluster: copies `share` to the cluster's shared directory through the leader, or
/// to `~/shared` on the leader and every worker in `workers` (and marks the leader so).
pub(super) async fn at_create(
    ctx: &Ctx,
    decl: &ClusterDecl,
    leader: &BoxInfo,
    workers: &[BoxInfo],
    share: &Path,
    ssh_opts: &str,
    address: Option<crate::cli::SshAddress>,
) -> Result<()> {
    let source = share.display().to_string();
    if let Some(dir) = &decl.shared_dir {
        let target = ctx.ssh_target(leader, None, address).await?;
        // The shared directory belongs to its own user on every node (sshfs): times and modes
        // are kept, owners and groups cannot be.
        rsync_to(&[(leader.clone(), target)], ssh_opts, &["-rlpt"], &source, &format!("{dir}/")).await?;
        ctx.out.note(format!("copied {source} to {dir} (every node sees it)"));
        return Ok(());
    }
    let mut nodes = vec![leader.clone()];
    nodes.extend(workers.iter().cloned());
    let targets = ctx.ssh_targets(&nodes, None, address).await?;
    rsync_to(&nodes.into_iter().zip(targets).collect::<Vec<_>>(), ssh_opts, &["-a"], &source, "shared/").await?;
    let mut t = Tags::new();
    t.insert(tags::SHARE.into(), "home".into());
    ctx.cloud().await?.create_tags(std::slice::from_ref(&leader.instance_id), &t).await?;
    ctx.out.note(format!("copied {source} to ~/shared on {} node(s)", workers.len() + 1));
    Ok(())
}

/// At grow-cluster: whether the new workers need the leader's `~/shared`.
pub(super) fn needed_at_grow(decl: &ClusterDecl, leader: &BoxInfo) -> bool {
    decl.shared_dir.is_none() && leader.tags.get(tags::SHARE).is_some_and(|v| v == "home")
}

/// At grow-cluster: gives `workers` what the leader has in `~/shared`, through this machine
/// (the nodes need no SSH trust between each other for it).
pub(super) async fn at_grow(
    ctx: &Ctx,
    leader: &BoxInfo,
    workers: &[BoxInfo],
    address: Option<crate::cli::SshAddress>,
) -> Result<()> {
    if workers.is_empty() {
        return Ok(());
    }
    let staging = tempfile::tempdir().context("cannot make a temporary directory")?;
    let local = format!("{}/", staging.path().display());
    let lead = ctx.ssh_target(leader, None, address).await?;
    let status = tokio::process::Command::new("rsync")
        .arg("-e")
        .arg(lead.rsync_shell(""))
        .args(["-a", &format!("{}:shared/", lead.address), &local])
        .stdin(Stdio::null())
        .status()
        .await
        .context("cannot run rsync")?;
    if !status.success() {
        bail!(
            "fetching ~/shared from the leader {} failed (rsync exit {})",
            leader.instance_id,
            status.code().unwrap_or(255)
        );
    }
    let targets = ctx.ssh_targets(workers, None, address).await?;
    rsync_to(&workers.iter().cloned().zip(targets).collect::<Vec<_>>(), "", &["-a"], &local, "shared/").await?;
    ctx.out.note(format!("copied the leader's ~/shared to {} new worker(s)", workers.len()));
    Ok(())
}
