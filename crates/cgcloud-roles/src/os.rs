//! Operating-system definitions: package-manager family, default admin user and how to find
//! the distribution's official image in a region.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Debian, Ubuntu.
    Apt,
    /// Fedora, CentOS Stream, Amazon Linux 2023.
    Dnf,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Apt => "apt",
            Family::Dnf => "dnf",
        }
    }
}

/// Where the official image of a release is published. Either an SSM public parameter that
/// holds the current image id, or an owner account plus a name pattern (newest match wins).
/// `{arch}` becomes `x86_64`/`arm64` and `{deb_arch}` becomes `amd64`/`arm64`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// CPU architecture of an instance type, as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "arm64")]
    Arm64,
}

impl Arch {
    pub fn ec2(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl ImageSource {
    /// Substitutes the architecture placeholders in `template`.
    pub fn expand(template: &str, arch: Arch) -> String {
        template.replace("{arch}", arch.ec2()).replace("{deb_arch}", arch.debian())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OsDef {
    /// e.g. `debian-12`
    pub id: String,
    /// Human-readable, e.g. `Debian 12 (bookworm)`.
    pub name: String,
    pub family: Family,
    /// `ubuntu`, `debian`, `fedora`, `centos`, `amzn`.
    pub distro: String,
    pub release: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codename: Option<String>,
    /// The login with sudo rights that the image's cloud-init creates.
    pub admin_user: String,
    pub image: ImageSource,
}
