//! End-to-end tests on the local cloud that share it: they run at the same time (as many as
//! the test harness runs at once), each as a user with a namespace and key pair of its own
//! (`shared_local_cloud`), as teammates share an AWS account. Each looks only at its own
//! namespace; what it leaves there is terminated when its turn ends. Like `local.rs`, they need
//! root and are run by `.ci/run` with `--ignored`.

#![allow(clippy::unwrap_used)] // tests may unwrap

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;

use common::*;

#[test]
#[ignore = "needs root and the local cloud; run by .ci/run with --include-ignored"]
fn clusters_end_to_end() {
    let (_one, u) = shared_local_cloud("clusters");
    u.ok(&["create", "-I", "-T", "generic-cluster-box"]);

    // A leader and 4 workers, each with a persistent volume; --share reaches every node's
    // ~/shared (the generic type has no shared directory), through the ssh --ssh-opts makes.
    let share = u.home.path().join("to-share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(share.join("sub/hello"), "from the workstation\n").unwrap();
    let created = u.run(&[
        "create-cluster",
        "generic",
        "-s",
        "4",
        "-c",
        "e2e",
        "-e",
        "1",
        "-S",
        &format!("{}/", share.display()),
        "--ssh-opts=-v",
    ]);
    let said = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{said}");
    assert!(said.contains("debug1:") && said.contains("copied") && said.contains("on 5 node(s)"), "{said}");
    let shared = on_nodes(&u, "generic", "e2e", "cat shared/sub/hello");
    assert_eq!(shared.matches("] from the workstation").count(), 5, "{shared}");
    let answers = u.ok(&["ssh-cluster", "generic", "-c", "e2e", "--parallel", "--", "hostname"]);
    let hosts: std::collections::BTreeSet<&str> = answers.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(hosts.len(), 5, "{answers}");
    // Every node knows the leader and all members, and has its volume.
    let leader_ip = u.json(&["show", "generic-leader", "-c", "e2e"])["private_ip"].as_str().unwrap().to_owned();
    let check = u.ok(&[
        "ssh-cluster", "generic", "-c", "e2e", "-P", "--",
        "getent hosts cluster-leader | cut -d' ' -f1; grep -c cluster-node- /etc/hosts; findmnt -n -o SOURCE /mnt/persistent; sudo sh -c 'hostname > /mnt/persistent/owner'",
    ]);
    assert_eq!(check.matches(&format!("] {leader_ip}")).count(), 5, "{check}");
    assert_eq!(check.matches("] 5\n").count(), 5, "{check}");
    assert_eq!(check.matches("] /dev/xvdf").count(), 5, "{check}");
    // The workers took the members from the leader's list, served on a privileged port that a
    // user's job on the leader cannot take.
    let served = on_nodes(
        &u,
        "generic",
        "e2e",
        "curl -s -o /dev/null -w '%{http_code}\\n' http://cluster-leader:710/v1/members",
    );
    assert_eq!(served.matches("] 200\n").count(), 5, "{served}");
    let squat =
        "sudo runuser -u nobody -- python3 -c \"import socket; socket.socket().bind(('', 710))\" 2>&1 | tail -1";
    let said = u.ok(&["ssh", "generic-leader", "-c", "e2e", "--", squat]);
    assert!(said.contains("PermissionError"), "nobody bound the member list's port: {said}");
    // No set-id program or device node on a volume counts (another box could have had it).
    let options = on_nodes(
        &u,
        "generic",
        "e2e",
        "findmnt -n -o OPTIONS /mnt/persistent | tr ',' '\\n' | grep -cxE 'nosuid|nodev'",
    );
    assert_eq!(options.matches("] 2\n").count(), 5, "{options}");
    // Each node made its own host key (launched together, they share their user data, which
    // carries none); ssh-cluster verified every one against the key the node published.
    let listed = u.json(&["list"]);
    let keys: std::collections::BTreeSet<&str> =
        listed.as_array().unwrap().iter().filter_map(|b| b["host_key"].as_str()).collect();
    assert_eq!(keys.len(), 5, "{listed}");
    let seeds =
        on_nodes(&u, "generic", "e2e", "sudo grep -c 'PRIVATE KEY' /var/lib/cloud/seed/nocloud/user-data || true");
    assert_eq!(seeds.matches("] 0\n").count(), 5, "{seeds}");
    // A failing command on any node makes ssh-cluster fail.
    assert_ne!(
        u.run(&["ssh-cluster", "generic", "-c", "e2e", "--", "test -f /etc/cgcloud/no-such-file"]).status.code(),
        Some(0)
    );

    // Growing adds ordinals 5 and 6, with volumes too; everyone learns about them. Their agents
    // take --metrics and --agent-interval from their tags (their agent.json is the image's).
    u.ok(&["grow-cluster", "generic", "-c", "e2e", "-s", "2", "--metrics", "--agent-interval", "7"]);
    let start = std::time::Instant::now();
    loop {
        let m = u.run(&["--output", "json", "metrics", "generic-worker", "-c", "e2e", "-o", "-1"]);
        let v: Value = serde_json::from_slice(&m.stdout).unwrap_or(Value::Null);
        if v.as_array().is_some_and(|a| a.iter().any(|x| x["name"] == "MemUsage")) {
            break;
        }
        assert!(start.elapsed().as_secs() < 120, "no metrics from a worker grown with --metrics: {v}");
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    let told = on_nodes(
        &u,
        "generic",
        "e2e",
        "sudo journalctl -u cgcloud-agent --no-pager | grep -c 'launched with --agent-interval' || true",
    );
    assert_eq!(told.matches("] 0\n").count(), 5, "only the grown workers: {told}");
    let mut ordinals: Vec<u64> =
        u.json(&["list"]).as_array().unwrap().iter().filter_map(|b| b["ordinal"].as_u64()).collect();
    ordinals.sort();
    assert_eq!(ordinals, vec![0, 1, 2, 3, 4, 5, 6]);
    let members = on_nodes(
        &u,
        "generic",
        "e2e",
        "sudo sh -c 'hostname > /mnt/persistent/owner'; grep -c cluster-node- /etc/hosts",
    );
    assert_eq!(members.matches("] 7\n").count(), 7, "{members}");
    // ... and the leader's ~/shared.
    let shared = on_nodes(&u, "generic", "e2e", "cat shared/sub/hello");
    assert_eq!(shared.matches("] from the workstation").count(), 7, "{shared}");

    // After a stop/start every node has its persistent volume mounted again, before the
    // services that keep data there (the storage unit mounts it; its fstab entry is nofail).
    let remounted = power_cycle(
        &u,
        "generic",
        "e2e",
        "systemctl is-active cgcloud-storage && test \"$(cat /mnt/persistent/owner)\" = \"$(hostname)\" && echo remounted",
    );
    assert_eq!(remounted.matches("remounted").count(), 7, "{remounted}");

    // Terminating leaves nothing but the persistent volumes; re-creating re-attaches them.
    const OWNER: &str = "echo $(cat /etc/cgcloud/node | grep ordinal) $(cat /mnt/persistent/owner)";
    let owners = on_nodes(&u, "generic", "e2e", OWNER);
    u.ok(&["terminate-cluster", "generic", "-c", "e2e"]);
    assert!(u.json(&["list"]).as_array().unwrap().is_empty());
    let left = u.json(&["cleanup", "--dry-run"]);
    assert!(left.as_array().unwrap().iter().all(|i| i["kind"] == "security-group"), "{left}");
    u.ok(&["create-cluster", "generic", "-s", "6", "-c", "e2e", "-e", "1"]);
    let again = on_nodes(&u, "generic", "e2e", OWNER);
    // Each ordinal finds the data its predecessor wrote (the owner is the old host name).
    let pairs = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines().filter_map(|l| l.split_once("] ").map(|(_, rest)| rest.to_owned())).collect()
    };
    assert_eq!(pairs(&owners), pairs(&again), "before:\n{owners}\nafter:\n{again}");
    u.ok(&["terminate-cluster", "generic", "-c", "e2e"]);

    // Autostop, turned on later: the leader finds the cluster idle and stops every node,
    // workers first; ssh-cluster's JSON has one object per node before that.
    u.ok(&["create-cluster", "generic", "-s", "2", "-c", "idle"]);
    let per_node = u.json(&["ssh-cluster", "generic", "-c", "idle", "--parallel", "--", "hostname; echo err >&2"]);
    let per_node = per_node.as_array().unwrap();
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node
        .iter()
        .all(|n| n["exit_status"] == 0 && n["stderr"] == "err\n" && n["stdout"].as_str().unwrap().starts_with("ip-")));
    assert_eq!(per_node.iter().map(|n| n["node"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);

    // rsync-cluster copies to every node (':' is each node's home); -L leaves the leader out,
    // as ssh-cluster -L does; -e passes options to the ssh that rsync runs (-v: its debug lines).
    let payload = u.home.path().join("payload.txt");
    std::fs::write(&payload, "to every node\n").unwrap();
    let workers_only = u.home.path().join("workers.txt");
    std::fs::write(&workers_only, "to the workers\n").unwrap();
    u.ok(&["rsync-cluster", "generic", "-c", "idle", "--", payload.to_str().unwrap(), ":"]);
    let verbose = u.run(&[
        "rsync-cluster",
        "generic",
        "-c",
        "idle",
        "-L",
        "--ssh-opts=-v",
        "--",
        workers_only.to_str().unwrap(),
        ":",
    ]);
    let said = String::from_utf8_lossy(&verbose.stderr);
    assert!(verbose.status.success() && said.contains("debug1:"), "rsync-cluster -e did not reach ssh:\n{said}");
    let seen = on_nodes(&u, "generic", "idle", "cat payload.txt; cat workers.txt 2>/dev/null || echo none");
    assert_eq!(seen.matches("] to every node").count(), 3, "{seen}");
    assert_eq!(seen.matches("] to the workers").count(), 2, "{seen}");
    assert_eq!(seen.matches("] none").count(), 1, "only the leader lacks the workers' file:\n{seen}");
    let skipped = u.json(&["ssh-cluster", "generic", "-c", "idle", "-L", "--", "hostname"]);
    let ran_on: Vec<u64> = skipped.as_array().unwrap().iter().map(|n| n["node"].as_u64().unwrap()).collect();
    assert_eq!(ran_on, [1, 2], "ssh-cluster -L ran on {ran_on:?}");
    // ssh -a logs in as the image's admin user, -l as a named one; rsync takes both too.
    let admin = u.json(&["show", "generic-leader", "-c", "idle"])["admin_user"].as_str().unwrap().to_owned();
    assert_eq!(u.ok(&["ssh", "generic-leader", "-c", "idle", "-a", "--", "whoami"]).trim(), admin);
    assert_eq!(u.ok(&["ssh", "generic-leader", "-c", "idle", "-l", &admin, "--", "whoami"]).trim(), admin);
    let back = u.home.path().join("back.txt");
    u.ok(&["rsync", "generic-leader", "-c", "idle", "-l", &admin, "--", ":payload.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "to every node\n");
    let stranger = u.run(&["ssh", "generic-leader", "-c", "idle", "-l", "nobody", "--", "true"]);
    assert!(!stranger.status.success(), "a login as nobody worked");

    u.ok(&["autostop", "generic", "-c", "idle", "10s"]);
    let took = wait_cluster_stopped(&u, "generic", "idle", 3);
    eprintln!("an idle 3-node cluster with autostop 10s stopped itself {took:.0} s after it was turned on");
    u.ok(&["terminate-cluster", "generic", "-c", "idle"]);
}

/// Autostop of standalone boxes: an idle box stops itself; one with an open SSH session does
/// not, until the session ends; `--autodown` terminates.
#[test]
#[ignore = "needs root and the local cloud; run by .ci/run with --include-ignored"]
fn autostop_end_to_end() {
    let (_one, u) = shared_local_cloud("autostop");
    let id = |b: &Value| b["instance_id"].as_str().unwrap().to_owned();
    // An SSH session held open on the busy box (its own connection: no shared master that
    // would outlive it); autostop is turned on once the session is there (another test may
    // share the cores: the session could take longer to open than the idle period).
    let busy = id(&u.json(&["create", DEBIAN]));
    let no_master = |c: &mut Command| {
        let opts = format!(
            "-F /dev/null -i {} -o IdentitiesOnly=yes -o ControlMaster=no -o ControlPath=none",
            u.key.display()
        );
        c.env("CGCLOUD_SSH_OPTS", opts);
    };
    let mut held = u.cmd();
    no_master(&mut held);
    let mut session = held.args(["ssh", DEBIAN, "-I", &busy, "--", "sleep 600"]).spawn().unwrap();
    let started = std::time::Instant::now();
    while u.run(&["ssh", DEBIAN, "-I", &busy, "--", "pgrep -fx 'sleep 600'"]).status.code() != Some(0) {
        assert!(started.elapsed().as_secs() < 120, "the session on the busy box did not open");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    u.ok(&["autostop", DEBIAN, "-I", &busy, "10s"]);
    let idle = id(&u.json(&["create", DEBIAN, "--autostop", "10s"]));
    let down = id(&u.json(&["create", DEBIAN, "--autostop", "10s", "--autodown"]));
    let state = |i: &str| {
        u.json(&["list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["instance_id"] == i)
            .map(|b| b["state"].as_str().unwrap().to_owned())
    };
    let started = std::time::Instant::now();
    while state(&idle).as_deref() != Some("stopped") || state(&down).is_some() {
        assert!(started.elapsed().as_secs() < 180, "idle boxes did not act: {:?} {:?}", state(&idle), state(&down));
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    eprintln!(
        "idle boxes with autostop 10s stopped / terminated themselves after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // Well past the idle period, the box with a session is still up, and says why.
    std::thread::sleep(std::time::Duration::from_secs(15));
    assert_eq!(state(&busy).as_deref(), Some("running"), "a box with an open SSH session stopped");
    let mut look = u.cmd();
    no_master(&mut look);
    let log = look
        .args([
            "ssh",
            DEBIAN,
            "-I",
            &busy,
            "--",
            "sudo journalctl -u cgcloud-agent --no-pager | grep autostop | tail -3",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("busy (") && log.contains("SSH connection"), "{log}");
    session.kill().unwrap();
    let _ = session.wait();
    // Once the session is gone, the box goes idle and stops.
    let started = std::time::Instant::now();
    while state(&busy).as_deref() != Some("stopped") {
        assert!(started.elapsed().as_secs() < 120, "the box did not stop once its session ended");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    eprintln!("the busy box stopped {:.0} s after its session ended", started.elapsed().as_secs_f64());
    for b in [&idle, &busy] {
        u.ok(&["terminate", DEBIAN, "-I", b]);
    }
}

/// The standalone master's JSON status, read on the leader: its UI port is open to the
/// cluster's own group only, as on EC2 (the local cloud enforces security groups).
fn master_status(u: &User, cluster: &str, ip: &str) -> Option<Value> {
    let curl = format!("curl -sf --max-time 5 http://{ip}:8080/json/");
    let out = u.cmd().args(["ssh", "spark-leader", "-c", cluster, "--", &curl]).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The master's web UI through the role's forwards, on a loopback port.
fn check_web_ui_tunnel(u: &User, cluster: &str, workers: u64) {
    let alive = |p: &Value| p["aliveworkers"].as_u64();
    let page = web_ui_through_tunnel(u, cluster, 8080, "/json/", |p| alive(p).is_some());
    assert_eq!(alive(&page), Some(workers), "the master's web UI through the tunnel: {page}");
}

/// Waits (up to 240 s) until every one of the `n` nodes of cluster `name` of `cluster_type` is
/// stopped, as autostop does it; the seconds it took. On a timeout, the leader's last autostop
/// lines say why.
fn wait_cluster_stopped(u: &User, cluster_type: &str, name: &str, n: usize) -> f64 {
    let started = std::time::Instant::now();
    loop {
        let states: Vec<String> = u
            .json(&["list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["cluster"] == name)
            .map(|b| b["state"].as_str().unwrap().to_owned())
            .collect();
        if states.len() == n && states.iter().all(|s| s == "stopped") {
            return started.elapsed().as_secs_f64();
        }
        if started.elapsed().as_secs() > 240 {
            let leader = format!("{cluster_type}-leader");
            let log = u.run(&[
                "ssh",
                &leader,
                "-c",
                name,
                "--",
                "sudo journalctl -u cgcloud-agent --no-pager | grep autostop | tail -3",
            ]);
            panic!("the idle cluster {name} did not stop itself: {states:?}\n{}", String::from_utf8_lossy(&log.stdout));
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
}

/// stop-cluster, start-cluster (which waits for SSH), then `script` on every node in parallel;
/// its output.
fn power_cycle(u: &User, cluster_type: &str, name: &str, script: &str) -> String {
    u.ok(&["stop-cluster", cluster_type, "-c", name]);
    u.ok(&["start-cluster", cluster_type, "-c", name]);
    u.ok(&["ssh-cluster", cluster_type, "-c", name, "-P", "--", script])
}

fn wait_alive_workers(u: &User, cluster: &str, ip: &str, n: u64, timeout_s: u64) -> f64 {
    let start = std::time::Instant::now();
    loop {
        if master_status(u, cluster, ip).and_then(|s| s["aliveworkers"].as_u64()) == Some(n) {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed().as_secs() < timeout_s,
            "the master did not report {n} alive workers within {timeout_s} s: {:?}",
            master_status(u, cluster, ip)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

const WORDCOUNT: &str = r#"
import socket
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("wordcount").getOrCreate()
sc = spark.sparkContext
text = ["the quick brown fox", "jumps over the lazy dog", "the end"] * 1000
counts = dict(sc.parallelize(text, 8).flatMap(lambda l: l.split()).map(lambda w: (w, 1)).reduceByKey(lambda a, b: a + b).collect())
hosts = sorted(set(sc.parallelize(range(64), 16).map(lambda _: socket.gethostname()).collect()))
print("COUNT the", counts["the"], "fox", counts["fox"])
print("HOSTS", " ".join(hosts))
spark.stop()
"#;

/// Runs the PySpark word count on the leader of cluster `cluster` and checks its result and
/// that its executors ran on exactly the cluster's workers.
fn check_word_count(u: &User, cluster: &str, leader_ip: &str) {
    let script = format!("cat > /tmp/wc.py <<'EOF'\n{WORDCOUNT}\nEOF\n/opt/sparkbox/spark/bin/spark-submit --master spark://{leader_ip}:7077 /tmp/wc.py 2>/tmp/wc.log");
    let out = u.ok(&["ssh", "spark-leader", "-c", cluster, "--", &script]);
    assert!(out.contains("COUNT the 3000 fox 1000"), "{out}");
    let hosts: Vec<String> =
        out.lines().find(|l| l.starts_with("HOSTS")).unwrap().split_whitespace().skip(1).map(str::to_owned).collect();
    let mut workers: Vec<String> = u
        .json(&["list", "spark-worker", "-c", cluster])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["private_dns"].as_str().unwrap().split('.').next().unwrap().to_owned())
        .collect();
    workers.sort();
    assert_eq!(hosts, workers, "executors ran on {hosts:?}, the workers are {workers:?}");
}

#[test]
#[ignore = "needs root and the local cloud; run by .ci/run with --include-ignored"]
fn spark_end_to_end() {
    let (_one, u) = shared_local_cloud("spark");
    // Spark from PyPI, without HDFS (spark_apache_end_to_end covers the Apache artifacts).
    u.ok(&["create", "-I", "-T", "spark-box", "-O", "spark_source=pypi", "-O", "hdfs=false"]);
    // m5d.large has one instance-store disk: without a persistent volume, Spark's directories
    // go there.
    u.ok(&["create-cluster", "spark", "-s", "2", "-c", "sp", "-t", "m5d.large"]);
    let leader = u.json(&["show", "spark-leader", "-c", "sp"]);
    let ip = leader["private_ip"].as_str().unwrap().to_owned();
    let t = wait_alive_workers(&u, "sp", &ip, 2, 180);
    eprintln!("2 workers registered {t:.1} s after create-cluster returned");
    let mounts = u.ok(&["ssh-cluster", "spark", "-c", "sp", "--", "findmnt -n -o SOURCE,FSTYPE /mnt/ephemeral"]);
    let on_store = mounts.lines().filter(|l| l.contains("NVMe_Instance_Storage") && l.contains("ext4")).count();
    assert_eq!(on_store, 3, "every node mounts its instance store: {mounts}");
    check_word_count(&u, "sp", &ip);
    check_web_ui_tunnel(&u, "sp", 2);
    let apps = u.ok(&["ssh", "spark-worker", "-c", "sp", "-o", "0", "--", "ls /mnt/ephemeral/spark/work"]);
    assert!(apps.contains("app-"), "the executors' work directories are on the instance store: {apps}");

    // A reboot keeps the instance store's data; a stop/start gives blank disks, which are
    // formatted again, and the workers come back.
    let marker = "echo kept > /mnt/ephemeral/spark/marker && sync";
    u.ok(&["ssh", "spark-worker", "-c", "sp", "-o", "0", "--", marker]);
    let worker0 = ["spark-worker", "-c", "sp", "-o", "0"];
    let boot_id = |u: &User| {
        let out = u.run(&[&["ssh"][..], &worker0, &["--", "cat /proc/sys/kernel/random/boot_id"]].concat());
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let before = boot_id(&u).unwrap();
    u.ok(&[&["reboot"][..], &worker0].concat());
    let start = std::time::Instant::now();
    while boot_id(&u).is_none_or(|b| b == before) {
        assert!(start.elapsed().as_secs() < 120, "the worker did not come back from its reboot");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let kept = u.ok(&["ssh", "spark-worker", "-c", "sp", "-o", "0", "--", "cat /mnt/ephemeral/spark/marker"]);
    assert_eq!(kept.trim(), "kept");
    wait_alive_workers(&u, "sp", &ip, 2, 180);
    let after = power_cycle(
        &u,
        "spark",
        "sp",
        "findmnt -n -o FSTYPE /mnt/ephemeral && test ! -e /mnt/ephemeral/spark/marker && echo blank",
    );
    assert_eq!(after.matches("blank").count(), 3, "{after}");
    wait_alive_workers(&u, "sp", &ip, 2, 240);
    check_word_count(&u, "sp", &ip);

    // A new worker registers with the master.
    u.ok(&["grow-cluster", "spark", "-c", "sp", "-s", "1"]);
    wait_alive_workers(&u, "sp", &ip, 3, 180);

    // sparkbox cannot become root: it swaps its work directory for a symlink to a directory of
    // root's and kills its worker; systemd restarts the worker, and nothing that runs as root
    // follows the link (until issue 26, a `+install -d -o sparkbox` in the unit chowned it).
    let attack = "w=/mnt/ephemeral/spark/work; rm -rf $w && ln -s /usr/local/sbin $w && \
                  kill -9 $(systemctl show -p MainPID --value spark-worker)";
    u.ok(&["ssh", "spark-worker", "-c", "sp", "-o", "0", "--", attack]);
    let restarted = "for i in $(seq 120); do n=$(systemctl show -p NRestarts --value spark-worker); \
                     [ \"$n\" -ge 1 ] && break; sleep 1; done; echo restarts=$n; stat -c 'owner=%U' /usr/local/sbin";
    let seen = u.ok(&["ssh", "spark-worker", "-c", "sp", "-o", "0", "-a", "--", restarted]);
    assert!(!seen.contains("restarts=0") && seen.contains("restarts="), "the worker was not restarted: {seen}");
    assert!(seen.contains("owner=root"), "sparkbox was given a directory of root's: {seen}");

    u.ok(&["terminate-cluster", "spark", "-c", "sp"]);
    u.ok(&["delete-image", "spark-box"]);
}

/// The single version `V` of the entries `<prefix>V` in `dir`, if there is one.
fn version_in(dir: &std::path::Path, prefix: &str, file: impl Fn(&str) -> String) -> Option<String> {
    testkit::mirror_release(dir, prefix, file).unwrap_or_else(|e| panic!("{e}"))
}

/// A PySpark job on HDFS: its input read through an `hdfs://` URL, its result written to a
/// path without a scheme, which Spark resolves on the cluster's default file system, HDFS.
const HDFS_WORDCOUNT: &str = r#"
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("hdfs-wordcount").getOrCreate()
sc = spark.sparkContext
lines = sc.textFile(sys.argv[1])
counts = lines.flatMap(lambda l: l.split()).map(lambda w: (w, 1)).reduceByKey(lambda a, b: a + b)
counts.map(lambda kv: "%s %d" % kv).coalesce(1).saveAsTextFile("/out/wc")
spark.stop()
"#;

/// Runs `script` on node `node` (e.g. `["spark-leader"]` or `["spark-worker", "-I", id]`) of
/// spark cluster `cluster`; its output.
fn on_node(u: &User, cluster: &str, node: &[&str], script: &str) -> String {
    let mut args = vec!["ssh", node[0], "-c", cluster];
    args.extend_from_slice(&node[1..]);
    args.extend(["--", script]);
    u.ok(&args)
}

/// Waits until the NameNode of `cluster` reports `n` live DataNodes and has left safe mode.
fn wait_live_datanodes(u: &User, cluster: &str, n: usize) {
    let wait = format!(
        "for i in $(seq 120); do hdfs dfsadmin -report -live 2>/dev/null | grep -q '^Live datanodes ({n})' && exec hdfs dfsadmin -safemode wait 2>/dev/null; sleep 2; done; hdfs dfsadmin -report; exit 1"
    );
    on_node(u, cluster, &["spark-leader"], &wait);
}

const DIGEST: &str = "set -e; hdfs dfs -ls -R / 2>/dev/null | awk '$1 !~ /^d/ {print $5, $8}' > /tmp/files; \
                      cat /tmp/files; hdfs dfs -cat $(cut -d' ' -f2 /tmp/files) 2>/dev/null | md5sum";

/// Every file in the HDFS of `cluster` with its size, and one MD5 over all their bytes, read
/// through HDFS on node `node` (reads every block of every file).
fn hdfs_digest(u: &User, cluster: &str, node: &[&str]) -> String {
    let out = on_node(u, cluster, node, DIGEST);
    assert!(out.lines().count() >= 3, "HDFS of {cluster} holds too few files:\n{out}");
    out
}

/// Waits (up to 3 minutes) until HDFS of `cluster`, read on its leader, is `want` again: after
/// a start or a reboot, DataNodes report their blocks a little after the NameNode counts them.
fn wait_digest(u: &User, cluster: &str, want: &str, what: &str) {
    let start = std::time::Instant::now();
    loop {
        let out = u.run(&["ssh", "spark-leader", "-c", cluster, "--", DIGEST]);
        let got = String::from_utf8_lossy(&out.stdout);
        if got == want {
            return;
        }
        assert!(start.elapsed().as_secs() < 180, "HDFS of {cluster} changed {what}: was\n{want}now\n{got}");
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
}

/// The cluster ID in the NameNode's metadata on the leader's persistent volume: a new one
/// would mean the NameNode was formatted again.
fn namenode_cluster_id(u: &User, cluster: &str) -> String {
    let id =
        on_node(u, cluster, &["spark-leader"], "sed -n 's/^clusterID=//p' /mnt/persistent/hdfs/name/current/VERSION");
    assert!(id.trim().starts_with("CID-"), "{id}");
    id.trim().to_owned()
}

/// A JSON page of a web UI on the leader of `cluster`, through the forwards the role declares
/// (`cgcloud ssh spark-leader --forward -- -N`), from the loopback port cgcloud prints.
fn web_ui_through_tunnel(u: &User, cluster: &str, port: u16, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    // One line per forward of the leader, in the role's order (the application UI's last).
    let f = Forwards::open(u, &["spark-leader", "-c", cluster], "(Spark application UI");
    assert!(f.said.contains("Spark master UI") && f.said.contains("HDFS NameNode UI"), "{}", f.said);
    assert!(!f.said.contains("worker UI"), "the workers' UI is not the leader's: {}", f.said);
    f.json(port, path, ready)
}

/// The live DataNodes the NameNode's web UI (its JMX page) reports, through the SSH tunnel.
fn namenode_ui_live(u: &User, cluster: &str, n: u64) -> Option<u64> {
    let path = "/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState";
    let live = |p: &Value| p["beans"][0]["NumLiveDataNodes"].as_u64();
    live(&web_ui_through_tunnel(u, cluster, 9870, path, |p| live(p) == Some(n)))
}

/// The instance ids of the workers of spark cluster `cluster`, oldest first.
fn spark_workers(u: &User, cluster: &str) -> Vec<String> {
    let list = u.json(&["list", "spark-worker", "-c", cluster]);
    list.as_array().unwrap().iter().map(|b| b["instance_id"].as_str().unwrap().to_owned()).collect()
}

/// Spark and HDFS from Apache-layout artifacts served from a mirror directory,
/// `CGCLOUD_APACHE_MIRROR_DIR`, made by `scripts/apache-mirror` (`.ci/run` does): Spark
/// repackaged from PyPI's pyspark, Hadoop assembled from its release jars on Maven Central.
/// What a user of the original did with HDFS (its scenarios 4 and 5, and more), on clusters
/// made from one baked image:
/// - on persistent volumes: the NameNode formatted once, every DataNode live, a PySpark job
///   from `hdfs://` to HDFS read back on another node, the NameNode's and Spark's web UIs
///   through SSH, every file kept across stop/start and across terminate and create-cluster of
///   the same name, grow-cluster adding a DataNode that takes blocks, and the loss of a worker
///   costing no file (HDFS copies its blocks again);
/// - on the instance store: blocks kept across a worker's reboot, and stop-cluster saying
///   that they do not survive a stop.
#[test]
#[ignore = "needs root, the local cloud and CGCLOUD_APACHE_MIRROR_DIR; run by .ci/run with --include-ignored"]
fn spark_apache_end_to_end() {
    let dir = PathBuf::from(std::env::var_os("CGCLOUD_APACHE_MIRROR_DIR").expect(
        "set CGCLOUD_APACHE_MIRROR_DIR to a directory made by `scripts/apache-mirror DIR` (.ci/run does this)",
    ));
    let spark = version_in(&dir.join("spark"), "spark-", |v| format!("spark-{v}-bin-hadoop3.tgz"))
        .unwrap_or_else(|| panic!("{} has no Spark release; run scripts/apache-mirror {0}", dir.display()));
    let hadoop = version_in(&dir.join("hadoop/common"), "hadoop-", |v| format!("hadoop-{v}.tar.gz"))
        .unwrap_or_else(|| panic!("{} has no Hadoop release; run scripts/apache-mirror {0}", dir.display()));
    eprintln!("Spark {spark} and Hadoop {hadoop} from {}", dir.display());

    let (_one, u) = shared_local_cloud("spark-apache");
    {
        let mirror = testkit::Mirror::serve(&dir).unwrap();
        let opts = [
            "spark_source=apache".to_owned(),
            format!("apache_mirror={}", mirror.url),
            format!("spark_version={spark}"),
            format!("hadoop_version={hadoop}"),
            // Two copies of each block, so that a worker can be lost; and a NameNode that
            // declares a silent DataNode dead after 2 x 5 s + 30 s instead of HDFS's 10.5
            // minutes, so that this test sees the lost blocks copied again.
            "replication=2".to_owned(),
            "heartbeat_recheck_ms=5000".to_owned(),
        ];
        let mut args = vec!["create", "-I", "-T", "spark-box"];
        for o in &opts {
            args.extend(["-O", o.as_str()]);
        }
        u.ok(&args);
        // The mirror stops here: the image must hold everything the nodes need.
    }

    // ---- on persistent volumes ----
    let create = ["create-cluster", "spark", "-s", "2", "-c", "ap", "-e", "1"];
    u.ok(&create);
    let ip = u.json(&["show", "spark-leader", "-c", "ap"])["private_ip"].as_str().unwrap().to_owned();
    wait_alive_workers(&u, "ap", &ip, 2, 180);
    wait_live_datanodes(&u, "ap", 2);
    let cluster_id = namenode_cluster_id(&u, "ap");
    // sparkbox reads its own services' logs.
    let formatted = on_node(
        &u,
        "ap",
        &["spark-leader"],
        "journalctl -q -u hdfs-namenode 2>/dev/null | grep -c 'has been successfully formatted' || true",
    );
    assert_eq!(formatted.trim(), "1", "the NameNode should be formatted exactly once");

    // Data: 50 MB in 16 MB blocks with its MD5, and a text for a PySpark job that reads it
    // from hdfs:// and writes to a path without a scheme (HDFS, the default file system).
    let put = "set -e; head -c 50000000 /dev/urandom > /tmp/data; md5sum < /tmp/data > /tmp/data.md5; \
               hdfs dfs -mkdir -p /data /in; \
               hdfs dfs -D dfs.blocksize=16777216 -put /tmp/data /data/random; hdfs dfs -put /tmp/data.md5 /data/random.md5; \
               for i in $(seq 500); do echo 'the quick brown fox jumps over the lazy dog the end'; done > /tmp/words.txt; \
               hdfs dfs -put /tmp/words.txt /in/words.txt";
    on_node(&u, "ap", &["spark-leader"], put);
    let job = format!(
        "cat > /tmp/hwc.py <<'EOF'\n{HDFS_WORDCOUNT}\nEOF\n/opt/sparkbox/spark/bin/spark-submit --master spark://{ip}:7077 /tmp/hwc.py hdfs://{ip}:8020/in/words.txt 2>/tmp/hwc.log || {{ tail -30 /tmp/hwc.log; exit 1; }}"
    );
    on_node(&u, "ap", &["spark-leader"], &job);
    let workers = spark_workers(&u, "ap");
    let result =
        on_node(&u, "ap", &["spark-worker", "-I", &workers[1]], "hdfs dfs -cat '/out/wc/part-*' 2>/dev/null | sort");
    for want in ["the 1500", "fox 500", "end 500"] {
        assert!(result.lines().any(|l| l == want), "'{want}' missing from the job's result on HDFS:\n{result}");
    }
    // The NameNode's metadata and the DataNodes' blocks are on the persistent volumes.
    let where_ = "findmnt -n -o TARGET -T /mnt/persistent/hdfs; ls /mnt/persistent/hdfs; \
                  find /mnt/persistent/hdfs -name 'blk_*' ! -name '*.meta' | wc -l";
    let placed = u.ok(&["ssh-cluster", "spark", "-c", "ap", "-P", "--", where_]);
    assert_eq!(placed.matches("] /mnt/persistent").count(), 3, "{placed}");
    assert_eq!(placed.matches("] name").count(), 1, "the NameNode's metadata on the leader's volume:\n{placed}");
    assert_eq!(placed.matches("] data").count(), 2, "the DataNodes' blocks on the workers' volumes:\n{placed}");
    let digest = hdfs_digest(&u, "ap", &["spark-leader"]);
    eprintln!("HDFS of ap:\n{digest}");

    // The web UIs, through SSH from here.
    assert_eq!(namenode_ui_live(&u, "ap", 2), Some(2), "the NameNode's web UI through the tunnel");
    check_web_ui_tunnel(&u, "ap", 2);

    // stop-cluster then start-cluster keeps every file, and the NameNode's format.
    u.ok(&["stop-cluster", "spark", "-c", "ap"]);
    u.ok(&["start-cluster", "spark", "-c", "ap"]);
    wait_live_datanodes(&u, "ap", 2);
    wait_digest(&u, "ap", &digest, "across stop-cluster and start-cluster");
    assert_eq!(namenode_cluster_id(&u, "ap"), cluster_id);

    // So do terminate-cluster and create-cluster of the same name (the volumes are kept).
    u.ok(&["terminate-cluster", "spark", "-c", "ap"]);
    u.ok(&create);
    let ip = u.json(&["show", "spark-leader", "-c", "ap"])["private_ip"].as_str().unwrap().to_owned();
    wait_alive_workers(&u, "ap", &ip, 2, 180);
    wait_live_datanodes(&u, "ap", 2);
    wait_digest(&u, "ap", &digest, "across terminate-cluster and create-cluster");
    assert_eq!(namenode_cluster_id(&u, "ap"), cluster_id, "the NameNode was formatted again");

    // grow-cluster: a third DataNode registers and takes blocks (a writer on a DataNode puts
    // the first copy of each block there).
    let before = spark_workers(&u, "ap");
    u.ok(&["grow-cluster", "spark", "-c", "ap", "-s", "1", "-e", "1"]);
    wait_live_datanodes(&u, "ap", 3);
    let new = spark_workers(&u, "ap").into_iter().find(|w| !before.contains(w)).expect("the new worker");
    let grown = "head -c 20000000 /dev/urandom > /tmp/grown && hdfs dfs -D dfs.blocksize=16777216 -put /tmp/grown /data/grown && \
                 find /mnt/persistent/hdfs/data -name 'blk_*' ! -name '*.meta' | wc -l";
    let blocks: u32 = on_node(&u, "ap", &["spark-worker", "-I", &new], grown).trim().parse().unwrap();
    assert!(blocks >= 2, "the new DataNode holds {blocks} blocks of the file written on it");
    let digest = hdfs_digest(&u, "ap", &["spark-leader"]);

    // The loss of a worker (3 workers, 2 copies of each block) loses no file: the NameNode
    // declares its DataNode dead and copies its blocks again from the other copies.
    u.ok(&["terminate", "spark-worker", "-I", &before[0]]);
    let healed = "for i in $(seq 90); do r=$(hdfs dfsadmin -report 2>/dev/null); f=$(hdfs fsck / 2>/dev/null); \
                  echo \"$r\" | grep -q '^Dead datanodes (1)' && echo \"$f\" | grep -q 'Status: HEALTHY' \
                  && echo \"$f\" | grep -Eq 'Under-replicated blocks:[[:space:]]+0 ' && { echo \"$f\" | grep -E 'Total blocks|replicated|replication|Status'; exit 0; }; \
                  sleep 2; done; echo \"$r\"; echo \"$f\"; exit 1";
    let fsck = on_node(&u, "ap", &["spark-leader"], healed);
    eprintln!("after the loss of a worker:\n{fsck}");
    assert!(fsck.contains("Average block replication:\t2.0"), "every block should have two copies again:\n{fsck}");
    wait_digest(&u, "ap", &digest, "with the loss of a worker");
    let md5 = "hdfs dfs -cat /data/random 2>/dev/null | md5sum; hdfs dfs -cat /data/random.md5 2>/dev/null";
    let sums = on_node(&u, "ap", &["spark-leader"], md5);
    let lines: Vec<&str> = sums.lines().collect();
    assert!(lines.len() == 2 && lines[0] == lines[1], "the 50 MB file is not what was written:\n{sums}");
    u.ok(&["terminate-cluster", "spark", "-c", "ap"]);

    // ---- on the instance store (m5d.large, no persistent volume) ----
    u.ok(&["create-cluster", "spark", "-s", "1", "-c", "is", "-t", "m5d.large"]);
    wait_live_datanodes(&u, "is", 1);
    let put = "set -e; head -c 20000000 /dev/urandom > /tmp/d; hdfs dfs -D dfs.replication=1 -put /tmp/d /d; hdfs dfs -put /tmp/d /d2";
    on_node(&u, "is", &["spark-leader"], put);
    let digest = hdfs_digest(&u, "is", &["spark-leader"]);
    let worker = spark_workers(&u, "is").remove(0);
    let on_store = on_node(
        &u,
        "is",
        &["spark-worker", "-I", &worker],
        "find /mnt/ephemeral/hdfs/data -name 'blk_*' ! -name '*.meta' | wc -l",
    );
    assert!(on_store.trim().parse::<u32>().unwrap() >= 2, "the blocks are on the instance store: {on_store}");
    let boot_id = |u: &User| {
        let out =
            u.run(&["ssh", "spark-worker", "-c", "is", "-I", &worker, "--", "cat /proc/sys/kernel/random/boot_id"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let booted = boot_id(&u).unwrap();
    u.ok(&["reboot", "spark-worker", "-c", "is", "-I", &worker]);
    let start = std::time::Instant::now();
    while boot_id(&u).is_none_or(|b| b == booted) {
        assert!(start.elapsed().as_secs() < 120, "the worker did not come back from its reboot");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    wait_live_datanodes(&u, "is", 1);
    wait_digest(&u, "is", &digest, "in a reboot of its worker (blocks on the instance store)");
    let stop = u.run(&["stop-cluster", "spark", "-c", "is"]);
    let said = String::from_utf8_lossy(&stop.stderr);
    assert!(stop.status.success(), "{said}");
    assert!(
        said.contains("data on the instance store does not survive a stop") && said.contains(&worker),
        "stop-cluster should say that the instance store's data is lost:\n{said}"
    );
    u.ok(&["terminate-cluster", "spark", "-c", "is"]);

    u.ok(&["delete-image", "spark-box"]);
}

/// The JSON contract (docs/json.md) of a command that needs the local cloud, as a golden file.
fn assert_json_shape(name: &str, v: &Value) {
    insta::assert_snapshot!(name, serde_json::to_string_pretty(&json_shape(v)).unwrap());
}

/// `command` on every node of cluster `name` of `cluster_type` at once (`ssh-cluster -P`): the
/// output, each line prefixed with its node.
fn on_nodes(u: &User, cluster_type: &str, name: &str, command: &str) -> String {
    u.ok(&["ssh-cluster", cluster_type, "-c", name, "-P", "--", command])
}

/// The idle Slurm nodes the leader of toil cluster `cluster` reports, once there are exactly
/// `n` nodes and all are idle (fails after `timeout_s`).
fn wait_idle_slurm_nodes(u: &User, cluster: &str, n: usize, timeout_s: u64) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let out = u.run(&["ssh", "toil-leader", "-c", cluster, "--", "sinfo -h -N -o '%N %t'"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let idle: Vec<String> =
            text.lines().filter(|l| l.ends_with(" idle")).map(|l| l.split(' ').next().unwrap().to_owned()).collect();
        if idle.len() == n && text.lines().count() == n {
            return idle;
        }
        assert!(
            start.elapsed().as_secs() < timeout_s,
            "cluster {cluster}: {n} idle nodes expected within {timeout_s} s, sinfo says:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Runs the hostnames workflow on the leader of `cluster` with `toil-run`; returns the host
/// names its jobs recorded.
fn toil_hostnames(u: &User, cluster: &str, jobs: usize, seconds: u32, out: &str) -> Vec<String> {
    let run = format!("toil-run /shared/wf/hostnames.py --jobs {jobs} --seconds {seconds} --out {out} && cat {out}");
    let text = u.ok(&["ssh", "toil-leader", "-c", cluster, "--", &run]);
    let names: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(names.len(), jobs, "{text}");
    names
}

#[test]
#[ignore = "needs root and the local cloud; run by .ci/run with --include-ignored"]
fn toil_end_to_end() {
    let (_one, u) = shared_local_cloud("toil");
    // toil-box is slurm-box plus Toil: this test covers both.
    u.ok(&["create", "-I", "-T", "toil-box"]);
    // --share goes to /shared once, through the leader, and every node sees it there.
    let share = u.home.path().join("inputs.txt");
    std::fs::write(&share, "shared input\n").unwrap();
    u.ok(&["create-cluster", "toil", "-s", "2", "-c", "t1", "-S", share.to_str().unwrap()]);
    // The leader has /shared as soon as the cluster is reported ready (e.g. for an rsync).
    u.ok(&["ssh", "toil-leader", "-c", "t1", "--", "mountpoint /shared"]);
    let input = on_nodes(
        &u,
        "toil",
        "t1",
        "for i in $(seq 120); do mountpoint -q /shared && break; sleep 1; done; cat /shared/inputs.txt; test -e shared || echo no-home-copy",
    );
    assert_eq!(input.matches("] shared input").count(), 3, "{input}");
    assert_eq!(input.matches("] no-home-copy").count(), 3, "{input}");
    let nodes = wait_idle_slurm_nodes(&u, "t1", 2, 120);
    // A job spans both workers.
    let ran = u.ok(&["ssh", "toil-leader", "-c", "t1", "--", "srun -N2 hostname | sort"]);
    let hosts: Vec<&str> = ran.lines().collect();
    assert_eq!(hosts.len(), 2, "{ran}");
    assert!(hosts.iter().all(|h| nodes.iter().any(|n| n == h)), "{ran} vs {nodes:?}");

    // SSH inside the cluster verifies host keys: every node knows the others' published keys
    // (the login itself is refused: no key for it; the host key check comes first).
    let probe = "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/dev/null cluster-leader true 2>&1 | tail -1";
    let start = std::time::Instant::now();
    loop {
        let seen = on_nodes(&u, "toil", "t1", probe);
        if seen.matches("Permission denied").count() == 3 {
            break;
        }
        assert!(start.elapsed().as_secs() < 120, "the leader's host key did not reach every node:\n{seen}");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }

    // /shared is the same directory on every node: what a worker writes, the others read.
    let mounted = on_nodes(
        &u,
        "toil",
        "t1",
        "for i in $(seq 120); do mountpoint -q /shared && break; sleep 1; done; findmnt -n -o FSTYPE /shared",
    );
    assert_eq!(mounted.matches("fuse.sshfs").count(), 3, "{mounted}");
    // ... without set-id programs or device nodes (another node's user could plant them).
    let options = on_nodes(&u, "toil", "t1", "findmnt -n -o OPTIONS /shared | tr ',' '\\n' | grep -cxE 'nosuid|nodev'");
    assert_eq!(options.matches("] 2\n").count(), 3, "{options}");
    on_nodes(&u, "toil", "t1", "hostname > /shared/seen-by-$(hostname)");
    let seen = on_nodes(&u, "toil", "t1", "cat /shared/seen-by-* | sort | tr '\\n' ' '");
    let lines: std::collections::BTreeSet<&str> = seen.lines().filter_map(|l| l.split("] ").nth(1)).collect();
    assert_eq!(lines.len(), 1, "every node should see the same three files:\n{seen}");
    let names: Vec<&str> = lines.iter().next().map(|l| l.split_whitespace().collect()).unwrap_or_default();
    assert_eq!(names.len(), 3, "{seen}");
    // The cluster's key is for the shared directory only: no shell, no file outside it.
    let leader_host = u.ok(&["ssh", "toil-leader", "-c", "t1", "--", "hostname"]).trim().to_owned();
    let key = "sudo ssh -i /etc/cgcloud/cluster/id_ed25519 -o BatchMode=yes cgshare@cluster-leader";
    let shell = u.run(&["ssh", "toil-worker", "-c", "t1", "--", &format!("{key} cat /etc/hostname < /dev/null")]);
    let said = String::from_utf8_lossy(&shell.stdout);
    assert!(!said.contains(&leader_host), "the cluster key gave a shell: {said}");
    let sftp = "echo 'get /etc/hostname /tmp/stolen' | sudo sftp -i /etc/cgcloud/cluster/id_ed25519 -b - cgshare@cluster-leader";
    let outside = u.run(&["ssh", "toil-worker", "-c", "t1", "--", sftp]);
    assert!(!outside.status.success(), "the cluster key read a file outside /shared");

    // The munge key is the cluster's own, readable only by munge, and the same on every node.
    let keys = on_nodes(
        &u,
        "toil",
        "t1",
        "sudo stat -c '%a %U' /etc/munge/munge.key; sudo sha256sum /etc/munge/munge.key | cut -c1-16",
    );
    assert_eq!(keys.matches("] 400 munge").count(), 3, "{keys}");
    let digests: std::collections::BTreeSet<&str> =
        keys.lines().filter(|l| !l.contains("munge")).filter_map(|l| l.split("] ").nth(1)).collect();
    assert_eq!(digests.len(), 1, "{keys}");

    // Jobs and users cannot reach the cluster's secrets or the box's credentials: as nobody on
    // a worker, IMDS refuses the connection (no user data, no credentials), no file nobody can
    // read holds the munge key, and as root IMDS still answers. (Until issue 26 any local user
    // could read the user data, which carries the key, and mint credentials for uid 0.)
    let imds = "cat > /tmp/imds.sh <<'EOF'\n\
        t=$(curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 30' http://169.254.169.254/latest/api/token) || { echo refused; exit 0; }\n\
        curl -sf -m 5 -H \"X-aws-ec2-metadata-token: $t\" http://169.254.169.254/latest/$1 || echo refused\n\
        EOF\n\
        chmod 0755 /tmp/imds.sh\n\
        echo \"nobody user-data: $(sudo runuser -u nobody -- /tmp/imds.sh user-data | head -c 40)\"\n\
        echo \"nobody credentials: $(sudo runuser -u nobody -- /tmp/imds.sh meta-data/iam/security-credentials/ | head -c 40)\"\n\
        echo \"nobody key: $(sudo runuser -u nobody -- cat /etc/munge/munge.key 2>/dev/null | wc -c)\"\n\
        k=$(sudo base64 -w0 /etc/munge/munge.key)\n\
        echo \"nobody finds: $(sudo runuser -u nobody -- grep -rlsF \"$k\" /etc /var /run /tmp /home /opt /srv /shared 2>/dev/null | head -3 | tr '\\n' ' ')\"\n\
        echo \"root user-data: $(sudo /tmp/imds.sh user-data | grep -c munge.key)\"\n\
        echo \"root credentials: $(sudo /tmp/imds.sh meta-data/iam/security-credentials/ | grep -c .)\"";
    let seen = u.ok(&["ssh", "toil-worker", "-c", "t1", "-o", "0", "--", imds]);
    for line in ["nobody user-data: refused", "nobody credentials: refused", "nobody key: 0", "root credentials: 1"] {
        assert!(seen.lines().any(|l| l.trim() == line), "expected '{line}':\n{seen}");
    }
    assert!(seen.lines().any(|l| l.trim() == "nobody finds:"), "a file nobody can read holds the munge key:\n{seen}");
    assert!(!seen.contains("root user-data: 0"), "root no longer reads the user data:\n{seen}");

    // A Toil workflow fans out over both workers, through the job store on /shared.
    let write = format!(
        "mkdir -p /shared/wf && cat > /shared/wf/hostnames.py <<'EOF'\n{}\nEOF",
        testkit::TOIL_HOSTNAMES_WORKFLOW
    );
    u.ok(&["ssh", "toil-leader", "-c", "t1", "--", &write]);
    let ran: std::collections::BTreeSet<String> = toil_hostnames(&u, "t1", 8, 2, "/shared/out-1").into_iter().collect();
    assert_eq!(ran, nodes.iter().cloned().collect(), "the jobs should have run on both workers");

    // Grown while a workflow runs (24 jobs of 15 s, four at a time on two workers), the cluster
    // takes a new worker that registers itself without a file changing on the nodes that were
    // there, and that the running workflow uses (Slurm runs its jobs there); then that worker
    // is lost mid-job, and the workflow still succeeds: Slurm requeues its jobs, Toil retries
    // what failed.
    let fingerprint = "sudo sh -c 'find /etc/slurm /etc/munge /etc/cgcloud/cluster -type f | sort | xargs sha256sum' | sha256sum | cut -c1-16";
    let before = on_nodes(&u, "toil", "t1", fingerprint);
    let background = "nohup sh -c 'toil-run /shared/wf/hostnames.py --jobs 24 --seconds 15 --out /shared/out-2 > /shared/run-2.log 2>&1; echo $? > /shared/run-2.status' > /dev/null 2>&1 &";
    u.ok(&["ssh", "toil-leader", "-c", "t1", "--", background]);
    // The new worker is a spot instance: Slurm knows it by its feature.
    u.ok(&["grow-cluster", "toil", "-c", "t1", "-s", "1", "--spot-bid", "1.0"]);
    let workers = u.json(&["list", "toil-worker", "-c", "t1"]);
    let spot = workers.as_array().unwrap().iter().find(|b| b["spot"] == true);
    let spot_id =
        spot.unwrap_or_else(|| panic!("no spot worker in {workers}"))["instance_id"].as_str().unwrap().to_owned();
    let spot_host = u.ok(&["ssh", "toil-worker", "-c", "t1", "-I", &spot_id, "--", "hostname"]).trim().to_owned();
    let busy = format!("for i in $(seq 180); do squeue -h -t running -w {spot_host} -o %i | grep -q . && exit 0; sleep 1; done; squeue; exit 1");
    u.ok(&["ssh", "toil-leader", "-c", "t1", "--", &busy]);
    let features = u.ok(&["ssh", "toil-leader", "-c", "t1", "--", "sinfo -h -N -o '%f'"]);
    assert_eq!((features.matches("on-demand").count(), features.matches("spot").count()), (2, 1), "{features}");
    let after = on_nodes(&u, "toil", "t1", fingerprint);
    for line in before.lines() {
        assert!(after.contains(line), "{line} changed:\nbefore:\n{before}\nafter:\n{after}");
    }
    // EC2 interrupts the spot worker mid-job: its two-minute notice (here 45 s) appears in the
    // worker's IMDS, the agent's spot watcher runs the role's hook (Slurm drains the node: no
    // new job starts there), and when the notice runs out the instance is terminated.
    let notice = u.json(&["local", "interrupt", &spot_id, "--notice", "45s"]);
    assert_json_shape("local_interrupt", &notice);
    assert_eq!(notice["action"], "terminate", "{notice}");
    let imds = u.ok(&[
        "ssh",
        "toil-worker",
        "-c",
        "t1",
        "-I",
        &spot_id,
        "--",
        "t=$(sudo curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 30' http://169.254.169.254/latest/api/token); \
         sudo curl -sf -H \"X-aws-ec2-metadata-token: $t\" http://169.254.169.254/latest/meta-data/spot/instance-action",
    ]);
    assert_eq!(serde_json::from_str::<Value>(&imds).unwrap(), notice, "{imds}");
    let drained = format!(
        "for i in $(seq 90); do sinfo -h -n {spot_host} -o '%t %E' | grep -q 'spot interruption' && exit 0; sleep 0.5; done; sinfo -N; exit 1"
    );
    u.ok(&["ssh", "toil-leader", "-c", "t1", "--", &drained]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    let state = || {
        boto3(&format!(
            "print(client('ec2').describe_instances(InstanceIds=['{spot_id}'])['Reservations'][0]['Instances'][0]['State']['Name'])"
        ))
    };
    while state().trim() != "terminated" {
        assert!(std::time::Instant::now() < deadline, "the interrupted worker was not terminated");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    // list-clusters says what happened, from EC2's state reason.
    let listed = u.json(&["list-clusters", "toil"]);
    let t1 = listed.as_array().unwrap().iter().find(|c| c["name"] == "t1").unwrap_or_else(|| panic!("{listed}"));
    let lost = t1["interrupted"].as_array().unwrap_or_else(|| panic!("no interrupted node in {t1}"));
    assert_eq!(lost.len(), 1, "{t1}");
    assert_eq!(lost[0]["instance_id"], spot_id.as_str());
    assert!(lost[0]["interrupted"].as_str().unwrap().starts_with("Server.SpotInstanceTermination"), "{t1}");
    let table = u.ok(&["list-clusters", "toil"]);
    assert!(table.lines().next().unwrap().trim_end().ends_with("INTERRUPTED  SCALING"), "{table}");
    let row = table.lines().find(|l| l.starts_with("t1 ")).unwrap_or_else(|| panic!("{table}"));
    // INTERRUPTED, then SCALING (`-`: a cluster that does not scale).
    assert_eq!(row.split_whitespace().rev().take(2).collect::<Vec<_>>(), ["-", "1"], "{table}");
    // Only a spot instance can be interrupted.
    let on_demand =
        workers.as_array().unwrap().iter().find(|b| b["spot"] == false).unwrap()["instance_id"].as_str().unwrap();
    let err = u.run(&["local", "interrupt", on_demand]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("on-demand"), "{}", String::from_utf8_lossy(&err.stderr));
    let finished = "for i in $(seq 600); do test -s /shared/run-2.status && break; sleep 1; done; cat /shared/run-2.status; tail -5 /shared/run-2.log";
    let status = u.ok(&["ssh", "toil-leader", "-c", "t1", "--", finished]);
    assert!(status.starts_with("0\n"), "the workflow failed after losing a worker:\n{status}");
    let out = u.ok(&["ssh", "toil-leader", "-c", "t1", "--", "cat /shared/out-2"]);
    assert_eq!(out.lines().count(), 24, "{out}");
    // The lost worker left Slurm (it was stopped cleanly); no ghost node is listed.
    wait_idle_slurm_nodes(&u, "t1", 2, 120);

    // Stopped and started, the cluster comes back: workers register again, /shared mounts again.
    u.ok(&["stop-cluster", "toil", "-c", "t1"]);
    u.ok(&["start-cluster", "toil", "-c", "t1"]);
    wait_idle_slurm_nodes(&u, "t1", 2, 180);
    // A workflow in the home directory, as toil-box's header once showed it: toil-run copies it
    // to /shared, where the workers import it (before, every job failed on the workers with
    // "No module named 'hostnames'").
    let home_run = "cp /shared/wf/hostnames.py ~/hostnames.py && cd ~ && \
                    toil-run hostnames.py --jobs 4 --seconds 1 --out /shared/out-4 2>/tmp/home-run.log; \
                    s=$?; grep -o 'is not on /shared.*' /tmp/home-run.log; tail -3 /tmp/home-run.log; exit $s";
    let ran = u.ok(&["ssh", "toil-leader", "-c", "t1", "--", home_run]);
    assert!(ran.contains("is not on /shared, where the workers can import it"), "{ran}");
    let out = u.ok(&["ssh", "toil-leader", "-c", "t1", "--", "cat /shared/out-4"]);
    assert_eq!(out.lines().filter(|l| l.starts_with("ip-10-199-")).count(), 4, "{out}");

    // A second cluster has its own munge key: a credential of one means nothing to the other.
    u.ok(&["create-cluster", "toil", "-s", "1", "-c", "t2"]);
    wait_idle_slurm_nodes(&u, "t2", 1, 120);
    let key = |c: &str| u.ok(&["ssh", "toil-leader", "-c", c, "--", "sudo sha256sum /etc/munge/munge.key"]);
    assert_ne!(key("t1"), key("t2"));
    let cred = u.ok(&["ssh", "toil-leader", "-c", "t1", "--", "munge -n"]).trim().to_owned();
    assert!(cred.starts_with("MUNGE:") && cred.chars().all(|c| c.is_ascii_graphic()), "{cred}");
    let own = u.run(&["ssh", "toil-leader", "-c", "t1", "--", &format!("echo '{cred}' | unmunge")]);
    assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
    let other = u.run(&["ssh", "toil-leader", "-c", "t2", "--", &format!("echo '{cred}' | unmunge")]);
    assert!(!other.status.success(), "cluster t2 accepted a credential of cluster t1");

    // Options are baked into the image: a different value at create-cluster would change
    // nothing on the nodes, so it is refused before anything is launched.
    let bad = u.run(&["create-cluster", "toil", "-s", "1", "-c", "t3", "-O", "default_memory_mb=4096"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("option 'default_memory_mb' is baked into image"), "{err}");
    assert!(!err.contains("launching"), "{err}");

    // Autostop on a cluster whose nodes hold SSH connections to the leader of their own (the
    // shared directory): they are not use, so the idle cluster stops itself.
    u.ok(&["autostop", "toil", "-c", "t2", "10s"]);
    let took = wait_cluster_stopped(&u, "toil", "t2", 2);
    eprintln!("an idle toil cluster with autostop 10s stopped itself {took:.0} s after it was turned on");

    u.ok(&["terminate-cluster", "toil", "-c", "t1"]);
    u.ok(&["terminate-cluster", "toil", "-c", "t2"]);
    u.ok(&["delete-image", "toil-box"]);

    // A worker offering Slurm less memory than Toil's jobs ask for fails its first boot, and
    // create-cluster says why (instead of a workflow that waits forever), leaving nothing.
    u.ok(&["create", "-I", "-T", "toil-box", "-O", "default_memory_mb=9999999"]);
    let bad = u.run(&["create-cluster", "toil", "-s", "1", "-c", "t3"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{err}");
    assert!(err.contains("less than Toil's default job memory (9999999 MiB)"), "{err}");
    for role in ["toil-leader", "toil-worker"] {
        assert!(u.json(&["list", role, "-c", "t3"]).as_array().unwrap().is_empty(), "{role} left: {err}");
    }
    u.ok(&["delete-image", "toil-box"]);

    // A Toil version PyPI does not have fails the provisioning with a message naming it, and
    // nothing is left behind.
    let bad = u.run(&["create", "toil-box", "-O", "toil_version=0.0.1"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("cannot install toil[aws]==0.0.1 from PyPI"), "{err}");
    assert!(u.json(&["list", "toil-box"]).as_array().unwrap().is_empty(), "{err}");
}

/// The cluster's workers that EC2 has in any state short of terminated, in `list-clusters`.
fn workers_in(listed: &Value, cluster: &str) -> u64 {
    let c = listed.as_array().unwrap().iter().find(|c| c["name"] == cluster);
    c.map_or(0, |c| {
        c["nodes"].as_array().unwrap().iter().filter(|n| n["ordinal"] != 0 && n["state"] != "terminated").count() as u64
    })
}

fn live_workers(u: &User, cluster: &str) -> u64 {
    workers_in(&u.json(&["list-clusters"]), cluster)
}

#[test]
#[ignore = "needs root and the local cloud; run by .ci/run with --include-ignored"]
fn elastic_toil_and_slurm_end_to_end() {
    let (_one, u) = shared_local_cloud("elastic");
    // toil-box is slurm-box plus Toil: this test covers both.
    u.ok(&["create", "-I", "-T", "toil-box"]);
    u.ok(&["create-cluster", "toil", "-c", "e1", "--max-workers", "4", "--idle-time", "1m"]);
    // Four cloud nodes, powered down: no worker exists yet.
    let powered_down = |s: &BTreeMap<String, String>| s.len() == 4 && s.values().all(|v| v == "idle~");
    let states = wait_slurm_nodes(&u, "toil-leader", "e1", 120, "w1..w4 powered down", powered_down);
    assert_eq!(states.keys().cloned().collect::<Vec<_>>(), ["w1", "w2", "w3", "w4"]);
    assert_eq!(live_workers(&u, "e1"), 0);

    // Never more than max, sampled while the work runs.
    let most = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The sampler stops however the test ends (the other shared tests go on).
    struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _stop = Stop(done.clone());
    let sampler = {
        let (most, done) = (most.clone(), done.clone());
        let (home, bin, env) = (u.home.path().to_owned(), u.bin.clone(), u.env.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let out = testkit::hermetic_command(&bin, &home, &["CGCLOUD_LOCAL_DIR"])
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .args(["--output", "json", "list-clusters"])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                if let Ok(listed) = serde_json::from_slice::<Value>(&out.stdout) {
                    most.fetch_max(workers_in(&listed, "e1"), std::sync::atomic::Ordering::SeqCst);
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        })
    };
    // A Toil workflow started with no worker runs to completion on workers launched for it.
    let write = format!(
        "mkdir -p /shared/wf && cat > /shared/wf/hostnames.py <<'EOF'\n{}\nEOF",
        testkit::TOIL_HOSTNAMES_WORKFLOW
    );
    on_toil_leader(&u, "e1", &write);
    let leader_host = on_toil_leader(&u, "e1", "hostname").trim().to_owned();
    let ran = toil_hostnames(&u, "e1", 6, 2, "/shared/out-z");
    assert!(ran.iter().all(|h| h.starts_with("ip-10-199-") && *h != leader_host), "{ran:?}");

    // Sixteen one-core jobs, four times the workers allowed: workers appear for them and every
    // job runs.
    on_toil_leader(&u, "e1", "for i in $(seq 16); do sbatch -n1 -o /tmp/job-%j.out --wrap 'hostname; sleep 10'; done");
    let start = std::time::Instant::now();
    loop {
        let queued = on_toil_leader(&u, "e1", "squeue -h | wc -l");
        if queued.trim() == "0" {
            break;
        }
        assert!(
            start.elapsed().as_secs() < 600,
            "jobs still queued after 600 s:\n{}",
            on_toil_leader(&u, "e1", "squeue; sinfo -R")
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    // Each worker knows its leader and itself alone (O(1) at its boot whatever the size: the
    // leader's view of the member list), the leader every member.
    let view = "echo view $(sed -n '/^# BEGIN cgcloud cluster/,/^# END/p' /etc/hosts | grep -vc '^#') \
                $(grep -o '\"view\": \"[a-z]*\"' /etc/cgcloud/cluster.json | tr -d '\" ')";
    let outputs =
        u.ok(&["ssh-cluster", "toil", "-c", "e1", "--", &format!("cat /tmp/job-*.out 2>/dev/null || true; {view}")]);
    let ran = outputs.lines().filter(|l| l.contains("ip-10-199-")).count();
    assert_eq!(ran, 16, "every job ran on a worker:\n{outputs}");
    let views: Vec<&str> = outputs.lines().filter_map(|l| l.strip_prefix("view ")).collect();
    let workers_views = views.iter().filter(|v| **v == "2 view:leader").count();
    assert!(workers_views >= 1 && workers_views + 1 == views.len(), "workers' views:\n{outputs}");
    // The leader's own files follow its list: every worker that asked for it (all did, to
    // boot) is there, though the leader's agent refreshes its membership every 5 minutes.
    let leaders = views.iter().find_map(|v| v.strip_suffix(" view:all")).and_then(|n| n.parse::<usize>().ok());
    assert!(leaders.is_some_and(|n| n >= views.len()), "the leader's view:\n{outputs}");

    // Idle workers go: powered down in Slurm, terminated in EC2.
    wait_slurm_nodes(&u, "toil-leader", "e1", 300, "every worker powered down again", powered_down);
    let start = std::time::Instant::now();
    while live_workers(&u, "e1") > 0 {
        assert!(start.elapsed().as_secs() < 120, "workers not terminated");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=4).contains(&most), "at most 4 workers at once, and some: {most}");

    // From the leader, as root, with its credentials: what the scaler may do, and nothing more.
    let leader = u.json(&["show", "toil-leader", "-c", "e1"]);
    let (leader_id, zone) = (leader["instance_id"].as_str().unwrap(), leader["zone"].as_str().unwrap());
    let region = &zone[..zone.len() - 1];
    let listed = u.json(&["list-clusters"]);
    let scaling = &listed.as_array().unwrap().iter().find(|c| c["name"] == "e1").unwrap()["scaling"];
    let template = scaling["launch_template"].as_str().unwrap().split(':').next().unwrap().to_owned();
    let subnet = scaling["subnets"][0].as_str().unwrap().to_owned();
    let image = leader["image_id"].as_str().unwrap().to_owned();
    let launch = format!("Action=RunInstances&LaunchTemplate.LaunchTemplateId={template}&LaunchTemplate.Version=1&InstanceType=m7i.large&SubnetId={subnet}&MinCount=1&MaxCount=1");
    let api =
        |params: &str| on_toil_leader(&u, "e1", &format!("sudo bash -c {}", shell_quote(&signed_ec2(region, params))));
    let tag = |k: &str, v: &str| {
        format!("&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key={k}&TagSpecification.1.Tag.1.Value={v}")
    };
    for (what, params) in [
        ("another image", format!("{launch}&ImageId={image}")),
        ("another profile", format!("{launch}&IamInstanceProfile.Name=elastic_e1.leader")),
        ("into another cluster", format!("{launch}{}", tag("cgcloud:cluster", "other"))),
        ("as a leader", format!("{launch}{}", tag("cgcloud:ordinal", "0"))),
        ("under another leader", format!("{launch}{}", tag("cgcloud:leader-arn", "arn:aws:ec2:x:1:instance/i-0"))),
        ("without the template", format!("Action=RunInstances&ImageId={image}&InstanceType=m7i.large&MinCount=1&MaxCount=1")),
        ("bounds of its own", format!("Action=CreateTags&ResourceId.1={leader_id}&Tag.1.Key=cgcloud:scaling&Tag.1.Value=min%3D0%20max%3D99%20idle%3D60")),
    ] {
        let said = api(&params);
        assert!(said.contains("<Code>UnauthorizedOperation</Code>"), "the leader launched {what}: {said}");
    }
    // The same request, as the template has it: allowed (so the denials above are the policy's).
    let said = api(&launch);
    let id = said
        .split("<instanceId>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap_or_else(|| panic!("{said}"))
        .to_owned();
    let gone = api(&format!("Action=TerminateInstances&InstanceId.1={id}"));
    assert!(gone.contains("<TerminateInstancesResponse"), "{gone}");
    // Past the maximum: not a worker of this cluster, refused before anything is asked of EC2.
    let past = u.run(&["ssh", "toil-leader", "-c", "e1", "--", "sudo -u slurm cgcloud-agent scale up 'w[4-5]'"]);
    let said = String::from_utf8_lossy(&past.stderr);
    assert!(!past.status.success() && said.contains("between 1 and 4"), "{said}");

    // New bounds reach Slurm without recreating anything.
    u.ok(&["scale-cluster", "toil", "-c", "e1", "--max-workers", "2"]);
    wait_slurm_nodes(&u, "toil-leader", "e1", 120, "two nodes after scale-cluster", |s| s.len() == 2);
    u.ok(&["terminate-cluster", "toil", "-c", "e1"]);
    assert!(u.json(&["cleanup", "--dry-run"]).as_array().unwrap().iter().all(|i| i["kind"] == "security-group"));
}
