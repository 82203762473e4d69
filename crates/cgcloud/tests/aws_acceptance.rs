//! Acceptance tests against real AWS, for what the emulator and the local cloud cannot show:
//! the base-image lookups and first boot of every supported distribution, with IAM, real
//! security groups and public-IP SSH. Opt-in only:
//!
//! ```sh
//! AWS_PROFILE=... CGCLOUD_ZONE=us-west-2a cargo test -p cgcloud --features aws-acceptance \
//!     --test aws_acceptance -- --test-threads 4
//! ```
//!
//! Cost: one t3.micro (or t4g.micro) per role for about five minutes, well under US$0.10 in
//! all. Every test works in its own namespace `/acceptance-<random>/` and removes its boxes,
//! security group, IAM role and key pair when it ends; if a run is killed, clean up with
//! `cgcloud -n /acceptance-<random>/ cleanup --yes && cgcloud -n ... reset-security --yes`.
#![cfg(feature = "aws-acceptance")]
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::process::Command;

/// One acceptance run: its own HOME, SSH key, namespace and registered EC2 key pair.
struct Acceptance {
    home: tempfile::TempDir,
    ns: String,
    key_name: String,
}

impl Acceptance {
    fn new() -> Acceptance {
        assert!(
            std::env::var("CGCLOUD_ZONE").is_ok(),
            "set CGCLOUD_ZONE (and AWS credentials) for the acceptance tests"
        );
        let home = tempfile::tempdir().unwrap();
        let ns = format!("/acceptance-{:08x}/", rand_suffix());
        let key = home.path().join("id_ed25519");
        let keygen = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status();
        assert!(keygen.unwrap().success());
        let key_name = format!("cgcloud-acceptance-{}", &ns[12..20]);
        let a = Acceptance { home, ns, key_name };
        a.ok(&["register-key", key.with_extension("pub").to_str().unwrap(), "-k", &a.key_name]);
        a
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let home = self.home.path();
        Command::new(env!("CARGO_BIN_EXE_cgcloud"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("CGCLOUD_SSH_OPTS", format!("-i {}/id_ed25519 -o IdentitiesOnly=yes", home.display()))
            .args(["-n", &self.ns])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "cgcloud {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `body`, then removes everything the run made, whatever `body` did, by running
    /// `teardown` and then the namespace-wide cleanups; a failure in `body` is re-raised after.
    fn check(&self, teardown: &[&str], body: impl FnOnce() + std::panic::UnwindSafe) {
        let result = std::panic::catch_unwind(body);
        let _ = self.run(teardown);
        let _ = self.run(&["cleanup", "--yes"]);
        let _ = self.run(&["reset-security", "--yes"]);
        let _ = self.run(&["delete-key", &self.key_name]);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
}

fn acceptance(role: &str) {
    let a = Acceptance::new();
    let created = a.run(&["create", role, "-k", &a.key_name]);
    a.check(&["terminate", role], || {
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
        let out = a.run(&["ssh", role, "--", "uname -a && cloud-init status"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Linux"));
        assert_eq!(a.run(&["ssh", role, "--", "false"]).status.code(), Some(1));
    });
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() ^ std::process::id()
}

macro_rules! acceptance_tests {
    ($($name:ident => $role:literal),* $(,)?) => {
        $(#[test] fn $name() { acceptance($role) })*
    };
}

acceptance_tests! {
    ubuntu_jammy => "generic-ubuntu-jammy-box",
    ubuntu_noble => "generic-ubuntu-noble-box",
    ubuntu_resolute => "generic-ubuntu-resolute-box",
    debian_bookworm => "generic-debian-bookworm-box",
    debian_trixie => "generic-debian-trixie-box",
    fedora_43 => "generic-fedora-43-box",
    fedora_44 => "generic-fedora-44-box",
    fedora_45 => "generic-fedora-45-box",
    centos_stream_9 => "generic-centos-stream-9-box",
    centos_stream_10 => "generic-centos-stream-10-box",
    amazon_linux_2023 => "generic-amazon-linux-2023-box",
}

/// Scenarios 4 and 5 of the original's tests: an HDFS-backed Spark cluster, a word count
/// read from HDFS, and HDFS data surviving terminate-cluster + create-cluster on persistent
/// volumes. About 3 m7i.large for 20 minutes (~US$0.30). Not run in this project's CI.
#[test]
fn spark_hdfs_persistence() {
    let a = Acceptance::new();
    let ok = |args: &[&str]| a.ok(args);
    let key_name = a.key_name.as_str();
    a.check(&["terminate-cluster", "spark", "-c", "acc"], || {
        ok(&["create", "-I", "-T", "spark-box", "-k", key_name]);
        ok(&["create-cluster", "spark", "-s", "2", "-c", "acc", "-e", "1", "-k", key_name]);
        // The launcher spark-box installs on the PATH (it runs Apache's tarball as its bin/hdfs would).
        let hdfs = "hdfs";
        // Wait for 2 live datanodes, then write data with its checksum.
        ok(&["ssh", "spark-leader", "-c", "acc", "--", &format!("for i in $(seq 120); do {hdfs} dfsadmin -report -live 2>/dev/null | grep -q 'Live datanodes (2)' && exit 0; sleep 5; done; exit 1")]);
        ok(&["ssh", "spark-leader", "-c", "acc", "--", &format!("head -c 300000000 /dev/urandom > /tmp/data && md5sum < /tmp/data > /tmp/data.md5 && {hdfs} dfs -put /tmp/data /data && {hdfs} dfs -put /tmp/data.md5 /data.md5")]);
        ok(&["terminate-cluster", "spark", "-c", "acc"]);
        ok(&["create-cluster", "spark", "-s", "2", "-c", "acc", "-e", "1", "-k", key_name]);
        let check = ok(&[
            "ssh",
            "spark-leader",
            "-c",
            "acc",
            "--",
            &format!("sleep 60; {hdfs} dfs -cat /data | md5sum; {hdfs} dfs -cat /data.md5"),
        ]);
        let lines: Vec<&str> = check.lines().collect();
        assert_eq!(lines[0], lines[1], "HDFS data changed across cluster re-creation");
    });
}

/// Instance-store disks on a Nitro type (NVMe, named by udev) and on a Xen type (mapped at
/// launch as ephemeral0..): formatted and mounted at /mnt/ephemeral; a reboot keeps their data.
/// One m5d.large and one m3.medium for about five minutes (~US$0.02).
#[test]
fn instance_store_nitro_and_xen() {
    for (instance_type, tag) in [("m5d.large", "nitro"), ("m3.medium", "xen")] {
        let a = Acceptance::new();
        let role = "generic-debian-bookworm-box";
        a.check(&["terminate", role], || {
            a.ok(&["create", role, "-k", &a.key_name, "-t", instance_type]);
            let mounted = a.ok(&["ssh", role, "--", "findmnt -n -o SOURCE,FSTYPE /mnt/ephemeral"]);
            assert!(mounted.contains("ext4"), "{tag}: {mounted}");
            a.ok(&["ssh", role, "--", "echo kept | sudo tee /mnt/ephemeral/marker && sync"]);
            a.ok(&["reboot", role]);
            std::thread::sleep(std::time::Duration::from_secs(60));
            let kept = a.ok(&["ssh", role, "--", "cat /mnt/ephemeral/marker"]);
            assert_eq!(kept.trim(), "kept", "{tag}: the instance store lost its data on a reboot");
        });
    }
}

/// The Jenkins master with on-demand EC2 agents, for real: the master from the Jenkins
/// repository with its pinned plugins, an agent image, register-agents, then a freestyle job
/// restricted to the agent's labels, which the EC2 plugin must run on an agent it launches
/// from the newest image. One m7i.large and one t3.large for about 25 minutes, a 20 GiB gp3
/// volume (~US$0.30). Everything, the master's persistent volume and the agents the plugin
/// launched included, is removed at the end.
#[test]
fn jenkins_master_runs_a_job_on_an_ec2_agent() {
    let a = Acceptance::new();
    let key_name = a.key_name.as_str();
    let agent = "jenkins-agent-debian-trixie";
    a.check(&["terminate", "jenkins-master"], || {
        a.ok(&["create", "jenkins-master", "-e", "20", "-k", key_name]);
        a.ok(&["create", "-I", "-T", agent, "-k", key_name]);
        a.ok(&["register-agents", agent]);
        // A freestyle job through Jenkins' own API, on the master (Jenkins listens on
        // 127.0.0.1 only), as the admin whose password the master made.
        let script = r#"set -e
pw=$(sudo cat /mnt/persistent/secrets/jenkins-admin-password)
auth() { printf 'user = "admin:%s"\n' "$pw"; }
jar=$(mktemp)
u=http://127.0.0.1:8080
crumb=$(auth | curl -fsS -K - -c "$jar" "$u/crumbIssuer/api/xml?xpath=concat(//crumbRequestField,%22:%22,//crumb)")
cat > /tmp/job.xml <<'XML'
<project><assignedNode>debian &amp;&amp; trixie</assignedNode><canRoam>false</canRoam>
<builders><hudson.tasks.Shell><command>java -version; uname -a; echo CGCLOUD-JOB-OK</command></hudson.tasks.Shell></builders></project>
XML
auth | curl -fsS -K - -b "$jar" -H "$crumb" -H 'Content-Type: application/xml' --data-binary @/tmp/job.xml "$u/createItem?name=cgcloud-acceptance"
auth | curl -fsS -K - -b "$jar" -H "$crumb" -X POST "$u/job/cgcloud-acceptance/build"
for i in $(seq 1 180); do
    r=$(auth | curl -fsS -K - "$u/job/cgcloud-acceptance/lastBuild/api/json?tree=result" 2>/dev/null || true)
    case $r in *SUCCESS*) auth | curl -fsS -K - "$u/job/cgcloud-acceptance/lastBuild/consoleText"; exit 0 ;; *FAILURE*|*ABORTED*) echo "$r"; exit 1 ;; esac
    sleep 5
done
echo "the job did not finish within 15 minutes" >&2; exit 1"#;
        let log = a.ok(&["ssh", "jenkins-master", "--", script]);
        assert!(log.contains("CGCLOUD-JOB-OK") && log.contains("openjdk version \"21"), "{log}");
    });
    // The agents the plugin launched, and the master's persistent volume.
    let boxes: serde_json::Value = serde_json::from_str(&a.ok(&["--output", "json", "list", agent])).unwrap();
    for b in boxes.as_array().unwrap() {
        let _ = a.run(&["terminate", agent, "-I", b["instance_id"].as_str().unwrap()]);
    }
    let _ = a.run(&["cleanup", "--yes", "--persistent-volumes"]);
    let _ = a.run(&["reset-security", "--yes"]);
}
