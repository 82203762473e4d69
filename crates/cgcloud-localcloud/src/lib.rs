//! The local cloud: an EC2 twin made of moto (the control plane, speaking the EC2/IAM/SQS/...
//! APIs on 127.0.0.1 and on the bridge) and systemd-nspawn hosts (the data plane: one real
//! Linux host per running instance, at the instance's private IP). A controller watches moto
//! and makes its state real. `up` builds and starts everything, `down` removes everything it
//! created, and a crashed run's leftovers are cleaned by the next `up`.

pub mod controller;
pub mod cost;
pub mod guestfs;
pub mod host;
pub mod iam;
pub mod images;
pub mod imds;
pub mod net;
pub mod proxy;
pub mod secgroups;
pub mod sys;
pub mod volumes;

use cgcloud_core::fsutil::{remove_dir_all_if_exists, remove_file_if_exists};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The region the local cloud emulates, and its zones with their subnets.
pub const REGION: &str = "us-west-2";
pub const ZONES: &[(&str, &str)] =
    &[("us-west-2a", "10.199.1.0/24"), ("us-west-2b", "10.199.2.0/24"), ("us-west-2c", "10.199.3.0/24")];
/// The moto release the local cloud pins.
pub const MOTO_VERSION: &str = "5.2.5";
pub const DEFAULT_PORT: u16 = 5401;
pub const ACCESS_KEY: &str = "localcloud";
pub const SECRET_KEY: &str = "localcloud";
/// Tags the local cloud's own VPC and subnets.
pub const VPC_TAG: &str = "cgcloud-local";
/// Set on an instance the local cloud cannot run, with the reason.
pub const FAILURE_TAG: &str = cgcloud_core::tags::FAILURE;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Prerequisite(String),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Aws(#[from] cgcloud_aws::AwsError),
    #[error("{0}")]
    Controller(String),
    /// An instance the local cloud will not run as it is (e.g. its image plants a symlink
    /// where the seed goes): it is terminated with the reason in a tag.
    #[error("{0}")]
    Unrunnable(String),
    #[error("the local cloud is not up; run `cgcloud local up`")]
    NotUp,
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.display().to_string(), source }
    }
}

/// What `up` started, so `down` (or the next `up`) can remove exactly that.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunState {
    /// The public endpoint's port (the controller's proxy).
    pub port: u16,
    /// moto's own port, on 127.0.0.1 only.
    pub moto_port: u16,
    /// The instance metadata service's port on the bridge address (0: the API's port + 2).
    pub imds_port: u16,
    pub moto_pid: Option<u32>,
    pub dnsmasq_pid: Option<u32>,
    pub controller_pid: Option<u32>,
    pub ip_forward_before: Option<String>,
    pub vpc_id: Option<String>,
    /// zone → subnet id
    pub subnets: Vec<(String, String)>,
    pub images: Vec<images::BaseImage>,
    /// Where the guests' door sends the requests it passes, on loopback, instead of moto: a
    /// fault-injecting proxy in front of moto, for tests (`CGCLOUD_LOCAL_API_UPSTREAM` at `up`).
    pub api_upstream_port: Option<u16>,
}

impl RunState {
    /// moto's port, or the proxy in front of it, for the guests' door.
    pub fn guest_upstream_port(&self) -> u16 {
        self.api_upstream_port.unwrap_or(self.moto_port)
    }

    /// Where IMDS listens on the bridge address (guests' 169.254.169.254:80 is redirected here).
    pub fn imds_port(&self) -> u16 {
        if self.imds_port != 0 {
            self.imds_port
        } else {
            self.port.saturating_add(2)
        }
    }
}

/// What cgcloud needs to talk to the local cloud; written into the `local` profile.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub endpoint: String,
    /// The same API as seen from hosts.
    pub agent_endpoint: String,
    pub region: String,
    pub zone: String,
    pub subnet: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[derive(Debug, Clone)]
pub struct LocalCloud {
    pub dir: PathBuf,
}

/// Markers that identify our processes in /proc/<pid>/cmdline.
const MOTO_MARKER: &str = "moto_server";
/// The launcher of moto's server (its name holds [`MOTO_MARKER`]): file name and text.
const MOTO_LAUNCHER: (&str, &str) = ("moto_server_launcher.py", include_str!("moto_server_launcher.py"));
/// How long a terminated instance stays listed, as on EC2; `CGCLOUD_LOCAL_TERMINATED_TTL`
/// (seconds) changes it.
const TERMINATED_TTL: Duration = Duration::from_secs(3600);
pub const CONTROLLER_MARKER: &str = "controller";

impl LocalCloud {
    /// `$CGCLOUD_LOCAL_DIR`, else /var/lib/cgcloud-local.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("CGCLOUD_LOCAL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/cgcloud-local"))
    }

    pub fn new(dir: PathBuf) -> LocalCloud {
        LocalCloud { dir }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    fn state_file(&self) -> PathBuf {
        self.run_dir().join("state.json")
    }
    pub fn hosts_file(&self) -> PathBuf {
        self.run_dir().join("hosts")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(name)
    }

    pub fn state(&self) -> Option<RunState> {
        serde_json::from_str(&std::fs::read_to_string(self.state_file()).ok()?).ok()
    }

    fn save_state(&self, s: &RunState) -> Result<(), Error> {
        let f = self.state_file();
        std::fs::create_dir_all(self.run_dir()).map_err(|e| Error::io(&self.run_dir(), e))?;
        let text = serde_json::to_string_pretty(s).unwrap_or_default();
        cgcloud_core::fsutil::write_atomic(&f, text.as_bytes(), 0o644).map_err(|e| Error::io(&f, e))
    }

    pub fn endpoint_url(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// True if moto and the controller of a previous `up` are running.
    pub fn is_up(&self) -> bool {
        self.state().is_some_and(|s| {
            s.moto_pid.is_some_and(|p| sys::pid_matches(p, MOTO_MARKER))
                && s.controller_pid.is_some_and(|p| sys::pid_matches(p, CONTROLLER_MARKER))
        })
    }

    /// The endpoint description of the running local cloud.
    pub fn endpoint(&self) -> Result<Endpoint, Error> {
        let s = self.state().ok_or(Error::NotUp)?;
        let (zone, subnet) = s.subnets.first().cloned().ok_or(Error::NotUp)?;
        Ok(Endpoint {
            endpoint: Self::endpoint_url(s.port),
            agent_endpoint: format!("http://{}:{}", net::GATEWAY, s.port),
            region: REGION.to_owned(),
            zone,
            subnet,
            access_key_id: ACCESS_KEY.to_owned(),
            secret_access_key: SECRET_KEY.to_owned(),
        })
    }

    /// Checks what `up` needs; the error names every missing piece and how to install it.
    pub fn check_prerequisites() -> Result<(), Error> {
        if !cfg!(target_os = "linux") {
            return Err(Error::Prerequisite("the local cloud needs Linux".into()));
        }
        let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        });
        if uid.as_deref() != Some("0") {
            return Err(Error::Prerequisite(
                "the local cloud needs root (it creates network namespaces, mounts and containers); run it with sudo"
                    .into(),
            ));
        }
        let needed = [
            ("debootstrap", "debootstrap"),
            ("systemd-nspawn", "systemd-container"),
            ("ip", "iproute2"),
            ("iptables", "iptables"),
            ("ebtables", "iptables"),
            ("dnsmasq", "dnsmasq-base"),
            ("ssh-keygen", "openssh-client"),
            ("python3", "python3 python3-venv"),
            ("curl", "curl"),
        ];
        let programs: Vec<&str> = needed.iter().map(|(p, _)| *p).collect();
        let missing = sys::missing_programs(&programs);
        if !missing.is_empty() {
            let pkgs: Vec<&str> =
                needed.iter().filter(|(p, _)| missing.iter().any(|m| m == p)).map(|(_, pkg)| *pkg).collect();
            return Err(Error::Prerequisite(format!(
                "missing {}; install with: apt-get install -y {}",
                missing.join(", "),
                pkgs.join(" ")
            )));
        }
        Ok(())
    }

    /// Brings the local cloud up (idempotent). `say` receives progress lines.
    pub async fn up(&self, port: u16, exe: &Path, say: &dyn Fn(&str)) -> Result<Endpoint, Error> {
        Self::check_prerequisites()?;
        if self.is_up() {
            say("the local cloud is already up");
            return self.endpoint();
        }
        if let Some(state) = self.state().filter(|s| s.moto_pid.is_some_and(|p| sys::pid_matches(p, MOTO_MARKER))) {
            // moto (and so the cloud's state) survived; only the controller is missing.
            say("the controller is not running; restarting it (it re-adopts the running hosts)");
            if !state.dnsmasq_pid.is_some_and(|p| sys::pid_matches(p, &self.hosts_file().to_string_lossy())) {
                let mut s = state.clone();
                s.dnsmasq_pid = Some(self.start_dnsmasq().await?);
                self.save_state(&s)?;
            }
            self.restart_controller(exe).await?;
            return self.endpoint();
        }
        if self.state().is_some() || !net::our_netns().await.is_empty() {
            say("cleaning up after a previous run that did not shut down");
            self.down(say).await?;
        }
        for d in [
            self.run_dir(),
            self.dir.join("logs"),
            self.dir.join("images"),
            self.dir.join("instances"),
            self.dir.join("layers"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let mut state = RunState {
            port,
            moto_port: port
                .checked_add(1)
                .ok_or_else(|| Error::Controller(format!("port {port} leaves no port for moto above it")))?,
            imds_port: port
                .checked_add(2)
                .ok_or_else(|| Error::Controller(format!("port {port} leaves no port for IMDS above it")))?,
            ..Default::default()
        };
        // Many systemd hosts need more inotify instances than the default 128.
        sys::run_quiet("sysctl", &["-q", "-w", "fs.inotify.max_user_instances=8192"]).await;
        sys::run_quiet("sysctl", &["-q", "-w", "fs.inotify.max_user_watches=1048576"]).await;
        // Hosts get /dev/fuse, as EC2 instances have it (clusters' shared directories use sshfs).
        if !Path::new("/dev/fuse").exists() {
            sys::run_quiet("modprobe", &["-q", "fuse"]).await;
            if !Path::new("/dev/fuse").exists() {
                say("warning: no /dev/fuse on this machine: clusters' shared directories (/shared) will not mount");
            }
        }

        let guest_ports = net::parse_guest_ports(
            &std::env::var("CGCLOUD_LOCAL_GUEST_PORTS").unwrap_or_else(|_| net::DEFAULT_GUEST_PORTS.to_owned()),
        )?;
        state.api_upstream_port = match std::env::var("CGCLOUD_LOCAL_API_UPSTREAM") {
            Ok(url) if !url.is_empty() => Some(parse_api_upstream(&url)?),
            _ => None,
        };
        if !host::can_restrict_devices() {
            say("warning: this machine has no cgroup v1 devices controller: hosts are not kept from opening each other's volumes and instance-store disks (loop devices); see docs/security.md");
        }
        if !secgroups::between_hosts() {
            say("warning: bridged traffic does not pass iptables on this machine (br_netfilter is not loaded): security groups are enforced on what the machine sends hosts, not between hosts; `modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1` enables them");
        }
        net::bridge_up().await?;
        say(&format!("bridge {} at {}/{}", net::BRIDGE, net::GATEWAY, net::PREFIX_LEN));
        state.ip_forward_before = Some(net::nat_up(port, state.imds_port(), &guest_ports).await?);
        self.save_state(&state)?;
        say(&format!("NAT for {} (egress for apt and pip inside hosts)", net::VPC_CIDR));
        say(&format!(
            "guests reach this machine only at {}: DNS, the API on port {port}, and ports {} (CGCLOUD_LOCAL_GUEST_PORTS)",
            net::GATEWAY,
            guest_ports.join(",").replace(':', "-")
        ));

        std::fs::write(self.hosts_file(), "").map_err(|e| Error::io(&self.hosts_file(), e))?;
        state.dnsmasq_pid = Some(self.start_dnsmasq().await?);
        self.save_state(&state)?;
        say(&format!("DNS for private host names on {}:53", net::GATEWAY));

        let mirror = images::machine_mirror()?;
        for r in images::recipes() {
            say(&format!("base image {} (cached after the first build, which takes about a minute)", r.os_id));
            let img =
                images::ensure(&self.dir.join("images"), &r, &mirror, &self.log(&format!("image-{}.log", r.os_id)))
                    .await?;
            say(&format!("  {} = {} ({})", img.os_id, img.ami_id, img.name));
            state.images.push(img);
        }
        let catalogue = self.run_dir().join("amis.json");
        let text = serde_json::to_string_pretty(&images::catalogue(&state.images)).unwrap_or_default();
        cgcloud_core::fsutil::write_atomic(&catalogue, text.as_bytes(), 0o644).map_err(|e| Error::io(&catalogue, e))?;

        let moto = self.ensure_moto(say).await?;
        state.moto_pid = Some(self.start_moto(&moto, state.moto_port, &catalogue).await?);
        self.save_state(&state)?;
        say(&format!("moto {MOTO_VERSION} on {}", Self::endpoint_url(state.moto_port)));

        let cloud = self.cloud(state.moto_port).await?;
        let (vpc, subnets) = create_vpc(&cloud).await?;
        state.vpc_id = Some(vpc.clone());
        state.subnets = subnets;
        self.save_state(&state)?;
        say(&format!(
            "VPC {vpc} ({}) with subnets {}",
            net::VPC_CIDR,
            state.subnets.iter().map(|(z, s)| format!("{s} in {z}")).collect::<Vec<_>>().join(", ")
        ));

        state.controller_pid = Some(self.start_controller(exe).await?);
        self.save_state(&state)?;
        if let Some(p) = state.api_upstream_port {
            say(&format!(
                "guests' API requests go to {} instead of moto (CGCLOUD_LOCAL_API_UPSTREAM)",
                Self::endpoint_url(p)
            ));
        }
        say(&format!(
            "controller started; the AWS endpoint is {} (and {}:{port} from hosts)",
            Self::endpoint_url(port),
            net::GATEWAY
        ));
        self.endpoint()
    }

    pub async fn cloud(&self, port: u16) -> Result<cgcloud_aws::Cloud, Error> {
        Ok(cgcloud_aws::Cloud::connect(&cgcloud_aws::ConnectSettings {
            region: Some(REGION.to_owned()),
            endpoint: Some(Self::endpoint_url(port)),
            access_key_id: Some(ACCESS_KEY.to_owned()),
            secret_access_key: Some(SECRET_KEY.to_owned()),
            max_attempts: Some(3),
            ..Default::default()
        })
        .await?)
    }

    async fn start_dnsmasq(&self) -> Result<u32, Error> {
        let pid_file = self.run_dir().join("dnsmasq.pid");
        remove_file_if_exists(&pid_file).map_err(|e| Error::io(&pid_file, e))?;
        // dnsmasq forwards to the machine's resolvers and answers the hosts' names itself.
        sys::run(
            "dnsmasq",
            &[
                "--conf-file=/dev/null",
                &format!("--listen-address={}", net::GATEWAY),
                "--bind-interfaces",
                "--no-hosts",
                &format!("--addn-hosts={}", self.hosts_file().display()),
                &format!("--pid-file={}", pid_file.display()),
                "--domain-needed",
                &format!("--log-facility={}", self.log("dnsmasq.log").display()),
                "--user=root",
            ],
        )
        .await?;
        for _ in 0..50 {
            if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse().ok()) {
                return Ok(pid);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Controller(format!("dnsmasq did not start; see {}", self.log("dnsmasq.log").display())))
    }

    /// Installs the pinned moto into the local cloud's own venv (once).
    async fn ensure_moto(&self, say: &dyn Fn(&str)) -> Result<PathBuf, Error> {
        let venv = self.dir.join(format!("moto-{MOTO_VERSION}"));
        let server = venv.join("bin/moto_server");
        let done = venv.join(".installed");
        if done.exists() && server.exists() {
            return Ok(server);
        }
        say(&format!("installing moto {MOTO_VERSION} into {} (about 30 s, once)", venv.display()));
        remove_dir_all_if_exists(&venv).map_err(|e| Error::io(&venv, e))?;
        sys::run("python3", &["-m", "venv", &venv.to_string_lossy()]).await?;
        sys::run(&venv.join("bin/pip").to_string_lossy(), &["install", "-q", &format!("moto[server]=={MOTO_VERSION}")])
            .await?;
        std::fs::write(&done, MOTO_VERSION).map_err(|e| Error::io(&done, e))?;
        Ok(server)
    }

    async fn start_moto(&self, server: &Path, port: u16, catalogue: &Path) -> Result<u32, Error> {
        let log = self.log("moto.log");
        let logf = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let logf2 = logf.try_clone().map_err(|e| Error::io(&log, e))?;
        // moto's server, started by a launcher that ages out terminated instances as EC2 does.
        let launcher = self.dir.join(MOTO_LAUNCHER.0);
        std::fs::write(&launcher, MOTO_LAUNCHER.1).map_err(|e| Error::io(&launcher, e))?;
        let python = server.with_file_name("python");
        let ttl = std::env::var("CGCLOUD_LOCAL_TERMINATED_TTL")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(TERMINATED_TTL.as_secs());
        // Its own process group, so a Ctrl-C in the terminal that ran `up` does not reach it.
        let child = tokio::process::Command::new(python)
            .arg(&launcher)
            .arg(ttl.to_string())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .process_group(0)
            .env("MOTO_AMIS_PATH", catalogue)
            .stdin(std::process::Stdio::null())
            .stdout(logf)
            .stderr(logf2)
            .spawn()
            .map_err(|e| Error::Command { command: format!("{}", server.display()), detail: e.to_string() })?;
        let pid = child.id().ok_or_else(|| Error::Controller("moto exited at once".into()))?;
        drop(child);
        let url = format!("{}/moto-api/data.json", Self::endpoint_url(port));
        for _ in 0..300 {
            if sys::run_quiet("curl", &["-sf", "-o", "/dev/null", "--max-time", "10", &url]).await {
                return Ok(pid);
            }
            if !sys::pid_alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sys::stop_process(pid, MOTO_MARKER, 5).await;
        Err(Error::Controller(format!("moto did not start on port {port}; see {}", log.display())))
    }

    async fn start_controller(&self, exe: &Path) -> Result<u32, Error> {
        let log = self.log("controller.log");
        // Readiness below is "the proxy's port answers": a process already listening there (a
        // controller left by an interrupted `up`) would pass for the new controller, which then
        // exits unable to listen, and no host would ever start.
        let port = self.state().map(|s| s.port).unwrap_or(DEFAULT_PORT);
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Err(Error::Controller(format!(
                "port {port} on 127.0.0.1, where the controller serves the AWS API, is already in use by another \
                 process (a controller left by an interrupted `cgcloud local up`?); find it with \
                 `ss -ltnp 'sport = :{port}'`, stop it, and run `cgcloud local up` again"
            )));
        }
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(|e| Error::io(&log, e))?;
        let logf2 = logf.try_clone().map_err(|e| Error::io(&log, e))?;
        let child = tokio::process::Command::new(exe)
            .process_group(0)
            .args(["local", "controller", "--dir"])
            .arg(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(logf)
            .stderr(logf2)
            .spawn()
            .map_err(|e| Error::Command {
                command: format!("{} local controller", exe.display()),
                detail: e.to_string(),
            })?;
        let pid = child.id().ok_or_else(|| Error::Controller("the controller exited at once".into()))?;
        drop(child);
        // Ready when its proxy answers.
        for _ in 0..100 {
            if !sys::pid_alive(pid) {
                break;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(pid);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sys::stop_process(pid, CONTROLLER_MARKER, 5).await;
        Err(Error::Controller(format!("the controller did not start; see {}", log.display())))
    }

    /// Restarts the controller (it re-adopts running hosts).
    pub async fn restart_controller(&self, exe: &Path) -> Result<u32, Error> {
        let mut state = self.state().ok_or(Error::NotUp)?;
        if let Some(pid) = state.controller_pid {
            sys::stop_process(pid, CONTROLLER_MARKER, 10).await;
        }
        let pid = self.start_controller(exe).await?;
        state.controller_pid = Some(pid);
        self.save_state(&state)?;
        Ok(pid)
    }

    /// Interrupts spot instance `instance_id` as EC2 does: the notice (`{"action", "time"}`) is
    /// in its IMDS at once, and after `notice` the instance is stopped or terminated
    /// (`action`). Refused for an instance that is not a running spot instance of this cloud.
    pub async fn interrupt(
        &self,
        instance_id: &str,
        notice: Duration,
        action: &str,
    ) -> Result<serde_json::Value, Error> {
        if !matches!(action, "terminate" | "stop") {
            return Err(Error::Controller(format!("'{action}' is not an interruption action (terminate or stop)")));
        }
        if notice > Duration::from_secs(3600) {
            return Err(Error::Controller(
                "a notice of more than an hour is not one EC2 gives (it gives two minutes)".into(),
            ));
        }
        let state = self.state().filter(|_| self.is_up()).ok_or(Error::NotUp)?;
        let cloud = self.cloud(state.moto_port).await?;
        let inst = cloud
            .describe_instances(&[instance_id.to_owned()])
            .await
            .map_err(|e| Error::Controller(format!("no instance {instance_id} in the local cloud: {e}")))?
            .into_iter()
            .find(|i| i.id == instance_id)
            .ok_or_else(|| Error::Controller(format!("no instance {instance_id} in the local cloud")))?;
        if inst.state != "running" {
            return Err(Error::Controller(format!(
                "{instance_id} is {}, not running: only a running instance can be interrupted",
                inst.state
            )));
        }
        if !inst.spot {
            return Err(Error::Controller(format!(
                "{instance_id} is an on-demand instance: EC2 interrupts only spot instances"
            )));
        }
        let body = format!("instance={instance_id}&action={action}&notice={}", notice.as_secs());
        let answer = http_post(state.port, proxy::INTERRUPT_PATH, &body).await?;
        serde_json::from_str(&answer).map_err(|e| Error::Controller(format!("the controller's answer: {e}: {answer}")))
    }

    /// Removes everything `up` created, idempotently. Caches (images, moto venv) are kept.
    pub async fn down(&self, say: &dyn Fn(&str)) -> Result<(), Error> {
        let state = self.state().unwrap_or_default();
        if let Some(pid) = state.controller_pid {
            sys::stop_process(pid, CONTROLLER_MARKER, 10).await;
        }
        // Hosts: power off every one we know of, in parallel.
        let instances_dir = self.dir.join("instances");
        let ids: Vec<String> = std::fs::read_dir(&instances_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !ids.is_empty() {
            say(&format!("stopping {} host(s)", ids.len()));
        }
        let mut set = tokio::task::JoinSet::new();
        for id in ids {
            let dir = self.dir.clone();
            set.spawn(async move {
                let host = host::Host { dir: &dir, id: &id };
                if let Err(e) = host.destroy().await {
                    tracing::warn!("{id}: cannot remove its host: {e}");
                }
            });
        }
        while set.join_next().await.is_some() {}
        for ns in net::our_netns().await {
            sys::run_quiet("ip", &["netns", "del", &ns]).await;
        }
        umount_all(&self.dir).await;
        for v in volumes::known(&self.dir) {
            volumes::delete(&self.dir, &v).await;
        }
        for dir in [self.dir.join("instances"), self.dir.join("layers"), self.dir.join("volumes")] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
        }
        if let Some(pid) = state.moto_pid {
            sys::stop_process(pid, MOTO_MARKER, 10).await;
        }
        if let Some(pid) = state.dnsmasq_pid {
            sys::stop_process(pid, &self.hosts_file().to_string_lossy(), 5).await;
        }
        net::nat_down(state.imds_port(), state.ip_forward_before.as_deref()).await;
        net::unpin_all().await;
        net::bridge_down().await;
        for f in [self.state_file(), self.hosts_file()] {
            if let Err(e) = remove_file_if_exists(&f) {
                say(&format!("cannot remove {}: {e}", f.display()));
            }
        }
        say("the local cloud is down");
        Ok(())
    }
}

/// POSTs a form `body` to the controller's own `path` on its loopback door; returns the body
/// of a 200 answer.
async fn http_post(port: u16, path: &str, body: &str) -> Result<String, Error> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let talk = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if rest.len() >= len || n == 0 {
                    return Ok::<_, std::io::Error>((
                        head.lines().next().unwrap_or_default().to_owned(),
                        rest.to_owned(),
                    ));
                }
            } else if n == 0 {
                return Ok((String::new(), text));
            }
        }
    };
    let (status, answer) = tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .map_err(|_| Error::Controller("the controller did not answer within 10 s".into()))?
        .map_err(|e| Error::Controller(format!("cannot reach the controller on port {port}: {e}")))?;
    if !status.contains(" 200 ") {
        return Err(Error::Controller(format!("the controller refused: {status}: {answer}")));
    }
    Ok(answer)
}

/// The port of `CGCLOUD_LOCAL_API_UPSTREAM`, an HTTP URL on loopback (`http://127.0.0.1:PORT`,
/// what `testkit::fault::FaultProxy` gives as its endpoint). Only loopback: the guests' door
/// must not send the requests it authorized anywhere but to this machine's moto, through a
/// proxy the tests run.
pub fn parse_api_upstream(url: &str) -> Result<u16, Error> {
    let bad = || {
        Error::Prerequisite(format!(
            "CGCLOUD_LOCAL_API_UPSTREAM: '{url}' is not http://127.0.0.1:PORT (a proxy in front of moto on loopback)"
        ))
    };
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let port = ["127.0.0.1:", "localhost:"].iter().find_map(|h| rest.strip_prefix(h)).ok_or_else(bad)?;
    port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)
}

/// Unmounts everything at or below `dir`.
pub async fn umount_all(dir: &Path) {
    for m in sys::mounts_under(dir) {
        if !sys::run_quiet("umount", &[&m]).await {
            sys::run_quiet("umount", &["-l", &m]).await;
        }
    }
}

/// Creates the local VPC with one subnet per zone that assigns no public IPs.
async fn create_vpc(cloud: &cgcloud_aws::Cloud) -> Result<(String, Vec<(String, String)>), Error> {
    Ok(cloud.create_private_vpc(VPC_TAG, net::VPC_CIDR, ZONES).await?)
}

/// A client for tests whose requests go nowhere (the discard port): for code that holds a
/// cloud but whose tests must not reach one.
#[cfg(test)]
pub(crate) async fn test_cloud() -> cgcloud_aws::Cloud {
    let settings = cgcloud_aws::ConnectSettings {
        region: Some("us-east-1".into()),
        endpoint: Some("http://127.0.0.1:9".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        ..Default::default()
    };
    cgcloud_aws::Cloud::connect(&settings).await.unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_upstream_is_a_port_on_loopback() {
        assert_eq!(parse_api_upstream("http://127.0.0.1:40123").unwrap(), 40123);
        assert_eq!(parse_api_upstream("http://localhost:40123/").unwrap(), 40123);
        for bad in [
            "127.0.0.1:40123",
            "http://10.199.0.1:40123",
            "http://127.0.0.1:0",
            "http://127.0.0.1:x",
            "https://127.0.0.1:1",
        ] {
            let e = parse_api_upstream(bad).unwrap_err().to_string();
            assert!(e.contains("CGCLOUD_LOCAL_API_UPSTREAM") && e.contains(bad), "{e}");
        }
        let state = RunState { moto_port: 5402, ..Default::default() };
        assert_eq!(state.guest_upstream_port(), 5402);
        assert_eq!(RunState { api_upstream_port: Some(40123), ..state }.guest_upstream_port(), 40123);
    }

    #[test]
    fn the_moto_launcher_is_recognised_as_moto() {
        // `is_up` and `down` find moto by this marker in its command line, which is
        // `python <dir>/<launcher> ...`: a launcher named without it is never stopped.
        assert!(MOTO_LAUNCHER.0.contains(MOTO_MARKER));
    }

    /// Regression: a stale process on the proxy's port made `up` take it for the controller it
    /// had just started (which then could not listen), and launches waited forever.
    #[tokio::test]
    async fn a_taken_proxy_port_is_reported_not_mistaken_for_the_controller() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let lc = LocalCloud::new(dir.path().to_path_buf());
        lc.save_state(&RunState { port, ..Default::default() }).unwrap();
        // An executable that would pass for a controller if readiness were only the port.
        let e = lc.start_controller(Path::new("/bin/sleep")).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("port {port}")) && msg.contains("already in use"), "{msg}");
    }
}
