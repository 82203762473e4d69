//! Watching a launch's nodes come up: running, SSH-ready (their published host key verified),
//! configured (their own first boot), with one DescribeInstances per poll.

use super::*;

/// How many nodes of a launch the workstation logs in to before it calls them up: the leader
/// and the first workers. Every node has checked itself before it reports itself configured;
/// what the workstation's login adds is that it can reach them (security group, routing), the
/// same for every node of a launch. Logging in to 1000 nodes would cost the workstation 1000
/// handshakes and leave 1000 master connections behind. It also bounds the probes under way.
pub(super) const SSH_SAMPLE: usize = 16;

/// The phases a cluster's nodes go through, as the progress bars show them.
pub(super) const PHASES: &[&str] = &["launched", "running", "SSH-ready", "configured"];

/// How long each phase took until every node had passed it.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Phases {
    pub launched_s: f64,
    pub running_s: f64,
    pub ssh_ready_s: f64,
    pub configured_s: f64,
    /// Status polls (one DescribeInstances each, plus its pages).
    pub polls: u64,
}

/// What a launch waits for.
pub(super) struct WaitFor<'a> {
    /// Nodes that must configure themselves; the others may fail (`--min-workers`).
    pub must: &'a BTreeSet<String>,
    pub timeout: Duration,
    /// Log in to (a sample of) the nodes from here, at this address.
    pub ssh_check: bool,
    pub ssh_address: Option<crate::cli::SshAddress>,
    /// `-Q`: return once `must` is configured, not waiting for the others at all.
    pub quick: bool,
}

impl<'a> WaitFor<'a> {
    /// What a launch with these options waits for.
    pub fn launch(nodes: &NodeLaunchArgs, must: &'a BTreeSet<String>) -> WaitFor<'a> {
        WaitFor {
            must,
            timeout: Duration::from_secs(nodes.timeout),
            ssh_check: !nodes.skip_ssh_check,
            ssh_address: nodes.ssh_address,
            quick: nodes.quick,
        }
    }
}

/// Watches the nodes through running → SSH-ready → configured, with counts per phase. Nodes
/// whose first-boot configuration failed are returned separately. One DescribeInstances per
/// poll, whatever the number of nodes.
pub(super) async fn await_nodes(
    ctx: &Ctx,
    cloud: &Cloud,
    ids: &[String],
    w: &WaitFor<'_>,
    phases: &mut Phases,
    t0: Instant,
    bars: &mut crate::output::PhaseProgress,
) -> Result<Vec<(String, String)>> {
    let (must, timeout, ssh_check) = (w.must, w.timeout, w.ssh_check);
    let n = ids.len();
    bars.set(0, n as u64);
    // `ids` lists the leader first, then the workers in launch order.
    let sampled: BTreeSet<&String> = ids.iter().take(SSH_SAMPLE).collect();
    if ssh_check {
        bars.set_total(2, sampled.len() as u64);
        if sampled.len() < n {
            ctx.out.note(format!(
                "checking SSH from here on {} of {n} nodes (every node checks itself before it reports configured)",
                sampled.len()
            ));
        }
    }
    let started = Instant::now();
    let ssh_ready: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>> = Default::default();
    let mut probing: BTreeSet<String> = BTreeSet::new();
    let mut probes = tokio::task::JoinSet::new();
    loop {
        phases.polls += 1;
        let boxes: Vec<BoxInfo> = cloud.boxes_by_id(ids).await?;
        for b in boxes.iter().filter(|b| b.state == "running") {
            // A node publishes its host key when it has configured itself.
            let sample = sampled.contains(&b.instance_id);
            if ssh_check && sample && b.host_key.is_some() && !probing.contains(&b.instance_id) {
                probing.insert(b.instance_id.clone());
                let target = ctx.ssh_target(b, None, w.ssh_address).await?;
                let (ready, id) = (ssh_ready.clone(), b.instance_id.clone());
                // The master connection a probe leaves (ControlPersist) is what the next
                // command (`ssh-cluster`, `--share`) reuses; closing it here raced with them.
                probes.spawn(async move {
                    if target.wait_ready(timeout).await.is_ok() {
                        if let Ok(mut r) = ready.lock() {
                            r.insert(id);
                        }
                    }
                });
            }
        }
        let Poll { running, configured, failed, done } = Poll::of(&boxes);
        let ssh = if ssh_check { ssh_ready.lock().map(|r| r.len()).unwrap_or(0) } else { running };
        let elapsed = t0.elapsed().as_secs_f64();
        if running == n && phases.running_s == 0.0 {
            phases.running_s = elapsed;
        }
        let ssh_total = if ssh_check { sampled.len() } else { n };
        if ssh == ssh_total && phases.ssh_ready_s == 0.0 {
            phases.ssh_ready_s = elapsed;
        }
        bars.set(1, running as u64);
        bars.set(2, ssh as u64);
        bars.set(3, configured as u64);
        let ready_now = ssh_ready.lock().map(|r| r.clone()).unwrap_or_default();
        let sampled_not_ready =
            |b: &BoxInfo| ssh_check && sampled.contains(&b.instance_id) && !ready_now.contains(&b.instance_id);
        if let Some(laggard) = laggard(&boxes, sampled_not_ready) {
            bars.laggard(laggard);
        }
        if failed.iter().any(|(id, _)| must.contains(id)) {
            let (id, why) = failed.iter().find(|(id, _)| must.contains(id)).cloned().unwrap_or_default();
            bail!("node {id} failed: {why}");
        }
        // With -Q only `must` counts: the others are left to configure themselves.
        let settled = w.quick || (boxes.len() == n && done.len() + failed.len() >= n);
        // Nodes publish their host keys when configured, so their SSH probes start late: wait
        // for them rather than abort them half-way (an aborted probe can leave a half-made
        // master connection that the next ssh trips over).
        let reachable = !ssh_check
            || ssh_ready.lock().is_ok_and(|r| {
                done.iter().filter(|d| sampled.contains(d) && (!w.quick || must.contains(*d))).all(|d| r.contains(d))
            });
        if must.iter().all(|m| done.contains(m)) && settled && reachable {
            phases.configured_s = t0.elapsed().as_secs_f64();
            if phases.ssh_ready_s == 0.0 {
                phases.ssh_ready_s = phases.configured_s;
            }
            probes.abort_all();
            return Ok(failed);
        }
        if started.elapsed() > timeout {
            if must.iter().all(|m| done.contains(m)) {
                // Optional nodes that are still not configured count as failed.
                let late: Vec<(String, String)> = ids
                    .iter()
                    .filter(|i| !done.contains(*i))
                    .map(|i| (i.clone(), "not configured in time".into()))
                    .collect();
                probes.abort_all();
                return Ok(late);
            }
            probes.abort_all();
            let consoles = laggards_consoles(cloud, &boxes, &done).await;
            bail!(
                "timed out after {} s: {running} of {n} nodes running, {ssh} SSH-ready, {configured} configured{consoles}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(750)).await;
    }
}

/// How many nodes that never configured themselves a timed-out launch shows the console of,
/// and how much of each: enough to see where their boot stopped.
const CONSOLES_SHOWN: usize = 2;
const CONSOLE_LINES: usize = 25;

/// The end of the console of the first nodes that did not configure themselves, for the
/// error of a timed-out launch (the rollback that follows terminates them, and their
/// consoles with them). Empty where EC2 has none.
async fn laggards_consoles(cloud: &Cloud, boxes: &[BoxInfo], done: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for b in boxes.iter().filter(|b| !done.contains(&b.instance_id)).take(CONSOLES_SHOWN) {
        match cloud.console_tail(&b.instance_id, CONSOLE_LINES).await {
            Ok(tail) if !tail.trim().is_empty() => {
                out.push_str(&format!("\n\nthe end of {}'s console ({}):\n{tail}", b.instance_id, b.state));
            }
            Ok(_) => out.push_str(&format!("\n\n{} ({}) has no console output yet", b.instance_id, b.state)),
            Err(e) => out.push_str(&format!("\n\n{}'s console: {e}", b.instance_id)),
        }
    }
    out
}

/// What one poll saw of a launch's nodes.
struct Poll {
    running: usize,
    configured: usize,
    /// Nodes that stopped, terminated or reported a failed first boot, and why.
    failed: Vec<(String, String)>,
    /// Nodes that configured themselves.
    done: BTreeSet<String>,
}

impl Poll {
    fn of(boxes: &[BoxInfo]) -> Poll {
        let mut poll = Poll { running: 0, configured: 0, failed: Vec::new(), done: BTreeSet::new() };
        for b in boxes {
            if b.state == "running" {
                poll.running += 1;
            } else if matches!(b.state.as_str(), "terminated" | "shutting-down" | "stopped") {
                let why = b.tags.get(tags::FAILURE).map(|f| format!(": {}", tags::printable(f))).unwrap_or_default();
                poll.failed.push((b.instance_id.clone(), format!("{}{why}", b.state)));
            }
            match b.tags.get(tags::CONFIGURED).map(String::as_str) {
                Some("true") => {
                    poll.configured += 1;
                    poll.done.insert(b.instance_id.clone());
                }
                Some(_) => poll.failed.push((
                    b.instance_id.clone(),
                    b.tags
                        .get(tags::FAILURE)
                        .map(|f| tags::printable(f))
                        .unwrap_or_else(|| "first-boot configuration failed".into()),
                )),
                None => {}
            }
        }
        poll
    }
}

/// The node everyone waits for: the one furthest behind (booting, then SSH, then its own
/// configuration), the lowest ordinal first; `None` once every node is configured.
fn laggard(boxes: &[BoxInfo], waiting_for_ssh: impl Fn(&BoxInfo) -> bool) -> Option<String> {
    let (_, ordinal, id, what) = boxes
        .iter()
        .filter(|b| !b.tags.contains_key(tags::CONFIGURED))
        .map(|b| {
            let (rank, what) = if b.state != "running" {
                (0, b.state.clone())
            } else if waiting_for_ssh(b) && b.host_key.is_some() {
                (1, "waiting for SSH".to_owned())
            } else {
                (2, "configuring itself".to_owned())
            };
            (rank, b.ordinal.unwrap_or(u32::MAX), b.instance_id.clone(), what)
        })
        .min()?;
    Some(format!("node {ordinal} ({id}): {what}"))
}
