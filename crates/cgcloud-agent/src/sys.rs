//! Running programs, and the few system facts the disk code shares: a device's filesystem type
//! and whether a path is a mount point. Every command the agent runs goes through [`run`] or
//! [`wait_timeout`], except the plan's own steps (`apply.rs`, which streams their output into
//! its log).

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A command that could not run or did not succeed; the message names the command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{program}: {error}")]
    Spawn { program: String, error: std::io::Error },
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs a program; its stdout, or an error naming the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|error| CommandError::Spawn { program: program.to_owned(), error })?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True if the program runs and exits 0; its output is discarded.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for `child` for at most `timeout`, looking every `poll`: its exit status, or None if
/// it ran longer, in which case it is killed (and reaped).
pub fn wait_timeout(child: &mut Child, timeout: Duration, poll: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            // It may have exited just now, and its status no longer matters: a failed kill or
            // wait changes nothing for the caller, who treats it as timed out either way.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(poll);
    }
}

/// A blkid tag of a device (`TYPE`, `LABEL`), empty if it has none.
pub fn blkid(device: &str, tag: &str) -> String {
    run("blkid", &["-o", "value", "-s", tag, device]).unwrap_or_default().trim().to_owned()
}

pub fn is_mounted(mount_point: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(mount_point))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_command() {
        let e = run("sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert_eq!(e.to_string(), "sh -c echo oops >&2; exit 3: oops");
        let e = run("/nonexistent/cgcloud-test", &[]).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/cgcloud-test: "), "{e}");
        assert_eq!(run("sh", &["-c", "echo hi"]).unwrap(), "hi\n");
    }

    #[test]
    fn a_command_that_runs_too_long_is_killed() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let start = Instant::now();
        let status = wait_timeout(&mut child, Duration::from_millis(200), Duration::from_millis(20)).unwrap();
        assert!(status.is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
        let mut quick = std::process::Command::new("true").spawn().unwrap();
        let status = wait_timeout(&mut quick, Duration::from_secs(5), Duration::from_millis(20)).unwrap();
        assert!(status.is_some_and(|s| s.success()));
    }
}
