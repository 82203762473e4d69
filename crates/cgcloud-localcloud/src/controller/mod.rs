//! The controller: watches moto and makes its EC2 state real. Each tick it reads the local
//! VPC's instances and this account's images, turns new images into read-only disk layers
//! (before any launch from them is realized), and boots, powers off or destroys hosts to match
//! each instance's state. It also forwards moto's port from the bridge (so hosts reach the
//! API) and keeps the DNS names of running hosts. Restarting it re-adopts running hosts.
//!
//! It ticks often only while something moves: for a few seconds after the proxy saw a request
//! that changes instances, images or volumes, and while an instance, image or host is between
//! states. Otherwise it reconciles once every [`RECONCILE`], so that an idle local cloud costs
//! (nearly) nothing: the machine's cores are shared with every host it boots.

use crate::host::{Host, InstanceSpec};
use crate::images::BaseImage;
use crate::proxy::{Event, PowerEvent};
use crate::{net, sys, Error, LocalCloud, FAILURE_TAG};
use cgcloud_aws::Cloud;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod layers;
mod volumes;

use volumes::Attachment;

const TICK: Duration = Duration::from_millis(250);
/// How long after a changing request the controller keeps ticking (moto carries the request
/// out after the proxy has told the controller about it).
const ACTIVE_AFTER_CHANGE: Duration = Duration::from_secs(5);
/// How often an idle controller looks anyway (a host that died on its own, a request that
/// reached moto some other way).
const RECONCILE: Duration = Duration::from_secs(30);

/// An instance of the local VPC as EC2 (moto) describes it.
type Observed = cgcloud_aws::ec2::InstanceInfo;

struct Controller {
    lc: LocalCloud,
    cloud: Cloud,
    vpc_id: String,
    base: BTreeMap<String, BaseImage>,
    busy: Arc<Mutex<HashSet<String>>>,
    failed: HashSet<String>,
    /// Instances whose first boot found them unrunnable (id, reason), for the next tick to
    /// refuse.
    unrunnable: Arc<Mutex<Vec<(String, String)>>>,
    /// Power changes seen by the proxy, per instance, not yet carried out.
    queued: BTreeMap<String, std::collections::VecDeque<PowerEvent>>,
    /// Volumes made visible in hosts: volume → where.
    attached: BTreeMap<String, Attachment>,
    /// Attachments refused for their device name (volume, device): reported once, not on
    /// every pass.
    refused: HashSet<(String, String)>,
    /// Hosts whose /dev did not answer (nspawn PIDs): not tried again, so that a guest cannot
    /// tie up the controller's threads one attempt at a time.
    stuck: HashSet<u32>,
    dns: String,
    dnsmasq_pid: Option<u32>,
    /// What IMDS and the proxy's guest door know of the instances.
    imds: crate::imds::Shared,
    /// Spot interruptions to carry out: instance → (when, action).
    interrupts: BTreeMap<String, (std::time::SystemTime, String)>,
    /// The security groups' rules in force (`iptables-restore` input).
    groups_applied: String,
}

/// A line of the controller's log (its stderr, `logs/controller.log`).
pub(crate) fn log(msg: impl AsRef<str>) {
    eprintln!(
        "{} {}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        msg.as_ref()
    );
}

/// Runs the controller until SIGTERM.
pub async fn run(dir: PathBuf) -> Result<(), Error> {
    let lc = LocalCloud::new(dir);
    let state = lc.state().ok_or(Error::NotUp)?;
    let cloud = lc.cloud(state.moto_port).await?;
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let imds = crate::imds::Shared::default();
    if let Ok(mut r) = imds.lock() {
        r.credentials = crate::imds::load(&lc.run_dir());
    }
    let policies = crate::iam::Policies::default();
    // The workstation's door (loopback) passes everything; the guests' (the bridge) only
    // the AWS API, request by request, signed with credentials IMDS issued.
    for (addr, side) in [("127.0.0.1", crate::proxy::Side::Workstation), (net::GATEWAY, crate::proxy::Side::Guests)] {
        let listener = tokio::net::TcpListener::bind((addr, state.port))
            .await
            .map_err(|e| Error::Controller(format!("cannot listen on {addr}:{}: {e}", state.port)))?;
        // Faults are injected on the guests' side only: the controller's own client (and the
        // workstation's) must see moto as it is.
        let upstream_port = match side {
            crate::proxy::Side::Guests => state.guest_upstream_port(),
            crate::proxy::Side::Workstation => state.moto_port,
        };
        let door = crate::proxy::Door {
            side,
            upstream_port,
            events: tx.clone(),
            dir: lc.dir.clone(),
            imds: imds.clone(),
            cloud: cloud.clone(),
            policies: policies.clone(),
        };
        tokio::spawn(crate::proxy::serve(listener, door));
    }
    let imds_port = state.imds_port();
    let listener = tokio::net::TcpListener::bind((net::GATEWAY, imds_port))
        .await
        .map_err(|e| Error::Controller(format!("cannot listen on {}:{imds_port} (IMDS): {e}", net::GATEWAY)))?;
    tokio::spawn(crate::imds::serve(listener, imds.clone(), cloud.clone(), lc.run_dir()));
    let mut c = Controller {
        base: state.images.iter().map(|i| (i.ami_id.clone(), i.clone())).collect(),
        vpc_id: state.vpc_id.clone().ok_or(Error::NotUp)?,
        lc,
        cloud,
        busy: Arc::new(Mutex::new(HashSet::new())),
        failed: HashSet::new(),
        unrunnable: Arc::new(Mutex::new(Vec::new())),
        queued: BTreeMap::new(),
        attached: BTreeMap::new(),
        refused: HashSet::new(),
        stuck: HashSet::new(),
        dns: String::new(),
        dnsmasq_pid: state.dnsmasq_pid,
        imds,
        interrupts: BTreeMap::new(),
        groups_applied: String::new(),
    };
    log(format!("controller up, watching VPC {}", c.vpc_id));
    if let Some(p) = state.api_upstream_port {
        log(format!("the guests' door sends their requests to 127.0.0.1:{p}, not moto (CGCLOUD_LOCAL_API_UPSTREAM)"));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Controller(format!("cannot handle SIGTERM: {e}")))?;
    let mut changed_at = std::time::Instant::now();
    loop {
        while let Ok(ev) = events.try_recv() {
            c.take(ev, &mut changed_at);
        }
        let moving = match c.tick().await {
            Ok(moving) => moving,
            Err(e) => {
                log(format!("tick failed: {e}"));
                true
            }
        };
        let mut wait = if moving || changed_at.elapsed() < ACTIVE_AFTER_CHANGE { TICK } else { RECONCILE };
        // Wake for the next spot interruption that falls due.
        if let Some(next) = c.interrupts.values().map(|(at, _)| *at).min() {
            wait = wait.min(next.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Some(ev) = events.recv() => c.take(ev, &mut changed_at),
            _ = term.recv() => {
                log("controller stopping; hosts keep running");
                return Ok(());
            }
        }
    }
}

/// Power changes remembered per instance while its host is busy.
const MAX_QUEUED: usize = 16;

impl Controller {
    /// Takes an event of the proxy: power changes are queued; every event restarts the window
    /// of frequent ticks.
    fn take(&mut self, ev: Event, changed_at: &mut std::time::Instant) {
        *changed_at = std::time::Instant::now();
        match ev {
            Event::Power(p) => self.enqueue(p),
            Event::Interrupt(i) => {
                log(format!(
                    "{}: spot interruption notice: {} at {}",
                    i.instance_id,
                    i.action,
                    humantime::format_rfc3339_seconds(i.at)
                ));
                self.interrupts.insert(i.instance_id, (i.at, i.action));
            }
            Event::Changed => {}
        }
    }

    /// Carries out the spot interruptions that fell due, as EC2 does when the notice runs out.
    async fn interrupt_due(&mut self) {
        let now = std::time::SystemTime::now();
        let due: Vec<(String, String)> = self
            .interrupts
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, (_, a))| (id.clone(), a.clone()))
            .collect();
        for (id, action) in due {
            self.interrupts.remove(&id);
            let done = self.cloud.interrupt(&id, action == "stop").await;
            match done {
                Ok(()) => log(format!("{id}: spot interruption: {action}")),
                Err(e) => log(format!("{id}: spot interruption: cannot {action}: {e}")),
            }
        }
    }

    fn enqueue(&mut self, ev: PowerEvent) {
        let id = match &ev {
            PowerEvent::Stop(id) | PowerEvent::Start(id) | PowerEvent::Reboot(id) => id.clone(),
        };
        // Anyone who reaches the API can send these: keep only instance ids, and a bounded
        // queue per instance, so that crafted requests cannot grow the controller's memory.
        let looks_like_id = id
            .strip_prefix("i-")
            .is_some_and(|h| !h.is_empty() && h.len() <= 17 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !looks_like_id {
            return;
        }
        let q = self.queued.entry(id).or_default();
        if q.len() < MAX_QUEUED {
            q.push_back(ev);
        }
    }

    /// Carries out the next queued power change of an idle, existing host. Returns false if
    /// there was none.
    fn run_queued(&mut self, inst: &Observed) -> bool {
        let Some(ev) = self.queued.get_mut(&inst.id).and_then(|q| q.pop_front()) else { return false };
        let host = Host { dir: self.dir(), id: &inst.id };
        if !host.exists() {
            return false;
        }
        match ev {
            PowerEvent::Stop(_) => self.spawn(inst.id.clone(), |dir, id| async move {
                Host { dir: &dir, id: &id }.shutdown().await;
                crate::volumes::drop_instance_store(&dir, &id).await;
                log(format!("{id}: powered off"));
            }),
            PowerEvent::Start(_) => {
                if host.pid().is_none() {
                    self.spawn_boot(inst.clone(), None);
                }
            }
            PowerEvent::Reboot(_) => {
                let cloud = self.cloud.clone();
                let inst = inst.clone();
                self.spawn(inst.id.clone(), |dir, id| async move {
                    Host { dir: &dir, id: &id }.shutdown().await;
                    match boot(&cloud, &dir, &id, &inst, None).await {
                        Ok(pid) => log(format!("{id}: rebooted (nspawn pid {pid})")),
                        Err(e) => log(format!("{id}: reboot failed: {e}")),
                    }
                });
            }
        }
        true
    }

    fn dir(&self) -> &Path {
        &self.lc.dir
    }

    fn is_busy(&self, id: &str) -> bool {
        self.busy.lock().map(|b| b.contains(id)).unwrap_or(true)
    }

    async fn observe(&self) -> Result<Vec<Observed>, Error> {
        Ok(self.cloud.all_instances(Some(&self.vpc_id)).await?)
    }

    /// The ingress permissions of the VPC's security groups, by group id.
    async fn security_groups(&self) -> Result<BTreeMap<String, Vec<crate::secgroups::Permission>>, Error> {
        Ok(self.cloud.ingress_by_group(&self.vpc_id).await?)
    }

    /// Makes the rules in force those of the groups and their members now.
    async fn enforce_groups(&mut self, instances: &[Observed]) {
        // A host that is still shutting down keeps its groups (on EC2 its network interface
        // lives until it is off): its last words, e.g. a Slurm node leaving its cluster, must
        // reach its peers.
        let members: Vec<crate::secgroups::Member> = instances
            .iter()
            .filter(|i| {
                matches!(i.state.as_str(), "pending" | "running" | "stopping" | "shutting-down")
                    || (Host { dir: self.dir(), id: &i.id }).pid().is_some()
            })
            .filter_map(|i| {
                Some(crate::secgroups::Member { ip: i.private_ip.clone()?, groups: i.security_groups.clone() })
            })
            .collect();
        let groups = match self.security_groups().await {
            Ok(g) => g,
            Err(e) => {
                log(format!("security groups not read: {e}"));
                return;
            }
        };
        let (text, chains, warnings) = crate::secgroups::ruleset(&groups, &members);
        if text == self.groups_applied {
            return;
        }
        for w in warnings {
            log(format!("security group {w}"));
        }
        match crate::secgroups::apply(&text, &chains).await {
            Ok(()) => self.groups_applied = text,
            Err(e) => log(format!("security groups not applied: {e}")),
        }
    }

    /// One look at moto and the hosts, doing what is due. Returns whether anything is still in
    /// motion (an instance or image between states, a host being booted or torn down, a power
    /// change queued): then the next tick comes soon.
    async fn tick(&mut self) -> Result<bool, Error> {
        self.interrupt_due().await;
        let instances = self.observe().await?;
        self.enforce_groups(&instances).await;
        let local: HashSet<String> = instances.iter().map(|i| i.id.clone()).collect();
        let pending_images = self.process_images(&local, &instances).await?;
        let unrunnable = self.unrunnable.lock().map(|mut u| std::mem::take(&mut *u)).unwrap_or_default();
        for (id, reason) in unrunnable {
            if let Some(inst) = instances.iter().find(|i| i.id == id) {
                self.refuse(inst, &reason).await;
            }
        }
        for inst in &instances {
            if self.is_busy(&inst.id) || self.failed.contains(&inst.id) {
                continue;
            }
            if self.run_queued(inst) {
                continue;
            }
            let host = Host { dir: self.dir(), id: &inst.id };
            match inst.state.as_str() {
                "pending" | "running" => {
                    if host.pid().is_some() {
                        continue;
                    }
                    if let Err(reason) = address_ok(inst, &instances) {
                        self.refuse(inst, &reason).await;
                        continue;
                    }
                    if host.exists() {
                        if let Some(pid) = host.adopt() {
                            log(format!("{}: running as pid {pid}, which its PID file did not name; adopted", inst.id));
                        } else {
                            self.spawn_boot(inst.clone(), None);
                        }
                        continue;
                    }
                    match self.lowers_for(&inst.image_id, &pending_images) {
                        Ok(Some(lowers)) => self.spawn_boot(inst.clone(), Some(lowers)),
                        Ok(None) => {}
                        Err(reason) => self.refuse(inst, &reason).await,
                    }
                }
                "stopping" | "stopped" => {
                    // A host that runs has its disk mounted: only then is /proc searched.
                    if host.pid().is_some() || (host.is_mounted() && host.adopt().is_some()) {
                        self.spawn(inst.id.clone(), |dir, id| async move {
                            Host { dir: &dir, id: &id }.shutdown().await;
                            crate::volumes::drop_instance_store(&dir, &id).await;
                            log(format!("{id}: powered off"));
                        });
                    }
                }
                _ => {
                    let exists = host.exists();
                    self.queued.remove(&inst.id);
                    // Not while an image of it waits for its layer: the next tick makes it.
                    if exists && !pending_images.values().any(|src| *src == inst.id) {
                        self.spawn(inst.id.clone(), |dir, id| async move {
                            match (Host { dir: &dir, id: &id }).destroy().await {
                                Ok(()) => log(format!("{id}: destroyed")),
                                Err(e) => log(format!("{id}: destroy failed: {e}")),
                            }
                        });
                    }
                }
            }
        }
        // Disks of instances moto no longer knows (e.g. after a moto restart).
        for entry in std::fs::read_dir(self.dir().join("instances")).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !local.contains(&id) && !self.is_busy(&id) {
                self.spawn(id, |dir, id| async move {
                    if let Err(e) = (Host { dir: &dir, id: &id }).destroy().await {
                        log(format!("{id}: cannot remove the host of a terminated instance: {e}"));
                    }
                    log(format!("{id}: destroyed (unknown to moto)"));
                });
            }
        }
        self.update_dns(&instances).await;
        self.update_imds(&instances);
        let volumes_waiting = self.realize_volumes(&local).await;
        let between = instances.iter().any(|i| matches!(i.state.as_str(), "pending" | "stopping" | "shutting-down"));
        let busy = self.busy.lock().map(|b| !b.is_empty()).unwrap_or(true);
        let queued = self.queued.values().any(|q| !q.is_empty());
        Ok(between || busy || queued || volumes_waiting || !pending_images.is_empty())
    }

    /// Marks an instance the local cloud cannot run and terminates it, with the reason in a tag.
    async fn refuse(&mut self, inst: &Observed, reason: &str) {
        log(format!("{}: {reason}", inst.id));
        self.failed.insert(inst.id.clone());
        let mut t = cgcloud_core::tags::Tags::new();
        t.insert(FAILURE_TAG.into(), reason.chars().take(255).collect());
        let ids = [inst.id.clone()];
        if let Err(e) = self.cloud.create_tags(&ids, &t).await {
            log(format!("{}: cannot tag: {e}", inst.id));
        }
        if let Err(e) = self.cloud.terminate(&ids).await {
            log(format!("{}: cannot terminate: {e}", inst.id));
        }
    }

    fn spawn<F, Fut>(&self, id: String, f: F)
    where
        F: FnOnce(PathBuf, String) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Ok(mut b) = self.busy.lock() {
            b.insert(id.clone());
        }
        let busy = self.busy.clone();
        let fut = f(self.dir().to_path_buf(), id.clone());
        tokio::spawn(async move {
            fut.await;
            if let Ok(mut b) = busy.lock() {
                b.remove(&id);
            }
        });
    }

    /// Boots an instance; with `lowers`, it is a first boot: create the disk and seed it.
    fn spawn_boot(&self, inst: Observed, lowers: Option<Vec<PathBuf>>) {
        let cloud = self.cloud.clone();
        let unrunnable = self.unrunnable.clone();
        self.spawn(inst.id.clone(), |dir, id| async move {
            let started = std::time::Instant::now();
            let res = boot(&cloud, &dir, &id, &inst, lowers).await;
            match res {
                Ok(pid) => {
                    log(format!("{id}: booting (nspawn pid {pid}, {:.0} ms)", started.elapsed().as_secs_f64() * 1000.0))
                }
                Err(Error::Unrunnable(reason)) => {
                    if let Ok(mut u) = unrunnable.lock() {
                        u.push((id, reason));
                    }
                }
                Err(e) => log(format!("{id}: boot failed: {e}")),
            }
        });
    }

    /// Tells IMDS which instance each private IP is.
    fn update_imds(&self, instances: &[Observed]) {
        let known: std::collections::HashMap<String, crate::imds::InstanceMeta> = instances
            .iter()
            .filter(|i| matches!(i.state.as_str(), "pending" | "running" | "stopping"))
            .filter_map(|i| {
                let ip = i.private_ip.clone()?;
                let fqdn = i
                    .private_dns
                    .clone()
                    .unwrap_or_else(|| format!("ip-{}.{}.compute.internal", ip.replace('.', "-"), crate::REGION));
                Some((
                    ip.clone(),
                    crate::imds::InstanceMeta {
                        id: i.id.clone(),
                        ip,
                        fqdn,
                        image_id: i.image_id.clone(),
                        instance_type: i.instance_type.clone(),
                        zone: i.zone.clone(),
                        key_name: i.key_name.clone(),
                        profile: i.instance_profile.clone(),
                        tokens_required: i.tokens_required,
                        spot: i.spot,
                    },
                ))
            })
            .collect();
        if let Ok(mut r) = self.imds.lock() {
            r.forget_gone(instances.iter().map(|i| (i.id.as_str(), i.state.as_str())));
            r.instances = known;
        }
    }

    async fn update_dns(&mut self, instances: &[Observed]) {
        let mut lines: Vec<String> = instances
            .iter()
            .filter(|i| matches!(i.state.as_str(), "pending" | "running"))
            .filter_map(|i| {
                let ip = i.private_ip.as_ref()?;
                let fqdn = i.private_dns.as_ref()?;
                let short = fqdn.split('.').next().unwrap_or(fqdn);
                Some(format!("{ip} {fqdn} {short}"))
            })
            .collect();
        lines.sort();
        let text = lines.join("\n") + "\n";
        if text == self.dns {
            return;
        }
        if cgcloud_core::fsutil::write_atomic(&self.lc.hosts_file(), text.as_bytes(), 0o644).is_ok() {
            self.dns = text;
            if let Some(pid) = self.dnsmasq_pid {
                sys::kill(pid, "HUP").await;
            }
        }
    }
}

/// Whether `inst` may be booted at its address: one of the zone subnets' (see
/// [`net::host_address_ok`]), and no other live instance's.
fn address_ok(inst: &Observed, all: &[Observed]) -> Result<(), String> {
    let ip = inst.private_ip.as_deref().ok_or_else(|| format!("{} has no private IP", inst.id))?;
    net::host_address_ok(ip)?;
    let live = |s: &str| matches!(s, "pending" | "running" | "stopping");
    match all.iter().find(|o| o.id != inst.id && live(&o.state) && o.private_ip.as_deref() == Some(ip)) {
        Some(other) => Err(format!("{ip} is the address of {} too", other.id)),
        None => Ok(()),
    }
}

async fn boot(
    cloud: &Cloud,
    dir: &Path,
    id: &str,
    inst: &Observed,
    lowers: Option<Vec<PathBuf>>,
) -> Result<u32, Error> {
    let host = Host { dir, id };
    // An unknown type has no instance store; moto would have refused to launch it anyway.
    let store = cloud.instance_type_info(&inst.instance_type).await.map(|t| t.instance_store_gb).unwrap_or_default();
    let devices = crate::volumes::instance_store(dir, id, &store).await?;
    let Some(lowers) = lowers else {
        return host.boot(&devices, |_| Ok(())).await;
    };
    let ip = inst.private_ip.clone().ok_or_else(|| Error::Controller(format!("{id} has no private IP")))?;
    let fqdn = inst
        .private_dns
        .clone()
        .unwrap_or_else(|| format!("ip-{}.{}.compute.internal", ip.replace('.', "-"), crate::REGION));
    let hostname = fqdn.split('.').next().unwrap_or(&fqdn).to_owned();
    let spec = InstanceSpec { id: id.to_owned(), ip, hostname, fqdn, image_id: inst.image_id.clone() };
    let user_data = cloud.user_data(id).await?;
    let public_keys = match &inst.key_name {
        Some(k) => cloud.key_pair(k).await?.and_then(|k| k.public_key).into_iter().collect(),
        None => Vec::new(),
    };
    host.create_disk(&spec, lowers)?;
    match host.boot(&devices, |h| h.seed(&spec, &public_keys, &user_data)).await {
        Err(Error::Unrunnable(reason)) => {
            // Booting it again without its seed would run it as some other instance.
            if let Err(e) = host.destroy().await {
                log(format!("{id}: cannot remove its host: {e}"));
            }
            Err(Error::Unrunnable(format!("image {}: {reason}", inst.image_id)))
        }
        other => other,
    }
}
