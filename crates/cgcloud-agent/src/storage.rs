//! Instance-store (ephemeral) disks: found, formatted when blank, striped when there are
//! several, and mounted at /mnt/ephemeral on every boot (`cgcloud-agent storage`, run by the
//! `cgcloud-storage` unit and again by first-boot configuration).
//!
//! Nitro instances show their instance store as NVMe devices that udev names
//! `/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_*`; Xen instances only have it where
//! the launch mapped it, so cgcloud writes those device names to /etc/cgcloud/instance-store.
//! Unlike the original, a disk that already carries a filesystem is mounted, never formatted
//! again: a plain reboot keeps the instance store's data, and only a stop/start (which gives
//! blank disks) means formatting.

use crate::sys::{blkid, is_mounted, run, CommandError};
use std::path::Path;

/// Why the instance store could not be made usable.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("storage lock: {0}")]
    Lock(std::io::Error),
}

pub const MOUNT_POINT: &str = "/mnt/ephemeral";
pub const LABEL: &str = "cgcloud-eph";
const BY_ID_PREFIX: &str = "nvme-Amazon_EC2_NVMe_Instance_Storage_";
const XEN_LIST: &str = "/etc/cgcloud/instance-store";
const RAID: &str = "/dev/md/cgcloud-eph";

/// The instance-store disks of this box, as canonical device paths, in a stable order.
pub fn devices() -> Vec<String> {
    let mut found = nvme_devices(Path::new("/dev/disk/by-id"));
    if found.is_empty() {
        if let Ok(text) = std::fs::read_to_string(XEN_LIST) {
            found = xen_devices(&text, |p| Path::new(p).exists());
        }
    }
    found
}

/// NVMe instance-store devices listed in a by-id directory; partitions and the duplicate
/// names udev adds per namespace are collapsed by resolving each entry.
pub fn nvme_devices(by_id: &Path) -> Vec<String> {
    let mut devs: Vec<(String, String)> = std::fs::read_dir(by_id)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(BY_ID_PREFIX) || name.contains("-part") {
                return None;
            }
            let real = std::fs::canonicalize(e.path()).unwrap_or_else(|_| e.path());
            Some((name, real.to_string_lossy().into_owned()))
        })
        .collect();
    devs.sort();
    let mut out: Vec<String> = Vec::new();
    for (_, real) in devs {
        if !out.contains(&real) {
            out.push(real);
        }
    }
    out
}

/// The Xen devices named in /etc/cgcloud/instance-store (`/dev/sdb` may appear as `/dev/xvdb`).
pub fn xen_devices(list: &str, exists: impl Fn(&str) -> bool) -> Vec<String> {
    list.split_whitespace()
        .filter_map(|d| {
            let xvd = d.strip_prefix("/dev/sd").map(|rest| format!("/dev/xvd{rest}"));
            [Some(d.to_owned()), xvd].into_iter().flatten().find(|c| exists(c))
        })
        .collect()
}

fn has(program: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(program).exists())
}

/// Formats a blank device (never one with a filesystem) and mounts it.
fn format_and_mount(device: &str, mount_point: &str) -> Result<(), StorageError> {
    if is_mounted(mount_point) {
        return Ok(());
    }
    if blkid(device, "TYPE").is_empty() {
        // nodiscard: instance-store SSDs come trimmed; discarding them takes minutes.
        run("mkfs.ext4", &["-q", "-E", "nodiscard", "-L", LABEL, device])?;
    }
    std::fs::create_dir_all(mount_point).map_err(|error| StorageError::Io { path: mount_point.to_owned(), error })?;
    run("mount", &["-o", "defaults,noatime", device, mount_point])?;
    Ok(())
}

/// The mount points in use, one per disk when they cannot be striped.
pub fn mount_points(n: usize) -> Vec<String> {
    (0..n).map(|i| if i == 0 { MOUNT_POINT.to_owned() } else { format!("{MOUNT_POINT}{i}") }).collect()
}

/// Makes the instance store usable; returns where it is mounted (None: the box has none).
pub fn prepare() -> Result<Option<String>, StorageError> {
    // A directory that cannot be made shows as the lock file that cannot be created, next.
    let _ = std::fs::create_dir_all("/run/cgcloud");
    // The unit and first-boot configuration may both get here; only one formats.
    let lock = std::fs::File::create("/run/cgcloud/storage.lock").map_err(StorageError::Lock)?;
    lock.lock().map_err(StorageError::Lock)?;
    let devs = devices();
    if devs.is_empty() {
        return Ok(None);
    }
    if is_mounted(MOUNT_POINT) {
        return Ok(Some(MOUNT_POINT.to_owned()));
    }
    if devs.len() == 1 {
        format_and_mount(&devs[0], MOUNT_POINT)?;
    } else if has("mdadm") && Path::new("/proc/mdstat").exists() {
        let refs: Vec<&str> = devs.iter().map(String::as_str).collect();
        let mdstat = std::fs::read_to_string("/proc/mdstat").unwrap_or_default();
        let target = if Path::new(RAID).exists() {
            RAID.to_owned()
        } else if let Some(md) = active_array(&mdstat, &devs[0]) {
            // Assembled at boot under a name of the kernel's choosing.
            format!("/dev/{md}")
        } else {
            if blkid(&devs[0], "TYPE") == "linux_raid_member" {
                // A reboot: the disks still hold the array.
                let mut args = vec!["--assemble", RAID];
                args.extend(&refs);
                run("mdadm", &args)?;
            } else {
                let n = devs.len().to_string();
                let mut args = vec!["--create", RAID, "--run", "--level=0", "--raid-devices", n.as_str()];
                args.extend(&refs);
                run("mdadm", &args)?;
            }
            RAID.to_owned()
        };
        format_and_mount(&target, MOUNT_POINT)?;
    } else {
        // Without mdadm, or a kernel without md (a container's), each disk gets its own mount
        // point, as the original's did.
        let why = if has("mdadm") { "no md driver in the kernel" } else { "no mdadm" };
        log(&format!("{} instance-store disks and {why}: mounting each on its own", devs.len()));
        for (dev, mp) in devs.iter().zip(mount_points(devs.len())) {
            format_and_mount(dev, &mp)?;
        }
    }
    log(&format!("instance store ({}) mounted at {MOUNT_POINT}", devs.join(", ")));
    Ok(Some(MOUNT_POINT.to_owned()))
}

/// The active md array (e.g. `md127`) that has `device` as a member, from /proc/mdstat.
pub fn active_array(mdstat: &str, device: &str) -> Option<String> {
    let name = Path::new(device).file_name()?.to_string_lossy().into_owned();
    mdstat.lines().find_map(|l| {
        let (md, rest) = l.split_once(" : ")?;
        let member = |w: &str| w.split('[').next() == Some(name.as_str());
        (rest.starts_with("active") && rest.split_whitespace().any(member)).then(|| md.trim().to_owned())
    })
}

fn log(msg: &str) {
    eprintln!("cgcloud-agent storage: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvme_instance_store_is_found_by_id_without_partitions_or_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        std::fs::create_dir(&dev).unwrap();
        for d in ["nvme1n1", "nvme2n1", "nvme0n1"] {
            std::fs::write(dev.join(d), "").unwrap();
        }
        let by_id = dir.path().join("by-id");
        std::fs::create_dir(&by_id).unwrap();
        let link = |name: &str, target: &str| std::os::unix::fs::symlink(dev.join(target), by_id.join(name)).unwrap();
        link("nvme-Amazon_EC2_NVMe_Instance_Storage_AWS1A", "nvme1n1");
        link("nvme-Amazon_EC2_NVMe_Instance_Storage_AWS1A_1", "nvme1n1");
        link("nvme-Amazon_EC2_NVMe_Instance_Storage_AWS2B", "nvme2n1");
        link("nvme-Amazon_EC2_NVMe_Instance_Storage_AWS2B-part1", "nvme2n1");
        link("nvme-Amazon_Elastic_Block_Store_vol0123", "nvme0n1");
        let found = nvme_devices(&by_id);
        let names: Vec<String> =
            found.iter().map(|p| Path::new(p).file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["nvme1n1", "nvme2n1"]);
        assert!(nvme_devices(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn xen_devices_accept_either_name() {
        let present = ["/dev/xvdb", "/dev/sdc"];
        let found = xen_devices("/dev/sdb\n/dev/sdc\n/dev/sdd\n", |p| present.contains(&p));
        assert_eq!(found, ["/dev/xvdb", "/dev/sdc"]);
    }

    #[test]
    fn an_array_assembled_at_boot_is_found_by_member() {
        let mdstat = "Personalities : [raid0]\nmd127 : active raid0 nvme2n1[1] nvme1n1[0]\n      \
                      1171875840 blocks super 1.2 512k chunks\n\nunused devices: <none>\n";
        assert_eq!(active_array(mdstat, "/dev/nvme1n1").as_deref(), Some("md127"));
        assert_eq!(active_array(mdstat, "/dev/nvme3n1"), None);
        assert_eq!(active_array("md0 : inactive nvme1n1[0](S)\n", "/dev/nvme1n1"), None);
    }

    #[test]
    fn one_mount_point_per_disk_when_not_striped() {
        assert_eq!(mount_points(3), ["/mnt/ephemeral", "/mnt/ephemeral1", "/mnt/ephemeral2"]);
    }
}
