//! Role files: the typed form of one file, and the resolved role after `include` merging.
//!
//! Merge rules (applied in `include` order, the including file last): scalars — the later value
//! wins; lists — appended (duplicates dropped); tables — merged key by key with the same rules.
//! `name`, `description`, `abstract`, `include`, `overrides` and `variants` belong to each file
//! and are never inherited. A role's `[variants]` are roles of their own (one OS each).

pub use crate::cluster::{ClusterDecl, ClusterSecret, ScalingDecl, SecretKind};
use crate::os::OsDef;
pub use crate::step::{targets, OnDecl, OnSpec, Phase, RoleStep};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One role file as written (validated, not yet merged).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleFile {
    pub name: String,
    pub description: String,
    /// Replace a role of the same name from an earlier source (e.g. a built-in role).
    #[serde(default)]
    pub overrides: bool,
    #[serde(default, rename = "abstract")]
    pub is_abstract: bool,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub os: Vec<String>,
    #[serde(default)]
    pub default_user: Option<String>,
    /// Users besides root whose processes may reach the instance metadata service (IMDS: the
    /// instance profile's credentials, the user data with a cluster's secrets), e.g. the service
    /// user of a daemon that calls AWS with the box's role. Every other user is refused by the
    /// base role's firewall rule. Merged over includes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imds_users: Vec<String>,
    /// Marks the role as kept for parity only (e.g. software that is no longer maintained): why,
    /// in one sentence. `list-roles` shows it and launching warns; roles including it inherit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<String>,
    #[serde(default)]
    pub instance: InstanceDefaults,
    #[serde(default)]
    pub packages: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Web UIs (or other TCP services) of the role's boxes that `cgcloud ssh ROLE --forward`
    /// opens on the workstation through the SSH connection: their ports need not be open to
    /// anyone (e.g. Jenkins listens on 127.0.0.1 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<Forward>,
    #[serde(default)]
    pub options: BTreeMap<String, OptionDecl>,
    #[serde(default)]
    pub iam: Vec<IamStatement>,
    /// Constants for `{{ name }}` placeholders (options override nothing here; names must differ).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub repos: Vec<Repo>,
    #[serde(default)]
    pub groups: Vec<GroupDecl>,
    #[serde(default)]
    pub users: Vec<UserDecl>,
    /// Ordered steps: files, directories, downloads, commands and services.
    #[serde(default)]
    pub steps: Vec<RoleStep>,
    /// How the agent runs on boxes of this role.
    #[serde(default)]
    pub agent: AgentDecl,
    /// Makes this role the node image of a cluster type.
    #[serde(default)]
    pub cluster: Option<ClusterDecl>,
    /// SSH keys the box makes, registered as EC2 key pairs in the namespace after the box is
    /// provisioned or recreated (e.g. the Jenkins master's key for its agents).
    #[serde(default)]
    pub key_pairs: Vec<KeyPairDecl>,
    /// Makes this role a Jenkins agent image (`cgcloud register-agents`).
    #[serde(default)]
    pub jenkins_agent: Option<JenkinsAgentDecl>,
    /// Roles that are this one on one operating system each, by name: e.g.
    /// `generic-debian-bookworm-box = { os = "debian-12", description = "..." }`. Each is a
    /// role of its own that includes this one; a role with variants names no `os` itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Variant>,
}

/// One variant of a role: its OS and how `list-roles` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub os: String,
    pub description: String,
}

impl RoleFile {
    /// The variants as role files of their own: the name and description, an include of
    /// this role and the one OS (what a file per variant said before variants existed).
    pub fn variant_files(&self) -> Result<Vec<(RoleFile, toml::Value)>, String> {
        if !self.variants.is_empty() && !self.os.is_empty() {
            return Err("a role with `[variants]` names the OS of each variant: drop its own `os`".into());
        }
        self.variants
            .iter()
            .map(|(name, v)| {
                let mut t = toml::Table::new();
                t.insert("name".into(), name.clone().into());
                t.insert("description".into(), v.description.clone().into());
                t.insert("include".into(), toml::Value::Array(vec![self.name.clone().into()]));
                t.insert("os".into(), toml::Value::Array(vec![v.os.clone().into()]));
                // A role that replaces another replaces its variants too.
                if self.overrides {
                    t.insert("overrides".into(), true.into());
                }
                let value = toml::Value::Table(t);
                let file = value.clone().try_into().map_err(|e| format!("variant {name}: {e}"))?;
                Ok((file, value))
            })
            .collect()
    }
}

/// A TCP service of the role's boxes that `cgcloud ssh --forward` reaches through SSH.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The port on the box (the workstation uses the same one when it is free, else any).
    pub port: u16,
    /// A role option that holds the port when it can be changed (e.g. `http_port`): the box's
    /// value of it wins over `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option: Option<String>,
    /// What it is, e.g. "Jenkins" or "Spark master UI".
    pub description: String,
    /// The host the box connects to for it: `localhost` (default), `private-ip` (the box's
    /// own private address, for a service bound to it), or a name the box resolves.
    #[serde(default = "default_forward_host")]
    pub host: String,
    /// On cluster nodes, which ones have it: `leader`, `workers` or `all` (default).
    #[serde(default)]
    pub on: ForwardOn,
}

fn default_forward_host() -> String {
    "localhost".into()
}

/// Which nodes of a cluster a forward applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForwardOn {
    #[default]
    All,
    Leader,
    Workers,
}

impl Forward {
    /// A real port, and a host name that is only a host name (it becomes part of an `ssh -L`
    /// argument).
    pub fn check(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err(format!("forwards: '{}' needs a port from 1 to 65535", self.description));
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
        if self.host.is_empty() || self.host.starts_with('-') || !self.host.chars().all(plain) {
            return Err(format!("forwards: host '{}' is not a host name", self.host));
        }
        if self.description.chars().any(char::is_control) {
            return Err("forwards: the description must be one line of text".into());
        }
        Ok(())
    }

    /// Whether the forward applies to a box with cluster ordinal `ordinal` (None: not a node).
    pub fn applies_to(&self, ordinal: Option<u32>) -> bool {
        match (self.on, ordinal) {
            (ForwardOn::All, _) | (_, None) => true,
            (ForwardOn::Leader, Some(o)) => o == 0,
            (ForwardOn::Workers, Some(o)) => o > 0,
        }
    }
}

/// A public key a box of the role makes (e.g. with a `command` step), registered as EC2 key
/// pair `NAME@<role's AWS name>` (e.g. `jenkins@hannes_jenkins-master`), replacing a different
/// key of that name: the box's key is the authority.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPairDecl {
    /// The key pair's name before `@`: lower-case letters, digits and `-`.
    pub name: String,
    /// Absolute path of the OpenSSH public key on the box (`ssh-rsa ...` or `ssh-ed25519 ...`).
    pub public_key: String,
}

impl KeyPairDecl {
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(format!("key pair name '{}' must be 1-32 of [a-z0-9-]", self.name));
        }
        let path_ok = self.public_key.starts_with('/')
            && !self.public_key.split('/').any(|c| c == "..")
            && self.public_key.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
        if !path_ok {
            return Err(format!(
                "key pair {}: public_key '{}' must be an absolute, plain path ([A-Za-z0-9/._-], no '..')",
                self.name, self.public_key
            ));
        }
        Ok(())
    }
}

/// How the Jenkins EC2 plugin uses images of this role (`cgcloud register-agents`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JenkinsAgentDecl {
    /// The account the plugin logs in as (its `remoteAdmin`); it must exist in the image.
    pub user: String,
    /// The agent's work directory (the plugin's `remoteFS`), writable by `user`.
    pub remote_fs: String,
    /// Labels jobs select the agent by; default: the role name's words, less `jenkins` and
    /// `agent` (`jenkins-agent-debian-trixie` → `debian trixie`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl JenkinsAgentDecl {
    pub fn check(&self) -> Result<(), String> {
        let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !plain(&self.user) {
            return Err(format!("jenkins_agent.user '{}' must be a plain user name", self.user));
        }
        if !self.remote_fs.starts_with('/') || !self.remote_fs.split('/').skip(1).all(plain) {
            return Err(format!("jenkins_agent.remote_fs '{}' must be an absolute, plain path", self.remote_fs));
        }
        if let Some(l) = self.labels.iter().find(|l| !plain(l)) {
            return Err(format!("jenkins_agent label '{l}' must be one plain word"));
        }
        Ok(())
    }

    /// The labels: the declared ones, else the role name's words less `jenkins` and `agent`.
    pub fn labels_for(&self, role: &str) -> Vec<String> {
        if !self.labels.is_empty() {
            return self.labels.clone();
        }
        role.split('-').filter(|w| !w.is_empty() && *w != "jenkins" && *w != "agent").map(str::to_owned).collect()
    }
}

/// A user or group name as useradd takes it, safe in a file or a command line.
pub fn valid_user_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Settings of the agent on boxes of a role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDecl {
    /// Report memory and disk use to CloudWatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<bool>,
    /// Seconds between key refreshes when no notification arrives (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// Accounts besides the admin user whose authorized_keys the agent keeps in sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
    /// For autostop: a shell command, run as root on a standalone box or a cluster's leader,
    /// that exits 1 when the box (the cluster) is idle; any other outcome (0, an error, no
    /// answer within 30 s) counts as busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_probe: Option<String>,
    /// For autostop: CPU use, in percent of one core, below which the box counts as idle
    /// (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_cpu_percent: Option<u32>,
}

/// A package repository, per package-manager family.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Repo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apt: Option<AptRepo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnf: Option<DnfRepo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AptRepo {
    pub uri: String,
    /// e.g. `["{{ os.codename }}"]`
    pub suites: Vec<String>,
    #[serde(default = "main_component")]
    pub components: Vec<String>,
    /// URL of the ASCII-armored or binary signing key.
    pub key_url: String,
    /// SHA-256 of the key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// The OpenPGP fingerprint the vendor publishes for its key (40 hex digits, spaces
    /// allowed): the downloaded file must hold that key and no other. Survives a vendor
    /// re-exporting the same key, which a `key_sha256` does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
}

fn main_component() -> Vec<String> {
    vec!["main".to_owned()]
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnfRepo {
    pub baseurl: String,
    pub gpgkey: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupDecl {
    pub name: String,
    #[serde(default)]
    pub system: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserDecl {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "bash")]
    pub shell: String,
    #[serde(default)]
    pub system: bool,
    /// Passwordless sudo.
    #[serde(default)]
    pub sudo: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
}

fn bash() -> String {
    "/bin/bash".to_owned()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceDefaults {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume_gb: Option<u32>,
    /// Every box of the role gets a persistent EBS volume (mounted at /mnt/persistent, kept
    /// when the box is terminated, attached again by `recreate`) of this many GiB by default;
    /// `-e GB` gives another size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_gb: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    All,
}

/// A security-group ingress rule declared by a role.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// An inclusive range `[from, to]`, instead of `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u16, u16)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<i32>,
    /// `anywhere`, `cluster` (the role's own security group) or a CIDR.
    pub from: String,
    #[serde(default)]
    pub description: String,
}

impl Port {
    /// A TCP or UDP rule names exactly one of `port` and `range` (a rule that named neither
    /// once opened every port), and a range runs upwards.
    pub fn check(&self) -> Result<(), String> {
        let what = || format!("port rule '{}' ({:?} from {})", self.description, self.proto, self.from);
        match (self.proto, self.port, self.range) {
            (Proto::Tcp | Proto::Udp, None, None) => Err(format!(
                "{} names neither `port` nor `range`; give `port = N`, or `range = [0, 65535]` to open every port on purpose",
                what()
            )),
            (Proto::Tcp | Proto::Udp, Some(_), Some(_)) => Err(format!("{} names both `port` and `range`; give one", what())),
            (_, _, Some((a, b))) if a > b => Err(format!("{}: range [{a}, {b}] runs downwards", what())),
            _ => Ok(()),
        }
    }

    /// The (from, to) port range EC2 expects; ICMP uses type and code in these fields.
    pub fn ec2_range(&self) -> (i32, i32) {
        match self.proto {
            Proto::Icmp => (self.icmp_type.unwrap_or(-1), self.icmp_code.unwrap_or(-1)),
            Proto::All => (-1, -1),
            _ => match (self.port, self.range) {
                (Some(p), _) => (i32::from(p), i32::from(p)),
                (None, Some((a, b))) => (i32::from(a), i32::from(b)),
                // check() refuses this; never widen to every port.
                (None, None) => (-2, -2),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptionType {
    String,
    Int,
    Bool,
}

/// A default value of an option.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OptionValue {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::Int(i) => write!(f, "{i}"),
            OptionValue::Str(s) => f.write_str(s),
        }
    }
}

/// A role option, set with `-O name=value`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptionDecl {
    #[serde(rename = "type")]
    pub option_type: OptionType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<OptionValue>,
    pub help: String,
    /// Whether images baked from a box keep the value for boxes recreated from them.
    #[serde(default)]
    pub inherited: bool,
    /// The only values allowed, when the option is one of a fixed set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// A regular expression the whole value must match, e.g. `[0-9]+\.[0-9]+\.[0-9]+`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

impl OptionDecl {
    /// Checks `value` (already normalized for the option's type) against `choices` and
    /// `pattern`; the error says what was expected.
    pub fn allows(&self, value: &str) -> Result<(), String> {
        if !self.choices.is_empty() && !self.choices.iter().any(|c| c == value) {
            return Err(format!("one of {}", self.choices.join(", ")));
        }
        if let Some(p) = &self.pattern {
            let re = regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("a valid pattern ({e})"))?;
            if !re.is_match(value) {
                return Err(format!("a value matching {p}"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IamStatement {
    #[serde(default = "allow")]
    pub effect: String,
    pub action: Vec<String>,
    #[serde(default = "star")]
    pub resource: Vec<String>,
    /// IAM conditions: operator → condition key → values, e.g.
    /// `{ StringLike = { "ec2:InstanceProfile" = ["arn:aws:iam::*:instance-profile{{ namespace.iam_path }}*"] } }`.
    /// Operators: StringEquals, StringLike, StringEqualsIfExists, StringLikeIfExists,
    /// ForAllValues:StringEquals.
    /// Values know the same placeholders as resources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub condition: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl IamStatement {
    /// The statement for namespace `ns` (placeholders filled in), as the policy evaluator and
    /// IAM take it.
    pub fn render(
        &self,
        ns: &str,
        iam_path: &str,
        aws_prefix: &str,
    ) -> Result<cgcloud_core::policy::Statement, String> {
        use cgcloud_core::policy::{Condition, Effect, Op, Statement};
        let r = |v: &String| render_iam(v, ns, iam_path, aws_prefix);
        let mut conditions = Vec::new();
        for (op, keys) in &self.condition {
            let op = Op::parse(op).ok_or_else(|| {
                format!(
                    "IAM condition operator '{op}' is not one cgcloud knows (one of {})",
                    Op::ALL.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", ")
                )
            })?;
            for (key, values) in keys {
                conditions.push(Condition {
                    op,
                    key: key.clone(),
                    values: values.iter().map(r).collect::<Result<_, _>>()?,
                });
            }
        }
        Ok(Statement {
            why: "role statement",
            effect: if self.effect.eq_ignore_ascii_case("deny") { Effect::Deny } else { Effect::Allow },
            actions: self.action.clone(),
            resources: self.resource.iter().map(r).collect::<Result<_, _>>()?,
            conditions,
        })
    }
}

fn allow() -> String {
    "Allow".to_owned()
}

/// A resource of an `[[iam]]` statement with its placeholders filled in for namespace `ns`:
/// `{{ namespace }}` (e.g. `/hannes/`), `{{ namespace.iam_path }}` (where the namespace's IAM
/// roles live, `/cgcloud/hannes/`) and `{{ namespace.aws_prefix }}` (what its AWS names start
/// with, `hannes_`). E.g. PassRole on the namespace's agent roles only:
/// `arn:aws:iam::*:role{{ namespace.iam_path }}{{ namespace.aws_prefix }}jenkins-agent-*`.
pub fn render_iam(resource: &str, ns: &str, iam_path: &str, aws_prefix: &str) -> Result<String, String> {
    let vars = BTreeMap::from([
        ("namespace".to_owned(), ns.to_owned()),
        ("namespace.iam_path".to_owned(), iam_path.to_owned()),
        ("namespace.aws_prefix".to_owned(), aws_prefix.to_owned()),
    ]);
    cgcloud_core::plan::render(resource, &vars, &[]).map_err(|e| {
        format!(
            "IAM resource '{resource}': {e} (IAM resources know namespace, namespace.iam_path, namespace.aws_prefix)"
        )
    })
}
fn star() -> Vec<String> {
    vec!["*".to_owned()]
}

/// A role after merging its includes, ready to compile.
#[derive(Debug, Clone, Serialize)]
pub struct Role {
    pub name: String,
    pub description: String,
    /// Where the role came from: `built-in` or a file path.
    pub source: String,
    /// Supported operating systems; the first is the default.
    pub os: Vec<OsDef>,
    pub default_user: Option<String>,
    /// Users besides root who may reach IMDS (`imds_users`, merged over includes).
    pub imds_users: Vec<String>,
    /// Why the role is legacy, when it is (`legacy` in the file, inherited).
    pub legacy: Option<String>,
    pub instance: InstanceDefaults,
    pub packages: BTreeMap<String, Vec<String>>,
    pub ports: Vec<Port>,
    pub forwards: Vec<Forward>,
    pub options: BTreeMap<String, OptionDecl>,
    pub iam: Vec<IamStatement>,
    pub vars: BTreeMap<String, String>,
    pub repos: Vec<Repo>,
    pub groups: Vec<GroupDecl>,
    pub users: Vec<UserDecl>,
    pub steps: Vec<RoleStep>,
    pub agent: AgentDecl,
    pub cluster: Option<ClusterDecl>,
    pub key_pairs: Vec<KeyPairDecl>,
    pub jenkins_agent: Option<JenkinsAgentDecl>,
}

impl Role {
    /// The packages to install on `os`: `all`, then the family's, then the OS's own.
    pub fn packages_for(&self, os: &OsDef) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for key in ["all", os.family.as_str(), os.distro.as_str(), os.id.as_str()] {
            for p in self.packages.get(key).into_iter().flatten() {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }
}

/// Merges `later` into `base` with the documented rules.
pub fn merge_values(base: &mut toml::Value, later: toml::Value) {
    match (base, later) {
        (toml::Value::Table(b), toml::Value::Table(l)) => {
            for (k, v) in l {
                match b.get_mut(&k) {
                    Some(existing) => merge_values(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (toml::Value::Array(b), toml::Value::Array(l)) => {
            for v in l {
                if !b.contains(&v) {
                    b.push(v);
                }
            }
        }
        (b, l) => *b = l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_rules() {
        let mut base: toml::Value =
            toml::from_str("a = 1\nlist = [1, 2]\n[t]\nx = 'base'\ny = 'keep'\n[t.inner]\nv = [1]").unwrap();
        let later: toml::Value = toml::from_str("a = 2\nlist = [2, 3]\n[t]\nx = 'later'\n[t.inner]\nv = [2]").unwrap();
        merge_values(&mut base, later);
        assert_eq!(base["a"].as_integer(), Some(2));
        assert_eq!(base["list"].as_array().unwrap().len(), 3);
        assert_eq!(base["t"]["x"].as_str(), Some("later"));
        assert_eq!(base["t"]["y"].as_str(), Some("keep"));
        assert_eq!(base["t"]["inner"]["v"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn port_ranges() {
        let p = |proto, port, range| Port {
            proto,
            port,
            range,
            icmp_type: Some(3),
            icmp_code: Some(4),
            from: "anywhere".into(),
            description: String::new(),
        };
        assert_eq!(p(Proto::Tcp, Some(22), None).ec2_range(), (22, 22));
        assert_eq!(p(Proto::Tcp, None, Some((7077, 7078))).ec2_range(), (7077, 7078));
        assert_eq!(p(Proto::Icmp, None, None).ec2_range(), (3, 4));
        assert_eq!(p(Proto::All, None, None).ec2_range(), (-1, -1));
        assert!(p(Proto::Tcp, Some(22), None).check().is_ok());
        let err = p(Proto::Tcp, None, None).check().unwrap_err();
        assert!(err.contains("neither `port` nor `range`"), "{err}");
        assert!(p(Proto::Udp, Some(1), Some((1, 2))).check().unwrap_err().contains("both"));
        assert!(p(Proto::Tcp, None, Some((9, 1))).check().unwrap_err().contains("downwards"));
        assert!(p(Proto::Icmp, None, None).check().is_ok());
    }
}
