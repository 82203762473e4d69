//! The JSON contract (docs/json.md): what every command prints with `--output json`, as
//! golden snapshots against moto, so that a change to it is deliberate. Ids, addresses, times,
//! keys and the test's region are replaced by placeholders before comparing; accept a reviewed
//! change with `INSTA_UPDATE=always cargo test -p cgcloud --test json`.

#![allow(clippy::unwrap_used)] // tests may unwrap

use serde_json::Value;
use testkit::{FakeAgents, TestEnv};

/// The JSON text with everything that differs from run to run replaced.
fn normalize(e: &TestEnv, v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap();
    let rules: &[(&str, &str)] = &[
        (r"\b(i|ami|vol|snap|sg|subnet|vpc|r|eni)-[0-9a-f]{8,17}\b", "$1-ID"),
        (r"\bl-[0-9a-f]{16}\b", "l-ID"),
        (r"ip-\d+-\d+-\d+-\d+\.[a-z0-9.-]+", "ip-DNS"),
        (r"\bip-\d+-\d+-\d+-\d+\b", "ip-HOST"),
        (r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", "IP"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?", "TIME"),
        (r"__\d{4}-\d\d-\d\d__\d\d-\d\d-\d\d", "__STAMP"),
        (r"(ssh-ed25519|ssh-rsa) AAAA[A-Za-z0-9+/=]+", "$1 KEY"),
        (r"\b([0-9a-f]{2}:){15,31}[0-9a-f]{2}\b", "FINGERPRINT"),
        (r"\b[0-9a-f]{16}\b", "HASH"),
        (r"arn:aws:iam::\d{12}:", "arn:aws:iam::ACCOUNT:"),
    ];
    let mut out = text;
    for (pattern, with) in rules {
        out = regex::Regex::new(pattern).unwrap().replace_all(&out, *with).into_owned();
    }
    out.replace(&e.region, "REGION")
}

fn snap(e: &TestEnv, name: &str, args: &[&str]) -> Value {
    let v = e.json(args);
    insta::assert_snapshot!(name, normalize(e, &v));
    v
}

/// The error object on stderr, normalized, and the exit status.
fn error(e: &TestEnv, args: &[&str]) -> (Value, Option<i32>) {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = e.run(&all);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(out.stdout.is_empty(), "an error printed data: {}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let v: Value =
        serde_json::from_str(last).unwrap_or_else(|_| panic!("stderr does not end in a JSON error: {stderr}"));
    (v, out.status.code())
}

const BOX: &str = "generic-debian-bookworm-box";

#[test]
fn box_commands() {
    let mut e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    // IAM is global on moto: a namespace of its own keeps other tests' roles out of reset-security.
    e.set_env("CGCLOUD_NAMESPACE", "/json-boxes/");
    let key = e.keygen("id_ed25519", "ed25519");
    snap(&e, "register_key", &["register-key", key.with_extension("pub").to_str().unwrap()]);
    snap(&e, "register_key_again", &["register-key", key.with_extension("pub").to_str().unwrap()]);
    let created = snap(&e, "create", &["create", BOX, "-Q"]);
    let id = created["instance_id"].as_str().unwrap().to_owned();
    snap(&e, "list", &["list"]);
    snap(&e, "show", &["show", BOX]);
    snap(&e, "stop", &["stop", BOX]);
    snap(&e, "stop_again", &["stop", BOX]);
    snap(&e, "image", &["image", BOX]);
    snap(&e, "list_images", &["list-images", BOX]);
    snap(&e, "start", &["start", BOX, "-Q"]);
    snap(&e, "reboot", &["reboot", BOX]);
    // What the box's agent would have reported.
    e.boto3(&format!(
        "client('cloudwatch').put_metric_data(Namespace='CGCloud', MetricData=[{{'MetricName': 'MemUsage', 'Value': 42.5, 'Unit': 'Percent', 'Dimensions': [{{'Name': 'InstanceId', 'Value': '{id}'}}]}}])"
    ));
    let metrics = snap(&e, "metrics", &["metrics", BOX]);
    assert_eq!(metrics[0]["name"], "MemUsage", "{metrics}");
    snap(&e, "autostop", &["autostop", BOX, "90m", "--autodown"]);
    snap(&e, "autostop_off", &["autostop", BOX, "off"]);
    snap(&e, "update_instance_profile", &["update-instance-profile", BOX]);
    snap(&e, "terminate", &["terminate", BOX]);
    // -T: the box as it is once terminated.
    let gone = snap(&e, "create_terminated", &["create", BOX, "-Q", "-T"]);
    assert!(matches!(gone["state"].as_str(), Some("shutting-down" | "terminated")), "{gone}");
    let again = snap(&e, "recreate", &["recreate", BOX, "-Q"]);
    e.ok(&["terminate", BOX, "-I", again["instance_id"].as_str().unwrap()]);
    snap(&e, "delete_image", &["delete-image", BOX]);
    snap(&e, "cleanup", &["cleanup", "--dry-run"]);
    snap(&e, "reset_security", &["reset-security", "--dry-run"]);
    snap(&e, "delete_key", &["delete-key", "__me__"]);
}

/// Puts an `ssh` and an `rsync` first on PATH that answer as the real ones would on a node (a
/// line on stdout, one on stderr), so that ssh-cluster and rsync-cluster run without a box.
fn fake_ssh_and_rsync(e: &mut TestEnv) {
    let tools = e.home.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    for (tool, says) in [("ssh", "hello"), ("rsync", "sent 1 file")] {
        let path = tools.join(tool);
        std::fs::write(&path, format!("#!/bin/sh\necho '{says}'\necho 'note from {tool}' >&2\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    e.set_env("PATH", &format!("{}:{}", tools.display(), std::env::var("PATH").unwrap()));
}

#[test]
fn cluster_commands() {
    let mut e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    let key = e.keygen("id_ed25519", "ed25519");
    e.ok(&["register-key", key.with_extension("pub").to_str().unwrap()]);
    e.ok(&["create", "generic-cluster-box", "-Q"]);
    e.ok(&["stop", "generic-cluster-box"]);
    e.ok(&["image", "generic-cluster-box"]);
    e.ok(&["terminate", "generic-cluster-box"]);
    let _agents = FakeAgents::start(&e);
    snap(&e, "create_cluster", &["create-cluster", "generic", "-s", "2", "-c", "j", "--skip-ssh-check"]);
    snap(&e, "grow_cluster", &["grow-cluster", "generic", "-c", "j", "-s", "1", "--skip-ssh-check"]);
    snap(&e, "list_clusters", &["list-clusters"]);
    // Nodes publish their host keys when configured (the fake agents do not): one for all here.
    let host = std::fs::read_to_string(e.keygen("host", "ed25519").with_extension("pub")).unwrap();
    let host: Vec<&str> = host.split_whitespace().take(2).collect();
    e.boto3(&format!(
        "ec2 = client('ec2')\n\
         ids = [i['InstanceId'] for r in ec2.describe_instances(Filters=[{{'Name': 'tag:cgcloud:cluster', 'Values': ['j']}}])['Reservations'] for i in r['Instances']]\n\
         ec2.create_tags(Resources=ids, Tags=[{{'Key': 'cgcloud:host-key', 'Value': '{}'}}])",
        host.join(" ")
    ));
    fake_ssh_and_rsync(&mut e);
    snap(&e, "ssh_cluster", &["ssh-cluster", "generic", "-c", "j", "--", "echo", "hello"]);
    snap(&e, "rsync_cluster", &["rsync-cluster", "generic", "-c", "j", "--", "-a", "x", ":x"]);
    // A command that fails on the nodes: every node's result on stdout, the error kind
    // `remote-command` on stderr, exit status 1.
    let failing = e.home.path().join("failing");
    std::fs::create_dir_all(&failing).unwrap();
    std::fs::write(failing.join("ssh"), "#!/bin/sh\necho 'no such file' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(failing.join("ssh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = e.cmd();
    c.env("PATH", format!("{}:{}", failing.display(), std::env::var("PATH").unwrap()));
    let out = c.args(["--output", "json", "ssh-cluster", "generic", "-c", "j", "--", "false"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(results.as_array().unwrap().iter().all(|r| r["exit_status"] == 3), "{results}");
    let err: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()).unwrap();
    assert_eq!(err["error"]["kind"], "remote-command", "{err}");
    snap(&e, "stop_cluster", &["stop-cluster", "generic", "-c", "j"]);
    snap(&e, "start_cluster", &["start-cluster", "generic", "-c", "j", "-Q"]);
    snap(&e, "terminate_cluster", &["terminate-cluster", "generic", "-c", "j"]);
}

#[test]
fn roles_and_jenkins() {
    let e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    let roles = snap(&e, "list_roles", &["list-roles"]);
    assert!(roles.as_array().unwrap().iter().any(|r| r["name"] == "jenkins-master"), "{roles}");
    snap(&e, "list_options", &["list-options", "jenkins-master"]);
    let key = e.keygen("id_ed25519", "ed25519");
    e.ok(&["register-key", key.with_extension("pub").to_str().unwrap()]);
    // A master on moto is never provisioned: its key pair is registered by hand here.
    let master_key = e.keygen("master", "rsa");
    e.ok(&["register-key", master_key.with_extension("pub").to_str().unwrap(), "-k", "jenkins@moto_jenkins-master"]);
    e.ok(&["create", "jenkins-master", "-Q"]);
    e.ok(&["create", "jenkins-agent-debian-trixie", "-Q"]);
    e.ok(&["stop", "jenkins-agent-debian-trixie"]);
    e.ok(&["image", "jenkins-agent-debian-trixie"]);
    snap(&e, "register_agents_dry_run", &["register-agents", "--dry-run", "--spot-bid", "0.05"]);
}

/// doctor's JSON: the checks it makes and the fields of each, whatever this machine's answers
/// (those are asserted in api.rs's `doctor_says_what_a_first_run_lacks`).
#[test]
fn doctor_checks() {
    let e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    let out = e.run(&["--output", "json", "doctor"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shape: Vec<Value> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let fields: Vec<&String> = c.as_object().unwrap().keys().collect();
            assert!(matches!(c["status"].as_str(), Some("ok" | "warn" | "fail")), "{c}");
            serde_json::json!({"check": c["check"], "fields": fields})
        })
        .collect();
    insta::assert_snapshot!("doctor", serde_json::to_string_pretty(&shape).unwrap());
}

#[test]
fn errors_have_a_stable_kind() {
    let e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    let kinds: Vec<(Vec<&str>, &str, i32)> = vec![
        (vec!["show", "no-such-role"], "not-found", 1),
        (vec!["show", BOX], "not-found", 1),
        (vec!["create", BOX, "-O", "x=1"], "invalid-input", 1),
        (vec!["-n", "/Bad Namespace/", "list"], "invalid-input", 1),
        (vec!["create"], "usage", 2),
        (vec!["frobnicate"], "usage", 2),
        (vec!["register-key", "/nonexistent.pub"], "failed", 1),
    ];
    for (args, kind, code) in kinds {
        let (v, status) = error(&e, &args);
        assert_eq!(v["error"]["kind"], kind, "{args:?}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(status, Some(code), "{args:?}");
    }
    // Two boxes of one role and no ordinal: ambiguous, with the candidates in the message.
    let key = e.keygen("id_ed25519", "ed25519");
    e.ok(&["register-key", key.with_extension("pub").to_str().unwrap()]);
    e.ok(&["create", BOX, "-Q"]);
    e.ok(&["create", BOX, "-Q"]);
    let (v, _) = error(&e, &["show", BOX]);
    assert_eq!(v["error"]["kind"], "ambiguous", "{v}");
    // The other kinds, each from the situation that makes it.
    let kind_of = |mut c: std::process::Command, args: &[&str]| -> Value {
        let out = c.args(["--output", "json"]).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default())
            .unwrap_or_else(|_| panic!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let mut c = e.cmd();
    c.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
    assert_eq!(kind_of(c, &["list"])["error"]["kind"], "credentials");
    let mut c = e.cmd();
    c.env_remove("AWS_REGION").env_remove("AWS_DEFAULT_REGION");
    assert_eq!(kind_of(c, &["list"])["error"]["kind"], "no-region");
    let plugins = e.home.path().join("broken-plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("broken.toml"), "name = \"broken\"\ndescription = [\n").unwrap();
    let mut c = e.cmd();
    c.env("CGCLOUD_PLUGINS", &plugins);
    assert_eq!(kind_of(c, &["list-roles"])["error"]["kind"], "role");
    assert_eq!(kind_of(e.cmd(), &["create", BOX, "--ssh-timeout", "0"])["error"]["kind"], "timeout");
    // A request AWS refuses, as an account without the permission gets it.
    let proxy = testkit::fault::FaultProxy::start(&e.moto_endpoint);
    proxy.set_rules(vec![testkit::fault::Rule::always(
        "DescribeInstances",
        testkit::fault::Fault::error(403, "UnauthorizedOperation"),
    )]);
    let mut c = e.cmd();
    c.env("AWS_ENDPOINT_URL", &proxy.endpoint);
    let v = kind_of(c, &["list"]);
    assert_eq!(v["error"]["kind"], "aws", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("UnauthorizedOperation"), "{v}");
    let mut c = e.cmd();
    c.env("PATH", "/nonexistent");
    let v = kind_of(c, &["create", BOX]);
    assert_eq!(v["error"]["kind"], "missing-program", "{v}");
    let mut unreachable = e.cmd();
    unreachable.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9").args(["--output", "json", "list"]);
    let out = unreachable.output().unwrap();
    let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap()).unwrap();
    assert_eq!(v["error"]["kind"], "unreachable", "{v}");
    assert!(v["error"]["hint"].as_str().unwrap().contains("cgcloud local up"), "{v}");
}
