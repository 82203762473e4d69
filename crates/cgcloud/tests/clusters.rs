//! Cluster commands against moto. No node boots on moto, so `FakeAgents` plays the nodes'
//! agents (it tags them configured), and every launch passes `--skip-ssh-check`: nothing here
//! connects to a node.

#![allow(clippy::unwrap_used)] // tests may unwrap

use serde_json::Value;
use testkit::{FakeAgents, TestEnv};

/// An environment with a key and a baked node image.
fn env() -> TestEnv {
    let e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    e.with_key_and_node_image();
    e
}

fn nodes(e: &TestEnv, cluster: &str) -> Vec<Value> {
    let mut v: Vec<Value> =
        e.json(&["list"]).as_array().unwrap().iter().filter(|b| b["cluster"] == cluster).cloned().collect();
    v.sort_by_key(|b| b["ordinal"].as_u64());
    v
}

#[test]
fn create_grow_and_terminate_a_cluster() {
    let e = env();
    let _agents = FakeAgents::start(&e);
    e.ok(&["create-cluster", "generic", "-s", "3", "-c", "c1", "--skip-ssh-check"]);
    let n = nodes(&e, "c1");
    assert_eq!(n.len(), 4);
    let ordinals: Vec<u64> = n.iter().map(|b| b["ordinal"].as_u64().unwrap()).collect();
    assert_eq!(ordinals, vec![0, 1, 2, 3]);
    assert_eq!(n[0]["role"], "generic-leader");
    assert!(n[1..].iter().all(|b| b["role"] == "generic-worker"));
    let leader = n[0]["instance_id"].clone();
    assert!(n.iter().all(|b| b["leader"] == leader), "every node names the leader");
    let clusters = e.json(&["list-clusters"]);
    assert_eq!(clusters[0]["name"], "c1");

    // Growing fills gaps first.
    e.ok(&["terminate", "generic-worker", "-I", n[2]["instance_id"].as_str().unwrap()]);
    e.ok(&["grow-cluster", "generic", "-c", "c1", "-s", "2", "--skip-ssh-check"]);
    let ordinals: Vec<u64> = nodes(&e, "c1").iter().map(|b| b["ordinal"].as_u64().unwrap()).collect();
    assert_eq!(ordinals, vec![0, 1, 2, 3, 4]);

    // Selecting a cluster: by name, by ordinal, and an ambiguity error.
    e.ok(&["create-cluster", "generic", "-s", "1", "-c", "c2", "--skip-ssh-check"]);
    let err = e.fails(&["stop-cluster", "generic"]);
    assert!(err.contains("2 generic clusters exist") && err.contains("c1") && err.contains("c2"), "{err}");
    e.ok(&["stop-cluster", "generic", "-o", "-1"]);
    assert!(nodes(&e, "c2").iter().all(|b| b["state"] == "stopped"));
    e.ok(&["start-cluster", "generic", "-c", "c2", "-Q"]);
    assert!(nodes(&e, "c2").iter().all(|b| b["state"] == "running"));
    // -L leaves the leader alone: stop-cluster stops only the workers, start-cluster starts them.
    e.ok(&["stop-cluster", "generic", "-c", "c1", "-L"]);
    let states: Vec<String> = nodes(&e, "c1").iter().map(|b| b["state"].as_str().unwrap().to_owned()).collect();
    assert_eq!(states, ["running", "stopped", "stopped", "stopped", "stopped"], "{states:?}");
    e.ok(&["start-cluster", "generic", "-c", "c1", "-L", "-Q"]);
    assert!(nodes(&e, "c1").iter().all(|b| b["state"] == "running"));
    e.ok(&["terminate-cluster", "generic", "-c", "c2", "-Q"]);
    e.ok(&["terminate-cluster", "generic", "-c", "c1"]);
    assert!(e.json(&["list"]).as_array().unwrap().is_empty());
    let left = e.json(&["cleanup", "--dry-run"]);
    assert!(left.as_array().unwrap().iter().all(|i| i["kind"] == "security-group"), "{left}");
}

#[test]
fn launch_api_calls_do_not_grow_with_the_cluster() {
    let e = env();
    let _agents = FakeAgents::start(&e);
    // "(K API requests, P of them status polls, R retries)": K minus the polls and the SDK's
    // retries (moto, shared by the parallel tests, sometimes needs one) must not depend on N.
    let calls = |n: &str, name: &str| {
        let out = e.run(&["create-cluster", "generic", "-s", n, "-c", name, "--skip-ssh-check"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let tail = err.split('(').next_back().unwrap().to_owned();
        let nums: Vec<u64> = tail.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
        (nums[0] - nums[1] - nums[2], tail)
    };
    let ((one, summary1), (forty, summary40)) = (calls("1", "small"), calls("40", "large"));
    assert_eq!(one, forty, "calls besides polling and retries: 1 worker ({summary1}), 40 workers ({summary40})");
}

#[test]
fn interrupted_launches_leave_nothing_behind() {
    let mut e = env();
    for point in ["after-leader", "after-workers"] {
        e.set_env("CGCLOUD_FAULT", point);
        let err = e.fails(&["create-cluster", "generic", "-s", "3", "--skip-ssh-check"]);
        assert!(err.contains(&format!("injected fault at '{point}'")) && err.contains("rolling back"), "{err}");
        assert!(e.json(&["list"]).as_array().unwrap().is_empty(), "{point} left boxes");
        e.set_env("CGCLOUD_FAULT", "");
    }
    // Nodes that never report back: the wait times out and the launch is undone.
    let err = e.fails(&["create-cluster", "generic", "-s", "2", "--skip-ssh-check", "--timeout", "2"]);
    assert!(err.contains("timed out") && err.contains("rolling back"), "{err}");
    assert!(e.json(&["list"]).as_array().unwrap().is_empty());
    // With -N the nodes stay for debugging and cleanup finds them.
    e.fails(&["create-cluster", "generic", "-s", "1", "--skip-ssh-check", "--timeout", "2", "-N"]);
    assert_eq!(e.json(&["list"]).as_array().unwrap().len(), 2);
    let found = e.json(&["cleanup", "--dry-run"]);
    assert_eq!(found.as_array().unwrap().iter().filter(|i| i["kind"] == "instance").count(), 2, "{found}");
}

#[test]
fn spot_workers_and_their_limits() {
    let e = env();
    let _agents = FakeAgents::start(&e);
    e.ok(&["create-cluster", "generic", "-s", "2", "-c", "sp", "--skip-ssh-check", "--spot-bid", "0.05", "-D"]);
    let n = nodes(&e, "sp");
    assert_eq!(n[0]["spot"], false, "-D launches the leader on demand");
    assert!(n[1..].iter().all(|b| b["spot"] == true));
    let err = e.fails(&["stop-cluster", "generic", "-c", "sp"]);
    assert!(err.contains("cannot stop spot instances") && err.contains("nothing was stopped"), "{err}");
    assert!(nodes(&e, "sp").iter().all(|b| b["state"] == "running"));
    // Auto zone from the price history.
    let out = e.run(&[
        "create-cluster",
        "generic",
        "-s",
        "1",
        "-c",
        "sz",
        "--skip-ssh-check",
        "--spot-bid",
        "0.05",
        "--spot-auto-zone",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("spot: zone"));
}

#[test]
fn cluster_options_are_validated() {
    let e = env();
    let err = e.fails(&["create-cluster", "nosuch"]);
    assert!(err.contains("no such cluster type: 'nosuch'") && err.contains("generic"), "{err}");
    let err = e.fails(&["create-cluster", "generic", "-c", "Bad_Name"]);
    assert!(err.contains("invalid cluster name"), "{err}");
    let err = e.fails(&["create-cluster", "generic", "--spot-auto-zone"]);
    assert!(err.contains("--spot-bid"), "{err}");
    let err = e.fails(&["create-cluster", "generic", "--spot-bid", "0.1", "--spot-auto-zone", "--subnet", "subnet-1"]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = e.fails(&["create-cluster", "generic", "--share", "/nonexistent/dir"]);
    assert!(err.contains("--share /nonexistent/dir: no such file"), "{err}");
    // Without a shared directory the copy goes to every node, which -Q does not wait for.
    let here = e.home.path().to_str().unwrap().to_owned();
    let err = e.fails(&["create-cluster", "generic", "-S", &here, "-Q"]);
    assert!(err.contains("-Q does not wait for the workers"), "{err}");
    let err = e.fails(&["create-cluster", "generic", "--ssh-opts=-v"]);
    assert!(err.contains("--share"), "--ssh-opts is for the --share copy: {err}");
    let empty = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    let key = empty.keygen("k", "ed25519");
    empty.ok(&["register-key", key.with_extension("pub").to_str().unwrap()]);
    let err = empty.fails(&["create-cluster", "generic"]);
    assert!(err.contains("cgcloud create -I -T generic-cluster-box"), "{err}");
}

/// Progress off a terminal is plain lines, one per phase step with its count and total; `-q`
/// prints nothing at all on stderr; on a terminal (a pty from `script`) the bars draw.
#[test]
fn progress_is_plain_off_a_terminal_silent_with_q_and_bars_on_one() {
    let e = env();
    let _agents = FakeAgents::start(&e);
    let out = e.run(&["create-cluster", "generic", "-s", "2", "-c", "p1", "--skip-ssh-check"]);
    let err = testkit::succeeded(&["create-cluster"], &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!err.is_empty(), "create-cluster printed nothing on stdout");
    for phase in ["launched 3/3", "running 3/3", "configured 3/3"] {
        assert!(stderr.lines().any(|l| l.contains(phase)), "no plain line with '{phase}':\n{stderr}");
    }
    assert!(!stderr.contains('\u{1b}'), "escape sequences off a terminal:\n{stderr}");
    let out = e.run(&["-q", "create-cluster", "generic", "-s", "2", "-c", "p2", "--skip-ssh-check"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "-q printed on stderr");
    // On a terminal: `script` gives cgcloud a pty; the bars draw (and are cleared) with escapes.
    let hermetic = e.cmd();
    let mut tty = std::process::Command::new("script");
    for (k, v) in hermetic.get_envs() {
        match v {
            Some(v) => tty.env(k, v),
            None => tty.env_remove(k),
        };
    }
    let line = format!("{} create-cluster generic -s 2 -c p3 --skip-ssh-check", env!("CARGO_BIN_EXE_cgcloud"));
    let tty = tty
        .args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{screen}");
    assert!(screen.contains('\u{1b}'), "no terminal drawing on a pty:\n{screen}");
    for c in ["p2", "p3"] {
        e.ok(&["terminate-cluster", "generic", "-c", c]);
    }
    e.ok(&["terminate-cluster", "generic", "-c", "p1"]);
}

#[test]
fn ssh_cluster_fans_out_within_the_open_files_limit() {
    let mut e = env();
    let agents = FakeAgents::start(&e);
    e.ok(&["create-cluster", "generic", "-s", "40", "-c", "wide", "--skip-ssh-check"]);
    drop(agents);
    // No node boots on moto: publish a host key for each, as their agents would, and put an
    // `ssh` on PATH that notes how many of its kind run at once.
    let host_key = std::fs::read_to_string(e.keygen("host", "ed25519").with_extension("pub")).unwrap();
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    e.boto3(&format!(
        "ec2 = client('ec2')\n\
         ids = [i['InstanceId'] for r in ec2.describe_instances(Filters=[{{'Name': 'tag:cgcloud:cluster', 'Values': ['wide']}}])['Reservations'] for i in r['Instances']]\n\
         ec2.create_tags(Resources=ids, Tags=[{{'Key': 'cgcloud:host-key', 'Value': '{}'}}])",
        host_key.join(" ")
    ));
    let tools = e.home.path().join("tools");
    let running = e.home.path().join("running");
    std::fs::create_dir_all(&running).unwrap();
    std::fs::create_dir_all(&tools).unwrap();
    let ssh = tools.join("ssh");
    std::fs::write(
        &ssh,
        format!(
            "#!/bin/sh\nd='{}'\ntouch \"$d/$$\"\nls \"$d\" | wc -l >>\"$d.log\"\nsleep 2\nrm -f \"$d/$$\"\necho hello\n",
            running.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    e.set_env("PATH", &format!("{}:{}", tools.display(), std::env::var("PATH").unwrap()));
    let most_at_once = |limit: Option<u32>| {
        let _ = std::fs::remove_file(running.with_extension("log"));
        let mut cmd = e.cmd();
        let bin = env!("CARGO_BIN_EXE_cgcloud");
        let mut args = vec!["ssh-cluster", "generic", "-c", "wide", "-P", "--", "true"];
        let script = limit.map(|n| format!("ulimit -n {n} && exec \"$0\" \"$@\""));
        if let Some(script) = &script {
            // Soft and hard limit both: cgcloud cannot raise it.
            cmd = std::process::Command::new("sh");
            for (k, v) in e.cmd().get_envs() {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            args.splice(0..0, ["-c", script.as_str(), bin]);
        }
        let out = cmd.args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.lines().filter(|l| l.ends_with(" hello")).count(), 41, "{stdout}");
        let log = std::fs::read_to_string(running.with_extension("log")).unwrap();
        log.lines().filter_map(|l| l.trim().parse::<u32>().ok()).max().unwrap()
    };
    // 128 open files leave room for 16 children at once: all 41 nodes answer, 16 at a time.
    let bounded = most_at_once(Some(128));
    assert!((2..=16).contains(&bounded), "{bounded} ssh at once under a limit of 128 open files");
    // With the usual limit (raised to the hard one) every node's ssh starts at once.
    let free = most_at_once(None);
    assert!(free > 16, "only {free} ssh at once without a low limit");
}
