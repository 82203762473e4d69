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
/// `at = "boot"` without `on` means every node (leader, then workers); `on = "leader"` or
/// `"workers"` needs `at = "boot"`.
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
        // `on` once moved a step to first boot silently; the phase is now said where it is.
        None if !all => {
            Err(format!("`on = {}` steps run at a cluster node's first boot: add `at = \"boot\"`", on_text(on)))
        }
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
    /// A download checked against one checksum: a SHA-256 or SHA-512 pinned in the role, or a
    /// checksum file published beside it; `extract = true` unpacks a tarball into `dest`.
    Download {
        url: String,
        /// The file's SHA-256 (64 hex digits), pinned in the role.
        #[serde(default)]
        sha256: Option<String>,
        /// The file's SHA-512 (128 hex digits), pinned in the role.
        #[serde(default)]
        sha512: Option<String>,
        /// A checksum file published with the file (e.g. `{{ url }}.sha256`), fetched by the
        /// box at every apply; guards against a damaged download, not against the server.
        #[serde(default)]
        sha256_url: Option<String>,
        /// As `sha256_url`, with a SHA-512 (e.g. Apache's `.sha512` files).
        #[serde(default)]
        sha512_url: Option<String>,
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
    /// A shell command; give exactly one of `creates` (a path), `unless` (a command that
    /// succeeds when the work is already done) or `always = true` (run at every apply).
    Command {
        run: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        creates: Option<String>,
        #[serde(default)]
        unless: Option<String>,
        /// Run the command at every apply (a check, or work that must be redone each time).
        #[serde(default, skip_serializing_if = "is_false")]
        always: bool,
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
        /// Before the service starts, wait for a TCP port of another node to open, e.g. a
        /// worker for its leader's: `{ host = "{{ cluster.leader_ip }}", port = 7077 }`.
        #[serde(default)]
        wait_for: Option<WaitFor>,
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

/// A TCP port a service waits for before it starts (a line `ExecStartPre=` in its unit, at
/// every start). After `timeout` seconds it starts anyway: the service's own retries take over.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitFor {
    /// An address or host name, or a fact of the box such as `{{ cluster.leader_ip }}`.
    pub host: String,
    pub port: u16,
    /// Seconds to wait at most (default 120).
    #[serde(default = "wait_timeout")]
    pub timeout: u32,
}

fn wait_timeout() -> u32 {
    120
}

impl WaitFor {
    /// The unit line that waits: a connection attempt every half second (each given a second).
    /// `host` is already rendered for the plan (a box's fact stays a placeholder).
    pub fn exec_start_pre(&self, host: &str) -> Result<String, String> {
        let fact = host.starts_with("{{ ") && host.ends_with(" }}") && host.matches("{{").count() == 1;
        let plain = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".:-".contains(c));
        if !(fact || plain) {
            return Err(format!("wait_for: host '{host}' is not an address, a host name or a fact of the box"));
        }
        if self.port == 0 || !(1..=3600).contains(&self.timeout) {
            return Err("wait_for: port must be 1 to 65535 and timeout 1 to 3600 seconds".into());
        }
        Ok(format!(
            "ExecStartPre=/bin/bash -c 'for i in $(seq 1 {}); do timeout 1 bash -c \"</dev/tcp/{host}/{}\" 2>/dev/null && exit 0; sleep 0.5; done'",
            self.timeout * 2,
            self.port
        ))
    }

    /// `unit` with the waiting line first in its `[Service]` section. The unit must say how
    /// long systemd lets it start (`TimeoutStartSec=`): its default, 90 s, may end the wait.
    pub fn insert_into(&self, unit: Option<&str>, host: &str) -> Result<String, String> {
        let unit = unit.ok_or("wait_for needs the step's `unit` (with a [Service] section)")?;
        if !unit.lines().any(|l| l.starts_with("TimeoutStartSec=")) {
            return Err(format!(
                "wait_for: the unit waits up to {} s before it starts; give it `TimeoutStartSec=` longer than that",
                self.timeout
            ));
        }
        let line = self.exec_start_pre(host)?;
        let mut out = String::with_capacity(unit.len() + line.len() + 1);
        let mut placed = false;
        for l in unit.split_inclusive('\n') {
            out.push_str(l);
            if !placed && l.trim_end() == "[Service]" {
                out.push_str(&line);
                out.push('\n');
                placed = true;
            }
        }
        if placed {
            Ok(out)
        } else {
            Err("wait_for needs a [Service] section in the step's `unit`".into())
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How `on` was written, for messages.
fn on_text(on: &OnSpec) -> String {
    let word = |o: &OnDecl| match o {
        OnDecl::All => "all",
        OnDecl::Leader => "leader",
        OnDecl::Workers => "workers",
    };
    match on {
        OnSpec::One(o) => format!("\"{}\"", word(o)),
        OnSpec::Many(v) => format!("[{}]", v.iter().map(|o| format!("\"{}\"", word(o))).collect::<Vec<_>>().join(", ")),
    }
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

    /// What the step is, for messages: its kind and its name, path or URL.
    pub fn label(&self) -> String {
        let short = |s: &str| s.lines().next().unwrap_or("").chars().take(50).collect::<String>();
        match self {
            RoleStep::File { path, .. } => format!("file {path}"),
            RoleStep::Directory { path, .. } => format!("directory {path}"),
            RoleStep::Download { url, .. } => format!("download {url}"),
            RoleStep::Command { name: Some(n), .. } => format!("command '{n}'"),
            RoleStep::Command { run, .. } => format!("command '{}'", short(run)),
            RoleStep::Service { name, .. } => format!("service {name}"),
        }
    }

    /// The rules of the step's own fields, and the retired forms of the role language, each
    /// with what to write instead. Needs nothing but the step, so a role file is checked when
    /// it is read and the message names that file.
    pub fn check(&self) -> Result<(), String> {
        let (on, at, _) = self.placement();
        targets(on, at)?;
        if let RoleStep::Download { sha256, sha512, sha256_url, sha512_url, .. } = self {
            let named = [sha256, sha512, sha256_url, sha512_url].iter().filter(|c| c.is_some()).count();
            if named != 1 {
                return Err("a download names exactly one checksum: `sha256` or `sha512` (a digest pinned in the \
                     role), or `sha256_url` or `sha512_url` (a checksum file published beside the file)"
                    .into());
            }
        }
        let RoleStep::Command { creates, unless, always, .. } = self else {
            return Ok(());
        };
        if unless.as_deref().is_some_and(|u| u.trim() == "false") {
            return Err("`unless = \"false\"` is gone: write `always = true` to run the command at every apply".into());
        }
        if let Some(when) = unless.as_deref().and_then(unless_as_when) {
            return Err(format!(
                "`unless` only tests an option, which is known when the plan is compiled: write `when = \"{when}\"` \
                 instead (the step is then left out of the plan rather than skipped on the box)"
            ));
        }
        match (creates.is_some(), unless.is_some(), *always) {
            (false, false, false) => {
                Err("a command needs `creates = PATH` (done when it exists), `unless = CHECK` (done when the check \
                 succeeds) or `always = true` (run at every apply)"
                    .into())
            }
            (_, _, true) if creates.is_some() || unless.is_some() => {
                Err("`always = true` runs the command at every apply: drop `creates` and `unless`, or `always`".into())
            }
            _ => Ok(()),
        }
    }
}

/// The `when` that an `unless` of the retired form `test {{ NAME | shell }} != VALUE` (or `=`)
/// stands for, when NAME is known at compile time (not a fact of the box: `box.*`, `cluster.*`).
fn unless_as_when(unless: &str) -> Option<String> {
    let re = regex::Regex::new(
        r#"^\s*test\s+"?\{\{\s*([A-Za-z0-9_.]+)\s*(?:\|\s*shell\s*)?\}\}"?\s*(!?=)\s*['"]?([A-Za-z0-9_.-]*)['"]?\s*$"#,
    )
    .ok()?;
    let caps = re.captures(unless)?;
    let name = caps.get(1)?.as_str();
    if crate::compile::DEFERRED.iter().any(|d| name.starts_with(d)) {
        return None;
    }
    // The step is skipped when the test succeeds: it runs when the opposite holds.
    let op = if caps.get(2)?.as_str() == "!=" { "==" } else { "!=" };
    Some(format!("{name} {op} '{}'", caps.get(3)?.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_a_port_is_a_line_of_the_unit() {
        let w = WaitFor { host: "{{ cluster.leader_ip }}".into(), port: 6817, timeout: 120 };
        let unit = "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\nTimeoutStartSec=300\n";
        // What slurm-box's unit said by hand before.
        let line = "ExecStartPre=/bin/bash -c 'for i in $(seq 1 240); do timeout 1 bash -c \"</dev/tcp/{{ cluster.leader_ip }}/6817\" 2>/dev/null && exit 0; sleep 0.5; done'";
        assert_eq!(
            w.insert_into(Some(unit), &w.host).unwrap(),
            format!("[Unit]\nDescription=x\n[Service]\n{line}\nExecStart=/bin/true\nTimeoutStartSec=300\n")
        );
        let short = WaitFor { host: "10.0.0.1".into(), port: 80, timeout: 5 };
        assert!(short
            .exec_start_pre("10.0.0.1")
            .unwrap()
            .contains("seq 1 10); do timeout 1 bash -c \"</dev/tcp/10.0.0.1/80\""));
        for (unit, host, port, says) in [
            (None, "h", 80, "needs the step's `unit`"),
            (Some("[Service]\nExecStart=/bin/true\n"), "h", 80, "give it `TimeoutStartSec=`"),
            (Some("[Unit]\nTimeoutStartSec=9\n"), "h", 80, "needs a [Service] section"),
            (Some(unit), "$(id)", 80, "is not an address"),
            (Some(unit), "{{ cluster.leader_ip }}/x {{ box.x }}", 80, "is not an address"),
            (Some(unit), "h", 0, "port must be 1 to 65535"),
        ] {
            let w = WaitFor { host: host.into(), port, timeout: 120 };
            let err = w.insert_into(unit, host).unwrap_err();
            assert!(err.contains(says), "{host} {unit:?}: {err}");
        }
    }
}
