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
//! - `members [N...]`: against moto, one node's first-boot membership traffic at N workers
//!   (default 1 100 1000): DescribeInstances of every member (before the leader published the
//!   list) against DescribeInstances of itself plus the leader's list (the agent's `members
//!   serve` and `members fetch`), in requests and bytes, and their ratio.
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
//! - `elastic [JOBS]`: on the local cloud, an elastic Slurm cluster (`--max-workers 16
//!   --idle-time 1m`, no worker at rest): submit -> start of JOBS exclusive jobs at once (default
//!   5), each on a worker launched for it, and of 3 one at a time, p50 and max, beside a bare
//!   boot of one host (target: <= 1.3 x bare boot + Slurm's power-save interval; >= 10x under
//!   ParallelCluster's 294 s); scale-up 0 -> 16 for 16 queued jobs; scale-down to no live worker after the jobs end; the
//!   leader's CPU (cgcloud-agent, slurmctld, whole box) while idle for 2 minutes.
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

mod boot;
mod clusters;
mod elastic;
mod fanout;
mod faults;
mod imds;
mod keysync;
mod members;

use boot::{idle, local_boot};
use clusters::{cluster_api, cluster_boot, spark_boot, toil_boot};
use keysync::key_sync;

use anyhow::{bail, Context as _, Result};
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
        ["bench", "members", rest @ ..] => members::members(&counts(rest, &[1, 100, 1000])?),
        ["bench", "cluster-boot", rest @ ..] => cluster_boot(&counts(rest, &[1, 4, 16])?).await,
        ["bench", "spark-boot", "--hdfs", rest @ ..] => spark_boot(&counts(rest, &[1, 2, 4])?, true).await,
        ["bench", "spark-boot", rest @ ..] => spark_boot(&counts(rest, &[1, 2, 4])?, false).await,
        ["bench", "toil-boot", rest @ ..] => toil_boot(&counts(rest, &[1, 4, 8])?).await,
        ["bench", "elastic", rest @ ..] => {
            elastic::elastic(rest.first().map(|s| s.parse()).transpose().context("JOBS must be a number")?.unwrap_or(5))
                .await
        }
        _ => bail!("usage: cargo run -p xtask -- man [DIR] | bench local-boot [N...] | key-sync [BOXES [REGISTRATIONS]] | cluster-api [N...] | cluster-boot [N...] | spark-boot [--hdfs] [N...] | toil-boot [N...] | elastic [JOBS] | idle [HISTORY...] | fanout [N] | faults [RUNS] | imds [N]"),
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

fn counts(args: &[&str], default: &[u32]) -> Result<Vec<u32>> {
    if args.is_empty() {
        return Ok(default.to_vec());
    }
    args.iter().map(|s| s.parse().context("counts must be numbers")).collect()
}
