//! Autostop: a box (or a cluster, decided by its leader) that has been idle for the period its
//! `cgcloud:autostop` tag names stops or terminates itself. Idle means: no SSH connection
//! (but the cluster's own), CPU use below the role's threshold, and the role's busy probe
//! (e.g. "Slurm has jobs") failing;
//! on a cluster, also no worker reporting activity (`cgcloud:active-at`). Spot instances cannot
//! stop, so they are terminated. The tags are the workstation's (`create --autostop`,
//! `cgcloud autostop`); a box cannot change them (its policy lets it write only the tags its
//! agent writes), and IAM lets it stop or terminate only itself or, for a leader, the nodes
//! whose `cgcloud:leader-arn` is its own ARN.
//!
//! The measuring is pure ([`Meter`], [`ssh_connections`], [`cpu_usage_usec`]); [`Watch`] is
//! the daemon's side: it looks every [`check_every`], reports or decides, and stops or
//! terminates through EC2.

use crate::aws::{AwsError, Client, Service};
use crate::log::log;
use std::path::Path;
use std::time::{Duration, Instant};

/// What the workstation asked for, from the box's tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub idle: Duration,
    pub terminate: bool,
}

/// The setting in `tags`, if autostop is on (a period of at least one second).
pub fn setting(tags: &std::collections::BTreeMap<String, String>) -> Option<Setting> {
    let secs: u64 = tags.get(cgcloud_core::tags::AUTOSTOP)?.trim().parse().ok().filter(|s| *s > 0)?;
    let terminate = tags.get(cgcloud_core::tags::AUTOSTOP_ACTION).is_some_and(|a| a == "terminate");
    Some(Setting { idle: Duration::from_secs(secs), terminate })
}

/// How often idleness is looked at: a sixth of the period, between 2 and 30 seconds.
pub fn check_every(s: &Setting) -> Duration {
    (s.idle / 6).clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// The TCP connections to port 22 that are established, from /proc/net/tcp and tcp6 (an SSH
/// session, interactive or not, is one; so is a multiplexed master connection), except those
/// from loopback or from an address in `internal`: a cluster's own connections (every node,
/// the leader too, mounts the shared directory over SFTP from the leader) are not somebody
/// using the cluster.
pub fn ssh_connections(proc_net: &Path, internal: &[std::net::IpAddr]) -> usize {
    ["tcp", "tcp6"]
        .iter()
        .map(|f| count_established(&std::fs::read_to_string(proc_net.join(f)).unwrap_or_default(), 22, internal))
        .sum()
}

fn count_established(table: &str, port: u16, internal: &[std::net::IpAddr]) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 01 is ESTABLISHED.
            f.len() > 3
                && f[3] == "01"
                && f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                && !parse_address(f[2]).is_some_and(|a| a.is_loopback() || internal.contains(&a))
        })
        .count()
}

/// The address of a /proc/net/tcp{,6} `ADDR:PORT` field: IPv4 as one little-endian word,
/// IPv6 as four; an IPv4-mapped IPv6 address as its IPv4 address.
fn parse_address(field: &str) -> Option<std::net::IpAddr> {
    let hex = field.split(':').next()?;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::swap_bytes);
    match hex.len() {
        8 => Some(std::net::Ipv4Addr::from(word(hex)?).into()),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(&hex[i * 8..i * 8 + 8])?.to_be_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            Some(v6.to_ipv4_mapped().map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4))
        }
        _ => None,
    }
}

/// CPU time used by everything on the box, in microseconds: its cgroup's (a container's own,
/// or a VM's root cgroup; under cgroup v2 at the top, or at `unified/` on a hybrid v1/v2
/// system), else the busy jiffies of /proc/stat. /proc/stat is not namespaced: in a container
/// on a hybrid system it is the whole machine's, which other work keeps busy.
pub fn cpu_usage_usec(sys_cgroup: &Path, proc_stat: &Path) -> Option<u64> {
    for stat in [sys_cgroup.join("cpu.stat"), sys_cgroup.join("unified/cpu.stat")] {
        let Ok(stat) = std::fs::read_to_string(stat) else { continue };
        if let Some(v) = stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok()) {
            return Some(v);
        }
    }
    let stat = std::fs::read_to_string(proc_stat).ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let busy: u64 = cpu
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| ![3, 4].contains(i)) // idle, iowait
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100.
    Some(busy * 10_000)
}

/// Whether the role's busy probe says the box is busy. Exit 1 means idle; anything else — 0,
/// another status, a probe that cannot run or takes longer than `timeout` — means busy: when
/// in doubt, keep running.
pub fn probe_busy(command: &str, timeout: Duration) -> bool {
    let Ok(mut child) = std::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return true;
    };
    match crate::sys::wait_timeout(&mut child, timeout, Duration::from_millis(100)) {
        Ok(Some(status)) => status.code() != Some(1),
        Ok(None) => true,
        Err(_) => {
            // Cannot tell how the probe ended: busy, and the probe is not left behind. A kill
            // or wait that fails means it is gone already.
            let _ = child.kill();
            let _ = child.wait();
            true
        }
    }
}

/// Tracks how long the box has been idle.
#[derive(Debug)]
pub struct Meter {
    last_cpu: Option<(Instant, u64)>,
    idle_since: Instant,
    /// CPU use (in cores) below which the box counts as idle.
    pub threshold: f64,
}

/// Why the box is busy (for the log), or None if idle.
pub type Busy = Option<String>;

impl Meter {
    pub fn new(threshold: f64, now: Instant) -> Meter {
        Meter { last_cpu: None, idle_since: now, threshold }
    }

    /// Looks at the box now: `connections` SSH connections, `cpu_usec` the CPU counter,
    /// `probe` the role probe's verdict, `peers` whether a cluster member reported activity.
    /// Returns why it is busy, if it is; being busy restarts the idle clock.
    pub fn observe(
        &mut self,
        now: Instant,
        connections: usize,
        cpu_usec: Option<u64>,
        probe: bool,
        peers: bool,
    ) -> Busy {
        let cpu = match (self.last_cpu, cpu_usec) {
            (Some((t, u)), Some(v)) if now > t => Some(v.saturating_sub(u) as f64 / 1e6 / (now - t).as_secs_f64()),
            _ => None,
        };
        if let Some(v) = cpu_usec {
            self.last_cpu = Some((now, v));
        }
        let busy = if connections > 0 {
            Some(format!("{connections} SSH connection(s)"))
        } else if cpu.is_some_and(|c| c >= self.threshold) {
            Some(format!("CPU use {:.2} cores", cpu.unwrap_or_default()))
        } else if probe {
            Some("the role's busy probe".to_owned())
        } else if peers {
            Some("a cluster node reported activity".to_owned())
        } else {
            None
        };
        if busy.is_some() {
            self.idle_since = now;
        }
        busy
    }

    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.idle_since)
    }
}

/// The EC2 action autostop takes on an idle instance: a spot instance cannot stop (EC2 refuses
/// StopInstances for a one-time request), so it is terminated whatever the setting.
pub fn power_action(terminate: bool, spot: bool) -> &'static str {
    if terminate || spot {
        "TerminateInstances"
    } else {
        "StopInstances"
    }
}

/// Where this box stands, as its last refreshed tags say.
pub struct Place<'a> {
    pub instance_id: &'a str,
    pub namespace: &'a str,
    pub cluster: Option<&'a str>,
    pub leader: bool,
}

/// The daemon's autostop: the setting from the box's tags, and what it has seen so far.
pub struct Watch {
    setting: Option<Setting>,
    busy_probe: Option<String>,
    meter: Meter,
    /// When this worker last reported activity to its leader.
    reported_active: Option<Instant>,
    /// Why autostop last found the box busy (None: idle).
    busy_reason: Option<String>,
}

impl Watch {
    /// `idle_cpu_percent` is of one core; `busy_probe` the role's command (see [`probe_busy`]).
    pub fn new(idle_cpu_percent: Option<u32>, busy_probe: Option<String>) -> Watch {
        let threshold = f64::from(idle_cpu_percent.unwrap_or(10)) / 100.0;
        Watch {
            setting: None,
            busy_probe,
            meter: Meter::new(threshold, Instant::now()),
            reported_active: None,
            busy_reason: Some("starting".to_owned()),
        }
    }

    pub fn setting(&self) -> Option<Setting> {
        self.setting
    }

    /// Takes the setting the box's tags now say, and logs it when it changed.
    pub fn set(&mut self, setting: Option<Setting>) {
        if setting == self.setting {
            return;
        }
        match &setting {
            Some(s) => log(
                "info",
                format!(
                    "autostop: {} after {} s idle",
                    if s.terminate { "terminate" } else { "stop" },
                    s.idle.as_secs()
                ),
            ),
            None => log("info", "autostop: off"),
        }
        self.setting = setting;
    }

    /// One look at idleness. A worker only reports that it is busy; a leader decides for its
    /// cluster, a standalone box for itself.
    pub fn check(&mut self, aws: &Client, place: &Place) -> Result<(), AwsError> {
        let Some(s) = self.setting else { return Ok(()) };
        let now = Instant::now();
        let cpu = cpu_usage_usec(Path::new("/sys/fs/cgroup"), Path::new("/proc/stat"));
        if let (Some(_), false) = (place.cluster, place.leader) {
            // The role's probe is about the cluster, and it is the leader's to run.
            let connections = ssh_connections(Path::new("/proc/net"), &[]);
            let busy = self.meter.observe(now, connections, cpu, false, false);
            // At most once a check period, and only while busy: what the leader needs to know.
            if busy.is_some() && self.reported_active.is_none_or(|t| now - t >= check_every(&s)) {
                let tags = [
                    ("ResourceId.1", place.instance_id.to_owned()),
                    ("Tag.1.Key", cgcloud_core::tags::ACTIVE_AT.to_owned()),
                    ("Tag.1.Value", epoch_secs().to_string()),
                ];
                aws.call(Service::Ec2, "CreateTags", &tags)?;
                self.reported_active = Some(now);
            }
            return Ok(());
        }
        let probe = self.busy_probe.as_deref().is_some_and(|c| probe_busy(c, Duration::from_secs(30)));
        let nodes = match place.cluster {
            Some(c) => crate::cluster::members(aws, place.namespace, c)?,
            None => Vec::new(),
        };
        // The nodes' own SSH connections to the leader (the shared directory) are not use.
        let members: Vec<std::net::IpAddr> = nodes.iter().filter_map(|n| n.private_ip.parse().ok()).collect();
        let connections = ssh_connections(Path::new("/proc/net"), &members);
        // A worker counts as active if it said so within two check periods (and a minute).
        let recent = epoch_secs().saturating_sub(2 * check_every(&s).as_secs() + 60);
        let peers = nodes.iter().any(|n| {
            n.id != place.instance_id
                && n.tags
                    .get(cgcloud_core::tags::ACTIVE_AT)
                    .and_then(|t| t.parse::<u64>().ok())
                    .is_some_and(|t| t >= recent)
        });
        let busy = self.meter.observe(now, connections, cpu, probe, peers);
        self.say_if_changed(&s, &busy);
        if busy.is_some() {
            return Ok(());
        }
        let idle = self.meter.idle_for(now);
        if idle < s.idle {
            return Ok(());
        }
        power_off(aws, &s, place.instance_id, &nodes, idle)?;
        // Whatever happens next (the box goes down), do not ask again at once.
        self.meter = Meter::new(self.meter.threshold, Instant::now());
        Ok(())
    }

    /// Says why the box is kept up, or that its idle clock runs, when that changes.
    fn say_if_changed(&mut self, s: &Setting, busy: &Option<String>) {
        if *busy == self.busy_reason {
            return;
        }
        match busy {
            Some(why) => log("info", format!("autostop: busy ({why})")),
            None => log(
                "info",
                format!(
                    "autostop: idle; {} after {} s",
                    if s.terminate { "terminating" } else { "stopping" },
                    s.idle.as_secs()
                ),
            ),
        }
        self.busy_reason = busy.clone();
    }
}

/// Stops or terminates the cluster's workers among `nodes`, then this box.
fn power_off(
    aws: &Client,
    s: &Setting,
    instance_id: &str,
    nodes: &[crate::cluster::Node],
    idle: Duration,
) -> Result<(), AwsError> {
    let me = crate::cluster::describe_self(aws, instance_id)?;
    let verb = |spot: bool| power_action(s.terminate, spot);
    // Workers first (a leader's own stop would leave them running), then this box.
    let workers: Vec<&crate::cluster::Node> = nodes.iter().filter(|n| n.id != instance_id).collect();
    for action in ["TerminateInstances", "StopInstances"] {
        let ids: Vec<&str> =
            workers.iter().filter(|n| verb(n.lifecycle == "spot") == action).map(|n| n.id.as_str()).collect();
        if ids.is_empty() {
            continue;
        }
        let keys: Vec<String> = (1..=ids.len()).map(|i| format!("InstanceId.{i}")).collect();
        let params: Vec<(&str, String)> =
            keys.iter().map(String::as_str).zip(ids.iter().map(|i| (*i).to_owned())).collect();
        log("info", format!("autostop: the cluster was idle for {} s; {action} {}", idle.as_secs(), ids.join(" ")));
        aws.call(Service::Ec2, action, &params)?;
    }
    let action = verb(me.lifecycle == "spot");
    log("info", format!("autostop: idle for {} s; {action} {instance_id}", idle.as_secs()));
    aws.call(Service::Ec2, action, &[("InstanceId.1", instance_id.to_owned())])?;
    Ok(())
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn spot_instances_are_terminated_even_when_autostop_stops() {
        use super::power_action;
        assert_eq!(power_action(false, false), "StopInstances");
        assert_eq!(power_action(false, true), "TerminateInstances");
        assert_eq!(power_action(true, false), "TerminateInstances");
        assert_eq!(power_action(true, true), "TerminateInstances");
    }

    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_setting_comes_from_the_tags() {
        let mut t = BTreeMap::new();
        assert_eq!(setting(&t), None);
        t.insert(cgcloud_core::tags::AUTOSTOP.to_owned(), "1800".to_owned());
        assert_eq!(setting(&t), Some(Setting { idle: Duration::from_secs(1800), terminate: false }));
        t.insert(cgcloud_core::tags::AUTOSTOP_ACTION.to_owned(), "terminate".to_owned());
        assert!(setting(&t).unwrap().terminate);
        t.insert(cgcloud_core::tags::AUTOSTOP.to_owned(), "0".to_owned());
        assert_eq!(setting(&t), None, "0 is off");
        t.insert(cgcloud_core::tags::AUTOSTOP.to_owned(), "soon".to_owned());
        assert_eq!(setting(&t), None);
        assert_eq!(check_every(&Setting { idle: Duration::from_secs(30), terminate: false }), Duration::from_secs(5));
        assert_eq!(
            check_every(&Setting { idle: Duration::from_secs(7200), terminate: false }),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn established_ssh_connections_are_counted() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
           1: 0500C70A:0016 0100C70A:D2F0 01 00000000:00000000 02:000A7E3A 00000000     0        0 2 1\n\
           2: 0500C70A:9C40 0100C70A:0016 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n";
        // The listening socket and an outgoing connection to someone's port 22 do not count.
        assert_eq!(count_established(tcp, 22, &[]), 1);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), tcp).unwrap();
        assert_eq!(ssh_connections(dir.path(), &[]), 1);
        // From a cluster member (10.199.0.1, e.g. its sshfs mount of the shared directory): not
        // somebody using the box.
        let member: std::net::IpAddr = "10.199.0.1".parse().unwrap();
        assert_eq!(ssh_connections(dir.path(), &[member]), 0);
        assert_eq!(ssh_connections(dir.path(), &["10.199.0.2".parse().unwrap()]), 1);
    }

    #[test]
    fn loopback_and_members_over_ipv6_do_not_count() {
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
           0: 00000000000000000000000001000000:0016 00000000000000000000000001000000:A1B2 01 0\n\
           1: 0000000000000000FFFF00000500C70A:0016 0000000000000000FFFF00000200C70A:A1B2 01 0\n\
           2: 0000000000000000FFFF00000500C70A:0016 0000000000000000FFFF00000900C70A:A1B2 01 0\n\
           3: B80D0120000000000000000001000000:0016 B80D0120000000000000000002000000:A1B2 01 0\n";
        assert_eq!(parse_address("0100007F:0016"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_address("0000000000000000FFFF00000200C70A:A1B2"), Some("10.199.0.2".parse().unwrap()));
        assert_eq!(parse_address("B80D0120000000000000000002000000:A1B2"), Some("2001:db8::2".parse().unwrap()));
        assert_eq!(parse_address("zz:0016"), None);
        // ::1 is loopback; 10.199.0.2 is a member; 10.199.0.9 and 2001:db8::2 are somebody.
        assert_eq!(count_established(tcp6, 22, &["10.199.0.2".parse().unwrap()]), 2);
    }

    #[test]
    fn cpu_comes_from_the_cgroup_else_proc_stat() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), "cpu  100 0 50 9000 20 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(cpu_usage_usec(&dir.path().join("none"), &dir.path().join("stat")), Some(1_500_000));
        // A hybrid cgroup system (v1 controllers, v2 at unified/): the container's own.
        std::fs::create_dir(dir.path().join("unified")).unwrap();
        std::fs::write(dir.path().join("unified/cpu.stat"), "usage_usec 77\n").unwrap();
        assert_eq!(cpu_usage_usec(dir.path(), &dir.path().join("stat")), Some(77));
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 4242\nuser_usec 1\n").unwrap();
        assert_eq!(cpu_usage_usec(dir.path(), &dir.path().join("stat")), Some(4242));
    }

    #[test]
    fn the_idle_clock_restarts_when_busy() {
        let t0 = Instant::now();
        let mut m = Meter::new(0.2, t0);
        let s = |n| t0 + Duration::from_secs(n);
        assert!(m.observe(s(0), 0, Some(0), false, false).is_none());
        assert!(m.observe(s(10), 0, Some(1_000_000), false, false).is_none(), "0.1 cores is idle");
        assert_eq!(m.idle_for(s(10)), Duration::from_secs(10));
        assert!(m.observe(s(20), 0, Some(6_000_000), false, false).unwrap().contains("CPU"));
        assert_eq!(m.idle_for(s(25)), Duration::from_secs(5));
        assert!(m.observe(s(30), 1, Some(6_000_000), false, false).unwrap().contains("SSH"));
        assert!(m.observe(s(40), 0, Some(6_000_000), true, false).unwrap().contains("probe"));
        assert!(m.observe(s(50), 0, Some(6_000_000), false, true).unwrap().contains("cluster"));
        assert!(m.observe(s(60), 0, Some(6_000_000), false, false).is_none());
        assert_eq!(m.idle_for(s(90)), Duration::from_secs(40));
    }

    #[test]
    fn probes_decide_and_slow_ones_count_as_busy() {
        assert!(probe_busy("true", Duration::from_secs(5)));
        assert!(!probe_busy("false", Duration::from_secs(5)));
        assert!(probe_busy("exit 2", Duration::from_secs(5)), "a probe that errs keeps the box up");
        assert!(probe_busy("no-such-command-here", Duration::from_secs(5)));
        assert!(probe_busy("sleep 5", Duration::from_millis(300)));
    }
}
