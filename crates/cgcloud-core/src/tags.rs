//! The tag schema: every piece of state cgcloud needs later is written as a tag on the cloud
//! resource itself. This module is the one place that names the tags.

use std::collections::BTreeMap;

/// The console-visible name: the namespaced AWS name of the role (or volume).
pub const NAME: &str = "Name";
/// The namespace the resource belongs to, e.g. `/hannes/`. Every query filters on it exactly.
pub const NAMESPACE: &str = "cgcloud:namespace";
/// The role a box was created from (or an image was baked from).
pub const ROLE: &str = "cgcloud:role";
/// The cluster a box belongs to; a standalone box has none.
pub const CLUSTER: &str = "cgcloud:cluster";
/// The box's ordinal within its cluster: 0 for the leader, 1.. for workers.
pub const ORDINAL: &str = "cgcloud:ordinal";
/// The leader's instance id, on every member of a cluster.
pub const LEADER: &str = "cgcloud:leader";
/// How many times an image was taken along the chain that led to this box or image.
pub const GENERATION: &str = "cgcloud:generation";
/// Hash of the compiled plan a box was provisioned with, or an image was baked from.
pub const ROLE_HASH: &str = "cgcloud:role-hash";
/// The box's SSH host public key (`ssh-ed25519 AAAA...`): set at launch for a box cgcloud
/// provisions over SSH; published by the node itself at first boot for cluster nodes.
pub const HOST_KEY: &str = "cgcloud:host-key";
/// The id of the launch transaction that created the resource.
pub const LAUNCH: &str = "cgcloud:launch";
/// Which RunInstances call of its launch made the instance (its client token).
pub const LAUNCH_CALL: &str = "cgcloud:launch-call";
/// Which process runs the launch: `HOST:PID:BOOT-ID`, so that `cleanup` on that machine can
/// tell a launch whose process is gone (killed) from one still running, whatever its age.
pub const LAUNCHER: &str = "cgcloud:launcher";
/// `pending` while a launch is in progress; removed when it completes. `cleanup` looks for it.
pub const LAUNCH_STATE: &str = "cgcloud:launch-state";
/// Who launched the resource (the resolved `__me__`).
pub const OWNER: &str = "cgcloud:owner";
/// The login with sudo rights on the box's image.
pub const ADMIN_USER: &str = "cgcloud:admin-user";
/// Whether the agent runs on the box (`true`/`false`).
pub const AGENT: &str = "cgcloud:agent";
/// The key-pair patterns the box trusts, space-separated.
pub const KEYPAIRS: &str = "cgcloud:keypairs";
/// Marks a persistent volume that `terminate` keeps.
pub const PERSISTENT: &str = "cgcloud:persistent";
/// The size in GiB of a box's (or each cluster node's) persistent volume.
pub const EBS_VOLUME_SIZE: &str = "cgcloud:ebs-volume-size";
/// Autostop: stop (or terminate) the box, or the leader's whole cluster, once it has been idle
/// for this many seconds. Set by the workstation only.
pub const AUTOSTOP: &str = "cgcloud:autostop";
/// `stop` (the default) or `terminate`: what autostop does.
pub const AUTOSTOP_ACTION: &str = "cgcloud:autostop-action";
/// On cluster nodes: the leader's instance ARN, which IAM compares with the caller's to let a
/// leader (and only it) stop and terminate its own cluster's nodes.
pub const LEADER_ARN: &str = "cgcloud:leader-arn";
/// Written by a worker's agent on itself while it is busy (seconds since the epoch), so that
/// its leader does not autostop the cluster under it.
pub const ACTIVE_AT: &str = "cgcloud:active-at";
/// On a cluster node's persistent volume: the ARN of the instance it is given to. Only the
/// workstation writes it (no box's policy lets it tag a volume), and IAM lets a box attach only
/// a volume given to it, so a volume another box made cannot be planted on a node.
pub const ATTACH_TO: &str = "cgcloud:attach-to";
/// On a standalone box: the id of the persistent volume attached to it.
pub const PERSISTENT_VOLUME: &str = "cgcloud:persistent-volume";
/// Why a box failed, set by whatever noticed (e.g. the local cloud when it cannot run an image).
pub const FAILURE: &str = "cgcloud:failure";
/// The OS definition a box was created with, e.g. `debian-12`.
pub const OS: &str = "cgcloud:os";
/// On cluster nodes: the role the node was imaged from (its `ROLE` is the leader or worker name).
pub const NODE_ROLE: &str = "cgcloud:node-role";
/// On cluster nodes: the cluster type, e.g. `spark`.
pub const CLUSTER_TYPE: &str = "cgcloud:cluster-type";
/// On workers launched together: their ordinals as ranges (`1-100,105`, see
/// `ordinals::encode`), indexed by AMI launch index
/// (one tag for the whole group keeps a launch's API calls independent of its size).
pub const ORDINALS: &str = "cgcloud:ordinals";
/// `true` when the box was launched with `--metrics`: its agent reports metrics whatever its
/// configuration file (an image's) says.
pub const METRICS: &str = "cgcloud:metrics";
/// Seconds between the agent's refreshes, when the box was launched with `--agent-interval`.
pub const AGENT_INTERVAL: &str = "cgcloud:agent-interval";
/// On a cluster's leader: `home` when `create-cluster --share` copied to every node's
/// `~/shared` (the cluster has no shared directory), so that grow-cluster gives new workers
/// the leader's copy.
pub const SHARE: &str = "cgcloud:share";
/// Set by a node's agent when its first-boot configuration finished (`true`) or failed.
pub const CONFIGURED: &str = "cgcloud:configured";
/// On a box agent's SQS queue: the ARN of the box it belongs to (the only box that may use it).
pub const QUEUE_OWNER: &str = "cgcloud:instance";
/// On an elastic cluster's leader: its bounds, `min=0 max=32 idle=600` (see `scaling`). Set by
/// the workstation only, like every `scaling` tag: they say how much the leader may launch.
pub const SCALING: &str = "cgcloud:scaling";
/// On an elastic cluster's leader: the workers' instance types, most preferred first.
pub const SCALING_TYPES: &str = "cgcloud:scaling-types";
/// On an elastic cluster's leader: `on-demand`, or `spot [bid=DOLLARS] [fallback]`.
pub const SCALING_MARKET: &str = "cgcloud:scaling-market";
/// On an elastic cluster's leader: the subnets to launch workers in, most preferred first.
pub const SCALING_SUBNETS: &str = "cgcloud:scaling-subnets";
/// On an elastic cluster's leader: what Slurm is told each worker has, `cpus=2 mem=7168`.
pub const SCALING_NODE: &str = "cgcloud:scaling-node";
/// On an elastic cluster's leader: the launch template its workers are launched from, `lt-ID:VERSION`.
pub const LAUNCH_TEMPLATE: &str = "cgcloud:launch-template";
/// On an elastic cluster's nodes: what the scheduler's node names start with (`w`: worker 3 is
/// node `w3`). Set at launch, so that a node knows at its first boot that its cluster scales.
pub const NODE_PREFIX: &str = "cgcloud:node-prefix";
/// Role option values are stored as `cgcloud:option:<name>`.
pub const OPTION_PREFIX: &str = "cgcloud:option:";

pub const LAUNCH_PENDING: &str = "pending";

/// A tag value a box wrote, made safe to print or to store as a tag: control characters become
/// spaces (a box is not trusted with anyone's terminal).
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// A cluster name as `create-cluster -c` accepts it: up to 40 lower-case letters, digits and
/// `-`, starting with a letter or digit. The agent checks it again when it reads it from a tag.
pub fn valid_cluster_name(name: &str) -> bool {
    plain_name(name, 40)
}

/// Lower-case letters, digits and `-`, up to `max` characters, starting with a letter or digit.
fn plain_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// Tags as a sorted map.
pub type Tags = BTreeMap<String, String>;

/// Role options stored in `tags`.
pub fn options_from_tags(tags: &Tags) -> BTreeMap<String, String> {
    tags.iter().filter_map(|(k, v)| k.strip_prefix(OPTION_PREFIX).map(|name| (name.to_owned(), v.clone()))).collect()
}

/// The tag key of a role option.
pub fn option_tag(name: &str) -> String {
    format!("{OPTION_PREFIX}{name}")
}

/// A node's ordinal: its own `ORDINAL` tag, else its place in its launch group's `ORDINALS`.
pub fn ordinal(tags: &Tags, ami_launch_index: Option<i32>) -> Option<u32> {
    if let Some(o) = tags.get(ORDINAL).and_then(|o| o.parse().ok()) {
        return Some(o);
    }
    // Never 0 from a group's list: the leader alone is 0, by its own tag, which an elastic
    // cluster's leader cannot give the workers it launches (it writes their ORDINALS).
    crate::ordinals::nth(tags.get(ORDINALS)?, usize::try_from(ami_launch_index?).ok()?).filter(|o| *o != 0)
}

/// Autostop as the tags say, for people: `30m stop`, `2h terminate`; None if off.
pub fn autostop_text(tags: &Tags) -> Option<String> {
    let secs: u64 = tags.get(AUTOSTOP)?.parse().ok().filter(|s| *s > 0)?;
    let action = if tags.get(AUTOSTOP_ACTION).is_some_and(|a| a == "terminate") { "terminate" } else { "stop" };
    Some(format!("{} {action}", duration_text(secs)))
}

/// Seconds for people, in the largest whole unit: `2h`, `30m`, `45s`.
pub fn duration_text(secs: u64) -> String {
    if secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_from_launch_index() {
        let mut t = Tags::new();
        t.insert(ORDINALS.into(), "1,3-4".into());
        assert_eq!(ordinal(&t, Some(1)), Some(3));
        assert_eq!(ordinal(&t, Some(3)), None);
        assert_eq!(ordinal(&t, None), None);
        t.insert(ORDINALS.into(), "0,1".into());
        assert_eq!(ordinal(&t, Some(0)), None, "only the leader's own tag says 0");
        assert_eq!(ordinal(&t, Some(1)), Some(1));
        t.insert(ORDINAL.into(), "0".into());
        assert_eq!(ordinal(&t, Some(2)), Some(0));
    }

    #[test]
    fn options_round_trip() {
        let mut tags = Tags::new();
        tags.insert(option_tag("java_version"), "17".into());
        tags.insert(ROLE.into(), "spark-box".into());
        let opts = options_from_tags(&tags);
        assert_eq!(opts.len(), 1);
        assert_eq!(opts["java_version"], "17");
    }
}
