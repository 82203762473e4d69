//! Commands on existing boxes: list, show, ssh, rsync, stop, start, reboot, terminate.

use crate::cli::{ListArgs, RsyncArgs, SelectArgs, SshArgs, WaitSelectArgs};
use crate::context::Ctx;
use crate::output::Printer;
use anyhow::{bail, Context as _, Result};
use cgcloud_aws::Cloud;
use cgcloud_core::model::{ordered_alive, BoxInfo};
use cgcloud_core::tags;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

/// How long state waits may take before giving up.
const STATE_TIMEOUT: Duration = Duration::from_secs(900);

/// `list --original`: the original CGCloud's boxes in the namespace; their roles (e.g.
/// `spark-master`) are the original's, not necessarily ours.
async fn list_original(ctx: &Ctx, a: ListArgs) -> Result<ExitCode> {
    let ns = ctx.namespace().await?;
    let mut boxes = ctx.cloud().await?.original_boxes(ns).await?;
    boxes.retain(|b| a.role.as_ref().is_none_or(|r| &b.role == r));
    boxes.retain(|b| a.cluster.is_none() || b.cluster == a.cluster);
    boxes.sort_by(|x, y| (&x.role, x.sort_key()).cmp(&(&y.role, y.sort_key())));
    print_rows(&ctx.out, &boxes);
    if !boxes.is_empty() {
        ctx.out.note(
            "these boxes are the original CGCloud's: cgcloud lists them but does not manage them; \
             recreate what you need from cgcloud's roles (`cgcloud list-roles`)",
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(ctx: &Ctx, a: ListArgs) -> Result<ExitCode> {
    let ns = ctx.namespace().await?;
    if a.original {
        return list_original(ctx, a).await;
    }
    if let Some(role) = &a.role {
        ctx.registry().await?.box_role(role)?;
    }
    let mut boxes = ordered_alive(ctx.cloud().await?.list_boxes(ns.as_str(), a.role.as_deref()).await?);
    if let Some(c) = &a.cluster {
        boxes.retain(|b| b.cluster.as_deref() == Some(c));
    }
    boxes.sort_by(|x, y| (&x.role, x.sort_key()).cmp(&(&y.role, y.sort_key())));
    print_rows(&ctx.out, &boxes);
    Ok(ExitCode::SUCCESS)
}

/// Prints boxes as a table, numbering each role's boxes in ordinal order.
pub fn print_rows(out: &Printer, boxes: &[BoxInfo]) {
    let mut per_role: BTreeMap<&str, usize> = BTreeMap::new();
    let rows: Vec<Vec<String>> = boxes
        .iter()
        .map(|b| {
            let n = per_role.entry(b.role.as_str()).or_default();
            let row = vec![
                b.role.clone(),
                n.to_string(),
                b.instance_id.clone(),
                b.state.clone(),
                b.instance_type.clone(),
                b.zone.clone().unwrap_or_default(),
                b.private_ip.clone().unwrap_or_else(|| "-".into()),
                b.public_ip.clone().unwrap_or_else(|| "-".into()),
                b.launch_time.clone(),
                b.cluster.clone().unwrap_or_else(|| "-".into()),
                b.ordinal.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
                b.autostop.clone().unwrap_or_else(|| "-".into()),
            ];
            *n += 1;
            row
        })
        .collect();
    out.table(
        &[
            "ROLE",
            "ORDINAL",
            "INSTANCE",
            "STATE",
            "TYPE",
            "ZONE",
            "PRIVATE_IP",
            "PUBLIC_IP",
            "LAUNCHED",
            "CLUSTER",
            "CLUSTER_ORDINAL",
            "AUTOSTOP",
        ],
        &rows,
        boxes,
    );
}

pub fn print_box(out: &Printer, b: &BoxInfo) {
    out.record(b, || box_text(b));
}

/// A box as `show` prints it for people: one `key  value` line per field.
pub fn box_text(b: &BoxInfo) -> String {
    {
        let mut lines = vec![
            ("instance_id", b.instance_id.clone()),
            ("role", b.role.clone()),
            ("namespace", b.namespace.clone()),
            ("state", b.state.clone()),
            ("instance_type", b.instance_type.clone()),
            ("zone", b.zone.clone().unwrap_or_default()),
            ("private_ip", b.private_ip.clone().unwrap_or_default()),
            ("public_ip", b.public_ip.clone().unwrap_or_default()),
            ("private_dns", b.private_dns.clone().unwrap_or_default()),
            ("launch_time", b.launch_time.clone()),
            ("image_id", b.image_id.clone().unwrap_or_default()),
            ("key_name", b.key_name.clone().unwrap_or_default()),
            ("generation", b.generation.to_string()),
            ("spot", b.spot.to_string()),
            ("admin_user", b.admin_user.clone().unwrap_or_default()),
            ("cluster", b.cluster.clone().unwrap_or_default()),
            ("cluster_ordinal", b.ordinal.map(|o| o.to_string()).unwrap_or_default()),
            ("leader", b.leader.clone().unwrap_or_default()),
            ("persistent_volume", b.persistent_volume.clone().unwrap_or_default()),
            ("autostop", b.autostop.clone().unwrap_or_default()),
        ];
        for (k, v) in &b.options {
            lines.push(("option", format!("{k}={v}")));
        }
        // Tags are values boxes (and whoever may tag them) write: no control characters reach
        // the terminal.
        lines.iter().map(|(k, v)| format!("{k:<18}{}", cgcloud_core::tags::printable(v))).collect::<Vec<_>>().join("\n")
    }
}

pub async fn show(ctx: &Ctx, a: SelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    print_box(&ctx.out, &b);
    Ok(ExitCode::SUCCESS)
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    ExitCode::from(status.code().map(|c| c.clamp(0, 255) as u8).unwrap_or(255))
}

pub async fn ssh(ctx: &Ctx, a: SshArgs) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    let b = ctx.select(&a.role, &a.selection).await?;
    let mut target = ctx.ssh_target(&b, Some(&a.login), a.ssh_address).await?;
    let mut args = a.args.clone();
    if a.forward {
        let mut forwards = forward_args(ctx, &b).await?;
        // A connection of its own: the forwards end with this session, and a port taken by an
        // earlier session's shared connection is not in the way.
        target.extra.splice(0..0, ["-o", "ControlMaster=no", "-o", "ControlPath=none"].map(String::from));
        forwards.append(&mut args);
        args = forwards;
    }
    // ssh takes this process's place: its exit status and signals are the command's, and a
    // killed `cgcloud ssh` leaves no session behind. exec returns only if it failed.
    let err = target.std_command(false, &args).exec();
    Err(anyhow::Error::new(err).context(format!("cannot run ssh to {} ({})", b.instance_id, target.address)))
}

/// The `ssh` options that open the `[[forwards]]` of box `b`'s role on this machine, each on
/// its own port when that is free here, else on any free one; says which on stderr.
async fn forward_args(ctx: &Ctx, b: &BoxInfo) -> Result<Vec<String>> {
    let role = ctx.registry().await?.box_role(&b.role)?;
    let forwards: Vec<_> = role.forwards.iter().filter(|f| f.applies_to(b.ordinal)).collect();
    if forwards.is_empty() {
        bail!(
            "role '{}' declares no web UIs to forward ([[forwards]]); forward a port yourself, e.g. `cgcloud ssh {} -- -N -L 8080:localhost:8080`",
            role.name,
            b.role
        );
    }
    let mut args = vec!["-o".to_owned(), "ExitOnForwardFailure=yes".to_owned()];
    for f in forwards {
        let port = match &f.option {
            Some(o) => {
                let value = b
                    .options
                    .get(o)
                    .cloned()
                    .or_else(|| role.options.get(o).and_then(|d| d.default.as_ref()).map(|d| d.to_string()));
                match value {
                    Some(v) => v.parse::<u16>().ok().filter(|p| *p > 0).with_context(|| {
                        format!("box {}: option {o} = '{}' is not a port", b.instance_id, tags::printable(&v))
                    })?,
                    None => f.port,
                }
            }
            None => f.port,
        };
        let host = if f.host == "private-ip" {
            b.private_ip.clone().with_context(|| format!("box {} has no private IP", b.instance_id))?
        } else {
            f.host.clone()
        };
        // Taken by something else here: any free port instead (the listener is closed before
        // ssh binds it; ExitOnForwardFailure catches the rare race).
        let local = match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => port,
            Err(_) => std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .context("no free local port to forward to")?,
        };
        args.push("-L".into());
        args.push(format!("127.0.0.1:{local}:{host}:{port}"));
        ctx.out.note(format!("forward: http://localhost:{local}/ -> {host}:{port} on the box ({})", f.description));
    }
    Ok(args)
}

pub async fn rsync(ctx: &Ctx, a: RsyncArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    let target = ctx.ssh_target(&b, Some(&a.login), a.ssh_address).await?;
    let status = tokio::process::Command::new("rsync")
        .arg("-e")
        .arg(target.rsync_shell(&a.ssh_opts))
        .args(target.rsync_args(&a.args))
        .status()
        .await
        .context("cannot run rsync; install it (e.g. `apt-get install rsync`)")?;
    Ok(exit_code(status))
}

/// Polls until every instance is in `target`; fails early if one lands in a state it cannot
/// leave towards `target`.
pub async fn wait_for_state(ctx: &Ctx, cloud: &Cloud, ids: &[String], target: &str, what: &str) -> Result<()> {
    let mut progress = ctx.out.progress(format!("waiting for {what} to be {target}"));
    let mut delay = Duration::from_millis(250);
    loop {
        let states = cloud.instance_states(ids).await?;
        let pending: Vec<String> =
            ids.iter().filter(|id| states.get(*id).map(|s| s.0.as_str()) != Some(target)).cloned().collect();
        if pending.is_empty() {
            progress.finish(format!("{what} {target}"));
            return Ok(());
        }
        for id in &pending {
            if let Some((state, reason)) = states.get(id) {
                let dead = matches!(state.as_str(), "terminated" | "shutting-down") && target != "terminated";
                if dead {
                    bail!(
                        "instance {id} is {state} instead of {target}{}",
                        reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
                    );
                }
            }
        }
        if progress.elapsed() > STATE_TIMEOUT {
            bail!("timed out after {} s waiting for {what} to be {target}", STATE_TIMEOUT.as_secs());
        }
        progress.set_message(format!("waiting for {what} to be {target} ({} left)", pending.len()));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// What a power command did to a box (`--output json`: one object, see docs/json.md).
#[derive(Debug, serde::Serialize)]
pub struct PowerResult {
    pub instance_id: String,
    pub role: String,
    /// `stop`, `start`, `reboot` or `terminate`.
    pub action: &'static str,
    /// False when the box already was as asked.
    pub changed: bool,
    /// The box's state when the command returned (e.g. `stopping` with -Q).
    pub state: String,
}

/// Prints what a power command did: one line (`i-... stopped`), or the object.
pub async fn report_power(ctx: &Ctx, b: &BoxInfo, action: &'static str, changed: bool) -> Result<()> {
    let states = ctx.cloud().await?.instance_states(std::slice::from_ref(&b.instance_id)).await?;
    let state = states.get(&b.instance_id).map(|s| s.0.clone()).unwrap_or_else(|| "terminated".into());
    let r = PowerResult { instance_id: b.instance_id.clone(), role: b.role.clone(), action, changed, state };
    ctx.out.record(&r, || format!("{}\t{}", r.instance_id, r.state));
    Ok(())
}

pub async fn stop(ctx: &Ctx, a: WaitSelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    if b.spot {
        bail!("box {} is a spot instance, and EC2 cannot stop spot instances; terminate it instead", b.instance_id);
    }
    match b.state.as_str() {
        "stopped" => {
            ctx.out.note(format!("box {} is already stopped", b.instance_id));
            report_power(ctx, &b, "stop", false).await?;
            return Ok(ExitCode::SUCCESS);
        }
        "running" | "pending" | "stopping" => {}
        s => bail!("box {} is {s}; only a running box can be stopped", b.instance_id),
    }
    let cloud = ctx.cloud().await?;
    cloud.stop(std::slice::from_ref(&b.instance_id)).await?;
    if !a.quick {
        wait_for_state(ctx, cloud, std::slice::from_ref(&b.instance_id), "stopped", &format!("box {}", b.instance_id))
            .await?;
    }
    report_power(ctx, &b, "stop", true).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn start(ctx: &Ctx, a: WaitSelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    match b.state.as_str() {
        "running" => {
            ctx.out.note(format!("box {} is already running", b.instance_id));
            report_power(ctx, &b, "start", false).await?;
            return Ok(ExitCode::SUCCESS);
        }
        "stopped" | "stopping" | "pending" => {}
        s => bail!("box {} is {s}; only a stopped box can be started", b.instance_id),
    }
    let cloud = ctx.cloud().await?;
    if b.state == "stopping" {
        wait_for_state(ctx, cloud, std::slice::from_ref(&b.instance_id), "stopped", &format!("box {}", b.instance_id))
            .await?;
    }
    cloud.start(std::slice::from_ref(&b.instance_id)).await?;
    if !a.quick {
        wait_for_state(ctx, cloud, std::slice::from_ref(&b.instance_id), "running", &format!("box {}", b.instance_id))
            .await?;
        wait_ssh_ready(ctx, std::slice::from_ref(&b.instance_id)).await?;
    }
    report_power(ctx, &b, "start", true).await?;
    Ok(ExitCode::SUCCESS)
}

/// Waits until every box answers over SSH (as after a launch), all at once: a started box is
/// only usable then.
pub async fn wait_ssh_ready(ctx: &Ctx, ids: &[String]) -> Result<()> {
    let cloud = ctx.cloud().await?;
    let boxes: Vec<BoxInfo> = cloud.boxes_by_id(ids).await?;
    let progress = ctx.out.progress(format!("waiting for SSH on {} box(es)", boxes.len()));
    let mut probes = tokio::task::JoinSet::new();
    for b in &boxes {
        let target = ctx.ssh_target(b, None, None).await?;
        let id = b.instance_id.clone();
        probes.spawn(async move {
            let r = target.wait_ready(SSH_READY_TIMEOUT).await;
            target.close().await;
            (id, r)
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = probes.join_next().await {
        if let Ok((id, Err(e))) = done {
            failed.push(format!("{id}: {e}"));
        }
    }
    if !failed.is_empty() {
        bail!("started, but SSH does not answer on {} box(es): {}", failed.len(), failed.join("; "));
    }
    progress.finish(format!("SSH is up on {} box(es)", boxes.len()));
    Ok(())
}

const SSH_READY_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn reboot(ctx: &Ctx, a: SelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    if b.state != "running" {
        bail!("box {} is {}; only a running box can be rebooted", b.instance_id, b.state);
    }
    ctx.cloud().await?.reboot(std::slice::from_ref(&b.instance_id)).await?;
    ctx.out.note(format!("rebooting box {}", b.instance_id));
    report_power(ctx, &b, "reboot", true).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn terminate(ctx: &Ctx, a: WaitSelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    let cloud = ctx.cloud().await?;
    cloud.terminate(std::slice::from_ref(&b.instance_id)).await?;
    if !a.quick {
        wait_for_state(
            ctx,
            cloud,
            std::slice::from_ref(&b.instance_id),
            "terminated",
            &format!("box {}", b.instance_id),
        )
        .await?;
    }
    forget(ctx, std::slice::from_ref(&b.instance_id)).await?;
    report_power(ctx, &b, "terminate", true).await?;
    Ok(ExitCode::SUCCESS)
}

/// What goes with terminated boxes: their agents' queues (`cleanup` catches any left behind)
/// and their host keys.
pub async fn forget(ctx: &Ctx, ids: &[String]) -> Result<()> {
    let cloud = ctx.cloud().await?;
    let ns = ctx.namespace().await?;
    let mut deleted = false;
    for id in ids {
        match cloud.delete_queue_named(&ns.agent_queue_name(id)).await {
            Ok(d) => deleted |= d,
            Err(e) => {
                tracing::warn!("could not delete the agent queue of {id}: {e}; `cgcloud cleanup` removes it later")
            }
        }
    }
    // Their subscriptions go too: a topic with subscriptions of deleted queues cannot be
    // published to on emulators, and they are clutter on EC2.
    if deleted {
        if let Err(e) = cloud.prune_agent_subscriptions().await {
            tracing::warn!("could not remove the agent subscriptions of deleted queues: {e}");
        }
    }
    cgcloud_remote::hostkey::prune(&ctx.settings.known_hosts(), |alias| !ids.iter().any(|i| i == alias))?;
    Ok(())
}

pub async fn metrics(ctx: &Ctx, a: SelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    let values = ctx.cloud().await?.instance_metrics(&b.instance_id, 60).await?;
    if values.is_empty() {
        ctx.out
            .note(format!("box {} reported no metrics in the last hour (create boxes with --metrics)", b.instance_id));
    }
    let rows: Vec<Vec<String>> = values
        .iter()
        .map(|v| vec![v.name.clone(), format!("{:.1}", v.value), v.unit.clone(), v.timestamp.clone()])
        .collect();
    ctx.out.table(&["METRIC", "VALUE", "UNIT", "AT"], &rows, &values);
    Ok(ExitCode::SUCCESS)
}
