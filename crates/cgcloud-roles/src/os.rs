//! Operating-system definitions: package-manager family, default admin user and how to find
//! the distribution's official image in a region.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
/// `{{ arch }}` becomes `x86_64`/`arm64` and `{{ deb_arch }}` becomes `amd64`/`arm64`, the same
/// placeholder syntax as in roles.
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
    /// Substitutes the architecture placeholders in `template` (checked by [`OsDef::check`]
    /// when the definition is loaded; anything else is left as it is).
    pub fn expand(template: &str, arch: Arch) -> String {
        cgcloud_core::plan::render(template, &arch_vars(arch), &[]).unwrap_or_else(|_| template.to_owned())
    }
}

fn arch_vars(arch: Arch) -> BTreeMap<String, String> {
    BTreeMap::from([("arch".to_owned(), arch.ec2().to_owned()), ("deb_arch".to_owned(), arch.debian().to_owned())])
}

/// A placeholder of the retired single-brace form (`{deb_arch}`), if `text` has one.
fn single_brace(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            // A `{{ ... }}` placeholder: skip it whole.
            rest = inner.find("}}").map_or("", |end| &inner[end + 2..]);
            continue;
        }
        let end = after.find('}')?;
        let name = &after[..end];
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Some(name);
        }
        rest = after;
    }
    None
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

impl OsDef {
    /// The image lookup uses only the architecture placeholders, in the `{{ name }}` form.
    pub fn check(&self) -> Result<(), String> {
        for text in self.image.ssm.iter().chain(&self.image.name) {
            if let Some(name) = single_brace(text) {
                return Err(format!(
                    "image: '{{{name}}}' is the old placeholder form; write '{{{{ {name} }}}}' (in '{text}')"
                ));
            }
            cgcloud_core::plan::render(text, &arch_vars(Arch::X86_64), &[])
                .map_err(|e| format!("image: {e} in '{text}' (known: arch, deb_arch)"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian(name: &str) -> OsDef {
        let text = format!(
            "id='debian-12'\nname='Debian 12'\nfamily='apt'\ndistro='debian'\nrelease='12'\nadmin_user='admin'\n\
             image = {{ owners = ['136693071363'], name = '{name}' }}"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn image_placeholders() {
        let os = debian("debian-12-{{ deb_arch }}-*-{{arch}}");
        assert!(os.check().is_ok());
        let name = os.image.name.as_deref().unwrap();
        assert_eq!(ImageSource::expand(name, Arch::Arm64), "debian-12-arm64-*-arm64");
        assert_eq!(ImageSource::expand(name, Arch::X86_64), "debian-12-amd64-*-x86_64");
        // The old single-brace form says what to write instead.
        let err = debian("debian-12-{deb_arch}-*").check().unwrap_err();
        assert!(err.contains("'{deb_arch}' is the old placeholder form; write '{{ deb_arch }}'"), "{err}");
        let err = debian("x-{{ release }}").check().unwrap_err();
        assert!(err.contains("unknown variable 'release'") && err.contains("known: arch, deb_arch"), "{err}");
    }
}
