//! `cargo run -p xtask -- bench <name>`: benchmarks that print their numbers and ratios.
//! Targets are reported next to the measurements, never asserted.
//!
//! - `local-boot [N...]`: on the local cloud (root; it is brought up if needed), launches N
//!   Debian hosts with one RunInstances call and measures, per host, the time from moto
//!   reporting it running to a working, host-key-verified SSH login. Default N: 1 10 50.
//! - `key-sync [BOXES [REGISTRATIONS]]`: on the local cloud, creates BOXES boxes with the agent
//!   (default 5), registers REGISTRATIONS new keys (default 20) and measures, for each, the time
//!   from `cgcloud register-key` returning to the key logging in on each box; then the agent's
//!   idle memory and CPU. Targets: p99 <= 2 s; idle RSS <= 10 MiB.
//! - `cluster-api [N...]`: against moto (`CGCLOUD_MOTO_SERVER`), the API requests one
//!   `create-cluster` sends for N workers (default 1 10 100 500), without the status polls,
//!   whose number depends on how long nodes take, not on N.
//! - `cluster-boot [N...]`: on the local cloud, the time from `create-cluster` to every node
//!   configured, for N workers from a baked image (default 1 4 16), and t(max)/t(min)
//!   (target <= 1.5).
//! - `spark-boot [--hdfs] [N...]`: on the local cloud, a Spark image from PyPI (no HDFS), or
//!   with `--hdfs` from the Apache-layout mirror in `CGCLOUD_APACHE_MIRROR_DIR`
//!   (`scripts/apache-mirror`) with HDFS on; then for N workers (default 1 2 4) the time from
//!   `create-cluster spark` to the master reporting N alive workers (and, with HDFS, the
//!   NameNode N live DataNodes), beside a bare boot of N+1 hosts, with machine CPU and each
//!   unit's CPU on the nodes (what the JVMs cost).
//! - `toil-boot [N...]`: on the local cloud, a toil-box image, then for N workers (default 1 4
//!   8): bare boot of N+1 hosts, `create-cluster toil` until `sinfo` shows N idle workers (and
//!   the ratio of the two; target <= 1.2), then a 64-job fan-out Toil workflow; machine CPU-s
//!   beside each wall time.
//! - `idle [HISTORY...]`: on the local cloud, with no host running, what moto and the
//!   controller cost (CPU, requests/s, DescribeInstances latency) over 20 s, and again after
//!   each HISTORY instances were launched and terminated. Target: <= 1 % of a core.
//! - `fanout [N]`: on the local cloud, `ssh-cluster --parallel -- true` over N workers (default
//!   16) and the leader against as many plain `ssh` processes at once, cold and warm (targets:
//!   1.05 and 1.1).
//! - `imds [N]`: on the local cloud, the time a box takes to get its credentials from IMDS
//!   (inside the box), and what the guests' door (signature checked) adds to a request, p50 and
//!   p99 over N rounds (default 200).
//! - `faults [RUNS]`: against moto behind `testkit::fault`, RUNS (default 200) create-cluster
//!   runs with random faults, a third killed at a random moment, each followed by the default
//!   `cgcloud cleanup`: faults injected, outcomes, and what is left of each kind (goal: 0); then
//!   the time a 100-worker launch takes to roll back.

mod fanout;
mod faults;
mod imds;

use anyhow::{bail, Context as _, Result};
use cgcloud_aws::ec2::LaunchSpec;
use cgcloud_core::tags::Tags;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn mem_used_mib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("MemTotal:") - field("MemAvailable:")) / 1024
}

/// CPU time the whole machine has spent busy (user, nice, system, irq, softirq), in seconds.
fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: u64 = stat
        .lines()
        .next()
        .map(|l| l.split_whitespace().skip(1).take(7).enumerate())
        .into_iter()
        .flatten()
        .filter(|(i, _)| ![3, 4].contains(i)) // idle, iowait
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    busy as f64 / 100.0
}

/// CPU seconds (user + system) process `pid` has used itself (`own`) and those of its children
/// it has waited for, from /proc/PID/stat; `None` once the process is gone.
fn process_cpu_seconds(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest: Vec<u64> =
        stat.rsplit_once(')')?.1.split_whitespace().skip(11).take(4).filter_map(|v| v.parse().ok()).collect();
    let [ut, st, cut, cst] = rest[..] else { return None };
    Some(((ut + st) as f64 / 100.0, (cut + cst) as f64 / 100.0))
}

pub(crate) fn cgcloud_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no exe dir")?;
    let c = dir.join("cgcloud");
    if !c.exists() {
        bail!("build cgcloud first: cargo build -p cgcloud");
    }
    Ok(c)
}

async fn local_boot(counts: &[i32]) -> Result<()> {
    let bare = BareBoot::new().await?;
    println!(
        "local-boot: time from 'running' in moto to a verified SSH login (target: <= 3 s per host; 50 hosts at once)"
    );
    println!("{:>5} {:>8} {:>8} {:>8} {:>10} {:>12}", "hosts", "p50 s", "p90 s", "max s", "all s", "+mem MiB");
    let mut summary = Vec::new();
    for &n in counts {
        let mem0 = mem_used_mib();
        let (times, all) = bare.boot(n).await?;
        let mem = mem_used_mib().saturating_sub(mem0);
        println!(
            "{n:>5} {:>8.2} {:>8.2} {:>8.2} {all:>10.2} {mem:>12}",
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            percentile(&times, 1.0)
        );
        summary.push((n, percentile(&times, 0.5)));
    }
    bare.finish().await?;
    if let (Some(first), Some(last)) = (summary.first(), summary.last()) {
        println!("ratio p50({})/p50({}) = {:.2}", last.0, first.0, last.1 / first.1);
    }
    Ok(())
}

/// Bare boots on the local cloud: plain Debian hosts from one RunInstances call, timed from
/// moto reporting them running to a verified SSH login on each (the yardstick of bring-up).
struct BareBoot {
    lc: cgcloud_localcloud::LocalCloud,
    ep: cgcloud_localcloud::Endpoint,
    cloud: cgcloud_aws::Cloud,
    image: String,
    work: tempfile::TempDir,
    key: PathBuf,
    key_name: String,
    /// A security group that opens SSH.
    group: String,
}

impl BareBoot {
    async fn new() -> Result<BareBoot> {
        let lc = cgcloud_localcloud::LocalCloud::new(cgcloud_localcloud::LocalCloud::default_dir());
        if !lc.is_up() {
            lc.up(cgcloud_localcloud::DEFAULT_PORT, &cgcloud_exe()?, &|l| eprintln!("{l}")).await?;
        }
        let ep = lc.endpoint()?;
        let state = lc.state().context("no state")?;
        let cloud = lc.cloud(state.port).await?;
        let image = state.images.iter().find(|i| i.os_id == "debian-12").context("no debian-12 image")?.ami_id.clone();
        let work = tempfile::tempdir()?;
        let key = work.path().join("id_ed25519");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()?;
        if !st.success() {
            bail!("ssh-keygen failed");
        }
        let pubkey = std::fs::read_to_string(key.with_extension("pub"))?;
        let key_name = format!("bench-{}", std::process::id());
        cloud.import_key_pair(&key_name, pubkey.trim(), &Tags::new()).await?;
        // The local cloud enforces security groups as EC2 does: SSH must be opened.
        let ssh = cgcloud_aws::ec2::SgRule {
            protocol: "tcp".into(),
            from_port: 22,
            to_port: 22,
            source: cgcloud_aws::ec2::SgSource::Cidr("0.0.0.0/0".into()),
            description: "SSH".into(),
        };
        let vpc = state.vpc_id.clone().context("the local cloud has no VPC")?;
        let tags = Tags::from([("Name".to_owned(), "bench-ssh".to_owned())]);
        let (group, _) = cloud.ensure_security_group("bench-ssh", "bench: SSH", &vpc, &tags, &[ssh]).await?;
        Ok(BareBoot { lc, ep, cloud, image, work, key, key_name, group })
    }

    /// Boots `n` hosts, waits for SSH on each, terminates them; returns each host's time
    /// (sorted) and the time until all were ready.
    async fn boot(&self, n: i32) -> Result<(Vec<f64>, f64)> {
        let host_key = cgcloud_remote::hostkey::generate()?;
        let user_data = format!(
            "#cloud-config\n{}\n",
            serde_json::json!({"ssh_keys": {"ed25519_private": host_key.private_openssh, "ed25519_public": host_key.public}, "ssh_genkeytypes": []})
        );
        let spec = LaunchSpec {
            image_id: self.image.clone(),
            instance_type: "t3.micro".into(),
            count: n,
            key_name: Some(self.key_name.clone()),
            subnet_id: Some(self.ep.subnet.clone()),
            security_group_ids: vec![self.group.clone()],
            user_data,
            ..Default::default()
        };
        let instances = self.cloud.run_instances(&spec).await?;
        let t0 = Instant::now();
        let known = self.work.path().join(format!("known_hosts_{n}"));
        let mut set = tokio::task::JoinSet::new();
        for i in &instances {
            let id = i.id.clone();
            let ip = i.private_ip.clone().unwrap_or_default();
            cgcloud_remote::hostkey::record(&known, &id, &host_key.public)?;
            let target = cgcloud_remote::SshTarget {
                address: ip,
                user: "admin".into(),
                alias: id,
                known_hosts: known.clone(),
                control_dir: self.work.path().join("ctl"),
                extra: vec![
                    "-F".into(),
                    "/dev/null".into(),
                    "-i".into(),
                    self.key.display().to_string(),
                    "-o".into(),
                    "IdentitiesOnly=yes".into(),
                ],
            };
            cgcloud_remote::private_dir(&target.control_dir)?;
            set.spawn(
                async move { target.wait_ready(Duration::from_secs(600)).await.map(|_| t0.elapsed().as_secs_f64()) },
            );
        }
        let mut times = Vec::new();
        while let Some(r) = set.join_next().await {
            times.push(r??);
        }
        let all = t0.elapsed().as_secs_f64();
        times.sort_by(|a, b| a.total_cmp(b));
        let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
        self.cloud.terminate(&ids).await?;
        wait_hosts_gone(&self.lc.dir, &ids).await;
        Ok((times, all))
    }

    async fn finish(self) -> Result<()> {
        self.cloud.delete_key_pair(&self.key_name).await?;
        Ok(())
    }
}

/// `idle [HISTORY...]`: what the running local cloud costs with no host running, over 20 s,
/// and again after each HISTORY instances have been launched and terminated (moto keeps
/// terminated instances until they age out, and every DescribeInstances walks them).
async fn idle(histories: &[i32]) -> Result<()> {
    let bare = BareBoot::new().await?;
    println!(
        "idle: the local cloud's own cost with no host running, over 20 s (target: moto + controller <= 1 % of a core)"
    );
    println!(
        "{:>9} {:>10} {:>12} {:>8} {:>10} {:>16}",
        "history", "moto %", "controller %", "sum %", "requests/s", "describe ms"
    );
    let mut history = 0;
    for &h in std::iter::once(&0).chain(histories) {
        if h > 0 {
            bare.boot(h).await?;
            history += h;
        }
        let state = bare.lc.state().context("the local cloud is down")?;
        // What happened just now (a launch, its teardown) is not idleness: let it settle.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let c = cgcloud_localcloud::cost::measure(&state, Duration::from_secs(20)).await;
        let t = Instant::now();
        for _ in 0..10 {
            bare.cloud.all_instances(None).await?;
        }
        let describe_ms = t.elapsed().as_secs_f64() * 100.0;
        let (m, k) = (c.moto_cpu_percent.unwrap_or(f64::NAN), c.controller_cpu_percent.unwrap_or(f64::NAN));
        println!(
            "{history:>9} {m:>10.1} {k:>12.1} {:>8.1} {:>10.2} {describe_ms:>16.1}",
            m + k,
            c.requests_per_s.unwrap_or(f64::NAN)
        );
    }
    bare.finish().await
}

async fn wait_hosts_gone(dir: &Path, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while ids.iter().any(|id| dir.join("instances").join(id).exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("man") {
        return man(args.get(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/man")));
    }
    // Benchmarks never probe the instance metadata service.
    if std::env::var_os("AWS_EC2_METADATA_DISABLED").is_none() {
        bail!("set AWS_EC2_METADATA_DISABLED=true");
    }
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["bench", "local-boot", rest @ ..] => {
            let counts: Vec<i32> = if rest.is_empty() {
                vec![1, 10, 50]
            } else {
                rest.iter().map(|s| s.parse()).collect::<Result<_, _>>().context("counts must be numbers")?
            };
            local_boot(&counts).await
        }
        ["bench", "key-sync", rest @ ..] => {
            let boxes = rest.first().map(|s| s.parse()).transpose().context("BOXES must be a number")?.unwrap_or(5);
            let regs =
                rest.get(1).map(|s| s.parse()).transpose().context("REGISTRATIONS must be a number")?.unwrap_or(20);
            key_sync(boxes, regs).await
        }
        ["bench", "fanout", rest @ ..] => {
            fanout::fanout(rest.first().map(|s| s.parse()).transpose().context("N must be a number")?.unwrap_or(16))
        }
        ["bench", "idle", rest @ ..] => idle(&counts(rest, &[])?.into_iter().map(|n| n as i32).collect::<Vec<_>>()).await,
        ["bench", "imds", rest @ ..] => {
            imds::imds(rest.first().map(|s| s.parse()).transpose().context("N must be a number")?.unwrap_or(200)).await
        }
        ["bench", "faults", rest @ ..] => {
            let runs = rest.first().map(|s| s.parse()).transpose().context("RUNS must be a number")?.unwrap_or(200);
            faults::faults(runs, &cgcloud_exe()?)
        }
        ["bench", "cluster-api", rest @ ..] => cluster_api(&counts(rest, &[1, 100, 1000])?),
        ["bench", "cluster-boot", rest @ ..] => cluster_boot(&counts(rest, &[1, 4, 16])?).await,
        ["bench", "spark-boot", "--hdfs", rest @ ..] => spark_boot(&counts(rest, &[1, 2, 4])?, true).await,
        ["bench", "spark-boot", rest @ ..] => spark_boot(&counts(rest, &[1, 2, 4])?, false).await,
        ["bench", "toil-boot", rest @ ..] => toil_boot(&counts(rest, &[1, 4, 8])?).await,
        _ => bail!("usage: cargo run -p xtask -- man [DIR] | bench local-boot [N...] | key-sync [BOXES [REGISTRATIONS]] | cluster-api [N...] | cluster-boot [N...] | spark-boot [--hdfs] [N...] | toil-boot [N...] | idle [HISTORY...] | fanout [N] | faults [RUNS] | imds [N]"),
    }
}

/// `man [DIR]`: the man pages of cgcloud and each of its commands, from the clap definitions
/// (the built cgcloud writes them), into DIR (default target/man). Install them with
/// `sudo install -m 0644 -t /usr/local/share/man/man1 target/man/*.1`.
fn man(dir: PathBuf) -> Result<()> {
    let status = std::process::Command::new(cgcloud_exe()?).arg("man-pages").arg(&dir).status()?;
    if !status.success() {
        bail!("cgcloud man-pages {} failed", dir.display());
    }
    let pages = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count();
    println!(
        "{pages} man pages in {}; install: sudo install -m 0644 -t /usr/local/share/man/man1 {}/*.1",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Waits until the local cloud runs no hosts (those of the bench's image bake excepted: none).
pub(crate) fn wait_no_hosts(home: &Path) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&cgcloud(home, &["-q", "--output", "json", "local", "status"])?)?;
        if status["hosts"].as_array().is_none_or(|h| h.is_empty()) {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(180) {
            bail!("the local cloud's hosts did not go within 3 minutes of terminate-cluster");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The local cloud for a benchmark: brought up if needed, and down again at the end if the
/// benchmark was the one to bring it up. The bench's key replaces any key pair of the same
/// name (`--force`): a local cloud is disposable.
pub(crate) struct LocalSession {
    home: PathBuf,
    started: bool,
}

impl LocalSession {
    pub(crate) fn up(home: &Path) -> Result<LocalSession> {
        let status: serde_json::Value =
            serde_json::from_str(&cgcloud(home, &["-q", "--output", "json", "local", "status"])?)?;
        let started = status["up"] != true;
        cgcloud(home, &["-q", "local", "up"])?;
        Ok(LocalSession { home: home.to_owned(), started })
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        if self.started {
            eprintln!("taking the local cloud down again ...");
            if let Err(e) = cgcloud(&self.home, &["-q", "local", "down"]) {
                eprintln!("{e}");
            }
        }
    }
}

/// A benchmark's own user of the local cloud: a HOME of its own with an SSH key registered in
/// the cloud, which is brought up if it was not (and then taken down again at the end).
pub(crate) struct BenchUser {
    // Declared first, so dropped first: taking the cloud down uses this user's HOME.
    _cloud: LocalSession,
    home: tempfile::TempDir,
}

impl BenchUser {
    pub(crate) fn new() -> Result<BenchUser> {
        let home = tempfile::tempdir()?;
        let h = home.path();
        keygen(&h.join("id_ed25519"))?;
        let cloud = LocalSession::up(h)?;
        cgcloud(h, &["-q", "register-key", "--force", &h.join("id_ed25519.pub").display().to_string()])?;
        Ok(BenchUser { _cloud: cloud, home })
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.home.path().to_path_buf()
    }
}

/// The id of the role's newest image.
pub(crate) fn newest_image(home: &Path, role: &str) -> Result<String> {
    let images: serde_json::Value =
        serde_json::from_str(&cgcloud(home, &["-q", "--output", "json", "list-images", role])?)?;
    images
        .as_array()
        .and_then(|a| a.last())
        .and_then(|i| i["image_id"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no image of {role} after baking it"))
}

/// The identity benches act as on the local cloud: their key pair and namespace are their own
/// (`bench`, `/bench/`), so a bench never replaces the key someone registered under the local
/// profile's one user name (`moto`), which `scripts/demo` and README's commands use.
pub(crate) const BENCH_ME: &str = "bench";

/// A cgcloud command with its own HOME (so the bench does not touch the user's config), the
/// bench's key and identity.
pub(crate) fn cgcloud_command(home: &Path) -> Result<std::process::Command> {
    let mut c = std::process::Command::new(cgcloud_exe()?);
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("CGCLOUD_ME", BENCH_ME)
        .env(
            "CGCLOUD_SSH_OPTS",
            format!("-F /dev/null -i {} -o IdentitiesOnly=yes", home.join("id_ed25519").display()),
        );
    Ok(c)
}

/// Runs cgcloud as [`cgcloud_command`] sets it up; its stdout.
pub(crate) fn cgcloud(home: &Path, args: &[&str]) -> Result<String> {
    let out = cgcloud_command(home)?.args(args).output()?;
    if !out.status.success() {
        bail!("cgcloud {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn keygen(path: &Path) -> Result<()> {
    let st =
        std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status()?;
    if !st.success() {
        bail!("ssh-keygen failed");
    }
    Ok(())
}

fn login(home: &Path, key: &Path, ip: &str, id: &str) -> bool {
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

async fn key_sync(n_boxes: usize, n_regs: usize) -> Result<()> {
    let user = BenchUser::new()?;
    let h = user.home();
    let role = "generic-debian-bookworm-box";
    let mut boxes = Vec::new();
    eprintln!("creating {n_boxes} boxes, 4 at a time ...");
    for wave in (0..n_boxes).collect::<Vec<_>>().chunks(4) {
        let outs: Vec<Result<String>> = std::thread::scope(|s| {
            let running: Vec<_> = wave
                .iter()
                .map(|_| {
                    s.spawn(|| cgcloud(&h, &["-q", "--output", "json", "create", role, "-k", "__me__", "bench-*"]))
                })
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
    // Two moments per box: when its agent rewrote authorized_keys with the new key (read from
    // the host's side of the box's disk: free, unlike a login, so it does not slow what it
    // measures), then when the key logs in (one ssh at a time per box, after the rewrite).
    let upper = |id: &str| cgcloud_localcloud::LocalCloud::default_dir().join("instances").join(id).join("upper");
    // The box's user owns home/admin/.ssh: this root process reads it only where no part of
    // the path is a link they could have planted to a file of this machine.
    fn read_box_file(upper: &Path, rel: &str) -> Option<String> {
        let mut p = upper.to_path_buf();
        for part in rel.split('/') {
            p.push(part);
            if std::fs::symlink_metadata(&p).ok()?.file_type().is_symlink() {
                return None;
            }
        }
        std::fs::read_to_string(p).ok()
    }
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
    // Idle cost of the agent on one box.
    let (id, _) = &boxes[0];
    let probe = "p=$(systemctl show -p MainPID --value cgcloud-agent); a=$(awk '{print $14+$15}' /proc/$p/stat); sleep 30; \
                 b=$(awk '{print $14+$15}' /proc/$p/stat); rss=$(awk '/VmRSS/{print $2}' /proc/$p/status); echo $rss $((b-a)) $(getconf CLK_TCK)";
    let out = cgcloud(&h, &["-q", "ssh", role, "-I", id, "--", probe])?;
    let f: Vec<f64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if f.len() == 3 {
        println!(
            "  agent idle: RSS {:.1} MiB (target <= 10 MiB), CPU {:.3} % over 30 s",
            f[0] / 1024.0,
            f[1] / f[2] / 30.0 * 100.0
        );
    }
    for (id, _) in &boxes {
        cgcloud(&h, &["-q", "terminate", role, "-I", id])?;
    }
    for i in 0..n_regs {
        let _ = cgcloud(&h, &["-q", "delete-key", &format!("bench-{i}")]);
    }
    Ok(())
}

fn counts(args: &[&str], default: &[u32]) -> Result<Vec<u32>> {
    if args.is_empty() {
        return Ok(default.to_vec());
    }
    args.iter().map(|s| s.parse().context("counts must be numbers")).collect()
}

/// (requests, polls, retries) from create-cluster's summary line.
fn requests(stderr: &str) -> Option<(u64, u64, u64)> {
    let line = stderr.lines().find(|l| l.contains("API requests"))?;
    let tail = line.rsplit('(').next()?;
    let nums: Vec<u64> = tail.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    Some((*nums.first()?, *nums.get(1)?, *nums.get(2)?))
}

fn cluster_api(ns: &[u32]) -> Result<()> {
    let e = testkit::TestEnv::new(cgcloud_exe()?);
    e.with_key_and_node_image();
    let agents = testkit::FakeAgents::start(&e);
    let moto_pid = testkit::moto().pid.map(|p| p.to_string());
    let agents_pid = agents.pid().to_string();
    let own = |pid: &Option<String>| pid.as_deref().and_then(process_cpu_seconds).map(|c| c.0).unwrap_or(f64::NAN);
    println!("cluster-api: one create-cluster against moto with stand-in agents that tag each node configured");
    println!(
        "{:>6} {:>8} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>14} {:>12}",
        "N", "wall s", "cgcloud s", "moto s", "agents s", "requests", "polls", "retries", "without both", "poll B/node"
    );
    let mut flat = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let name = format!("bench{i}");
        let (moto0, agents0) = (own(&moto_pid), own(&Some(agents_pid.clone())));
        let children0 = process_cpu_seconds("self").map(|c| c.1).unwrap_or(0.0);
        let t0 = Instant::now();
        let out = e
            .cmd()
            .args([
                "create-cluster",
                "generic",
                "-s",
                &n.to_string(),
                "-c",
                &name,
                "--skip-ssh-check",
                "--timeout",
                "1800",
            ])
            .output()?;
        let wall = t0.elapsed().as_secs_f64();
        // create-cluster is the only child waited for in between: its CPU time, not moto's.
        let cgcloud_cpu = process_cpu_seconds("self").map(|c| c.1).unwrap_or(f64::NAN) - children0;
        let (moto_cpu, agents_cpu) = (own(&moto_pid) - moto0, own(&Some(agents_pid.clone())) - agents0);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let (k, p, r) = requests(&err).with_context(|| format!("create-cluster -s {n} failed: {err}"))?;
        // What one status poll costs in bytes: the cluster's DescribeInstances answer (moto's
        // XML; EC2's is of the same form), per node.
        let poll_bytes: f64 = e
            .boto3(&format!(
                "ec2 = client('ec2')\nsizes = []\n\
                 ec2.meta.events.register('after-call.ec2.DescribeInstances', lambda http_response, **kw: sizes.append(len(http_response.content)))\n\
                 ec2.describe_instances(Filters=[{{'Name': 'tag:cgcloud:cluster', 'Values': ['{name}']}}])\n\
                 print(sum(sizes))"
            ))
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        println!(
            "{n:>6} {wall:>8.1} {cgcloud_cpu:>9.2} {moto_cpu:>9.1} {agents_cpu:>10.1} {k:>10} {p:>8} {r:>8} {:>14} {:>12.0}",
            k - p - r,
            poll_bytes / f64::from(n + 1)
        );
        flat.push(k - p - r);
        e.ok(&["terminate-cluster", "generic", "-c", &name, "-Q"]);
    }
    if let (Some(a), Some(b)) = (flat.first(), flat.last()) {
        println!(
            "requests without polls and retries: N={} {a}, N={} {b} (constant means O(1) in N)",
            ns[0],
            ns[ns.len() - 1]
        );
    }
    Ok(())
}

/// CPU a cluster node's units have used since it booted, in µs, read inside the node from its
/// cgroup tree: the whole box, systemd itself (init.scope), logins (user.slice: the
/// workstation's SSH checks and this probe), and each unit of system.slice (the cloud-init
/// stages keep theirs after they exit; cloud-final's holds the agent's first boot).
const NODE_CPU_PROBE: &str = "r=/sys/fs/cgroup/unified; [ -f $r/cpu.stat ] || r=/sys/fs/cgroup; \
    echo \"box $(awk '/usage_usec/{print $2}' $r/cpu.stat)\"; \
    for d in $r/system.slice/*/ $r/init.scope/ $r/user.slice/; do [ -f $d/cpu.stat ] && echo \"$(basename $d) $(awk '/usage_usec/{print $2}' $d/cpu.stat)\"; done; true";

/// Where a cluster's nodes spent CPU since they booted, by systemd unit, summed over nodes
/// (`box` is each node's whole cgroup), read after the fact over `ssh-cluster`.
fn node_cpu(h: &Path, cluster_type: &str, name: &str) -> Result<std::collections::BTreeMap<String, f64>> {
    let probe =
        cgcloud(h, &["-q", "--output", "json", "ssh-cluster", cluster_type, "-c", name, "-P", "--", NODE_CPU_PROBE])?;
    let mut units = std::collections::BTreeMap::new();
    for node in serde_json::from_str::<serde_json::Value>(&probe)?.as_array().into_iter().flatten() {
        for line in node["stdout"].as_str().unwrap_or_default().lines() {
            if let Some((unit, usec)) = line.split_once(' ') {
                *units.entry(unit.to_owned()).or_insert(0.0) += usec.trim().parse::<f64>().unwrap_or(0.0) / 1e6;
            }
        }
    }
    Ok(units)
}

fn print_node_cpu(breakdown: &[(u32, std::collections::BTreeMap<String, f64>)]) {
    for (n, units) in breakdown {
        let total = units.get("box").copied().unwrap_or(f64::NAN);
        let live: f64 = units.iter().filter(|(u, _)| u.as_str() != "box").map(|(_, s)| s).sum();
        println!("nodes' CPU with {n} workers: {total:.1} s in all ({:.2} s a node)", total / (*n as f64 + 1.0));
        let mut top: Vec<(&String, &f64)> = units.iter().filter(|(u, _)| u.as_str() != "box").collect();
        top.sort_by(|a, b| b.1.total_cmp(a.1));
        for (unit, secs) in top.into_iter().take(9) {
            println!("  {unit:<32} {secs:>7.2} s");
        }
        println!("  {:<32} {:>7.2} s", "(units gone, the rest)", total - live);
    }
}

async fn cluster_boot(ns: &[u32]) -> Result<()> {
    let user = BenchUser::new()?;
    let h = user.home();
    cgcloud(&h, &["-q", "create", "-I", "-T", "generic-cluster-box"])?;
    let image = newest_image(&h, "generic-cluster-box")?;
    // The baking box's shutdown must not overlap the first measurement.
    wait_no_hosts(&h)?;
    let bare = BareBoot::new().await?;
    println!("cluster-boot: create-cluster from a baked image until every node is configured, against a bare boot");
    println!("of as many plain hosts until each takes an SSH login (local cloud; machine CPU is both cores)");
    println!(
        "{:>7} {:>8} {:>9} {:>10} {:>11} {:>7} {:>9}",
        "workers", "bare s", "bare CPU", "cluster s", "cluster CPU", "ratio", "CPU ratio"
    );
    let mut breakdown: Vec<(u32, std::collections::BTreeMap<String, f64>)> = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let cpu0 = machine_cpu_seconds();
        let (_, bare_s) = bare.boot(*n as i32 + 1).await?;
        let bare_cpu = machine_cpu_seconds() - cpu0;
        wait_no_hosts(&h)?;
        let name = format!("boot{i}");
        let cpu0 = machine_cpu_seconds();
        let t0 = Instant::now();
        let out =
            cgcloud_command(&h)?.args(["create-cluster", "generic", "-s", &n.to_string(), "-c", &name]).output()?;
        let total = t0.elapsed().as_secs_f64();
        let cluster_cpu = machine_cpu_seconds() - cpu0;
        if !out.status.success() {
            bail!("create-cluster -s {n} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        println!(
            "{n:>7} {bare_s:>8.2} {bare_cpu:>9.1} {total:>10.2} {cluster_cpu:>11.1} {:>7.2} {:>9.2}",
            total / bare_s,
            cluster_cpu / bare_cpu
        );
        breakdown.push((*n, node_cpu(&h, "generic", &name)?));
        cgcloud(&h, &["-q", "terminate-cluster", "generic", "-c", &name])?;
        wait_no_hosts(&h)?;
    }
    bare.finish().await?;
    print_node_cpu(&breakdown);
    cgcloud(&h, &["-q", "delete-image", "generic-cluster-box", "-i", &image])?;
    Ok(())
}

/// The release `V` in the mirror directory `dir` (see [`testkit::mirror_release`]).
fn release_in(dir: &Path, prefix: &str, file: impl Fn(&str) -> String) -> Result<String> {
    testkit::mirror_release(dir, prefix, file)
        .map_err(anyhow::Error::msg)?
        .with_context(|| format!("{} holds no release (run scripts/apache-mirror)", dir.display()))
}

/// Bakes spark-box: Spark from PyPI without HDFS, or with `hdfs` Spark and Hadoop from the
/// Apache-layout mirror in CGCLOUD_APACHE_MIRROR_DIR, served on the bridge while baking.
fn bake_spark_box(h: &Path, hdfs: bool) -> Result<()> {
    if !hdfs {
        eprintln!("baking spark-box (Spark from PyPI, no HDFS) ...");
        cgcloud(h, &["-q", "create", "-I", "-T", "spark-box", "-O", "spark_source=pypi", "-O", "hdfs=false"])?;
        return Ok(());
    }
    let dir = PathBuf::from(
        std::env::var_os("CGCLOUD_APACHE_MIRROR_DIR")
            .context("--hdfs needs CGCLOUD_APACHE_MIRROR_DIR, a directory made by scripts/apache-mirror")?,
    );
    let spark = release_in(&dir.join("spark"), "spark-", |v| format!("spark-{v}-bin-hadoop3.tgz"))?;
    let hadoop = release_in(&dir.join("hadoop/common"), "hadoop-", |v| format!("hadoop-{v}.tar.gz"))?;
    let mirror = testkit::Mirror::serve(&dir).map_err(anyhow::Error::msg)?;
    eprintln!("baking spark-box (Spark {spark}, Hadoop {hadoop} from {}) ...", dir.display());
    let opts = [
        "spark_source=apache".to_owned(),
        format!("apache_mirror={}", mirror.url),
        format!("spark_version={spark}"),
        format!("hadoop_version={hadoop}"),
    ];
    let mut args = vec!["-q", "create", "-I", "-T", "spark-box"];
    for o in &opts {
        args.extend(["-O", o.as_str()]);
    }
    cgcloud(h, &args).map(drop)
}

/// Waits on the leader of spark cluster `name` (in one SSH session: its web UIs are closed to
/// this machine, as on EC2) until the master counts `n` alive workers and, with `hdfs`, the
/// NameNode `n` live DataNodes; the Unix times (s) at which each was first seen there. The
/// hosts share this machine's clock.
fn wait_spark_and_hdfs(h: &Path, name: &str, n: u32, hdfs: bool) -> Result<(f64, Option<f64>)> {
    let mut script = format!(
        "ip=$(hostname -I | cut -d' ' -f1)\n\
         w() {{ i=0; while ! curl -sf -m 5 \"$2\" | tr -d ' \\n' | grep -qF \"$3\"; do \
         sleep 0.25; i=$((i+1)); [ $i -gt 2400 ] && return 1; done; echo \"$1 $(date +%s.%N)\"; }}\n\
         w spark \"http://$ip:8080/json/\" '\"aliveworkers\":{n},' &\n"
    );
    if hdfs {
        script.push_str(&format!(
            "w hdfs \"http://$ip:9870/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState\" '\"NumLiveDataNodes\":{n},' &\n"
        ));
    }
    script.push_str("wait\n");
    let out = cgcloud(h, &["-q", "ssh", "spark-leader", "-c", name, "--", &script])?;
    let at = |what: &str| -> Option<f64> { out.lines().find_map(|l| l.strip_prefix(what)?.trim().parse().ok()) };
    let spark_at = at("spark ")
        .with_context(|| format!("{n} workers did not register with the master within 10 minutes: {out}"))?;
    let hdfs_at =
        if hdfs {
            Some(at("hdfs ").with_context(|| {
                format!("{n} DataNodes did not register with the NameNode within 10 minutes: {out}")
            })?)
        } else {
            None
        };
    Ok((spark_at, hdfs_at))
}

async fn spark_boot(ns: &[u32], hdfs: bool) -> Result<()> {
    let user = BenchUser::new()?;
    let h = user.home();
    bake_spark_box(&h, hdfs)?;
    let image = newest_image(&h, "spark-box")?;
    // The baking box's shutdown must not overlap the first measurement.
    wait_no_hosts(&h)?;
    let bare = BareBoot::new().await?;
    let until = if hdfs { "every worker alive and the NameNode every DataNode" } else { "every worker alive" };
    println!("spark-boot{}: create-cluster spark until the master reports {until},", if hdfs { " --hdfs" } else { "" });
    println!("against a bare boot of as many plain hosts until each takes an SSH login (local cloud; machine CPU is both cores)");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "{:>8} {:>8} {:>9} {:>10} {:>8} {:>13} {:>14} {:>7} {:>9}",
        "workers", "bare s", "bare CPU", "seconds", "Spark s", "machine CPU-s", "CPU-s / cores", "ratio", "CPU ratio"
    );
    let mut times = Vec::new();
    let mut breakdown = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let cpu0 = machine_cpu_seconds();
        let (_, bare_s) = bare.boot(*n as i32 + 1).await?;
        let bare_cpu = machine_cpu_seconds() - cpu0;
        wait_no_hosts(&h)?;
        let name = format!("spark{i}");
        let cpu0 = machine_cpu_seconds();
        let t0_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        cgcloud(&h, &["-q", "create-cluster", "spark", "-s", &n.to_string(), "-c", &name])?;
        let (spark_at, hdfs_at) = wait_spark_and_hdfs(&h, &name, *n, hdfs)?;
        let since = |at: f64| at - t0_unix;
        let spark_s = since(spark_at);
        let t = hdfs_at.map_or(spark_s, |a| since(a).max(spark_s));
        let cpu = machine_cpu_seconds() - cpu0;
        // When seconds ≈ CPU-s / cores, the bring-up is bound by this machine's cores.
        println!(
            "{n:>8} {bare_s:>8.2} {bare_cpu:>9.1} {t:>10.2} {spark_s:>8.2} {cpu:>13.1} {:>14.1} {:>7.2} {:>9.2}",
            cpu / cores as f64,
            t / bare_s,
            cpu / bare_cpu
        );
        times.push(t);
        breakdown.push((*n, node_cpu(&h, "spark", &name)?));
        cgcloud(&h, &["-q", "terminate-cluster", "spark", "-c", &name])?;
        // Hosts power off after EC2 calls them terminated; the next size must not share the
        // two cores with their shutdown.
        wait_no_hosts(&h)?;
    }
    if let (Some(a), Some(b)) = (times.first(), times.last()) {
        println!("ratio t({})/t({}) = {:.2}", ns[ns.len() - 1], ns[0], b / a);
    }
    bare.finish().await?;
    print_node_cpu(&breakdown);
    cgcloud(&h, &["-q", "delete-image", "spark-box", "-i", &image])?;
    Ok(())
}

fn toil_sinfo_idle(h: &Path, cluster: &str) -> usize {
    cgcloud(h, &["-q", "ssh", "toil-leader", "-c", cluster, "--", "sinfo -h -N -t idle -o %N"])
        .map(|out| out.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

async fn toil_boot(ns: &[u32]) -> Result<()> {
    let user = BenchUser::new()?;
    let h = user.home();
    eprintln!("baking toil-box ...");
    cgcloud(&h, &["-q", "create", "-I", "-T", "toil-box"])?;
    let image = newest_image(&h, "toil-box")?;
    wait_no_hosts(&h)?;
    let bare = BareBoot::new().await?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("toil-boot: create-cluster toil until sinfo shows every worker idle, vs a bare boot of as many hosts; then a 64-job workflow (local cloud, {cores} cores)");
    println!(
        "{:>8} {:>8} {:>9} {:>9} {:>7} {:>9} {:>10} {:>9}",
        "workers", "bare s", "bare CPU", "toil s", "ratio", "toil CPU", "64 jobs s", "jobs CPU"
    );
    let mut ratios = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let hosts = i32::try_from(*n + 1)?;
        let cpu0 = machine_cpu_seconds();
        let (_, bare_s) = bare.boot(hosts).await?;
        let bare_cpu = machine_cpu_seconds() - cpu0;
        wait_no_hosts(&h)?;
        let name = format!("toil{i}");
        let cpu0 = machine_cpu_seconds();
        let t0 = Instant::now();
        cgcloud(&h, &["-q", "create-cluster", "toil", "-s", &n.to_string(), "-c", &name])?;
        while toil_sinfo_idle(&h, &name) < *n as usize {
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("{n} workers were not idle in Slurm within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let up = t0.elapsed().as_secs_f64();
        let up_cpu = machine_cpu_seconds() - cpu0;
        let write = format!(
            "mkdir -p /shared/wf && cat > /shared/wf/hostnames.py <<'EOF'\n{}\nEOF",
            testkit::TOIL_HOSTNAMES_WORKFLOW
        );
        cgcloud(&h, &["-q", "ssh", "toil-leader", "-c", &name, "--", &write])?;
        let cpu0 = machine_cpu_seconds();
        let t0 = Instant::now();
        let run = "toil-run /shared/wf/hostnames.py --jobs 64 --seconds 0 --out /shared/out --logCritical";
        cgcloud(&h, &["-q", "ssh", "toil-leader", "-c", &name, "--", run])?;
        let jobs = t0.elapsed().as_secs_f64();
        let jobs_cpu = machine_cpu_seconds() - cpu0;
        let ratio = up / bare_s;
        println!(
            "{n:>8} {bare_s:>8.2} {bare_cpu:>9.1} {up:>9.2} {ratio:>7.2} {up_cpu:>9.1} {jobs:>10.2} {jobs_cpu:>9.1}"
        );
        ratios.push(ratio);
        cgcloud(&h, &["-q", "terminate-cluster", "toil", "-c", &name])?;
        wait_no_hosts(&h)?;
    }
    bare.finish().await?;
    let worst = ratios.iter().copied().fold(f64::NAN, f64::max);
    println!("worst bring-up / bare boot = {worst:.2} (target <= 1.2)");
    cgcloud(&h, &["-q", "delete-image", "toil-box", "-i", &image])?;
    Ok(())
}
