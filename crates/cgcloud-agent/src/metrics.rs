//! Memory and disk use, reported as CloudWatch custom metrics (namespace `CGCloud`, dimension
//! `InstanceId`, unit Percent): `MemUsage`, and `DiskUsage_root` for `/` or `DiskUsage` plus the
//! mount point with `/` as `_` (e.g. `DiskUsage_mnt_persistent`) for other filesystems. The
//! daemon calls [`put`] every `metrics_interval` seconds when metrics are on.

use crate::aws::{AwsError, Client, Service};

/// Filesystems that hold data (not proc, sysfs, tmpfs, ...).
const DATA_FS: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "overlay", "f2fs", "vfat", "nfs", "nfs4"];

/// Percent of memory in use, from /proc/meminfo (MemAvailable counts reclaimable cache).
pub fn memory_percent(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| (total - available) / total * 100.0)
}

/// Mount points of data filesystems in /proc/mounts, without duplicates.
pub fn data_mounts(mounts: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 3 && DATA_FS.contains(&f[2]) {
            let mp = f[1].replace("\\040", " ");
            // Container plumbing (e.g. systemd-nspawn's /run/host files) is not a data disk.
            if ["/run/", "/proc", "/sys", "/dev"].iter().any(|p| mp.starts_with(p))
                || !std::path::Path::new(&mp).is_dir()
            {
                continue;
            }
            if !out.contains(&mp) {
                out.push(mp);
            }
        }
    }
    out
}

pub fn metric_name(mount_point: &str) -> String {
    if mount_point == "/" {
        "DiskUsage_root".to_owned()
    } else {
        format!("DiskUsage{}", mount_point.replace('/', "_"))
    }
}

/// Percent of a filesystem in use, as df computes it.
pub fn disk_percent(mount_point: &str) -> Option<f64> {
    let s = rustix::fs::statvfs(mount_point).ok()?;
    let used = s.f_blocks.saturating_sub(s.f_bfree) as f64;
    let denom = used + s.f_bavail as f64;
    (denom > 0.0).then(|| used / denom * 100.0)
}

/// All current measurements: (metric name, percent).
pub fn collect() -> Vec<(String, f64)> {
    let mut out = Vec::new();
    if let Some(m) = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(memory_percent) {
        out.push(("MemUsage".to_owned(), m));
    }
    for mp in data_mounts(&std::fs::read_to_string("/proc/mounts").unwrap_or_default()) {
        if let Some(p) = disk_percent(&mp) {
            out.push((metric_name(&mp), p));
        }
    }
    out
}

/// The PutMetricData parameters for `values`.
pub fn put_params(instance_id: &str, values: &[(String, f64)]) -> Vec<(String, String)> {
    let mut p = vec![("Namespace".to_owned(), "CGCloud".to_owned())];
    for (i, (name, value)) in values.iter().enumerate() {
        let m = format!("MetricData.member.{}", i + 1);
        p.push((format!("{m}.MetricName"), name.clone()));
        p.push((format!("{m}.Value"), format!("{value:.2}")));
        p.push((format!("{m}.Unit"), "Percent".to_owned()));
        p.push((format!("{m}.Dimensions.member.1.Name"), "InstanceId".to_owned()));
        p.push((format!("{m}.Dimensions.member.1.Value"), instance_id.to_owned()));
    }
    p
}

/// Measures and reports once.
pub fn put(aws: &Client, instance_id: &str) -> Result<(), AwsError> {
    let values = collect();
    let params = put_params(instance_id, &values);
    let refs: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    aws.call(Service::CloudWatch, "PutMetricData", &refs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_mounts() {
        let mi = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert!((memory_percent(mi).unwrap() - 75.0).abs() < 1e-9);
        assert_eq!(memory_percent("nothing"), None);
        let mounts = "overlay / overlay rw 0 0\nproc /proc proc rw 0 0\n/dev/xvdf /tmp ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n/dev/xvdf /tmp ext4 rw 0 0\noverlay /run/host/os-release overlay ro 0 0\n";
        assert_eq!(data_mounts(mounts), vec!["/", "/tmp"]);
        assert_eq!(metric_name("/"), "DiskUsage_root");
        assert_eq!(metric_name("/mnt/ephemeral"), "DiskUsage_mnt_ephemeral");
        let p = disk_percent("/").unwrap();
        assert!((0.0..=100.0).contains(&p));
        let params = put_params("i-1", &[("MemUsage".into(), 12.345)]);
        assert!(params.contains(&("MetricData.member.1.Value".into(), "12.35".into())));
        assert!(params.contains(&("MetricData.member.1.Dimensions.member.1.Value".into(), "i-1".into())));
    }
}
