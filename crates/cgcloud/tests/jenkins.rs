//! End to end on the local cloud: the Jenkins master and agent roles and `register-agents`,
//! everything but the Jenkins process itself, which cannot be obtained here. The master is
//! provisioned from a stand-in apt repository (signed with a key made for the test) whose
//! `jenkins` package has the real package's layout and unit and runs a small stand-in server
//! (tests/jenkins/StandInJenkins.java) exactly as the package runs Jenkins; the plugin
//! installation manager is a stand-in too (StandInPluginManager.java). The agent image is
//! real, and the EC2 plugin's part is played by a contract test that does with the generated
//! template what the plugin does: find the newest image by the template's owners and filters,
//! launch it with the template's type, tags, group, profile and the master's key pair, read the
//! host key from the console output, log in as `remoteAdmin` with the master's key and exactly
//! that host key, run `initScript`, and check Java and `remoteFS`.
//! Needs root, the local cloud's prerequisites, a JDK (javac, jar), gpg and dpkg-deb; `.ci/run`
//! installs them.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const MASTER: &str = "jenkins-master";
const AGENT: &str = "jenkins-agent-debian-trixie";
const VERSION: &str = "2.555.3";

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    sh(Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap().to_owned()
}

/// The stand-in repository and plugin manager, served to the hosts from the bridge address.
struct StandIns {
    /// Holds the served files for as long as the server runs.
    _dir: tempfile::TempDir,
    server: Child,
    url: String,
    /// The repository's signing key, and another key the test refuses.
    fingerprint: String,
    other_fingerprint: String,
}

impl Drop for StandIns {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl StandIns {
    fn options(&self, fingerprint: &str) -> Vec<String> {
        let u = &self.url;
        [
            format!("jenkins_repo={u}/repo"),
            format!("jenkins_key_url={u}/jenkins.io-test.key"),
            format!("jenkins_key_fingerprint={fingerprint}"),
            format!("plugin_manager_url={u}/jenkins-plugin-manager.jar"),
        ]
        .into_iter()
        .flat_map(|o| ["-O".to_owned(), o])
        .collect()
    }

    fn build() -> StandIns {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/jenkins");
        let classes = d.join("classes");
        sh(Command::new("javac")
            .args(["--release", "17", "-d"])
            .arg(&classes)
            .arg(src.join("StandInJenkins.java"))
            .arg(src.join("StandInPluginManager.java")));
        let jar = |out: &Path, main: &str| {
            sh(Command::new("jar").arg("cfe").arg(out).arg(main).arg("-C").arg(&classes).arg(format!("{main}.class")));
        };
        let web = d.join("web");
        std::fs::create_dir_all(web.join("repo/binary")).unwrap();
        let jpm = web.join("jenkins-plugin-manager.jar");
        jar(&jpm, "StandInPluginManager");
        std::fs::write(
            web.join("jenkins-plugin-manager.jar.sha256"),
            format!("{}  jenkins-plugin-manager.jar\n", sha256(&jpm)),
        )
        .unwrap();

        // The package: the real one's paths, unit and launcher variables.
        let root = d.join("pkg");
        for p in ["DEBIAN", "usr/share/java", "usr/bin", "usr/lib/systemd/system"] {
            std::fs::create_dir_all(root.join(p)).unwrap();
        }
        jar(&root.join("usr/share/java/jenkins.war"), "StandInJenkins");
        let write = |rel: &str, text: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt as _;
            let p = root.join(rel);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(
            "DEBIAN/control",
            &format!(
                "Package: jenkins\nVersion: {VERSION}\nArchitecture: all\nMaintainer: cgcloud tests <tests@example.invalid>\n\
                 Description: stand-in for the Jenkins package in cgcloud's tests\n"
            ),
            0o644,
        );
        write(
            "DEBIAN/postinst",
            "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n\
             getent group jenkins >/dev/null || groupadd --system jenkins\n\
             getent passwd jenkins >/dev/null || useradd --system --home-dir /var/lib/jenkins --no-create-home --gid jenkins --shell /bin/bash jenkins\n\
             install -d -o jenkins -g jenkins /var/lib/jenkins /var/cache/jenkins /var/log/jenkins\n\
             # What debhelper adds: enable, then start (unless policy-rc.d forbids it).\n\
             deb-systemd-helper enable jenkins.service >/dev/null || true\n\
             if [ -d /run/systemd/system ]; then systemctl --system daemon-reload >/dev/null || true; deb-systemd-invoke start jenkins.service >/dev/null || true; fi\n\
             fi\n",
            0o755,
        );
        write(
            "usr/bin/jenkins",
            "#!/bin/sh\n# The package's launcher, reduced to what the unit passes it.\n\
             exec java $JAVA_OPTS -jar \"${JENKINS_WAR:-/usr/share/java/jenkins.war}\" --httpPort=\"${JENKINS_PORT:-8080}\" --httpListenAddress=\"${JENKINS_LISTEN_ADDRESS:-0.0.0.0}\"\n",
            0o755,
        );
        write(
            "usr/lib/systemd/system/jenkins.service",
            "[Unit]\nDescription=Jenkins Continuous Integration Server (stand-in)\nRequires=network.target\nAfter=network.target\n\n\
             [Service]\nType=simple\nExecStart=/usr/bin/jenkins\nRestart=on-failure\nUser=jenkins\nGroup=jenkins\n\
             Environment=\"JENKINS_HOME=/var/lib/jenkins\"\nWorkingDirectory=/var/lib/jenkins\n\
             Environment=\"JAVA_OPTS=-Djava.awt.headless=true\"\nEnvironment=\"JENKINS_PORT=8080\"\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            0o644,
        );
        let deb = web.join(format!("repo/binary/jenkins_{VERSION}_all.deb"));
        sh(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&root).arg(&deb));
        let size = std::fs::metadata(&deb).unwrap().len();
        let control = std::fs::read_to_string(root.join("DEBIAN/control")).unwrap();
        let packages =
            format!("{control}Filename: binary/jenkins_{VERSION}_all.deb\nSize: {size}\nSHA256: {}\n\n", sha256(&deb));
        std::fs::write(web.join("repo/binary/Packages"), &packages).unwrap();
        let date = sh(Command::new("date").args(["-u", "+%a, %d %b %Y %H:%M:%S UTC"]));
        let release = format!(
            "Origin: cgcloud-tests\nLabel: cgcloud-tests\nDate: {}\nSHA256:\n {} {} Packages\n",
            date.trim(),
            sha256(&web.join("repo/binary/Packages")),
            packages.len()
        );
        std::fs::write(web.join("repo/binary/Release"), release).unwrap();

        // Two signing keys: the repository's, and one whose fingerprint the master must refuse.
        let gnupg = d.join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        let gpg = || {
            let mut c = Command::new("gpg");
            c.arg("--homedir").arg(&gnupg).args(["--batch", "--quiet"]);
            c
        };
        sh(gpg().args([
            "--passphrase",
            "",
            "--quick-gen-key",
            "cgcloud test repository <repo@example.invalid>",
            "ed25519",
            "sign",
            "never",
        ]));
        sh(gpg().args([
            "--passphrase",
            "",
            "--quick-gen-key",
            "somebody else <else@example.invalid>",
            "ed25519",
            "sign",
            "never",
        ]));
        let fprs: Vec<String> = sh(gpg().args(["--with-colons", "--list-keys"]))
            .lines()
            .filter_map(|l| l.strip_prefix("fpr:").map(|r| r.trim_matches(':').to_owned()))
            .collect();
        assert_eq!(fprs.len(), 2, "{fprs:?}");
        sh(gpg()
            .args(["--yes", "--local-user", &fprs[0], "--clearsign", "-o"])
            .arg(web.join("repo/binary/InRelease"))
            .arg(web.join("repo/binary/Release")));
        let key = sh(gpg().args(["--armor", "--export", &fprs[0]]));
        std::fs::write(web.join("jenkins.io-test.key"), key).unwrap();

        // Served on the bridge, where the hosts reach the machine (on a port guests may reach:
        // the local cloud's default list is 8000-8999).
        let port = 8457;
        let server = Command::new("python3")
            .args(["-m", "http.server", "--bind", "10.199.0.1", &port.to_string(), "--directory"])
            .arg(&web)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://10.199.0.1:{port}");
        let started = std::time::Instant::now();
        while !Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &format!("{url}/repo/binary/Release")])
            .status()
            .unwrap()
            .success()
        {
            assert!(started.elapsed().as_secs() < 20, "the stand-in repository does not answer");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        StandIns { fingerprint: fprs[0].clone(), other_fingerprint: fprs[1].clone(), _dir: dir, server, url }
    }
}

fn args<'a>(base: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    let mut v = base.to_vec();
    v.extend(extra.iter().map(String::as_str));
    v
}

/// What the stand-in Jenkins on the master saw (waiting for it to answer).
fn standin_status(u: &User) -> Value {
    let out = u.ok(&[
        "ssh",
        MASTER,
        "--",
        "for i in $(seq 1 120); do curl -sf http://127.0.0.1:8080/cgcloud-standin/status && exit 0; sleep 1; done; exit 1",
    ]);
    serde_json::from_str(&out).unwrap()
}

/// The stand-in's status page through `cgcloud ssh jenkins-master --forward -- -N`, from the
/// loopback port cgcloud printed for Jenkins.
fn forwarded_standin_status(u: &User) -> Value {
    let f = Forwards::open(u, &[MASTER], "(Jenkins)");
    assert!(f.said.contains("-> localhost:8080 on the box (Jenkins)"), "{}", f.said);
    let page = f.json(8080, "/cgcloud-standin/status", Value::is_object);
    assert!(page.is_object(), "nothing from Jenkins through the forward:\n{}", f.said);
    page
}

/// The console's host key for `algo` as the EC2 plugin reads it: its released versions take the
/// first line anywhere in the console that holds the algorithm, newer ones the line that
/// starts with it between cloud-init's markers. Both must find the same key.
fn console_host_key(console: &str, algo: &str) -> Option<String> {
    let first = console.find(algo).map(|start| {
        let line = &console[start..];
        let line = line.split('\n').next().unwrap_or_default();
        line.split(' ').take(2).collect::<Vec<_>>().join(" ")
    })?;
    let block =
        console.split("-----BEGIN SSH HOST KEY KEYS-----").nth(1)?.split("-----END SSH HOST KEY KEYS-----").next()?;
    let marked = block.lines().map(str::trim).find(|l| l.starts_with(&format!("{algo} ")))?;
    let marked: String = marked.split(' ').take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(first, marked, "the first '{algo}' in the console is not the host key: the released plugin would fail");
    Some(marked)
}

/// Does what the EC2 plugin does with `template` up to the instance's console output: the
/// newest image its owners and filters find, launched with its type, tags, security group,
/// subnet and profile, and the key pair `key_name`. Returns the instance, its image and IP, and
/// (if `console`) the console once it holds the host keys.
fn plugin_launch(template: &Value, key_name: &str, user_data: &str, console: bool) -> Value {
    let script = format!(
        r#"
import base64, json, sys, time
t = json.loads(base64.b64decode('{template}'))
ec2 = client('ec2')
filters = [{{'Name': f['name'], 'Values': f['values'].split()}} for f in t['amiFilters']]
images = ec2.describe_images(Owners=t['amiOwners'].split(), Filters=filters)['Images']
newest = sorted(images, key=lambda i: i['CreationDate'])[-1]
groups = ec2.describe_security_groups(Filters=[{{'Name': 'group-name', 'Values': t['securityGroups'].split(',')}}])['SecurityGroups']
r = ec2.run_instances(ImageId=newest['ImageId'], InstanceType=t['type'], MinCount=1, MaxCount=1, KeyName={key_name:?},
    SecurityGroupIds=[g['GroupId'] for g in groups], SubnetId=t['subnetId'],
    IamInstanceProfile={{'Arn': t['iamInstanceProfile']}}, UserData=base64.b64decode('{user_data}').decode(),
    TagSpecifications=[{{'ResourceType': 'instance', 'Tags': [{{'Key': x['name'], 'Value': x['value']}} for x in t['tags']]}}])
i = r['Instances'][0]
out = {{'instance_id': i['InstanceId'], 'image_id': i['ImageId'], 'private_ip': i['PrivateIpAddress'], 'images_found': len(images)}}
deadline = time.time() + 240
while {console} and time.time() < deadline:
    text = ec2.get_console_output(InstanceId=i['InstanceId']).get('Output', '')
    if '-----END SSH HOST KEY KEYS-----' in text:
        out['console'] = text
        break
    time.sleep(1)
print(json.dumps(out))
"#,
        template = b64(&template.to_string()),
        user_data = b64(user_data),
        console = if console { "True" } else { "False" },
    );
    serde_json::from_str(boto3(&script).trim()).unwrap()
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn ssh_agent(ip: &str, user: &str, key: &Path, known_hosts: &Path, alias: &str, command: &str) -> std::process::Output {
    ssh_agent_with(ip, user, key, known_hosts, alias, "ssh-ed25519", command)
}

/// `ssh_agent` with the host key algorithm pinned to `algo`.
fn ssh_agent_with(
    ip: &str,
    user: &str,
    key: &Path,
    known_hosts: &Path,
    alias: &str,
    algo: &str,
    command: &str,
) -> std::process::Output {
    Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("HostKeyAlgorithms={algo}"))
        .arg("-o")
        .arg(format!("HostKeyAlias={alias}"))
        .arg(format!("{user}@{ip}"))
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root and the local cloud; run by .ci/run with --include-ignored"]
fn jenkins_end_to_end() {
    let (_one, u) = fresh_local_cloud();
    let si = StandIns::build();

    // A repository key with another fingerprint is refused before anything is installed, and
    // the launch leaves nothing behind, the persistent volume it made included.
    let refused = u.run(&args(&["create", MASTER, "-e", "1"], &si.options(&si.other_fingerprint)));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a wrong key was accepted");
    assert!(err.contains("refusing the signing key") && err.contains(&si.fingerprint), "{err}");
    assert!(u.json(&["list"]).as_array().unwrap().is_empty(), "the refused launch left a box");
    let volumes = boto3(
        "print(len(client('ec2').describe_volumes(Filters=[{'Name': 'tag:cgcloud:role', 'Values': ['jenkins-master']}])['Volumes']))",
    );
    assert_eq!(volumes.trim(), "0", "the refused launch left its persistent volume");

    // The master.
    let master = u.json(&args(&["create", MASTER, "-e", "1"], &si.options(&si.fingerprint)));
    let master_ip = master["private_ip"].as_str().unwrap().to_owned();
    let on_master = |script: &str| u.ok(&["ssh", MASTER, "--", script]);
    let status = standin_status(&u);
    assert_eq!(status["listen"], "127.0.0.1");
    // Jenkins listens on the box's loopback only: `ssh --forward` is the way in, as the role
    // declares it ([[forwards]]), on the port cgcloud prints.
    assert_eq!(forwarded_standin_status(&u)["listen"], "127.0.0.1");
    assert_eq!(status["home"], "/mnt/persistent/jenkins");
    assert_eq!(status["casc_dir"], "/etc/jenkins/casc");
    assert_eq!(status["user"], "jenkins");
    assert_eq!(status["password_length"], 32);
    assert!(status["java_opts"].as_str().unwrap().contains("-Djenkins.install.runSetupWizard=false"), "{status}");
    assert!(status["java_version"].as_str().unwrap().parse::<u32>().unwrap() >= 21, "{status}");
    let plugins: Vec<&str> = status["plugins"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for p in
        ["configuration-as-code", "ec2", "credentials", "ssh-credentials", "matrix-auth", "workflow-aggregator", "git"]
    {
        assert!(plugins.contains(&format!("{p}.jpi").as_str()), "{p} not in JENKINS_HOME/plugins: {plugins:?}");
    }
    // Jenkins did not start before its plugins and secrets were there (policy-rc.d at install).
    let starts = on_master("sudo cat /mnt/persistent/jenkins/standin-starts.log");
    assert_eq!(starts.lines().count(), 1, "Jenkins started more than once: {starts}");
    assert!(starts.contains(&format!("plugins={}", plugins.len())), "{starts}");
    // Nobody else reaches it: it listens on 127.0.0.1 only.
    let listening = on_master("ss -ltnH 'sport = :8080'");
    let addresses: Vec<&str> = listening.lines().filter_map(|l| l.split_whitespace().nth(3)).collect();
    assert!(
        !addresses.is_empty() && addresses.iter().all(|a| a.trim_start_matches("[::ffff:").starts_with("127.0.0.1")),
        "{listening}"
    );
    assert!(!Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://{master_ip}:8080/")])
        .status()
        .unwrap()
        .success());
    // JENKINS_HOME is on the persistent volume; the secrets are root's alone.
    assert_eq!(on_master("findmnt -n -o TARGET -T /mnt/persistent/jenkins").trim(), "/mnt/persistent");
    assert!(on_master("findmnt -n -o SOURCE /mnt/persistent").starts_with("/dev/"));
    assert_eq!(
        on_master("sudo stat -c '%U %a' /mnt/persistent/secrets /mnt/persistent/secrets/jenkins-admin-password /mnt/persistent/secrets/jenkins-agent-key"),
        "root 700\nroot 600\nroot 600\n"
    );
    let peek = u.run(&["ssh", MASTER, "--", "sudo -u jenkins cat /mnt/persistent/secrets/jenkins-admin-password"]);
    assert!(!peek.status.success(), "the jenkins user read the admin password");
    // IMDS (the profile that launches agents) is for root and jenkins, whose EC2 plugin uses it;
    // for any other user the connection is refused.
    let token = "curl -s -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 30' http://169.254.169.254/latest/api/token | wc -c";
    let imds = on_master(&format!(
        "echo root $(sudo sh -c \"{token}\"); echo jenkins $(sudo -u jenkins sh -c \"{token}\"); echo nobody $(sudo -u nobody sh -c \"{token}\")"
    ));
    let sizes: Vec<(&str, usize)> =
        imds.lines().filter_map(|l| l.split_once(' ')).map(|(u, n)| (u, n.trim().parse().unwrap_or(0))).collect();
    assert!(sizes.len() == 3 && sizes[0].1 > 0 && sizes[1].1 > 0 && sizes[2].1 == 0, "{imds}");
    let env = on_master("systemctl show jenkins -p Environment --value");
    assert!(
        env.contains("JENKINS_HOME=/mnt/persistent/jenkins") && env.contains("JENKINS_LISTEN_ADDRESS=127.0.0.1"),
        "{env}"
    );
    assert!(on_master("systemctl cat jenkins").contains("/etc/systemd/system/jenkins.service.d/override.conf"));
    assert_eq!(on_master("dpkg-query -W -f='${Version}' jenkins"), VERSION);
    assert!(on_master("test -s /etc/apt/keyrings/jenkins.gpg && echo pinned").contains("pinned"));
    // The agents' key is registered as an EC2 key pair of the namespace.
    let public = on_master("sudo cat /mnt/persistent/secrets/jenkins-agent-key.pub");
    let key = cgcloud_core::sshkey::PublicKey::parse_file(&public).unwrap();
    let pairs = boto3(
        "import json\nprint(json.dumps(client('ec2').describe_key_pairs(IncludePublicKey=True)['KeyPairs'], default=str))",
    );
    let pairs: Value = serde_json::from_str(pairs.trim()).unwrap();
    let pair = pairs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["KeyName"].as_str().unwrap().starts_with("jenkins@")
                && key.matches_fingerprint(p["KeyFingerprint"].as_str().unwrap())
        })
        .unwrap_or_else(|| panic!("no key pair holds the master's key: {pairs}"))
        .clone();
    let key_pair = pair["KeyName"].as_str().unwrap().to_owned();
    assert!(key_pair.ends_with("jenkins-master"), "{key_pair}");
    let marker = "persistent marker";
    on_master(&format!("echo '{marker}' | sudo -u jenkins tee /mnt/persistent/jenkins/marker >/dev/null"));

    // The agent image; register-agents writes its template and Jenkins reloads, once.
    u.ok(&["create", "-I", "-T", AGENT]);
    let reg = u.json(&["register-agents"]);
    assert_eq!(reg["action"], "reloaded", "{reg}");
    assert_eq!(reg["key_pair"], key_pair.as_str());
    let status = standin_status(&u);
    assert_eq!((status["reloads"].as_u64(), status["refused"].as_u64()), (Some(1), Some(0)), "{status}");
    let file = on_master("sudo cat /etc/jenkins/casc/agents.yaml");
    assert!(status["casc"].as_str().unwrap().contains(&file), "Jenkins did not reload the file as written");
    let parsed: Value = serde_yaml::from_str(&file).unwrap();
    assert_eq!(parsed, reg["casc"], "the file is not the data register-agents reported");
    let again = u.json(&["register-agents"]);
    assert_eq!(again["action"], "unchanged");
    assert_eq!(standin_status(&u)["reloads"], 1);
    // A reload Jenkins rejects fails register-agents, and the file Jenkins runs with comes back.
    on_master("curl -sf http://127.0.0.1:8080/cgcloud-standin/fail-next-reload");
    let rejected = u.run(&["register-agents", "--spot-bid", "0.07"]);
    let said = String::from_utf8_lossy(&rejected.stderr);
    assert!(!rejected.status.success(), "a rejected reload reported success: {said}");
    assert!(said.contains("did not reload") && said.contains("as it was"), "{said}");
    assert_eq!(on_master("sudo cat /etc/jenkins/casc/agents.yaml"), file, "the previous templates did not come back");
    assert_eq!(standin_status(&u)["reloads"], 1);
    let cloud = &parsed["jenkins"]["clouds"][0]["amazonEC2"];
    let templates = cloud["templates"].as_array().unwrap();
    assert_eq!(templates.len(), 1, "{cloud}");
    let t = &templates[0];
    assert_eq!(t["description"], AGENT);
    assert_eq!(t["labelString"], "debian trixie");
    assert_eq!(t["hostKeyVerificationStrategy"], "CHECK_NEW_HARD");
    assert_eq!(t["connectionStrategy"], "PRIVATE_IP");
    assert_eq!(t["ami"], "");
    assert_eq!(cloud["sshKeysCredentialsId"], cgcloud_core::jenkins::AGENT_KEY_CREDENTIAL);

    // The EC2 plugin's part, with the template as written.
    let keys = tempfile::tempdir().unwrap();
    let master_key = keys.path().join("master");
    std::fs::write(&master_key, on_master("sudo cat /mnt/persistent/secrets/jenkins-agent-key")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&master_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The plugin finds the key pair by fingerprint, not by name: for an imported RSA key, EC2's
    // fingerprint is the MD5 of the public key's DER form, computed here with OpenSSL.
    let sh = |script: &str| {
        let out = Command::new("sh").args(["-c", script]).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let k = master_key.display();
    let md5 = sh(&format!(
        "ssh-keygen -y -f {k} > {k}.pub && ssh-keygen -e -m PKCS8 -f {k}.pub | openssl pkey -pubin -outform DER | openssl md5 -c"
    ));
    let fingerprint = md5.trim().rsplit(' ').next().unwrap().to_owned();
    let by_fingerprint: Vec<&str> = pairs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["KeyFingerprint"] == fingerprint.as_str())
        .map(|p| p["KeyName"].as_str().unwrap())
        .collect();
    assert_eq!(by_fingerprint, [key_pair.as_str()], "the plugin's fingerprint {fingerprint} finds {by_fingerprint:?}");
    let newest_image = reg["templates"][0]["newest_image"].as_str().unwrap().to_owned();
    let user_data = "#!/bin/sh\necho launched-by-a-plugin > /var/tmp/plugin-user-data\n";
    let launched = plugin_launch(t, by_fingerprint[0], user_data, true);
    let id = launched["instance_id"].as_str().unwrap().to_owned();
    let ip = launched["private_ip"].as_str().unwrap().to_owned();
    assert_eq!(launched["image_id"], newest_image.as_str());
    let console = launched["console"].as_str().unwrap_or_else(|| panic!("no host keys on the console: {launched}"));
    let host_key =
        console_host_key(console, "ssh-ed25519").unwrap_or_else(|| panic!("no ed25519 host key in:\n{console}"));
    let known = keys.path().join("known_hosts");
    std::fs::write(&known, format!("{id} {host_key}\n")).unwrap();
    let user = t["remoteAdmin"].as_str().unwrap();
    let remote_fs = t["remoteFS"].as_str().unwrap();
    // The box's agent puts the master's key (its key-pair tag) into jenkins' authorized_keys.
    let started = std::time::Instant::now();
    while !ssh_agent(&ip, user, &master_key, &known, &id, "true").status.success() {
        assert!(started.elapsed().as_secs() < 120, "the master's key does not log in to the agent as {user}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    eprintln!(
        "the master's key logged in to the agent {:.1} s after its console showed the host key",
        started.elapsed().as_secs_f64()
    );
    // Whichever host key the plugin's SSH client negotiates (Apache MINA prefers ECDSA, then
    // ed25519, then RSA), the console shows it: every key sshd offers is there, and logs in.
    let scan = sh(&format!("ssh-keyscan -T 5 {ip} 2>/dev/null"));
    let offered: Vec<(String, String)> = scan
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect();
    assert!(offered.iter().any(|(a, _)| a == "ssh-ed25519"), "{scan}");
    for (algo, key) in &offered {
        let shown =
            console_host_key(console, algo).unwrap_or_else(|| panic!("sshd offers {algo}; the console lacks it"));
        assert_eq!(shown, format!("{algo} {key}"), "the console's {algo} key is not the one sshd offers");
        let pinned = keys.path().join(format!("known-{algo}"));
        std::fs::write(&pinned, format!("{id} {shown}\n")).unwrap();
        // An RSA key signs with SHA-2 (OpenSSH refuses SHA-1 `ssh-rsa` signatures).
        let negotiate = if algo == "ssh-rsa" { "rsa-sha2-512,rsa-sha2-256" } else { algo.as_str() };
        let out = ssh_agent_with(&ip, user, &master_key, &pinned, &id, negotiate, "true");
        assert!(out.status.success(), "{algo}: {out:?}");
    }
    eprintln!("host keys on the console and offered by sshd: {:?}", offered.iter().map(|o| &o.0).collect::<Vec<_>>());
    // A host key other than the console's is refused.
    let wrong = keys.path().join("wrong");
    let other = keygen(keys.path(), "other-host");
    std::fs::write(&wrong, format!("{id} {}", std::fs::read_to_string(other.with_extension("pub")).unwrap())).unwrap();
    let refused = ssh_agent(&ip, user, &master_key, &wrong, &id, "true");
    assert!(!refused.status.success(), "a wrong host key was accepted");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Host key verification failed"), "{refused:?}");
    // initScript, run as the plugin runs it (its own file, executed), then Java and remoteFS.
    let init = t["initScript"].as_str().unwrap();
    let run_init = format!("cat > /tmp/init.sh <<'CGCLOUD_EOF'\n{init}CGCLOUD_EOF\nchmod 700 /tmp/init.sh && /tmp/init.sh && test -f {remote_fs}/.writable && echo init-ok");
    let out = ssh_agent(&ip, user, &master_key, &known, &id, &run_init);
    assert!(String::from_utf8_lossy(&out.stdout).contains("init-ok"), "{out:?}");
    let java = ssh_agent(
        &ip,
        user,
        &master_key,
        &known,
        &id,
        &format!(
            "{} -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {{print $2}}'",
            t["javaPath"].as_str().unwrap()
        ),
    );
    let major: u32 = String::from_utf8_lossy(&java.stdout).trim().split('.').next().unwrap().parse().unwrap();
    assert!(major >= 21, "Java {major} on the agent");
    let probe = ssh_agent(
        &ip,
        user,
        &master_key,
        &known,
        &id,
        &format!("touch {remote_fs}/probe && rm {remote_fs}/probe && echo writable; cat /var/tmp/plugin-user-data"),
    );
    let said = String::from_utf8_lossy(&probe.stdout);
    assert!(said.contains("writable") && said.contains("launched-by-a-plugin"), "{probe:?}");
    // cgcloud sees the plugin's agent and verifies it with the host key the agent published.
    let listed = u.json(&["list", AGENT]);
    assert!(listed.as_array().unwrap().iter().any(|b| b["instance_id"] == id.as_str()), "{listed}");
    let started = std::time::Instant::now();
    loop {
        let r = u.run(&["ssh", AGENT, "-I", &id, "--", "true"]);
        if r.status.success() {
            break;
        }
        assert!(started.elapsed().as_secs() < 60, "cgcloud cannot reach the plugin's agent: {r:?}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    u.ok(&["terminate", AGENT, "-I", &id]);

    // A second agent image: the next launch picks it, with no change on the master.
    let b = u.json(&["recreate", AGENT]);
    let bid = b["instance_id"].as_str().unwrap().to_owned();
    u.ok(&["stop", AGENT, "-I", &bid]);
    u.ok(&["image", AGENT, "-I", &bid]);
    u.ok(&["terminate", AGENT, "-I", &bid]);
    let images = u.json(&["list-images", AGENT]);
    let second = images.as_array().unwrap().last().unwrap()["image_id"].as_str().unwrap().to_owned();
    assert_ne!(second, newest_image);
    let next = plugin_launch(t, &key_pair, "", false);
    assert_eq!(next["image_id"], second.as_str(), "the plugin's search did not pick the newest image");
    assert_eq!(next["images_found"], 2);
    u.ok(&["terminate", AGENT, "-I", next["instance_id"].as_str().unwrap()]);

    // The master's volume outlives it: an image of the master (without the volume), the volume
    // refused to a second master while the first has it, then a recreated master with the
    // same JENKINS_HOME, password and agents' key.
    let password = on_master("sudo cat /mnt/persistent/secrets/jenkins-admin-password");
    u.ok(&["stop", MASTER]);
    u.ok(&["image", MASTER]);
    u.ok(&["start", MASTER]);
    assert_eq!(standin_status(&u)["home"], "/mnt/persistent/jenkins", "Jenkins did not come back after stop/start");
    let busy = u.run(&["recreate", MASTER]);
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(!busy.status.success() && err.contains("share one persistent volume"), "{err}");
    assert_eq!(u.json(&["list", MASTER]).as_array().unwrap().len(), 1, "a refused recreate launched a box");
    u.ok(&["terminate", MASTER]);
    let again = u.cmd().args(["recreate", MASTER]).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(!String::from_utf8_lossy(&again.stderr).contains("registered key pair"), "the agents' key changed");
    assert_eq!(on_master("sudo cat /mnt/persistent/jenkins/marker").trim(), marker);
    assert_eq!(on_master("sudo cat /mnt/persistent/secrets/jenkins-admin-password"), password);
    let status = standin_status(&u);
    assert_eq!(status["home"], "/mnt/persistent/jenkins");
    assert_eq!(status["plugins"].as_array().unwrap().len(), plugins.len());
    assert!(status["casc"].as_str().unwrap().contains(&file), "agents.yaml did not survive");
    u.ok(&["terminate", MASTER]);
    drop(si);
    u.ok(&["local", "down"]);
}
