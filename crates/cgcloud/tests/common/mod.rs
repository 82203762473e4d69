//! What the end-to-end tests on the local cloud share: a user with a home and key of their
//! own, turns on the machine's one local cloud (a test has it to itself, or shares it with
//! tests in namespaces of their own), and the independent probes of the boxes and clusters.

#![allow(dead_code)] // each test binary uses its own part

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The image every generic-box test launches.
pub const DEBIAN: &str = "generic-debian-bookworm-box";

/// A test's turn on the machine's one local cloud, held until it is dropped. It is an flock,
/// so it holds across the threads of a test binary and across binaries (`.ci/run` runs
/// `local_shared` beside other tests).
pub struct Turn {
    _lock: File,
    /// A shared turn's namespace component (`CGCLOUD_ME`): what is left in it goes at the end.
    shared_as: Option<String>,
}

impl Drop for Turn {
    /// Ends a shared turn, passed or failed: terminates every instance left in the test's
    /// namespace, so the tests still running do not share the machine's cores with them, and
    /// deletes its key pair. Best effort: a drop must not panic while a failed test unwinds.
    fn drop(&mut self) {
        let Some(me) = &self.shared_as else { return };
        let cleaned = try_boto3(&format!(
            "ec2 = client('ec2')\n\
             f = [{{'Name': 'tag:cgcloud:namespace', 'Values': ['/{me}/']}}]\n\
             ids = [i['InstanceId'] for r in ec2.describe_instances(Filters=f)['Reservations'] for i in r['Instances'] if i['State']['Name'] != 'terminated']\n\
             ids and ec2.terminate_instances(InstanceIds=ids)\n\
             ec2.delete_key_pair(KeyName='{me}')"
        ));
        if let Err(e) = cleaned {
            eprintln!("could not clean up namespace /{me}/: {e}");
        }
    }
}

fn lock_file(name: &str) -> File {
    let path = std::env::temp_dir().join(name);
    File::options().create(true).truncate(false).write(true).open(&path).unwrap()
}

const TURNS: &str = "cgcloud-local-tests.lock";

/// Names the shared cloud that is up: this build's cgcloud (its modification time) and the
/// controller's PID. Any other cloud is brought up afresh before tests share it.
fn shared_marker() -> PathBuf {
    std::env::temp_dir().join("cgcloud-local-tests.shared")
}

/// The local cloud to this test alone: no other test runs on it until the turn is dropped. The
/// test brings it up and down itself (`fresh_local_cloud` does both for most).
pub fn exclusive_turn() -> Turn {
    let lock = lock_file(TURNS);
    lock.lock().unwrap();
    // This test takes the cloud down: the next shared test brings up its own.
    let _ = std::fs::remove_file(shared_marker());
    Turn { _lock: lock, shared_as: None }
}

/// The local cloud to this test alone, brought up afresh (whatever an earlier run left), and a
/// user with a registered key.
pub fn fresh_local_cloud() -> (Turn, User) {
    let turn = exclusive_turn();
    let u = User::new();
    u.ok(&["local", "down"]);
    u.ok(&["local", "up"]);
    u.ok(&["register-key", u.key.with_extension("pub").to_str().unwrap()]);
    (turn, u)
}

/// The local cloud shared with the other tests that take this turn, running at the same time,
/// and a user who works in a namespace of their own, `/<me>/` (`CGCLOUD_ME`, as a teammate on
/// a shared account would), with their own key pair `me`. The first such test brings the cloud
/// up; it stays up between shared tests (`.ci/run` takes it down at the end). A test that
/// takes this turn must not look at anything outside its namespace; what it leaves there goes
/// when the turn is dropped.
pub fn shared_local_cloud(me: &str) -> (Turn, User) {
    let lock = lock_file(TURNS);
    let mut u = User::new();
    u.env.push(("CGCLOUD_ME".into(), me.into()));
    let built = std::fs::metadata(&u.bin).unwrap().modified().unwrap();
    let built = built.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    // Whether other shared tests are on a cloud this build did not bring up (it was built
    // while they ran): then it is used as it is.
    let mut others_on_it = false;
    loop {
        lock.lock_shared().unwrap();
        let bringing_up = lock_file("cgcloud-local-tests.bringup");
        bringing_up.lock().unwrap();
        let status = u.json(&["local", "status"]);
        let current = status["up"]
            .as_bool()
            .unwrap_or(false)
            .then(|| format!("{built} {}", status["state"]["controller_pid"].as_u64().unwrap_or(0)));
        let marked = std::fs::read_to_string(shared_marker()).ok();
        if (current.is_some() && marked == current) || others_on_it {
            // Up already (`up` only writes this user's `local` profile), or brought up again.
            u.ok(&["local", "up"]);
            break;
        }
        // Not the cloud the last shared test used, or one an older cgcloud brought up: afresh,
        // if no other test is on it. A failed upgrade of an flock drops the lock held: the next
        // round takes it again and looks again (an exclusive test may have run in between).
        if lock.try_lock().is_ok() {
            u.ok(&["local", "down"]);
            u.ok(&["local", "up"]);
            let status = u.json(&["local", "status"]);
            let pid = status["state"]["controller_pid"].as_u64().unwrap();
            std::fs::write(shared_marker(), format!("{built} {pid}")).unwrap();
            // Back to a shared turn, still holding the bring-up lock (the others waiting for
            // it find the marker written), and done: this test brought the cloud up, so
            // there is nothing to look at again.
            lock.lock_shared().unwrap();
            break;
        } else {
            others_on_it = true;
        }
    }
    // --force: a key pair of this name that a killed run left behind is replaced.
    u.ok(&["register-key", "--force", u.key.with_extension("pub").to_str().unwrap()]);
    (Turn { _lock: lock, shared_as: Some(me.to_owned()) }, u)
}

pub fn local_dir() -> PathBuf {
    std::env::var_os("CGCLOUD_LOCAL_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/cgcloud-local"))
}

/// A user of the local cloud: own HOME (config, known_hosts) and own SSH key.
pub struct User {
    pub home: tempfile::TempDir,
    pub key: PathBuf,
    pub env: Vec<(String, String)>,
    /// The cgcloud executable this user runs (this build's, unless a test installed one).
    pub bin: PathBuf,
}

impl User {
    pub fn new() -> User {
        let home = tempfile::tempdir().unwrap();
        let key = home.path().join("id_ed25519");
        let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
        assert!(st.success());
        User { home, key, env: Vec::new(), bin: PathBuf::from(env!("CARGO_BIN_EXE_cgcloud")) }
    }

    pub fn cmd(&self) -> Command {
        let mut c = testkit::hermetic_command(&self.bin, self.home.path(), &["CGCLOUD_LOCAL_DIR"]);
        // SSH's connection sockets of this user alone: tests on one local cloud at the same
        // time would otherwise share /tmp/cgcloud-ssh-0, where a socket is named after the
        // address, which the next box may get when one is terminated.
        c.env("XDG_RUNTIME_DIR", self.runtime_dir());
        c.env("CGCLOUD_SSH_OPTS", format!("-F /dev/null -i {} -o IdentitiesOnly=yes", self.key.display()))
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// The user's runtime directory (XDG_RUNTIME_DIR): private, made on first use.
    pub fn runtime_dir(&self) -> PathBuf {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = self.home.path().join("run");
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        dir
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        testkit::succeeded(args, &self.run(args))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

/// Tries an SSH login to a box with `key` (a private key file), host key verified with the
/// user's cgcloud known_hosts.
pub fn login(u: &User, key: &std::path::Path, ip: &str, instance_id: &str) -> bool {
    Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("HostKeyAlias={instance_id}"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", u.home.path().join(".local/state/cgcloud/known_hosts").display()))
        .args(["-o", "StrictHostKeyChecking=yes", &format!("admin@{ip}"), "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until `want(box)` holds on every box; returns the seconds it took.
pub fn converge(boxes: &[(String, String)], timeout_s: u64, what: &str, want: impl Fn(&str, &str) -> bool) -> f64 {
    let start = std::time::Instant::now();
    loop {
        if boxes.iter().all(|(id, ip)| want(ip, id)) {
            return start.elapsed().as_secs_f64();
        }
        assert!(start.elapsed().as_secs() < timeout_s, "{what} did not converge within {timeout_s} s");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

pub fn keygen(dir: &std::path::Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    key
}

/// boto3 against the local cloud's API as its administrator: `client('ec2')`, and `iam`.
const BOTO3_CLIENT: &str = "import boto3\ndef client(s): return boto3.client(s, endpoint_url='http://127.0.0.1:5401', region_name='us-west-2', aws_access_key_id='localcloud', aws_secret_access_key='localcloud')\niam = client('iam')";

/// Runs Python with boto3 from the local cloud's moto venv, against the local cloud's API
/// (`client('sqs')`, and `iam`); returns its stdout.
pub fn boto3(script: &str) -> String {
    try_boto3(script).unwrap_or_else(|e| panic!("{e}"))
}

/// [`boto3`], with its failure as a value (for a drop, which must not panic).
pub fn try_boto3(script: &str) -> Result<String, String> {
    let python = local_dir().join("moto-5.2.5/bin/python");
    let full = format!("{BOTO3_CLIENT}\n{script}");
    let out = Command::new(python)
        .args(["-c", &full])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn iam(script: &str) {
    boto3(script);
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `cgcloud ssh ROLE ARGS --forward -- -N` running in the background (its own process group,
/// ended on drop), and the forward lines it printed ("forward: http://localhost:LOCAL/ ->
/// HOST:PORT on the box (What)") up to the one containing `last`.
pub struct Forwards {
    child: std::process::Child,
    pub said: String,
    /// Forwards take the roles' usual local ports when free (8080, ...): tests that run at the
    /// same time open them one at a time, or one could read another's cluster through them.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static FORWARDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Forwards {
    pub fn open(u: &User, role_args: &[&str], last: &str) -> Forwards {
        use std::io::BufRead as _;
        use std::os::unix::process::CommandExt as _;
        let one_at_a_time = FORWARDS.lock().unwrap_or_else(|p| p.into_inner());
        let mut child = u
            .cmd()
            .arg("ssh")
            .args(role_args)
            .args(["--forward", "--", "-N"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut said = String::new();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        while !said.contains(last) {
            let line = lines.next().unwrap_or_else(|| panic!("no forward line with {last:?}:\n{said}")).unwrap();
            said.push_str(&line);
            said.push('\n');
        }
        Forwards { child, said, _one_at_a_time: one_at_a_time }
    }

    /// The local port of the forward to the box's `port`.
    pub fn local_port(&self, port: u16) -> u16 {
        self.said
            .lines()
            .filter_map(|l| l.strip_prefix("forward: http://localhost:"))
            .filter_map(|rest| rest.split_once("/ -> "))
            .find(|(_, to)| to.split(' ').next().is_some_and(|t| t.ends_with(&format!(":{port}"))))
            .map(|(local, _)| local.parse::<u16>().unwrap())
            .unwrap_or_else(|| panic!("no forward of port {port}:\n{}", self.said))
    }

    /// The JSON at `path` through the forward of the box's `port`, once `ready` says so (or
    /// what it was after 60 s).
    pub fn json(&self, port: u16, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.local_port(port));
        let start = std::time::Instant::now();
        loop {
            let out = Command::new("curl").args(["-sf", "--max-time", "5", &url]).output().unwrap();
            let page: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if ready(&page) || start.elapsed().as_secs() > 60 {
                return page;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
}

impl Drop for Forwards {
    fn drop(&mut self) {
        // cgcloud and its ssh child are one process group.
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

/// A shell command that calls the local cloud's EC2 API from inside a box as its software
/// does on EC2: credentials of the instance profile from IMDS (v2), the request signed with
/// SigV4 (by curl's own signer). `params` is the form body after `Version`.
pub fn signed_ec2(region: &str, params: &str) -> String {
    format!(
        r#"set -e; m=http://169.254.169.254/latest
t=$(curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' $m/api/token)
r=$(curl -sf -m 5 -H "X-aws-ec2-metadata-token: $t" $m/meta-data/iam/security-credentials/)
c=$(curl -sf -m 5 -H "X-aws-ec2-metadata-token: $t" $m/meta-data/iam/security-credentials/$r)
f() {{ printf '%s' "$c" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }}
curl -s -m 10 --aws-sigv4 'aws:amz:{region}:ec2' -u "$(f AccessKeyId):$(f SecretAccessKey)" -H "x-amz-security-token: $(f Token)" http://10.199.0.1:5401/ --data 'Version=2016-11-15&{params}'"#
    )
}

/// The shape of a JSON document (its fields and their types, arrays by their first element):
/// the JSON contract (docs/json.md) of commands that need the local cloud, as a golden file
/// next to json.rs's, without this run's ids, times and addresses.
pub fn json_shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), json_shape(x))).collect()),
        Value::Array(a) => Value::Array(a.first().map(json_shape).into_iter().collect()),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => "null".into(),
    }
}

/// Runs `script` on the leader of slurm cluster `cluster`; its output.
pub fn on_slurm_leader(u: &User, cluster: &str, script: &str) -> String {
    u.ok(&["ssh", "slurm-leader", "-c", cluster, "--", script])
}

/// Runs `script` on the leader of toil cluster `cluster`; its output.
pub fn on_toil_leader(u: &User, cluster: &str, script: &str) -> String {
    u.ok(&["ssh", "toil-leader", "-c", cluster, "--", script])
}

/// `sinfo -h -N -o '%N %T'` on `leader` (its role) of cluster `cluster`: node → state.
pub fn slurm_states(u: &User, leader: &str, cluster: &str) -> BTreeMap<String, String> {
    let out = u.run(&["ssh", leader, "-c", cluster, "--", "sinfo -h -N -o '%N %T'"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(n, s)| (n.to_owned(), s.to_owned())))
        .collect()
}

/// Waits until `want` holds of the Slurm node states of slurm cluster `cluster`; returns them.
pub fn wait_slurm(
    u: &User,
    cluster: &str,
    timeout_s: u64,
    what: &str,
    want: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    wait_slurm_nodes(u, "slurm-leader", cluster, timeout_s, what, want)
}

/// Waits until `want` holds of the Slurm node states on `leader` (its role) of `cluster`.
pub fn wait_slurm_nodes(
    u: &User,
    leader: &str,
    cluster: &str,
    timeout_s: u64,
    what: &str,
    want: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let start = std::time::Instant::now();
    loop {
        let states = slurm_states(u, leader, cluster);
        if want(&states) {
            return states;
        }
        assert!(
            start.elapsed().as_secs() < timeout_s,
            "cluster {cluster}: {what} within {timeout_s} s; sinfo: {states:?}"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}
