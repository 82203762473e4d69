//! Base images: Debian root filesystems built with debootstrap from the machine's configured
//! Debian mirror, cached under a hash of their recipe, and the AMI catalogue that registers
//! them in moto under the names and owner that Debian uses on AWS, so that cgcloud finds them
//! with its ordinary image lookup.

use crate::sys::run;
use crate::Error;
use cgcloud_core::fsutil::remove_file_if_exists;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// Debian's AWS account, which owns the official Debian AMIs.
pub const DEBIAN_OWNER: &str = "136693071363";

/// Bump to rebuild every cached image.
const RECIPE_VERSION: &str = "3";

/// Packages installed on top of debootstrap's minimal base.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "sudo",
    "cloud-init",
    "iproute2",
    "iputils-ping",
    "procps",
    "less",
    "python3",
    "netbase",
    "rsync",
    "curl",
    "ca-certificates",
    "gnupg",
    "e2fsprogs",
];

/// cloud-init settings for hosts: NoCloud seed only, networking done by the host, Debian's
/// AMI default user `admin`.
const CLOUD_CFG: &str = r#"# Written by the cgcloud local cloud.
datasource_list: [ NoCloud, None ]
network: {config: disabled}
locale: false
manage_etc_hosts: true
system_info:
  default_user:
    name: admin
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
"#;

const PIP_CONF: &str = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n";

#[derive(Debug, Clone)]
pub struct Recipe {
    /// The OS id cgcloud uses, e.g. `debian-12`.
    pub os_id: &'static str,
    pub release: &'static str,
    pub suite: &'static str,
}

pub fn recipes() -> Vec<Recipe> {
    vec![
        Recipe { os_id: "debian-12", release: "12", suite: "bookworm" },
        Recipe { os_id: "debian-13", release: "13", suite: "trixie" },
    ]
}

/// A built, cached image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BaseImage {
    pub os_id: String,
    pub ami_id: String,
    pub name: String,
    pub rootfs: PathBuf,
}

/// The Debian mirror this machine's apt uses (never a hard-coded host).
pub fn machine_mirror() -> Result<String, Error> {
    let candidates = ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"];
    for f in candidates {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        for line in text.lines() {
            let line = line.trim();
            if let Some(uris) = line.strip_prefix("URIs:") {
                if let Some(u) = uris.split_whitespace().find(|u| !u.contains("security")) {
                    return Ok(u.to_owned());
                }
            }
            if let Some(rest) = line.strip_prefix("deb ") {
                if let Some(u) = rest.split_whitespace().find(|w| w.contains("://")) {
                    if !u.contains("security") {
                        return Ok(u.to_owned());
                    }
                }
            }
        }
    }
    Err(Error::Prerequisite(
        "cannot find the machine's Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
            .into(),
    ))
}

/// The machine's extra CA certificates, which HTTPS clients inside hosts must trust too.
fn extra_cas() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir("/usr/local/share/ca-certificates")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "crt"))
        .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).ok()?)))
        .collect();
    v.sort();
    v
}

fn recipe_hash(r: &Recipe, mirror: &str) -> String {
    let mut h = Sha256::new();
    for part in [RECIPE_VERSION, r.suite, mirror, CLOUD_CFG, PIP_CONF, &PACKAGES.join(",")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (name, data) in extra_cas() {
        h.update(name.as_bytes());
        h.update(&data);
    }
    hex::encode(h.finalize())
}

/// Builds the image of `r` unless the cache has it. `log` receives debootstrap's output.
pub async fn ensure(images_dir: &Path, r: &Recipe, mirror: &str, log: &Path) -> Result<BaseImage, Error> {
    let hash = recipe_hash(r, mirror);
    let dir = images_dir.join(format!("{}-{}", r.os_id, &hash[..12]));
    let meta = dir.join("image.json");
    if let Ok(text) = std::fs::read_to_string(&meta) {
        if let Ok(img) = serde_json::from_str::<BaseImage>(&text) {
            return Ok(img);
        }
    }
    let tmp = images_dir.join(format!(".build-{}-{}", r.os_id, &hash[..12]));
    if tmp.exists() {
        crate::umount_all(&tmp).await;
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let rootfs = tmp.join("rootfs");
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let script = build_script(r, mirror, &rootfs);
    let logf = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
    let logf2 = logf.try_clone().map_err(|e| Error::io(log, e))?;
    let status = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(logf)
        .stderr(logf2)
        .status()
        .await
        .map_err(|e| Error::Command { command: "sh (image build)".into(), detail: e.to_string() })?;
    if !status.success() {
        crate::umount_all(&tmp).await;
        return Err(Error::Command {
            command: format!("building the {} image", r.os_id),
            detail: format!("see {}", log.display()),
        });
    }
    write_config(&rootfs).await?;
    let date = run("date", &["-u", "+%Y%m%d"]).await?.trim().to_owned();
    let img = BaseImage {
        os_id: r.os_id.to_owned(),
        ami_id: format!("ami-{}", &hash[..17]),
        name: format!("debian-{}-amd64-{date}-{}", r.release, &hash[..8]),
        rootfs: dir.join("rootfs"),
    };
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    let text = serde_json::to_string_pretty(&img).unwrap_or_default();
    cgcloud_core::fsutil::write_atomic(&meta, text.as_bytes(), 0o644).map_err(|e| Error::io(&meta, e))?;
    Ok(img)
}

fn build_script(r: &Recipe, mirror: &str, rootfs: &Path) -> String {
    let root = rootfs.display();
    // debootstrap cannot resolve some virtual packages (cloud-init's dependencies), so it
    // installs a minimal base and apt installs the rest inside the chroot.
    format!(
        r#"set -eu
R='{root}'
debootstrap --variant=minbase --include=ca-certificates {suite} "$R" '{mirror}'
printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod +x "$R/usr/sbin/policy-rc.d"
mount -t proc proc "$R/proc"
trap 'umount "$R/proc" 2>/dev/null || true' EXIT
printf 'deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\n' > "$R/etc/apt/sources.list"
rm -f "$R/etc/apt/sources.list.d/"*
chroot "$R" apt-get -q update
chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends {packages}
chroot "$R" apt-get clean
rm -f "$R/usr/sbin/policy-rc.d"
"#,
        suite = r.suite,
        packages = PACKAGES.join(" "),
    )
}

async fn write_config(rootfs: &Path) -> Result<(), Error> {
    let write = |rel: &str, contents: &[u8]| -> Result<(), Error> {
        let p = rootfs.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&p, contents).map_err(|e| Error::io(&p, e))
    };
    write("etc/cloud/cloud.cfg.d/90-cgcloud-local.cfg", CLOUD_CFG.as_bytes())?;
    write("etc/pip.conf", PIP_CONF.as_bytes())?;
    write("etc/resolv.conf", format!("nameserver {}\n", crate::net::GATEWAY).as_bytes())?;
    write("etc/machine-id", b"")?;
    let hostname = rootfs.join("etc/hostname");
    remove_file_if_exists(&hostname).map_err(|e| Error::io(&hostname, e))?;
    for (name, data) in extra_cas() {
        write(&format!("usr/local/share/ca-certificates/{name}"), &data)?;
    }
    run("chroot", &[&rootfs.to_string_lossy(), "update-ca-certificates"]).await?;
    // Every host gets its own host keys from cloud-init.
    for entry in std::fs::read_dir(rootfs.join("etc/ssh")).map_err(|e| Error::io(rootfs, e))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            // Hosts sharing the image's host keys could impersonate each other.
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Images the local cloud registers but cannot run, so that lookups behave as on AWS and a
/// launch from them fails visibly instead of being silently replaced.
pub fn foreign_images() -> Vec<serde_json::Value> {
    [
        (
            "ami-0f0e0d0c0b0a09081",
            "099720109477",
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261101",
            "/dev/sda1",
        ),
        (
            "ami-0f0e0d0c0b0a09082",
            "099720109477",
            "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20261020",
            "/dev/sda1",
        ),
        ("ami-0f0e0d0c0b0a09083", "125523088429", "Fedora-Cloud-Base-AmazonEC2.x86_64-44-20261101.0", "/dev/xvda"),
        ("ami-0f0e0d0c0b0a09084", "137112412989", "al2023-ami-2023.9.20261101.0-kernel-6.12-x86_64", "/dev/xvda"),
    ]
    .into_iter()
    .map(|(id, owner, name, root)| ami_entry(id, owner, name, root))
    .collect()
}

pub fn ami_entry(id: &str, owner: &str, name: &str, root: &str) -> serde_json::Value {
    serde_json::json!({
        "ami_id": id, "name": name, "owner_id": owner, "architecture": "x86_64",
        "creation_date": "2026-11-01T00:00:00.000Z", "root_device_name": root, "root_device_type": "ebs",
        "virtualization_type": "hvm", "hypervisor": "xen", "state": "available", "public": true,
        "sriov": "simple", "image_type": "machine", "platform": null, "description": name,
        "image_location": format!("{owner}/{name}"),
    })
}

/// The moto AMI catalogue: the built images plus the foreign ones.
pub fn catalogue(images: &[BaseImage]) -> serde_json::Value {
    let mut v: Vec<serde_json::Value> =
        images.iter().map(|i| ami_entry(&i.ami_id, DEBIAN_OWNER, &i.name, "/dev/xvda")).collect();
    v.extend(foreign_images());
    serde_json::Value::Array(v)
}
