//! Steps of a role: the `[[steps]]` table as written (`do = "file"`, `"command"`, ...), where
//! and when each runs (`on`, `at`, `when`), and the checks that turn the role language's retired
//! forms into errors that say what to write instead.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which boxes of a cluster a step runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDecl {
    #[default]
    All,
    Leader,
    Workers,
}

/// `on`: one target, or several (`on = ["leader", "workers"]`), in the order they run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OnSpec {
    One(OnDecl),
    Many(Vec<OnDecl>),
}

impl Default for OnSpec {
    fn default() -> Self {
        OnSpec::One(OnDecl::All)
    }
}

/// When a step runs: `bake` (provisioning: a box, or a cluster's image) or `boot` (a cluster
/// node's first boot, with the cluster's facts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Bake,
    Boot,
}

/// The targets of a step from its `on` and `at`: `on = "all"` (the default) is bake time;
/// `at = "boot"` without `on` means every node (leader, then workers).
pub fn targets(on: &OnSpec, at: Option<Phase>) -> Result<Vec<OnDecl>, String> {
    let mut list = match on {
        OnSpec::One(o) => vec![*o],
        OnSpec::Many(v) if v.is_empty() => return Err("`on = []` names no target".into()),
        OnSpec::Many(v) => v.clone(),
    };
    list.dedup();
    let all = list.contains(&OnDecl::All);
    if all && list.len() > 1 {
        return Err("`on` cannot combine \"all\" with \"leader\" or \"workers\"".into());
    }
    match at {
        Some(Phase::Boot) if all => Ok(vec![OnDecl::Leader, OnDecl::Workers]),
        Some(Phase::Bake) if !all => {
            Err("`at = \"bake\"` steps run when a box (or a cluster's image) is provisioned, on every box; \
             `on` cannot name leader or workers there (use `at = \"boot\"`)"
                .into())
        }
        _ => Ok(list),
    }
}

/// One ordered step of a role.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RoleStep {
    /// A file with this content (placeholders allowed).
    File {
        path: String,
        content: String,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        mode: Option<String>,
        #[serde(default)]
        on: OnSpec,
        #[serde(default)]
        at: Option<Phase>,
        /// Include the step only if this boolean expression holds, e.g. `hdfs and not small`
        /// or `scheduler == 'slurm'` (see `when.rs`).
        #[serde(default)]
        when: Option<String>,
    },
    Directory {
        path: String,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        mode: Option<String>,
        #[serde(default)]
        on: OnSpec,
        #[serde(default)]
        at: Option<Phase>,
        /// Include the step only if this boolean expression holds, e.g. `hdfs and not small`
        /// or `scheduler == 'slurm'` (see `when.rs`).
        #[serde(default)]
        when: Option<String>,
    },
    /// A download checked against its SHA-256; `extract = true` unpacks a tarball into `dest`.
    Download {
        url: String,
        sha256: String,
        dest: String,
        #[serde(default)]
        extract: bool,
        #[serde(default)]
        strip_components: u32,
        #[serde(default)]
        mode: Option<String>,
        #[serde(default)]
        on: OnSpec,
        #[serde(default)]
        at: Option<Phase>,
        /// Include the step only if this boolean expression holds, e.g. `hdfs and not small`
        /// or `scheduler == 'slurm'` (see `when.rs`).
        #[serde(default)]
        when: Option<String>,
    },
    /// A shell command; give `creates` (a path) or `unless` (a command that succeeds when the
    /// work is already done) so that it runs only once.
    Command {
        run: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        creates: Option<String>,
        #[serde(default)]
        unless: Option<String>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        on: OnSpec,
        #[serde(default)]
        at: Option<Phase>,
        /// Include the step only if this boolean expression holds, e.g. `hdfs and not small`
        /// or `scheduler == 'slurm'` (see `when.rs`).
        #[serde(default)]
        when: Option<String>,
    },
    /// A systemd service; `unit` is the unit file's content if the role provides it.
    Service {
        name: String,
        #[serde(default)]
        unit: Option<String>,
        #[serde(default = "yes")]
        enable: bool,
        #[serde(default = "yes")]
        start: bool,
        /// Restart the service when one of these files changed in the same run.
        #[serde(default)]
        restart_on: Vec<String>,
        #[serde(default)]
        on: OnSpec,
        #[serde(default)]
        at: Option<Phase>,
        /// Include the step only if this boolean expression holds, e.g. `hdfs and not small`
        /// or `scheduler == 'slurm'` (see `when.rs`).
        #[serde(default)]
        when: Option<String>,
    },
}

fn yes() -> bool {
    true
}

impl RoleStep {
    /// The fields every step has: `on`, `at`, `when`.
    pub fn placement(&self) -> (&OnSpec, Option<Phase>, Option<&str>) {
        match self {
            RoleStep::File { on, at, when, .. }
            | RoleStep::Directory { on, at, when, .. }
            | RoleStep::Download { on, at, when, .. }
            | RoleStep::Command { on, at, when, .. }
            | RoleStep::Service { on, at, when, .. } => (on, *at, when.as_deref()),
        }
    }
}
