//! SSH to boxes through the system OpenSSH client, so the user's `~/.ssh/config`, agent and
//! keys keep working. Host keys are never trusted on first use: cgcloud knows each box's host
//! key before the box boots (it generates it and hands it to cloud-init) and keeps its own
//! known_hosts file, keyed by instance id (`HostKeyAlias`) so that changing IP addresses do not
//! matter. Connections are multiplexed (`ControlMaster`) because SSH handshakes are costly.

pub mod hostkey;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "cannot run '{program}': {source}; install OpenSSH's client (e.g. `apt-get install openssh-client rsync`)"
    )]
    Spawn { program: String, source: std::io::Error },
    #[error("timed out after {seconds} s waiting for SSH on {address} ({last})")]
    NotReady { address: String, seconds: u64, last: String },
    #[error("the SSH host key of {alias} ({address}) does not match the key cgcloud recorded for it: refusing to connect (possible man-in-the-middle)")]
    HostKeyMismatch { alias: String, address: String },
    #[error("{address} refuses every key ssh offered for {user} (\"Permission denied (publickey)\" for {seconds} s after it showed the host key cgcloud expects): {last}")]
    KeysRefused { address: String, user: String, seconds: u64, last: String },
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("remote command failed with status {status}: {stderr}")]
    Failed { status: i32, stderr: String },
    #[error("refusing to use {path} for SSH control sockets: {why}")]
    UnsafeDir { path: String, why: String },
    #[error("{} not found on PATH; cgcloud needs {what}: install it (e.g. `apt-get install {}`)", .missing.join(", "), .packages.join(" "))]
    MissingPrograms { missing: Vec<String>, what: String, packages: Vec<String> },
}

/// How long a box that shows the expected host key may refuse every key before the wait for
/// SSH gives up: cloud-init installs the authorized keys before sshd starts, so a refusal
/// that lasts this long is a key the box does not trust, not a box still booting.
pub const KEY_REFUSAL_GRACE: Duration = Duration::from_secs(30);

/// The Debian package that ships each local program cgcloud runs.
fn package_of(program: &str) -> &'static str {
    match program {
        "rsync" => "rsync",
        _ => "openssh-client",
    }
}

/// Fails, naming every missing program and its package, unless each of `programs` is an
/// executable file on PATH. `what` says why they are needed ("to wait for SSH on new boxes").
pub fn require_programs(programs: &[&str], what: &str) -> Result<(), RemoteError> {
    let missing = cgcloud_core::fsutil::missing_programs(programs, &[]);
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<String> = missing.iter().map(|p| package_of(p).to_owned()).collect();
    packages.dedup();
    Err(RemoteError::MissingPrograms { missing, what: what.to_owned(), packages })
}

/// Everything needed to reach one box.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// The IP address or DNS name to connect to.
    pub address: String,
    pub user: String,
    /// The name under which the host key is recorded (the instance id).
    pub alias: String,
    pub known_hosts: PathBuf,
    /// Directory for multiplexing sockets.
    pub control_dir: PathBuf,
    /// Extra `ssh` options from the user (e.g. `-i key`).
    pub extra: Vec<String>,
}

impl SshTarget {
    /// Options shared by every ssh invocation for this target. ssh takes the first value it
    /// is given for an option: the host-key options come first (no setting loosens the
    /// verification), then the user's own (`CGCLOUD_SSH_OPTS`, which may change the rest, e.g.
    /// `-o ControlMaster=no`), then cgcloud's defaults.
    pub fn options(&self, batch: bool) -> Vec<String> {
        let o =
            |opts: &[String]| -> Vec<String> { opts.iter().flat_map(|opt| ["-o".to_owned(), opt.clone()]).collect() };
        let mut all = o(&[
            format!("HostKeyAlias={}", self.alias),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "StrictHostKeyChecking=yes".to_owned(),
            "CheckHostIP=no".to_owned(),
            "UpdateHostKeys=no".to_owned(),
        ]);
        all.extend(self.extra.iter().cloned());
        all.extend(o(&[
            "ControlMaster=auto".to_owned(),
            format!("ControlPath={}/%C", self.control_dir.display()),
            "ControlPersist=60s".to_owned(),
            "ConnectTimeout=10".to_owned(),
            "ServerAliveInterval=15".to_owned(),
            // A box that was just started needs a moment for sshd; retry refused connections.
            "ConnectionAttempts=5".to_owned(),
        ]));
        if batch {
            all.extend(["-o".to_owned(), "BatchMode=yes".to_owned()]);
        }
        all.extend(["-l".to_owned(), self.user.clone()]);
        all
    }

    /// An `ssh` command for this target with `args` (ssh options and/or a remote command).
    pub fn command(&self, batch: bool, args: &[String]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.options(batch)).arg(&self.address).args(args);
        cmd
    }

    /// The same `ssh` command, to run in this process's place (`cgcloud ssh` execs it, so that
    /// signals and the exit status are ssh's own and nothing outlives a killed cgcloud).
    pub fn std_command(&self, batch: bool, args: &[String]) -> std::process::Command {
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(self.options(batch)).arg(&self.address).args(args);
        cmd
    }

    /// The `-e` argument for rsync.
    pub fn rsync_shell(&self, extra_ssh_opts: &str) -> String {
        let mut parts = vec!["ssh".to_owned()];
        parts.extend(self.options(false).iter().map(|a| shell_quote(a)));
        if !extra_ssh_opts.is_empty() {
            parts.push(extra_ssh_opts.to_owned());
        }
        parts.join(" ")
    }

    /// Rewrites rsync arguments: `:path` means the box.
    pub fn rsync_args(&self, args: &[String]) -> Vec<String> {
        args.iter()
            .map(|a| match a.strip_prefix(':') {
                Some(path) => format!("{}:{}", self.address, path),
                None => a.clone(),
            })
            .collect()
    }

    /// Runs a shell script on the box (as the login user, via `sh -s`), capturing output.
    pub async fn run_script(&self, script: &str) -> Result<std::process::Output, RemoteError> {
        self.run_with_input(&["sh".to_owned(), "-s".to_owned()], script.as_bytes()).await
    }

    /// Runs `remote` on the box with `input` on its standard input, capturing output.
    pub async fn run_with_input(&self, remote: &[String], input: &[u8]) -> Result<std::process::Output, RemoteError> {
        use tokio::io::AsyncWriteExt as _;
        let mut child = self
            .command(true, remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RemoteError::Spawn { program: "ssh".into(), source })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A closed pipe means ssh exited early; its status says why.
            let _ = stdin.write_all(input).await;
        }
        child.wait_with_output().await.map_err(|source| RemoteError::Spawn { program: "ssh".into(), source })
    }

    /// Waits until TCP port 22 accepts connections and an SSH login works. Fails early when
    /// the box, having shown the host key cgcloud expects, refuses ssh's keys for
    /// [`KEY_REFUSAL_GRACE`].
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), RemoteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let not_ready =
            |last: String| RemoteError::NotReady { address: self.address.clone(), seconds: timeout.as_secs(), last };
        let mut last = String::from("no attempt yet");
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(not_ready(last));
            }
            let addr = if self.address.contains(':') { self.address.clone() } else { format!("{}:22", self.address) };
            match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => last = format!("port 22: {e}"),
                Err(_) => last = "port 22: connect timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut mismatches = 0;
        let mut refused_since: Option<tokio::time::Instant> = None;
        loop {
            let out = self
                .command(true, &["true".to_owned()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .await
                .map_err(|source| RemoteError::Spawn { program: "ssh".into(), source })?;
            if out.status.success() {
                return Ok(());
            }
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            // sshd may briefly serve the image's old host keys before cloud-init installs the
            // ones we know; a mismatch that persists is an attack or a broken box.
            if stderr.contains("Host key verification failed") || stderr.contains("HOST IDENTIFICATION HAS CHANGED") {
                mismatches += 1;
                if mismatches > 20 {
                    return Err(RemoteError::HostKeyMismatch {
                        alias: self.alias.clone(),
                        address: self.address.clone(),
                    });
                }
            }
            last = stderr.lines().last().unwrap_or("ssh failed").to_owned();
            // The host key was verified (strict checking comes first), so this is the box
            // cgcloud launched refusing the login: for a moment while cloud-init installs the
            // keys, for good when none of ssh's keys is one the box trusts.
            if stderr.contains("Permission denied (publickey") {
                let since = *refused_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= KEY_REFUSAL_GRACE {
                    return Err(RemoteError::KeysRefused {
                        address: self.address.clone(),
                        user: self.user.clone(),
                        seconds: since.elapsed().as_secs(),
                        last,
                    });
                }
            } else {
                refused_since = None;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(not_ready(last));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Closes the multiplexed master connection, if any.
    pub async fn close(&self) {
        let _ = Command::new("ssh")
            .args(self.options(true))
            .args(["-O", "exit"])
            .arg(&self.address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

/// Quotes a word for rsync's `-e` parser and POSIX shells.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:%@,+".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing, and checks that it is a directory
/// (not a symlink) of this user that nobody else can use: control sockets and known_hosts live
/// there, and a directory in a shared place such as /tmp may have been made by someone else.
pub fn private_dir(dir: &Path) -> Result<(), RemoteError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let io = |source| RemoteError::Io { path: dir.display().to_string(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).map_err(io)?;
    let problem = if !meta.file_type().is_dir() {
        Some("it is not a directory (a symlink?)".to_owned())
    } else if meta.uid() != me {
        Some(format!("it belongs to uid {}, not to you (uid {me})", meta.uid()))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!("others may use it (mode {:o}); `chmod 700` it", meta.mode() & 0o777))
    } else {
        None
    };
    match problem {
        Some(why) => Err(RemoteError::UnsafeDir { path: dir.display().to_string(), why }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SshTarget {
        SshTarget {
            address: "10.0.0.5".into(),
            user: "admin".into(),
            alias: "i-0123".into(),
            known_hosts: "/home/u/.local/state/cgcloud/known_hosts".into(),
            control_dir: "/tmp/cgcloud-ssh-0".into(),
            extra: vec![],
        }
    }

    #[test]
    fn options_verify_host_keys() {
        let o = target().options(true).join(" ");
        assert!(o.contains("StrictHostKeyChecking=yes"));
        assert!(o.contains("HostKeyAlias=i-0123"));
        assert!(o.contains("BatchMode=yes"));
        assert!(o.ends_with("-l admin"));
        assert!(!target().options(false).join(" ").contains("BatchMode"));
    }

    /// ssh takes the first value of an option: the user's CGCLOUD_SSH_OPTS override cgcloud's
    /// defaults (multiplexing, timeouts), never the host-key verification.
    #[test]
    fn user_options_override_defaults_but_not_host_key_checks() {
        let mut t = target();
        t.extra = vec!["-o".into(), "ControlMaster=no".into(), "-o".into(), "StrictHostKeyChecking=no".into()];
        let o = t.options(false);
        let first = |name: &str| o.iter().find(|a| a.starts_with(&format!("{name}="))).cloned().unwrap();
        assert_eq!(first("ControlMaster"), "ControlMaster=no");
        assert_eq!(first("StrictHostKeyChecking"), "StrictHostKeyChecking=yes");
        assert_eq!(first("UserKnownHostsFile"), "UserKnownHostsFile=/home/u/.local/state/cgcloud/known_hosts");
    }

    #[test]
    fn rsync_remote_paths() {
        let args = target().rsync_args(&["-av".into(), ":foo".into(), ".".into()]);
        assert_eq!(args, vec!["-av", "10.0.0.5:foo", "."]);
        let shell = target().rsync_shell("-v");
        assert!(shell.starts_with("ssh -o HostKeyAlias=i-0123"));
        assert!(shell.ends_with(" -v"));
    }

    #[test]
    fn missing_programs_are_named_with_their_package() {
        assert!(require_programs(&["sh"], "to test").is_ok());
        let err = require_programs(&["sh", "no-such-ssh-xyz", "rsync-xyz"], "to wait for SSH").unwrap_err().to_string();
        assert!(err.starts_with("no-such-ssh-xyz, rsync-xyz not found on PATH"), "{err}");
        assert!(err.contains("to wait for SSH") && err.contains("apt-get install openssh-client"), "{err}");
    }

    #[test]
    fn private_dirs_must_be_private_and_ours() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ssh");
        private_dir(&dir).unwrap();
        private_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir(&dir).unwrap_err().to_string().contains("others may use it"));
        // Someone planted a symlink where the directory should be.
        let link = d.path().join("planted");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(private_dir(&link).unwrap_err().to_string().contains("not a directory"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
