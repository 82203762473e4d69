//! `doctor`: checks what a first run needs, one line each, and says how to fix what is wrong:
//! the settings and credentials, region and zone, the network boxes launch into, the key pair
//! and whether this machine holds its private key, the agent, the SSH tools, the account's
//! instance limit, and, with the local cloud's profile, the local cloud itself. It creates
//! nothing.

use crate::context::Ctx;
use anyhow::Result;
use std::process::ExitCode;

#[derive(Debug, Clone, serde::Serialize)]
struct Check {
    check: &'static str,
    /// `ok`, `warn` or `fail`.
    status: &'static str,
    detail: String,
    hint: Option<String>,
}

fn ok(check: &'static str, detail: impl Into<String>) -> Check {
    Check { check, status: "ok", detail: detail.into(), hint: None }
}

fn warn(check: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    Check { check, status: "warn", detail: detail.into(), hint: Some(hint.into()) }
}

fn fail(check: &'static str, err: &anyhow::Error, hint: Option<String>) -> Check {
    Check { check, status: "fail", detail: format!("{err:#}"), hint: hint.or_else(|| crate::errors::hint_for(err)) }
}

/// The OpenSSH public keys this machine can log in with: its agent's, and the `.pub` files in
/// ~/.ssh whose private key is beside them, and those of `-i` keys in CGCLOUD_SSH_OPTS.
fn local_public_keys() -> Vec<(String, String)> {
    let mut keys = Vec::new();
    if let Ok(out) = std::process::Command::new("ssh-add").arg("-L").output() {
        if out.status.success() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                keys.push((l.to_owned(), "ssh-agent".to_owned()));
            }
        }
    }
    let mut files = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        let dir = std::path::Path::new(&home).join(".ssh");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pub") && p.with_extension("").is_file() {
                files.push(p);
            }
        }
    }
    let opts = std::env::var("CGCLOUD_SSH_OPTS").unwrap_or_default();
    let words: Vec<&str> = opts.split_whitespace().collect();
    for w in words.windows(2) {
        if w[0] == "-i" {
            files.push(std::path::PathBuf::from(format!("{}.pub", w[1])));
        }
    }
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            keys.push((text.trim().to_owned(), f.with_extension("").display().to_string()));
        }
    }
    keys
}

/// The local key (`(line, where)` of [`local_public_keys`]) that is key pair `kp`'s, by its
/// public key if EC2 returned it, else by fingerprint.
fn matching_local_key<'a>(
    kp: &cgcloud_aws::ec2::KeyPairInfo,
    mine: &'a [(String, String)],
) -> Option<&'a (String, String)> {
    let theirs = kp.public_key.as_deref().and_then(|k| cgcloud_core::sshkey::PublicKey::parse_line(k).ok());
    mine.iter().find(|(line, _)| {
        cgcloud_core::sshkey::PublicKey::parse_line(line)
            .is_ok_and(|k| theirs.as_ref().is_some_and(|t| t.blob == k.blob) || k.matches_fingerprint(&kp.fingerprint))
    })
}

/// For a box that refuses this machine's keys: each key pair the box trusts (`names`) and
/// whether a key ssh can offer from here matches it, as `doctor` matches them; then the keys
/// ssh can offer. One line each.
pub(crate) async fn explain_refused_keys(ctx: &Ctx, names: &[String]) -> String {
    let mine = local_public_keys();
    let mut lines = Vec::new();
    for name in names {
        // The box's tag: shown as text, never as terminal control sequences.
        let name = &cgcloud_core::tags::printable(name);
        if !matches!(cgcloud_core::keypairs::Pattern::parse(name), cgcloud_core::keypairs::Pattern::Literal(_)) {
            lines.push(format!("  the box trusts the key pairs '{name}' names (a glob, @user or @@group)"));
            continue;
        }
        let found = match ctx.cloud().await {
            Ok(cloud) => cloud.key_pair(name).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        lines.push(match found {
            Ok(Some(kp)) => match matching_local_key(&kp, &mine) {
                Some((_, from)) => {
                    format!("  the box trusts key pair '{name}' ({}): its private key is in {from}", kp.fingerprint)
                }
                None => format!(
                    "  the box trusts key pair '{name}' ({}): no key of this machine matches it",
                    kp.fingerprint
                ),
            },
            Ok(None) => format!("  the box trusts key pair '{name}', which no longer exists"),
            Err(e) => format!("  the box trusts key pair '{name}' (cannot read it: {e:#})"),
        });
    }
    if mine.is_empty() {
        lines.push(
            "  ssh has no key to offer from here (no ssh-agent keys, no ~/.ssh/*.pub with its private key)".into(),
        );
    }
    for (line, from) in &mine {
        let key = cgcloud_core::sshkey::PublicKey::parse_line(line)
            .map(|k| format!("{} {}", k.key_type, k.ec2_fingerprint()))
            .unwrap_or_else(|_| "an unreadable key".into());
        lines.push(format!("  ssh offers {key} from {from}"));
    }
    lines.join("\n")
}

pub async fn doctor(ctx: &Ctx) -> Result<ExitCode> {
    let mut checks = Vec::new();
    let s = &ctx.settings;
    checks.push(ok(
        "settings",
        format!(
            "profile {}, config {}",
            s.profile_name.as_deref().unwrap_or("(none)"),
            crate::settings::config_path().display()
        ),
    ));
    if s.profile_name.as_deref() == Some(super::local::PROFILE) {
        local_cloud_checks(&mut checks);
    }
    // What this machine needs, whatever the cloud says.
    local_checks(ctx, &mut checks);
    let cloud = match ctx.cloud().await {
        Ok(c) => c,
        Err(e) => {
            let check = if crate::errors::error_kind(&e) == "no-region" { "region and zone" } else { "credentials" };
            checks.push(fail(check, &e, None));
            return report(ctx, checks);
        }
    };
    match cloud.caller_identity().await {
        Ok((account, arn)) => checks.push(ok("credentials", format!("account {account} as {arn}"))),
        Err(e) => {
            checks.push(fail("credentials", &e.into(), None));
            return report(ctx, checks);
        }
    }
    network_checks(ctx, cloud, &mut checks).await;
    match ctx.namespace().await {
        Ok(ns) => checks.push(ok("namespace", ns.to_string())),
        Err(e) => checks.push(fail("namespace", &e, None)),
    }
    checks.push(key_pair_check(ctx, cloud).await);
    let instance_type = s.instance_type.clone().unwrap_or_else(|| "t3.micro".into());
    match cloud.instance_type_info(&instance_type).await {
        Ok(info) => checks.push(ok("instance type", format!("{instance_type} ({})", info.arches.join(", ")))),
        Err(e) => checks.push(fail("instance type", &e.into(), None)),
    }
    match cloud.account_attributes().await {
        Ok(attrs) => {
            let max = attrs.get("max-instances").and_then(|v| v.first()).cloned();
            checks.push(match max {
                Some(m) => ok(
                    "instance limit",
                    format!("at most {m} instances (EC2's account attribute; vCPU quotas are in Service Quotas)"),
                ),
                None => warn(
                    "instance limit",
                    "the account reports no instance limit",
                    "see Service Quotas, EC2 'Running On-Demand Standard instances'",
                ),
            });
        }
        Err(e) => checks.push(warn("instance limit", format!("{e}"), "see Service Quotas for EC2's vCPU limits")),
    }
    report(ctx, checks)
}

/// The agent and the SSH tools: checked even when the cloud cannot be reached.
fn local_checks(ctx: &Ctx, checks: &mut Vec<Check>) {
    let s = &ctx.settings;
    checks.push(match super::provision::check_agent(ctx) {
        Ok(()) => ok(
            "agent",
            match &s.agent.url {
                Some(url) => format!("release {url}"),
                None => std::env::var("CGCLOUD_AGENT_BINARY")
                    .ok()
                    .or_else(|| super::provision::agent_binary().ok().map(|p| p.display().to_string()))
                    .unwrap_or_default(),
            },
        ),
        Err(e) => fail("agent", &e, None),
    });
    checks.push(match cgcloud_remote::require_programs(&["ssh", "ssh-keygen"], "to reach boxes") {
        Ok(()) => ok("ssh", "ssh and ssh-keygen"),
        Err(e) => fail("ssh", &e.into(), None),
    });
    checks.push(match cgcloud_remote::require_programs(&["rsync"], "for rsync and --share") {
        Ok(()) => ok("rsync", "rsync"),
        Err(e) => warn("rsync", format!("{e}"), "install rsync for `cgcloud rsync` and `create-cluster -S`"),
    });
}

fn report(ctx: &Ctx, checks: Vec<Check>) -> Result<ExitCode> {
    let failed = checks.iter().any(|c| c.status == "fail");
    ctx.out.record(&checks, || {
        let mut lines = Vec::new();
        for c in &checks {
            lines.push(format!("{:<5} {:<18} {}", c.status, c.check, c.detail));
            if c.status != "ok" {
                if let Some(h) = &c.hint {
                    lines.push(format!("{:<24} fix: {h}", ""));
                }
            }
        }
        lines.join("\n")
    });
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The local cloud's tools and whether it is up (with `--profile local`).
fn local_cloud_checks(checks: &mut Vec<Check>) {
    checks.push(match cgcloud_localcloud::LocalCloud::check_prerequisites() {
        Ok(()) => {
            ok("local cloud tools", "root, debootstrap, systemd-nspawn, iproute2, iptables, dnsmasq, python3, curl")
        }
        Err(e) => fail("local cloud tools", &e.into(), None),
    });
    let lc = cgcloud_localcloud::LocalCloud::new(cgcloud_localcloud::LocalCloud::default_dir());
    checks.push(if lc.is_up() {
        ok("local cloud", format!("up in {}", lc.dir.display()))
    } else {
        Check {
            check: "local cloud",
            status: "fail",
            detail: format!("down (state in {})", lc.dir.display()),
            hint: Some("start it with `sudo cgcloud local up`".into()),
        }
    });
}

/// The zone (if one is set) and the VPC and subnet launches would use.
async fn network_checks(ctx: &Ctx, cloud: &cgcloud_aws::Cloud, checks: &mut Vec<Check>) {
    let s = &ctx.settings;
    match &s.zone {
        Some(zone) => match cloud.zones().await {
            Ok(zones) if zones.contains(zone) => {
                checks.push(ok("region and zone", format!("{} ({zone})", cloud.region)))
            }
            Ok(zones) => checks.push(Check {
                check: "region and zone",
                status: "fail",
                detail: format!("zone {zone} is not in region {} (zones: {})", cloud.region, zones.join(", ")),
                hint: Some("pass -z with one of those zones, or set zone in the profile".into()),
            }),
            Err(e) => checks.push(fail("region and zone", &e.into(), None)),
        },
        None => checks.push(ok("region and zone", format!("{} (any zone)", cloud.region))),
    }
    match cloud.network(s.subnet.as_deref(), s.zone.as_deref()).await {
        Ok(n) => checks.push(ok(
            "network",
            format!(
                "{}{}",
                n.vpc_id,
                n.subnet_id.map(|sub| format!(", subnet {sub}")).unwrap_or_else(|| ", the default subnets".into())
            ),
        )),
        Err(e) => checks.push(fail(
            "network",
            &e.into(),
            Some("name a subnet with --subnet or `subnet = ...` in the profile (or create a default VPC)".into()),
        )),
    }
}

/// Whether the first key pair of the profile exists, and whether this machine holds its
/// private key.
async fn key_pair_check(ctx: &Ctx, cloud: &cgcloud_aws::Cloud) -> Check {
    let s = &ctx.settings;
    let first = s.keypairs.first().cloned().unwrap_or_else(|| cgcloud_core::namespace::ME.to_owned());
    match ctx.resolve_keypair(&first).await {
        Ok(name) => match cloud.key_pair(&name).await {
            Ok(None) => Check {
                check: "key pair",
                status: "fail",
                detail: format!("key pair '{name}' does not exist in {}", cloud.region),
                hint: Some(format!(
                    "register your public key: `cgcloud register-key ~/.ssh/id_ed25519.pub{}`",
                    if first.contains(cgcloud_core::namespace::ME) { String::new() } else { format!(" -k {name}") }
                )),
            },
            Ok(Some(kp)) => {
                let local = local_public_keys();
                match matching_local_key(&kp, &local) {
                    Some((_, from)) => ok("key pair", format!("'{name}' ({}), private key in {from}", kp.fingerprint)),
                    None => warn(
                        "key pair",
                        format!("'{name}' exists, but no key of this machine matches it ({})", kp.fingerprint),
                        "load its private key into ssh-agent, or name it in CGCLOUD_SSH_OPTS=\"-i PATH\"; or register this machine's key with `cgcloud register-key ~/.ssh/id_ed25519.pub --force`",
                    ),
                }
            }
            Err(e) => fail("key pair", &e.into(), None),
        },
        Err(e) => fail("key pair", &e, None),
    }
}
