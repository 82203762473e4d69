//! The cluster commands' arguments: selecting a cluster, launching its nodes (shared by
//! create-cluster and grow-cluster, spot options included), and running commands on them.

use super::*;

/// The most workers one create-cluster or grow-cluster adds: well past any one RunInstances
/// call's practical capacity, and small enough that a typo (`-s 4000000000`) is an error
/// instead of gigabytes of ordinals.
pub const MAX_WORKERS: i64 = 5000;

/// Which cluster of a type to act on.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterSelection {
    /// The cluster type, see `cgcloud list-roles` (roles with a cluster type)
    #[arg(value_name = "TYPE", add = ArgValueCandidates::new(complete::cluster_types))]
    pub cluster_type: String,
    /// The cluster's name
    #[arg(short = 'c', long = "cluster-name", add = ArgValueCandidates::new(complete::clusters))]
    pub cluster: Option<String>,
    /// Index into the type's clusters, oldest first (-1 = newest), when no name is given
    #[arg(short = 'o', long, allow_negative_numbers = true)]
    pub ordinal: Option<i64>,
}

/// Options of launches of cluster nodes.
#[derive(Debug, Args, Clone, Default)]
pub struct NodeLaunchArgs {
    /// Key pairs (see `create --help`)
    #[arg(short = 'k', long = "keypairs", num_args = 1.., value_delimiter = ' ', env = "CGCLOUD_KEYPAIRS")]
    pub keypairs: Vec<String>,
    /// Instance type of the workers
    #[arg(short = 't', long = "instance-type", env = "CGCLOUD_INSTANCE_TYPE")]
    pub instance_type: Option<String>,
    /// Image ordinal (oldest 0, newest -1) or AMI id of the node role's images
    #[arg(short = 'i', long = "boot-image", allow_negative_numbers = true)]
    pub boot_image: Option<String>,
    #[arg(long)]
    pub subnet: Option<String>,
    /// Role option NAME=VALUE (repeatable)
    #[arg(short = 'O', long = "option", value_name = "NAME=VALUE")]
    pub options: Vec<String>,
    /// Number of workers (default 1; at most 5000 per call; grow the cluster for more)
    #[arg(short = 's', long = "num-workers", value_parser = clap::value_parser!(u32).range(0..=MAX_WORKERS))]
    pub num_workers: Option<u32>,
    /// Do not wait for the workers to be configured
    #[arg(short = 'Q', long)]
    pub quick: bool,
    /// Never terminate, even on failure
    #[arg(short = 'N', long = "never-terminate")]
    pub never_terminate: bool,
    /// Give each node a persistent EBS volume of this many GiB, mounted at /mnt/persistent
    #[arg(short = 'e', long = "ebs-volume-size")]
    pub ebs_volume_size: Option<u32>,
    /// Succeed if at least this many workers come up (default: all); with --max-workers, the
    /// workers the leader keeps up when idle (default 0)
    #[arg(long = "min-workers")]
    pub min_workers: Option<u32>,
    /// Which address to reach nodes at
    #[arg(long = "ssh-address", value_enum)]
    pub ssh_address: Option<SshAddress>,
    /// Seconds to wait for nodes to be configured
    #[arg(long = "timeout", default_value_t = 900)]
    pub timeout: u64,
    /// Report memory and disk use as CloudWatch metrics
    #[arg(long)]
    pub metrics: bool,
    /// Seconds between the agents' refreshes of keys and members
    #[arg(long = "agent-interval")]
    pub agent_interval: Option<u64>,
    /// Do not probe nodes over SSH from here (e.g. when they are not reachable from this
    /// machine); readiness is then the nodes' own report
    #[arg(long = "skip-ssh-check")]
    pub skip_ssh_check: bool,
    #[command(flatten)]
    pub autostop: AutostopArgs,
    #[command(flatten)]
    pub spot: SpotArgs,
    /// Take what the spot market gives within --spot-timeout (at once without it): fewer
    /// workers than asked is then no error, unless --min-workers says how many are needed
    #[arg(long = "spot-tentative", requires = "spot_bid")]
    pub spot_tentative: bool,
}

/// Spot-market options, of a box (`create`, `recreate`) or of a cluster's workers.
#[derive(Debug, Args, Clone, Default)]
pub struct SpotArgs {
    /// Launch on the spot market (a cluster: the workers), paying at most this many dollars per
    /// hour; a spot instance cannot stop: it is terminated when interrupted (persistent volumes
    /// are kept)
    #[arg(long = "spot-bid")]
    pub spot_bid: Option<f64>,
    /// Choose the zone by recent spot prices (needs --spot-bid; not with --subnet)
    #[arg(long = "spot-auto-zone", requires = "spot_bid", conflicts_with = "subnet")]
    pub spot_auto_zone: bool,
    /// Keep retrying the spot instance types (every 10 s) for this many seconds while instances
    /// are missing (default: 0, one try of each)
    #[arg(long = "spot-timeout", requires = "spot_bid")]
    pub spot_timeout: Option<u64>,
    /// Further instance types to try on the spot market, in order, when the first has no capacity
    #[arg(long = "spot-instance-types", value_delimiter = ',', requires = "spot_bid")]
    pub spot_instance_types: Vec<String>,
    /// Launch on demand what spot capacity cannot give
    #[arg(long = "on-demand-fallback", requires = "spot_bid")]
    pub on_demand_fallback: bool,
}

#[derive(Debug, Args)]
pub struct CreateClusterArgs {
    #[arg(value_name = "TYPE", add = ArgValueCandidates::new(complete::cluster_types))]
    pub cluster_type: String,
    /// The cluster's name (default: TYPE-<random>)
    #[arg(short = 'c', long = "cluster-name")]
    pub cluster: Option<String>,
    /// Instance type of the leader (default: the workers')
    #[arg(short = 'T', long = "leader-instance-type")]
    pub leader_instance_type: Option<String>,
    /// Copy this file or directory where every node sees it: the cluster type's shared directory
    /// (e.g. /shared), else ~/shared on every node (a trailing / copies its contents)
    #[arg(short = 'S', long = "share")]
    pub share: Option<std::path::PathBuf>,
    /// Extra options for the ssh that copies --share (use --ssh-opts=-v for dashes)
    #[arg(long = "ssh-opts", default_value = "", allow_hyphen_values = true, requires = "share")]
    pub ssh_opts: String,
    /// Launch the leader on demand even with --spot-bid (an elastic cluster's always is)
    #[arg(short = 'D', long = "leader-on-demand")]
    pub leader_on_demand: bool,
    /// Make the cluster elastic: its leader launches workers, up to this many, when jobs wait
    /// for them, and terminates them when idle (cluster types with [cluster.scaling]: slurm,
    /// toil); -t and --spot-instance-types are the types it tries, in order
    #[arg(long = "max-workers")]
    pub max_workers: Option<u32>,
    /// How long an elastic cluster's worker may be idle before it is terminated (e.g. 10m;
    /// default: the cluster type's)
    #[arg(long = "idle-time", value_parser = super::parse_duration, requires = "max_workers")]
    pub idle_time: Option<std::time::Duration>,
    #[command(flatten)]
    pub nodes: NodeLaunchArgs,
}

#[derive(Debug, Args)]
pub struct ScaleClusterArgs {
    #[command(flatten)]
    pub selection: ClusterSelection,
    /// Workers the leader keeps up when idle
    #[arg(long = "min-workers")]
    pub min_workers: Option<u32>,
    /// The most workers the leader may have
    #[arg(long = "max-workers")]
    pub max_workers: Option<u32>,
    /// How long a worker may be idle before it is terminated (e.g. 10m)
    #[arg(long = "idle-time", value_parser = super::parse_duration)]
    pub idle_time: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct GrowClusterArgs {
    #[command(flatten)]
    pub selection: ClusterSelection,
    #[command(flatten)]
    pub nodes: NodeLaunchArgs,
}

#[derive(Debug, Args)]
pub struct ClusterPowerArgs {
    #[command(flatten)]
    pub selection: ClusterSelection,
    /// Leave the leader alone
    #[arg(short = 'L', long = "skip-leader")]
    pub skip_leader: bool,
    /// Return without waiting
    #[arg(short = 'Q', long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct SshClusterArgs {
    #[command(flatten)]
    pub selection: ClusterSelection,
    /// Run on all nodes at once
    #[arg(short = 'P', long)]
    pub parallel: bool,
    /// Leave the leader out
    #[arg(short = 'L', long = "skip-leader")]
    pub skip_leader: bool,
    #[command(flatten)]
    pub login: LoginArgs,
    /// The remote command (after --)
    #[arg(last = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RsyncClusterArgs {
    #[command(flatten)]
    pub selection: ClusterSelection,
    #[arg(short = 'L', long = "skip-leader")]
    pub skip_leader: bool,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Extra options for the ssh that rsync runs
    #[arg(short = 'e', long = "ssh-opts", default_value = "", allow_hyphen_values = true)]
    pub ssh_opts: String,
    /// rsync arguments (after --); ':path' is a path on each node
    #[arg(last = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListClustersArgs {
    /// Only clusters of this type
    #[arg(value_name = "TYPE", add = ArgValueCandidates::new(complete::cluster_types))]
    pub cluster_type: Option<String>,
}
