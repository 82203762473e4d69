//! File writes by a root agent into directories that other users may control. Every writer of
//! the agent goes through [`write_atomic`]: the path is walked one component at a time from
//! `/`, and a symlink is followed only where nobody but root could have put it (a directory
//! owned by root and writable by no one else). Inside any other directory (a user's home,
//! `~/.ssh`, `/tmp`) a symlink is refused, so `~/.ssh -> /etc` or a planted
//! `.authorized_keys.cgcloud-tmp -> /etc/shadow` cannot redirect a write. The new contents go
//! to a fresh temporary file (`O_CREAT|O_EXCL|O_NOFOLLOW`), get their owner and mode through
//! the open file descriptor, and are renamed over the target within the same directory
//! descriptor: a reader never sees a partial file, and the rename replaces a symlink instead
//! of following it.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path};

/// Symlinks followed in trusted directories before a path is refused, as the kernel's limit.
const MAX_HOPS: u32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum SafeError {
    #[error(
        "{path}: {component} is a symlink in a directory that a user other than root can change; refusing to follow it"
    )]
    UntrustedSymlink { path: String, component: String },
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    #[error("{path}: owned by uid {found}, expected uid {expected} or root")]
    WrongOwner { path: String, found: u32, expected: u32 },
    #[error("{path}: owned by uid {found}, not by uid {expected}; refusing to read it")]
    NotOwnedBy { path: String, found: u32, expected: u32 },
    #[error("{path}: has {links} hard links, so it may be another file under a second name; refusing to read it")]
    HardLinked { path: String, links: u64 },
    #[error("{path}: too many symlinks")]
    TooManyLinks { path: String },
    #[error("{path}: '..' in a directory that a user other than root can change")]
    DotDot { path: String },
    #[error("{path}: larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path, e: impl Into<std::io::Error>) -> SafeError {
    SafeError::Io { path: path.display().to_string(), source: e.into() }
}

/// Owner, group and mode of a file the agent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Attrs {
    pub const fn root(mode: u32) -> Attrs {
        Attrs { uid: 0, gid: 0, mode }
    }
}

/// True if nobody but root can change the directory's entries.
fn trusted(dir: &OwnedFd) -> Result<bool, Errno> {
    let st = rustix::fs::fstat(dir)?;
    Ok(st.st_uid == 0 && st.st_mode & 0o022 == 0)
}

/// Opens the directory `path` (absolute), following symlinks only inside trusted directories.
/// With `create`, missing directories are made, owned by root with mode 0755.
pub fn open_dir(path: &Path, create: bool) -> Result<OwnedFd, SafeError> {
    if !path.is_absolute() {
        return Err(io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an absolute path")));
    }
    let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let root = || rustix::fs::openat(CWD, "/", dir_flags, Mode::empty()).map_err(|e| io(path, e));
    let mut fd = root()?;
    let mut queue: std::collections::VecDeque<OsString> = components(path).into();
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        if c == "/" {
            fd = root()?;
            continue;
        }
        let is_trusted = trusted(&fd).map_err(|e| io(path, e))?;
        if c == ".." && !is_trusted {
            return Err(SafeError::DotDot { path: path.display().to_string() });
        }
        match rustix::fs::openat(&fd, c.as_os_str(), dir_flags, Mode::empty()) {
            Ok(next) => fd = next,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&fd, c.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io(path, e)),
                }
                let next = rustix::fs::openat(&fd, c.as_os_str(), dir_flags, Mode::empty()).map_err(|e| io(path, e))?;
                // Only a directory this walk made gets root's attributes (one planted between
                // the mkdir and the open is someone else's, and stays untrusted).
                if owner(&next) == Some(process_ids().0) {
                    set_attrs(&next, Attrs::root(0o755)).map_err(|e| io(path, e))?;
                }
                fd = next;
            }
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                let st = rustix::fs::statat(&fd, c.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io(path, e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                    return Err(io(path, e));
                }
                if !is_trusted || st.st_uid != 0 {
                    return Err(SafeError::UntrustedSymlink {
                        path: path.display().to_string(),
                        component: c.to_string_lossy().into_owned(),
                    });
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(SafeError::TooManyLinks { path: path.display().to_string() });
                }
                let target = rustix::fs::readlinkat(&fd, c.as_os_str(), Vec::new()).map_err(|e| io(path, e))?;
                let target = Path::new(std::ffi::OsStr::from_bytes(target.as_bytes())).to_path_buf();
                for t in components(&target).into_iter().rev() {
                    queue.push_front(t);
                }
            }
            Err(e) => return Err(io(path, e)),
        }
    }
    Ok(fd)
}

fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir => Some(OsString::from("/")),
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Owner, group and permission bits of `path` itself (a symlink is not followed), if it exists.
pub fn stat(path: &Path) -> Option<Attrs> {
    let (dir, name) = split(path).ok()?;
    let dir = open_dir(dir, false).ok()?;
    let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    Some(Attrs { uid: st.st_uid, gid: st.st_gid, mode: st.st_mode & 0o7777 })
}

/// Makes the directory `path` (and missing parents, root-owned 0755) and gives it `attrs`,
/// through its file descriptor.
pub fn make_dir(path: &Path, attrs: Attrs) -> Result<(), SafeError> {
    let fd = open_dir(path, true)?;
    set_attrs(&fd, attrs).map_err(|e| io(path, e))
}

fn set_attrs(fd: &OwnedFd, a: Attrs) -> Result<(), Errno> {
    let st = rustix::fs::fstat(fd)?;
    if st.st_uid != a.uid || st.st_gid != a.gid {
        rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(a.uid)), Some(rustix::fs::Gid::from_raw(a.gid)))?;
    }
    // After chown, which clears set-id bits.
    rustix::fs::fchmod(fd, Mode::from_raw_mode(a.mode))
}

fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr), SafeError> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))),
    }
}

/// Reads the regular file at `path` without following a symlink in its last component (nor
/// untrusted ones before it); `None` if it does not exist. Never blocks on a FIFO. A file with
/// more than one hard link is refused (see [`read_in`]); its owner is not checked.
pub fn read(path: &Path, max: u64) -> Result<Option<Vec<u8>>, SafeError> {
    let (dir, name) = split(path)?;
    let dir = match open_dir(dir, false) {
        Ok(d) => d,
        Err(SafeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    read_in(&dir, name, path, max, None)
}

/// Reads `name` in `dir` as [`read`] does; with `owner`, only a file that uid owns.
///
/// O_NOFOLLOW stops symlinks but not hard links: where `fs.protected_hardlinks` is off, a user
/// can link `/etc/shadow` into a directory of theirs under the name root reads (e.g.
/// `authorized_keys`), and what root read from it ends up in a file the user can read. Such a
/// file has two links, or, once the original name was replaced (shadow is rewritten by rename),
/// one link and root as its owner: hence both checks, on the open file.
pub fn read_in(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    path: &Path,
    max: u64,
    owner: Option<u32>,
) -> Result<Option<Vec<u8>>, SafeError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => {
            return Err(SafeError::UntrustedSymlink {
                path: path.display().to_string(),
                component: name.to_string_lossy().into_owned(),
            })
        }
        Err(e) => return Err(io(path, e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io(path, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(SafeError::NotRegular { path: path.display().to_string() });
    }
    if st.st_nlink > 1 {
        return Err(SafeError::HardLinked { path: path.display().to_string(), links: st.st_nlink as u64 });
    }
    if let Some(expected) = owner.filter(|uid| *uid != st.st_uid) {
        return Err(SafeError::NotOwnedBy { path: path.display().to_string(), found: st.st_uid, expected });
    }
    if st.st_size as u64 > max {
        return Err(SafeError::TooLarge { path: path.display().to_string(), max });
    }
    let mut data = Vec::new();
    std::fs::File::from(fd).take(max + 1).read_to_end(&mut data).map_err(|e| io(path, e))?;
    if data.len() as u64 > max {
        return Err(SafeError::TooLarge { path: path.display().to_string(), max });
    }
    Ok(Some(data))
}

/// Replaces `path` with `content`, owned and moded as `attrs`, atomically. Missing parent
/// directories are created (root-owned, 0755).
pub fn write_atomic(path: &Path, content: &[u8], attrs: Attrs) -> Result<(), SafeError> {
    let (dir, name) = split(path)?;
    let dir = open_dir(dir, true)?;
    write_in(&dir, name, path, content, attrs)
}

/// Replaces `name` in the open directory `dir` as [`write_atomic`] does.
pub fn write_in(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    path: &Path,
    content: &[u8],
    attrs: Attrs,
) -> Result<(), SafeError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // A fresh random name: an entry planted under a predictable name cannot be reused.
    let (tmp_name, fd) = loop {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".cgcloud-{:016x}", random()));
        match rustix::fs::openat(dir, tmp.as_os_str(), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => break (tmp, fd),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(io(path, e)),
        }
    };
    let cleanup = |e: SafeError| {
        // Best effort: the write failed already and `e` says why; a temporary file left
        // behind holds nothing the target did not, and has a name nobody else uses.
        let _ = rustix::fs::unlinkat(dir, tmp_name.as_os_str(), AtFlags::empty());
        e
    };
    set_attrs(&fd, attrs).map_err(|e| cleanup(io(path, e)))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(content).and_then(|()| f.sync_all()).map_err(|e| cleanup(io(path, e)))?;
    rustix::fs::renameat(dir, tmp_name.as_os_str(), dir, name).map_err(|e| cleanup(io(path, e)))?;
    Ok(())
}

/// Opens (creating if missing) the directory `name` in `parent`, which must not be a symlink
/// and must be owned by `attrs.uid` or root; a new one gets `attrs`.
pub fn own_dir(parent: &OwnedFd, name: &str, path: &Path, attrs: Attrs) -> Result<OwnedFd, SafeError> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let created = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(io(path, e)),
    };
    let fd = match rustix::fs::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return Err(SafeError::UntrustedSymlink { path: path.display().to_string(), component: name.to_owned() })
        }
        Err(e) => return Err(io(path, e)),
    };
    if created {
        set_attrs(&fd, attrs).map_err(|e| io(path, e))?;
    } else {
        let uid = rustix::fs::fstat(&fd).map_err(|e| io(path, e))?.st_uid;
        if uid != attrs.uid && uid != 0 {
            return Err(SafeError::WrongOwner { path: path.display().to_string(), found: uid, expected: attrs.uid });
        }
    }
    Ok(fd)
}

/// The owner of an open directory.
pub fn owner(fd: &impl AsFd) -> Option<u32> {
    rustix::fs::fstat(fd).ok().map(|s| s.st_uid)
}

/// This process's effective uid and gid (the owner of `/proc/self`): the owner of what the
/// agent writes unless told otherwise (root, on a box).
pub fn process_ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").map(|m| (m.uid(), m.gid())).unwrap_or((0, 0))
}

fn random() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (t as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt as _, PermissionsExt as _};

    fn me() -> Attrs {
        let m = std::fs::metadata("/proc/self").unwrap();
        Attrs { uid: m.uid(), gid: m.gid(), mode: 0o600 }
    }

    #[test]
    fn writes_atomically_with_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/file");
        write_atomic(&p, b"one\n", me()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one\n");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        write_atomic(&p, b"two\n", Attrs { mode: 0o640, ..me() }).unwrap();
        assert_eq!(read(&p, 100).unwrap().unwrap(), b"two\n");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
        assert!(read(&d.path().join("missing"), 10).unwrap().is_none());
        assert!(matches!(read(&p, 2), Err(SafeError::TooLarge { .. })));
    }

    #[test]
    fn symlinks_in_untrusted_directories_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "secret\n").unwrap();
        let home = d.path().join("home");
        std::fs::create_dir(&home).unwrap();
        // Writable by others: untrusted even when the tests run as root.
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
        // The last component a symlink: replaced, never written through.
        symlink(&victim, home.join("authorized_keys")).unwrap();
        assert!(matches!(read(&home.join("authorized_keys"), 100), Err(SafeError::UntrustedSymlink { .. })));
        write_atomic(&home.join("authorized_keys"), b"key\n", me()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
        assert!(!std::fs::symlink_metadata(home.join("authorized_keys")).unwrap().file_type().is_symlink());
        // A directory on the way a symlink: refused.
        symlink(d.path().join("elsewhere"), home.join(".ssh")).unwrap();
        std::fs::create_dir(d.path().join("elsewhere")).unwrap();
        let err = write_atomic(&home.join(".ssh/authorized_keys"), b"key\n", me()).unwrap_err();
        assert!(matches!(err, SafeError::UntrustedSymlink { ref component, .. } if component == ".ssh"), "{err}");
        assert!(std::fs::read_dir(d.path().join("elsewhere")).unwrap().next().is_none());
        assert!(matches!(
            own_dir(&open_dir(&home, false).unwrap(), ".ssh", &home, me()),
            Err(SafeError::UntrustedSymlink { .. })
        ));
        // '..' out of an untrusted directory: refused.
        assert!(matches!(write_atomic(&home.join("../x"), b"", me()), Err(SafeError::DotDot { .. })));
    }

    #[test]
    fn fifos_and_directories_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(read(&fifo, 100), Err(SafeError::NotRegular { .. })));
        assert!(matches!(read(d.path(), 100), Err(SafeError::NotRegular { .. }) | Err(SafeError::Io { .. })));
    }

    /// The attack of a user on the root agent where `fs.protected_hardlinks` is off: a file of
    /// root's hard-linked into the user's directory under the name the agent reads.
    #[test]
    fn hard_links_and_other_owners_are_not_read() {
        use std::os::unix::fs::chown;
        let d = tempfile::tempdir().unwrap();
        let shadow = d.path().join("shadow");
        std::fs::write(&shadow, "root:$y$secret:20000:0:99999:7:::\n").unwrap();
        let home = d.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::hard_link(&shadow, home.join("authorized_keys")).unwrap();
        let dir = open_dir(&home, false).unwrap();
        let name = std::ffi::OsStr::new("authorized_keys");
        let path = home.join("authorized_keys");
        let me = me().uid;
        let err = read_in(&dir, name, &path, 100, Some(me)).unwrap_err();
        assert!(matches!(err, SafeError::HardLinked { links: 2, .. }), "{err}");
        assert!(err.to_string().contains("2 hard links"), "{err}");
        assert!(matches!(read(&path, 100), Err(SafeError::HardLinked { .. })));
        // The original name gone (shadow is replaced by rename): one link, but not the user's.
        std::fs::remove_file(&shadow).unwrap();
        let user = me + 1000;
        if me == 0 {
            chown(&path, Some(0), None).unwrap();
            let err = read_in(&dir, name, &path, 100, Some(user)).unwrap_err();
            assert!(matches!(err, SafeError::NotOwnedBy { found: 0, expected, .. } if expected == user), "{err}");
            assert!(err.to_string().contains(&format!("owned by uid 0, not by uid {user}")), "{err}");
            // The user's own file is read.
            chown(&path, Some(user), None).unwrap();
            assert!(read_in(&dir, name, &path, 100, Some(user)).unwrap().is_some());
        } else {
            assert!(matches!(read_in(&dir, name, &path, 100, Some(user)), Err(SafeError::NotOwnedBy { .. })));
        }
        assert!(read_in(&dir, name, &path, 100, None).unwrap().is_some());
    }

    #[test]
    fn trusted_symlinks_are_followed() {
        // /proc/self is a root-owned symlink in a root-owned directory; /proc/self/fd too.
        let fd = open_dir(Path::new("/proc/self/fd"), false).unwrap();
        assert!(owner(&fd).is_some());
    }
}
