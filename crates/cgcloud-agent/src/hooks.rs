//! Roles' hooks: programs the agent runs as root when something happens (a spot interruption
//! notice, an elastic cluster's bounds changing or a launch failing). Each runs without a shell,
//! with its arguments and environment as given, for a bounded time. Because it runs as root, it
//! must be a regular file owned by root and writable by nobody else; anything else is refused,
//! not run.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

/// Why a hook was not run, or failed. Each names the hook.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    #[error("{path} is owned by uid {uid}, not root")]
    NotRoots { path: String, uid: u32 },
    #[error("{path} is writable by group or others (mode {mode:o})")]
    Writable { path: String, mode: u32 },
    #[error("{path} is not executable")]
    NotExecutable { path: String },
    #[error("{path} exited with {status}")]
    Failed { path: String, status: std::process::ExitStatus },
    #[error("{path} took longer than {secs} s")]
    TooLong { path: String, secs: u64 },
}

/// Whether `path` may be run as root: a regular file (not a link), owned by root (or by the
/// agent's own user, for tests), executable, and not writable by group or others.
pub fn hook_is_safe(path: &Path) -> Result<(), HookError> {
    let p = || path.display().to_string();
    let meta = std::fs::symlink_metadata(path).map_err(|error| HookError::Io { path: p(), error })?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_file() {
        return Err(HookError::NotRegular { path: p() });
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Err(HookError::NotRoots { path: p(), uid: meta.uid() });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(HookError::Writable { path: p(), mode: meta.mode() & 0o7777 });
    }
    if meta.mode() & 0o100 == 0 {
        return Err(HookError::NotExecutable { path: p() });
    }
    Ok(())
}

/// Runs `hook` with `args` and `env` (added to the agent's), for at most `timeout`.
pub fn run(hook: &Path, args: &[&str], env: &[(&str, String)], timeout: Duration) -> Result<(), HookError> {
    hook_is_safe(hook)?;
    let path = || hook.display().to_string();
    let mut child = std::process::Command::new(hook)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|error| HookError::Io { path: path(), error })?;
    match crate::sys::wait_timeout(&mut child, timeout, Duration::from_millis(100)) {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(HookError::Failed { path: path(), status }),
        Ok(None) => Err(HookError::TooLong { path: path(), secs: timeout.as_secs() }),
        Err(error) => Err(HookError::Io { path: path(), error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_hook_gets_its_arguments_and_environment_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let (hook, out) = (dir.path().join("hook"), dir.path().join("out"));
        std::fs::write(&hook, format!("#!/bin/sh\nprintf '%s|' \"$@\" \"$X\" > {}\n", out.display())).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        run(&hook, &["down", "w[1-2]", "no capacity; $(reboot) `id`"], &[("X", "a b".into())], Duration::from_secs(10))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "down|w[1-2]|no capacity; $(reboot) `id`|a b|");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(matches!(run(&hook, &[], &[], Duration::from_secs(10)), Err(HookError::Writable { .. })));
    }

    #[test]
    fn a_hook_that_runs_too_long_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook");
        std::fs::write(&hook, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = run(&hook, &[], &[], Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, HookError::TooLong { .. }), "{e}");
    }
}
