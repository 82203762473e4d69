//! Running host commands (ip, mount, systemd-nspawn, ...) and checking processes. Everything
//! the local cloud does to the machine goes through here, so errors name the command.

use crate::Error;
use std::path::Path;
use std::process::Stdio;
use tokio::process::Command;

/// Runs a command; fails with its stderr if it exits non-zero.
pub async fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Command { command: format!("{program} {}", args.join(" ")), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on its standard input; fails with its stderr if it exits
/// non-zero.
pub async fn run_with_input(program: &str, args: &[&str], input: &[u8]) -> Result<String, Error> {
    use tokio::io::AsyncWriteExt as _;
    let failed = |detail: String| Error::Command { command: format!("{program} {}", args.join(" ")), detail };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).await.map_err(|e| failed(e.to_string()))?;
    }
    let out = child.wait_with_output().await.map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and ignores failure (for idempotent teardown).
pub async fn run_quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// True if `pid` is alive and its command line contains `marker` (so a recycled PID is not
/// mistaken for ours). A process in the middle of an exec shows an empty command line for an
/// instant (a host's start execs sh, unshare and systemd-nspawn in turn): a live process with
/// none is looked at again, for up to half a second. Taking such a host for gone once made the
/// controller boot it a second time beside itself.
pub fn pid_matches(pid: u32, marker: &str) -> bool {
    if !in_our_pid_namespace(pid) {
        return false;
    }
    for _ in 0..50 {
        match cmdline(pid) {
            None => return false,
            Some(line) if !line.is_empty() => return line.contains(marker),
            Some(_) if !pid_alive(pid) => return false,
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    false
}

/// A process's command line, its arguments joined by spaces (and one after the last).
///
/// Read in one `read`: the kernel answers each from one address space, but `fs::read` reads in
/// small pieces first, and a process that execs between two of them shows the start of its old
/// command line followed by nothing (the new one is not set up yet), which matched no marker
/// and made a live host look gone.
fn cmdline(pid: u32) -> Option<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(format!("/proc/{pid}/cmdline")).ok()?;
    let mut buf = vec![0u8; 32 * 1024]; // ours are far shorter; longer lines are cut, not matched
    let n = loop {
        match file.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    };
    buf.truncate(n);
    Some(String::from_utf8_lossy(&buf).replace('\0', " "))
}

/// Waits (up to 5 s) until the just-spawned `pid` shows `marker`: until a child has exec'd,
/// /proc shows its parent's command line. False if it ended first.
pub async fn wait_exec(pid: u32, marker: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !pid_matches(pid, marker) {
        if !pid_alive(pid) || std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    true
}

/// The live processes whose command line contains every one of `markers`, lowest PID first.
pub fn pids_matching(markers: &[&str]) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&pid: &u32| {
            cmdline(pid).is_some_and(|line| markers.iter().all(|m| line.contains(m)))
                && pid_alive(pid)
                && in_our_pid_namespace(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `pid` lives in this process's PID namespace. Every guest's processes live in one of
/// their own, and a guest's root can give a process any command line it likes: one that reads
/// like another instance's host must not be taken for it (and later signalled, while the real
/// one runs on untracked).
fn in_our_pid_namespace(pid: u32) -> bool {
    match (std::fs::read_link("/proc/self/ns/pid"), std::fs::read_link(format!("/proc/{pid}/ns/pid"))) {
        (Ok(ours), Ok(theirs)) => ours == theirs,
        _ => false,
    }
}

/// True if the process exists and is not a zombie (use right after spawning, before its
/// command line is known).
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}

/// Sends a signal to a process by PID.
pub async fn kill(pid: u32, signal: &str) -> bool {
    run_quiet("kill", &[&format!("-{signal}"), &pid.to_string()]).await
}

/// Waits up to `secs` for a process to exit.
pub async fn wait_gone(pid: u32, marker: &str, secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while pid_matches(pid, marker) {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    true
}

/// Stops a process: TERM, then KILL after `grace` seconds.
pub async fn stop_process(pid: u32, marker: &str, grace: u64) {
    if !pid_matches(pid, marker) {
        return;
    }
    kill(pid, "TERM").await;
    if !wait_gone(pid, marker, grace).await {
        kill(pid, "KILL").await;
        wait_gone(pid, marker, 5).await;
    }
}

/// True if something is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(p.as_ref())))
        .unwrap_or(false)
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
                .filter(|p| p == &d || p.starts_with(&format!("{d}/")))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|p| std::cmp::Reverse(p.len()));
    v
}

/// Which of `programs` are not on PATH.
pub fn missing_programs(programs: &[&str]) -> Vec<String> {
    cgcloud_core::fsutil::missing_programs(programs, &["/usr/sbin", "/sbin"])
}
