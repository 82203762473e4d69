//! The few system calls the disk code shares: running a command for its output, a device's
//! filesystem type, and whether a path is a mount point.

/// Runs a program; its stdout, or an error naming the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
