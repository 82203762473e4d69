//! API integration tests: the real `cgcloud` binary against the moto emulator on loopback.
//! Nothing here opens an SSH connection: boxes in moto are not real, so launches use `--quick`
//! (stop once running) or `--ssh-timeout 0` (fail before any connection attempt).

#![allow(clippy::unwrap_used)] // tests may unwrap
use serde_json::Value;
use std::io::{Read as _, Write as _};
use testkit::TestEnv;

const UBUNTU: &str = "generic-ubuntu-noble-box";
const DEBIAN: &str = "generic-debian-bookworm-box";

fn env() -> TestEnv {
    TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"))
}

/// An environment with a registered key pair named after the emulator's user (`moto`).
fn env_with_key() -> TestEnv {
    let e = env();
    e.with_key();
    e
}

fn boxes(e: &TestEnv, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["list"];
    args.extend_from_slice(extra);
    e.json(&args).as_array().unwrap().clone()
}

#[test]
fn list_roles_needs_no_cloud() {
    let e = env();
    let mut c = e.cmd();
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let out = c.args(["list-roles"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for role in [
        UBUNTU,
        DEBIAN,
        "generic-ubuntu-jammy-box",
        "generic-fedora-44-box",
        "generic-centos-stream-9-box",
        "generic-amazon-linux-2023-box",
    ] {
        assert!(text.contains(role), "{role} missing from:\n{text}");
    }
    let json = e.json(&["list-roles"]);
    let noble = json.as_array().unwrap().iter().find(|r| r["name"] == UBUNTU).unwrap();
    assert_eq!(noble["source"], "built-in");
    assert_eq!(noble["os"][0], "ubuntu-24.04");
}

#[test]
fn create_launches_a_tagged_box_in_the_namespace() {
    let e = env_with_key();
    let created = e.json(&["create", UBUNTU, "--quick", "--never-terminate"]);
    assert_eq!(created["role"], UBUNTU);
    assert_eq!(created["namespace"], "/moto/");
    assert_eq!(created["state"], "running");
    assert_eq!(created["key_name"], "moto");
    assert_eq!(created["admin_user"], "ubuntu");
    assert_eq!(created["instance_type"], "t3.micro");
    assert!(created["host_key"].as_str().unwrap().starts_with("ssh-ed25519 "));
    // The newest noble amd64 image of the catalogue was chosen, not the older or arm64 one.
    let images = std::fs::read_to_string(testkit::stock_amis()).unwrap();
    let catalogue: Value = serde_json::from_str(&images).unwrap();
    let newest = catalogue
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261101")
        .unwrap();
    assert_eq!(created["image_id"], newest["ami_id"]);

    let listed = boxes(&e, &[]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["instance_id"], created["instance_id"]);
    let id = created["instance_id"].as_str().unwrap();
    let shown = e.json(&["show", UBUNTU]);
    assert_eq!(shown["instance_id"], id);
    // The launch completed, so the box no longer carries the pending marker.
    let text = e.ok(&["list", UBUNTU]);
    assert!(text.contains(id) && text.contains("running"), "{text}");
}

#[test]
fn box_and_image_lifecycle() {
    let e = env_with_key();
    let b = e.json(&["create", DEBIAN, "-Q"]);
    let id = b["instance_id"].as_str().unwrap().to_owned();
    // An image needs a stopped box.
    let err = e.fails(&["image", DEBIAN]);
    assert!(err.contains("stop it first"), "{err}");
    e.ok(&["stop", DEBIAN]);
    assert_eq!(e.json(&["show", DEBIAN])["state"], "stopped");
    let image = e.json(&["image", DEBIAN]);
    let ami = image["image_id"].as_str().unwrap().to_owned();
    let images = e.json(&["list-images", DEBIAN]);
    assert_eq!(images.as_array().unwrap().len(), 1);
    assert_eq!(images[0]["image_id"], ami.as_str());
    assert_eq!(images[0]["generation"], 1);
    assert!(images[0]["name"].as_str().unwrap().starts_with("moto_generic-debian-bookworm-box__"));
    e.ok(&["start", DEBIAN, "-Q"]);
    assert_eq!(e.json(&["show", DEBIAN])["state"], "running");

    let re = e.json(&["recreate", DEBIAN, "-Q"]);
    assert_eq!(re["image_id"], ami.as_str());
    assert_eq!(re["generation"], 1);
    assert_ne!(re["instance_id"], id.as_str());
    // Two boxes now: selection without -o/-I is ambiguous and lists both.
    let err = e.fails(&["show", DEBIAN]);
    assert!(err.contains("2 boxes of role") && err.contains(&id) && err.contains("--ordinal"), "{err}");
    // Ordinals follow `list` (launch time, then private IP, then id).
    let order: Vec<Value> = boxes(&e, &[DEBIAN]).iter().map(|b| b["instance_id"].clone()).collect();
    assert_eq!(order.len(), 2);
    assert!(order.contains(&Value::from(id.as_str())) && order.contains(&re["instance_id"]));
    assert_eq!(e.json(&["show", DEBIAN, "-o", "0"])["instance_id"], order[0]);
    assert_eq!(e.json(&["show", DEBIAN, "-o", "-1"])["instance_id"], order[1]);
    e.ok(&["reboot", DEBIAN, "-I", re["instance_id"].as_str().unwrap()]);

    e.ok(&["terminate", DEBIAN, "-I", &id]);
    e.ok(&["terminate", DEBIAN]);
    assert!(boxes(&e, &[]).is_empty());

    // create -i boots a box of the role from a given image; --list prints it as a table row.
    let from = e.ok(&["create", DEBIAN, "-Q", "-i", &ami, "--list"]);
    let row: Vec<&str> = from.lines().filter(|l| l.contains(" running")).collect();
    assert_eq!(row.len(), 1, "--list prints one table row:\n{from}");
    let from = boxes(&e, &[DEBIAN]);
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["image_id"], ami.as_str());
    assert!(row[0].contains(from[0]["instance_id"].as_str().unwrap()), "{from:?} vs {row:?}");
    e.ok(&["terminate", DEBIAN]);

    // delete-image -K keeps the image's snapshot; without it, the snapshot goes too.
    let snapshot_of = |image: &str| {
        e.boto3(&format!(
            "ec2 = client('ec2')\n\
             i = ec2.describe_images(ImageIds=['{image}'])['Images'][0]\n\
             print(next(m['Ebs']['SnapshotId'] for m in i['BlockDeviceMappings'] if 'Ebs' in m))"
        ))
        .trim()
        .to_owned()
    };
    let exists = |snap: &str| {
        e.boto3(&format!(
            "ec2 = client('ec2')\n\
             print(any(s['SnapshotId'] == '{snap}' for s in ec2.describe_snapshots(OwnerIds=['self'])['Snapshots']))"
        ))
        .trim()
            == "True"
    };
    let kept = snapshot_of(&ami);
    assert!(exists(&kept), "image {ami} has no snapshot {kept}");
    e.ok(&["delete-image", DEBIAN, "-i", &ami, "-K"]);
    assert!(e.json(&["list-images", DEBIAN]).as_array().unwrap().is_empty());
    assert!(exists(&kept), "delete-image -K deleted snapshot {kept}");
    let err = e.fails(&["recreate", DEBIAN, "-Q"]);
    assert!(err.contains("has no images"), "{err}");

    // Without -K the snapshot goes with the image.
    e.ok(&["create", DEBIAN, "-Q"]);
    e.ok(&["stop", DEBIAN]);
    let second = e.json(&["image", DEBIAN])["image_id"].as_str().unwrap().to_owned();
    e.ok(&["terminate", DEBIAN]);
    let gone = snapshot_of(&second);
    e.ok(&["delete-image", DEBIAN, "-i", &second]);
    assert!(!exists(&gone), "delete-image left snapshot {gone}");
}

#[test]
fn failed_launch_is_rolled_back_or_kept_with_n() {
    let e = env_with_key();
    // --ssh-timeout 0 fails the SSH wait before any connection attempt.
    let err = e.fails(&["create", DEBIAN, "--ssh-timeout", "0"]);
    assert!(err.contains("timed out") && err.contains("rolling back"), "{err}");
    assert!(boxes(&e, &[]).is_empty(), "the failed launch left a box");
    // The security group this launch created went with it (IAM is global and shared with
    // other tests of this namespace, so only the region's groups are checked).
    let out = e.json(&["reset-security", "--dry-run"]);
    assert!(out.as_array().unwrap().iter().all(|i| i["kind"] != "security-group"), "{out}");
    // In a namespace of its own, the IAM role and profile it made go too.
    let out = e.json(&["-n", "/rolled-back/", "reset-security", "--dry-run"]);
    assert!(out.as_array().unwrap().is_empty(), "{out}");
    let err = e.fails(&["-n", "/rolled-back/", "create", DEBIAN, "--ssh-timeout", "0"]);
    assert!(err.contains("rolling back"), "{err}");
    let out = e.json(&["-n", "/rolled-back/", "reset-security", "--dry-run"]);
    assert!(out.as_array().unwrap().is_empty(), "the rollback left IAM or a group: {out}");

    let err = e.fails(&["create", DEBIAN, "--ssh-timeout", "0", "-N"]);
    assert!(err.contains("keeping"), "{err}");
    let kept = boxes(&e, &[]);
    assert_eq!(kept.len(), 1);
    // cleanup finds the kept box and removes it.
    let found = e.json(&["cleanup", "--dry-run"]);
    assert!(found.as_array().unwrap().iter().any(|i| i["id"] == kept[0]["instance_id"]), "{found}");
    e.ok(&["cleanup", "--yes"]);
    assert!(boxes(&e, &[]).is_empty());
}

/// Copies the cgcloud binary into a directory of its own, where no `cgcloud-agent` lies beside
/// it (as after `cargo build -p cgcloud` alone).
fn cgcloud_without_agent() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("cgcloud");
    std::fs::copy(env!("CARGO_BIN_EXE_cgcloud"), &bin).unwrap();
    (dir, bin)
}

#[test]
fn launches_check_local_needs_before_creating_anything() {
    let (_dir, bin) = cgcloud_without_agent();
    let mut e = TestEnv::new(&bin);
    let key = e.keygen("id_ed25519", "ed25519");
    e.ok(&["register-key", key.with_extension("pub").to_str().unwrap()]);
    let nothing_created = |e: &TestEnv| {
        assert!(boxes(e, &[]).is_empty(), "a box was launched");
        let found = e.json(&["reset-security", "--dry-run"]);
        assert!(found.as_array().unwrap().iter().all(|i| i["kind"] != "security-group"), "{found}");
    };
    // No agent to provision with: the error and hint come before any launch.
    let err = e.fails(&["create", DEBIAN]);
    assert!(
        err.contains(&format!("cannot find cgcloud-agent next to {}", bin.display()))
            && err.contains("cargo build -p cgcloud-agent")
            && err.contains("CGCLOUD_AGENT_BINARY"),
        "{err}"
    );
    assert!(!err.contains("launching") && !err.contains("rolling back"), "{err}");
    nothing_created(&e);
    // The same for a release agent without its checksum.
    e.set_env("CGCLOUD_AGENT_URL", "http://127.0.0.1:9/cgcloud-agent-{version}-{arch}");
    let err = e.fails(&["create", DEBIAN]);
    assert!(err.contains("CGCLOUD_AGENT_SHA256"), "{err}");
    nothing_created(&e);
    // No `ssh` on PATH: named with its package, before anything is created.
    let mut e = TestEnv::new(&bin);
    let tools = e.home.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let keygen = String::from_utf8(
        std::process::Command::new("sh").args(["-c", "command -v ssh-keygen"]).output().unwrap().stdout,
    )
    .unwrap();
    std::os::unix::fs::symlink(keygen.trim(), tools.join("ssh-keygen")).unwrap();
    e.set_env("PATH", tools.to_str().unwrap());
    e.set_env("CGCLOUD_AGENT_BINARY", bin.to_str().unwrap());
    e.ok(&["register-key", key.with_extension("pub").to_str().unwrap()]);
    let err = e.fails(&["create", DEBIAN]);
    assert!(err.contains("ssh not found on PATH") && err.contains("apt-get install openssh-client"), "{err}");
    nothing_created(&e);
    // Too many key-pair patterns for the tag that records them.
    let many: Vec<String> = (0..40).map(|i| format!("colleague-number-{i}")).collect();
    let mut args = vec!["create", DEBIAN, "-Q", "-k", "moto"];
    args.extend(many.iter().map(String::as_str));
    let err = e.fails(&args);
    assert!(err.contains("key-pair patterns") && err.contains("at most 256"), "{err}");
    nothing_created(&e);
    // Without SSH or provisioning (-Q), neither is needed.
    let quick = e.json(&["create", DEBIAN, "-Q"]);
    assert_eq!(quick["state"], "running");
    e.ok(&["terminate", DEBIAN]);
}

#[test]
fn terminate_on_success_with_t() {
    let e = env_with_key();
    e.ok(&["create", DEBIAN, "-Q", "-T"]);
    assert!(boxes(&e, &[]).is_empty());
}

#[test]
fn register_key_rsa_ed25519_force() {
    let e = env();
    let rsa = e.keygen("id_rsa", "rsa");
    let ed = e.keygen("id_ed", "ed25519");
    let rsa_pub = rsa.with_extension("pub");
    let ed_pub = ed.with_extension("pub");
    let r = e.json(&["register-key", rsa_pub.to_str().unwrap(), "-k", "alice"]);
    assert_eq!(r["action"], "imported");
    assert_eq!(r["key_type"], "rsa");
    // The RSA fingerprint is the MD5 of the DER public key, as EC2 computes it; check it
    // against openssl.
    let der = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ssh-keygen -e -m PKCS8 -f {} | openssl pkey -pubin -outform DER | openssl md5 -c",
            rsa_pub.display()
        ))
        .output()
        .unwrap();
    let md5 = String::from_utf8_lossy(&der.stdout).trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(r["fingerprint"], md5.as_str());
    assert_eq!(e.json(&["register-key", rsa_pub.to_str().unwrap(), "-k", "alice"])["action"], "unchanged");
    let err = e.fails(&["register-key", ed_pub.to_str().unwrap(), "-k", "alice"]);
    assert!(err.contains("already exists with a different key") && err.contains("--force"), "{err}");
    let r = e.json(&["register-key", ed_pub.to_str().unwrap(), "-k", "alice", "--force"]);
    assert_eq!(r["action"], "replaced");
    assert_eq!(r["key_type"], "ed25519");
    // __me__ is the default name.
    assert_eq!(e.json(&["register-key", ed_pub.to_str().unwrap()])["key_pair"], "moto");
}

#[test]
fn bad_key_files_are_explained() {
    let e = env();
    let key = e.keygen("k", "ed25519");
    let err = e.fails(&["register-key", key.to_str().unwrap()]);
    assert!(err.contains("private key") && err.contains(".pub"), "{err}");
    let junk = e.home.path().join("junk.pub");
    std::fs::write(&junk, "ssh-ed25519 not-base64!!! x\n").unwrap();
    let err = e.fails(&["register-key", junk.to_str().unwrap()]);
    assert!(err.contains("not a usable public key") && err.contains("base64"), "{err}");
    let ecdsa = e.keygen("ec", "ecdsa");
    let err = e.fails(&["register-key", ecdsa.with_extension("pub").to_str().unwrap()]);
    assert!(err.contains("unsupported key type 'ecdsa-sha2-nistp256'"), "{err}");
    let err = e.fails(&["register-key", "/nonexistent/key.pub"]);
    assert!(err.contains("cannot read key file /nonexistent/key.pub"), "{err}");
}

#[test]
fn missing_key_pair_says_register_key() {
    let e = env();
    let err = e.fails(&["create", DEBIAN, "-Q"]);
    assert!(err.contains("key pair 'moto' does not exist") && err.contains("cgcloud register-key"), "{err}");
    let err = e.fails(&["create", DEBIAN, "-Q", "-k", "dev*"]);
    assert!(err.contains("first key pair must be a plain name"), "{err}");
}

#[test]
fn namespaces_are_isolated_including_root() {
    let e = env_with_key();
    let a = e.json(&["-n", "/team.a/", "create", DEBIAN, "-Q"]);
    let b = e.json(&["-n", "/team-b/", "create", DEBIAN, "-Q"]);
    assert_eq!(a["namespace"], "/team.a/");
    let in_a = boxes(&e, &["-n", "/team.a/"]);
    assert_eq!(in_a.len(), 1);
    assert_eq!(in_a[0]["instance_id"], a["instance_id"]);
    assert!(boxes(&e, &["-n", "/"]).is_empty(), "the root namespace must not see child namespaces");
    assert!(boxes(&e, &["-n", "/team.a/sub/"]).is_empty());
    // Terminating in one namespace cannot reach the other.
    let err = e.fails(&["-n", "/team.a/", "terminate", DEBIAN, "-I", b["instance_id"].as_str().unwrap()]);
    assert!(err.contains("is not a box of role"), "{err}");
    e.ok(&["-n", "/team.a/", "terminate", DEBIAN]);
    assert_eq!(boxes(&e, &["-n", "/team-b/"]).len(), 1);
    // reset-security in the root namespace or in /team.a/ leaves /team-b/'s group alone.
    e.ok(&["-n", "/", "reset-security", "--yes"]);
    e.ok(&["-n", "/team.a/", "reset-security", "--yes"]);
    e.ok(&["-n", "/team-b/", "stop", DEBIAN]);
    let groups = e.json(&["-n", "/team-b/", "reset-security", "--dry-run"]);
    assert_eq!(groups.as_array().unwrap().len(), 0, "in-use group is kept: {groups}");
    e.ok(&["-n", "/team-b/", "terminate", DEBIAN]);
    let found = e.json(&["-n", "/team-b/", "reset-security", "--dry-run"]);
    let kinds: Vec<&str> = found.as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["instance-profile", "iam-role", "security-group"], "{found}");
    assert!(found
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["id"].as_str().unwrap().starts_with("team-b_") || i["why"] == "team-b_generic-debian-bookworm-box"));
}

#[test]
fn plugin_role_with_iam_gets_a_profile_that_reset_security_removes() {
    let mut e = env_with_key();
    let dir = e.home.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("reader.toml"),
        r#"name = "reader-box"
description = "A box that may read EC2"
include = ["base"]
os = ["debian-12"]
[[iam]]
action = ["ec2:Describe*"]
[[ports]]
proto = "tcp"
port = 8080
from = "cluster"
description = "app"
"#,
    )
    .unwrap();
    e.set_env("CGCLOUD_PLUGINS", dir.to_str().unwrap());
    let roles = e.json(&["list-roles"]);
    let reader = roles.as_array().unwrap().iter().find(|r| r["name"] == "reader-box").unwrap();
    assert!(reader["source"].as_str().unwrap().ends_with("reader.toml"));
    e.ok(&["-n", "/iam/", "create", "reader-box", "-Q"]);
    e.ok(&["-n", "/iam/", "terminate", "reader-box"]);
    let found = e.json(&["-n", "/iam/", "reset-security", "--dry-run"]);
    let kinds: Vec<&str> = found.as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["instance-profile", "iam-role", "security-group"], "{found}");
    assert!(found.as_array().unwrap().iter().all(|i| i["id"] == "iam_reader-box" || i["kind"] == "security-group"));
    e.ok(&["-n", "/iam/", "reset-security", "--yes"]);
    assert!(e.json(&["-n", "/iam/", "reset-security", "--dry-run"]).as_array().unwrap().is_empty());

    // A port rule that names neither a port nor a range once opened every port.
    std::fs::write(
        dir.join("open.toml"),
        "name = \"open-box\"\ndescription = \"x\"\ninclude = [\"base\"]\nos = [\"debian-12\"]\n\
         [[ports]]\nproto = \"tcp\"\nfrom = \"anywhere\"\ndescription = \"oops\"\n",
    )
    .unwrap();
    let err = e.fails(&["-n", "/iam/", "create", "open-box", "-Q"]);
    assert!(err.contains("open.toml") && err.contains("names neither `port` nor `range`"), "{err}");
}

/// update-instance-profile: a role that gains (or loses) permissions after its boxes were
/// launched brings them along without relaunching them.
#[test]
fn update_instance_profile_follows_the_role() {
    let mut e = env_with_key();
    let dir = e.home.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let role = |iam: bool| {
        let mut t = "name = \"grow-box\"\ndescription = \"x\"\ninclude = [\"base\"]\nos = [\"debian-12\"]\n".to_owned();
        if iam {
            t.push_str("[[iam]]\naction = [\"ec2:DescribeInstances\"]\n");
        }
        std::fs::write(dir.join("grow.toml"), t).unwrap();
    };
    role(false);
    e.set_env("CGCLOUD_PLUGINS", dir.to_str().unwrap());
    let b = e.json(&["-n", "/upd/", "create", "grow-box", "-Q", "--no-agent"]);
    assert!(b["instance_profile"].is_null(), "no permissions, no profile: {b}");
    let id = b["instance_id"].as_str().unwrap().to_owned();
    // The role now needs a permission: the box gets the profile.
    role(true);
    let u = e.json(&["-n", "/upd/", "update-instance-profile", "grow-box", "-I", &id]);
    assert_eq!(
        (u["instance_profile"].as_str(), u["association_changed"].as_bool()),
        (Some("upd_grow-box"), Some(true)),
        "{u}"
    );
    let shown = e.json(&["-n", "/upd/", "show", "grow-box"]);
    assert_eq!(shown["instance_profile"], "upd_grow-box", "{shown}");
    // Nothing to do the second time (the box picked by ordinal, then by cluster: none).
    let u = e.json(&["-n", "/upd/", "update-instance-profile", "grow-box", "-o", "0"]);
    assert_eq!(u["association_changed"], false, "{u}");
    // Permissions gone from the role: the box's profile goes too.
    role(false);
    let u = e.json(&["-n", "/upd/", "update-instance-profile", "grow-box"]);
    assert_eq!((u["instance_profile"].is_null(), u["association_changed"].as_bool()), (true, Some(true)), "{u}");
    assert!(e.json(&["-n", "/upd/", "show", "grow-box"])["instance_profile"].is_null());
    let err = e.fails(&["-n", "/upd/", "update-instance-profile", "grow-box", "-c", "nosuch"]);
    assert!(err.contains("nosuch"), "{err}");
    let err = e.fails(&["-n", "/upd/", "update-instance-profile", "grow-box", "-I", "i-0000000000000000f"]);
    assert!(err.contains("i-0000000000000000f"), "{err}");
    e.ok(&["-n", "/upd/", "terminate", "grow-box"]);
    e.ok(&["-n", "/upd/", "reset-security", "--yes"]);
}

/// cleanup and reset-security reach the namespaces below theirs only when asked (-r), list them
/// first like their own, and never touch a sibling whose name merely starts the same.
#[test]
fn cleanup_and_reset_security_recursive() {
    let e = env_with_key();
    for ns in ["/rec/", "/rec/child/", "/rec/child/deeper/", "/recx/"] {
        let b = e.json(&["-n", ns, "create", DEBIAN, "-Q"]);
        e.ok(&["-n", ns, "terminate", DEBIAN, "-I", b["instance_id"].as_str().unwrap()]);
    }
    let namespaces = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> =
            v.as_array().unwrap().iter().map(|i| i["namespace"].as_str().unwrap().to_owned()).collect();
        n.dedup();
        n
    };
    let own = e.json(&["-n", "/rec/", "cleanup", "--dry-run"]);
    assert_eq!(namespaces(&own), ["/rec/"], "{own}");
    let all = e.json(&["-n", "/rec/", "cleanup", "--dry-run", "-r"]);
    assert_eq!(namespaces(&all), ["/rec/", "/rec/child/", "/rec/child/deeper/"], "{all}");
    assert!(all.as_array().unwrap().iter().all(|i| i["kind"] == "security-group"), "{all}");
    let text = e.ok(&["-n", "/rec/", "cleanup", "--dry-run", "--recursive"]);
    assert!(text.starts_with("NAMESPACE") && text.contains("/rec/child/deeper/"), "{text}");
    e.ok(&["-n", "/rec/child/", "cleanup", "-r", "--yes"]);
    let left = e.json(&["-n", "/rec/", "cleanup", "--dry-run", "-r"]);
    assert_eq!(namespaces(&left), ["/rec/"], "only /rec/'s own group is left: {left}");
    e.ok(&["-n", "/rec/", "reset-security", "-r", "--yes"]);
    assert!(e.json(&["-n", "/rec/", "reset-security", "--dry-run", "-r"]).as_array().unwrap().is_empty());
    let sibling = e.json(&["-n", "/recx/", "reset-security", "--dry-run"]);
    assert_eq!(namespaces(&sibling), ["/recx/"], "the sibling /recx/ keeps its group: {sibling}");
    e.ok(&["-n", "/recx/", "reset-security", "--yes"]);
}

/// `list --original` shows the boxes the original (Python) CGCloud made in the namespace, by
/// its tags and name scheme, and nothing else: not ours, not another namespace's, not a child
/// namespace's, not an unrelated instance that happens to share the prefix.
#[test]
fn list_original_shows_the_python_cgcloud_boxes() {
    let e = env_with_key();
    let ours = e.json(&["-n", "/hannes/", "create", DEBIAN, "-Q"]);
    e.boto3(
        "ec2 = client('ec2')\n\
         ami = ec2.describe_images(Owners=['amazon'])['Images'][0]['ImageId']\n\
         def run(tags):\n    \
             spec = [{'ResourceType': 'instance', 'Tags': [{'Key': k, 'Value': v} for k, v in tags.items()]}]\n    \
             return ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=spec)['Instances'][0]['InstanceId']\n\
         leader = run({'Name': 'hannes_spark-master', 'generation': '2', 'cluster_ordinal': '0'})\n\
         ec2.create_tags(Resources=[leader], Tags=[{'Key': 'cluster_name', 'Value': leader}, {'Key': 'leader_instance_id', 'Value': leader}])\n\
         run({'Name': 'hannes_spark-slave', 'generation': '2', 'cluster_ordinal': '1', 'cluster_name': leader, 'leader_instance_id': leader})\n\
         run({'Name': 'hannes_toil__box', 'generation': '0', 'cluster_ordinal': '0', 'cluster_name': 'night\\tshift'})\n\
         run({'Name': 'hannes_sub_jenkins-master', 'generation': '1'})\n\
         run({'Name': 'alice_jenkins-master', 'generation': '1'})\n\
         run({'Name': 'hannes_web-server'})\n",
    );
    let found = e.json(&["-n", "/hannes/", "list", "--original"]);
    let rows: Vec<(String, Option<u64>, bool)> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["role"].as_str().unwrap().to_owned(), b["ordinal"].as_u64(), b["cluster"].is_string()))
        .collect();
    assert_eq!(
        rows,
        [
            ("spark-master".into(), Some(0), false),
            ("spark-slave".into(), Some(1), true),
            ("toil_box".into(), Some(0), true)
        ],
        "{found}"
    );
    let arr = found.as_array().unwrap();
    assert_eq!(arr[1]["cluster"], arr[0]["instance_id"], "a worker's cluster is its leader's id: {found}");
    assert_eq!(arr[2]["cluster"], "night shift", "tag text is made printable: {found}");
    assert!(arr.iter().all(|b| b["instance_id"] != ours["instance_id"]));
    // Ours are not among them, and theirs are not among ours.
    let listed = boxes(&e, &["-n", "/hannes/"]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(e.json(&["-n", "/hannes/sub/", "list", "--original"]).as_array().unwrap().len(), 1);
    let only = e.json(&["-n", "/hannes/", "list", "--original", "spark-slave"]);
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");
}

/// Option values read back from an image's or a box's tags (which a box may have written) are
/// checked again before they are used: a bad one stops recreate and provision.
#[test]
fn option_values_from_tags_are_checked_again() {
    let e = env_with_key();
    let b = e.json(&["-n", "/opt/", "create", "jenkins-master", "-Q"]);
    let id = b["instance_id"].as_str().unwrap().to_owned();
    e.ok(&["-n", "/opt/", "stop", "jenkins-master"]);
    let image = e.json(&["-n", "/opt/", "image", "jenkins-master"])["image_id"].as_str().unwrap().to_owned();
    let bad = "8080; touch /tmp/owned";
    e.boto3(&format!(
        "client('ec2').create_tags(Resources=['{image}', '{id}'], Tags=[{{'Key': 'cgcloud:option:port', 'Value': '{bad}'}}])"
    ));
    e.ok(&["-n", "/opt/", "terminate", "jenkins-master"]);
    let err = e.fails(&["-n", "/opt/", "recreate", "jenkins-master", "-Q"]);
    assert!(err.contains("carries a bad value for option 'port'"), "{err}");
    assert!(!err.contains("launching"), "checked before the launch: {err}");
    e.ok(&["-n", "/opt/", "delete-image", "jenkins-master"]);
    e.ok(&["-n", "/opt/", "cleanup", "--yes", "--persistent-volumes"]);
    e.ok(&["-n", "/opt/", "reset-security", "--yes"]);
}

#[test]
fn bad_inputs_get_one_line_causes_and_hints() {
    let e = env_with_key();
    let err = e.fails(&["-n", "/Bad Namespace/", "list"]);
    assert!(err.contains("invalid namespace '/Bad Namespace/'") && err.contains("hint:"), "{err}");
    let err = e.fails(&["create", "generic-debian-bookwrm-box"]);
    assert!(
        err.contains("no such role: 'generic-debian-bookwrm-box'; did you mean 'generic-debian-bookworm-box'"),
        "{err}"
    );
    let err = e.fails(&["create", DEBIAN, "-Q", "-t", "t9.gigantic"]);
    assert!(err.contains("instance type 't9.gigantic' does not exist in region"), "{err}");
    let err = e.fails(&["-z", "us-east-1a", "--region", "us-west-2", "list"]);
    assert!(err.contains("zone 'us-east-1a' is not in region 'us-west-2'"), "{err}");
    let err = e.fails(&["-z", &format!("{}q", e.region), "create", DEBIAN, "-Q"]);
    assert!(err.contains("does not exist in region"), "{err}");
    let err = e.fails(&["create", DEBIAN, "-Q", "-O", "nope=1"]);
    assert!(err.contains("option 'nope' is not supported by role"), "{err}");
    let err = e.fails(&["create", DEBIAN, "-Q", "--os", "ubuntu-24.04"]);
    assert!(err.contains("does not support OS 'ubuntu-24.04'"), "{err}");
    let err = e.fails(&["show", DEBIAN]);
    assert!(err.contains("no box of role 'generic-debian-bookworm-box' in namespace '/moto/'"), "{err}");
    let err = e.fails(&["create-cluster", "generic", "-s", "4000000000"]);
    assert!(err.contains("4000000000 is not in 0..=5000"), "{err}");
    // The API's port, moto's above it, and the instance metadata service's above that.
    let err = e.fails(&["local", "up", "--port", "65534"]);
    assert!(err.contains("65534 is not in 1..=65533"), "{err}");
    let long = "/a-rather-long-team-namespace/for-deployments/";
    let err = e.fails(&["-n", long, "create", DEBIAN, "-Q"]);
    assert!(err.contains("AWS allows 64") && err.contains("shorter namespace"), "{err}");
    assert!(e.json(&["-n", long, "reset-security", "--dry-run"]).as_array().unwrap().is_empty());
    let err = e.fails(&["create", DEBIAN, "-Q", "--subnet", "subnet-0000000000000000f"]);
    assert!(err.contains("subnet 'subnet-0000000000000000f' does not exist"), "{err}");
}

#[test]
fn missing_credentials_are_explained() {
    let e = env();
    let mut c = e.cmd();
    c.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
    let out = c.args(["list"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no AWS credentials found") && err.contains("hint:") && err.contains("--profile local"),
        "{err}"
    );
}

#[test]
fn unreachable_endpoint_is_explained() {
    let e = env();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = e.fails(&["--endpoint", &endpoint, "-n", "/x/", "list"]);
    assert!(err.contains(&format!("cannot reach the AWS endpoint {endpoint}")), "{err}");
    assert!(err.contains("cgcloud local up"), "{err}");
}

/// A fake endpoint that always answers with EC2's throttling error, counting requests.
fn throttling_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 65536];
            let mut req = Vec::new();
            // Read headers and body (small requests).
            while let Ok(n) = s.read(&mut buf) {
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req);
                if let Some(h) = text.find("\r\n\r\n") {
                    let len = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if req.len() >= h + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = "<?xml version=\"1.0\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>";
            let _ = write!(s, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (url, count)
}

#[test]
fn throttling_is_retried_with_backoff_then_explained() {
    let e = env();
    let (url, count) = throttling_server();
    let mut c = e.cmd();
    c.env("CGCLOUD_MAX_ATTEMPTS", "3");
    let out = c.args(["--endpoint", &url, "-n", "/x/", "list"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("throttled") && err.contains("RequestLimitExceeded") && err.contains("hint:"), "{err}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3, "three attempts were made");
}

#[test]
fn config_profile_supplies_settings() {
    let e = env_with_key();
    let cfg = e.home.path().join(".config/cgcloud/config.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(
        &cfg,
        format!("[profiles.emu]\nendpoint = \"{}\"\nregion = \"{}\"\nnamespace = \"/from-profile/\"\naws_access_key_id = \"testing\"\naws_secret_access_key = \"testing\"\n", e.endpoint, e.region),
    )
    .unwrap();
    let mut c = e.cmd();
    c.env_remove("AWS_ENDPOINT_URL").env_remove("AWS_REGION").env_remove("AWS_ACCESS_KEY_ID");
    let out = c.args(["--profile", "emu", "--output", "json", "create", DEBIAN, "-Q"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["namespace"], "/from-profile/");
    // The flag outranks the profile.
    let mut c = e.cmd();
    c.env_remove("AWS_ENDPOINT_URL").env_remove("AWS_REGION");
    let out = c.args(["--profile", "emu", "-n", "/flag/", "--output", "json", "list"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().len(), 0);
    // The environment outranks the profile, and the flag the environment.
    let created = |env_ns: &str, flag: Option<&str>| -> Value {
        let mut c = e.cmd();
        c.env_remove("AWS_ENDPOINT_URL").env_remove("AWS_REGION").env("CGCLOUD_NAMESPACE", env_ns);
        c.args(["--profile", "emu", "--output", "json"]);
        if let Some(ns) = flag {
            c.args(["-n", ns]);
        }
        let out = c.args(["create", DEBIAN, "-Q"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(created("/from-env/", None)["namespace"], "/from-env/");
    assert_eq!(created("/from-env/", Some("/from-flag/"))["namespace"], "/from-flag/");
}

/// The user data EC2 (moto) was given for an instance.
fn launch_request(e: &TestEnv, id: &str) -> String {
    let body = format!(
        "ud = client('ec2').describe_instance_attribute(InstanceId='{id}', Attribute='userData')['UserData'].get('Value', '')\n\
         print(base64.b64decode(ud).decode())"
    );
    e.boto3(&body)
}

#[test]
fn key_changes_are_published_after_agent_queues_vanished_elsewhere() {
    let e = env();
    // An agent's subscription whose queue was deleted outside cgcloud (its box terminated in
    // the console): moto then refuses every publish to the topic.
    e.boto3(
        "sqs, sns = client('sqs'), client('sns')\n\
         url = sqs.create_queue(QueueName='cgcloud-agent-gone')['QueueUrl']\n\
         arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=['QueueArn'])['Attributes']['QueueArn']\n\
         topic = sns.create_topic(Name='cgcloud-agent-notifications')['TopicArn']\n\
         sns.subscribe(TopicArn=topic, Protocol='sqs', Endpoint=arn)\n\
         sqs.delete_queue(QueueUrl=url)",
    );
    let key = e.keygen("id_ed25519", "ed25519");
    let out = e.run(&["register-key", key.with_extension("pub").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("could not notify"), "{err}");
    let left = e.boto3(
        "sns = client('sns')\n\
         topic = sns.create_topic(Name='cgcloud-agent-notifications')['TopicArn']\n\
         print(len(sns.list_subscriptions_by_topic(TopicArn=topic)['Subscriptions']))",
    );
    assert_eq!(left.trim(), "0", "the dead queue's subscription was removed");
}

#[test]
fn instance_store_is_mapped_and_listed_only_on_xen_types() {
    let e = env_with_key();
    // c3.large (Xen) has two instance-store disks that exist only where the launch maps them.
    // moto refuses such mappings (EC2 takes them), so this also proves the launch goes ahead
    // without them there.
    let xen = e.json(&["create", DEBIAN, "-t", "c3.large", "--quick", "--never-terminate"]);
    let user_data = launch_request(&e, xen["instance_id"].as_str().unwrap());
    let doc: Value = serde_json::from_str(user_data.trim_start_matches("#cloud-config\n")).unwrap();
    assert_eq!(doc["write_files"][0]["path"], "/etc/cgcloud/instance-store", "{user_data}");
    assert_eq!(doc["write_files"][0]["content"], "/dev/sdb\n/dev/sdc\n");
    // m5d.large (Nitro) shows its disk as NVMe by itself: nothing to map or list.
    let nitro = e.json(&["create", DEBIAN, "-t", "m5d.large", "--quick", "--never-terminate"]);
    let user_data = launch_request(&e, nitro["instance_id"].as_str().unwrap());
    assert!(!user_data.contains("write_files"), "{user_data}");
    assert!(user_data.contains("ssh_keys"), "{user_data}");
}

#[test]
fn user_patterns_trust_only_key_pairs_their_user_registered() {
    let e = env_with_key();
    let register = |me: &str, file: &std::path::Path, name: &str| {
        let mut c = e.cmd();
        c.env("CGCLOUD_ME", me).args(["--output", "json", "register-key", file.to_str().unwrap(), "-k", name]);
        let out = c.output().unwrap();
        serde_json::from_str::<Value>(&testkit::succeeded(&["register-key"], &out)).unwrap()
    };
    let alice = e.keygen("alice", "ed25519").with_extension("pub");
    let mallory = e.keygen("mallory", "ed25519").with_extension("pub");
    register("alice", &alice, "alice@laptop");
    // Mallory names her key pair for alice (register-key tags it as hers), and imports another
    // one untagged, as anyone with ec2:ImportKeyPair can.
    register("mallory", &mallory, "alice@evil");
    let untagged = std::fs::read_to_string(&mallory).unwrap();
    e.boto3(&format!("client('ec2').import_key_pair(KeyName='ALICE@old', PublicKeyMaterial={:?})", untagged.trim()));

    let out = e.run(&["--output", "json", "create", DEBIAN, "-k", "__me__", "@alice", "--quick", "--never-terminate"]);
    let created: Value = serde_json::from_str(&testkit::succeeded(&["create"], &out)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key pair alice@evil is named for alice but not tagged cgcloud:owner=alice"), "{err}");
    assert!(err.contains("ALICE@old"), "{err}");
    let user_data = launch_request(&e, created["instance_id"].as_str().unwrap());
    let blob = |f: &std::path::Path| std::fs::read_to_string(f).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    assert!(user_data.contains(&blob(&alice)), "alice's key is trusted:\n{user_data}");
    assert!(!user_data.contains(&blob(&mallory)), "mallory's key got in as @alice:\n{user_data}");

    // A key pair registered before owners were tagged is tagged by registering it again.
    let old = e.keygen("old", "ed25519").with_extension("pub");
    let old_key = std::fs::read_to_string(&old).unwrap();
    e.boto3(&format!("client('ec2').import_key_pair(KeyName='alice@desk', PublicKeyMaterial={:?})", old_key.trim()));
    assert_eq!(register("alice", &old, "alice@desk")["action"], "tagged");
    assert_eq!(register("alice", &old, "alice@desk")["action"], "unchanged");
    let again = e.json(&["create", DEBIAN, "-k", "__me__", "@alice", "--quick", "--never-terminate"]);
    assert!(launch_request(&e, again["instance_id"].as_str().unwrap()).contains(&blob(&old)));
}

/// A standalone box's persistent volume on moto: made and attached at launch, recorded on the
/// box, kept by terminate and attached again by recreate; refused before launch while another
/// box holds it or when -e asks for another size; removed by a failed launch that made it; and
/// deleted by `cleanup` only when asked for.
#[test]
fn standalone_boxes_keep_their_persistent_volume() {
    let e = env_with_key();
    let volumes = |e: &TestEnv| -> Vec<Value> {
        let out = e.boto3("import json\nprint(json.dumps([{'id': v['VolumeId'], 'state': v['State'], 'size': v['Size'], \
             'tags': {t['Key']: t['Value'] for t in v.get('Tags', [])}, 'on': [a['InstanceId'] for a in v.get('Attachments', [])]} \
             for v in client('ec2').describe_volumes(Filters=[{'Name': 'tag:cgcloud:persistent', 'Values': ['true']}])['Volumes']]))",
        );
        serde_json::from_str::<Value>(out.trim()).unwrap().as_array().unwrap().clone()
    };
    // A failed launch removes the volume it made.
    let err = e.fails(&["create", DEBIAN, "-e", "3", "--ssh-timeout", "0"]);
    assert!(err.contains("rolling back"), "{err}");
    assert!(volumes(&e).iter().all(|v| v["state"] == "deleted"), "{:?}", volumes(&e));

    let b = e.json(&["create", DEBIAN, "-e", "3", "-Q"]);
    let id = b["instance_id"].as_str().unwrap().to_owned();
    let v = volumes(&e);
    let v: Vec<&Value> = v.iter().filter(|v| v["state"] != "deleted").collect();
    assert_eq!(v.len(), 1, "{v:?}");
    let vol = v[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(v[0]["size"], 3);
    assert_eq!(v[0]["tags"]["Name"], "moto_generic-debian-bookworm-box");
    assert_eq!(v[0]["on"][0], id.as_str());
    let shown = e.json(&["show", DEBIAN]);
    assert_eq!(shown["persistent_volume"], vol.as_str(), "{shown}");

    // The image leaves the volume out; a second box cannot have it while the first does.
    e.ok(&["stop", DEBIAN]);
    e.ok(&["image", DEBIAN]);
    let err = e.fails(&["recreate", DEBIAN, "-Q"]);
    assert!(err.contains(&vol) && err.contains("share one persistent volume") && err.contains(&id), "{err}");
    assert_eq!(boxes(&e, &[]).len(), 1, "a refused launch created a box");
    e.ok(&["terminate", DEBIAN]);
    let err = e.fails(&["recreate", DEBIAN, "-Q", "-e", "5"]);
    assert!(err.contains("has 3 GiB") && err.contains("-e 5 would not resize it"), "{err}");
    // recreate attaches it again without being asked.
    let re = e.json(&["recreate", DEBIAN, "-Q"]);
    let v = volumes(&e);
    let now = v.iter().find(|x| x["id"] == vol.as_str()).unwrap();
    assert_eq!(now["on"][0], re["instance_id"], "{v:?}");
    e.ok(&["terminate", DEBIAN]);
    // A launch asked for another zone is refused before anything is made; one that asks for
    // none goes to the volume's zone.
    let zone = re["zone"].as_str().unwrap().to_owned();
    let other = if zone.ends_with('a') { format!("{}b", e.region) } else { format!("{}a", e.region) };
    let err = e.fails(&["-z", &other, "recreate", DEBIAN, "-Q"]);
    assert!(err.contains(&format!("is in zone {zone}, but this launch is in {other}")), "{err}");
    assert!(!err.contains("launching"), "{err}");
    let again = e.json(&["recreate", DEBIAN, "-Q"]);
    assert_eq!(again["zone"], zone.as_str());
    e.ok(&["terminate", DEBIAN]);
    // cleanup keeps persistent volumes unless asked.
    let found = e.json(&["cleanup", "--dry-run"]);
    assert!(found.as_array().unwrap().iter().all(|i| i["id"] != vol.as_str()), "{found}");
    let found = e.json(&["cleanup", "--dry-run", "--persistent-volumes"]);
    assert!(found.as_array().unwrap().iter().any(|i| i["id"] == vol.as_str()), "{found}");
}

/// `doctor` names what is missing for a first run and how to fix it, then passes once it is
/// fixed; it finds the local private key that matches the key pair.
#[test]
fn doctor_says_what_a_first_run_lacks() {
    let e = env();
    let run = |e: &TestEnv| {
        let out = e.run(&["--output", "json", "doctor"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v, out.status.code())
    };
    let (v, code) = run(&e);
    assert_eq!(code, Some(1), "{v}");
    let key = v.as_array().unwrap().iter().find(|c| c["check"] == "key pair").unwrap();
    assert_eq!(key["status"], "fail");
    assert!(key["hint"].as_str().unwrap().contains("cgcloud register-key"), "{key}");
    assert!(v.as_array().unwrap().iter().any(|c| c["check"] == "credentials" && c["status"] == "ok"), "{v}");
    // The user's key, where ssh looks for it.
    let ssh = e.home.path().join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(ssh.join("id_ed25519"))
        .status()
        .unwrap();
    assert!(st.success());
    e.ok(&["register-key", ssh.join("id_ed25519.pub").to_str().unwrap()]);
    let (v, code) = run(&e);
    assert_eq!(code, Some(0), "{v}");
    assert!(v.as_array().unwrap().iter().all(|c| c["status"] != "fail"), "{v}");
    let key = v.as_array().unwrap().iter().find(|c| c["check"] == "key pair").unwrap();
    assert!(key["detail"].as_str().unwrap().contains("id_ed25519"), "{key}");
    // Without a region, that is what fails (not "credentials"), and this machine's own checks
    // are still made.
    let out = env().cmd().env_remove("AWS_REGION").args(["--output", "json", "doctor"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{v}");
    let checks = v.as_array().unwrap();
    let region = checks.iter().find(|c| c["status"] == "fail").unwrap();
    assert_eq!(region["check"], "region and zone", "{v}");
    for local in ["agent", "ssh"] {
        assert!(checks.iter().any(|c| c["check"] == local && c["status"] == "ok"), "no {local} check: {v}");
    }
}

/// Autostop on moto (where no agent runs, so only what the workstation writes): the tags of
/// `create --autostop`, shown by list/show; `autostop` changes and removes them; a cluster's
/// nodes all carry the setting and their leader's ARN, the tag IAM lets only the leader use.
#[test]
fn autostop_is_written_where_the_agents_read_it() {
    let e = env_with_key();
    let b = e.json(&["create", DEBIAN, "-Q", "--autostop", "45m"]);
    assert_eq!(b["autostop"], "45m stop", "{b}");
    e.ok(&["autostop", DEBIAN, "2h", "--autodown"]);
    assert_eq!(e.json(&["show", DEBIAN])["autostop"], "2h terminate");
    e.ok(&["autostop", DEBIAN, "off"]);
    assert!(e.json(&["show", DEBIAN])["autostop"].is_null());
    let err = e.fails(&["autostop", DEBIAN, "soonish"]);
    assert!(err.contains("not a duration"), "{err}");
    let err = e.fails(&["create", DEBIAN, "-Q", "--autostop", "1h", "--no-agent"]);
    assert!(err.contains("--autostop needs the agent"), "{err}");
    e.ok(&["terminate", DEBIAN]);

    e.ok(&["create", "generic-cluster-box", "-Q"]);
    e.ok(&["stop", "generic-cluster-box"]);
    e.ok(&["image", "generic-cluster-box"]);
    let _agents = testkit::FakeAgents::start(&e);
    e.ok(&["create-cluster", "generic", "-s", "2", "-c", "a", "--skip-ssh-check", "--autostop", "10m"]);
    let nodes = e.boto3("import json\nr = client('ec2').describe_instances(Filters=[{'Name': 'tag:cgcloud:cluster', 'Values': ['a']}])\n\
         print(json.dumps([{t['Key']: t['Value'] for t in i['Tags']} | {'id': i['InstanceId']} for x in r['Reservations'] for i in x['Instances']]))",
    );
    let nodes: Vec<Value> = serde_json::from_str(nodes.trim()).unwrap();
    assert_eq!(nodes.len(), 3);
    let leader = nodes.iter().find(|n| n["cgcloud:ordinal"] == "0").unwrap();
    let arn = format!("arn:aws:ec2:{}:123456789012:instance/{}", e.region, leader["id"].as_str().unwrap());
    for n in &nodes {
        assert_eq!(n["cgcloud:autostop"], "600", "{n}");
        assert_eq!(n["cgcloud:leader-arn"], arn.as_str(), "{n}");
    }
    assert_eq!(e.json(&["list-clusters"])[0]["nodes"][0]["autostop"], "10m stop");
    let err = e.fails(&["grow-cluster", "generic", "-c", "a", "--autostop", "5m", "--skip-ssh-check"]);
    assert!(err.contains("cgcloud autostop generic -c a"), "{err}");
    e.ok(&["autostop", "generic", "-c", "a", "off"]);
    assert!(e.json(&["list"]).as_array().unwrap().iter().all(|b| b["autostop"].is_null()));
    let err = e.fails(&["autostop", "generic-worker", "-c", "a", "-o", "0", "5m"]);
    assert!(err.contains("whose leader decides for it"), "{err}");
}

/// Names are checked against AWS's limits before anything is created: a key pair name of 300
/// characters, and namespaces whose derived names (IAM role, image name, security group)
/// would be too long, fail at once, naming the resource and its limit, and leave nothing.
#[test]
fn names_too_long_for_aws_fail_before_anything_is_created() {
    let e = env_with_key();
    let key = e.keygen("long", "ed25519");
    let err = e.fails(&["register-key", key.with_extension("pub").to_str().unwrap(), "-k", &"k".repeat(300)]);
    assert!(err.contains("300 characters") && err.contains("EC2 allows 1 to 255"), "{err}");
    let ns = format!("/{}/", "n".repeat(70));
    let err = e.fails(&["-n", &ns, "create", DEBIAN, "-Q", "-k", "moto"]);
    assert!(err.contains("IAM role and instance profile name") && err.contains("AWS allows 64"), "{err}");
    let ns = format!("/{}/", "n".repeat(300));
    let err = e.fails(&["-n", &ns, "create", DEBIAN, "-Q", "-k", "moto", "--no-agent"]);
    assert!(err.contains("AWS allows"), "{err}");
    assert!(boxes(&e, &["-n", &ns]).is_empty());
    let err = e.fails(&["-n", &format!("/{}/", "n".repeat(110)), "create", DEBIAN, "-Q", "-k", "moto", "--no-agent"]);
    assert!(err.contains("image name") && err.contains("AWS allows 128"), "{err}");
}

/// An agent queue whose box is gone (terminated in the console, or by a launch killed before
/// it could delete it) is found and removed by the default `cleanup`; the queue of a box that
/// exists, and any queue of another namespace, are kept.
#[test]
fn orphan_agent_queues_are_removed_by_cleanup() {
    let e = env_with_key();
    e.ok(&["create", DEBIAN, "-Q"]);
    let id = boxes(&e, &[])[0]["instance_id"].as_str().unwrap().to_owned();
    let queues = || -> Vec<String> {
        let out = e.boto3("print('\\n'.join(client('sqs').list_queues().get('QueueUrls', [])))");
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|u| u.rsplit('/').next())
            .filter(|q| q.contains("cgcloud-agent_"))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let orphan = "moto_cgcloud-agent_i-0123456789abcdef0";
    let mine = format!("moto_cgcloud-agent_{id}");
    let other = "other_cgcloud-agent_i-0123456789abcdef0";
    for q in [orphan, mine.as_str(), other] {
        e.boto3(&format!("client('sqs').create_queue(QueueName='{q}')"));
    }
    let found = e.json(&["cleanup", "--dry-run"]);
    let listed: Vec<&Value> = found.as_array().unwrap().iter().filter(|i| i["kind"] == "queue").collect();
    assert_eq!(listed.len(), 1, "{found}");
    assert!(listed[0]["id"].as_str().unwrap().ends_with(orphan), "{found}");
    assert!(listed[0]["why"].as_str().unwrap().contains("no longer exists"), "{found}");
    assert_eq!(queues(), {
        let mut v = vec![orphan.to_owned(), mine.clone(), other.to_owned()];
        v.sort();
        v
    });
    e.ok(&["cleanup", "--yes"]);
    let mut expected = vec![mine.clone(), other.to_owned()];
    expected.sort();
    assert_eq!(queues(), expected);
    // Terminated with the box's own command, its queue goes with it.
    e.ok(&["terminate", DEBIAN]);
    assert_eq!(queues(), vec![other.to_owned()]);
}
