//! One host = one running instance: an overlayfs disk (read-only image layers plus the
//! instance's own upper directory), a network namespace with the instance's private IP, and
//! systemd booted by systemd-nspawn with a cloud-init NoCloud seed.

use crate::sys::{pid_matches, run, stop_process};
use crate::{net, Error};
use cgcloud_core::fsutil::remove_file_if_exists;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the controller knows about an instance from moto.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: String,
    pub ip: String,
    pub hostname: String,
    pub fqdn: String,
    pub image_id: String,
}

/// Stored beside each instance's disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskMeta {
    /// Lower layers, top first; the last one is a base image's root filesystem.
    pub lowers: Vec<PathBuf>,
    pub ip: String,
    pub hostname: String,
}

pub struct Host<'a> {
    pub dir: &'a Path,
    pub id: &'a str,
}

impl Host<'_> {
    pub fn path(&self) -> PathBuf {
        self.dir.join("instances").join(self.id)
    }
    fn root(&self) -> PathBuf {
        self.path().join("root")
    }
    pub fn upper(&self) -> PathBuf {
        self.path().join("upper")
    }
    fn pid_file(&self) -> PathBuf {
        self.path().join("nspawn.pid")
    }
    pub fn console(&self) -> PathBuf {
        self.path().join("console.log")
    }
    fn meta_file(&self) -> PathBuf {
        self.path().join("disk.json")
    }

    pub fn meta(&self) -> Option<DiskMeta> {
        serde_json::from_str(&std::fs::read_to_string(self.meta_file()).ok()?).ok()
    }

    pub fn write_meta(&self, m: &DiskMeta) -> Result<(), Error> {
        let f = self.meta_file();
        let text = serde_json::to_string_pretty(m).unwrap_or_default();
        cgcloud_core::fsutil::write_atomic(&f, text.as_bytes(), 0o644).map_err(|e| Error::io(&f, e))
    }

    /// The PID of the host's systemd-nspawn, if it runs.
    pub fn pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()?;
        pid_matches(pid, &format!("--machine={}", self.id)).then_some(pid)
    }

    /// The host's systemd-nspawn (or the shell that starts it) found by its command line, when
    /// its PID file does not name it: recorded again, so that it is stopped and never booted a
    /// second time beside itself (the second would fail on the running one's lock, forever).
    pub fn adopt(&self) -> Option<u32> {
        let root = self.root();
        let pid = *crate::sys::pids_matching(&[&format!("--machine={} ", self.id), &format!("-D {} ", root.display())])
            .first()?;
        std::fs::write(self.pid_file(), pid.to_string()).ok()?;
        Some(pid)
    }

    /// Whether its disk is mounted, as it is from a boot until the shutdown.
    pub fn is_mounted(&self) -> bool {
        crate::sys::is_mounted(&self.root())
    }

    pub fn exists(&self) -> bool {
        self.meta_file().exists()
    }

    /// Creates the disk for a new instance on top of `lowers`.
    pub fn create_disk(&self, spec: &InstanceSpec, lowers: Vec<PathBuf>) -> Result<(), Error> {
        for d in [self.upper(), self.path().join("work"), self.root()] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        self.write_meta(&DiskMeta { lowers, ip: spec.ip.clone(), hostname: spec.hostname.clone() })
    }

    async fn mount(&self, meta: &DiskMeta) -> Result<(), Error> {
        let root = self.root();
        if crate::sys::is_mounted(&root) {
            return Ok(());
        }
        let work = self.path().join("work");
        std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
        std::fs::create_dir_all(self.upper()).map_err(|e| Error::io(&self.upper(), e))?;
        let lower = meta.lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
        let opts = format!("lowerdir={lower},upperdir={},workdir={}", self.upper().display(), work.display());
        run("mount", &["-t", "overlay", "overlay", "-o", &opts, &root.to_string_lossy()]).await?;
        Ok(())
    }

    /// Writes the NoCloud seed that makes cloud-init treat this as instance `spec.id`. The disk
    /// holds layers that guests made (baked images): every write goes through
    /// [`crate::guestfs`], so a symlink planted in an image is refused or replaced, never
    /// followed onto the machine.
    pub fn seed(&self, spec: &InstanceSpec, public_keys: &[String], user_data: &str) -> Result<(), Error> {
        let root_path = self.root();
        let root = crate::guestfs::open_trusted_dir(&root_path).map_err(|e| Error::io(&root_path, e))?;
        // The seed is root-only: user data may hold a host key, not for the box's other users.
        // Failing here is the image's doing (what its layers hold), not the machine's.
        let unrunnable = |e: std::io::Error| Error::Unrunnable(format!("cannot seed the instance: {e}"));
        let write = |dir: &str, name: &str, contents: &str, mode: u32| -> Result<(), Error> {
            let d = crate::guestfs::open_dir(&root, dir, true).map_err(unrunnable)?;
            crate::guestfs::write_new(&d, name, contents.as_bytes(), mode).map_err(unrunnable)
        };
        let meta = serde_json::json!({
            "instance-id": spec.id,
            "local-hostname": spec.hostname,
            "public-keys": public_keys,
        });
        let seed = "var/lib/cloud/seed/nocloud";
        write(seed, "meta-data", &serde_json::to_string_pretty(&meta).unwrap_or_default(), 0o600)?;
        let ud = if user_data.trim().is_empty() { "#cloud-config\n{}\n" } else { user_data };
        write(seed, "user-data", ud, 0o600)?;
        write("etc", "hostname", &format!("{}\n", spec.hostname), 0o644)?;
        // A machine id baked into an image layer must not be shared by its instances.
        write("etc", "machine-id", "", 0o444)?;
        Ok(())
    }

    /// Mounts the disk, wires up the network and boots. `seed` runs after mounting, for a
    /// first boot.
    /// `devices` are (host device, path in the host) pairs bound in before init starts.
    pub async fn boot(
        &self,
        devices: &[(String, String)],
        seed: impl FnOnce(&Self) -> Result<(), Error>,
    ) -> Result<u32, Error> {
        let meta = self.meta().ok_or_else(|| Error::Controller(format!("instance {} has no disk", self.id)))?;
        self.mount(&meta).await?;
        seed(self)?;
        net::host_net_up(self.id, &meta.ip).await?;
        let console = std::fs::File::create(self.console()).map_err(|e| Error::io(&self.console(), e))?;
        let console2 = console.try_clone().map_err(|e| Error::io(&self.console(), e))?;
        // Each host gets cgroups of its own: nspawn with --keep-unit puts the container's
        // cgroups below its own, and hosts sharing one parent trip over each other's units.
        let cgroups = cgroup_dirs(self.id);
        for dir in &cgroups {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        // Only the devices a host needs, and the disks it was given: its root has CAP_MKNOD, and
        // systemd-nspawn's own policy lets it open every loop device, i.e. other hosts' volumes
        // and instance-store disks.
        let block: Vec<String> = devices.iter().filter_map(|(dev, _)| device_numbers(dev)).collect();
        if !restrict_devices(self.id, &block)? {
            crate::controller::log(format!(
                "{}: not confined to its own devices: this machine has no cgroup v1 devices controller",
                self.id
            ));
        }
        let join = cgroups
            .iter()
            .map(|d| format!("echo $$ > '{}/cgroup.procs'", d.display()))
            .collect::<Vec<_>>()
            .join(" && ");
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} {}systemd-nspawn \"$@\"",
                if join.is_empty() { String::new() } else { format!("{join} &&") },
                own_boot_time()
            ))
            .arg("sh")
            .args([
                "-q",
                "-D",
                &self.root().to_string_lossy(),
                "--boot",
                "--register=no",
                "--keep-unit",
                &format!("--machine={}", self.id),
                &format!("--hostname={}", meta.hostname),
                &format!("--network-namespace-path=/run/netns/{}", net::netns(self.id)),
                // Root on an EC2 instance administers its own network (a box's base role loads an
                // nftables rule that keeps IMDS for root); here that is the host's own network
                // namespace. What leaves it is still checked on the machine's side (ebtables
                // per veth, the security groups), where the guest cannot reach.
                "--capability=CAP_NET_ADMIN",
                "--resolv-conf=off",
                "--link-journal=no",
                "--console=read-only",
            ])
            .args(devices.iter().map(|(dev, path)| format!("--bind={dev}:{path}")))
            // An EC2 instance has /dev/fuse (sshfs, e.g. a cluster's shared directory); a
            // container has it only when bound in.
            .args(Path::new("/dev/fuse").exists().then_some("--bind=/dev/fuse"))
            .stdin(std::process::Stdio::null())
            .stdout(console)
            .stderr(console2)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Command { command: "systemd-nspawn".into(), detail: e.to_string() })?;
        let pid = child.id().ok_or_else(|| Error::Controller("systemd-nspawn exited at once".into()))?;
        std::fs::write(self.pid_file(), pid.to_string()).map_err(|e| Error::io(&self.pid_file(), e))?;
        // Until then [`Host::pid`] would not know the child for the host.
        crate::sys::wait_exec(pid, &format!("--machine={}", self.id)).await;
        // The child is reaped by tokio when it exits; hosts outlive controller restarts.
        drop(child);
        Ok(pid)
    }

    /// Powers the host off cleanly (keeping its disk), then unmounts and removes its network.
    pub async fn shutdown(&self) {
        if let Some(pid) = self.pid().or_else(|| self.adopt()) {
            stop_process(pid, &format!("--machine={}", self.id), 30).await;
        }
        if let Err(e) = remove_file_if_exists(&self.pid_file()) {
            tracing::warn!("{}: cannot remove {}: {e}", self.id, self.pid_file().display());
        }
        crate::umount_all(&self.root()).await;
        net::host_net_down(self.id).await;
        for dir in cgroup_dirs(self.id) {
            remove_cgroup(&dir);
        }
    }

    /// Shuts down and deletes the disk.
    pub async fn destroy(&self) -> Result<(), Error> {
        self.shutdown().await;
        crate::volumes::drop_instance_store(self.dir, self.id).await;
        let p = self.path();
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }
}

/// The cgroup directories of a host, one per mounted hierarchy that systemd uses, and those of
/// the v1 `devices` and `freezer` controllers (what the host may open; freezing it while its
/// disk is copied).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut roots = Vec::new();
    if base.join("cgroup.controllers").exists() {
        roots.push(base.to_path_buf());
    } else {
        for h in ["systemd", "unified", "devices", "freezer"] {
            if base.join(h).join("cgroup.procs").exists() {
                roots.push(base.join(h));
            }
        }
    }
    roots.into_iter().map(|r| r.join("cgcloud-local").join(id)).collect()
}

/// The v1 devices cgroup of a host, if this machine has that controller.
fn devices_dir(id: &str) -> Option<PathBuf> {
    let d = Path::new("/sys/fs/cgroup/devices");
    d.join("devices.allow").exists().then(|| d.join("cgcloud-local").join(id))
}

/// The character devices every host has: null, zero, full, random, urandom, tty, console,
/// The command prefix that gives a host a boot time of its own, as a VM has: a time namespace
/// whose boot-time clock starts at zero (`uptime`, `sysinfo`). Slurm, for one, takes a
/// powered-up node for booted only if its boot time is after the second it asked for it, and a
/// container otherwise reports the machine's boot; hence also the second's wait, which a VM's
/// boot exceeds many times over. Empty where `unshare` has no time namespaces (util-linux
/// before 2.36).
fn own_boot_time() -> &'static str {
    static HAS_TIME_NS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let has = *HAS_TIME_NS.get_or_init(|| {
        std::process::Command::new("unshare")
            .args(["--time", "--boottime", "0", "true"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if has {
        "sleep 1 && exec unshare --time --boottime -$(cut -d. -f1 /proc/uptime) "
    } else {
        "exec "
    }
}

/// ptmx and the pseudo-terminals, fuse and tun (systemd-nspawn's set, and /dev/fuse).
const HOST_CHAR_DEVICES: &[&str] =
    &["1:3", "1:5", "1:7", "1:8", "1:9", "5:0", "5:1", "5:2", "136:*", "10:229", "10:200"];

/// `major:minor` of a block device node on the machine (e.g. a loop device).
pub fn device_numbers(dev: &str) -> Option<String> {
    let name = dev.strip_prefix("/dev/")?;
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return None;
    }
    Some(std::fs::read_to_string(format!("/sys/block/{name}/dev")).ok()?.trim().to_owned())
}

/// True if this machine can confine hosts to their own devices (the cgroup v1 devices
/// controller; on a pure cgroup v2 machine that takes a BPF device program, which the local
/// cloud does not load yet).
pub fn can_restrict_devices() -> bool {
    Path::new("/sys/fs/cgroup/devices/devices.allow").exists()
}

/// Denies the host every device but [`HOST_CHAR_DEVICES`] and the block devices `block`
/// (`major:minor`). Returns false where the machine cannot (see [`can_restrict_devices`]).
fn restrict_devices(id: &str, block: &[String]) -> Result<bool, Error> {
    let Some(dir) = devices_dir(id) else { return Ok(false) };
    let write = |file: &str, line: &str| {
        let p = dir.join(file);
        std::fs::write(&p, line).map_err(|e| Error::io(&p, e))
    };
    write("devices.deny", "a")?;
    for c in HOST_CHAR_DEVICES {
        write("devices.allow", &format!("c {c} rwm"))?;
    }
    for b in block {
        write("devices.allow", &format!("b {b} rw"))?;
    }
    Ok(true)
}

/// Lets (or no longer lets) a running host open block device `major:minor` (an attached
/// volume's loop device).
pub fn allow_block_device(id: &str, majmin: &str, allow: bool) -> Result<(), Error> {
    let Some(dir) = devices_dir(id) else { return Ok(()) };
    let p = dir.join(if allow { "devices.allow" } else { "devices.deny" });
    std::fs::write(&p, format!("b {majmin} rw")).map_err(|e| Error::io(&p, e))
}

/// Freezes (or thaws) every process of a running host, so that nothing in it changes its
/// disk while the machine reads it.
pub async fn freeze(id: &str, frozen: bool) -> Result<(), Error> {
    let v2 = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|b| Path::new(b).join("cgcloud-local").join(id).join("cgroup.freeze"))
        .find(|p| p.exists());
    if let Some(p) = v2 {
        std::fs::write(&p, if frozen { "1" } else { "0" }).map_err(|e| Error::io(&p, e))?;
        let events = p.with_file_name("cgroup.events");
        for _ in 0..100 {
            let state = std::fs::read_to_string(&events).unwrap_or_default();
            if state.lines().any(|l| l == if frozen { "frozen 1" } else { "frozen 0" }) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        return Err(Error::Controller(format!("{id}: the host did not {}", if frozen { "freeze" } else { "thaw" })));
    }
    let p = Path::new("/sys/fs/cgroup/freezer/cgcloud-local").join(id).join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    std::fs::write(&p, want).map_err(|e| Error::io(&p, e))?;
    for _ in 0..100 {
        if std::fs::read_to_string(&p).unwrap_or_default().trim() == want {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(Error::Controller(format!("{id}: the host did not {}", if frozen { "freeze" } else { "thaw" })))
}

/// Removes an (empty) cgroup and its children, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    // Best effort: a cgroup a process still holds cannot go, and the next start reuses it.
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    /// A process with a host's command line (`-D ROOT … --machine=ID`), ended on drop.
    struct FakeHost(std::process::Child);

    impl FakeHost {
        fn start(dir: &Path, id: &str, script: &str) -> FakeHost {
            let root = dir.join("instances").join(id).join("root");
            let child = std::process::Command::new("sh")
                .args(["-c", script, "sh", "-q", "-D", &root.to_string_lossy(), "--boot"])
                .arg(format!("--machine={id}"))
                .process_group(0)
                .spawn()
                .unwrap();
            // As `boot` does.
            let marker = format!("--machine={id}");
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            assert!(rt.block_on(crate::sys::wait_exec(child.id(), &marker)));
            FakeHost(child)
        }
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_host_whose_pid_file_names_another_process_is_found_and_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host { dir: dir.path(), id: "i-0123456789abcdef0" };
        std::fs::create_dir_all(host.path()).unwrap();
        let running = FakeHost::start(dir.path(), host.id, "sleep 30");
        // A later, failed boot wrote its own PID (here: one that has exited).
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        std::fs::write(host.pid_file(), gone_pid.to_string()).unwrap();
        assert_eq!(host.pid(), None);
        // A host of another instance whose id starts the same is not taken for it.
        let _other = FakeHost::start(dir.path(), "i-0123456789abcdef01", "sleep 30");
        assert_eq!(host.adopt(), Some(running.0.id()));
        assert_eq!(host.pid(), Some(running.0.id()), "recorded in the PID file");
    }

    #[test]
    fn a_guest_process_dressed_as_a_host_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host { dir: dir.path(), id: "i-0aaaabbbbccccdddd" };
        std::fs::create_dir_all(host.path()).unwrap();
        // As a guest's root could: a process in a PID namespace of its own (as every guest's
        // are) whose command line reads like this instance's host. The arguments come through
        // the environment, so that `unshare`, which stays in ours, does not carry them.
        let mut guest = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "sh", "-c", r#"exec sh -c 'sleep 30' sh -q -D "$D" --boot "$M""#])
            .env("D", host.root())
            .env("M", format!("--machine={}", host.id))
            .process_group(0)
            .spawn()
            .unwrap();
        let marker = format!("--machine={} ", host.id);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let dressed = loop {
            let found: Vec<u32> = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|pid: &u32| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&marker))
                })
                .collect();
            if let Some(&pid) = found.first() {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "the dressed-up process never started");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        std::fs::write(host.pid_file(), dressed.to_string()).unwrap();
        assert_eq!(host.pid(), None, "a PID file naming it does not make it the host");
        assert_eq!(host.adopt(), None, "nor does its command line");
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{}", guest.id())]).status();
        let _ = guest.wait();
    }

    #[test]
    fn a_host_is_still_its_own_while_it_execs() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host { dir: dir.path(), id: "i-0fedcba987654321f" };
        std::fs::create_dir_all(host.path()).unwrap();
        // As a host starts: a shell that execs, again and again (here: some hundred times, to
        // meet the instants in an exec when /proc shows an empty or half command line), keeping
        // its arguments.
        let script = r#"export N=$((${N:-0}+1)); [ $N -lt 400 ] && exec sh -c "$(cat /proc/$$/cmdline 2>/dev/null | tr '\0' '\n' | sed -n 3p)" "$0" "$@"; sleep 30"#;
        let h = FakeHost::start(dir.path(), host.id, script);
        std::fs::write(host.pid_file(), h.0.id().to_string()).unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(800) {
            assert_eq!(host.pid(), Some(h.0.id()), "lost the host at {:?}", start.elapsed());
        }
    }
}
