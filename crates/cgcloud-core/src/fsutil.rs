//! Files and programs of the machine cgcloud runs on: replacing a file whole (readers see the
//! old content or the new, never half of either, and a crash leaves one of them), removing what
//! may already be gone, and finding programs on PATH. Used for the workstation's and the local
//! cloud's state files. The agent, which runs as root among files users control, has its own
//! (`safefs`), which also refuses to follow links.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Writes `contents` to `path` through a temporary file beside it (created with `mode`, so the
/// content is never readable by more than that), flushed to disk, then renamed over `path`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(name);
    remove_file_if_exists(&tmp)?;
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // The write's own error is the one to report; a temporary file left behind is removed
        // by the next write.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Which of `programs` are not executable files on PATH (or in `also_in`, directories PATH may
/// lack, such as `/usr/sbin` for a user's shell).
pub fn missing_programs(programs: &[&str], also_in: &[&str]) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<std::path::PathBuf> =
        std::env::split_paths(&path).chain(also_in.iter().map(std::path::PathBuf::from)).collect();
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    programs.iter().filter(|p| !dirs.iter().any(|d| executable(&d.join(p)))).map(|p| (*p).to_owned()).collect()
}

/// Removes a file; one that is not there counts as removed.
pub fn remove_file_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes a directory and everything in it; one that is not there counts as removed.
pub fn remove_dir_all_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_whole_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
    }
}
