//! A role's cluster type (`[cluster]`): the leader and worker role names, the secrets made for
//! each cluster, the directory every node shares, and whether and how the cluster scales on
//! its own (`[cluster.scaling]`).

use crate::role::valid_user_name;
use crate::step::{targets, OnDecl, RoleStep};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A cluster type: its nodes boot from the newest image of this role; the first node is the
/// leader, the others workers. `at = "boot"` steps run at their first boot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterDecl {
    /// The name used with `create-cluster`, e.g. `spark`.
    #[serde(rename = "type")]
    pub cluster_type: String,
    /// The role name the leader is listed and selected by, e.g. `spark-leader`.
    pub leader: String,
    /// The role name workers are listed and selected by, e.g. `spark-worker`.
    pub worker: String,
    /// Files of random bytes made for each cluster when it is created (e.g. munge's key): never
    /// in the image, the same on every node of one cluster, different for every cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<ClusterSecret>,
    /// A directory every node of the cluster sees (e.g. `/shared`, which the `shared-dir` role
    /// mounts): `create-cluster --share` copies there once, and workers added later see it too.
    /// Without one, the copy goes to `~/shared` on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_dir: Option<String>,
    /// The cluster type can scale elastically: the leader's agent launches workers when the
    /// scheduler asks for nodes and terminates them when they have been idle. Clusters of it
    /// can be made with `create-cluster --max-workers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingDecl>,
}

/// An absolute path of plain characters: it is passed on as a command-line argument.
fn plain_absolute(path: &str) -> bool {
    let plain = path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    path.starts_with('/') && path != "/" && plain && !path.split('/').any(|p| p == "..")
}

impl ClusterDecl {
    /// `shared_dir` is an absolute path of plain characters (it is a command-line argument),
    /// and `[cluster.scaling]` holds (but for its hooks' steps, which `ScalingDecl::check_hooks`
    /// checks against the merged role).
    pub fn check(&self) -> Result<(), String> {
        if let Some(d) = self.shared_dir.as_deref().filter(|d| !plain_absolute(d)) {
            return Err(format!(
                "cluster.shared_dir '{d}': use an absolute path of letters, digits, '.', '_', '-' and '/'"
            ));
        }
        if let Some(s) = &self.scaling {
            s.check()?;
        }
        Ok(())
    }
}

/// How a cluster type scales (`[cluster.scaling]`). The bounds (`--min-workers`,
/// `--max-workers`) are the cluster's, chosen at `create-cluster`; this says what every
/// cluster of the type shares.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalingDecl {
    /// What the scheduler's names of the workers start with: worker N (its cluster ordinal) is
    /// `<node_prefix>N`, e.g. `w1`. 1 to 8 lower-case letters; default `w`.
    #[serde(default = "node_prefix")]
    pub node_prefix: String,
    /// How long a worker may be idle before it is suspended (terminated), e.g. `10m` or `1h30m`:
    /// 1 minute to 24 hours, whole seconds; default `10m`. `create-cluster --idle-time`
    /// overrides it for one cluster.
    #[serde(default = "ten_minutes", with = "human_duration")]
    #[schemars(with = "String")]
    pub idle: Duration,
    /// How long a launched worker has to join the cluster before its launch counts as failed
    /// (Slurm's `ResumeTimeout`): 1 minute to 1 hour, whole seconds; default `10m`.
    #[serde(default = "ten_minutes", with = "human_duration")]
    #[schemars(with = "String")]
    pub resume_timeout: Duration,
    /// The group allowed to use the leader agent's scale socket (`/run/cgcloud/scale.sock`): the
    /// group of the user the scheduler's power-saving programs run as. Default `slurm`.
    #[serde(default = "slurm")]
    pub socket_group: String,
    /// The instance types the leader may launch, as IAM patterns (`*`: any characters, `?`:
    /// one), e.g. `["m7i.*", "c7i.*"]`; default `["*"]`. The leader's IAM policy allows these
    /// and no others.
    #[serde(default = "any_type")]
    pub instance_types: Vec<String>,
    /// A program the leader's agent runs as root whenever the cluster's bounds change (and when
    /// it starts scaling), with the bounds in its environment, e.g. to rewrite the scheduler's
    /// list of nodes. An absolute path that a `file` step of the role makes on the leader:
    /// root's, executable, writable by nobody else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_bounds: Option<String>,
    /// A program the leader's agent runs as root when launching workers failed (e.g. no
    /// capacity of any allowed type), with the nodes and the reason as arguments (no shell);
    /// e.g. to mark the nodes down with the reason. The same rules as `on_bounds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failed: Option<String>,
    /// A program the leader's agent runs as root when workers' instances went away without
    /// being suspended (a spot interruption, terminated by someone else), with the nodes and
    /// the reason as arguments (no shell); e.g. to requeue their jobs. The same rules as
    /// `on_bounds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_vanished: Option<String>,
}

fn node_prefix() -> String {
    "w".to_owned()
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

fn slurm() -> String {
    "slurm".to_owned()
}

fn any_type() -> Vec<String> {
    vec!["*".to_owned()]
}

/// Durations in role files are written as on the command line (`--autostop 30m`): humantime's
/// `10m`, `90s`, `1h30m`.
mod human_duration {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            D::Error::custom(format!("'{text}' is not a duration ({e}): write one like 10m, 90s or 1h30m"))
        })
    }
}

impl Default for ScalingDecl {
    fn default() -> Self {
        ScalingDecl {
            node_prefix: node_prefix(),
            idle: ten_minutes(),
            resume_timeout: ten_minutes(),
            socket_group: slurm(),
            instance_types: any_type(),
            on_bounds: None,
            on_failed: None,
            on_vanished: None,
        }
    }
}

impl ScalingDecl {
    /// The hooks that are set: (field name, path).
    pub fn hooks(&self) -> Vec<(&'static str, &str)> {
        [("on_bounds", &self.on_bounds), ("on_failed", &self.on_failed), ("on_vanished", &self.on_vanished)]
            .into_iter()
            .filter_map(|(field, path)| Some((field, path.as_deref()?)))
            .collect()
    }

    /// Everything that needs nothing but the table. Node names, the group and the hooks' paths
    /// reach Slurm's configuration, a socket's ownership and argv; the durations Slurm's.
    pub fn check(&self) -> Result<(), String> {
        let p = &self.node_prefix;
        if p.is_empty() || p.len() > 8 || !p.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(format!(
                "cluster.scaling.node_prefix '{p}': write 1 to 8 lower-case letters, e.g. \"w\" (nodes are w1, w2, ...)"
            ));
        }
        if !valid_user_name(&self.socket_group) {
            return Err(format!(
                "cluster.scaling.socket_group '{}': write a group name, e.g. \"slurm\" (lower-case letters, digits, '_' and '-')",
                self.socket_group
            ));
        }
        // Below a minute, workers would be suspended between one workflow's jobs, or given up on
        // while still booting; Slurm counts both in whole seconds.
        let minute = Duration::from_secs(60);
        for (field, d, max, max_text) in [
            ("idle", self.idle, Duration::from_secs(24 * 3600), "24h"),
            ("resume_timeout", self.resume_timeout, Duration::from_secs(3600), "1h"),
        ] {
            if d < minute || d > max || d.subsec_nanos() != 0 {
                return Err(format!(
                    "cluster.scaling.{field} '{}': write whole seconds from 1m to {max_text}, e.g. \"10m\"",
                    humantime::format_duration(d)
                ));
            }
        }
        if self.instance_types.is_empty() {
            return Err(
                "cluster.scaling.instance_types is empty: name at least one pattern, or leave it out for any type"
                    .into(),
            );
        }
        let pattern_ok = |t: &String| {
            (1..=64).contains(&t.len())
                && t.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-*?".contains(c))
        };
        if let Some(t) = self.instance_types.iter().find(|t| !pattern_ok(t)) {
            return Err(format!(
                "cluster.scaling.instance_types: '{t}' is not an instance type pattern: write one like \"m7i.*\" \
                 (lower-case letters, digits, '.', '-', and '*' or '?' as in IAM)"
            ));
        }
        for (field, path) in self.hooks() {
            if !plain_absolute(path) {
                return Err(format!(
                    "cluster.scaling.{field} '{path}': write an absolute path of letters, digits, '.', '_', '-' and '/', \
                     e.g. \"/usr/local/sbin/cgcloud-slurm-bounds\""
                ));
            }
        }
        Ok(())
    }

    /// Each hook is made by a `file` step of the role (its own or an included role's) that
    /// reaches the leader, and every step making it leaves it root's, executable and writable by
    /// nobody else: the agent runs it as root, and refuses it otherwise. `steps` are the merged
    /// role's. (The compiled plan is checked again: a `when` may leave a step out, and a
    /// directory above the hook may be given to a user; see `lint::hooks`.)
    pub fn check_hooks(&self, steps: &[RoleStep]) -> Result<(), String> {
        for (field, hook) in self.hooks() {
            let mut on_leader = false;
            for (i, step) in steps.iter().enumerate() {
                let n = i + 1;
                let at = |m: String| format!("cluster.scaling.{field} '{hook}': step {n} ({}) {m}", step.label());
                let (owner, mode) = match step {
                    RoleStep::File { path, owner, mode, .. } if path == hook => (owner, mode),
                    RoleStep::Directory { path, .. } | RoleStep::Download { dest: path, .. } if path == hook => {
                        return Err(at("makes it, but a hook must be made by a `file` step".into()));
                    }
                    _ => continue,
                };
                if let Some(o) = owner.as_deref().filter(|o| *o != "root") {
                    return Err(at(format!("gives it to {o}: the agent runs it as root, so drop `owner` (root's)")));
                }
                let bits = mode.as_deref().and_then(|m| u32::from_str_radix(m, 8).ok());
                if !bits.is_some_and(|b| b & 0o022 == 0 && b & 0o100 != 0) {
                    return Err(at(format!(
                        "has mode {}: the agent runs only a hook executable by root and writable by nobody else; \
                         write `mode = \"0755\"`",
                        mode.as_deref().unwrap_or("0644 (the default)")
                    )));
                }
                let (on, phase, _) = step.placement();
                on_leader |= targets(on, phase).is_ok_and(|t| t.contains(&OnDecl::All) || t.contains(&OnDecl::Leader));
            }
            if !on_leader {
                return Err(format!(
                    "cluster.scaling.{field} '{hook}' is not a file the role makes on the leader: add a step \
                     `do = \"file\"`, `path = \"{hook}\"`, `mode = \"0755\"` (at bake, or with `at = \"boot\"` and `on = \"leader\"`) \
                     to this role or one it includes"
                ));
            }
        }
        Ok(())
    }
}

/// What a cluster secret holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    /// `bytes` random bytes (e.g. munge's key).
    #[default]
    Random,
    /// An ed25519 SSH private key in OpenSSH format, for SSH between the nodes of one cluster
    /// (e.g. the shared directory); the public half is `ssh-keygen -y -f PATH`.
    SshKey,
}

impl SecretKind {
    fn is_random(&self) -> bool {
        *self == SecretKind::Random
    }
}

/// A per-cluster secret file, written by cloud-init before the node's first-boot steps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSecret {
    /// Absolute path of the file on every node.
    pub path: String,
    /// `random` (default) or `ssh-key`.
    #[serde(default, skip_serializing_if = "SecretKind::is_random")]
    pub kind: SecretKind,
    /// How many random bytes (16 to 4096; `random` secrets only).
    #[serde(default = "secret_bytes")]
    pub bytes: u32,
    /// `user` or `user:group` (must exist in the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Octal mode; default `0400`.
    #[serde(default = "secret_mode")]
    pub mode: String,
}

fn secret_bytes() -> u32 {
    32
}

fn secret_mode() -> String {
    "0400".to_owned()
}

impl ClusterSecret {
    /// A path, size, owner and mode that are safe to hand to cloud-init.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = valid_user_name;
        let path_ok = self.path.starts_with('/')
            && !self.path.split('/').any(|c| c == ".." || c == ".")
            && self.path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
        if !path_ok {
            return Err(format!(
                "cluster secret path '{}' must be absolute, plain ([A-Za-z0-9/._-]) and without '..'",
                self.path
            ));
        }
        if !(16..=4096).contains(&self.bytes) {
            return Err(format!("cluster secret {}: bytes must be 16 to 4096, not {}", self.path, self.bytes));
        }
        if let Some(o) = &self.owner {
            if !o.split(':').all(name_ok) || o.split(':').count() > 2 {
                return Err(format!("cluster secret {}: owner '{o}' must be `user` or `user:group`", self.path));
            }
        }
        if !(3..=4).contains(&self.mode.len()) || !self.mode.chars().all(|c| ('0'..='7').contains(&c)) {
            return Err(format!("cluster secret {}: mode '{}' must be octal, like \"0400\"", self.path, self.mode));
        }
        if u32::from_str_radix(&self.mode, 8).is_ok_and(|m| m & 0o007 != 0) {
            return Err(format!("cluster secret {}: mode {} lets every user read it", self.path, self.mode));
        }
        Ok(())
    }
}
