//! `bench elastic [JOBS]`: elastic Slurm clusters on the local cloud (`create-cluster slurm
//! --max-workers M --idle-time D`): submit → start on a freshly launched worker (JOBS at once,
//! then 3 one at a time), scale-up
//! 0 → N, scale-down to no worker, and what the leader costs while idle; beside a bare boot of
//! one host.

use crate::boot::BareBoot;
use crate::clusters::NODE_CPU_PROBE;
use crate::*;
use anyhow::{bail, Context as _, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CLUSTER: &str = "elastic";
const MAX_WORKERS: usize = 16;
const IDLE_TIME: &str = "1m";
/// Slurm's own scheduling step in front of a powered-up node: the power-save interval (10 s by
/// default).
const SLURM_INTERVAL_S: f64 = 10.0;
/// AWS ParallelCluster's published median submit → start on a new node.
const PARALLELCLUSTER_S: f64 = 294.0;
const IDLE_WINDOW: Duration = Duration::from_secs(120);
/// Jobs submitted one after another, each on a worker of its own.
const ONE_AT_A_TIME: usize = 3;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(f64::NAN)
}

/// Runs `script` on the leader (as the bench's user); its stdout.
fn leader(h: &Path, script: &str) -> Result<String> {
    cgcloud(h, &["-q", "ssh", "slurm-leader", "-c", CLUSTER, "--", script])
}

/// The cluster's workers EC2 has in any state short of terminated.
fn live_workers(h: &Path) -> Result<usize> {
    let listed: serde_json::Value = serde_json::from_str(&cgcloud(h, &["-q", "--output", "json", "list-clusters"])?)?;
    let cluster = listed.as_array().into_iter().flatten().find(|c| c["name"] == CLUSTER);
    Ok(cluster.map_or(0, |c| {
        c["nodes"].as_array().into_iter().flatten().filter(|n| n["ordinal"] != 0 && n["state"] != "terminated").count()
    }))
}

/// Slurm's node states on the leader (`sinfo -N`): node → state.
fn slurm_states(h: &Path) -> BTreeMap<String, String> {
    leader(h, "sinfo -h -N -o '%N %T'")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(n, s)| (n.to_owned(), s.trim().to_owned())))
        .collect()
}

fn all_powered_down(s: &BTreeMap<String, String>) -> bool {
    s.len() == MAX_WORKERS && s.values().all(|v| v == "idle~")
}

/// Waits until EC2 has no live worker and Slurm has every node powered down (`idle~`, past
/// SuspendTimeout: ready to be powered up again); the epoch seconds each was first seen.
fn wait_scaled_down(h: &Path, timeout: Duration) -> Result<(f64, f64)> {
    let t0 = Instant::now();
    let (mut ec2, mut slurm) = (None, None);
    loop {
        if ec2.is_none() && live_workers(h)? == 0 {
            ec2 = Some(now());
        }
        if slurm.is_none() && all_powered_down(&slurm_states(h)) {
            slurm = Some(now());
        }
        if let (Some(e), Some(s)) = (ec2, slurm) {
            return Ok((e, s));
        }
        if t0.elapsed() > timeout {
            bail!(
                "not scaled down within {} s: {} live workers; sinfo {:?}",
                timeout.as_secs(),
                live_workers(h)?,
                slurm_states(h)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// CPU seconds on the leader: the whole box (its cgroup, [`NODE_CPU_PROBE`]'s `box`) and the
/// cgcloud-agent and slurmctld processes (/proc/PID/stat utime + stime), with their PIDs.
fn leader_cpu(h: &Path) -> Result<BTreeMap<String, (String, f64)>> {
    let script = format!(
        "{NODE_CPU_PROBE}; hz=$(getconf CLK_TCK); for p in cgcloud-agent slurmctld; do pid=$(pgrep -xo $p) && \
         echo \"proc-$p $pid $(awk -v hz=$hz '{{print ($14 + $15) / hz}}' /proc/$pid/stat)\"; done; true"
    );
    let mut cpu = BTreeMap::new();
    for line in leader(h, &script)?.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            ["box", usec] => {
                cpu.insert("box".to_owned(), (String::new(), usec.parse::<f64>().unwrap_or(f64::NAN) / 1e6));
            }
            [p, pid, secs] if p.starts_with("proc-") => {
                cpu.insert(p["proc-".len()..].to_owned(), (pid.to_owned(), secs.parse().unwrap_or(f64::NAN)));
            }
            _ => {}
        }
    }
    Ok(cpu)
}

/// The slurmctld log lines about power saving, node registration and job starts, to stderr:
/// where the time between a node's power-up and its job's start goes. Returns when each node
/// registered (`Node wN now responding`), in epoch seconds.
fn log_slurmctld(h: &Path, since: f64) -> BTreeMap<String, f64> {
    let script = format!(
        "sudo journalctl -u slurmctld -o short-unix --no-pager --since @{} | \
         grep -Ei 'power|resum|respond|regist|Allocate|start|config|w[0-9]+' | tail -150",
        since as u64
    );
    let mut registered = BTreeMap::new();
    match leader(h, &script) {
        Ok(log) => {
            eprintln!("--- slurmctld log since the submits ---\n{log}---");
            for line in log.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let [t, .., "Node", node, "now", "responding"] = f[..] {
                    if let Ok(t) = t.parse::<f64>() {
                        registered.entry(node.to_owned()).or_insert(t);
                    }
                }
            }
        }
        Err(e) => eprintln!("slurmctld log: {e}"),
    }
    registered
}

struct Job {
    id: String,
    submit: f64,
    node: String,
    start: f64,
    /// Slurm's StartTime (whole seconds), as `scontrol show job` has it once the job ended.
    slurm_start: f64,
    /// When its node registered with slurmctld (NaN if the log did not say).
    registered: f64,
}

/// Submits `jobs` exclusive one-task jobs at once on the leader, each writing its start time
/// on its worker, waits until none is left in the queue and reads the start times back from
/// the workers before they are powered down.
fn submit_to_start(h: &Path, jobs: usize, one_at_a_time: bool) -> Result<Vec<Job>> {
    let since = now() - 5.0;
    // At once: jobs that end at once. One at a time: each submitted once the one before runs
    // (and keeps running, so that the next needs a worker of its own), so that one worker
    // boots at a time, as one host does in the bare boot.
    let submit = if one_at_a_time {
        format!(
            "for i in $(seq {jobs}); do t=$(date +%s.%N); \
             id=$(sbatch --parsable -n1 --exclusive -o /dev/null --wrap 'date +%s.%N > /tmp/start-$SLURM_JOB_ID; exec sleep 3600') \
             || exit 1; id=${{id%%;*}}; echo \"SUB $t $id\"; end=$(($(date +%s) + 900)); \
             while [ -z \"$(squeue -h -t R -j $id)\" ] && [ $(date +%s) -lt $end ]; do sleep 0.25; done; done; sleep 1; "
        )
    } else {
        format!(
            "for i in $(seq {jobs}); do echo \"SUB $(date +%s.%N) $(sbatch --parsable -n1 --exclusive -o /tmp/job-%j.out \
             --wrap 'date +%s.%N > /tmp/start-$SLURM_JOB_ID')\"; done; \
             end=$(($(date +%s) + 900)); while [ -n \"$(squeue -h)\" ] && [ $(date +%s) -lt $end ]; do sleep 0.5; done; "
        )
    };
    let script = format!(
        "{submit}scontrol -o show job | while read -r l; do \
           id=$(echo \"$l\" | grep -o 'JobId=[0-9]*' | cut -d= -f2); \
           st=$(echo \"$l\" | grep -o 'StartTime=[^ ]*' | cut -d= -f2); \
           nl=$(echo \"$l\" | grep -o ' NodeList=[^ ]*' | cut -d= -f2); \
           js=$(echo \"$l\" | grep -o 'JobState=[^ ]*' | cut -d= -f2); \
           echo \"JOB $id $nl $(date -d \"$st\" +%s 2>/dev/null || echo nan) $js\"; done"
    );
    let out = leader(h, &script)?;
    let mut submits = BTreeMap::new();
    let mut slurm = BTreeMap::new();
    for line in out.lines() {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["SUB", t, id] => {
                submits.insert(id.split(';').next().unwrap_or(id).to_owned(), t.parse::<f64>()?);
            }
            ["JOB", id, node, st, state] => {
                slurm.insert(id.to_owned(), (node.to_owned(), st.parse::<f64>().unwrap_or(f64::NAN), state.to_owned()));
            }
            _ => {}
        }
    }
    if submits.len() != jobs {
        bail!("submitted {} of {jobs} jobs:\n{out}", submits.len());
    }
    let probe = cgcloud(
        h,
        &[
            "-q",
            "--output",
            "json",
            "ssh-cluster",
            "slurm",
            "-c",
            CLUSTER,
            "-P",
            "--",
            "grep -H . /tmp/start-* 2>/dev/null; true",
        ],
    )?;
    let mut starts = BTreeMap::new();
    for node in serde_json::from_str::<serde_json::Value>(&probe)?.as_array().into_iter().flatten() {
        for line in node["stdout"].as_str().unwrap_or_default().lines() {
            if let Some((file, t)) = line.split_once(':') {
                let id = file.trim_start_matches("/tmp/start-");
                starts.insert(id.to_owned(), t.trim().parse::<f64>().unwrap_or(f64::NAN));
            }
        }
    }
    let mut out_jobs = Vec::new();
    for (id, submit) in submits {
        let (node, slurm_start, state) = slurm.get(&id).cloned().unwrap_or_default();
        let Some(&start) = starts.get(&id) else {
            bail!("job {id} ({state} on {node}) left no start time on a worker:\n{out}");
        };
        out_jobs.push(Job { id, submit, node, start, slurm_start, registered: f64::NAN });
    }
    // When each job's node registered, as slurmctld logged it.
    let registered = log_slurmctld(h, since);
    for j in &mut out_jobs {
        j.registered = registered.get(&j.node).copied().unwrap_or(f64::NAN);
    }
    Ok(out_jobs)
}

/// Queues `n` exclusive jobs that run until cancelled; the time from the first submit until
/// all `n` run (and until the first one did), then cancels them all: the epoch of the cancel.
fn scale_up(h: &Path, n: usize) -> Result<(f64, f64, f64)> {
    let script = format!(
        "t0=$(date +%s.%N); for i in $(seq {n}); do sbatch --parsable -n1 --exclusive -o /dev/null --wrap 'sleep 3600' \
         >/dev/null || exit 1; done; first=; end=$(($(date +%s) + 900)); \
         while r=$(squeue -h -t R | wc -l); [ \"$r\" -lt {n} ] && [ $(date +%s) -lt $end ]; do \
           [ -z \"$first\" ] && [ \"$r\" -gt 0 ] && first=$(date +%s.%N); sleep 0.25; done; \
         t1=$(date +%s.%N); [ -n \"$first\" ] || first=$t1; echo \"UP $t0 $first $t1 $r\""
    );
    let out = leader(h, &script)?;
    let line = out.lines().find(|l| l.starts_with("UP ")).with_context(|| format!("scale-up said: {out}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let [_, t0, first, t1, running] = f[..] else { bail!("scale-up said: {out}") };
    let (t0, first, t1): (f64, f64, f64) = (t0.parse()?, first.parse()?, t1.parse()?);
    let running: usize = running.parse()?;
    if running < n {
        bail!("only {running} of {n} jobs ran within 900 s");
    }
    let cancel: f64 = leader(h, "t=$(date +%s.%N); scancel -u $(id -un); echo $t")?.trim().parse()?;
    Ok((t1 - t0, first - t0, cancel))
}

struct Measured {
    version: String,
    js: Vec<Job>,
    waits: Vec<f64>,
    seq: Vec<Job>,
    last_end: f64,
    ec2_a: f64,
    slurm_a: f64,
    up_s: f64,
    first_s: f64,
    cancel: f64,
    ec2_b: f64,
    slurm_b: f64,
    cpu0: BTreeMap<String, (String, f64)>,
    cpu1: BTreeMap<String, (String, f64)>,
    window: f64,
    still: usize,
}

/// Steps 2 to 5 on the running cluster.
fn measure(h: &Path, jobs: usize) -> Result<Measured> {
    wait_scaled_down(h, Duration::from_secs(180))?;
    let version = leader(h, "sinfo -V").unwrap_or_default().trim().to_owned();

    // 2. Submit → start, each job on a worker launched for it.
    eprintln!("{jobs} exclusive jobs at once ...");
    let mut js = submit_to_start(h, jobs, false)?;
    js.sort_by(|a, b| a.id.cmp(&b.id));
    let mut waits: Vec<f64> = js.iter().map(|j| j.start - j.submit).collect();
    waits.sort_by(f64::total_cmp);
    let last_end = js.iter().map(|j| j.start).fold(f64::NAN, f64::max);
    eprintln!("waiting for the workers to go ...");
    let (ec2_a, slurm_a) = wait_scaled_down(h, Duration::from_secs(600))?;

    // 2b. The same, one job at a time.
    eprintln!("{ONE_AT_A_TIME} exclusive jobs, one at a time ...");
    let seq = submit_to_start(h, ONE_AT_A_TIME, true)?;
    leader(h, "scancel -u $(id -un)")?;
    eprintln!("waiting for the workers to go ...");
    wait_scaled_down(h, Duration::from_secs(600))?;

    // 3 and 4. Scale-up 0 → N and back down.
    eprintln!("scale-up 0 -> {MAX_WORKERS} ...");
    let (up_s, first_s, cancel) = scale_up(h, MAX_WORKERS)?;
    eprintln!("waiting for the workers to go ...");
    let (ec2_b, slurm_b) = wait_scaled_down(h, Duration::from_secs(600))?;

    // 5. The idle leader.
    eprintln!("the idle leader, {} s ...", IDLE_WINDOW.as_secs());
    let cpu0 = leader_cpu(h)?;
    let t0 = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let cpu1 = leader_cpu(h)?;
    let window = t0.elapsed().as_secs_f64();
    let still = live_workers(h)?;
    Ok(Measured {
        version,
        js,
        waits,
        seq,
        last_end,
        ec2_a,
        slurm_a,
        up_s,
        first_s,
        cancel,
        ec2_b,
        slurm_b,
        cpu0,
        cpu1,
        window,
        still,
    })
}

pub(crate) async fn elastic(jobs: usize) -> Result<()> {
    if jobs == 0 || jobs > MAX_WORKERS {
        bail!("JOBS must be 1 to {MAX_WORKERS}");
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let user = BenchUser::new()?;
    let h = user.home();
    eprintln!("baking slurm-box ...");
    cgcloud(&h, &["-q", "create", "-I", "-T", "slurm-box"])?;
    let image = newest_image(&h, "slurm-box")?;
    wait_no_hosts(&h)?;

    // 1. The yardstick.
    eprintln!("bare boots ...");
    let bare = BareBoot::new().await?;
    let mut bares = Vec::new();
    for _ in 0..3 {
        bares.push(bare.boot(1).await?.1);
    }
    bare.finish().await?;
    bares.sort_by(f64::total_cmp);
    let bare_s = percentile(&bares, 0.5);

    eprintln!("create-cluster slurm --max-workers {MAX_WORKERS} --idle-time {IDLE_TIME} ...");
    let t0 = Instant::now();
    cgcloud(
        &h,
        &[
            "-q",
            "create-cluster",
            "slurm",
            "-c",
            CLUSTER,
            "--max-workers",
            &MAX_WORKERS.to_string(),
            "--idle-time",
            IDLE_TIME,
        ],
    )?;
    let create_s = t0.elapsed().as_secs_f64();
    let measured = measure(&h, jobs);
    // The cluster goes whatever happened.
    eprintln!("terminate-cluster ...");
    cgcloud(&h, &["-q", "terminate-cluster", "slurm", "-c", CLUSTER])?;
    wait_no_hosts(&h)?;
    cgcloud(&h, &["-q", "delete-image", "slurm-box", "-i", &image])?;
    let Measured {
        version,
        js,
        waits,
        seq,
        last_end,
        ec2_a,
        slurm_a,
        up_s,
        first_s,
        cancel,
        ec2_b,
        slurm_b,
        cpu0,
        cpu1,
        window,
        still,
    } = measured?;

    println!(
        "elastic: Slurm cluster --max-workers {MAX_WORKERS} --idle-time {IDLE_TIME}, 0 workers at rest (local cloud, {cores} cores; {version})"
    );
    println!("create-cluster (leader only): {create_s:.1} s");
    println!("bare boot of 1 host, p50 of 3: {bare_s:.2} s (runs: {bares:.2?})");
    println!("submit -> start, {jobs} exclusive jobs submitted at once, each on a worker launched for it:");
    println!("  seconds after its submit (taken on the leader) when:");
    println!("{:>6} {:>6} {:>16} {:>14} {:>16}", "job", "node", "node registered", "job started", "Slurm StartTime");
    for j in &js {
        println!(
            "{:>6} {:>6} {:>16.2} {:>14.2} {:>16.0}",
            j.id,
            j.node,
            j.registered - j.submit,
            j.start - j.submit,
            j.slurm_start - j.submit.floor()
        );
    }
    let mut gaps: Vec<f64> = js.iter().map(|j| j.start - j.registered).collect();
    gaps.sort_by(f64::total_cmp);
    println!(
        "  registered -> started: p50 {:.2} s, max {:.2} s (the job's PrologSlurmctld ends once its node has \
         registered; without it, Slurm waits for its periodic job_time_limit pass, every 30 s)",
        percentile(&gaps, 0.5),
        percentile(&gaps, 1.0)
    );
    let (p50, max) = (percentile(&waits, 0.5), percentile(&waits, 1.0));
    println!("  p50 {p50:.2} s, max {max:.2} s");
    println!(
        "submit -> start, {ONE_AT_A_TIME} exclusive jobs one at a time (each submitted once the one before runs; one worker boots at a time):"
    );
    println!("{:>6} {:>6} {:>16} {:>14}", "job", "node", "node registered", "job started");
    for j in &seq {
        println!("{:>6} {:>6} {:>16.2} {:>14.2}", j.id, j.node, j.registered - j.submit, j.start - j.submit);
    }
    let mut one: Vec<f64> = seq.iter().map(|j| j.start - j.submit).collect();
    one.sort_by(f64::total_cmp);
    let (p50_one, max_one) = (percentile(&one, 0.5), percentile(&one, 1.0));
    println!("  p50 {p50_one:.2} s, max {max_one:.2} s");
    println!(
        "scale-up 0 -> {MAX_WORKERS} ({MAX_WORKERS} queued exclusive jobs; {MAX_WORKERS} workers on this {cores}-core machine): \
         all running after {up_s:.2} s (first after {first_s:.2} s)"
    );
    println!(
        "scale-down {jobs} -> 0 after the last job's end: 0 live in EC2 after {:.1} s, all idle~ in Slurm after {:.1} s",
        ec2_a - last_end,
        slurm_a - last_end
    );
    println!(
        "scale-down {MAX_WORKERS} -> 0 after scancel: 0 live in EC2 after {:.1} s, all idle~ in Slurm after {:.1} s \
         (idle time 60 s + SuspendTimeout 60 s)",
        ec2_b - cancel,
        slurm_b - cancel
    );
    println!("the leader idle with {still} workers, over {window:.0} s (CPU s, % of a core):");
    for what in ["cgcloud-agent", "slurmctld", "box"] {
        match (cpu0.get(what), cpu1.get(what)) {
            (Some((p0, a)), Some((p1, b))) if p0 == p1 => {
                let label =
                    if what == "box" { "whole leader (cgroup)".to_owned() } else { format!("{what} (pid {p1})") };
                println!("  {label:<28} {:>7.2} s {:>7.3} %", b - a, (b - a) / window * 100.0);
            }
            (Some((p0, _)), Some((p1, _))) => println!("  {what}: restarted ({p0} -> {p1}) during the window"),
            _ => println!("  {what}: not found on the leader"),
        }
    }
    let target = 1.3 * bare_s + SLURM_INTERVAL_S;
    println!(
        "target: submit -> start <= 1.3 x bare boot + Slurm's power-save interval ({SLURM_INTERVAL_S:.0} s) = {target:.1} s: \
         {jobs} at once: p50 {p50:.1} s ({:.2} of it), max {max:.1} s ({:.2}); one at a time: p50 {p50_one:.1} s ({:.2}), max {max_one:.1} s ({:.2})",
        p50 / target,
        max / target,
        p50_one / target,
        max_one / target
    );
    println!(
        "submit -> start / bare boot: p50 {:.2}, max {:.2}; ParallelCluster's median {PARALLELCLUSTER_S:.0} s / p50 = {:.1}x \
         (target >= 10x)",
        p50 / bare_s,
        max / bare_s,
        PARALLELCLUSTER_S / p50
    );
    Ok(())
}
