//! Roles as data: built-in role and OS definitions embedded from the workspace's `roles/`
//! folder, plugin directories of role files, `include` resolution and merging, validation, and
//! role options.

pub mod cluster;
pub mod compile;
pub mod lint;
pub mod os;
mod resolve;
pub mod role;
pub mod step;
pub mod when;

use os::OsDef;
use role::{OptionType, Role, RoleFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin.rs"));
}

pub const BUILTIN_SOURCE: &str = "built-in";

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("no such role: '{name}'{}", suggest(.suggestions))]
    UnknownRole { name: String, suggestions: Vec<String> },
    #[error("role '{0}' is abstract: it can only be included by other roles")]
    Abstract(String),
    #[error("include cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("role '{role}' includes '{include}', which does not exist")]
    UnknownInclude { role: String, include: String },
    #[error("role '{role}' names operating system '{os}', which does not exist (known: {known})")]
    UnknownOs { role: String, os: String, known: String },
    #[error("role '{0}' supports no operating system: add `os = [...]` to it or to a role it includes")]
    NoOs(String),
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("role '{name}' is defined in both {first} and {second}; to replace it on purpose, add `overrides = true` to {second}")]
    Duplicate { name: String, first: String, second: String },
    #[error("cannot read plugin directory {dir}: {source}")]
    PluginDir { dir: String, source: std::io::Error },
    #[error("option '{name}' is not supported by role '{role}'{}", known_options(.known))]
    UnknownOption { role: String, name: String, known: Vec<String> },
    #[error("'{value}' is not a valid value for option '{name}' (expected {expected})")]
    BadOptionValue { name: String, value: String, expected: String },
    #[error("'{0}' is not of the form NAME=VALUE")]
    MalformedOption(String),
    #[error("no such cluster type: '{name}' (cluster types: {known})")]
    UnknownClusterType { name: String, known: String },
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        "; run 'cgcloud list-roles' to see all roles".to_owned()
    } else {
        format!("; did you mean {}?", s.iter().map(|x| format!("'{x}'")).collect::<Vec<_>>().join(" or "))
    }
}

fn known_options(k: &[String]) -> String {
    if k.is_empty() {
        " (the role has no options)".to_owned()
    } else {
        format!(" (options: {})", k.join(", "))
    }
}

/// A role file as loaded, before merging.
#[derive(Debug, Clone)]
struct Loaded {
    file: RoleFile,
    value: toml::Value,
    source: String,
}

/// All known operating systems and roles.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    oses: BTreeMap<String, OsDef>,
    roles: BTreeMap<String, Loaded>,
}

/// One line of `list-roles`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoleSummary {
    pub name: String,
    pub description: String,
    pub source: String,
    pub os: Vec<String>,
    /// Why the role is legacy, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy: Option<String>,
}

fn parse_err(file: &str, e: impl std::fmt::Display) -> RoleError {
    RoleError::Parse { file: file.to_owned(), message: e.to_string().trim_end().to_owned() }
}

impl Registry {
    /// The built-in OS definitions and roles.
    pub fn builtin() -> Result<Self, RoleError> {
        let mut reg = Registry::default();
        for (path, text) in builtin::BUILTIN {
            let file = format!("roles/{path}");
            if path.starts_with("os/") {
                let os: OsDef = toml::from_str(text).map_err(|e| parse_err(&file, e))?;
                os.check().map_err(|e| parse_err(&file, e))?;
                reg.oses.insert(os.id.clone(), os);
            } else {
                reg.add_role_text(&file, text, BUILTIN_SOURCE.to_owned())?;
            }
        }
        Ok(reg)
    }

    /// The built-in roles plus every `*.toml` file in `dirs`, in order.
    pub fn load(dirs: &[PathBuf]) -> Result<Self, RoleError> {
        let mut reg = Self::builtin()?;
        for dir in dirs {
            reg.add_dir(dir)?;
        }
        Ok(reg)
    }

    fn add_dir(&mut self, dir: &Path) -> Result<(), RoleError> {
        let io = |source| RoleError::PluginDir { dir: dir.display().to_string(), source };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for path in files {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| parse_err(&shown, e))?;
            self.add_role_text(&shown, &text, shown.clone())?;
        }
        Ok(())
    }

    /// Adds one plugin role file's text, as `load` does for each file of a plugin directory
    /// (`file` names it in messages). Roles are merged and checked when looked up.
    pub fn add_plugin_text(&mut self, file: &str, text: &str) -> Result<(), RoleError> {
        self.add_role_text(file, text, file.to_owned())
    }

    fn add_role_text(&mut self, file: &str, text: &str, source: String) -> Result<(), RoleError> {
        let value: toml::Value = toml::from_str(text).map_err(|e| parse_err(file, e))?;
        let role: RoleFile = toml::from_str(text).map_err(|e| parse_err(file, e))?;
        for (i, step) in role.steps.iter().enumerate() {
            step.check().map_err(|m| parse_err(file, format!("step {} ({}): {m}", i + 1, step.label())))?;
        }
        let variants = role.variant_files().map_err(|m| parse_err(file, m))?;
        self.insert(file, Loaded { file: role, value, source: source.clone() })?;
        for (variant, value) in variants {
            self.insert(file, Loaded { file: variant, value, source: source.clone() })?;
        }
        Ok(())
    }

    /// Adds a role read from `file`; a second role of a name needs `overrides = true`.
    fn insert(&mut self, file: &str, loaded: Loaded) -> Result<(), RoleError> {
        if let Some(existing) = self.roles.get(&loaded.file.name) {
            if !loaded.file.overrides {
                return Err(RoleError::Duplicate {
                    name: loaded.file.name.clone(),
                    first: existing.source.clone(),
                    second: file.to_owned(),
                });
            }
        }
        self.roles.insert(loaded.file.name.clone(), loaded);
        Ok(())
    }

    pub fn os(&self, id: &str) -> Option<&OsDef> {
        self.oses.get(id)
    }

    pub fn oses(&self) -> impl Iterator<Item = &OsDef> {
        self.oses.values()
    }

    /// Roles that can be created (not abstract), sorted by name.
    pub fn list(&self) -> Vec<RoleSummary> {
        self.roles
            .values()
            .filter(|l| !l.file.is_abstract)
            .map(|l| {
                let resolved = self.resolve(&l.file.name).ok();
                RoleSummary {
                    name: l.file.name.clone(),
                    description: l.file.description.clone(),
                    source: l.source.clone(),
                    os: resolved.as_ref().map(|r| r.os.iter().map(|o| o.id.clone()).collect()).unwrap_or_default(),
                    legacy: resolved.and_then(|r| r.legacy),
                }
            })
            .collect()
    }

    /// The cluster types: (type, node role).
    pub fn cluster_types(&self) -> Vec<(String, String)> {
        self.roles
            .values()
            .filter_map(|l| Some((l.value.get("cluster")?.get("type")?.as_str()?.to_owned(), l.file.name.clone())))
            .collect()
    }

    /// The node role of a cluster type.
    pub fn cluster_type(&self, cluster_type: &str) -> Result<Role, RoleError> {
        let types = self.cluster_types();
        match types.iter().find(|(t, _)| t == cluster_type) {
            Some((_, role)) => self.role(role),
            None => Err(RoleError::UnknownClusterType {
                name: cluster_type.to_owned(),
                known: types.into_iter().map(|(t, _)| t).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The role a box role name stands for: the name itself, or for a cluster's leader or
    /// worker name, the cluster's node role.
    pub fn box_role(&self, name: &str) -> Result<Role, RoleError> {
        for (_, node) in self.cluster_types() {
            if let Ok(r) = self.role(&node) {
                if r.cluster.as_ref().is_some_and(|c| c.leader == name || c.worker == name) {
                    return Ok(r);
                }
            }
        }
        self.role(name)
    }

    /// Every role name, including abstract ones.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// The merged, creatable role called `name`.
    pub fn role(&self, name: &str) -> Result<Role, RoleError> {
        let loaded = self.roles.get(name).ok_or_else(|| self.unknown(name))?;
        if loaded.file.is_abstract {
            return Err(RoleError::Abstract(name.to_owned()));
        }
        self.resolve(name)
    }

    fn unknown(&self, name: &str) -> RoleError {
        let suggestions = self
            .roles
            .values()
            .filter(|l| !l.file.is_abstract)
            .map(|l| l.file.name.as_str())
            .filter(|n| n.contains(name) || name.contains(n) || strsim::levenshtein(n, name) <= 3)
            .take(3)
            .map(str::to_owned)
            .collect();
        RoleError::UnknownRole { name: name.to_owned(), suggestions }
    }
}

impl Role {
    /// Validates `NAME=VALUE` against the role's options; returns the name and normalized value.
    pub fn parse_option(&self, assignment: &str) -> Result<(String, String), RoleError> {
        let (name, value) =
            assignment.split_once('=').ok_or_else(|| RoleError::MalformedOption(assignment.to_owned()))?;
        let name = name.trim();
        let decl = self.options.get(name).ok_or_else(|| RoleError::UnknownOption {
            role: self.name.clone(),
            name: name.to_owned(),
            known: self.options.keys().cloned().collect(),
        })?;
        let bad = |expected: &str| RoleError::BadOptionValue {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        // Values end up in files, unit files and shell commands on the box: a newline would
        // add a unit directive or a command. Multi-line values spell line breaks `\n`.
        if value.chars().any(char::is_control) {
            return Err(bad("text without control characters such as newlines (write line breaks as \\n)"));
        }
        let normalized = match decl.option_type {
            OptionType::String => value.to_owned(),
            OptionType::Int => value.trim().parse::<i64>().map_err(|_| bad("an integer"))?.to_string(),
            OptionType::Bool => match value.trim() {
                "true" | "True" => "true".to_owned(),
                "false" | "False" => "false".to_owned(),
                _ => return Err(bad("true or false")),
            },
        };
        decl.allows(&normalized).map_err(|expected| bad(&expected))?;
        Ok((name.to_owned(), normalized))
    }

    /// Every option with its effective value: `given` (validated) over the declared defaults.
    pub fn option_values(&self, given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        self.options
            .iter()
            .filter_map(|(name, decl)| {
                given
                    .get(name)
                    .cloned()
                    .or_else(|| decl.default.as_ref().map(ToString::to_string))
                    .map(|v| (name.clone(), v))
            })
            .collect()
    }
}
/// The JSON Schema of role files, for editors (published as docs/role.schema.json).
pub fn role_schema() -> String {
    let schema = schemars::schema_for!(RoleFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn builtin_roles_resolve() {
        let reg = Registry::builtin().unwrap();
        let roles = reg.list();
        assert!(roles.len() >= 11, "{roles:?}");
        for r in &roles {
            let role = reg.role(&r.name).unwrap();
            assert!(!role.os.is_empty());
            assert!(role.instance.root_volume_gb.is_some_and(|gb| gb >= 10));
            assert!(role.ports.iter().any(|p| p.port == Some(22)), "{} has SSH", r.name);
        }
        assert!(roles.iter().all(|r| r.name != "base"), "abstract roles are not listed");
        assert!(matches!(reg.role("base"), Err(RoleError::Abstract(_))));
    }

    #[test]
    fn cluster_types_with_a_shared_directory_say_so() {
        let reg = Registry::builtin().unwrap();
        let shared = |t: &str| reg.cluster_type(t).unwrap().cluster.unwrap().shared_dir;
        for t in ["slurm", "toil", "mesos", "toil-mesos"] {
            assert_eq!(shared(t).as_deref(), Some("/shared"), "{t}");
        }
        for t in ["spark", "generic"] {
            assert_eq!(shared(t), None, "{t}");
        }
        for bad in ["shared", "/", "/a/../etc", "/a b", "/$(x)"] {
            let decl = role::ClusterDecl {
                cluster_type: "c".into(),
                leader: "l".into(),
                worker: "w".into(),
                secrets: Vec::new(),
                shared_dir: Some(bad.into()),
                scaling: None,
            };
            assert!(decl.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_role_suggests() {
        let reg = Registry::builtin().unwrap();
        let err = reg.role("generic-debian-bookwrm-box").unwrap_err();
        assert!(err.to_string().contains("did you mean 'generic-debian-bookworm-box'"), "{err}");
        let err = reg.role("zzzzzzzzzzzz").unwrap_err();
        assert!(err.to_string().contains("list-roles"), "{err}");
    }

    pub(crate) fn reg_with(files: &[(&str, &str)]) -> Result<Registry, RoleError> {
        let mut reg = Registry::builtin()?;
        for (name, text) in files {
            reg.add_role_text(name, text, (*name).to_owned())?;
        }
        Ok(reg)
    }

    #[test]
    fn malformed_files_name_file_line_and_key() {
        let err = reg_with(&[("bad.toml", "name='x'\ndescription='d'\nbogus_key = 1\n")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bad.toml") && msg.contains("bogus_key"), "{msg}");
        let err = reg_with(&[("syntax.toml", "name='x'\ndescription=\n")]).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    /// The 14 roles that were a file each (a role paired with an OS) are variants now, with
    /// the same names, descriptions and OS.
    #[test]
    fn variants_are_roles_of_their_own() {
        let reg = Registry::builtin().unwrap();
        let listed: Vec<(String, String, Vec<String>)> =
            reg.list().into_iter().map(|r| (r.name, r.description, r.os)).collect();
        for (name, desc, os) in [
            ("generic-debian-bookworm-box", "A plain Debian 12 (bookworm) box", "debian-12"),
            ("generic-ubuntu-jammy-box", "A plain Ubuntu 22.04 LTS (jammy) box", "ubuntu-22.04"),
            ("jenkins-agent-debian-trixie", "Jenkins agent image on Debian 13 (trixie)", "debian-13"),
            (
                "jenkins-agent-amazon-linux-2023",
                "Jenkins agent image on Amazon Linux 2023 (Corretto 21)",
                "amazon-linux-2023",
            ),
        ] {
            assert!(listed.contains(&(name.into(), desc.into(), vec![os.into()])), "{name}: {listed:?}");
        }
        let count = |prefix: &str| listed.iter().filter(|(n, ..)| n.starts_with(prefix)).count();
        assert_eq!(count("generic-") - 1, 11, "generic boxes besides generic-cluster-box");
        assert_eq!(count("jenkins-agent-"), 3);
        assert!(matches!(reg.role("generic-box"), Err(RoleError::Abstract(_))));

        let plugin = |text: &str| reg_with(&[("p.toml", text)]);
        let head = "name='p'\ndescription='d'\nabstract=true\ninclude=['base']\n";
        let reg =
            plugin(&format!("{head}[variants]\np-debian = {{ os = 'debian-12', description = 'P on Debian' }}\n"))
                .unwrap();
        let r = reg.role("p-debian").unwrap();
        assert_eq!(
            (r.os[0].id.as_str(), r.description.as_str(), r.source.as_str()),
            ("debian-12", "P on Debian", "p.toml")
        );
        assert!(r.ports.iter().any(|p| p.port == Some(22)), "what the role includes");
        for (text, says) in [
            (
                "os=['debian-12']\n[variants]\np-x = { os = 'debian-12', description = 'x' }",
                "p.toml: a role with `[variants]` names the OS of each variant: drop its own `os`",
            ),
            ("[variants]\np-x = { os = 'debian-12' }", "missing field `description`"),
            (
                "[variants]\ngeneric-debian-bookworm-box = { os = 'debian-12', description = 'x' }",
                "add `overrides = true` to p.toml",
            ),
        ] {
            let err = plugin(&format!("{head}{text}")).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
        let reg = plugin(&format!("{head}[variants]\np-x = {{ os = 'nope', description = 'x' }}")).unwrap();
        let err = reg.role("p-x").unwrap_err().to_string();
        assert!(err.contains("names operating system 'nope'"), "{err}");
    }

    #[test]
    fn duplicates_need_overrides() {
        let text = "name='generic-debian-bookworm-box'\ndescription='mine'\ninclude=['base']\nos=['debian-12']";
        assert!(matches!(reg_with(&[("p.toml", text)]), Err(RoleError::Duplicate { .. })));
        let reg = reg_with(&[("p.toml", &format!("overrides = true\n{text}"))]).unwrap();
        assert_eq!(reg.role("generic-debian-bookworm-box").unwrap().description, "mine");
    }

    #[test]
    fn options_are_validated() {
        let reg = reg_with(&[(
            "o.toml",
            "name='o'\ndescription='d'\ninclude=['base']\nos=['debian-12']\n\
             [options.n]\ntype='int'\ndefault=3\nhelp='a number'\n[options.flag]\ntype='bool'\nhelp='b'",
        )])
        .unwrap();
        let role = reg.role("o").unwrap();
        assert_eq!(role.parse_option("n=42").unwrap(), ("n".into(), "42".into()));
        assert_eq!(role.parse_option("flag=True").unwrap(), ("flag".into(), "true".into()));
        assert!(matches!(role.parse_option("n=x"), Err(RoleError::BadOptionValue { .. })));
        assert!(matches!(role.parse_option("nope=1"), Err(RoleError::UnknownOption { .. })));
        assert!(matches!(role.parse_option("n"), Err(RoleError::MalformedOption(_))));
        let values = role.option_values(&BTreeMap::new());
        assert_eq!(values.get("n").map(String::as_str), Some("3"));
        assert!(!values.contains_key("flag"));
    }

    #[test]
    fn packages_by_family_and_os() {
        let reg = reg_with(&[(
            "p.toml",
            "name='p'\ndescription='d'\ninclude=['base']\nos=['debian-12','fedora-44']\n[packages]\napt=['openjdk-17-jre-headless']\ndnf=['java-17-openjdk-headless']",
        )])
        .unwrap();
        let role = reg.role("p").unwrap();
        let deb = role.packages_for(&role.os[0]);
        assert_eq!(deb, vec!["rsync", "nftables", "mdadm", "htop", "openjdk-17-jre-headless"]);
        let fed = role.packages_for(&role.os[1]);
        assert!(
            fed.contains(&"java-17-openjdk-headless".to_owned())
                && !fed.contains(&"openjdk-17-jre-headless".to_owned())
        );
    }
}
