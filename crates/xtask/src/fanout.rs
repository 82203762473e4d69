//! `bench fanout [N]`: `cgcloud ssh-cluster --parallel -- true` over a cluster of N workers (and
//! its leader) against the same N+1 `ssh` processes started at once by hand, with the same key
//! and host keys verified the same way: cold (no multiplexing master) and warm (masters up).
//! Medians of 5 runs; the ratio is the price of cgcloud's fan-out. Also `cgcloud list` alone.

use anyhow::{bail, Context as _, Result};
use std::process::{Command, Stdio};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

pub fn fanout(n: u32) -> Result<()> {
    let home = tempfile::tempdir()?;
    let h = home.path().to_path_buf();
    let key = h.join("id_ed25519");
    crate::keygen(&key)?;
    let _cloud = crate::LocalSession::up(&h)?;
    crate::cgcloud(&h, &["-q", "register-key", "--force", &h.join("id_ed25519.pub").display().to_string()])?;
    crate::cgcloud(&h, &["-q", "create", "-I", "-T", "generic-cluster-box"])?;
    let image = crate::newest_image(&h, "generic-cluster-box")?;
    crate::wait_no_hosts(&h)?;
    crate::cgcloud(&h, &["-q", "create-cluster", "generic", "-s", &n.to_string(), "-c", "fan"])?;
    let nodes: serde_json::Value = serde_json::from_str(&crate::cgcloud(&h, &["-q", "--output", "json", "list"])?)?;
    let nodes: Vec<(String, String, String, String)> = nodes
        .as_array()
        .context("list")?
        .iter()
        .filter(|b| b["cluster"] == "fan")
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
            (s("instance_id"), s("private_ip"), s("host_key"), s("admin_user"))
        })
        .collect();
    let known = h.join("known_hosts_plain");
    std::fs::write(&known, nodes.iter().map(|(id, _, k, _)| format!("{id} {k}\n")).collect::<String>())?;
    let control = tempfile::Builder::new().prefix("fan").tempdir_in("/tmp")?;
    let plain = |warm: bool| -> Result<()> {
        let mut children = Vec::new();
        for (id, ip, _, user) in &nodes {
            let mut c = Command::new("ssh");
            c.args(["-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-i"])
                .arg(&key)
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known.display()))
                .arg("-o")
                .arg(format!("HostKeyAlias={id}"))
                .args(["-o", "StrictHostKeyChecking=yes"]);
            if warm {
                c.args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60s", "-o"])
                    .arg(format!("ControlPath={}/%C", control.path().display()));
            } else {
                c.args(["-o", "ControlMaster=no", "-o", "ControlPath=none"]);
            }
            children.push(c.arg(format!("{user}@{ip}")).arg("true").stdin(Stdio::null()).spawn()?);
        }
        for mut c in children {
            if !c.wait()?.success() {
                bail!("a plain ssh failed");
            }
        }
        Ok(())
    };
    let ours = |warm: bool| -> Result<()> {
        let mut c = crate::cgcloud_command(&h)?;
        let mut opts = format!("-F /dev/null -i {} -o IdentitiesOnly=yes", key.display());
        if !warm {
            opts.push_str(" -o ControlMaster=no -o ControlPath=none");
        }
        let out = c
            .env("CGCLOUD_SSH_OPTS", opts)
            .args(["-q", "ssh-cluster", "generic", "-c", "fan", "--parallel", "--", "true"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("ssh-cluster failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    // Masters up for the warm runs (not measured).
    plain(true)?;
    ours(true)?;
    let list = timed(|| crate::cgcloud(&h, &["-q", "list"]).map(|_| ()))?;
    let (oc, pc) = (timed(|| ours(false))?, timed(|| plain(false))?);
    let (ow, pw) = (timed(|| ours(true))?, timed(|| plain(true))?);
    println!(
        "fanout: ssh-cluster --parallel -- true over {} nodes vs {} plain ssh at once (medians of 5)",
        nodes.len(),
        nodes.len()
    );
    println!("{:>6} {:>12} {:>10} {:>8} {:>8}", "", "ssh-cluster s", "plain s", "ratio", "target");
    println!("{:>6} {oc:>12.3} {pc:>10.3} {:>8.2} {:>8}", "cold", oc / pc, "1.05");
    println!("{:>6} {ow:>12.3} {pw:>10.3} {:>8.2} {:>8}", "warm", ow / pw, "1.10");
    println!("cgcloud list alone: {list:.3} s");
    crate::cgcloud(&h, &["-q", "terminate-cluster", "generic", "-c", "fan"])?;
    crate::cgcloud(&h, &["-q", "delete-image", "generic-cluster-box", "-i", &image])?;
    Ok(())
}
