//! `bench faults [RUNS]`: create-cluster against moto behind a fault proxy, RUNS times, each
//! run with faults drawn at random (capacity and price errors, throttling, 500s, dropped
//! connections, lost answers, hangs, partial launches, on the calls a launch makes) and a third
//! of the runs killed at a random moment; after each, the default `cgcloud cleanup`, and a count
//! of what is left with boto3 straight at moto. Then the time a 100-worker launch takes to roll
//! back. Prints the figures; asserts nothing.

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::fault::{Fault, FaultProxy, Rule};

/// A small, seeded generator (xorshift64*): the runs are the same for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The calls a cluster launch makes that a fault may hit.
const ACTIONS: &[&str] = &[
    "RunInstances",
    "CreateSecurityGroup",
    "AuthorizeSecurityGroupIngress",
    "CreateRole",
    "CreateInstanceProfile",
    "AddRoleToInstanceProfile",
    "PutRolePolicy",
    "CreateTags",
    "DeleteTags",
    "DescribeInstances",
    "DescribeImages",
    "TerminateInstances",
];

fn fault(rng: &mut Rng) -> Fault {
    match rng.below(8) {
        0 => Fault::insufficient_capacity(),
        1 => Fault::spot_price_too_low(),
        2 => Fault::throttled(),
        3 => Fault::internal(),
        4 => Fault::Drop,
        5 => Fault::LoseAnswer,
        // Longer than an attempt may take (5 s here) half of the time: the client retries.
        6 => Fault::Hang(Duration::from_millis(2000 + rng.below(6000))),
        _ => Fault::Partial(rng.below(3) as u32),
    }
}

pub fn faults(runs: usize, cgcloud: &std::path::Path) -> Result<()> {
    let ns = "bench-faults";
    let mut e = testkit::TestEnv::new(cgcloud);
    e.set_env("CGCLOUD_NAMESPACE", &format!("/{ns}/"));
    e.with_key_and_node_image();
    let proxy = FaultProxy::start(&e.moto_endpoint);
    e.through(&proxy);
    let _agents = testkit::FakeAgents::start(&e);
    let seed: u64 = std::env::var("CGCLOUD_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut rng = Rng(seed | 1);
    let mut left: BTreeMap<String, usize> = BTreeMap::new();
    let (mut completed, mut failed, mut killed) = (0, 0, 0);
    let started = Instant::now();
    for run in 0..runs {
        let rules: Vec<Rule> = (0..1 + rng.below(2))
            .map(|_| {
                let action = rng.pick(ACTIONS);
                Rule::first(action, 1 + rng.below(3) as usize, fault(&mut rng)).after(rng.below(3) as usize)
            })
            .collect();
        proxy.set_rules(rules);
        let name = format!("f{run}");
        let mut args = vec!["create-cluster", "generic", "-s", "3", "-c", &name, "--skip-ssh-check", "--timeout", "60"];
        if rng.below(3) == 0 {
            args.extend(["--min-workers", "1"]);
        }
        let mut child = e
            .cmd()
            .args(&args)
            .env("CGCLOUD_ATTEMPT_TIMEOUT", "5")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let kill_at = (rng.below(3) == 0).then(|| Duration::from_millis(rng.below(4000)));
        let status = match kill_at {
            Some(at) => {
                let t = Instant::now();
                while t.elapsed() < at && child.try_wait()?.is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if child.try_wait()?.is_none() {
                    killed += 1;
                    child.kill()?;
                }
                child.wait()?
            }
            None => child.wait()?,
        };
        if status.success() {
            completed += 1;
        } else if kill_at.is_none() {
            failed += 1;
        }
        // EC2 carries out what it received; the next cleanup comes after that.
        proxy.wait_idle(Duration::from_secs(60));
        proxy.set_rules(Vec::new());
        if status.success() {
            e.ok(&["terminate-cluster", "generic", "-c", &name]);
        }
        e.ok(&["cleanup", "--yes"]);
        let counted = e.leftovers(ns);
        for (kind, ids) in counted.as_object().context("leftovers")? {
            *left.entry(kind.clone()).or_default() += ids.as_array().map(Vec::len).unwrap_or(0);
        }
        // Terminated instances of completed clusters take their groups with them only later.
        if run % 10 == 9 {
            eprintln!(
                "{} runs, {} faults injected, {:.0} s",
                run + 1,
                proxy.injected(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!("faults: {runs} faulted create-cluster runs (seed {seed}) in {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "  {} faults injected; {completed} launches completed, {failed} failed and rolled back, {killed} killed (SIGKILL)",
        proxy.injected()
    );
    println!(
        "  left after the default `cgcloud cleanup` (goal 0 of each): {}",
        left.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );

    // Rolling back 100 workers: worker 50 of the group reports a failed first boot.
    drop(_agents);
    let _failing = testkit::FakeAgents::start_failing(&e, Some(50));
    let mut child = e
        .cmd()
        .args(["create-cluster", "generic", "-s", "100", "-c", "big", "--skip-ssh-check", "--timeout", "600"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let t0 = Instant::now();
    let mut rollback_at = None;
    use std::io::BufRead as _;
    for line in std::io::BufReader::new(stderr).lines() {
        if line?.contains("rolling back") && rollback_at.is_none() {
            rollback_at = Some(Instant::now());
        }
    }
    let status = child.wait()?;
    let end = Instant::now();
    match rollback_at {
        Some(at) if !status.success() => println!(
            "  100-worker launch: failed after {:.1} s, rolled back (101 instances terminated, group and role removed) in {:.1} s",
            (at - t0).as_secs_f64(),
            (end - at).as_secs_f64()
        ),
        _ => println!("  100-worker launch: did not roll back ({status})"),
    }
    let counted = e.leftovers(ns);
    let total: usize =
        counted.as_object().map(|m| m.values().filter_map(|v| v.as_array()).map(Vec::len).sum()).unwrap_or(0);
    println!("  left after its rollback (no cleanup): {total}");
    Ok(())
}
