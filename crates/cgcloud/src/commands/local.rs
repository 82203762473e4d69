//! `cgcloud local up|down|status|interrupt`: the local cloud, the `local` profile that points
//! cgcloud at it, and spot interruptions on demand.

use crate::cli::{LocalCommand, LocalDirArgs};
use crate::context::Ctx;
use crate::settings::{config_path, ConfigFile, Profile};
use anyhow::{Context as _, Result};
use cgcloud_localcloud::host::Host;
use cgcloud_localcloud::{Endpoint, LocalCloud};
use std::process::ExitCode;

pub const PROFILE: &str = "local";

fn cloud(d: &LocalDirArgs) -> LocalCloud {
    LocalCloud::new(d.dir.clone().unwrap_or_else(LocalCloud::default_dir))
}

pub async fn run(ctx: &Ctx, c: LocalCommand) -> Result<ExitCode> {
    match c {
        LocalCommand::Up(a) => {
            let lc = cloud(&a.dir);
            let exe = std::env::current_exe().context("cannot find the cgcloud executable")?;
            let out = ctx.out;
            let ep = lc.up(a.port, &exe, &|line| out.note(line)).await?;
            let path = config_path();
            write_profile(&ep, &path)?;
            ctx.out.record(&ep, || {
                format!(
                    "endpoint  {}\nregion    {}\nzone      {}\nsubnet    {}\nprofile   '{PROFILE}' in {}",
                    ep.endpoint,
                    ep.region,
                    ep.zone,
                    ep.subnet,
                    path.display()
                )
            });
            ctx.out.note(format!(
                "the local cloud is up; cgcloud uses it by default now (or pass --profile {PROFILE}). \
                 Try: cgcloud register-key ~/.ssh/id_ed25519.pub && cgcloud create generic-debian-bookworm-box"
            ));
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Down(a) => {
            let lc = cloud(&a);
            let out = ctx.out;
            let said = std::sync::Mutex::new(Vec::new());
            lc.down(&|line| {
                out.note(line);
                if let Ok(mut s) = said.lock() {
                    s.push(line.to_string());
                }
            })
            .await?;
            let profile_removed = ConfigFile::remove_profile(&config_path(), PROFILE)?;
            let steps = said.into_inner().unwrap_or_default();
            let json = serde_json::json!({"up": false, "steps": steps, "profile_removed": profile_removed});
            ctx.out.json_only(&json);
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Status(a) => status(ctx, &cloud(&a)).await,
        LocalCommand::Interrupt(a) => {
            let lc = cloud(&a.dir);
            let notice = lc.interrupt(&a.instance_id, a.notice, &a.action).await?;
            ctx.out.record(&notice, || {
                format!(
                    "{}: spot interruption notice published; {} at {}",
                    a.instance_id,
                    notice["action"].as_str().unwrap_or_default(),
                    notice["time"].as_str().unwrap_or_default()
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Controller(a) => {
            cgcloud_localcloud::controller::run(cloud(&a).dir).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes the `local` profile, and makes it the default unless another default is set; the
/// rest of the user's config (comments included) stays as it is.
fn write_profile(ep: &Endpoint, path: &std::path::Path) -> Result<()> {
    let profile = Profile {
        endpoint: Some(ep.endpoint.clone()),
        region: Some(ep.region.clone()),
        zone: Some(ep.zone.clone()),
        subnet: Some(ep.subnet.clone()),
        aws_access_key_id: Some(ep.access_key_id.clone()),
        aws_secret_access_key: Some(ep.secret_access_key.clone()),
        ssh_address: Some("private".to_owned()),
        // Boxes reach the emulated API at the bridge, with their instance profile's
        // credentials from the local cloud's IMDS, as on EC2: the machine's key stays here.
        agent_endpoint: Some(ep.agent_endpoint.clone()),
        ..Default::default()
    };
    ConfigFile::set_profile(path, PROFILE, &profile, true)
}

#[derive(serde::Serialize)]
struct HostRow {
    instance_id: String,
    running: bool,
    pid: Option<u32>,
    ip: Option<String>,
    hostname: Option<String>,
}

async fn status(ctx: &Ctx, lc: &LocalCloud) -> Result<ExitCode> {
    let Some(state) = lc.state() else {
        ctx.out.note("the local cloud is down");
        ctx.out.json_only(&serde_json::json!({"up": false}));
        return Ok(ExitCode::SUCCESS);
    };
    let mut hosts = Vec::new();
    for entry in std::fs::read_dir(lc.dir.join("instances")).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let h = Host { dir: &lc.dir, id: &id };
        let meta = h.meta();
        let pid = h.pid();
        hosts.push(HostRow {
            running: pid.is_some(),
            pid,
            ip: meta.as_ref().map(|m| m.ip.clone()),
            hostname: meta.map(|m| m.hostname),
            instance_id: id,
        });
    }
    hosts.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let up = lc.is_up();
    // What it costs the machine right now (an idle local cloud should cost nearly nothing).
    let cost = if up {
        Some(cgcloud_localcloud::cost::measure(&state, std::time::Duration::from_secs(1)).await)
    } else {
        None
    };
    let json = serde_json::json!({
        "up": up, "endpoint": LocalCloud::endpoint_url(state.port), "state": state, "hosts": hosts, "cost": cost,
    });
    ctx.out.record(&json, || {
        let mut lines = vec![
            format!("up          {up}"),
            format!("endpoint    {}", LocalCloud::endpoint_url(state.port)),
            format!("moto pid    {}", state.moto_pid.map(|p| p.to_string()).unwrap_or_default()),
            format!("controller  {}", state.controller_pid.map(|p| p.to_string()).unwrap_or_default()),
            format!(
                "images      {}",
                state.images.iter().map(|i| format!("{}={}", i.os_id, i.ami_id)).collect::<Vec<_>>().join(" ")
            ),
        ];
        if let Some(c) = &cost {
            let pct = |v: Option<f64>| v.map(|v| format!("{v:.1} %")).unwrap_or_else(|| "?".into());
            lines.push(format!(
                "cost        moto {}, controller {} of a core; {} requests/s (over {:.1} s)",
                pct(c.moto_cpu_percent),
                pct(c.controller_cpu_percent),
                c.requests_per_s.map(|r| format!("{r:.1}")).unwrap_or_else(|| "?".into()),
                c.window_s
            ));
        }
        lines.push(String::new());
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                vec![
                    h.instance_id.clone(),
                    if h.running { "running".into() } else { "off".into() },
                    h.ip.clone().unwrap_or_default(),
                    h.hostname.clone().unwrap_or_default(),
                ]
            })
            .collect();
        lines.push(crate::output::render_table(&["INSTANCE", "HOST", "IP", "HOSTNAME"], &rows));
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}
