//! Test harness: one moto server per test process (started on demand on 127.0.0.1, stopped by
//! a watchdog when the test process exits), and per-test environments with a temporary HOME,
//! dummy credentials and their own AWS region, so tests can share the server in parallel.
//!
//! The moto server comes from `CGCLOUD_MOTO_SERVER` (the path of a `moto_server` executable,
//! which `.ci/run` installs), or an already running emulator from `CGCLOUD_TEST_ENDPOINT`.

pub mod fault;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The stock-image catalogue loaded into moto: realistic names and owners for every OS.
pub fn stock_amis() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/stock-amis.json")
}

pub struct Moto {
    pub endpoint: String,
    /// The server's process, when this harness started it (benchmarks read its CPU time).
    pub pid: Option<u32>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

fn wait_http(url: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "2", url])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The moto server shared by the tests of this process.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        if let Ok(endpoint) = std::env::var("CGCLOUD_TEST_ENDPOINT") {
            return Moto { endpoint, pid: None };
        }
        let server = std::env::var("CGCLOUD_MOTO_SERVER").unwrap_or_else(|_| {
            panic!(
                "set CGCLOUD_MOTO_SERVER to a moto_server executable (moto[server]==5.2.5); \
                 `.ci/run` installs one, or: python3 -m venv /var/tmp/moto && \
                 /var/tmp/moto/bin/pip install 'moto[server]==5.2.5' && \
                 export CGCLOUD_MOTO_SERVER=/var/tmp/moto/bin/moto_server"
            )
        });
        let port = free_port();
        let log = std::env::temp_dir().join(format!("cgcloud-test-moto-{port}.log"));
        // The local cloud's moto launcher, so tests see the moto users run: tags looked up by
        // resource id (stock moto's DescribeInstances is quadratic in tagged instances).
        // Benchmarks that make long histories (hundreds of launches) also age terminated
        // instances out (CGCLOUD_MOTO_TERMINATED_TTL seconds), as the local cloud does;
        // otherwise every DescribeInstances walks all of them.
        let ttl = std::env::var("CGCLOUD_MOTO_TERMINATED_TTL").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let command = format!(
            "'{}' '{}' {ttl}",
            Path::new(&server).with_file_name("python").display(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../cgcloud-localcloud/src/moto_server_launcher.py").display()
        );
        // The watchdog stops moto when this test process is gone, however it ends.
        let script = format!(
            "MOTO_AMIS_PATH='{amis}' {command} -H 127.0.0.1 -p {port} >'{log}' 2>&1 & m=$!; echo $m >'{log}.pid'; \
             while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill $m",
            amis = stock_amis().display(),
            log = log.display(),
            me = std::process::id(),
        );
        let mut watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        // Reap the watchdog if it ever ends while we run (e.g. moto crashed).
        std::thread::spawn(move || watchdog.wait());
        let endpoint = format!("http://127.0.0.1:{port}");
        assert!(
            wait_http(&format!("{endpoint}/moto-api/data.json"), Duration::from_secs(60)),
            "moto did not start; see {}",
            log.display()
        );
        let pid = std::fs::read_to_string(format!("{}.pid", log.display())).ok().and_then(|p| p.trim().parse().ok());
        Moto { endpoint, pid }
    })
}

/// Regions handed out to tests, one each, so their state never mixes.
const REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "sa-east-1",
    "ap-northeast-3",
    "eu-south-1",
    "me-south-1",
    "af-south-1",
    "ap-east-1",
    "eu-central-2",
    "ap-south-2",
    "ap-southeast-3",
    "me-central-1",
    "eu-south-2",
    "ap-southeast-4",
    "il-central-1",
    "ca-west-1",
    "mx-central-1",
    "ap-east-2",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
];

static NEXT_REGION: AtomicUsize = AtomicUsize::new(0);

/// One test's world: a temporary HOME and config, its own region on the shared emulator.
pub struct TestEnv {
    pub home: tempfile::TempDir,
    pub region: String,
    /// Where cgcloud sends its requests (moto, or a fault proxy in front of it).
    pub endpoint: String,
    /// moto itself, for independent clients (fake agents, leftover counts).
    pub moto_endpoint: String,
    bin: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl TestEnv {
    pub fn new(bin: impl Into<PathBuf>) -> TestEnv {
        let moto = moto();
        let i = NEXT_REGION.fetch_add(1, Ordering::SeqCst);
        let region = REGIONS[i % REGIONS.len()].to_owned();
        TestEnv {
            home: tempfile::tempdir().expect("temp dir"),
            region,
            endpoint: moto.endpoint.clone(),
            moto_endpoint: moto.endpoint.clone(),
            bin: bin.into(),
            extra_env: Vec::new(),
        }
    }

    pub fn zone(&self) -> String {
        format!("{}a", self.region)
    }

    /// Sends this environment's requests through `proxy` (a [`fault::FaultProxy`]).
    pub fn through(&mut self, proxy: &fault::FaultProxy) {
        self.endpoint = proxy.endpoint.clone();
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.to_owned(), value.to_owned()));
    }

    /// The cgcloud command with a hermetic environment: no real credentials, no IMDS.
    pub fn cmd(&self) -> Command {
        let mut c = hermetic_command(&self.bin, self.home.path(), &[]);
        c.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", &self.region)
            .env("CGCLOUD_MAX_ATTEMPTS", "2")
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run cgcloud")
    }

    /// Runs cgcloud and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(args, &self.run(args))
    }

    /// Runs cgcloud and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "cgcloud {} should have failed:\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs cgcloud with `--output json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from cgcloud {}: {e}\n{out}", args.join(" ")))
    }

    /// Runs a Python script with boto3 straight at moto (not through any fault proxy), as an
    /// independent client: `client(service)` is defined, `boto3`, `base64` and `json` are
    /// imported. Returns stdout; panics if the script fails.
    pub fn boto3(&self, body: &str) -> String {
        let server = std::env::var("CGCLOUD_MOTO_SERVER").expect("CGCLOUD_MOTO_SERVER");
        let python = Path::new(&server).with_file_name("python");
        let script = format!(
            "import boto3, base64, json\n\
             def client(s): return boto3.client(s, endpoint_url='{}', region_name='{}', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             {body}\n",
            self.moto_endpoint, self.region
        );
        let out = Command::new(python)
            .args(["-c", &script])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .expect("run python");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What a namespace holds that no completed launch accounts for, counted independently:
    /// instances still pending a launch, security groups no instance uses, IAM roles of pending
    /// launches and instance profiles of those or of no role, volumes, open spot requests, agent
    /// queues of instances that are gone. `ns` is a one-component namespace without its
    /// slashes (`faults-crash` for `/faults-crash/`); the answer maps each kind to its ids.
    pub fn leftovers(&self, ns: &str) -> serde_json::Value {
        let out = self.boto3(&format!("ec2 = client('ec2'); iam = client('iam')\n\
         ns = [{{'Name': 'tag:cgcloud:namespace', 'Values': ['/{ns}/']}}]\n\
         live = [i for r in ec2.describe_instances(Filters=ns)['Reservations'] for i in r['Instances'] if i['State']['Name'] not in ('terminated', 'shutting-down')]\n\
         pending = [i['InstanceId'] for i in live if any(t['Key'] == 'cgcloud:launch-state' for t in i.get('Tags', []))]\n\
         used = {{g['GroupId'] for i in live for g in i['SecurityGroups']}}\n\
         groups = [g['GroupId'] for g in ec2.describe_security_groups(Filters=ns)['SecurityGroups'] if g['GroupId'] not in used]\n\
         roles = [r['RoleName'] for r in iam.list_roles(PathPrefix='/cgcloud/{ns}/')['Roles'] if any(t['Key'] == 'cgcloud:launch-state' for t in iam.list_role_tags(RoleName=r['RoleName'])['Tags'])]\n\
         vols = [v['VolumeId'] for v in ec2.describe_volumes(Filters=ns)['Volumes'] if v['State'] not in ('deleted', 'in-use')]\n\
         spot = [s['SpotInstanceRequestId'] for s in ec2.describe_spot_instance_requests()['SpotInstanceRequests'] if s['State'] == 'open']\n\
         path = '/cgcloud/{ns}/'\n\
         role_names = {{r['RoleName'] for r in iam.list_roles(PathPrefix=path)['Roles'] if r['Path'] == path}}\n\
         profiles = [p['InstanceProfileName'] for p in iam.list_instance_profiles(PathPrefix=path)['InstanceProfiles'] if p['Path'] == path and (p['InstanceProfileName'] in roles or not any(r['RoleName'] in role_names for r in p['Roles']))]\n\
         ids = {{i['InstanceId'] for i in live}}\n\
         queues = [u for u in client('sqs').list_queues(QueueNamePrefix='{ns}_cgcloud-agent_').get('QueueUrls', []) if u.rsplit('_', 1)[-1] not in ids]\n\
         print(json.dumps({{'instances': pending, 'security_groups': groups, 'iam_roles': roles, 'instance_profiles': profiles, 'volumes': vols, 'spot_requests': spot, 'queues': queues}}))"),
    );
        serde_json::from_str(out.trim()).expect("the leftover count")
    }

    /// Registers a new ed25519 key as the user's key pair and bakes an image of the cluster
    /// node role `generic-cluster-box` (launched without provisioning: moto boots nothing), as
    /// cluster tests and benchmarks need before any create-cluster.
    /// Registers the user's key (`~/.ssh/id_ed25519`) as the key pair named after the
    /// emulator's user (`moto`).
    pub fn with_key(&self) {
        let key = self.keygen("id_ed25519", "ed25519");
        self.ok(&["register-key", &key.with_extension("pub").display().to_string()]);
    }

    pub fn with_key_and_node_image(&self) {
        self.with_key();
        self.bake("generic-cluster-box");
    }

    /// An image of `role`, as `create -I` makes one (moto boots nothing: the box is created,
    /// stopped, imaged and terminated).
    pub fn bake(&self, role: &str) {
        for args in [&["create", role, "-Q"][..], &["stop", role], &["image", role], &["terminate", role]] {
            self.ok(args);
        }
    }

    /// Generates an SSH key pair in HOME; returns the private key path (`.pub` beside it).
    pub fn keygen(&self, name: &str, key_type: &str) -> PathBuf {
        let path = self.home.path().join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", key_type, "-N", "", "-C", name, "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen");
        assert!(status.success());
        path
    }
}

/// Stands in for the agents of cluster nodes on moto (where no node boots): creates the
/// agent's queue of every cluster instance of the test's region (plain namespaces only) and
/// tags it `cgcloud:configured=true`, as soon as it is running.
/// Stopped (by PID) when dropped.
pub struct FakeAgents {
    child: std::process::Child,
    /// Where [`FakeAgents::pause`] and the agents talk: `pause` holds a token, `paused` the
    /// token the agents saw between two rounds.
    dir: tempfile::TempDir,
    pauses: u32,
}

impl FakeAgents {
    /// The stand-in agents' process (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(env: &TestEnv) -> FakeAgents {
        Self::start_failing(env, None)
    }

    /// Like `start`, but the worker at launch index `fail_index` of every worker group reports
    /// a failed first boot (`cgcloud:configured=failed`, with a failure text), as an agent does.
    pub fn start_failing(env: &TestEnv, fail_index: Option<i32>) -> FakeAgents {
        let server = std::env::var("CGCLOUD_MOTO_SERVER").expect("CGCLOUD_MOTO_SERVER");
        let python = std::path::Path::new(&server).with_file_name("python");
        let fail = fail_index.map(|i| i.to_string()).unwrap_or_else(|| "None".into());
        let dir = tempfile::tempdir().expect("temp dir");
        let script = format!(
            "import boto3, os, time\n\
             pause, paused = '{2}/pause', '{2}/paused'\n\
             ec2 = boto3.client('ec2', endpoint_url='{0}', region_name='{1}', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             sqs = boto3.client('sqs', endpoint_url='{0}', region_name='{1}', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             fail = {fail}\n\
             while True:\n\
             \x20   if os.path.exists(pause):\n\
             \x20       with open(pause) as f: token = f.read()\n\
             \x20       with open(paused + '.new', 'w') as f: f.write(token)\n\
             \x20       os.replace(paused + '.new', paused)\n\
             \x20       time.sleep(0.05)\n\
             \x20       continue\n\
             \x20   for r in ec2.describe_instances(Filters=[{{'Name': 'tag-key', 'Values': ['cgcloud:cluster']}}])['Reservations']:\n\
             \x20       for i in r['Instances']:\n\
             \x20           tags = {{t['Key']: t['Value'] for t in i.get('Tags', [])}}\n\
             \x20           if i['State']['Name'] != 'running' or 'cgcloud:configured' in tags: continue\n\
             \x20           ns = tags.get('cgcloud:namespace', '/').strip('/').replace('/', '_')\n\
             \x20           sqs.create_queue(QueueName=(ns + '_' if ns else '') + 'cgcloud-agent_' + i['InstanceId'])\n\
             \x20           if fail is not None and 'cgcloud:ordinals' in tags and i['AmiLaunchIndex'] == fail:\n\
             \x20               ec2.create_tags(Resources=[i['InstanceId']], Tags=[{{'Key': 'cgcloud:configured', 'Value': 'failed'}}, {{'Key': 'cgcloud:failure', 'Value': \"step 'install' failed: fake agent\"}}])\n\
             \x20           else:\n\
             \x20               ec2.create_tags(Resources=[i['InstanceId']], Tags=[{{'Key': 'cgcloud:configured', 'Value': 'true'}}])\n\
             \x20   time.sleep(0.2)\n",
            env.moto_endpoint,
            env.region,
            dir.path().display()
        );
        let child = Command::new(python)
            .args(["-c", &script])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fake agents");
        FakeAgents { child, dir, pauses: 0 }
    }

    /// Stops the agents between two rounds, and returns once they are stopped: nothing they
    /// started (a queue for a node that was running when they looked) is still under way.
    /// Tests that count what a cleanup left pause them, since a live node's agent may make its
    /// queue after any cleanup.
    pub fn pause(&mut self) {
        self.pauses += 1;
        let token = self.pauses.to_string();
        let (pause, paused) = (self.dir.path().join("pause"), self.dir.path().join("paused"));
        std::fs::write(pause.with_extension("new"), &token).expect("write the pause token");
        std::fs::rename(pause.with_extension("new"), &pause).expect("pause the fake agents");
        let start = Instant::now();
        while std::fs::read_to_string(&paused).ok().as_deref() != Some(token.as_str()) {
            assert!(start.elapsed() < Duration::from_secs(60), "the fake agents did not pause");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets paused agents go on.
    pub fn resume(&mut self) {
        // Not paused is the same as resumed.
        let _ = std::fs::remove_file(self.dir.path().join("pause"));
    }
}

impl Drop for FakeAgents {
    fn drop(&mut self) {
        // Stopping a test helper that may already have exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that `cgcloud ARGS` succeeded, showing both its outputs if not; returns stdout.
pub fn succeeded(args: &[&str], out: &Output) -> String {
    assert!(
        out.status.success(),
        "cgcloud {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command for `bin` that sees none of the caller's cgcloud, AWS or XDG settings (except the
/// variables named in `keep`), has `home` as its HOME, and can never reach IMDS or read a real
/// AWS config or credentials file.
pub fn hermetic_command(bin: &Path, home: &Path, keep: &[&str]) -> Command {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars() {
        if (k.starts_with("CGCLOUD_") || k.starts_with("AWS_") || k.starts_with("XDG_")) && !keep.contains(&k.as_str())
        {
            c.env_remove(k);
        }
    }
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    c
}

/// A stand-in for an AWS query API on loopback, for what the emulator does not do (e.g. moto's
/// GetGroup never pages). `answer` gets each request's form body (`Action=…&…`, URL-encoded)
/// and returns the XML to send back with status 200. Serves until the process ends; returns
/// the endpoint URL.
pub fn fake_query_api(answer: impl Fn(&str) -> String + Send + 'static) -> String {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(mut out) = stream.try_clone() else { continue };
            // One request per connection is enough for clients that reconnect; keep-alive
            // clients get one request per connection too, since we close after answering.
            let Some(req) = fault::Requests::new(stream).next_request() else { continue };
            let xml = answer(&String::from_utf8_lossy(&req.body));
            let headers = [("Content-Type", "text/xml"), ("Connection", "close")];
            // A client that is gone is the test's to notice.
            let _ = out.write_all(&cgcloud_core::http::response(200, "OK", &headers, xml.as_bytes()));
        }
    });
    endpoint
}

/// A GetGroup answer with `users` and, if `next` is given, `IsTruncated` and that marker.
pub fn get_group_page(group: &str, users: &[String], next: Option<&str>) -> String {
    let members: String = users
        .iter()
        .map(|u| {
            format!(
                "<member><UserName>{u}</UserName><UserId>AIDA{u}</UserId><Path>/</Path>\
                 <Arn>arn:aws:iam::123456789012:user/{u}</Arn><CreateDate>2026-01-01T00:00:00Z</CreateDate></member>"
            )
        })
        .collect();
    let more = match next {
        Some(m) => format!("<IsTruncated>true</IsTruncated><Marker>{m}</Marker>"),
        None => "<IsTruncated>false</IsTruncated>".to_owned(),
    };
    format!(
        "<GetGroupResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><GetGroupResult>\
         <Group><GroupName>{group}</GroupName><GroupId>AGPA1</GroupId><Path>/</Path>\
         <Arn>arn:aws:iam::123456789012:group/{group}</Arn><CreateDate>2026-01-01T00:00:00Z</CreateDate></Group>\
         <Users>{members}</Users>{more}</GetGroupResult>\
         <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetGroupResponse>"
    )
}

/// A fake IAM whose group `group` has `n` members (`user0`…), served 100 a page as IAM does.
pub fn fake_iam_with_big_group(group: &'static str, n: usize) -> String {
    fake_query_api(move |body| {
        let start: usize = body
            .split('&')
            .find_map(|kv| kv.strip_prefix("Marker="))
            .and_then(|m| m.strip_prefix("page"))
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let end = (start + 100).min(n);
        let users: Vec<String> = (start..end).map(|i| format!("user{i}")).collect();
        let next = (end < n).then(|| format!("page{end}"));
        get_group_page(group, &users, next.as_deref())
    })
}

/// A Toil workflow (Python): `--jobs` children that each sleep `--seconds` and return their
/// host's name through the job store, then a follow-on that writes them to `--out`.
pub const TOIL_HOSTNAMES_WORKFLOW: &str = include_str!("toil_hostnames.py");

/// Why a mirror cannot be served or read.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("no free port on the local cloud's bridge (is it up?)")]
    NoFreePort,
    #[error("cannot start python3 -m http.server")]
    Spawn(#[source] std::io::Error),
    #[error("the mirror's HTTP server did not start on {0}")]
    NotStarted(String),
    #[error("{dir} holds several releases ({found:?}); keep one")]
    SeveralReleases { dir: String, found: Vec<String> },
}

/// A directory served over HTTP on the local cloud's bridge for its hosts (e.g. the
/// Apache-layout mirror of `scripts/apache-mirror`); the server stops on drop.
pub struct Mirror {
    server: Child,
    pub url: String,
}

impl Mirror {
    /// Serves `dir` on a free port among those guests may reach on the machine (8000-8999 by
    /// default), once the server accepts connections.
    pub fn serve(dir: &Path) -> Result<Mirror, MirrorError> {
        let bridge = "10.199.0.1";
        let port =
            (8000..9000).find(|p| std::net::TcpListener::bind((bridge, *p)).is_ok()).ok_or(MirrorError::NoFreePort)?;
        let server = Command::new("python3")
            .args(["-m", "http.server", "--bind", bridge, &port.to_string(), "--directory"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(MirrorError::Spawn)?;
        let mirror = Mirror { server, url: format!("http://{bridge}:{port}") };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect((bridge, port)).is_err() {
            if start.elapsed().as_secs() >= 20 {
                return Err(MirrorError::NotStarted(mirror.url.clone()));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(mirror)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // Stopping a test helper that may already have exited.
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The release `V` of the entries `<prefix>V/<file(V)>` in a mirror directory `dir`: none, or
/// an error when it holds several.
pub fn mirror_release(dir: &Path, prefix: &str, file: impl Fn(&str) -> String) -> Result<Option<String>, MirrorError> {
    let mut found: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(prefix).map(str::to_owned))
            .filter(|v| dir.join(format!("{prefix}{v}")).join(file(v)).is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    if found.len() > 1 {
        return Err(MirrorError::SeveralReleases { dir: dir.display().to_string(), found });
    }
    Ok(found.pop())
}
