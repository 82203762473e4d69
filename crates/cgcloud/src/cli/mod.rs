//! The command line, as clap types only. Every global option can also come from the
//! environment or the config file; see `settings.rs` for precedence.

use crate::complete;
use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::ArgValueCandidates;

mod cluster;
pub use cluster::*;

#[derive(Debug, Parser)]
#[command(
    name = "cgcloud",
    version,
    about = "Create, manage and provision boxes and clusters of boxes in Amazon EC2",
    after_help = "Run 'cgcloud list-roles' to see what you can create. Docs: README.md and docs/."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SshAddress {
    /// The public IP if the box has one, else the private IP.
    Auto,
    Public,
    Private,
}

#[derive(Debug, Args, Default)]
pub struct GlobalArgs {
    /// Namespace of all resources, e.g. /team/ or /__me__/ (__me__ is your IAM user name)
    #[arg(short = 'n', long, global = true, env = "CGCLOUD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Availability zone, e.g. us-west-2a; the region is derived from it
    #[arg(short = 'z', long, global = true, env = "CGCLOUD_ZONE")]
    pub zone: Option<String>,
    /// AWS region (when no zone is given)
    #[arg(long, global = true, env = "CGCLOUD_REGION")]
    pub region: Option<String>,
    /// A cgcloud config profile (e.g. 'local'), else an AWS shared-config profile
    #[arg(long, global = true, env = "CGCLOUD_PROFILE")]
    pub profile: Option<String>,
    /// An EC2-compatible endpoint URL (AWS_ENDPOINT_URL is honoured too)
    #[arg(long, global = true)]
    pub endpoint: Option<String>,
    /// Output format for data on stdout
    #[arg(long, global = true, value_enum, env = "CGCLOUD_OUTPUT")]
    pub output: Option<OutputFormat>,
    /// More logging (-v debug, -vv trace)
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors on stderr
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the roles boxes can be created from
    ListRoles,
    /// List the options of a role (set them with -O NAME=VALUE)
    ListOptions(RoleArg),
    /// Create a box from a role's base image and provision it
    Create(CreateArgs),
    /// Create a box from an image baked by `cgcloud image` or `create -I`
    Recreate(RecreateArgs),
    /// Re-run a role's provisioning on an existing box
    Provision(SelectArgs),
    /// List the boxes in the namespace
    List(ListArgs),
    /// Show everything cgcloud knows about a box
    Show(SelectArgs),
    /// Log in to a box, or run a command on it (`cgcloud ssh ROLE -- uname -a`)
    Ssh(SshArgs),
    /// Copy files to or from a box; write the box's side as ':path'
    Rsync(RsyncArgs),
    /// Stop a box (its disk is kept)
    Stop(WaitSelectArgs),
    /// Start a stopped box and wait until it answers over SSH (-Q: do not wait)
    Start(WaitSelectArgs),
    /// Reboot a box
    Reboot(SelectArgs),
    /// Terminate a box
    Terminate(WaitSelectArgs),
    /// Bake an image of a stopped box
    Image(SelectArgs),
    /// List the images baked for a role
    ListImages(RoleArg),
    /// Delete an image and its snapshots
    DeleteImage(DeleteImageArgs),
    /// Import an OpenSSH public key as an EC2 key pair (boxes' agents pick it up at once)
    RegisterKey(RegisterKeyArgs),
    /// Delete an EC2 key pair (boxes' agents remove its key at once)
    DeleteKey(DeleteKeyArgs),
    /// Bring a box's IAM policy, instance profile and security group rules up to date with its
    /// role (after the role's [[iam]] or [[ports]] changed, or a cgcloud upgrade)
    UpdateInstanceProfile(SelectArgs),
    /// Show the latest memory and disk metrics a box reported
    Metrics(SelectArgs),
    /// Find and remove leftovers in the namespace
    Cleanup(CleanupArgs),
    /// Delete the namespace's security groups, IAM roles and instance profiles
    ResetSecurity(ConfirmArgs),
    /// Launch a cluster (a leader and workers) from the cluster type's baked image
    CreateCluster(CreateClusterArgs),
    /// Add workers to a cluster
    GrowCluster(GrowClusterArgs),
    /// Change an elastic cluster's bounds (--min-workers, --max-workers, --idle-time); its
    /// leader takes them at once
    ScaleCluster(ScaleClusterArgs),
    /// Start a stopped cluster (leader first) and wait until every node answers over SSH (-Q: do not wait)
    StartCluster(ClusterPowerArgs),
    /// Stop a cluster (workers first)
    StopCluster(ClusterPowerArgs),
    /// Terminate a cluster (persistent volumes are kept)
    TerminateCluster(ClusterPowerArgs),
    /// Run a command on every node of a cluster
    SshCluster(SshClusterArgs),
    /// Copy files to or from every node of a cluster
    RsyncCluster(RsyncClusterArgs),
    /// List the clusters in the namespace
    ListClusters(ListClustersArgs),
    /// Print the script that makes SHELL complete cgcloud's commands, flags, roles and clusters
    /// (e.g. `source <(cgcloud completions bash)` in ~/.bashrc)
    Completions(CompletionsArgs),
    /// Write man pages (cgcloud.1, cgcloud-create.1, ...) into DIR
    #[command(hide = true)]
    ManPages(ManPagesArgs),
    /// Change autostop of a box (ROLE) or a cluster (TYPE -c NAME): a DURATION like 30m, or off
    Autostop(AutostopCmdArgs),
    /// Check what a first run needs (credentials, region, network, key pair, agent, tools,
    /// the local cloud) and say how to fix what is wrong
    Doctor,
    /// Write one Jenkins EC2-plugin agent template per agent role into a Jenkins master's
    /// configuration as code, and reload it (no restart)
    RegisterAgents(RegisterAgentsArgs),
    /// The local cloud: EC2 on this machine (moto + systemd-nspawn hosts); needs root
    #[command(subcommand)]
    Local(LocalCommand),
}

#[derive(Debug, Args)]
pub struct AutostopCmdArgs {
    /// A box's role, or a cluster type (then the whole cluster; pick it with -c or -o)
    #[arg(value_name = "ROLE|TYPE", add = ArgValueCandidates::new(complete::roles))]
    pub target: String,
    /// How long it may be idle, e.g. 30m or 2h; `off` turns autostop off
    pub duration: String,
    /// Terminate instead of stopping
    #[arg(long)]
    pub autodown: bool,
    /// The cluster (with a cluster type), or only boxes of this cluster
    #[arg(short = 'c', long = "cluster-name", add = ArgValueCandidates::new(complete::clusters))]
    pub cluster: Option<String>,
    /// Index into the role's boxes (or the type's clusters), oldest first
    #[arg(short = 'o', long, allow_negative_numbers = true, conflicts_with = "instance_id")]
    pub ordinal: Option<i64>,
    /// The box's instance id
    #[arg(short = 'I', long = "instance-id")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(complete::SHELLS))]
    pub shell: String,
}

#[derive(Debug, Args)]
pub struct ManPagesArgs {
    pub dir: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct RegisterAgentsArgs {
    /// Agent roles (globs) to register; default: every role with a [jenkins_agent] table that
    /// has an image. Roles left out lose their template
    #[arg(value_name = "ROLE", add = ArgValueCandidates::new(complete::roles))]
    pub agents: Vec<String>,
    /// The master's role
    #[arg(long, default_value = "jenkins-master")]
    pub master: String,
    #[command(flatten)]
    pub selection: Selection,
    /// Instance type of every agent (default: each role's)
    #[arg(short = 't', long = "instance-type")]
    pub instance_type: Option<String>,
    /// The most agents of one role at once
    #[arg(long = "instance-cap", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub instance_cap: u32,
    /// Minutes an idle agent lives before the plugin terminates it
    #[arg(long = "idle-minutes", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10080))]
    pub idle_minutes: u32,
    /// Builds one agent runs at once
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub executors: u32,
    /// Launch agents on the spot market (up to the on-demand price), on demand when spot
    /// capacity is short
    #[arg(long)]
    pub spot: bool,
    /// Launch agents on the spot market at most at this price (dollars an hour), on demand
    /// when spot capacity is short
    #[arg(long = "spot-bid")]
    pub spot_bid: Option<f64>,
    /// Key pairs the agents trust besides the master's (default: the master's own patterns)
    #[arg(short = 'k', long = "keypairs", num_args = 1.., value_delimiter = ' ')]
    pub keypairs: Vec<String>,
    /// Print the templates (and the YAML) without changing anything
    #[arg(long = "dry-run")]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start the local cloud and write the `local` profile (idempotent)
    Up(LocalUpArgs),
    /// Stop the local cloud and remove everything it created
    Down(LocalDirArgs),
    /// Show the local cloud's processes and hosts
    Status(LocalDirArgs),
    /// Interrupt a spot instance as EC2 does: the notice appears in its instance metadata
    /// (spot/instance-action), and when it runs out the instance is stopped or terminated
    Interrupt(LocalInterruptArgs),
    /// Run the controller in the foreground (started by `up`)
    #[command(hide = true)]
    Controller(LocalDirArgs),
}

#[derive(Debug, Args)]
pub struct LocalDirArgs {
    /// State directory (default: $CGCLOUD_LOCAL_DIR or /var/lib/cgcloud-local)
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct LocalInterruptArgs {
    #[command(flatten)]
    pub dir: LocalDirArgs,
    /// The spot instance to interrupt
    pub instance_id: String,
    /// How long the notice runs before the action (EC2 gives two minutes), e.g. 30s, 2m
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub notice: std::time::Duration,
    /// What happens when the notice runs out
    #[arg(long, default_value = "terminate", value_parser = ["terminate", "stop"])]
    pub action: String,
}

#[derive(Debug, Args)]
pub struct LocalUpArgs {
    #[command(flatten)]
    pub dir: LocalDirArgs,
    /// Port of the emulated AWS endpoint on 127.0.0.1 and the bridge (moto listens on the next,
    /// the instance metadata service on the one after)
    #[arg(long, default_value_t = cgcloud_localcloud::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..=65533))]
    pub port: u16,
}

#[derive(Debug, Args)]
pub struct RoleArg {
    /// The role, see `cgcloud list-roles`
    #[arg(add = ArgValueCandidates::new(complete::roles))]
    pub role: String,
}

/// Which box of a role to act on.
#[derive(Debug, Args, Clone, Default)]
pub struct Selection {
    /// Only boxes of this cluster
    #[arg(short = 'c', long = "cluster-name", add = ArgValueCandidates::new(complete::clusters))]
    pub cluster: Option<String>,
    /// Index into the role's boxes, oldest first; negative counts from the newest (-1)
    #[arg(short = 'o', long, allow_negative_numbers = true, conflicts_with = "instance_id")]
    pub ordinal: Option<i64>,
    /// The box's instance id
    #[arg(short = 'I', long = "instance-id")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    #[arg(add = ArgValueCandidates::new(complete::roles))]
    pub role: String,
    #[command(flatten)]
    pub selection: Selection,
}

#[derive(Debug, Args)]
pub struct WaitSelectArgs {
    #[arg(add = ArgValueCandidates::new(complete::roles))]
    pub role: String,
    #[command(flatten)]
    pub selection: Selection,
    /// Return as soon as the request is accepted
    #[arg(short = 'Q', long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only boxes of this role
    #[arg(add = ArgValueCandidates::new(complete::roles))]
    pub role: Option<String>,
    /// Only boxes of this cluster
    #[arg(short = 'c', long = "cluster-name")]
    pub cluster: Option<String>,
    /// The boxes the original (Python) CGCloud made in the namespace instead, to move them over
    /// (cgcloud lists them; it does not manage them)
    #[arg(long)]
    pub original: bool,
}

/// Options shared by commands that launch boxes.
#[derive(Debug, Args, Clone, Default)]
pub struct LaunchArgs {
    /// Key pairs that may log in; the first must exist and its private key be yours. Later ones
    /// may be globs, @user or @@group (key pairs that user registered: named user or user@...
    /// and tagged cgcloud:owner=user). __me__ is your user name.
    #[arg(short = 'k', long = "keypairs", num_args = 1.., value_delimiter = ' ', env = "CGCLOUD_KEYPAIRS")]
    pub keypairs: Vec<String>,
    /// Instance type (validated against the region)
    #[arg(short = 't', long = "instance-type", env = "CGCLOUD_INSTANCE_TYPE")]
    pub instance_type: Option<String>,
    /// Subnet to launch into (default: the profile's, else the default VPC)
    #[arg(long)]
    pub subnet: Option<String>,
    /// Role option NAME=VALUE (repeatable), see `cgcloud list-options ROLE`
    #[arg(short = 'O', long = "option", value_name = "NAME=VALUE")]
    pub options: Vec<String>,
    /// Terminate the box when done (and on failure)
    #[arg(short = 'T', long, conflicts_with = "never_terminate")]
    pub terminate: bool,
    /// Never terminate, even on failure (for debugging)
    #[arg(short = 'N', long = "never-terminate")]
    pub never_terminate: bool,
    /// Which address to reach the box at
    #[arg(long = "ssh-address", value_enum)]
    pub ssh_address: Option<SshAddress>,
    /// Seconds to wait for SSH to come up
    #[arg(long = "ssh-timeout", default_value_t = 600)]
    pub ssh_timeout: u64,
    /// Print the box as a table row when done
    #[arg(long)]
    pub list: bool,
    /// Do not install the agent: keys are set once at launch and never synced
    #[arg(long = "no-agent")]
    pub no_agent: bool,
    /// Report memory and disk use as CloudWatch metrics (namespace CGCloud)
    #[arg(long)]
    pub metrics: bool,
    /// Seconds between the agent's key refreshes when no notification arrives
    #[arg(long = "agent-interval")]
    pub agent_interval: Option<u64>,
    /// A persistent EBS volume of this many GiB, mounted at /mnt/persistent: kept when the box
    /// is terminated and attached again by `recreate` (one per role in a namespace). Roles that
    /// keep their data there (e.g. jenkins-master) always get one; this sets its size
    #[arg(short = 'e', long = "ebs-volume-size", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub ebs_volume_size: Option<u32>,
    #[command(flatten)]
    pub autostop: AutostopArgs,
    #[command(flatten)]
    pub spot: SpotArgs,
}

/// Boxes that stop themselves when idle.
#[derive(Debug, Args, Clone, Default)]
pub struct AutostopArgs {
    /// Stop the box (a cluster: all its nodes, decided by the leader) after it has been idle
    /// this long, e.g. 30m or 2h: no SSH session, little CPU, and the role's busy probe idle
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub autostop: Option<std::time::Duration>,
    /// Terminate instead of stopping (spot instances, which cannot stop, are terminated anyway)
    #[arg(long, requires = "autostop")]
    pub autodown: bool,
}

/// A duration like `30m`, `2h`, `90s` or `1h30m`, of at least a second.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration like 30m or 2h: {e}"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("'{s}' is shorter than a second"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(add = ArgValueCandidates::new(complete::roles))]
    pub role: String,
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Boot from this AMI instead of the role's base image
    #[arg(short = 'i', long = "boot-image")]
    pub boot_image: Option<String>,
    /// Operating system, when the role supports several (default: the role's first)
    #[arg(long)]
    pub os: Option<String>,
    /// Bake an image after provisioning
    #[arg(short = 'I', long = "create-image")]
    pub create_image: bool,
    /// Upgrade the OS packages before provisioning
    #[arg(short = 'U', long)]
    pub upgrade: bool,
    /// Launch and wait until running, but do not wait for SSH or provision
    #[arg(short = 'Q', long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct RecreateArgs {
    #[arg(add = ArgValueCandidates::new(complete::roles))]
    pub role: String,
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Image ordinal (oldest 0, newest -1) or AMI id
    #[arg(short = 'i', long = "boot-image", allow_negative_numbers = true, default_value = "-1")]
    pub boot_image: String,
    /// Do not wait for SSH
    #[arg(short = 'Q', long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    #[arg(add = ArgValueCandidates::new(complete::roles))]
    pub role: String,
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Which address to reach the box at
    #[arg(long = "ssh-address", value_enum)]
    pub ssh_address: Option<SshAddress>,
    /// Open the role's web UIs ([[forwards]], e.g. Jenkins, Spark, HDFS) on this machine for as
    /// long as the session lasts (`-- -N` for the forwards alone); their local ports are printed
    #[arg(long)]
    pub forward: bool,
    /// Arguments for ssh: options and/or a remote command (after --)
    #[arg(last = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Log in as this user
    #[arg(short = 'l', long = "login", conflicts_with = "admin")]
    pub user: Option<String>,
    /// Log in as the image's admin user
    #[arg(short = 'a', long)]
    pub admin: bool,
}

#[derive(Debug, Args)]
pub struct RsyncArgs {
    #[arg(add = ArgValueCandidates::new(complete::roles))]
    pub role: String,
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Which address to reach the box at
    #[arg(long = "ssh-address", value_enum)]
    pub ssh_address: Option<SshAddress>,
    /// Extra options for the ssh that rsync runs (use --ssh-opts=-v for dashes)
    #[arg(short = 'e', long = "ssh-opts", default_value = "", allow_hyphen_values = true)]
    pub ssh_opts: String,
    /// rsync arguments (after --); ':path' is a path on the box
    #[arg(last = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteImageArgs {
    #[arg(add = ArgValueCandidates::new(complete::roles))]
    pub role: String,
    /// Image ordinal (oldest 0, newest -1) or AMI id
    #[arg(short = 'i', long = "image", allow_negative_numbers = true, default_value = "-1")]
    pub image: String,
    /// Keep the image's snapshots
    #[arg(short = 'K', long = "keep-snapshot")]
    pub keep_snapshot: bool,
    /// Do not wait for deregistration (implies --keep-snapshot)
    #[arg(short = 'Q', long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct RegisterKeyArgs {
    /// An OpenSSH public key file (RSA or ed25519)
    pub key_file: std::path::PathBuf,
    /// Key-pair name (default: __me__, your user name)
    #[arg(short = 'k', long = "keypair")]
    pub keypair: Option<String>,
    /// Replace an existing key pair with a different key
    #[arg(short = 'F', long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DeleteKeyArgs {
    /// Key-pair name (__me__ is your user name)
    pub keypair: String,
}

#[derive(Debug, Args)]
pub struct ConfirmArgs {
    /// Do not ask for confirmation
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Only show what would be deleted
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Also the namespaces below this one (e.g. /team/ci/ below /team/), listed first like
    /// the namespace's own
    #[arg(short = 'r', long)]
    pub recursive: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub confirm: ConfirmArgs,
    /// Treat launches still marked pending after this many minutes as interrupted
    #[arg(long = "min-age", default_value_t = 30)]
    pub min_age_minutes: u64,
    /// Also delete the namespace's detached persistent volumes (boxes' and cluster nodes'
    /// data, kept by terminate on purpose)
    #[arg(long = "persistent-volumes")]
    pub persistent_volumes: bool,
}
