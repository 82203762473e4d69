//! A role's cluster type (`[cluster]`): the leader and worker role names, the secrets made for
//! each cluster, and the directory every node shares.

use crate::role::valid_user_name;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
}

impl ClusterDecl {
    /// `shared_dir` is an absolute path of plain characters (it is a command-line argument).
    pub fn check(&self) -> Result<(), String> {
        if let Some(d) = &self.shared_dir {
            let plain = d.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
            if !d.starts_with('/') || d == "/" || !plain || d.split('/').any(|p| p == "..") {
                return Err(format!(
                    "cluster.shared_dir '{d}': use an absolute path of letters, digits, '.', '_', '-' and '/'"
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
