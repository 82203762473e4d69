//! What the end-to-end tests on the local cloud share: a user with a home and key of their
//! own, the one local cloud (tests take turns), and the independent probes of the boxes.

#![allow(dead_code)] // each test binary uses its own part

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

/// The machine's one local cloud: tests of one binary take turns (cargo runs binaries one at
/// a time).
pub static LOCAL_CLOUD: Mutex<()> = Mutex::new(());

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
        c.env("CGCLOUD_SSH_OPTS", format!("-F /dev/null -i {} -o IdentitiesOnly=yes", self.key.display()))
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
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

/// The local cloud to this test alone, brought up afresh (whatever an earlier run left), and a
/// user with a registered key.
pub fn fresh_local_cloud() -> (std::sync::MutexGuard<'static, ()>, User) {
    let one = LOCAL_CLOUD.lock().unwrap_or_else(|p| p.into_inner());
    let u = User::new();
    u.ok(&["local", "down"]);
    u.ok(&["local", "up"]);
    u.ok(&["register-key", u.key.with_extension("pub").to_str().unwrap()]);
    (one, u)
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

/// Runs Python with boto3 from the local cloud's moto venv, against the local cloud's API
/// (`client('sqs')`, and `iam`); returns its stdout.
pub fn boto3(script: &str) -> String {
    let python = local_dir().join("moto-5.2.5/bin/python");
    let full = format!(
        "import boto3\ndef client(s): return boto3.client(s, endpoint_url='http://127.0.0.1:5401', region_name='us-west-2', aws_access_key_id='localcloud', aws_secret_access_key='localcloud')\niam = client('iam')\n{script}"
    );
    let out = Command::new(python).args(["-c", &full]).env("AWS_EC2_METADATA_DISABLED", "true").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
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
}

impl Forwards {
    pub fn open(u: &User, role_args: &[&str], last: &str) -> Forwards {
        use std::io::BufRead as _;
        use std::os::unix::process::CommandExt as _;
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
        Forwards { child, said }
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
    /// what it was after 30 s).
    pub fn json(&self, port: u16, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.local_port(port));
        let start = std::time::Instant::now();
        loop {
            let out = Command::new("curl").args(["-sf", "--max-time", "5", &url]).output().unwrap();
            let page: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if ready(&page) || start.elapsed().as_secs() > 30 {
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
