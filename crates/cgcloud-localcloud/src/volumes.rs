//! EBS volumes on the local cloud: each volume is a sparse file under the state directory,
//! and attaching it to a running host makes it a loop device that appears inside the host at
//! the attachment's device (`/dev/sdf` shows as `/dev/xvdf`, as on Xen instances), made from
//! the machine's side once the host's init runs (see [`crate::guestfs`]). Data survives the
//! instance, as on EC2. Instance-store disks are loop devices too, bound into the
//! host at boot under the name Nitro instances give them, and gone after a stop.

use crate::sys::{run, run_quiet};
use crate::Error;
use cgcloud_core::fsutil::remove_file_if_exists;
use std::path::{Path, PathBuf};

fn img(dir: &Path, volume_id: &str) -> PathBuf {
    dir.join("volumes").join(format!("{volume_id}.img"))
}

/// The loop device backing a volume, if set up.
async fn loop_of(file: &Path) -> Option<String> {
    let out = run("losetup", &["-j", &file.to_string_lossy()]).await.ok()?;
    out.lines().next().and_then(|l| l.split(':').next()).map(str::to_owned)
}

/// The device name a guest sees for an attachment device (`/dev/sdf` → `/dev/xvdf`).
pub fn guest_device(device: &str) -> String {
    match device.strip_prefix("/dev/sd") {
        Some(rest) => format!("/dev/xvd{rest}"),
        None => device.to_owned(),
    }
}

/// True for the device names EC2 accepts for an attachment (`/dev/sdf`, `/dev/sdf1`,
/// `/dev/xvdf`, `/dev/xvdba`): a request from anyone, a guest included, names the device, and
/// it becomes a path in a host-side command, so nothing else may pass.
pub fn valid_device(device: &str) -> bool {
    let Some(rest) = device.strip_prefix("/dev/xvd").or_else(|| device.strip_prefix("/dev/sd")) else {
        return false;
    };
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    let digits = &rest[letters..];
    (1..=2).contains(&letters) && digits.len() <= 2 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// True for a volume id as EC2 makes them (`vol-` and hex digits).
pub fn valid_volume_id(id: &str) -> bool {
    id.strip_prefix("vol-").is_some_and(|h| (8..=17).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What an attach did.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    /// The device is in the host, backed by the volume.
    Done,
    /// The host's init has not started: the device is made once it has (a node made while
    /// systemd-nspawn still sets up the guest's /dev would not be the one the guest sees).
    NotYet,
    /// The guest's /dev did not answer in time (the guest mounted something slow there): the
    /// thread that tried may stay blocked, so the host is not tried again.
    Unanswered,
}

/// How long the controller waits for the guest's filesystem: a guest could mount something
/// slow (a FUSE filesystem of its own) on its /dev.
const GUEST_FS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Makes the volume appear in the running host: the volume's loop device is set up first, then
/// its node is made in the guest's /dev from the machine's side (never by a program of the
/// guest's, never through a path of the guest's), so the guest never sees a node that the
/// volume does not back.
pub async fn attach(
    dir: &Path,
    instance_id: &str,
    volume_id: &str,
    size_gb: i32,
    nspawn_pid: u32,
    device: &str,
) -> Result<Attached, Error> {
    if !valid_device(device) {
        return Err(Error::Controller(format!("refusing to attach {volume_id} at '{device}': not an EC2 device name")));
    }
    if !valid_volume_id(volume_id) {
        return Err(Error::Controller(format!("refusing to attach '{volume_id}': not a volume id")));
    }
    let file = img(dir, volume_id);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    if !file.exists() {
        let f = std::fs::File::create(&file).map_err(|e| Error::io(&file, e))?;
        f.set_len(u64::try_from(size_gb.max(1)).unwrap_or(1) << 30).map_err(|e| Error::io(&file, e))?;
    }
    let dev = match loop_of(&file).await {
        Some(d) => d,
        None => run("losetup", &["-f", "--show", &file.to_string_lossy()]).await?.trim().to_owned(),
    };
    let majmin =
        crate::host::device_numbers(&dev).ok_or_else(|| Error::Controller(format!("no device numbers for {dev}")))?;
    let Some((Ok(major), Ok(minor))) = majmin.split_once(':').map(|(a, b)| (a.parse::<u32>(), b.parse::<u32>())) else {
        return Err(Error::Controller(format!("bad device numbers for {dev}")));
    };
    let target = guest_device(device);
    let node = target.trim_start_matches("/dev/").to_owned();
    // The host may open this one device; the node follows.
    crate::host::allow_block_device(instance_id, &format!("{major}:{minor}"), true)?;
    in_guest_dev(nspawn_pid, &target, move |d| crate::guestfs::make_block_device(d, &node, major, minor)).await
}

/// Removes a detached volume's node from the running host, as EC2 takes the device away.
pub async fn remove_from_host(nspawn_pid: u32, device: &str) -> Result<(), Error> {
    if !valid_device(device) {
        return Ok(());
    }
    let target = guest_device(device);
    let node = target.trim_start_matches("/dev/").to_owned();
    in_guest_dev(nspawn_pid, &target, move |d| crate::guestfs::remove_block_device(d, &node)).await.map(|_| ())
}

/// Runs `f` on the guest's /dev (a directory descriptor reached without following the guest's
/// symlinks), on a blocking thread and within [`GUEST_FS_TIMEOUT`].
async fn in_guest_dev(
    nspawn_pid: u32,
    what: &str,
    f: impl FnOnce(&rustix::fd::OwnedFd) -> std::io::Result<()> + Send + 'static,
) -> Result<Attached, Error> {
    let job = tokio::task::spawn_blocking(move || {
        let Ok(guest) = crate::guestfs::guest_of(nspawn_pid) else { return Ok(Attached::NotYet) };
        let dev = crate::guestfs::open_dir(&guest.root, "dev", false)?;
        f(&dev).map(|()| Attached::Done)
    });
    match tokio::time::timeout(GUEST_FS_TIMEOUT, job).await {
        Ok(Ok(Ok(a))) => Ok(a),
        Ok(Ok(Err(e))) => Err(Error::io(Path::new(what), e)),
        Ok(Err(e)) => Err(Error::Controller(format!("{what}: {e}"))),
        Err(_) => Ok(Attached::Unanswered),
    }
}

/// `major:minor` of the loop device backing a volume, if set up.
pub async fn loop_numbers(dir: &Path, volume_id: &str) -> Option<String> {
    crate::host::device_numbers(&loop_of(&img(dir, volume_id)).await?)
}

/// Releases the loop device of a volume that is no longer attached.
pub async fn release(dir: &Path, volume_id: &str) {
    if let Some(dev) = loop_of(&img(dir, volume_id)).await {
        run_quiet("losetup", &["-d", &dev]).await;
    }
}

/// Removes a deleted volume's data.
pub async fn delete(dir: &Path, volume_id: &str) {
    release(dir, volume_id).await;
    if let Err(e) = remove_file_if_exists(&img(dir, volume_id)) {
        tracing::warn!("volume {volume_id}: cannot remove its data: {e}");
    }
}

/// Every volume file the local cloud holds.
pub fn known(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("volumes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".img").map(str::to_owned))
        .collect()
}

/// The local cloud keeps instance-store disks small: they are sparse, but a filesystem on a
/// disk of EC2's size (hundreds of GB) would cost real space and time to make.
const INSTANCE_STORE_CAP_GB: u64 = 4;

fn store_dir(dir: &Path) -> PathBuf {
    dir.join("instance-store")
}

/// The name a Nitro instance's udev gives the instance's n-th instance-store disk.
pub fn instance_store_guest_path(instance_id: &str, n: usize) -> String {
    let serial = instance_id.trim_start_matches("i-").to_uppercase();
    format!("/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{serial}{n}")
}

/// The instance's instance-store disks (created blank if missing), as (loop device, path in
/// the host) pairs for the host's boot. They survive a reboot; `drop_instance_store` ends them.
pub async fn instance_store(dir: &Path, instance_id: &str, sizes_gb: &[u64]) -> Result<Vec<(String, String)>, Error> {
    let sd = store_dir(dir);
    if sizes_gb.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(&sd).map_err(|e| Error::io(&sd, e))?;
    let mut out = Vec::new();
    for (n, size) in sizes_gb.iter().enumerate() {
        let file = sd.join(format!("{instance_id}-{n}.img"));
        if !file.exists() {
            let f = std::fs::File::create(&file).map_err(|e| Error::io(&file, e))?;
            f.set_len((*size).clamp(1, INSTANCE_STORE_CAP_GB) << 30).map_err(|e| Error::io(&file, e))?;
        }
        let dev = match loop_of(&file).await {
            Some(d) => d,
            None => run("losetup", &["-f", "--show", &file.to_string_lossy()]).await?.trim().to_owned(),
        };
        out.push((dev, instance_store_guest_path(instance_id, n)));
    }
    Ok(out)
}

/// Ends an instance's instance-store disks, as a stop or a termination does on EC2.
pub async fn drop_instance_store(dir: &Path, instance_id: &str) {
    let prefix = format!("{instance_id}-");
    for e in std::fs::read_dir(store_dir(dir)).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            if let Some(dev) = loop_of(&e.path()).await {
                run_quiet("losetup", &["-d", &dev]).await;
            }
            if let Err(err) = remove_file_if_exists(&e.path()) {
                tracing::warn!("cannot remove {}: {err}", e.path().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_store_looks_like_nitro_nvme() {
        assert_eq!(
            super::instance_store_guest_path("i-0abc12", 1),
            "/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_AWS0ABC121"
        );
    }

    #[test]
    fn device_names_are_validated() {
        for ok in ["/dev/sdf", "/dev/xvdf", "/dev/sdf1", "/dev/xvdba", "/dev/sdp15"] {
            assert!(super::valid_device(ok), "{ok}");
        }
        for bad in [
            "/dev/sdf; touch /pwned",
            "/dev/sdf$(id)",
            "/dev/sd",
            "/dev/../etc/passwd",
            "/dev/xvdf/../../etc/x",
            "/dev/sdF",
            "/dev/sdf123",
            "sdf",
            "/dev/sdé",
        ] {
            assert!(!super::valid_device(bad), "{bad}");
        }
        assert!(super::valid_volume_id("vol-0123456789abcdef0"));
        assert!(!super::valid_volume_id("vol-../../x"));
    }

    #[tokio::test]
    async fn a_crafted_device_runs_nothing_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let device = format!("/dev/sdf; touch {}", marker.display());
        let err = super::attach(dir.path(), "i-0abc", "vol-0123456789abcdef0", 1, 1, &device).await.unwrap_err();
        assert!(err.to_string().contains("not an EC2 device name"), "{err}");
        assert!(!marker.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "attach created files before refusing");
    }

    #[test]
    fn guest_devices() {
        assert_eq!(super::guest_device("/dev/sdf"), "/dev/xvdf");
        assert_eq!(super::guest_device("/dev/xvdg"), "/dev/xvdg");
    }
}
