//! Provisioning a box over SSH: wait for cloud-init, optionally upgrade, then install the
//! role's packages with the OS family's package manager. Each step reports its progress and,
//! on failure, the tail of its output.

use crate::context::Ctx;
use anyhow::{bail, Result};
use cgcloud_remote::{shell_quote, SshTarget};
use cgcloud_roles::os::{Family, OsDef};
use cgcloud_roles::role::Role;
use std::collections::BTreeMap;

/// One provisioning step: a name and a POSIX shell script run as the admin user.
struct Step {
    name: String,
    script: String,
}

fn sudo(cmd: &str) -> String {
    format!("sudo -n sh -c {}", shell_quote(cmd))
}

fn steps(role: &Role, os: &OsDef, upgrade: bool) -> Vec<Step> {
    let mut steps = vec![Step {
        name: "wait for cloud-init".into(),
        // Exit status 2 means "done, with recoverable errors"; the box is usable.
        script: "if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null; s=$?; \
                 if [ $s -ne 0 ] && [ $s -ne 2 ]; then cloud-init status --long; exit $s; fi; fi"
            .into(),
    }];
    let packages = role.packages_for(os);
    let quoted: Vec<String> = packages.iter().map(|p| shell_quote(p)).collect();
    match os.family {
        Family::Apt => {
            let apt = "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Options::=--force-confold";
            steps.push(Step { name: "update package lists".into(), script: sudo(&format!("{apt} update")) });
            if upgrade {
                steps.push(Step { name: "upgrade packages".into(), script: sudo(&format!("{apt} upgrade")) });
            }
            if !packages.is_empty() {
                steps.push(Step {
                    name: format!("install {}", packages.join(" ")),
                    script: sudo(&format!("{apt} --no-install-recommends install {}", quoted.join(" "))),
                });
            }
        }
        Family::Dnf => {
            if upgrade {
                steps.push(Step { name: "upgrade packages".into(), script: sudo("dnf -y -q upgrade") });
            }
            if !packages.is_empty() {
                steps.push(Step {
                    name: format!("install {}", packages.join(" ")),
                    script: sudo(&format!("dnf -y -q install {}", quoted.join(" "))),
                });
            }
        }
    }
    steps
}

pub async fn provision(
    ctx: &Ctx,
    target: &SshTarget,
    role: &Role,
    os: &OsDef,
    _options: &BTreeMap<String, String>,
    upgrade: bool,
) -> Result<()> {
    let steps = steps(role, os, upgrade);
    let total = steps.len();
    for (i, step) in steps.iter().enumerate() {
        let progress = ctx.out.progress(format!("[{}/{total}] {}", i + 1, step.name));
        let out = target.run_script(&step.script).await?;
        if !out.status.success() {
            drop(progress);
            let mut tail: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&out.stderr).lines())
                .map(str::to_owned)
                .collect();
            let keep = tail.len().saturating_sub(20);
            tail.drain(..keep);
            bail!(
                "provisioning step '{}' failed with status {}:\n{}",
                step.name,
                out.status.code().unwrap_or(-1),
                tail.join("\n")
            );
        }
        progress.finish(format!("[{}/{total}] {}", i + 1, step.name));
    }
    Ok(())
}
