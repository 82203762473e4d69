//! Settings resolution. Precedence for every setting: command-line flag, then environment
//! variable, then the selected profile of the config file, then the built-in default. The
//! config file lives at `$CGCLOUD_CONFIG`, else `$XDG_CONFIG_HOME/cgcloud/config.toml`, else
//! `~/.config/cgcloud/config.toml`, and holds named profiles (the local cloud writes `local`).

use crate::cli::{GlobalArgs, OutputFormat, SshAddress};
use anyhow::{bail, Context as _, Result};
use cgcloud_aws::ConnectSettings;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The config file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The profile used when neither --profile nor CGCLOUD_PROFILE is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One named profile. Every key is optional.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// An AWS shared-config profile for credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypairs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_address: Option<String>,
    /// The endpoint the agent on boxes uses (default: AWS's); the local cloud sets its bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_endpoint: Option<String>,
    /// Static credentials for the agent (the local cloud); boxes use their instance profile otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_secret_access_key: Option<String>,
    /// Release mode: where boxes download the agent (`{version}` and `{arch}` are filled in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
    /// The SHA-256 the downloaded agent must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_sha256: Option<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read config file {}", path.display())),
        }
    }

    /// Sets profile `name` in the config file at `path` (and `default_profile` to it when
    /// `make_default` and none is set), keeping the rest of the file as its user wrote it:
    /// comments, order, other profiles.
    pub fn set_profile(path: &Path, name: &str, profile: &Profile, make_default: bool) -> Result<()> {
        let mut doc = Self::edit(path)?;
        let table: toml_edit::DocumentMut = toml::to_string(profile)
            .context("cannot serialize the profile")?
            .parse()
            .context("cannot serialize the profile")?;
        let profiles = doc
            .entry("profiles")
            .or_insert_with(|| {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                toml_edit::Item::Table(t)
            })
            .as_table_mut()
            .with_context(|| format!("{}: `profiles` is not a table", path.display()))?;
        profiles.insert(name, toml_edit::Item::Table(table.as_table().clone()));
        if make_default && doc.get("default_profile").is_none() {
            doc.insert("default_profile", toml_edit::value(name));
        }
        write_private(path, &doc.to_string())
    }

    /// Removes profile `name` (and `default_profile` if it names it), keeping the rest of the
    /// file; true if anything changed.
    pub fn remove_profile(path: &Path, name: &str) -> Result<bool> {
        let mut doc = Self::edit(path)?;
        let mut changed =
            doc.get_mut("profiles").and_then(|p| p.as_table_mut()).is_some_and(|p| p.remove(name).is_some());
        if doc.get("default_profile").and_then(|d| d.as_str()) == Some(name) {
            doc.remove("default_profile");
            changed = true;
        }
        if changed {
            write_private(path, &doc.to_string())?;
        }
        Ok(changed)
    }

    /// The file as an editable document, after checking that it is a valid config.
    fn edit(path: &Path) -> Result<toml_edit::DocumentMut> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read config file {}", path.display())),
        };
        toml::from_str::<ConfigFile>(&text).with_context(|| format!("invalid config file {}", path.display()))?;
        text.parse().with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Replaces `path` with `text` atomically, readable by its owner alone from the first byte (a
/// config may hold secrets: a profile's static keys).
fn write_private(path: &Path, text: &str) -> Result<()> {
    cgcloud_core::fsutil::write_atomic(path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| home().join(fallback))
}

pub fn config_path() -> PathBuf {
    std::env::var_os("CGCLOUD_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| xdg("XDG_CONFIG_HOME", ".config").join("cgcloud/config.toml"))
}

pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state").join("cgcloud")
}

/// Directories of plugin roles: `CGCLOUD_PLUGINS` (colon-separated), then the user's roles dir.
pub fn plugin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var("CGCLOUD_PLUGINS")
        .unwrap_or_default()
        .split(':')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    let user = xdg("XDG_CONFIG_HOME", ".config").join("cgcloud/roles");
    if user.is_dir() {
        dirs.push(user);
    }
    dirs
}

/// The resolved settings of one invocation.
#[derive(Debug, Clone)]
pub struct Settings {
    pub profile_name: Option<String>,
    pub namespace: String,
    pub zone: Option<String>,
    pub connect: ConnectSettings,
    pub subnet: Option<String>,
    pub keypairs: Vec<String>,
    pub instance_type: Option<String>,
    pub ssh_address: SshAddress,
    pub output: OutputFormat,
    pub state_dir: PathBuf,
    pub agent: AgentSettings,
}

/// How boxes get and run the agent.
#[derive(Debug, Clone, Default)]
pub struct AgentSettings {
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub url: Option<String>,
    pub sha256: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_ssh_address(s: &str) -> Result<SshAddress> {
    Ok(match s {
        "auto" => SshAddress::Auto,
        "public" => SshAddress::Public,
        "private" => SshAddress::Private,
        other => bail!("invalid ssh address '{other}': expected auto, public or private"),
    })
}

impl Settings {
    /// Resolves flags (with their environment variables, which clap folds in) over the
    /// config file's profile over defaults.
    pub fn resolve(global: &GlobalArgs, file: &ConfigFile) -> Result<Settings> {
        let profile_name = global.profile.clone().or_else(|| file.default_profile.clone());
        let (profile, aws_profile) = match &profile_name {
            Some(name) => match file.profiles.get(name) {
                Some(p) => (p.clone(), p.aws_profile.clone()),
                // Not a cgcloud profile: it names an AWS shared-config profile.
                None => (Profile::default(), Some(name.clone())),
            },
            None => (Profile::default(), None),
        };

        // Zone and region come as a pair from the highest layer that sets either.
        let (zone, region) = if global.zone.is_some() || global.region.is_some() {
            (global.zone.clone(), global.region.clone())
        } else {
            (profile.zone.clone(), profile.region.clone())
        };
        let region = match (&zone, region) {
            (Some(z), Some(r)) => {
                cgcloud_core::zone::check_zone_in_region(z, &r)?;
                Some(r)
            }
            (Some(z), None) => Some(cgcloud_core::zone::region_of_zone(z)?),
            (None, r) => r,
        };

        // AWS_ENDPOINT_URL (environment) outranks the profile's endpoint; the SDK reads it.
        let env_endpoint = std::env::var("AWS_ENDPOINT_URL").ok().filter(|s| !s.is_empty());
        let endpoint = global.endpoint.clone().or(if env_endpoint.is_some() { None } else { profile.endpoint.clone() });

        let ssh_address = match std::env::var("CGCLOUD_SSH_ADDRESS").ok().filter(|s| !s.is_empty()) {
            Some(s) => parse_ssh_address(&s)?,
            None => match &profile.ssh_address {
                Some(s) => parse_ssh_address(s)?,
                None => SshAddress::Auto,
            },
        };

        let max_attempts = match std::env::var("CGCLOUD_MAX_ATTEMPTS") {
            Ok(v) => Some(v.parse::<u32>().with_context(|| format!("CGCLOUD_MAX_ATTEMPTS='{v}' is not a number"))?),
            Err(_) => None,
        };
        let attempt_timeout = match std::env::var("CGCLOUD_ATTEMPT_TIMEOUT") {
            Ok(v) => Some(std::time::Duration::from_secs(
                v.parse::<u64>()
                    .with_context(|| format!("CGCLOUD_ATTEMPT_TIMEOUT='{v}' is not a number of seconds"))?,
            )),
            Err(_) => None,
        };

        Ok(Settings {
            namespace: global
                .namespace
                .clone()
                .or(profile.namespace.clone())
                .unwrap_or_else(|| cgcloud_core::namespace::DEFAULT_NAMESPACE.to_owned()),
            zone,
            connect: ConnectSettings {
                region,
                aws_profile,
                endpoint,
                access_key_id: profile.aws_access_key_id.clone(),
                secret_access_key: profile.aws_secret_access_key.clone(),
                max_attempts,
                attempt_timeout,
            },
            subnet: profile.subnet.clone(),
            keypairs: profile.keypairs.clone().unwrap_or_default(),
            instance_type: profile.instance_type.clone(),
            ssh_address,
            output: global.output.unwrap_or(OutputFormat::Text),
            state_dir: state_dir(),
            agent: AgentSettings {
                endpoint: env("CGCLOUD_AGENT_ENDPOINT").or(profile.agent_endpoint.clone()),
                access_key_id: profile.agent_access_key_id.clone(),
                secret_access_key: profile.agent_secret_access_key.clone(),
                url: env("CGCLOUD_AGENT_URL").or(profile.agent_url.clone()),
                sha256: env("CGCLOUD_AGENT_SHA256").or(profile.agent_sha256.clone()),
            },
            profile_name,
        })
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.state_dir.join("known_hosts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ConfigFile {
        toml::from_str(
            r#"
            default_profile = "local"
            [profiles.local]
            endpoint = "http://127.0.0.1:5000"
            zone = "us-west-2a"
            subnet = "subnet-1"
            namespace = "/dev/"
            aws_access_key_id = "testing"
            aws_secret_access_key = "testing"
            keypairs = ["me"]
            ssh_address = "private"
            [profiles.other]
            region = "eu-west-1"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn profile_values_apply_and_flags_win() {
        let s = Settings::resolve(&GlobalArgs::default(), &file()).unwrap();
        assert_eq!(s.profile_name.as_deref(), Some("local"));
        assert_eq!(s.connect.region.as_deref(), Some("us-west-2"));
        assert_eq!(s.zone.as_deref(), Some("us-west-2a"));
        assert_eq!(s.namespace, "/dev/");
        assert_eq!(s.subnet.as_deref(), Some("subnet-1"));
        assert_eq!(s.ssh_address, SshAddress::Private);
        assert_eq!(s.connect.access_key_id.as_deref(), Some("testing"));

        let g = GlobalArgs { namespace: Some("/x/".into()), region: Some("us-east-1".into()), ..Default::default() };
        let s = Settings::resolve(&g, &file()).unwrap();
        assert_eq!(s.namespace, "/x/");
        // A region given on the command line replaces the profile's zone too.
        assert_eq!(s.connect.region.as_deref(), Some("us-east-1"));
        assert_eq!(s.zone, None);
    }

    #[test]
    fn unknown_profile_is_an_aws_profile() {
        let g = GlobalArgs { profile: Some("work".into()), ..Default::default() };
        let s = Settings::resolve(&g, &file()).unwrap();
        assert_eq!(s.connect.aws_profile.as_deref(), Some("work"));
        assert_eq!(s.connect.endpoint, None);
        assert_eq!(s.namespace, "/__me__/");
    }

    #[test]
    fn zone_region_mismatch_is_an_error() {
        let g = GlobalArgs { zone: Some("us-east-1a".into()), region: Some("us-west-2".into()), ..Default::default() };
        let err = Settings::resolve(&g, &ConfigFile::default()).unwrap_err();
        assert!(err.to_string().contains("not in region"), "{err}");
        let g = GlobalArgs { zone: Some("nowhere".into()), ..Default::default() };
        assert!(Settings::resolve(&g, &ConfigFile::default()).is_err());
    }

    #[test]
    fn config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/config.toml");
        assert!(ConfigFile::load(&path).unwrap().profiles.is_empty());
        ConfigFile::set_profile(&path, "local", &file().profiles["local"], false).unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap().profiles["local"], file().profiles["local"]);
        std::fs::write(&path, "bogus = 1").unwrap();
        assert!(ConfigFile::load(&path).unwrap_err().to_string().contains("invalid config file"));
    }

    #[test]
    fn profiles_are_edited_in_place() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mine = "# my settings\n[profiles.work]\nzone = \"us-west-2b\" # the team's zone\n";
        std::fs::write(&path, mine).unwrap();
        ConfigFile::set_profile(&path, "local", &file().profiles["local"], true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# my settings") && text.contains("# the team's zone"), "{text}");
        let loaded = ConfigFile::load(&path).unwrap();
        assert_eq!(loaded.profiles["local"], file().profiles["local"]);
        assert_eq!(loaded.profiles["work"].zone.as_deref(), Some("us-west-2b"));
        assert_eq!(loaded.default_profile.as_deref(), Some("local"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(ConfigFile::remove_profile(&path, "local").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), mine);
        assert!(!ConfigFile::remove_profile(&path, "local").unwrap());
        // An existing default is kept.
        std::fs::write(&path, "default_profile = \"work\"\n").unwrap();
        ConfigFile::set_profile(&path, "local", &file().profiles["local"], true).unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap().default_profile.as_deref(), Some("work"));
    }
}
