//! Files inside a guest's tree, touched with the machine's privileges. A guest's root controls
//! every path in its own tree (and in images baked from it): a symlink it plants where the
//! controller later writes would redirect the machine's root to the machine's own files. So
//! the controller never resolves a guest path by name from the machine's root: it walks from a
//! directory descriptor of the guest's root, one component at a time, with `openat2` refusing
//! symlinks and magic links (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`),
//! and creates files with `O_EXCL | O_NOFOLLOW` in the directory it holds. It never runs a
//! program from the guest's tree either: device nodes are made with `mknodat` from here.
//!
//! A running guest is reached through its init's `/proc/PID` directory descriptor, which
//! names that one process even if the PID is reused: every later lookup through it fails once
//! the process is gone, so the descriptor cannot come to mean a process of the machine.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::io::Write as _;
use std::path::{Component, Path};

const DIR: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// An error about `what` (a path inside the guest, as the guest names it).
fn err(what: &str, e: Errno) -> std::io::Error {
    let why = match e {
        Errno::LOOP => "is a symlink (or crosses one); the local cloud does not follow a guest's symlinks".to_owned(),
        Errno::XDEV => "leaves the guest's tree".to_owned(),
        other => std::io::Error::from(other).to_string(),
    };
    std::io::Error::new(std::io::Error::from(e).kind(), format!("{what} in the guest: {why}"))
}

/// Opens a directory of the machine's own (trusted) tree, e.g. the mount point of a host's
/// disk under the state directory.
pub fn open_trusted_dir(path: &Path) -> std::io::Result<OwnedFd> {
    rustix::fs::open(path, DIR, Mode::empty()).map_err(|e| {
        std::io::Error::new(std::io::Error::from(e).kind(), format!("{}: {}", path.display(), std::io::Error::from(e)))
    })
}

/// Opens the directory `rel` (relative, no `..`) below the guest root `root`, refusing any
/// symlink on the way; with `create`, missing directories are made (root's, mode 0755).
pub fn open_dir(root: &OwnedFd, rel: &str, create: bool) -> std::io::Result<OwnedFd> {
    let mut fd = rustix::fs::openat2(root, ".", DIR, Mode::empty(), resolve()).map_err(|e| err("/", e))?;
    let mut walked = String::new();
    for c in Path::new(rel).components() {
        let Component::Normal(name) = c else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("'{rel}': not a plain relative path"),
            ));
        };
        walked.push('/');
        walked.push_str(&name.to_string_lossy());
        let next = match rustix::fs::openat2(&fd, name, DIR, Mode::empty(), resolve()) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(err(&walked, e)),
                }
                rustix::fs::openat2(&fd, name, DIR, Mode::empty(), resolve())
            }
            other => other,
        };
        fd = next.map_err(|e| err(&walked, e))?;
    }
    Ok(fd)
}

/// Replaces `name` in `dir` with a new regular file holding `contents`: whatever was there (a
/// symlink, a file, a device node) is removed, never followed or written through.
pub fn write_new(dir: &OwnedFd, name: &str, contents: &[u8], mode: u32) -> std::io::Result<()> {
    check_name(name)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(err(name, e)),
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| err(name, e))?;
    // The mode through the descriptor: the controller's umask must not narrow it.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| err(name, e))?;
    std::fs::File::from(fd).write_all(contents)
}

/// Makes `name` in `dir` the block device `major:minor` (mode 0660), replacing whatever was
/// there.
pub fn make_block_device(dir: &OwnedFd, name: &str, major: u32, minor: u32) -> std::io::Result<()> {
    check_name(name)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(err(name, e)),
    }
    let dev = rustix::fs::makedev(major, minor);
    rustix::fs::mknodat(dir, name, FileType::BlockDevice, Mode::from_raw_mode(0o660), dev).map_err(|e| err(name, e))?;
    // chmod by name would follow a symlink the guest swapped in meanwhile: open what was made
    // (not following), check it is our node, and change the mode of that very inode.
    let node = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| err(name, e))?;
    let st = rustix::fs::fstat(&node).map_err(|e| err(name, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::BlockDevice || st.st_rdev != dev {
        return Err(std::io::Error::other(format!("{name} in the guest was replaced while it was being made")));
    }
    rustix::fs::chmod(format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&node)), Mode::from_raw_mode(0o660))
        .map_err(|e| err(name, e))
}

/// Removes `name` from `dir` if it is a block device (a detached volume's node).
pub fn remove_block_device(dir: &OwnedFd, name: &str) -> std::io::Result<()> {
    check_name(name)?;
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| err(name, e))
        }
        Ok(_) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(err(name, e)),
    }
}

fn check_name(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("'{name}': not a file name")));
    }
    Ok(())
}

/// A running guest, as seen through its init process.
pub struct Guest {
    /// The guest's root directory (in the guest's mount namespace).
    pub root: OwnedFd,
}

/// Why a guest cannot be reached yet.
#[derive(Debug, PartialEq, Eq)]
pub enum NotReady {
    /// systemd-nspawn runs, but the guest's init has not started (nspawn is still setting up
    /// the guest's mounts and /dev): nothing done now would be what the guest sees.
    NoInit,
}

/// The guest run by the systemd-nspawn process `nspawn_pid`: its init is nspawn's child that
/// is PID 1 of its own PID namespace and no longer runs nspawn's program (it has exec'd the
/// guest's init, so nspawn's set-up of the guest's mounts and /dev is complete).
pub fn guest_of(nspawn_pid: u32) -> Result<Guest, NotReady> {
    let nspawn_exe = rustix::fs::stat(format!("/proc/{nspawn_pid}/exe")).map_err(|_| NotReady::NoInit)?;
    for child in children(nspawn_pid) {
        let Ok(proc) = rustix::fs::open(
            format!("/proc/{child}"),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        if !is_init_of(&proc, nspawn_pid) {
            continue;
        }
        // Follows the guest's exe link (a magic link to the inode the kernel runs).
        let Ok(exe) = rustix::fs::statat(&proc, "exe", AtFlags::empty()) else { continue };
        if (exe.st_dev, exe.st_ino) == (nspawn_exe.st_dev, nspawn_exe.st_ino) {
            return Err(NotReady::NoInit);
        }
        // Through the /proc/PID descriptor: if the process ended since, this fails.
        if let Ok(root) = rustix::fs::openat(&proc, "root", DIR, Mode::empty()) {
            return Ok(Guest { root });
        }
    }
    Err(NotReady::NoInit)
}

/// True if the process of `proc` (a /proc/PID descriptor) is a child of `parent` and PID 1 of
/// a PID namespace of its own.
fn is_init_of(proc: &impl AsFd, parent: u32) -> bool {
    let Ok(fd) = rustix::fs::openat(proc, "status", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) else {
        return false;
    };
    let Ok(status) = std::io::read_to_string(std::fs::File::from(fd)) else { return false };
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("");
    let nspid: Vec<&str> = field("NSpid:").split_whitespace().collect();
    field("PPid:") == parent.to_string() && nspid.len() >= 2 && nspid.last() == Some(&"1")
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};

    #[test]
    fn seeds_through_a_planted_symlink_are_refused() {
        let guest = tempfile::tempdir().unwrap();
        let machine = tempfile::tempdir().unwrap();
        // The guest made its seed directory a symlink to a directory of the machine.
        std::fs::create_dir_all(guest.path().join("var/lib/cloud/seed")).unwrap();
        std::os::unix::fs::symlink(machine.path(), guest.path().join("var/lib/cloud/seed/nocloud")).unwrap();
        let root = open_trusted_dir(guest.path()).unwrap();
        let e = open_dir(&root, "var/lib/cloud/seed/nocloud", true).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // An absolute symlink higher up, and a relative one climbing out, are refused too.
        std::fs::remove_file(guest.path().join("var/lib/cloud/seed/nocloud")).unwrap();
        std::fs::remove_dir_all(guest.path().join("var")).unwrap();
        std::os::unix::fs::symlink("/", guest.path().join("var")).unwrap();
        assert!(open_dir(&root, "var/lib", true).is_err());
        std::fs::remove_file(guest.path().join("var")).unwrap();
        std::os::unix::fs::symlink("../../..", guest.path().join("var")).unwrap();
        assert!(open_dir(&root, "var/lib", true).is_err());
        assert!(open_dir(&root, "../etc", true).is_err());
        assert_eq!(std::fs::read_dir(machine.path()).unwrap().count(), 0, "nothing was written on the machine");
    }

    #[test]
    fn a_planted_file_symlink_is_replaced_not_followed() {
        let guest = tempfile::tempdir().unwrap();
        let machine = tempfile::tempdir().unwrap();
        let victim = machine.path().join("shadow");
        std::fs::write(&victim, "machine's").unwrap();
        std::fs::create_dir_all(guest.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(&victim, guest.path().join("etc/hostname")).unwrap();
        let root = open_trusted_dir(guest.path()).unwrap();
        let etc = open_dir(&root, "etc", false).unwrap();
        write_new(&etc, "hostname", b"box\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "machine's");
        let written = guest.path().join("etc/hostname");
        assert!(std::fs::symlink_metadata(&written).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "box\n");
        assert_eq!(std::fs::metadata(&written).unwrap().permissions().mode() & 0o777, 0o644);
        // Missing directories are created, and names with a slash are refused.
        let seed = open_dir(&root, "var/lib/cloud/seed/nocloud", true).unwrap();
        write_new(&seed, "user-data", b"#cloud-config\n", 0o600).unwrap();
        assert!(write_new(&seed, "../x", b"", 0o600).is_err());
    }

    fn assert_root() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (mknod, PID namespaces), as the local cloud does"
        );
    }

    #[test]
    fn block_devices_are_made_in_place_of_anything_planted() {
        assert_root();
        let guest = tempfile::tempdir().unwrap();
        let machine = tempfile::tempdir().unwrap();
        let victim = machine.path().join("target");
        std::fs::write(&victim, "x").unwrap();
        std::fs::create_dir_all(guest.path().join("dev")).unwrap();
        std::os::unix::fs::symlink(&victim, guest.path().join("dev/xvdf")).unwrap();
        let root = open_trusted_dir(guest.path()).unwrap();
        let dev = open_dir(&root, "dev", false).unwrap();
        // 1:3 is /dev/null on every Linux machine.
        make_block_device(&dev, "xvdf", 1, 3).unwrap();
        let node = guest.path().join("dev/xvdf");
        let md = std::fs::symlink_metadata(&node).unwrap();
        assert!(md.file_type().is_block_device());
        assert_eq!(md.permissions().mode() & 0o777, 0o660);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "x");
        assert!(std::fs::symlink_metadata(&victim).unwrap().is_file());
        remove_block_device(&dev, "xvdf").unwrap();
        assert!(!node.exists());
    }

    /// `unshare --pid --fork` stands in for systemd-nspawn: its child is PID 1 of a new PID
    /// namespace, running another program. A process without such a child has no guest.
    #[test]
    fn a_guest_is_its_nspawn_child_that_runs_init() {
        assert_root();
        let mut lone = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert_eq!(guest_of(lone.id()).err(), Some(NotReady::NoInit));
        let mut ns = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sleep", "30"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let guest = loop {
            match guest_of(ns.id()) {
                Ok(g) => break g,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("no guest under unshare: {e:?}"),
            }
        };
        // The stand-in shares the machine's root: its root descriptor is the machine's /.
        let st = rustix::fs::fstat(&guest.root).unwrap();
        let slash = rustix::fs::stat("/").unwrap();
        assert_eq!((st.st_dev, st.st_ino), (slash.st_dev, slash.st_ino));
        for c in [&mut lone, &mut ns] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}
