//! A cluster node's persistent EBS volume: made by the workstation for the node's slot (cluster
//! and ordinal) and given to the node, attached by the node, formatted once (labelled with a
//! hash of its name), and mounted at /mnt/persistent with `nosuid,nodev`. Volumes outlive their
//! nodes, so a cluster created again under the same name gets its data back.

use crate::aws::{AwsError, Client, Service};
use crate::sys::{blkid, is_mounted, run, CommandError};
use std::path::Path;
use std::time::{Duration, Instant};

pub const MOUNT_POINT: &str = "/mnt/persistent";
pub const DEVICE: &str = "/dev/sdf";

/// Why the persistent volume could not be formatted or mounted (attaching it fails with an
/// [`AwsError`]).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{device} has label '{existing}', not '{label}' (the hash of {name}); refusing to use it")]
    WrongLabel { device: String, existing: String, label: String, name: String },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Write(#[from] crate::safefs::SafeError),
    #[error("no device with {spec} appeared within 2 minutes; {mp} is not mounted", mp = MOUNT_POINT)]
    NoDevice { spec: String },
    #[error(transparent)]
    Attach(#[from] AwsError),
    #[error("volume {id} was attached but no block device appeared")]
    NotAppeared { id: String },
}

fn err(action: &str, detail: impl Into<String>) -> AwsError {
    AwsError::Parse { action: action.into(), detail: detail.into() }
}

/// The volume's name, e.g. `hannes_spark__2` for ordinal 2 of cluster `spark` in `/hannes/`.
pub fn volume_name(namespace: &str, cluster: &str, ordinal: u32) -> Result<String, AwsError> {
    let ns = cgcloud_core::Namespace::parse(namespace).map_err(|e| err("namespace", e.to_string()))?;
    ns.node_volume_name(cluster, ordinal).map_err(|e| err("volume name", e.to_string()))
}

/// Finds and attaches the node's volume; returns its id. The workstation makes each node's
/// volume and gives it to the node (`cgcloud:attach-to`, the node's ARN, a tag no box may
/// write), right after the launch: the node waits for it, and attaches only a volume given to
/// it. A volume some other box made or named for this slot is never adopted (IAM would refuse
/// the attachment too).
pub fn attach(
    aws: &Client,
    namespace: &str,
    cluster: &str,
    ordinal: u32,
    instance_id: &str,
    arn: &str,
    zone: &str,
) -> Result<String, AwsError> {
    let name = volume_name(namespace, cluster, ordinal)?;
    let start = Instant::now();
    // The volumes named for this slot with one more tag: persistent ones (others may carry the
    // name too, made at a RunInstances by a principal that may name what it makes, and would
    // make this one ambiguous), and the one given to this node.
    let named = |key: &str, value: &str| {
        aws.call(
            Service::Ec2,
            "DescribeVolumes",
            &[
                ("Filter.1.Name", "tag:Name".into()),
                ("Filter.1.Value.1", name.clone()),
                ("Filter.2.Name", "tag:cgcloud:namespace".into()),
                ("Filter.2.Value.1", namespace.to_owned()),
                ("Filter.3.Name", format!("tag:{key}")),
                ("Filter.3.Value.1", value.to_owned()),
            ],
        )
    };
    let (volume_id, status, attached_to, volume_zone) = loop {
        let found = named(cgcloud_core::tags::PERSISTENT, "true")?;
        let vols = found.records("item", &["volumeId", "status", "availabilityZone", "instanceId"]);
        let vols: Vec<Vec<String>> = vols.into_iter().filter(|v| v[0].starts_with("vol-")).collect();
        match vols.as_slice() {
            [v] => {
                let given = named(cgcloud_core::tags::ATTACH_TO, arn)?.records("item", &["volumeId"]);
                if given.iter().any(|g| g[0] == v[0]) {
                    break (v[0].clone(), v[1].clone(), v[3].clone(), v[2].clone());
                }
            }
            [] => {}
            _ => {
                let ids: Vec<&str> = vols.iter().map(|v| v[0].as_str()).collect();
                return Err(err(
                    "persistent volume",
                    format!(
                        "{} volumes are named {name} ({}); refusing all of them: keep the one the workstation made",
                        vols.len(),
                        ids.join(", ")
                    ),
                ));
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            let others: Vec<&str> = vols.iter().map(|v| v[0].as_str()).collect();
            return Err(err(
                "persistent volume",
                if others.is_empty() {
                    format!("no volume named {name} was made for this node within 300 s")
                } else {
                    format!(
                        "volume {} is named {name} but was not given to this node ({} = {arn}); refusing it",
                        others.join(", "),
                        cgcloud_core::tags::ATTACH_TO
                    )
                },
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    if status == "in-use" && attached_to == instance_id {
        return Ok(volume_id);
    }
    if !volume_zone.is_empty() && volume_zone != zone {
        return Err(err(
            "persistent volume",
            format!(
                "volume {volume_id} ({name}) is in zone {volume_zone}, but this node is in {zone}; create the cluster in {volume_zone}"
            ),
        ));
    }
    wait_state(aws, &volume_id, "available", Duration::from_secs(300))?;
    aws.call(
        Service::Ec2,
        "AttachVolume",
        &[("VolumeId", volume_id.clone()), ("InstanceId", instance_id.to_owned()), ("Device", DEVICE.into())],
    )?;
    wait_state(aws, &volume_id, "in-use", Duration::from_secs(300))?;
    Ok(volume_id)
}

fn wait_state(aws: &Client, volume_id: &str, state: &str, timeout: Duration) -> Result<(), AwsError> {
    let start = Instant::now();
    loop {
        let a = aws.call(Service::Ec2, "DescribeVolumes", &[("VolumeId.1", volume_id.to_owned())])?;
        if a.text("status").as_deref() == Some(state) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(err("persistent volume", format!("{volume_id} did not become {state}")));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The block device of an attached volume: Nitro instances show it as NVMe with the volume id
/// as serial; Xen instances as /dev/xvdf or /dev/sdf.
pub fn find_device(volume_id: &str, timeout: Duration) -> Option<String> {
    let serial = volume_id.replace('-', "");
    let start = Instant::now();
    loop {
        let by_id = format!("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}");
        for candidate in [by_id.as_str(), "/dev/xvdf", "/dev/sdf"] {
            if Path::new(candidate).exists() {
                return Some(candidate.to_owned());
            }
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How the persistent volume is mounted: a volume outlives its box and other boxes could have
/// had it (or one like it) attached, so no set-id program or device file on it counts.
pub const MOUNT_OPTIONS: &str = "nosuid,nodev";

/// Applies [`MOUNT_OPTIONS`] to what is mounted at the mount point already: systemd mounts it
/// from fstab, and an image baked before the options existed carries `defaults` there.
fn restrict_mount() -> Result<(), CommandError> {
    run("mount", &["-o", &format!("remount,{MOUNT_OPTIONS}"), MOUNT_POINT]).map(drop)
}

/// The /etc/fstab line of the persistent volume labelled `label`: `nofail`, since its device
/// may appear only after boot (attached once the box runs), and the agent mounts it then.
pub fn fstab_line(label: &str) -> String {
    format!("LABEL={label} {MOUNT_POINT} ext4 {MOUNT_OPTIONS},nofail 0 2")
}

/// Formats the device if it holds no filesystem (never otherwise), checks its label, mounts it
/// at /mnt/persistent and records it in /etc/fstab. Returns whether it formatted the device.
pub fn format_and_mount(device: &str, name: &str) -> Result<bool, VolumeError> {
    let label = cgcloud_core::d32::volume_label_hash(name);
    let blank = blkid(device, "TYPE").is_empty();
    if blank {
        run("mkfs.ext4", &["-q", "-L", &label, device])?;
    } else {
        let existing = blkid(device, "LABEL");
        if existing != label {
            return Err(VolumeError::WrongLabel { device: device.to_owned(), existing, label, name: name.to_owned() });
        }
    }
    std::fs::create_dir_all(MOUNT_POINT).map_err(|error| VolumeError::Io { path: MOUNT_POINT.to_owned(), error })?;
    let fstab = std::fs::read_to_string("/etc/fstab").unwrap_or_default();
    let line = fstab_line(&label);
    if !fstab.lines().any(|l| l.trim() == line) {
        let kept: Vec<&str> = fstab.lines().filter(|l| !l.contains(MOUNT_POINT)).collect();
        let new = format!("{}{line}\n", kept.iter().map(|l| format!("{l}\n")).collect::<String>());
        crate::safefs::write_atomic(Path::new("/etc/fstab"), new.as_bytes(), crate::safefs::Attrs::root(0o644))?;
    }
    if is_mounted(MOUNT_POINT) {
        restrict_mount()?;
    } else {
        run("mount", &["-o", MOUNT_OPTIONS, device, MOUNT_POINT])?;
    }
    Ok(blank)
}

/// The device spec (e.g. `LABEL=i0u77fnocoo`) fstab gives for `mount_point`.
pub fn fstab_spec(fstab: &str, mount_point: &str) -> Option<String> {
    fstab.lines().filter(|l| !l.trim_start().starts_with('#')).find_map(|l| {
        let mut f = l.split_whitespace();
        let spec = f.next()?;
        (f.next() == Some(mount_point)).then(|| spec.to_owned())
    })
}

/// The block device holding the filesystem labelled `label`: by udev's name where udev runs,
/// else among the devices a persistent volume appears as.
fn device_with_label(label: &str) -> Option<String> {
    let mut candidates = vec![format!("/dev/disk/by-label/{label}"), "/dev/xvdf".to_owned(), "/dev/sdf".to_owned()];
    for e in std::fs::read_dir("/dev/disk/by-id").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("nvme-Amazon_Elastic_Block_Store_") && !name.contains("-part") {
            candidates.push(e.path().to_string_lossy().into_owned());
        }
    }
    candidates.into_iter().filter(|c| Path::new(c).exists()).find(|c| blkid(c, "LABEL") == label)
}

/// Where the persistent volume stands after `try_mount_persistent`.
#[derive(Debug, PartialEq, Eq)]
pub enum Persistent {
    /// fstab lists no persistent volume.
    None,
    Mounted,
    /// Mounted by this call.
    NowMounted,
    /// Listed, but its device has not appeared (yet).
    NoDevice(String),
}

/// Mounts the persistent volume if fstab lists it and it is not mounted yet. The mount is
/// done here rather than left to systemd: its fstab entry is `nofail`, which systemd orders
/// before nothing, and hosts without udev cannot resolve its label.
pub fn try_mount_persistent() -> Result<Persistent, VolumeError> {
    let fstab = std::fs::read_to_string("/etc/fstab").unwrap_or_default();
    let Some(spec) = fstab_spec(&fstab, MOUNT_POINT) else { return Ok(Persistent::None) };
    if is_mounted(MOUNT_POINT) {
        restrict_mount()?;
        return Ok(Persistent::Mounted);
    }
    let device = match spec.strip_prefix("LABEL=") {
        Some(label) => device_with_label(label),
        None => Path::new(&spec).exists().then(|| spec.clone()),
    };
    let Some(dev) = device else { return Ok(Persistent::NoDevice(spec)) };
    // The options are given here, not taken from fstab: an image baked before they existed
    // carries `defaults`.
    run("mount", &["-o", MOUNT_OPTIONS, &dev, MOUNT_POINT])?;
    Ok(Persistent::NowMounted)
}

/// At boot, before the services that keep data there: `try_mount_persistent`, waiting up to two
/// minutes for the device.
pub fn mount_persistent_at_boot() -> Result<Persistent, VolumeError> {
    let start = Instant::now();
    loop {
        match try_mount_persistent()? {
            Persistent::NoDevice(spec) if start.elapsed() > Duration::from_secs(120) => {
                return Err(VolumeError::NoDevice { spec })
            }
            Persistent::NoDevice(_) => std::thread::sleep(Duration::from_secs(1)),
            done => return Ok(done),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn persistent_mount_is_found_in_fstab() {
        let fstab = "# /mnt/persistent\nLABEL=abc /mnt/persistent ext4 defaults,nofail 0 2\n";
        assert_eq!(super::fstab_spec(fstab, "/mnt/persistent").as_deref(), Some("LABEL=abc"));
        let other = "# LABEL=abc /mnt/persistent ext4\n/dev/root / ext4 defaults 0 1\n";
        assert_eq!(super::fstab_spec(other, "/mnt/persistent"), None);
    }

    #[test]
    fn fstab_line_is_golden() {
        // Golden: images carry this line, and the agent of every later version must read it
        // (and the older one, with `defaults`).
        let label = cgcloud_core::d32::volume_label_hash("hannes_jenkins-master");
        assert_eq!(super::fstab_line(&label), format!("LABEL={label} /mnt/persistent ext4 nosuid,nodev,nofail 0 2"));
        let old = format!("LABEL={label} /mnt/persistent ext4 defaults,nofail 0 2");
        assert_eq!(super::fstab_spec(&old, "/mnt/persistent"), Some(format!("LABEL={label}")));
        assert_eq!(label.len(), 11);
        assert_eq!(super::fstab_spec(&super::fstab_line(&label), "/mnt/persistent"), Some(format!("LABEL={label}")));
    }

    #[test]
    fn names_and_labels() {
        assert_eq!(super::volume_name("/hannes/", "spark", 2).unwrap(), "hannes_spark__2");
        assert_eq!(cgcloud_core::d32::volume_label_hash("hannes_spark-master__0"), "i0u77fnocoo");
    }
}
