//! When EC2 misbehaves: every capacity and spot path of a cluster launch, throttling, 500s,
//! lost answers and hangs, nodes that fail their first boot, and launches killed at random
//! moments — against moto behind `testkit::fault::FaultProxy`, which answers chosen requests
//! with chosen faults. Leftovers are counted with boto3 straight at moto, not through cgcloud.

#![allow(clippy::unwrap_used)] // tests may unwrap

use serde_json::Value;
use testkit::fault::{Fault, FaultProxy, Rule};
use testkit::{FakeAgents, TestEnv};

const SPOT: &str = "InstanceMarketOptions.MarketType=spot";

/// An environment with a key and a baked node image in namespace `/ns/` of its own (IAM is
/// global on moto: tests that share a namespace share its roles), whose cgcloud talks through
/// a fault proxy.
fn env(ns: &str) -> (TestEnv, FaultProxy) {
    let mut e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    e.set_env("CGCLOUD_NAMESPACE", &format!("/{ns}/"));
    e.with_key_and_node_image();
    let proxy = FaultProxy::start(&e.moto_endpoint);
    e.through(&proxy);
    (e, proxy)
}

/// The cluster's nodes as the emulator has them: (ordinal, instance type, spot, state).
fn nodes(e: &TestEnv, cluster: &str) -> Vec<(u64, String, bool, String)> {
    let v: Vec<Value> =
        e.json(&["list"]).as_array().unwrap().iter().filter(|b| b["cluster"] == cluster).cloned().collect();
    let mut n: Vec<(u64, String, bool, String)> = v
        .iter()
        .map(|b| {
            (
                b["ordinal"].as_u64().unwrap(),
                b["instance_type"].as_str().unwrap().to_owned(),
                b["spot"].as_bool().unwrap(),
                b["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    n.sort();
    n
}

fn assert_no_leftovers(e: &TestEnv, ns: &str, what: &str) {
    let left = e.leftovers(ns);
    let total: usize = left.as_object().unwrap().values().map(|v| v.as_array().unwrap().len()).sum();
    assert_eq!(total, 0, "{what}: left behind {left}");
}

#[test]
fn spot_types_fallback_and_their_failures() {
    let (e, proxy) = env("faults-spot");
    let _agents = FakeAgents::start(&e);
    // The first spot type has no capacity: the second is used for all workers.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::insufficient_capacity())
        .when("InstanceType=m5.large")
        .when(SPOT)]);
    e.ok(&[
        "create-cluster",
        "generic",
        "-s",
        "2",
        "-c",
        "types",
        "-t",
        "m5.large",
        "--spot-bid",
        "0.5",
        "--spot-instance-types",
        "m5a.large",
        "-D",
        "--skip-ssh-check",
    ]);
    let n = nodes(&e, "types");
    assert_eq!(
        n.iter().filter(|x| x.0 > 0).map(|x| x.1.as_str()).collect::<Vec<_>>(),
        ["m5a.large", "m5a.large"],
        "{n:?}"
    );
    assert!(n.iter().filter(|x| x.0 > 0).all(|x| x.2), "workers on spot: {n:?}");
    assert!(!n[0].2, "-D keeps the leader on demand");
    e.ok(&["terminate-cluster", "generic", "-c", "types"]);

    // No spot capacity at all: on demand, with --on-demand-fallback.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::spot_price_too_low()).when(SPOT)]);
    e.ok(&[
        "create-cluster",
        "generic",
        "-s",
        "2",
        "-c",
        "fallback",
        "--spot-bid",
        "0.01",
        "-D",
        "--on-demand-fallback",
        "--skip-ssh-check",
    ]);
    assert!(nodes(&e, "fallback").iter().all(|x| !x.2), "the fallback is on demand");
    e.ok(&["terminate-cluster", "generic", "-c", "fallback"]);

    // Without the fallback the launch fails, says what to try, and leaves nothing.
    let err = e.fails(&[
        "create-cluster",
        "generic",
        "-s",
        "2",
        "-c",
        "nofallback",
        "--spot-bid",
        "0.01",
        "-D",
        "--skip-ssh-check",
    ]);
    assert!(err.contains("workers could be launched") && err.contains("--on-demand-fallback"), "{err}");
    assert!(nodes(&e, "nofallback").is_empty());
    e.ok(&["cleanup", "--yes"]);
    assert_no_leftovers(&e, "faults-spot", "a spot launch that got nothing");

    // A timeout retries every 10 s: capacity comes at the third try, in time. (The SDK retries
    // a 500 by itself too; the launch's own tries are its "launching" lines.)
    proxy.set_rules(vec![Rule::first("RunInstances", 4, Fault::insufficient_capacity()).when(SPOT)]);
    let out = e.run(&[
        "create-cluster",
        "generic",
        "-s",
        "1",
        "-c",
        "late",
        "--spot-bid",
        "0.5",
        "-D",
        "--spot-timeout",
        "30",
        "--skip-ssh-check",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("launching 1 × generic-worker").count(), 3, "{err}");
    e.ok(&["terminate-cluster", "generic", "-c", "late"]);
    // A timeout that expires: the attempt gives up after it.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::insufficient_capacity()).when(SPOT)]);
    let started = std::time::Instant::now();
    let err = e.fails(&[
        "create-cluster",
        "generic",
        "-s",
        "1",
        "-c",
        "never",
        "--spot-bid",
        "0.5",
        "-D",
        "--spot-timeout",
        "10",
        "--skip-ssh-check",
    ]);
    assert!(started.elapsed().as_secs() >= 10 && err.contains("--spot-timeout"), "{err}");
    e.ok(&["cleanup", "--yes"]);
    assert_no_leftovers(&e, "faults-spot", "a spot timeout that expired");
}

/// A single box on the spot market (`create`/`recreate --spot-bid`, as the original had): the
/// same policy as workers, with its options checked before anything launches.
#[test]
fn single_boxes_on_the_spot_market() {
    let (e, proxy) = env("faults-box-spot");
    let box_of = |v: &Value| (v["instance_type"].as_str().unwrap().to_owned(), v["spot"].as_bool().unwrap());
    let b = e.json(&["create", "generic-debian-bookworm-box", "-Q", "--spot-bid", "0.05"]);
    assert_eq!(box_of(&b), ("t3.micro".to_owned(), true), "{b}");
    e.ok(&["terminate", "generic-debian-bookworm-box", "-I", b["instance_id"].as_str().unwrap()]);
    // recreate, from the baked node image, on the second spot type: the first has no capacity.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::insufficient_capacity())
        .when("InstanceType=m5.large")
        .when(SPOT)]);
    let out = e.run(&[
        "--output",
        "json",
        "recreate",
        "generic-cluster-box",
        "-Q",
        "-t",
        "m5.large",
        "--spot-bid",
        "0.5",
        "--spot-instance-types",
        "m5a.large",
    ]);
    let r: Value = serde_json::from_str(&testkit::succeeded(&["recreate"], &out)).unwrap();
    assert_eq!(box_of(&r), ("m5a.large".to_owned(), true), "{r}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("spot capacity for 1 × m5.large"));
    // No spot capacity at all: on demand with --on-demand-fallback; without it, an error that
    // says what to try, and nothing left behind.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::spot_price_too_low()).when(SPOT)]);
    let b = e.json(&["create", "generic-debian-bookworm-box", "-Q", "--spot-bid", "0.01", "--on-demand-fallback"]);
    assert_eq!(box_of(&b), ("t3.micro".to_owned(), false), "{b}");
    e.ok(&["terminate", "generic-debian-bookworm-box", "-I", b["instance_id"].as_str().unwrap()]);
    let err = e.fails(&["create", "generic-debian-bookworm-box", "-Q", "--spot-bid", "0.01"]);
    assert!(err.contains("the box could not be launched") && err.contains("--on-demand-fallback"), "{err}");
    proxy.set_rules(vec![]);
    // Checked before anything launches: a spot box cannot be stopped to bake it, options that
    // need a bid, an unknown further type.
    let err = e.fails(&["create", "generic-debian-bookworm-box", "-I", "--spot-bid", "0.05"]);
    assert!(err.contains("a spot box cannot stop"), "{err}");
    let err = e.fails(&["create", "generic-debian-bookworm-box", "-Q", "--on-demand-fallback"]);
    assert!(err.contains("--spot-bid"), "{err}");
    let err = e.fails(&[
        "create",
        "generic-debian-bookworm-box",
        "-Q",
        "--spot-bid",
        "0.05",
        "--spot-instance-types",
        "m9.nope",
    ]);
    assert!(err.contains("--spot-instance-types m9.nope"), "{err}");
    e.ok(&["terminate", "generic-cluster-box", "-I", r["instance_id"].as_str().unwrap()]);
    // The zone from recent spot prices, and a timeout that outlasts two refusals; recreate
    // takes the same options, and falls back to on demand.
    let out = e.run(&[
        "--output",
        "json",
        "create",
        "generic-debian-bookworm-box",
        "-Q",
        "--spot-bid",
        "0.05",
        "--spot-auto-zone",
        "--spot-timeout",
        "30",
    ]);
    let b: Value = serde_json::from_str(&testkit::succeeded(&["create"], &out)).unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    let zone = said.split("spot: zone ").nth(1).and_then(|z| z.split_whitespace().next()).unwrap_or_default();
    assert_eq!(b["zone"], zone, "{said}");
    e.ok(&["terminate", "generic-debian-bookworm-box", "-I", b["instance_id"].as_str().unwrap()]);
    // (Each refusal is a 500 that the SDK tries twice.)
    proxy.set_rules(vec![Rule::first("RunInstances", 4, Fault::insufficient_capacity()).when(SPOT)]);
    let out = e.run(&[
        "--output",
        "json",
        "recreate",
        "generic-cluster-box",
        "-Q",
        "--spot-bid",
        "0.05",
        "--spot-timeout",
        "60",
        "--spot-auto-zone",
    ]);
    let r: Value = serde_json::from_str(&testkit::succeeded(&["recreate"], &out)).unwrap();
    assert_eq!(r["spot"], true, "{r}");
    assert_eq!(String::from_utf8_lossy(&out.stderr).matches("launching 1 ×").count(), 3, "two refusals, then the box");
    e.ok(&["terminate", "generic-cluster-box", "-I", r["instance_id"].as_str().unwrap()]);
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::spot_price_too_low()).when(SPOT)]);
    let r = e.json(&["recreate", "generic-cluster-box", "-Q", "--spot-bid", "0.01", "--on-demand-fallback"]);
    assert_eq!(r["spot"], false, "{r}");
    e.ok(&["terminate", "generic-cluster-box", "-I", r["instance_id"].as_str().unwrap()]);
    proxy.set_rules(vec![]);
    e.ok(&["cleanup", "--yes"]);
    assert_no_leftovers(&e, "faults-box-spot", "single spot boxes");
}

#[test]
fn partial_capacity_min_workers_and_tentative() {
    let (e, proxy) = env("faults-partial");
    let _agents = FakeAgents::start(&e);
    // EC2 can give 2 of 4 workers: enough with --min-workers 2, named missing ordinals.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::Partial(2)).when("cgcloud%3Aordinals")]);
    let out = e.run(&["create-cluster", "generic", "-s", "4", "-c", "half", "--min-workers", "2", "--skip-ssh-check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("missing ordinals 3, 4"), "{err}");
    assert_eq!(nodes(&e, "half").len(), 3);
    e.ok(&["terminate-cluster", "generic", "-c", "half"]);
    // Not enough: the launch fails and rolls back, the workers it got included.
    let err =
        e.fails(&["create-cluster", "generic", "-s", "4", "-c", "short", "--min-workers", "3", "--skip-ssh-check"]);
    assert!(err.contains("only 2 of 4") && err.contains("at least 3"), "{err}");
    assert!(nodes(&e, "short").is_empty());
    e.ok(&["cleanup", "--yes"]);
    assert_no_leftovers(&e, "faults-partial", "min-workers not met");
    // By default all or nothing: one try for the workers, no partial launch to undo.
    let err = e.fails(&["create-cluster", "generic", "-s", "4", "-c", "all", "--skip-ssh-check"]);
    assert!(err.contains("only 0 of 4"), "{err}");
    assert_eq!(err.matches("launching 4 × generic-worker").count(), 1, "{err}");
    e.ok(&["cleanup", "--yes"]);
    // Tentative takes what spot gives at once, and that is a success.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::Partial(1)).when(SPOT)]);
    e.ok(&[
        "create-cluster",
        "generic",
        "-s",
        "3",
        "-c",
        "tentative",
        "--spot-bid",
        "0.5",
        "-D",
        "--spot-tentative",
        "--skip-ssh-check",
    ]);
    assert_eq!(nodes(&e, "tentative").len(), 2);
    e.ok(&["terminate-cluster", "generic", "-c", "tentative"]);
    e.ok(&["cleanup", "--yes"]);
    assert_no_leftovers(&e, "faults-partial", "partial launches");
}

#[test]
fn throttling_errors_lost_answers_and_hangs() {
    let (mut e, proxy) = env("faults-flaky");
    e.set_env("CGCLOUD_MAX_ATTEMPTS", "4");
    e.set_env("CGCLOUD_ATTEMPT_TIMEOUT", "3");
    let _agents = FakeAgents::start(&e);
    proxy.set_rules(vec![
        Rule::first("DescribeInstances", 2, Fault::throttled()),
        Rule::first("RunInstances", 1, Fault::internal()),
        Rule::first("CreateTags", 1, Fault::Drop),
        Rule::first("DescribeImages", 1, Fault::Hang(std::time::Duration::from_secs(10))),
    ]);
    let injected = proxy.injected();
    e.ok(&["create-cluster", "generic", "-s", "2", "-c", "flaky", "--skip-ssh-check"]);
    assert!(proxy.injected() - injected >= 4, "faults were not hit: {}", proxy.injected());
    assert_eq!(nodes(&e, "flaky").len(), 3);
    // A RunInstances whose answer is lost after EC2 launched: the retry (same client token)
    // must not leave a second set of instances, or if EC2 makes them, the launch finds them.
    proxy.set_rules(vec![Rule::first("RunInstances", 1, Fault::LoseAnswer).after(1)]);
    e.ok(&["create-cluster", "generic", "-s", "3", "-c", "lost", "--skip-ssh-check"]);
    assert_eq!(nodes(&e, "lost").len(), 4, "{:?}", nodes(&e, "lost"));
    e.ok(&["terminate-cluster", "generic", "-c", "flaky"]);
    e.ok(&["terminate-cluster", "generic", "-c", "lost"]);
    e.ok(&["cleanup", "--yes"]);
    assert_no_leftovers(&e, "faults-flaky", "lost answers");
}

#[test]
fn workers_that_fail_their_first_boot_are_named() {
    let (e, _proxy) = env("faults-boot");
    // The second worker of every group reports a failed first boot.
    let _agents = FakeAgents::start_failing(&e, Some(1));
    let err = e.fails(&["create-cluster", "generic", "-s", "2", "-c", "bad", "--skip-ssh-check"]);
    assert!(err.contains("failed: step 'install' failed: fake agent"), "{err}");
    assert!(nodes(&e, "bad").is_empty(), "the failed launch was not rolled back");
    // With --min-workers the cluster comes up with the good one; the failed one is named and
    // terminated.
    let out = e.run(&["create-cluster", "generic", "-s", "2", "-c", "some", "--min-workers", "1", "--skip-ssh-check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("did not come up and are terminated") && err.contains("fake agent"),
        "{err}"
    );
    assert_eq!(nodes(&e, "some").iter().filter(|n| n.3 == "running").count(), 2);
    // grow-cluster names and terminates its failed worker too.
    let out = e.run(&["grow-cluster", "generic", "-c", "some", "-s", "2", "--min-workers", "1", "--skip-ssh-check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("new worker(s) did not come up and are terminated"), "{err}");
    // The note names only the worker that joined.
    assert!(err.contains("added 1 worker(s), ordinals"), "{err}");
    assert_eq!(nodes(&e, "some").iter().filter(|n| n.3 == "running").count(), 3);
    // -N keeps a failed node for debugging, marked for cleanup.
    let err = e.fails(&["create-cluster", "generic", "-s", "2", "-c", "kept", "-N", "--skip-ssh-check"]);
    assert!(err.contains("keeping"), "{err}");
    assert_eq!(nodes(&e, "kept").len(), 3);
    let found = e.json(&["cleanup", "--dry-run"]);
    assert_eq!(found.as_array().unwrap().iter().filter(|i| i["kind"] == "instance").count(), 3, "{found}");
    e.ok(&["cleanup", "--yes"]);
    e.ok(&["terminate-cluster", "generic", "-c", "some"]);
}

/// Kills create-cluster (SIGKILL, or Ctrl-C's SIGINT) at random moments and runs the default
/// `cgcloud cleanup` after each: nothing may be left, and a cluster whose launch completed
/// before the signal must be untouched. `CGCLOUD_CRASH_RUNS` (default 20) and
/// `CGCLOUD_CRASH_SEED` change the number of runs and the moments.
#[test]
fn killed_launches_leave_nothing_that_cleanup_does_not_remove() {
    use rand::{Rng as _, SeedableRng as _};
    let (e, proxy) = env("faults-crash");
    let mut agents = FakeAgents::start(&e);
    // Slow calls widen the windows in which a launch has made some things and not others.
    proxy.set_rules(vec![
        Rule::always("RunInstances", Fault::Delay(std::time::Duration::from_millis(400))),
        Rule::always("CreateInstanceProfile", Fault::Delay(std::time::Duration::from_millis(200))),
        Rule::always("CreateSecurityGroup", Fault::Delay(std::time::Duration::from_millis(200))),
    ]);
    let runs: usize = std::env::var("CGCLOUD_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("CGCLOUD_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(42);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // How long an undisturbed launch takes here sets the range of moments.
    let started = std::time::Instant::now();
    e.ok(&["create-cluster", "generic", "-s", "3", "-c", "timing", "--skip-ssh-check"]);
    let full = started.elapsed();
    e.ok(&["terminate-cluster", "generic", "-c", "timing"]);
    e.ok(&["cleanup", "--yes"]);
    // The IAM role made by the first launch is kept (it completed); later launches reuse it, so
    // half of the runs start by deleting it, to kill launches that are making it.
    let (mut killed, mut completed) = (0, 0);
    for run in 0..runs {
        if run % 2 == 0 {
            e.ok(&["reset-security", "--yes"]);
        }
        let name = format!("crash{run}");
        let at = std::time::Duration::from_millis(rng.gen_range(0..(full.as_millis() as u64 * 12 / 10).max(1)));
        let signal = if run % 3 == 2 { "INT" } else { "KILL" };
        let mut child = e
            .cmd()
            .args(["create-cluster", "generic", "-s", "3", "-c", &name, "--skip-ssh-check"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let done_before = child.try_wait().unwrap().is_some();
        std::process::Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
        let status = child.wait().unwrap();
        let finished = done_before || status.success();
        // EC2 carries out what it received before the kill; the next cleanup comes after that.
        assert!(proxy.wait_idle(std::time::Duration::from_secs(30)), "run {run}: requests still in flight");
        // The nodes' agents go quiet while cleanup runs and its result is counted: an agent that
        // saw its node running may make its queue after any cleanup (the next one removes it).
        agents.pause();
        e.ok(&["cleanup", "--yes"]);
        let n = nodes(&e, &name);
        // What is left of the cluster is all of it (its launch completed, perhaps just before
        // the signal), or nothing.
        if finished {
            assert_eq!(n.len(), 4, "run {run}: cleanup touched a completed cluster: {n:?}");
        }
        if !n.is_empty() {
            assert!(n.len() == 4 && n.iter().all(|x| x.3 == "running"), "run {run}: a partial cluster is left: {n:?}");
            completed += 1;
            e.ok(&["terminate-cluster", "generic", "-c", &name]);
            e.ok(&["cleanup", "--yes"]);
        } else {
            killed += 1;
        }
        assert_no_leftovers(
            &e,
            "faults-crash",
            &format!("run {run} (SIG{signal} after {} ms, seed {seed})", at.as_millis()),
        );
        agents.resume();
    }
    eprintln!(
        "crash runs: {runs} ({killed} interrupted, {completed} completed first; a full launch took {} ms; {} faults injected)",
        full.as_millis(),
        proxy.injected()
    );
    assert!(killed >= runs / 2, "too few runs were interrupted ({killed} of {runs}) to mean anything");
}

/// Ctrl-C during a launch rolls it back; a second Ctrl-C during the rollback (its terminate
/// call held up here) stops at once, with exit status 130, naming what is left and the exact
/// cleanup command — which, run as given, removes it.
#[test]
fn a_second_ctrl_c_stops_the_rollback_and_names_the_cleanup_command() {
    use std::io::Read as _;
    let (e, proxy) = env("faults-sigint");
    let _agents = FakeAgents::start(&e);
    proxy.set_rules(vec![
        Rule::always("RunInstances", Fault::Delay(std::time::Duration::from_millis(300))),
        Rule::always("TerminateInstances", Fault::Delay(std::time::Duration::from_secs(8))),
    ]);
    let mut child = e
        .cmd()
        .args(["create-cluster", "generic", "-s", "2", "-c", "twice", "--skip-ssh-check"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Once the leader exists, the launch has something to roll back.
    let started = std::time::Instant::now();
    while nodes(&e, "twice").is_empty() {
        assert!(started.elapsed().as_secs() < 60, "the leader never appeared");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let int = |pid: u32| std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    int(child.id());
    // The rollback's TerminateInstances is held up by the proxy: interrupt it.
    while proxy.count("TerminateInstances") == 0 {
        assert!(started.elapsed().as_secs() < 90, "the rollback never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    int(child.id());
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("interrupted twice; the rollback stopped") && last.contains("left behind"), "{err}");
    let command = last.split('`').nth(1).expect("the cleanup command in backticks");
    assert!(command.starts_with("cgcloud -n /faults-sigint/ cleanup"), "{command}");
    // The held-up terminate call still reaches EC2; the command then removes the rest.
    assert!(proxy.wait_idle(std::time::Duration::from_secs(30)));
    proxy.set_rules(Vec::new());
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    e.ok(&args);
    e.ok(&args);
    assert_no_leftovers(&e, "faults-sigint", "after the second Ctrl-C and the cleanup command");
}
