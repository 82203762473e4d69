//! `cgcloud-agent`: the one binary cgcloud puts on every box. It applies provisioning plans
//! (`apply`), and later keeps SSH keys in sync and reports metrics. It is synchronous and
//! small on purpose: it runs on every supported distribution and stays out of the way.
//!
//! Where things live: the command line here; `daemon` is the `run` loop, which calls `keys`
//! (key sync), `queue` (notifications), `cluster` (membership; also the first boot),
//! `members` (the member list a leader serves and its workers fetch), `autostop`, `metrics`, `host_key`, `interruption` (spot notices), `scale` (an elastic
//! cluster's leader launching and terminating its workers; `hooks` runs roles' hooks) and `volume`. `apply` runs plans, `storage` and
//! `volume` prepare disks. Below them: `aws` and `imds` (the AWS and metadata endpoints),
//! `safefs` (every file write: no path a user controls is followed), `sys` (every command but a
//! plan's steps), `log`.
//!
//! Errors: each module has its own `thiserror` enum naming what failed (the command, file or
//! URL), printed with Display; this file, the edge, only prints them (`CliError`).

mod apply;
mod autostop;
mod aws;
mod cluster;
mod conns;
mod daemon;
mod facts;
mod hooks;
mod host_key;
mod imds;
mod interruption;
mod keys;
mod log;
mod members;
mod metrics;
mod pgp;
mod queue;
mod safefs;
mod scale;
mod storage;
mod sys;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

/// The error of a command line: the edge of the program, where errors are only printed, so
/// any module's error will do (the modules' own types say what failed).
type CliError = Box<dyn std::error::Error>;

const USAGE: &str = "usage:
  cgcloud-agent apply --plan FILE [--facts FILE] [--log FILE] [--upgrade] [--json]
  cgcloud-agent run [--config FILE]        (default /etc/cgcloud/agent.json)
  cgcloud-agent sync-keys [--config FILE]  (one key refresh, then exit)
  cgcloud-agent boot [--config FILE]       (first-boot configuration of a cluster node;
                                            CGCLOUD_BOOT_CLUSTER=NAME names its cluster,
                                            CGCLOUD_BOOT_LEADER=IP its leader, whose member list
                                            a worker takes)
  cgcloud-agent members fetch --leader ADDR --cluster NAME --id INSTANCE [--key FILE] [--view all|leader]
                                           (what a worker gets from its leader: the list, checked)
  cgcloud-agent members serve --cluster NAME --listen ADDR [--config FILE] [--key FILE]
                                           (serve a cluster's member list as its leader's agent does)
  cgcloud-agent storage                    (at boot: mount the persistent volume, format and mount
                                            instance-store disks at /mnt/ephemeral, and make again
                                            the directories a cluster node's first boot made)
  cgcloud-agent volume --id VOLUME --name NAME
                                           (format if blank, label-check and mount a standalone
                                            box's attached persistent volume at /mnt/persistent)
  cgcloud-agent scale up|down|fail HOSTLIST [--socket PATH]
                                           (on an elastic cluster's leader, for Slurm's power saving:
                                            launch, suspend or give up on the workers named, e.g. w[1-4])
  cgcloud-agent scale status [--socket PATH]
  cgcloud-agent --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("version") => {
            println!("cgcloud-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("storage") => match storage_cmd() {
            Ok(Some(mp)) => {
                println!("instance store mounted at {mp}");
                ExitCode::SUCCESS
            }
            Ok(None) => {
                println!("no instance store");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cgcloud-agent storage: {e}");
                ExitCode::FAILURE
            }
        },
        Some("volume") => match volume_cmd(&args[1..]) {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cgcloud-agent volume: {e}");
                ExitCode::FAILURE
            }
        },
        Some(cmd @ ("run" | "sync-keys" | "boot")) => {
            let config = match args.get(1).map(String::as_str) {
                Some("--config") => args.get(2).cloned().unwrap_or_default(),
                Some(other) => {
                    eprintln!("unknown argument '{other}'\n{USAGE}");
                    return ExitCode::from(2);
                }
                None => "/etc/cgcloud/agent.json".to_owned(),
            };
            let cfg = match std::fs::read_to_string(&config)
                .map_err(|e| format!("cannot read {config}: {e}"))
                .and_then(|t| serde_json::from_str::<daemon::Config>(&t).map_err(|e| format!("{config}: {e}")))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cgcloud-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut agent = match daemon::Agent::new(cfg) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("cgcloud-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            if cmd == "run" {
                agent.run()
            }
            if cmd == "boot" {
                // Set by the launch's user data; an older agent in an older image ignores it.
                let cluster = std::env::var("CGCLOUD_BOOT_CLUSTER").ok();
                let leader = boot_leader(std::env::var("CGCLOUD_BOOT_LEADER").ok().as_deref());
                let plan = std::path::Path::new("/var/lib/cgcloud/plan.json");
                return match agent.boot(plan, cluster.as_deref(), leader.as_ref()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("cgcloud-agent: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            match agent.sync_keys() {
                Ok(n) => {
                    println!("{n} account(s) updated");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cgcloud-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("members") => match members_cmd(&args[1..]) {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cgcloud-agent members: {e}");
                ExitCode::FAILURE
            }
        },
        Some("scale") => match scale_cmd(&args[1..]) {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cgcloud-agent scale: {e}");
                ExitCode::FAILURE
            }
        },
        Some("apply") => match apply_cmd(&args[1..]) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("cgcloud-agent: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The leader a worker's first boot fetches the member list from, if the launch named one and
/// this node has the cluster key (else the members come from EC2, as before there was a list).
fn boot_leader(ip: Option<&str>) -> Option<members::Leader> {
    let ip: std::net::Ipv4Addr = ip?.parse().ok()?;
    // Long enough for a leader booting beside its workers to start serving.
    let wait = std::time::Duration::from_secs(120);
    members::Leader::new(ip, std::path::Path::new(members::KEY_PATH), wait, false)
        .map_err(|e| log::log("warning", format!("{e}; the members come from EC2")))
        .ok()
}

/// `members fetch|serve …`: the member list by hand (and for `xtask bench members`).
fn members_cmd(args: &[String]) -> Result<String, CliError> {
    let mut opts = std::collections::BTreeMap::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        opts.insert(a.as_str(), v.clone());
    }
    let get = |k: &str| opts.get(k).cloned().ok_or_else(|| format!("{k} is required\n{USAGE}"));
    let key_path = opts.get("--key").cloned().unwrap_or_else(|| members::KEY_PATH.to_owned());
    let key = members::read_key(std::path::Path::new(&key_path))?;
    let cluster = get("--cluster")?;
    match args.first().map(String::as_str) {
        Some("fetch") => {
            let addr: std::net::SocketAddr = get("--leader")?.parse()?;
            let id = get("--id")?;
            let http = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(20)).build();
            let view = match opts.get("--view") {
                Some(v) => {
                    cgcloud_core::members::View::parse(v).ok_or_else(|| format!("--view {v}: not all or leader"))?
                }
                None => cgcloud_core::members::View::All,
            };
            let bytes = members::fetch(&http, addr, &id, false, view)?;
            let now = members::unix_now();
            let list = cgcloud_core::members::MemberList::verify(
                &bytes,
                &key,
                &cluster,
                now.saturating_sub(members::MAX_AGE_SECS),
                now,
            )?;
            let listed = list.members.iter().any(|m| m.id == id);
            Ok(format!(
                "{} member(s), {} bytes, {id} {}",
                list.members.len(),
                bytes.len(),
                if listed { "listed" } else { "not listed" }
            ))
        }
        Some("serve") => {
            let config = opts.get("--config").cloned().unwrap_or_else(|| "/etc/cgcloud/agent.json".to_owned());
            let text = std::fs::read_to_string(&config).map_err(|e| format!("cannot read {config}: {e}"))?;
            let mut cfg: daemon::Config = serde_json::from_str(&text).map_err(|e| format!("{config}: {e}"))?;
            cfg.instance_id.get_or_insert_with(|| "i-00000000".to_owned());
            let (aws, namespace) = daemon::Agent::new(cfg)?.into_parts();
            let listener = std::net::TcpListener::bind(get("--listen")?)?;
            let publisher = std::sync::Arc::new(members::Publisher::new(aws, &namespace, &cluster, key));
            println!("listening on {}", listener.local_addr()?);
            members::serve(listener, publisher);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => Err(USAGE.into()),
    }
}

/// `storage`: what the `cgcloud-storage` unit runs at every boot.
/// `scale VERB [HOSTLIST] [--socket PATH]`: one request to the leader's agent.
fn scale_cmd(args: &[String]) -> Result<String, CliError> {
    let mut words: Vec<&str> = Vec::new();
    let mut socket = scale::socket::SOCKET.to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => socket = it.next().ok_or("--socket needs a path")?.clone(),
            w => words.push(w),
        }
    }
    let (verb, nodes) = match words.as_slice() {
        [v] => (*v, ""),
        [v, n] => (*v, *n),
        _ => return Err(USAGE.into()),
    };
    let verb = scale::socket::Verb::parse(verb).ok_or(USAGE)?;
    Ok(scale::socket::ask(std::path::Path::new(&socket), verb, nodes)?)
}

fn storage_cmd() -> Result<Option<String>, CliError> {
    volume::mount_persistent_at_boot()?;
    let mp = storage::prepare()?;
    let plan = std::path::Path::new("/var/lib/cgcloud/plan.json");
    apply::restore_boot_directories(plan, std::path::Path::new("/var/lib/cgcloud/facts.json"))?;
    Ok(mp)
}

/// `volume --id VOLUME --name NAME`: what the workstation runs on a standalone box once it has
/// attached the box's persistent volume.
fn volume_cmd(args: &[String]) -> Result<String, CliError> {
    let (mut id, mut name) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--id" => id = Some(value()?),
            "--name" => name = Some(value()?),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}").into()),
        }
    }
    let (Some(id), Some(name)) = (id, name) else {
        return Err(format!("--id and --name are required\n{USAGE}").into());
    };
    let dev = volume::find_device(&id, std::time::Duration::from_secs(120))
        .ok_or_else(|| format!("volume {id} is attached, but no block device for it appeared within 2 minutes"))?;
    let was_mounted = sys::is_mounted(volume::MOUNT_POINT);
    let formatted = volume::format_and_mount(&dev, &name)?;
    if was_mounted {
        return Ok(format!("already mounted at {}", volume::MOUNT_POINT));
    }
    // Services that need the volume (ordered after cgcloud-storage) may have given up on it at
    // boot; bringing the system to its target again starts them now.
    if std::path::Path::new("/run/systemd/system").exists() {
        if let Err(e) = sys::run("systemctl", &["start", "--no-block", "default.target"]) {
            // The volume is mounted, which is what was asked; a reboot starts those services too.
            log::log("warning", format!("cannot start the services waiting for the volume: {e}"));
        }
    }
    Ok(format!("{} and mounted at {}", if formatted { "formatted" } else { "found" }, volume::MOUNT_POINT))
}

fn apply_cmd(args: &[String]) -> Result<ExitCode, CliError> {
    let mut plan = None;
    let mut facts = None;
    let mut log = PathBuf::from("/var/log/cgcloud/apply.log");
    let mut upgrade = false;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--plan" => plan = Some(PathBuf::from(value()?)),
            "--facts" => facts = Some(PathBuf::from(value()?)),
            "--log" => log = PathBuf::from(value()?),
            "--upgrade" => upgrade = true,
            "--json" => json = true,
            other => return Err(format!("unknown argument '{other}'\n{USAGE}").into()),
        }
    }
    let plan_path = plan.ok_or_else(|| format!("--plan is required\n{USAGE}"))?;
    let text = std::fs::read_to_string(&plan_path).map_err(|e| format!("cannot read {}: {e}", plan_path.display()))?;
    let plan: cgcloud_core::plan::Plan =
        serde_json::from_str(&text).map_err(|e| format!("{} is not a plan: {e}", plan_path.display()))?;
    let facts = match facts {
        Some(p) => facts::Facts::load(&p)?,
        None => facts::Facts::default(),
    };
    let ok = apply::Runner::new(facts, log, json).run(&plan, upgrade);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
