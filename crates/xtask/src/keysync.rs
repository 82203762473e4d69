//! `key-sync`: from `cgcloud register-key` to the key logging in on every box, and the agent's
//! idle memory and CPU.

use crate::*;
use anyhow::{Context as _, Result};
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) fn login(home: &Path, key: &Path, ip: &str, id: &str) -> bool {
    std::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-i"])
        .arg(key)
        .arg("-o")
        .arg(format!("HostKeyAlias={id}"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", home.join(".local/state/cgcloud/known_hosts").display()))
        .args([&format!("admin@{ip}"), "true"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) async fn key_sync(n_boxes: usize, n_regs: usize) -> Result<()> {
    let user = BenchUser::new()?;
    let h = user.home();
    let role = "generic-debian-bookworm-box";
    let boxes = create_boxes(&h, role, n_boxes)?;
    // Two moments per box: when its agent rewrote authorized_keys with the new key (read from
    // the host's side of the box's disk: free, unlike a login, so it does not slow what it
    // measures), then when the key logs in (one ssh at a time per box, after the rewrite).
    let upper = |id: &str| cgcloud_localcloud::LocalCloud::default_dir().join("instances").join(id).join("upper");
    let mut rewritten = Vec::new();
    let mut logged_in = Vec::new();
    let mut worst = Vec::new();
    // What the rewrites cost: the whole machine (agents, hosts, moto), and moto alone.
    let (mut sync_cpu, mut sync_moto, mut login_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let moto_pid = cgcloud_localcloud::LocalCloud::new(cgcloud_localcloud::LocalCloud::default_dir())
        .state()
        .and_then(|s| s.moto_pid);
    use cgcloud_localcloud::cost::process_cpu_seconds;
    for i in 0..n_regs {
        let key = h.join(format!("bench-{i}"));
        keygen(&key)?;
        let blob = std::fs::read_to_string(key.with_extension("pub"))?
            .split_whitespace()
            .nth(1)
            .context("a public key without its blob")?
            .to_owned();
        cgcloud(
            &h,
            &["-q", "register-key", &key.with_extension("pub").display().to_string(), "-k", &format!("bench-{i}")],
        )?;
        let t0 = Instant::now();
        let (cpu0, moto0) = (machine_cpu_seconds(), moto_pid.and_then(process_cpu_seconds));
        // First the rewrites alone: no logins yet, which would compete with the agents for
        // the cores while they still work (at 50 boxes, 50 sshd sessions).
        let mut seen: Vec<f64> = vec![f64::INFINITY; boxes.len()];
        while seen.iter().any(|s| s.is_infinite()) && t0.elapsed() < Duration::from_secs(120) {
            for (j, (id, _)) in boxes.iter().enumerate() {
                if seen[j].is_infinite()
                    && read_box_file(&upper(id), "home/admin/.ssh/authorized_keys").is_some_and(|k| k.contains(&blob))
                {
                    seen[j] = t0.elapsed().as_secs_f64();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sync_cpu.push(machine_cpu_seconds() - cpu0);
        if let (Some(m0), Some(m1)) = (moto0, moto_pid.and_then(process_cpu_seconds)) {
            sync_moto.push(m1 - m0);
        }
        rewritten.extend(seen.iter().copied());
        let cpu1 = machine_cpu_seconds();
        let mut set = tokio::task::JoinSet::new();
        for (id, ip) in boxes.clone() {
            let (h, key) = (h.clone(), key.clone());
            set.spawn_blocking(move || {
                while !login(&h, &key, &ip, &id) {
                    if t0.elapsed() > Duration::from_secs(120) {
                        return f64::INFINITY;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                t0.elapsed().as_secs_f64()
            });
        }
        let mut this = Vec::new();
        while let Some(r) = set.join_next().await {
            this.push(r?);
        }
        login_cpu.push(machine_cpu_seconds() - cpu1);
        worst.push(this.iter().cloned().fold(0.0, f64::max));
        logged_in.extend(this);
    }
    let samples = Samples { rewritten, logged_in, worst, sync_cpu, sync_moto, login_cpu };
    report(samples, n_regs, n_boxes);
    agent_idle(&h, role, &boxes[0].0)?;
    for (id, _) in &boxes {
        cgcloud(&h, &["-q", "terminate", role, "-I", id])?;
    }
    for i in 0..n_regs {
        if let Err(e) = cgcloud(&h, &["-q", "delete-key", &format!("bench-{i}")]) {
            eprintln!("could not delete key pair bench-{i}: {e:#}");
        }
    }
    Ok(())
}

/// Creates `n` boxes of `role` with the agent, 4 at a time; their ids and private addresses.
pub(crate) fn create_boxes(h: &Path, role: &str, n_boxes: usize) -> Result<Vec<(String, String)>> {
    let mut boxes = Vec::new();
    eprintln!("creating {n_boxes} boxes, 4 at a time ...");
    for wave in (0..n_boxes).collect::<Vec<_>>().chunks(4) {
        let outs: Vec<Result<String>> = std::thread::scope(|s| {
            let running: Vec<_> = wave
                .iter()
                .map(|_| s.spawn(|| cgcloud(h, &["-q", "--output", "json", "create", role, "-k", "__me__", "bench-*"])))
                .collect();
            running.into_iter().map(|t| t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))).collect()
        });
        for out in outs {
            let v: serde_json::Value = serde_json::from_str(&out?)?;
            boxes.push((
                v["instance_id"].as_str().unwrap_or_default().to_owned(),
                v["private_ip"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    Ok(boxes)
}

// The box's user owns home/admin/.ssh: this root process reads it only where no part of
// the path is a link they could have planted to a file of this machine.
pub(crate) fn read_box_file(upper: &Path, rel: &str) -> Option<String> {
    let mut p = upper.to_path_buf();
    for part in rel.split('/') {
        p.push(part);
        if std::fs::symlink_metadata(&p).ok()?.file_type().is_symlink() {
            return None;
        }
    }
    std::fs::read_to_string(p).ok()
}

/// What key-sync measured: per registration and box, and the CPU they cost.
pub(crate) struct Samples {
    rewritten: Vec<f64>,
    logged_in: Vec<f64>,
    worst: Vec<f64>,
    sync_cpu: Vec<f64>,
    sync_moto: Vec<f64>,
    login_cpu: Vec<f64>,
}

pub(crate) fn report(s: Samples, n_regs: usize, n_boxes: usize) {
    let Samples { mut rewritten, mut logged_in, mut worst, sync_cpu, sync_moto, login_cpu } = s;
    for v in [&mut rewritten, &mut logged_in, &mut worst] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    println!("key-sync: {n_regs} registrations x {n_boxes} boxes, time from register-key returning to");
    for (what, samples) in [("authorized_keys rewritten", &rewritten), ("the key logs in", &logged_in)] {
        println!(
            "  {what:<27} per box: p50 {:.2} s  p99 {:.2} s  max {:.2} s",
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            percentile(samples, 1.0)
        );
    }
    println!(
        "  logs in on every box (worst): p50 {:.2} s  p99 {:.2} s   (target p99 <= 1 s per box)",
        percentile(&worst, 0.5),
        percentile(&worst, 0.99)
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "  CPU until every box rewrote (mean of {n_regs}): machine {:.2} CPU-s, moto {:.2} CPU-s ({:.0} ms a box)",
        mean(&sync_cpu),
        mean(&sync_moto),
        mean(&sync_moto) * 1000.0 / n_boxes.max(1) as f64
    );
    // The logins are the benchmark's probe, not key sync: what they cost the two cores.
    println!(
        "  CPU of the logins (mean of {n_regs}): machine {:.2} CPU-s ({:.0} ms a login, {} logins on {} cores)",
        mean(&login_cpu),
        mean(&login_cpu) * 1000.0 / n_boxes.max(1) as f64,
        n_boxes,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
}

/// The agent's idle cost on one box: its resident memory, and its CPU over 30 s.
pub(crate) fn agent_idle(h: &Path, role: &str, id: &str) -> Result<()> {
    let probe = "p=$(systemctl show -p MainPID --value cgcloud-agent); a=$(awk '{print $14+$15}' /proc/$p/stat); sleep 30; \
                 b=$(awk '{print $14+$15}' /proc/$p/stat); rss=$(awk '/VmRSS/{print $2}' /proc/$p/status); echo $rss $((b-a)) $(getconf CLK_TCK)";
    let out = cgcloud(h, &["-q", "ssh", role, "-I", id, "--", probe])?;
    let f: Vec<f64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if f.len() == 3 {
        println!(
            "  agent idle: RSS {:.1} MiB (target <= 10 MiB), CPU {:.3} % over 30 s",
            f[0] / 1024.0,
            f[1] / f[2] / 30.0 * 100.0
        );
    }
    Ok(())
}
