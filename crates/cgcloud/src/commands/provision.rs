//! Provisioning a box: the role is compiled to a plan here, and the agent applies it on the
//! box. cgcloud uploads the agent (when the box's copy differs), the plan and the box's
//! facts, runs `cgcloud-agent apply` over SSH and shows each step's progress; on failure it
//! reports the failing step and the tail of its output.

use crate::context::Ctx;
use anyhow::{anyhow, bail, Context as _, Result};
use cgcloud_core::model::BoxInfo;
use cgcloud_core::plan::Plan;
use cgcloud_remote::SshTarget;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::AsyncBufReadExt as _;

const AGENT_PATH: &str = "/usr/local/bin/cgcloud-agent";
const PLAN_PATH: &str = "/var/lib/cgcloud/plan.json";
const FACTS_PATH: &str = "/var/lib/cgcloud/facts.json";

/// What a provisioning run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub instance_id: String,
    pub plan_hash: String,
    pub changed: u64,
    pub unchanged: u64,
    pub skipped: u64,
}

/// Where the agent comes from.
enum AgentSource {
    /// Development: a binary on this machine, uploaded over SSH.
    Local(PathBuf),
    /// Release: a versioned artifact the box downloads and checks against its SHA-256 (one
    /// for every architecture, or one per architecture).
    Release { url: String, sha256: Checksums },
}

/// The release agent's expected SHA-256: `HEX` for every architecture, or
/// `x86_64=HEX,aarch64=HEX` (what `uname -m` prints on the box) when `{arch}` in the URL makes
/// them different files.
#[derive(Debug, PartialEq)]
enum Checksums {
    Any(String),
    ByArch(std::collections::BTreeMap<String, String>),
}

impl Checksums {
    fn parse(text: &str) -> Result<Checksums> {
        let hex = |h: &str| -> Result<String> {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("the agent checksum '{h}' is not a SHA-256 (64 hex digits)");
            }
            Ok(h.to_lowercase())
        };
        let text = text.trim();
        if !text.contains('=') {
            return Ok(Checksums::Any(hex(text)?));
        }
        let mut by_arch = std::collections::BTreeMap::new();
        for item in text.split([',', ' ']).filter(|i| !i.is_empty()) {
            let (arch, h) = item.split_once('=').with_context(|| {
                format!("'{item}' in the agent checksums is not ARCH=SHA256 (e.g. x86_64=<64 hex digits>)")
            })?;
            if !valid_arch(arch) {
                bail!("'{arch}' in the agent checksums is not an architecture name (as `uname -m` prints it)");
            }
            by_arch.insert(arch.to_owned(), hex(h)?);
        }
        Ok(Checksums::ByArch(by_arch))
    }

    /// The checksum for a box of architecture `arch`.
    fn get(&self, arch: &str) -> Result<&str> {
        match self {
            Checksums::Any(h) => Ok(h),
            Checksums::ByArch(m) => m.get(arch).map(String::as_str).with_context(|| {
                format!(
                    "the box is {arch}, and the agent checksums name only {}; add {arch}=SHA256 to CGCLOUD_AGENT_SHA256",
                    m.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }),
        }
    }
}

/// What `uname -m` may print; anything else from a box is refused before it reaches a URL.
fn valid_arch(arch: &str) -> bool {
    !arch.is_empty() && arch.len() <= 32 && arch.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `CGCLOUD_AGENT_BINARY` if set, else a configured release URL, else `cgcloud-agent` beside
/// cgcloud.
fn agent_source(ctx: &Ctx) -> Result<AgentSource> {
    if let Some(p) = std::env::var_os("CGCLOUD_AGENT_BINARY") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("CGCLOUD_AGENT_BINARY={} does not exist", p.display());
        }
        return Ok(AgentSource::Local(p));
    }
    if let Some(url) = &ctx.settings.agent.url {
        let sha256 = ctx.settings.agent.sha256.as_deref().with_context(|| {
            format!("the agent URL {url} is set but not its checksum; set CGCLOUD_AGENT_SHA256 (or agent_sha256 in the profile)")
        })?;
        return Ok(AgentSource::Release {
            url: url.replace("{version}", env!("CARGO_PKG_VERSION")),
            sha256: Checksums::parse(sha256)?,
        });
    }
    Ok(AgentSource::Local(agent_binary()?))
}

/// Fails with the same error and hint as provisioning would, if there is no agent to put on
/// boxes; launches call it before they create anything.
pub(crate) fn check_agent(ctx: &Ctx) -> Result<()> {
    agent_source(ctx).map(|_| ())
}

/// The locally built agent beside the cgcloud executable.
pub fn agent_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the cgcloud executable")?;
    let beside = exe.with_file_name("cgcloud-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "cannot find cgcloud-agent next to {}; build it (`cargo build -p cgcloud-agent`, or `cargo install --path crates/cgcloud-agent`) or set CGCLOUD_AGENT_BINARY",
        exe.display()
    )
}

fn sha256_file(path: &std::path::Path) -> Result<String> {
    use sha2::{Digest as _, Sha256};
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&data)))
}

/// Runs `script` on the box with `stdin` piped in; fails with its output.
pub(crate) async fn run_with_input(target: &SshTarget, script: &str, stdin: &[u8]) -> Result<String> {
    let out = target.run_with_input(&[script.to_owned()], stdin).await?;
    if !out.status.success() {
        bail!(
            "`{script}` on {} failed ({}): {}",
            target.address,
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Puts the agent on the box unless the box already has this very binary.
pub async fn install_agent(ctx: &Ctx, target: &SshTarget) -> Result<()> {
    let source = agent_source(ctx)?;
    let check = format!("echo \"$(uname -m) $(sha256sum {AGENT_PATH} 2>/dev/null | cut -d' ' -f1)\"");
    let remote = match run_with_input(target, &check, b"").await {
        Ok(r) => r,
        // The release's file and checksum depend on the box's architecture.
        Err(e) if matches!(source, AgentSource::Release { .. }) => {
            return Err(e.context("cannot ask the box for its architecture"))
        }
        // A local binary is uploaded whatever the box has.
        Err(_) => String::new(),
    };
    let mut remote = remote.split_whitespace();
    let (arch, present) = (remote.next().unwrap_or_default(), remote.next().unwrap_or_default());
    let local = match source {
        AgentSource::Local(p) => {
            if present == sha256_file(&p)? {
                return Ok(());
            }
            p
        }
        AgentSource::Release { url, sha256 } => {
            if !valid_arch(arch) {
                bail!("the box answered '{arch}' for its architecture (uname -m)");
            }
            let sha256 = sha256.get(arch)?;
            if present == sha256 {
                return Ok(());
            }
            // The box downloads the artifact itself and refuses it unless the checksum matches.
            let url = url.replace("{arch}", arch);
            let script = format!(
                "set -e; t=$(mktemp); curl -fsSL --retry 3 -o \"$t\" \"{url}\"; \
                 if [ \"$(sha256sum \"$t\" | cut -d' ' -f1)\" != {sha256} ]; then echo \"checksum mismatch for {url}\" >&2; rm -f \"$t\"; exit 1; fi; \
                 sudo -n install -m 0755 \"$t\" {AGENT_PATH}; rm -f \"$t\""
            );
            run_with_input(target, &script, b"").await.context("cannot install the agent release on the box")?;
            return Ok(());
        }
    };
    let data = std::fs::read(&local).with_context(|| format!("cannot read {}", local.display()))?;
    let install = format!(
        "sudo -n sh -c 'mkdir -p /usr/local/bin && cat > {AGENT_PATH}.new && chmod 755 {AGENT_PATH}.new && mv {AGENT_PATH}.new {AGENT_PATH}'"
    );
    run_with_input(target, &install, &data).await.context("cannot install the agent on the box")?;
    Ok(())
}

/// Formats (if blank) and mounts the box's persistent volume at /mnt/persistent with the
/// agent, which also records it in /etc/fstab for later boots.
pub async fn mount_volume(ctx: &Ctx, target: &SshTarget, volume_id: &str, name: &str) -> Result<()> {
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if !volume_id.starts_with("vol-") || !plain(volume_id) || !plain(name) {
        bail!("refusing volume '{volume_id}' named '{name}': not a plain volume id and name");
    }
    install_agent(ctx, target).await?;
    let progress = ctx.out.progress(format!("mounting persistent volume {volume_id} at /mnt/persistent"));
    let said =
        run_with_input(target, &format!("sudo -n {AGENT_PATH} volume --id {volume_id} --name {name}"), b"").await?;
    progress.finish(format!("persistent volume {volume_id}: {}", said.trim()));
    Ok(())
}

/// The facts the agent fills templates with, for a box outside any cluster.
pub fn box_facts(b: &BoxInfo, region: &str) -> serde_json::Value {
    let hostname = b.private_dns.as_deref().and_then(|d| d.split('.').next()).unwrap_or_default().to_owned();
    serde_json::json!({
        "box": {
            "instance_id": b.instance_id,
            "private_ip": b.private_ip,
            "public_ip": b.public_ip,
            "private_dns": b.private_dns,
            "hostname": hostname,
            "zone": b.zone,
            "region": region,
            "namespace": b.namespace,
            "role": b.role,
        },
        "cluster": { "role": "none" },
    })
}

/// What the agent's `apply --json` events (one JSON object a line) come to: the progress
/// shown, the first failure, and the summary.
struct Events {
    summary: Summary,
    bar: Option<crate::output::StepProgress>,
    failure: Option<anyhow::Error>,
}

impl Events {
    /// One line of the agent's output; `steps` makes the progress display for `total` steps.
    fn on_line(&mut self, line: &str, steps: impl FnOnce(u64) -> crate::output::StepProgress) {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            tracing::debug!("agent: {line}");
            return;
        };
        let (step, total) = (ev["step"].as_u64().unwrap_or(0), ev["total"].as_u64().unwrap_or(0));
        let name = ev["name"].as_str().unwrap_or("");
        match ev["event"].as_str() {
            Some("start") => self.bar.get_or_insert_with(|| steps(total)).start(step, name),
            Some("done") => {
                if let Some(b) = self.bar.as_mut() {
                    b.done(step, ev["status"].as_str().unwrap_or(""));
                }
            }
            Some("failed") => {
                self.bar = None;
                self.failure.get_or_insert_with(|| {
                    anyhow!(
                        "provisioning step '{}' failed: {}\n{}",
                        ev["name"].as_str().unwrap_or("?"),
                        ev["error"].as_str().unwrap_or("?"),
                        ev["output"].as_str().unwrap_or("")
                    )
                });
            }
            Some("summary") => {
                self.summary.changed = ev["changed"].as_u64().unwrap_or(0);
                self.summary.unchanged = ev["ok"].as_u64().unwrap_or(0);
                self.summary.skipped = ev["skipped"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
}

/// Applies `plan` on the box with the agent, showing per-step progress.
pub async fn provision(ctx: &Ctx, target: &SshTarget, b: &BoxInfo, plan: &Plan, upgrade: bool) -> Result<Summary> {
    install_agent(ctx, target).await?;
    let plan_json = serde_json::to_vec_pretty(plan)?;
    let facts = serde_json::to_vec_pretty(&box_facts(b, &ctx.cloud().await?.region))?;
    let put = |path: &str| format!("sudo -n sh -c 'mkdir -p /var/lib/cgcloud && cat > {path}'");
    run_with_input(target, &put(PLAN_PATH), &plan_json).await?;
    run_with_input(target, &put(FACTS_PATH), &facts).await?;

    let mut cmd = format!("sudo -n {AGENT_PATH} apply --json --plan {PLAN_PATH} --facts {FACTS_PATH}");
    if upgrade {
        cmd.push_str(" --upgrade");
    }
    let mut child = target
        .command(true, &[cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ssh")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut events = Events {
        summary: Summary { instance_id: b.instance_id.clone(), plan_hash: plan.hash(), ..Default::default() },
        bar: None,
        failure: None,
    };
    while let Some(line) = lines.next_line().await? {
        events.on_line(&line, |total| ctx.out.steps(total));
    }
    let Events { summary, bar, failure } = events;
    let out = child.wait_with_output().await?;
    if let Some(f) = failure {
        return Err(f.context(format!(
            "provisioning {} failed; the agent's log is /var/log/cgcloud/apply.log on the box",
            b.instance_id
        )));
    }
    if !out.status.success() {
        bail!(
            "the agent on {} failed ({}): {}",
            b.instance_id,
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let done = format!("provisioned {}: {} changed, {} unchanged", b.instance_id, summary.changed, summary.unchanged);
    match bar {
        Some(b) => b.finish(done),
        None => ctx.out.note(done),
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The plain progress (off a terminal, as in scripts/demo) of the events the agent prints
    /// (apply.rs): each step's number, the total and its name, which only `start` carries.
    #[test]
    fn plain_step_progress_names_each_step_of_the_total() {
        let agent = [
            r#"{"event":"start","step":1,"total":3,"name":"install curl"}"#,
            r#"{"event":"done","step":1,"status":"changed","ms":3400}"#,
            "not JSON: passed over",
            r#"{"event":"start","step":2,"total":3,"name":"user sparkbox"}"#,
            r#"{"event":"done","step":2,"status":"ok","ms":1}"#,
            r#"{"event":"start","step":3,"total":3,"name":"service hdfs-namenode"}"#,
            r#"{"event":"done","step":3,"status":"skipped","ms":0}"#,
            r#"{"event":"summary","changed":1,"ok":1,"skipped":1}"#,
        ];
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let mut events = Events { summary: Summary::default(), bar: None, failure: None };
        for line in agent {
            let seen = lines.clone();
            events.on_line(line, |total| {
                crate::output::StepProgress::plain_to(total, move |l| seen.lock().unwrap().push(l.to_owned()))
            });
        }
        events.bar.take().unwrap().finish("provisioned i-1: 1 changed, 1 unchanged");
        let seconds = regex::Regex::new(r"\(\d+\.\d s\)").unwrap();
        let text: Vec<String> =
            lines.lock().unwrap().iter().map(|l| seconds.replace(l, "(T s)").into_owned()).collect();
        assert_eq!(
            text,
            [
                "[1/3] install curl: changed (T s)",
                "[2/3] user sparkbox: ok (T s)",
                "[3/3] service hdfs-namenode: skipped (T s)",
                "provisioned i-1: 1 changed, 1 unchanged (T s)",
            ]
        );
        assert_eq!((events.summary.changed, events.summary.unchanged, events.summary.skipped), (1, 1, 1));
        assert!(events.failure.is_none());
    }

    #[test]
    fn agent_checksums_for_one_or_each_architecture() {
        let (a, b) = ("a".repeat(64), "B".repeat(64));
        assert_eq!(Checksums::parse(&a).unwrap().get("riscv64").unwrap(), a);
        let both = Checksums::parse(&format!("x86_64={a}, aarch64={b}")).unwrap();
        assert_eq!(both.get("x86_64").unwrap(), a);
        assert_eq!(both.get("aarch64").unwrap(), "b".repeat(64));
        let err = both.get("riscv64").unwrap_err().to_string();
        assert!(err.contains("riscv64=SHA256") && err.contains("aarch64, x86_64"), "{err}");
        for bad in ["abc", "x86_64=abc", "x86 64=aaaa", "$(reboot)=".to_owned().as_str(), "x86_64"] {
            assert!(Checksums::parse(bad).is_err(), "{bad}");
        }
        assert!(valid_arch("aarch64") && !valid_arch("x86_64;reboot") && !valid_arch(""));
    }
}
