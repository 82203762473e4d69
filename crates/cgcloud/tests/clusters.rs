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

/// A cluster type that scales, as a plugin: the generic node image with `[cluster.scaling]`.
fn elastic_env() -> TestEnv {
    let mut e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    let dir = e.home.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("elastic-box.toml"),
        r##"name = "elastic-box"
description = "generic cluster nodes whose leader scales the workers"
include = ["base"]
os = ["debian-12"]
[cluster]
type = "elastic"
leader = "elastic-leader"
worker = "elastic-worker"
[cluster.scaling]
instance_types = ["t3.*"]
on_bounds = "/usr/local/sbin/elastic-bounds"
[[ports]]
proto = "all"
from = "cluster"
description = "cluster-internal traffic"
[[steps]]
do = "file"
path = "/usr/local/sbin/elastic-bounds"
mode = "0755"
content = "#!/bin/sh\nenv | grep CGCLOUD_SCALE_ > /run/bounds\n"
"##,
    )
    .unwrap();
    e.set_env("CGCLOUD_PLUGINS", dir.to_str().unwrap());
    e.with_key();
    e.bake("elastic-box");
    e
}

/// The launch template and leader role of cluster `name` in namespace `/<user>/`, as EC2 and IAM
/// hold them: (template id or "", its tags, the leader role's inline policy names).
fn elastic_resources(e: &TestEnv, ns_prefix: &str, name: &str) -> Value {
    let out = e.boto3(&format!(
        "ec2 = client('ec2'); iam = client('iam')\n\
         ts = [t for t in ec2.describe_launch_templates(MaxResults=200)['LaunchTemplates'] if t['LaunchTemplateName'] == '{ns_prefix}{name}.workers']\n\
         tags = {{t['Key']: t['Value'] for t in ec2.describe_tags(Filters=[{{'Name': 'resource-id', 'Values': [ts[0]['LaunchTemplateId']]}}])['Tags']}} if ts else {{}}\n\
         try:\n\
         \x20   policies = iam.list_role_policies(RoleName='{ns_prefix}{name}.leader')['PolicyNames']\n\
         \x20   scaler = iam.get_role_policy(RoleName='{ns_prefix}{name}.leader', PolicyName='cgcloud-scaler')['PolicyDocument'] if 'cgcloud-scaler' in policies else None\n\
         except iam.exceptions.NoSuchEntityException:\n\
         \x20   policies, scaler = None, None\n\
         print(json.dumps({{'template': ts[0]['LaunchTemplateId'] if ts else '', 'tags': tags, 'policies': policies, 'scaler': scaler}}))"
    ));
    serde_json::from_str(&out).unwrap()
}

/// The tags of cluster `name`'s leader, as EC2 holds them.
fn leader_tags(e: &TestEnv, name: &str) -> Value {
    let out = e.boto3(&format!(
        "ec2 = client('ec2')\n\
         f = [{{'Name': 'tag:cgcloud:cluster', 'Values': ['{name}']}}, {{'Name': 'tag:cgcloud:ordinal', 'Values': ['0']}}, {{'Name': 'instance-state-name', 'Values': ['running', 'pending']}}]\n\
         i = [i for r in ec2.describe_instances(Filters=f)['Reservations'] for i in r['Instances']][0]\n\
         print(json.dumps({{t['Key']: t['Value'] for t in i['Tags']}}))"
    ));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn an_elastic_cluster_gets_a_template_a_leader_of_its_own_and_bounds() {
    let e = elastic_env();
    let me = e.json(&["list-roles"]); // loads the plugin: a sanity check that it is valid
    assert!(me.as_array().unwrap().iter().any(|r| r["name"] == "elastic-box"));
    // Refused before anything is launched.
    let refused = |extra: &[&str]| {
        let mut args = vec!["create-cluster", "elastic", "-c", "bad", "--skip-ssh-check"];
        args.extend_from_slice(extra);
        e.fails(&args)
    };
    let err = refused(&["--max-workers", "4", "-s", "2"]);
    assert!(err.contains("leave out -s"), "{err}");
    let err = refused(&["--max-workers", "4", "-t", "m5.large"]);
    assert!(err.contains("may launch only t3.*"), "{err}");
    let err = refused(&["--max-workers", "2", "--min-workers", "3"]);
    assert!(err.contains("0 <= min <= max"), "{err}");
    e.bake("generic-cluster-box");
    let err = e.fails(&["create-cluster", "generic", "-c", "bad", "--max-workers", "4", "--skip-ssh-check"]);
    assert!(err.contains("cannot scale on its own"), "{err}");
    assert!(e.json(&["list"]).as_array().unwrap().is_empty(), "nothing was launched");

    let _agents = FakeAgents::start(&e);
    e.ok(&[
        "create-cluster",
        "elastic",
        "-c",
        "e1",
        "--max-workers",
        "4",
        "--min-workers",
        "1",
        "--idle-time",
        "5m",
        "-t",
        "t3.small",
        "--spot-bid",
        "0.05",
        "--spot-instance-types",
        "t3.medium",
        "--on-demand-fallback",
        "--skip-ssh-check",
    ]);
    let n = nodes(&e, "e1");
    assert_eq!(n.len(), 1, "only the leader: its agent launches the workers");
    let leader = &n[0];
    assert!(leader["spot"] != true, "an elastic cluster's leader is on demand: {leader}");
    let t = &leader_tags(&e, "e1");
    assert_eq!(t["cgcloud:scaling"], "min=1 max=4 idle=300");
    assert_eq!(t["cgcloud:scaling-types"], "t3.small,t3.medium");
    assert_eq!(t["cgcloud:scaling-market"], "spot bid=0.0500 fallback");
    assert_eq!(t["cgcloud:node-prefix"], "w");
    let r = elastic_resources(&e, "moto_", "e1");
    let template = r["template"].as_str().unwrap();
    assert!(template.starts_with("lt-"), "{r}");
    assert_eq!(t["cgcloud:launch-template"], format!("{template}:1"));
    // The template carries the workers' tags: the cluster's, the leader's ARN, none of a launch's.
    let tt = &r["tags"];
    assert_eq!((tt["cgcloud:cluster"].as_str(), tt["cgcloud:role"].as_str()), (Some("e1"), Some("elastic-worker")));
    assert_eq!(tt["cgcloud:leader-arn"], t["cgcloud:leader-arn"]);
    for k in ["cgcloud:launch-state", "cgcloud:launcher", "cgcloud:ordinal", "cgcloud:scaling"] {
        assert!(tt.get(k).is_none(), "{k} on the template: {tt}");
    }
    // The leader's own role holds the scaler's policy, which names this template and no other.
    let policies: Vec<&str> = r["policies"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(policies.contains(&"cgcloud-scaler"), "{policies:?}");
    let scaler = cgcloud_core::policy::Policy::from_json(&r["scaler"].to_string()).unwrap();
    let launch = |tmpl: &str| {
        cgcloud_core::policy::Request::new(
            "ec2:RunInstances",
            &format!("arn:aws:ec2:{}:123456789012:launch-template/{tmpl}", e.region),
        )
    };
    assert!(scaler.allows(&launch(template)));
    assert!(!scaler.allows(&launch("lt-0123456789abcdef0")));
    assert_eq!(cgcloud_core::policy::writes_workstation_tags(&scaler), None);

    let listed = e.json(&["list-clusters"]);
    let s = &listed[0]["scaling"];
    assert_eq!(
        (s["min_workers"].as_u64(), s["max_workers"].as_u64(), s["market"].as_str()),
        (Some(1), Some(4), Some("spot"))
    );
    assert_eq!(s["instance_types"], serde_json::json!(["t3.small", "t3.medium"]));
    assert!(s["node_cpus"].as_u64().unwrap() >= 1 && s["node_memory_mib"].as_u64().unwrap() > 0, "{s}");

    // New bounds, without recreating; grow-cluster is not for it.
    e.ok(&["scale-cluster", "elastic", "-c", "e1", "--max-workers", "8", "--idle-time", "2m"]);
    assert_eq!(leader_tags(&e, "e1")["cgcloud:scaling"], "min=1 max=8 idle=120");
    let err = e.fails(&["scale-cluster", "elastic", "-c", "e1", "--min-workers", "9"]);
    assert!(err.contains("0 <= min <= max"), "{err}");
    let err = e.fails(&["grow-cluster", "elastic", "-c", "e1", "-s", "1", "--skip-ssh-check"]);
    assert!(err.contains("scale-cluster"), "{err}");

    // Terminating takes the template and the leader's role with it.
    e.ok(&["terminate-cluster", "elastic", "-c", "e1"]);
    let r = elastic_resources(&e, "moto_", "e1");
    assert_eq!((r["template"].as_str(), r["policies"].is_null()), (Some(""), true), "{r}");
    let left = e.json(&["cleanup", "--dry-run"]);
    assert!(left.as_array().unwrap().iter().all(|i| i["kind"] == "security-group"), "{left}");
}

#[test]
fn an_elastic_launch_killed_anywhere_leaves_nothing() {
    let mut e = elastic_env();
    let _agents = FakeAgents::start(&e);
    for point in ["after-leader", "after-template", "after-leader-policy"] {
        e.set_env("CGCLOUD_FAULT", point);
        let name = format!("k-{}", point.len());
        let err = e.fails(&["create-cluster", "elastic", "-c", &name, "--max-workers", "2", "--skip-ssh-check"]);
        assert!(err.contains(point), "{err}");
        let r = elastic_resources(&e, "moto_", &name);
        assert_eq!((r["template"].as_str(), r["policies"].is_null()), (Some(""), true), "{point}: {r}");
        assert!(
            nodes(&e, &name).iter().all(|b| b["state"] == "terminated" || b["state"] == "shutting-down"),
            "{point}"
        );
    }
}
