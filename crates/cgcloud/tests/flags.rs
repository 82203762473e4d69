//! Flags that no other test exercised, each with the effect its help promises, against moto.
//! Nothing here reaches a box: launches use `-Q` or `--ssh-timeout 0` (no connection attempt),
//! and commands that log in run a fake `ssh` and `rsync` on PATH that print their arguments,
//! which is where the login, the address and the chosen box show.

#![allow(clippy::unwrap_used)] // tests may unwrap

use serde_json::Value;
use testkit::fault::{Fault, FaultProxy, Rule};
use testkit::TestEnv;

const DEBIAN: &str = "generic-debian-bookworm-box";
/// A plugin role (see [`plugins`]) whose default login is `alice`, so that `-a` shows.
const LOGIN_BOX: &str = "login-box";
/// The node role of the plugin cluster type `login` (leader `login-leader`, workers `login-worker`).
const LOGIN_NODE: &str = "login-cluster-box";

fn env() -> TestEnv {
    TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"))
}

/// An environment with the user's key pair (`moto`).
fn env_with_key() -> TestEnv {
    let e = env();
    e.with_key();
    e
}

/// Registers another key pair, `other`, for `-k`.
fn other_key_pair(e: &TestEnv) {
    let key = e.keygen("other", "ed25519");
    e.ok(&["register-key", key.with_extension("pub").to_str().unwrap(), "-k", "other"]);
}

/// Two plugin roles with a default login (`alice`) and an inherited option (`flavor`): a box
/// role and a cluster node role.
fn plugins(e: &mut TestEnv) {
    let dir = e.home.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let option = "[options.flavor]\ntype = \"string\"\ndefault = \"plain\"\nhelp = \"a flavour\"\ninherited = true\n";
    std::fs::write(
        dir.join("login-box.toml"),
        format!(
            "name = \"{LOGIN_BOX}\"\ndescription = \"A box whose default login is alice\"\ninclude = [\"base\"]\n\
             os = [\"debian-12\"]\ndefault_user = \"alice\"\n\n{option}"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("login-cluster-box.toml"),
        format!(
            "name = \"{LOGIN_NODE}\"\ndescription = \"Node image of login clusters\"\ninclude = [\"base\"]\n\
             os = [\"debian-12\"]\ndefault_user = \"alice\"\n\n[cluster]\ntype = \"login\"\nleader = \"login-leader\"\n\
             worker = \"login-worker\"\n\n{option}"
        ),
    )
    .unwrap();
    e.set_env("CGCLOUD_PLUGINS", dir.to_str().unwrap());
}

/// Puts an `ssh` and an `rsync` first on PATH that print their arguments (`ssh ARGS…`) and
/// succeed; `ssh-keygen` stays the real one.
fn fake_ssh_and_rsync(e: &mut TestEnv) {
    let tools = e.home.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    for tool in ["ssh", "rsync"] {
        let path = tools.join(tool);
        std::fs::write(&path, format!("#!/bin/sh\necho \"{tool} $*\"\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    e.set_env("PATH", &format!("{}:{}", tools.display(), std::env::var("PATH").unwrap()));
}

/// Bakes two images of `role` (launched with `args`), oldest first; no box is left.
fn bake_two(e: &TestEnv, role: &str, args: &[&str]) -> Vec<String> {
    let mut create = vec!["create", role, "-Q"];
    create.extend_from_slice(args);
    let id = e.json(&create)["instance_id"].as_str().unwrap().to_owned();
    e.ok(&["stop", role, "-I", &id]);
    e.ok(&["image", role, "-I", &id]);
    // Image names hold the time to the second, and must differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    e.ok(&["image", role, "-I", &id]);
    e.ok(&["terminate", role, "-I", &id]);
    let images: Vec<String> = e
        .json(&["list-images", role])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    images
}

/// The boxes of a role (all roles: None) as `list` orders them, which is ordinal order.
fn boxes(e: &TestEnv, role: Option<&str>) -> Vec<Value> {
    let mut args = vec!["list"];
    args.extend(role);
    e.json(&args).as_array().unwrap().clone()
}

fn ids(boxes: &[Value]) -> Vec<String> {
    boxes.iter().map(|b| b["instance_id"].as_str().unwrap().to_owned()).collect()
}

/// An instance as moto has it: state, addresses, subnet, zone, type, key, image and tags.
fn instance(e: &TestEnv, id: &str) -> Value {
    let out = e.boto3(&format!(
        "i = client('ec2').describe_instances(InstanceIds=['{id}'])['Reservations'][0]['Instances'][0]\n\
         print(json.dumps({{'state': i['State']['Name'], 'private_ip': i.get('PrivateIpAddress'), \
         'public_ip': i.get('PublicIpAddress'), 'subnet': i.get('SubnetId'), 'zone': i['Placement']['AvailabilityZone'], \
         'type': i['InstanceType'], 'key': i.get('KeyName'), 'image': i['ImageId'], \
         'tags': {{t['Key']: t['Value'] for t in i.get('Tags', [])}}}}))"
    ));
    serde_json::from_str(out.trim()).unwrap()
}

/// A default subnet of the test region's VPC, and its zone: the last zone (by name), which is
/// not the one launches without `--subnet` go to. Zones differ between regions (moto's
/// us-west-1 has only a and b), so it is looked up.
fn other_subnet(e: &TestEnv) -> (String, String) {
    let out = e.boto3(
        "s = client('ec2').describe_subnets(Filters=[{'Name': 'default-for-az', 'Values': ['true']}])['Subnets']\n\
         s = max(s, key=lambda x: x['AvailabilityZone'])\n\
         print(s['SubnetId'], s['AvailabilityZone'])",
    );
    let (subnet, zone) = out.trim().split_once(' ').unwrap();
    (subnet.to_owned(), zone.to_owned())
}

/// The box and address of the launch's "waiting for SSH on ID (ADDRESS)" line.
fn ssh_wait(stderr: &str) -> (String, String) {
    let re = regex::Regex::new(r"waiting for SSH on (i-[0-9a-f]+) \(([^)]+)\)").unwrap();
    let c = re.captures(stderr).unwrap_or_else(|| panic!("no SSH wait in:\n{stderr}"));
    (c[1].to_owned(), c[2].to_owned())
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `-v` turns on debug logging, `-vv` trace logging; without it neither shows.
#[test]
fn verbose_adds_debug_then_trace_lines() {
    let e = env();
    let quiet = stderr_of(&e.run(&["list"]));
    assert!(!quiet.contains("debug:") && !quiet.contains("trace:"), "{quiet}");
    let debug = stderr_of(&e.run(&["-v", "list"]));
    assert!(debug.lines().any(|l| l.starts_with("debug: cgcloud")), "{debug}");
    assert!(!debug.contains("trace:"), "-v logged trace lines:\n{debug}");
    let trace = stderr_of(&e.run(&["--verbose", "--verbose", "list"]));
    assert!(trace.lines().any(|l| l.starts_with("trace: ")), "{trace}");
}

/// Every launch flag of `recreate` reaches the new box: its image (`-i`), key pair (`-k`),
/// type (`-t`), subnet, option check (`-O`), autostop, agent, and what happens when it is
/// done (`-T`, `--list`) or fails (`--ssh-timeout`, `--ssh-address`, `-N`). `create
/// --ssh-address` as well.
#[test]
fn recreate_flags_reach_the_new_box() {
    let mut e = env_with_key();
    plugins(&mut e);
    other_key_pair(&e);
    let images = bake_two(&e, LOGIN_BOX, &["-O", "flavor=salty"]);

    // -i: an image ordinal (oldest 0) or an AMI id; the default is the newest.
    let oldest = e.json(&["recreate", LOGIN_BOX, "-Q", "-i", "0"]);
    assert_eq!(oldest["image_id"], images[0].as_str());
    e.ok(&["terminate", LOGIN_BOX]);
    let (subnet, zone) = other_subnet(&e);
    assert_ne!(oldest["zone"], zone.as_str(), "a launch without --subnet is in {zone} already");
    let b = e.json(&[
        "recreate",
        LOGIN_BOX,
        "-Q",
        "-i",
        &images[1],
        "-k",
        "other",
        "-t",
        "t3.small",
        "--subnet",
        &subnet,
        "-O",
        "flavor=salty",
        "--autostop",
        "20m",
        "--autodown",
    ]);
    let id = b["instance_id"].as_str().unwrap().to_owned();
    assert_eq!(b["image_id"], images[1].as_str());
    assert_eq!(b["key_name"], "other");
    assert_eq!(b["instance_type"], "t3.small");
    assert_eq!(b["zone"], zone.as_str());
    assert_eq!(b["options"]["flavor"], "salty");
    assert_eq!(b["autostop"], "20m terminate");
    let i = instance(&e, &id);
    assert_eq!(i["subnet"], subnet.as_str());
    assert_eq!(i["tags"]["cgcloud:keypairs"], "other");
    // -O may only say what the image has baked in: another value is refused, naming the image.
    let err = e.fails(&["recreate", LOGIN_BOX, "-Q", "-O", "flavor=sweet"]);
    assert!(err.contains(&format!("option 'flavor' is baked into image {} as 'salty'", images[1])), "{err}");
    e.ok(&["terminate", LOGIN_BOX]);

    // --metrics and --agent-interval reach the recreated box's agent (whose agent.json is the
    // image's) as tags.
    let told = e.json(&["recreate", LOGIN_BOX, "-Q", "--metrics", "--agent-interval", "2"]);
    let told = told["instance_id"].as_str().unwrap().to_owned();
    let tags = &instance(&e, &told)["tags"];
    assert_eq!(
        (tags["cgcloud:metrics"].as_str(), tags["cgcloud:agent-interval"].as_str()),
        (Some("true"), Some("5")),
        "at least 5 s"
    );
    e.ok(&["terminate", LOGIN_BOX, "-I", &told]);

    // --no-agent: the box says so, and autostop (which the agent does) is refused for it.
    let bare = e.json(&["recreate", LOGIN_BOX, "-Q", "--no-agent"]);
    let bare = bare["instance_id"].as_str().unwrap().to_owned();
    assert_eq!(instance(&e, &bare)["tags"]["cgcloud:agent"], "false");
    let err = e.fails(&["autostop", LOGIN_BOX, "30m", "-I", &bare]);
    assert!(err.contains(&format!("{bare} runs no agent")), "{err}");
    e.ok(&["terminate", LOGIN_BOX, "-I", &bare]);

    // --list prints the new box as one table row instead of the record.
    let out = e.ok(&["recreate", LOGIN_BOX, "-Q", "--list"]);
    let listed = ids(&boxes(&e, Some(LOGIN_BOX)));
    assert_eq!(listed.len(), 1);
    let rows: Vec<&str> = out.lines().filter(|l| l.contains(&listed[0])).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(rows[0].starts_with(LOGIN_BOX) && rows[0].contains(" running "), "{out}");
    assert!(out.lines().next().unwrap().starts_with("ROLE"), "{out}");
    e.ok(&["terminate", LOGIN_BOX]);

    // -T: terminated once done.
    let gone = e.json(&["recreate", LOGIN_BOX, "-Q", "-T"]);
    assert!(matches!(gone["state"].as_str(), Some("shutting-down" | "terminated")), "{gone}");
    assert!(boxes(&e, Some(LOGIN_BOX)).is_empty());

    // --ssh-timeout 0 gives up at once (no connection attempt), at the address --ssh-address
    // names; the box is rolled back, or kept with -N.
    let out = e.run(&["recreate", LOGIN_BOX, "--ssh-timeout", "0", "--ssh-address", "private"]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    let (id, address) = ssh_wait(&err);
    assert_eq!(instance(&e, &id)["private_ip"], address.as_str(), "{err}");
    assert!(err.contains(&format!("timed out after 0 s waiting for SSH on {address}")), "{err}");
    assert!(err.contains("rolling back"), "{err}");
    assert!(boxes(&e, Some(LOGIN_BOX)).is_empty());
    let out = e.run(&["recreate", LOGIN_BOX, "--ssh-timeout", "0", "--ssh-address", "public", "-N"]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    let (id, address) = ssh_wait(&err);
    assert!(err.contains(&format!("keeping {id} for debugging (--never-terminate)")), "{err}");
    let kept = boxes(&e, Some(LOGIN_BOX));
    assert_eq!(ids(&kept), [id]);
    assert_eq!(kept[0]["public_ip"], address.as_str());
    e.ok(&["terminate", LOGIN_BOX]);

    // create --ssh-address: the same choice of address.
    let out = e.run(&["create", LOGIN_BOX, "--ssh-timeout", "0", "--ssh-address", "private"]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    let (id, address) = ssh_wait(&err);
    assert_eq!(instance(&e, &id)["private_ip"], address.as_str(), "{err}");
    assert!(boxes(&e, Some(LOGIN_BOX)).is_empty());
}

/// The selection flags of the box commands choose the box they name (`-o` in list order, `-I`
/// by id), and the wait flags (`-Q`) return without waiting. Logins show in the arguments the
/// fake `ssh` and `rsync` get: the user (`-a`, the role's default), the address
/// (`--ssh-address`), extra ssh options (`-e`).
#[test]
fn selection_flags_pick_the_box_they_name() {
    let mut e = env_with_key();
    plugins(&mut e);
    fake_ssh_and_rsync(&mut e);
    for _ in 0..3 {
        e.ok(&["create", LOGIN_BOX, "-Q"]);
    }
    let all = boxes(&e, Some(LOGIN_BOX));
    let id = ids(&all);
    let private = |i: usize| all[i]["private_ip"].as_str().unwrap().to_owned();
    let public = |i: usize| all[i]["public_ip"].as_str().unwrap().to_owned();
    let alias = |i: usize| format!("HostKeyAlias={} ", id[i]);

    // ssh --ssh-address: the role's default login (alice) at the address asked for.
    let out = e.ok(&["ssh", LOGIN_BOX, "-o", "0", "--ssh-address", "private", "--", "true"]);
    assert!(out.contains(&alias(0)) && out.contains(&format!(" -l alice {} true", private(0))), "{out}");
    let out = e.ok(&["ssh", LOGIN_BOX, "-o", "0", "--ssh-address", "public", "--", "true"]);
    assert!(out.contains(&format!(" -l alice {} true", public(0))), "{out}");
    // rsync -o, -a (the image's admin user), --ssh-address, -e (options for rsync's ssh).
    let out = e.ok(&[
        "rsync",
        LOGIN_BOX,
        "-o",
        "1",
        "-a",
        "--ssh-address",
        "private",
        "--ssh-opts=-v -C",
        "--",
        ":src",
        "dst",
    ]);
    assert!(out.starts_with("rsync -e ssh ") && out.contains(&alias(1)), "{out}");
    assert!(out.contains(&format!(" -l admin -v -C {}:src dst", private(1))), "{out}");
    // rsync -I; the default address is the public one.
    let out = e.ok(&["rsync", LOGIN_BOX, "-I", &id[2], "-e", "-C", "--", "x", ":y"]);
    assert!(out.contains(&alias(2)) && out.contains(&format!(" -l alice -C x {}:y", public(2))), "{out}");

    let states = |e: &TestEnv| -> Vec<String> {
        boxes(e, Some(LOGIN_BOX)).iter().map(|b| b["state"].as_str().unwrap().to_owned()).collect()
    };
    // stop -o waits for the box to stop; -Q returns as soon as EC2 took the request.
    let out = e.run(&["--output", "json", "stop", LOGIN_BOX, "-o", "0"]);
    let err = stderr_of(&out);
    assert!(err.contains(&format!("waiting for box {} to be stopped", id[0])), "{err}");
    let out = e.run(&["--output", "json", "stop", LOGIN_BOX, "-o", "-1", "-Q"]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("waiting for"), "stop -Q waited:\n{err}");
    let stopped: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stopped["instance_id"], id[2].as_str());
    assert_eq!(states(&e)[0], "stopped");
    assert_eq!(states(&e)[1], "running");
    assert!(matches!(states(&e)[2].as_str(), "stopping" | "stopped"), "{:?}", states(&e));
    // start -o (ordinals count stopped boxes too).
    let started = e.json(&["start", LOGIN_BOX, "-o", "2", "-Q"]);
    assert_eq!(started["instance_id"], id[2].as_str());
    assert_eq!(states(&e), ["stopped", "running", "running"]);

    // image -o: the image is of the box named.
    let image = e.json(&["image", LOGIN_BOX, "-o", "0"]);
    assert_eq!(image["instance_id"], id[0].as_str());
    let image = image["image_id"].as_str().unwrap().to_owned();
    // provision -o / -I: the chosen box is stopped, and the error names it.
    for sel in [["-o", "0"], ["-I", id[0].as_str()]] {
        let err = e.fails(&["provision", LOGIN_BOX, sel[0], sel[1]]);
        assert!(err.contains(&format!("box {} ({LOGIN_BOX}) is stopped, not running", id[0])), "{err}");
    }
    // metrics -o: the metrics of the box named, and only those.
    e.boto3(&format!(
        "client('cloudwatch').put_metric_data(Namespace='CGCloud', MetricData=[{{'MetricName': 'MemUsage', 'Value': 42.5, \
         'Unit': 'Percent', 'Dimensions': [{{'Name': 'InstanceId', 'Value': '{}'}}]}}])",
        id[1]
    ));
    let m = e.json(&["metrics", LOGIN_BOX, "-o", "1"]);
    assert_eq!(m[0]["name"], "MemUsage", "{m}");
    let out = e.run(&["--output", "json", "metrics", LOGIN_BOX, "-o", "2"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), serde_json::json!([]));
    assert!(stderr_of(&out).contains(&format!("box {} reported no metrics", id[2])), "{}", stderr_of(&out));
    // autostop -I: only that box.
    e.ok(&["autostop", LOGIN_BOX, "30m", "-I", &id[1]]);
    let autostop: Vec<Value> = boxes(&e, Some(LOGIN_BOX)).iter().map(|b| b["autostop"].clone()).collect();
    assert_eq!(autostop, [Value::Null, Value::from("30m stop"), Value::Null]);

    // terminate -o -Q returns without waiting; without -Q it waits.
    let out = e.run(&["terminate", LOGIN_BOX, "-o", "0", "-Q"]);
    let err = stderr_of(&out);
    assert!(out.status.success() && !err.contains("waiting for"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&id[0]));
    assert_eq!(ids(&boxes(&e, Some(LOGIN_BOX))), [id[1].clone(), id[2].clone()]);
    let out = e.run(&["terminate", LOGIN_BOX, "-o", "-1"]);
    assert!(stderr_of(&out).contains(&format!("waiting for box {} to be terminated", id[2])), "{}", stderr_of(&out));
    assert_eq!(ids(&boxes(&e, Some(LOGIN_BOX))), [id[1].clone()]);

    // delete-image -Q: deregistered without waiting, its snapshots kept for cleanup.
    let out = e.run(&["--output", "json", "delete-image", LOGIN_BOX, "-i", &image, "-Q"]);
    let err = stderr_of(&out);
    assert!(out.status.success() && !err.contains("waiting for"), "{err}");
    let deleted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(deleted["image_id"], image.as_str());
    assert_eq!(deleted["snapshots_deleted"], serde_json::json!([]));
    let kept = deleted["snapshots_kept"].as_array().unwrap();
    assert!(!kept.is_empty(), "{deleted}");
    assert!(e.json(&["list-images", LOGIN_BOX]).as_array().unwrap().is_empty());
    let snapshots = e.boto3("print(json.dumps([s['SnapshotId'] for s in client('ec2').describe_snapshots(OwnerIds=['self'])['Snapshots']]))");
    for s in kept {
        assert!(snapshots.contains(s.as_str().unwrap()), "delete-image -Q deleted snapshot {s}");
    }
}

/// A launch still marked pending, by a process on another machine (so only its age tells),
/// counts as interrupted once it is `--min-age` minutes old: not at the default 30 minutes, at
/// once with `--min-age 0`.
#[test]
fn cleanup_min_age_decides_when_a_launch_from_elsewhere_was_interrupted() {
    let mut e = env();
    e.set_env("CGCLOUD_NAMESPACE", "/flags-cleanup/");
    let key = e.keygen("id_ed25519", "ed25519");
    e.ok(&["register-key", key.with_extension("pub").to_str().unwrap()]);
    let id = e.json(&["create", DEBIAN, "-Q"])["instance_id"].as_str().unwrap().to_owned();
    e.boto3(&format!(
        "client('ec2').create_tags(Resources=['{id}'], Tags=[{{'Key': 'cgcloud:launch-state', 'Value': 'pending'}}, \
         {{'Key': 'cgcloud:launcher', 'Value': 'another-machine:4242:boot'}}])"
    ));
    let found = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["cleanup", "--dry-run"];
        all.extend_from_slice(args);
        e.json(&all).as_array().unwrap().iter().filter(|i| i["id"] == id.as_str()).cloned().collect()
    };
    assert!(found(&[]).is_empty(), "a box launched just now counts as interrupted at the default age");
    assert!(found(&["--min-age", "60"]).is_empty());
    let now = found(&["--min-age", "0"]);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0]["kind"], "instance");
    assert!(now[0]["why"].as_str().unwrap().contains("of a launch interrupted (0s ago or more)"), "{now:?}");
    e.ok(&["cleanup", "--yes", "--min-age", "0"]);
    assert!(boxes(&e, None).is_empty());
}

/// `register-agents --dry-run` prints the templates its flags make, changing nothing: the
/// master chosen by `-o`/`-I`/`-c`/`--master`, and each template's type (`-t`), cap
/// (`--instance-cap`), idle time (`--idle-minutes`), executors (`--executors`), market
/// (`--spot`) and the key pairs agents trust (`-k`).
#[test]
fn register_agents_flags_shape_the_templates() {
    let e = env_with_key();
    // A master on moto is never provisioned: its key pair is registered by hand here.
    let master_key = e.keygen("master", "rsa");
    e.ok(&["register-key", master_key.with_extension("pub").to_str().unwrap(), "-k", "jenkins@moto_jenkins-master"]);
    let first = e.json(&["create", "jenkins-master", "-Q"])["instance_id"].as_str().unwrap().to_owned();
    // A second master (a role's boxes share one persistent volume, so it is launched by hand,
    // with the first one's tags).
    let second = e
        .boto3(&format!(
            "ec2 = client('ec2')\n\
             i = ec2.describe_instances(InstanceIds=['{first}'])['Reservations'][0]['Instances'][0]\n\
             tags = [t for t in i['Tags'] if not t['Key'].startswith('cgcloud:launch')]\n\
             r = ec2.run_instances(ImageId=i['ImageId'], MinCount=1, MaxCount=1, InstanceType=i['InstanceType'], \
             SubnetId=i['SubnetId'], TagSpecifications=[{{'ResourceType': 'instance', 'Tags': tags}}])\n\
             print(r['Instances'][0]['InstanceId'])"
        ))
        .trim()
        .to_owned();
    let masters = ids(&boxes(&e, Some("jenkins-master")));
    assert_eq!(masters.len(), 2, "{masters:?}");
    assert!(masters.contains(&first) && masters.contains(&second));
    e.ok(&["create", "jenkins-agent-debian-trixie", "-Q"]);
    e.ok(&["stop", "jenkins-agent-debian-trixie"]);
    e.ok(&["image", "jenkins-agent-debian-trixie"]);

    let v = e.json(&[
        "register-agents",
        "--dry-run",
        "-I",
        &second,
        "-t",
        "t3.small",
        "--instance-cap",
        "3",
        "--idle-minutes",
        "7",
        "--executors",
        "2",
        "--spot",
        "-k",
        "alice",
    ]);
    assert_eq!(v["action"], "dry-run");
    assert_eq!(v["master"], second.as_str());
    assert_eq!(v["templates"][0]["instance_type"], "t3.small", "{v}");
    assert_eq!(v["templates"][0]["instance_cap"], 3);
    assert_eq!(v["templates"][0]["spot"], true);
    assert!(v["templates"][0]["spot_max_price"].is_null(), "--spot bids up to the on-demand price: {v}");
    let t = &v["casc"]["jenkins"]["clouds"][0]["amazonEC2"]["templates"][0];
    assert_eq!(t["type"], "t3.small");
    assert_eq!(t["instanceCapStr"], "3");
    assert_eq!(t["idleTerminationMinutes"], "7");
    assert_eq!(t["numExecutors"], 2);
    assert_eq!(t["spotConfig"]["useBidPrice"], false, "{t}");
    let keypairs = t["tags"].as_array().unwrap().iter().find(|x| x["name"] == "cgcloud:keypairs").unwrap();
    assert_eq!(keypairs["value"], "jenkins@moto_jenkins-master alice", "-k replaces the master's patterns");
    // The text form prints the same as YAML.
    let text = e.ok(&["register-agents", "--dry-run", "-I", &second, "--idle-minutes", "7", "--executors", "2"]);
    assert!(text.contains("idleTerminationMinutes: '7'") || text.contains("idleTerminationMinutes: \"7\""), "{text}");
    assert!(text.contains("numExecutors: 2"), "{text}");

    // -o picks the master by ordinal; -c restricts to a cluster, where there is none.
    for (o, want) in [("0", &masters[0]), ("-1", &masters[1])] {
        assert_eq!(e.json(&["register-agents", "--dry-run", "-o", o])["master"], want.as_str());
    }
    let err = e.fails(&["register-agents", "--dry-run", "-c", "ci"]);
    assert!(err.contains("no box of role 'jenkins-master' in namespace '/moto/' and cluster 'ci'"), "{err}");
    // --master names the master's role: a box of a role that is no master is refused as such.
    e.ok(&["create", DEBIAN, "-Q"]);
    let err = e.fails(&["register-agents", "--dry-run", "--master", DEBIAN]);
    assert!(err.contains(&format!("role '{DEBIAN}' registers no key pair for agents")), "{err}");
}

/// Stands in for cluster nodes' agents, as `testkit::FakeAgents` does, and also publishes a
/// host key for each node (as a configured node does), so that commands that log in to nodes
/// (through the fake `ssh` and `rsync`) can verify them. With `leaders_only`, workers never
/// configure themselves. Stopped when dropped.
struct Agents(std::process::Child);

impl Agents {
    fn start(e: &TestEnv, leaders_only: bool) -> Agents {
        // A key file of its own for each start (a test may start agents twice).
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let key = std::fs::read_to_string(e.keygen(&format!("host-{n}"), "ed25519").with_extension("pub")).unwrap();
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        let server = std::env::var("CGCLOUD_MOTO_SERVER").unwrap();
        let script = format!(
            "import boto3, time\n\
             c = lambda s: boto3.client(s, endpoint_url='{endpoint}', region_name='{region}', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             ec2, sqs = c('ec2'), c('sqs')\n\
             while True:\n\
             \x20   for r in ec2.describe_instances(Filters=[{{'Name': 'tag-key', 'Values': ['cgcloud:cluster']}}])['Reservations']:\n\
             \x20       for i in r['Instances']:\n\
             \x20           tags = {{t['Key']: t['Value'] for t in i.get('Tags', [])}}\n\
             \x20           if i['State']['Name'] != 'running' or 'cgcloud:configured' in tags: continue\n\
             \x20           if {leaders_only} and tags.get('cgcloud:ordinal') != '0': continue\n\
             \x20           ns = tags.get('cgcloud:namespace', '/').strip('/').replace('/', '_')\n\
             \x20           sqs.create_queue(QueueName=(ns + '_' if ns else '') + 'cgcloud-agent_' + i['InstanceId'])\n\
             \x20           ec2.create_tags(Resources=[i['InstanceId']], Tags=[{{'Key': 'cgcloud:host-key', 'Value': '{key}'}}, {{'Key': 'cgcloud:configured', 'Value': 'true'}}])\n\
             \x20   time.sleep(0.2)\n",
            endpoint = e.moto_endpoint,
            region = e.region,
            leaders_only = if leaders_only { "True" } else { "False" },
            key = key.join(" "),
        );
        let child = std::process::Command::new(std::path::Path::new(&server).with_file_name("python"))
            .args(["-c", &script])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Agents(child)
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The nodes of a cluster, by ordinal.
fn nodes(e: &TestEnv, cluster: &str) -> Vec<Value> {
    let mut v: Vec<Value> = boxes(e, None).into_iter().filter(|b| b["cluster"] == cluster).collect();
    v.sort_by_key(|b| b["ordinal"].as_u64());
    v
}

/// An environment with a key, the plugin roles, the fake `ssh` and `rsync`, and two images of
/// the `login` cluster type's node role (baked with flavor=salty), oldest first.
fn cluster_env() -> (TestEnv, Vec<String>) {
    let mut e = env_with_key();
    plugins(&mut e);
    fake_ssh_and_rsync(&mut e);
    let images = bake_two(&e, LOGIN_NODE, &["-O", "flavor=salty"]);
    (e, images)
}

/// create-cluster's flags reach the nodes: the leader's type (`-T`), the image (`-i`),
/// autostop's action (`--autodown`), and the address `--share` copies to (`--ssh-address`).
#[test]
fn create_cluster_flags_reach_the_nodes() {
    let (e, images) = cluster_env();
    let agents = Agents::start(&e, false);
    e.ok(&[
        "create-cluster",
        "login",
        "-c",
        "a",
        "-s",
        "2",
        "-T",
        "t3.small",
        "-i",
        "0",
        "--autostop",
        "10m",
        "--autodown",
        "--metrics",
        "--agent-interval",
        "45",
        "--skip-ssh-check",
    ]);
    let n = nodes(&e, "a");
    // The nodes' agent.json is the image's: these reach the agents as tags.
    for b in &n {
        let tags = &instance(&e, b["instance_id"].as_str().unwrap())["tags"];
        assert_eq!(
            (tags["cgcloud:metrics"].as_str(), tags["cgcloud:agent-interval"].as_str()),
            (Some("true"), Some("45"))
        );
    }
    let types: Vec<&str> = n.iter().map(|b| b["instance_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["t3.small", "t3.micro", "t3.micro"], "-T is the leader's type only");
    assert!(n.iter().all(|b| b["image_id"] == images[0].as_str()), "{n:?}");
    assert!(n.iter().all(|b| b["autostop"] == "10m terminate"), "{n:?}");
    assert_eq!(e.json(&["list-clusters"])[0]["nodes"][0]["autostop"], "10m terminate");

    // --share copies to the leader at the address --ssh-address names, as its default login.
    let share = e.home.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let out = e.ok(&[
        "create-cluster",
        "login",
        "-c",
        "b",
        "-s",
        "1",
        "--share",
        share.to_str().unwrap(),
        "--ssh-address",
        "private",
        "--skip-ssh-check",
    ]);
    // The login type has no shared directory: every node gets the copy in ~/shared.
    for node in nodes(&e, "b") {
        let copy = format!(" -l alice -a {} {}:shared/", share.display(), node["private_ip"].as_str().unwrap());
        assert!(out.lines().any(|l| l.starts_with("rsync -e ssh ") && l.ends_with(&copy)), "no `{copy}` in:\n{out}");
    }
    // A worker added later gets the leader's ~/shared, relayed through this machine.
    let out = e.ok(&["grow-cluster", "login", "-c", "b", "-s", "1", "--ssh-address", "private", "--skip-ssh-check"]);
    let b = nodes(&e, "b");
    let (leader_ip, new_ip) = (b[0]["private_ip"].as_str().unwrap(), b[2]["private_ip"].as_str().unwrap());
    assert!(out.lines().any(|l| l.contains(&format!(" -a {leader_ip}:shared/ /"))), "no fetch from the leader:\n{out}");
    assert!(out.lines().any(|l| l.ends_with(&format!("/ {new_ip}:shared/"))), "no copy to the new worker:\n{out}");
    drop(agents);

    // -Q: workers that never configure themselves (here only leaders do) are no failure: the
    // launch returns once the leader is configured and keeps them, where without -Q it times
    // out and rolls back.
    let _leaders = Agents::start(&e, true);
    let err = e.fails(&["create-cluster", "login", "-c", "slow", "-s", "1", "--timeout", "3", "--skip-ssh-check"]);
    assert!(err.contains("timed out after 3 s") && err.contains("rolling back"), "{err}");
    // The error shows where the late node's boot stopped, before the rollback takes it away.
    assert!(err.contains("'s console (running):") || err.contains("has no console output yet"), "{err}");
    assert!(nodes(&e, "slow").is_empty());
    let start = std::time::Instant::now();
    e.ok(&["create-cluster", "login", "-c", "q", "-s", "1", "-Q", "--timeout", "60", "--skip-ssh-check"]);
    assert!(start.elapsed().as_secs() < 30, "-Q waited for the workers");
    let q = nodes(&e, "q");
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(q.iter().all(|b| b["state"] == "running"), "{q:?}");
    assert!(instance(&e, q[1]["instance_id"].as_str().unwrap())["tags"].get("cgcloud:configured").is_none());
}

/// grow-cluster's flags: the cluster by ordinal (`-o`), and the new workers' key pair (`-k`),
/// type (`-t`), image (`-i`), subnet and option check (`-O`); `--timeout` and `-N` when
/// workers do not configure themselves.
#[test]
fn grow_cluster_flags_reach_the_new_workers() {
    let (e, images) = cluster_env();
    other_key_pair(&e);
    let agents = Agents::start(&e, false);
    e.ok(&["create-cluster", "login", "-c", "a", "-s", "1", "--skip-ssh-check"]);
    e.ok(&["create-cluster", "login", "-c", "b", "-s", "1", "--skip-ssh-check"]);
    let (subnet, zone) = other_subnet(&e);
    let out = e.run(&[
        "grow-cluster",
        "login",
        "-o",
        "0",
        "-s",
        "1",
        "-k",
        "other",
        "-t",
        "t3.small",
        "-i",
        "0",
        "--subnet",
        &subnet,
        "-O",
        "flavor=salty",
        "--skip-ssh-check",
    ]);
    assert!(stderr_of(&out).contains("added 1 worker(s), ordinals 2"), "{}", stderr_of(&out));
    assert_eq!(nodes(&e, "b").len(), 2, "-o 0 is the oldest cluster, a");
    let a = nodes(&e, "a");
    assert_eq!(a.len(), 3);
    let new = &a[2];
    assert_eq!(new["key_name"], "other");
    assert_eq!(new["instance_type"], "t3.small");
    assert_eq!(new["image_id"], images[0].as_str(), "-i 0, not the leader's image {}", a[0]["image_id"]);
    assert_eq!(a[0]["image_id"], images[1].as_str());
    assert_ne!(a[0]["zone"], zone.as_str(), "the leader is in {zone} already");
    assert_eq!(new["zone"], zone.as_str());
    assert_eq!(instance(&e, new["instance_id"].as_str().unwrap())["subnet"], subnet.as_str());
    assert_eq!(new["options"]["flavor"], "salty");
    // -O cannot change what the image has baked in.
    let err = e.fails(&["grow-cluster", "login", "-o", "-1", "-O", "flavor=sweet", "--skip-ssh-check"]);
    assert!(err.contains(&format!("option 'flavor' is baked into image {} as 'salty'", images[1])), "{err}");
    // --autodown belongs with --autostop, which is the cluster's.
    let err = e.fails(&["grow-cluster", "login", "-c", "b", "--autodown", "--skip-ssh-check"]);
    assert!(err.contains("--autostop"), "{err}");
    drop(agents);

    // Workers that never configure themselves: --timeout gives up after that long and rolls
    // back; -N keeps them.
    let err = e.fails(&["grow-cluster", "login", "-c", "b", "--timeout", "2", "--skip-ssh-check"]);
    assert!(err.contains("timed out after 2 s") && err.contains("rolling back"), "{err}");
    assert_eq!(nodes(&e, "b").len(), 2);
    let err = e.fails(&["grow-cluster", "login", "-c", "b", "--timeout", "2", "-N", "--skip-ssh-check"]);
    assert!(err.contains("timed out after 2 s") && err.contains("(--never-terminate)"), "{err}");
    assert_eq!(nodes(&e, "b").len(), 3);
    // -Q returns once the workers are launched, and keeps them (they configure themselves);
    // --metrics and --agent-interval reach their agents as tags.
    let start = std::time::Instant::now();
    let out = e.run(&[
        "grow-cluster",
        "login",
        "-c",
        "b",
        "-Q",
        "--timeout",
        "60",
        "--metrics",
        "--agent-interval",
        "30",
        "--skip-ssh-check",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(start.elapsed().as_secs() < 30, "-Q waited for the workers: {}", stderr_of(&out));
    assert!(stderr_of(&out).contains("they configure themselves (-Q)"), "{}", stderr_of(&out));
    let b = nodes(&e, "b");
    assert_eq!(b.len(), 4, "-Q keeps the new worker: {b:?}");
    let tags = &instance(&e, b[3]["instance_id"].as_str().unwrap())["tags"];
    assert_eq!((tags["cgcloud:metrics"].as_str(), tags["cgcloud:agent-interval"].as_str()), (Some("true"), Some("30")));
    assert!(instance(&e, b[0]["instance_id"].as_str().unwrap())["tags"].get("cgcloud:metrics").is_none());
}

/// Which cluster (`-o`) and which node (`-c` on box commands) the selection flags choose, and
/// the login of ssh-cluster and rsync-cluster (`-l`, `-a`, the role's default otherwise), as
/// the fake `ssh` and `rsync` show it.
#[test]
fn cluster_selection_and_login_flags() {
    let (e, _) = cluster_env();
    let _agents = Agents::start(&e, false);
    e.ok(&["create-cluster", "login", "-c", "a", "-s", "2", "--skip-ssh-check"]);
    e.ok(&["create-cluster", "login", "-c", "b", "-s", "1", "--skip-ssh-check"]);
    let (a, b) = (nodes(&e, "a"), nodes(&e, "b"));
    let run = |cmd: &str, args: &[&str]| -> Vec<(String, String)> {
        let mut all = vec![cmd, "login"];
        all.extend_from_slice(args);
        e.json(&all)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["instance_id"].as_str().unwrap().to_owned(), r["stdout"].as_str().unwrap().to_owned()))
            .collect()
    };
    let check = |got: Vec<(String, String)>, nodes: &[Value], tail: &dyn Fn(&Value) -> String| {
        assert_eq!(got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), ids(nodes), "{got:?}");
        for ((_, stdout), node) in got.iter().zip(nodes) {
            assert!(stdout.trim_end().ends_with(&tail(node)), "no `{}` at the end of {stdout}", tail(node));
        }
    };
    let public = |n: &Value| n["public_ip"].as_str().unwrap().to_owned();
    check(run("ssh-cluster", &["-o", "0", "--", "true"]), &a, &|n| format!("-l alice {} true", public(n)));
    check(run("ssh-cluster", &["-o", "-1", "-l", "bob", "--", "true"]), &b, &|n| format!("-l bob {} true", public(n)));
    check(run("ssh-cluster", &["-o", "1", "-a", "--", "true"]), &b, &|n| format!("-l admin {} true", public(n)));
    check(run("rsync-cluster", &["-o", "0", "-l", "bob", "--", "x", ":y"]), &a, &|n| {
        format!("-l bob x {}:y", public(n))
    });
    check(run("rsync-cluster", &["-o", "1", "-a", "--", "x", ":y"]), &b, &|n| format!("-l admin x {}:y", public(n)));

    let state = |id: &Value| {
        boxes(&e, None).iter().find(|x| &x["instance_id"] == id).map(|x| x["state"].clone()).unwrap_or(Value::Null)
    };
    // Box commands with -c act on the cluster's node of that role.
    let worker_b = &b[1]["instance_id"];
    assert_eq!(e.json(&["stop", "login-worker", "-c", "b"])["instance_id"], *worker_b);
    assert_eq!(state(worker_b), "stopped");
    assert!(a.iter().all(|n| state(&n["instance_id"]) == "running"));
    assert_eq!(e.json(&["image", "login-worker", "-c", "b"])["instance_id"], *worker_b);
    let err = e.fails(&["provision", "login-worker", "-c", "b"]);
    assert!(err.contains(&format!("box {} (login-worker) is stopped", worker_b.as_str().unwrap())), "{err}");
    assert_eq!(e.json(&["start", "login-worker", "-c", "b", "-Q"])["instance_id"], *worker_b);
    assert_eq!(state(worker_b), "running");
    e.boto3(&format!(
        "client('cloudwatch').put_metric_data(Namespace='CGCloud', MetricData=[{{'MetricName': 'DiskUsage_root', 'Value': 12.0, \
         'Unit': 'Percent', 'Dimensions': [{{'Name': 'InstanceId', 'Value': '{}'}}]}}])",
        worker_b.as_str().unwrap()
    ));
    assert_eq!(e.json(&["metrics", "login-worker", "-c", "b"])[0]["name"], "DiskUsage_root");
    let out = e.run(&["metrics", "login-worker", "-c", "a", "-o", "0"]);
    let first_a = ids(&boxes(&e, Some("login-worker")).into_iter().filter(|x| x["cluster"] == "a").collect::<Vec<_>>())
        [0]
    .clone();
    assert!(stderr_of(&out).contains(&format!("box {first_a} reported no metrics")), "{}", stderr_of(&out));

    // stop-cluster -Q returns without waiting for the nodes to stop.
    let out = e.run(&["stop-cluster", "login", "-c", "b", "-Q"]);
    assert!(out.status.success() && !stderr_of(&out).contains("waiting for"), "{}", stderr_of(&out));
    let waited = stderr_of(&e.run(&["stop-cluster", "login", "-c", "b"]));
    assert!(waited.contains("waiting for 1 node(s) of b to be stopped"), "without -Q it waits:\n{waited}");
    assert!(nodes(&e, "b").iter().all(|n| n["state"] == "stopped"));
    // start-cluster / terminate-cluster -o: the cluster by ordinal, oldest first.
    e.ok(&["start-cluster", "login", "-o", "1", "-Q"]);
    assert!(nodes(&e, "b").iter().all(|n| n["state"] == "running"));
    assert!(a.iter().all(|n| state(&n["instance_id"]) == "running"));
    e.ok(&["terminate", "login-worker", "-c", "b"]);
    assert_eq!(state(worker_b), Value::Null);
    // terminate-cluster -L leaves the leader.
    e.ok(&["terminate-cluster", "login", "-o", "0", "-L"]);
    assert_eq!(ids(&nodes(&e, "a")), [a[0]["instance_id"].as_str().unwrap()]);
    e.ok(&["terminate-cluster", "login", "-o", "0"]);
    assert!(nodes(&e, "a").is_empty());
    assert_eq!(ids(&nodes(&e, "b")), [b[0]["instance_id"].as_str().unwrap()]);
}

const SPOT: &str = "InstanceMarketOptions.MarketType=spot";

/// grow-cluster's spot flags, with EC2's capacity answers played by a fault proxy: further
/// types (`--spot-instance-types`), on demand when spot has nothing (`--on-demand-fallback`),
/// what spot gives (`--spot-tentative`), retrying (`--spot-timeout`), and the zone chosen by
/// price (`--spot-auto-zone`).
#[test]
fn grow_cluster_spot_flags() {
    let mut e = env();
    // IAM is global on moto: a namespace of its own keeps this test's launches apart.
    e.set_env("CGCLOUD_NAMESPACE", "/flags-spot/");
    e.with_key_and_node_image();
    let proxy = FaultProxy::start(&e.moto_endpoint);
    e.through(&proxy);
    let _agents = testkit::FakeAgents::start(&e);
    e.ok(&["create-cluster", "generic", "-c", "s", "-s", "0", "--skip-ssh-check"]);
    let newest = |e: &TestEnv| nodes(e, "s").last().cloned().unwrap();
    let grow = |args: &[&str]| -> String {
        let mut all = vec!["grow-cluster", "generic", "-c", "s", "--skip-ssh-check"];
        all.extend_from_slice(args);
        let out = e.run(&all);
        testkit::succeeded(&all, &out);
        stderr_of(&out)
    };

    // m5.large has no spot capacity: the next type is used.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::insufficient_capacity())
        .when("InstanceType=m5.large")
        .when(SPOT)]);
    grow(&["-t", "m5.large", "--spot-bid", "0.5", "--spot-instance-types", "m5a.large"]);
    let w = newest(&e);
    assert_eq!(
        (w["ordinal"].as_u64(), w["instance_type"].as_str(), w["spot"].as_bool()),
        (Some(1), Some("m5a.large"), Some(true))
    );
    // No spot capacity at all: on demand with --on-demand-fallback.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::spot_price_too_low()).when(SPOT)]);
    grow(&["--spot-bid", "0.01", "--on-demand-fallback"]);
    let w = newest(&e);
    assert_eq!((w["ordinal"].as_u64(), w["spot"].as_bool()), (Some(2), Some(false)));
    // Spot gives one of three workers: with --spot-tentative that is a success.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::Partial(1)).when(SPOT)]);
    let err = grow(&["-s", "3", "--spot-bid", "0.5", "--spot-tentative"]);
    assert!(err.contains("added 1 worker(s), ordinals 3"), "{err}");
    assert_eq!(nodes(&e, "s").len(), 4);
    // No capacity at the first try (both of the SDK's attempts): --spot-timeout tries again
    // 10 s later, and gets it.
    proxy.set_rules(vec![Rule::first("RunInstances", 2, Fault::insufficient_capacity()).when(SPOT)]);
    let err = grow(&["--spot-bid", "0.5", "--spot-timeout", "30"]);
    assert_eq!(err.matches("launching 1 × generic-worker").count(), 2, "{err}");
    assert_eq!(nodes(&e, "s").len(), 5);
    // --spot-auto-zone: the zone from the price history, where the new worker runs.
    proxy.set_rules(Vec::new());
    let err = grow(&["--spot-bid", "0.5", "--spot-auto-zone"]);
    let zone = regex::Regex::new(r"spot: zone (\S+) chosen").unwrap().captures(&err).unwrap_or_else(|| panic!("{err}"))
        [1]
    .to_owned();
    assert_eq!(newest(&e)["zone"], zone.as_str());
}

/// `local status --dir` reads the local cloud of that directory (here one made up, whose
/// processes are gone), not the machine's: nothing there needs root or a running local cloud.
#[test]
fn local_status_reads_the_dir_it_is_given() {
    let e = env();
    let dir = e.home.path().join("local");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::create_dir_all(dir.join("instances/i-0123456789abcdef0")).unwrap();
    std::fs::write(
        dir.join("run/state.json"),
        r#"{"port": 5999, "moto_port": 6000, "imds_port": 0, "moto_pid": null, "dnsmasq_pid": null,
            "controller_pid": null, "ip_forward_before": null, "vpc_id": null, "subnets": [], "images": []}"#,
    )
    .unwrap();
    let v = e.json(&["local", "status", "--dir", dir.to_str().unwrap()]);
    assert_eq!(v["up"], false);
    assert_eq!(v["endpoint"], "http://127.0.0.1:5999");
    assert_eq!(v["hosts"][0]["instance_id"], "i-0123456789abcdef0");
    assert_eq!(v["hosts"][0]["running"], false);
    let empty = e.home.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_eq!(e.json(&["local", "status", "--dir", empty.to_str().unwrap()]), serde_json::json!({"up": false}));
}

/// `ssh --forward` opens the web UIs the role declares ([[forwards]]): on the same local port
/// when it is free, else another (printed), at the box's own address for `private-ip`, on the
/// port a role option moved it to, over a connection of its own; a role without any says so.
#[test]
fn ssh_forward_opens_the_roles_web_uis() {
    let mut e = env_with_key();
    let dir = e.home.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ui.toml"),
        "name = \"ui-box\"\ndescription = \"A box with web UIs\"\ninclude = [\"base\"]\nos = [\"debian-12\"]\n\
         [options.ui_port]\ntype = \"int\"\ndefault = 9000\nhelp = \"where the second UI listens\"\n\
         [[forwards]]\nport = 18080\ndescription = \"App\"\n\
         [[forwards]]\nport = 9000\noption = \"ui_port\"\nhost = \"private-ip\"\ndescription = \"Admin UI\"\n",
    )
    .unwrap();
    e.set_env("CGCLOUD_PLUGINS", dir.to_str().unwrap());
    fake_ssh_and_rsync(&mut e);
    let b = e.json(&["create", "ui-box", "-Q", "-O", "ui_port=19090"]);
    let ip = b["private_ip"].as_str().unwrap();
    // Hold the first UI's port here, as another program would.
    let busy = std::net::TcpListener::bind(("127.0.0.1", 18080)).ok();
    let out = e.run(&["ssh", "ui-box", "--forward", "--", "-N"]);
    let (said, ran) = (stderr_of(&out), String::from_utf8_lossy(&out.stdout).into_owned());
    assert!(out.status.success(), "{said}");
    assert!(ran.contains("ControlMaster=no") && ran.contains("ControlPath=none"), "{ran}");
    assert!(ran.contains("ExitOnForwardFailure=yes") && ran.trim_end().ends_with(" -N"), "{ran}");
    let app = said.lines().find(|l| l.contains("(App)")).unwrap_or_else(|| panic!("{said}"));
    let local: u16 = app.split("localhost:").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
    if busy.is_some() {
        assert_ne!(local, 18080, "the taken port is not reused: {said}");
    }
    assert!(ran.contains(&format!("-L 127.0.0.1:{local}:localhost:18080")), "{ran}");
    assert!(said.contains(&format!("-> {ip}:19090 on the box (Admin UI)")), "{said}");
    assert!(ran.contains(&format!(":{ip}:19090")), "{ran}");
    drop(busy);
    // Without --forward nothing is forwarded; a role that declares none says how to do it.
    let plain = String::from_utf8_lossy(&e.run(&["ssh", "ui-box", "--", "true"]).stdout).into_owned();
    assert!(!plain.contains("-L"), "{plain}");
    e.ok(&["create", DEBIAN, "-Q"]);
    let err = e.fails(&["ssh", DEBIAN, "--forward"]);
    assert!(err.contains("declares no web UIs") && err.contains("-N -L"), "{err}");
}

/// Without --skip-ssh-check a launch logs in to the leader and the first 15 workers only (every
/// node checks itself; 1000 logins would cost the workstation 1000 handshakes): a fake `ssh`
/// that records the box it is asked for counts them.
#[test]
fn a_launch_logs_in_to_the_leader_and_15_workers() {
    let (mut e, _) = cluster_env();
    let log = e.home.path().join("ssh.log");
    let tools = e.home.path().join("tools");
    std::fs::write(
        tools.join("ssh"),
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do case $a in HostKeyAlias=*) echo \"${{a#HostKeyAlias=}}\" >> {};; esac; done\n",
            log.display()
        ),
    )
    .unwrap();
    e.set_env("CGCLOUD_SSH_OPTS", "");
    let _agents = Agents::start(&e, false);
    let out = e.run(&["create-cluster", "login", "-c", "wide", "-s", "20", "--timeout", "120"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("checking SSH from here on 16 of 21 nodes"), "{}", stderr_of(&out));
    let probed: std::collections::BTreeSet<String> =
        std::fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
    let n = nodes(&e, "wide");
    assert_eq!(n.len(), 21);
    assert_eq!(probed.len(), 16, "{probed:?}");
    assert!(probed.contains(n[0]["instance_id"].as_str().unwrap()), "the leader is among them");
}

/// Flags whose other tests only see them refused, doing what they say when they are right:
/// the zone, region and endpoint, create's subnet, OS and further spot types, recreate's -e,
/// create-cluster's -O and -k, autostop's -o.
#[test]
fn flags_seen_refused_elsewhere_work_when_right() {
    let mut e = env_with_key();
    plugins(&mut e);
    other_key_pair(&e);
    let zone_b = format!("{}b", e.region);
    let b = e.json(&["-z", &zone_b, "create", DEBIAN, "-Q"]);
    assert_eq!(b["zone"], zone_b.as_str(), "{b}");
    let mut c = e.cmd();
    c.env_remove("AWS_REGION").env_remove("AWS_DEFAULT_REGION").env_remove("AWS_ENDPOINT_URL");
    let out = c.args(["--region", &e.region, "--endpoint", &e.endpoint, "--output", "json", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["instance_id"], b["instance_id"], "--region and --endpoint reach the same cloud");
    let (subnet, zone) = other_subnet(&e);
    let b = e.json(&["create", DEBIAN, "-Q", "--subnet", &subnet]);
    assert_eq!(
        (b["zone"].as_str(), instance(&e, b["instance_id"].as_str().unwrap())["subnet"].as_str()),
        (Some(zone.as_str()), Some(subnet.as_str()))
    );
    let b = e.json(&["create", "spark-box", "-Q", "--os", "debian-13"]);
    assert_eq!(instance(&e, b["instance_id"].as_str().unwrap())["tags"]["cgcloud:os"], "debian-13", "{b}");
    let b = e.json(&["create", DEBIAN, "-Q", "--spot-bid", "0.05", "--spot-instance-types", "t3.small"]);
    assert_eq!(
        (b["spot"].as_bool(), b["instance_type"].as_str()),
        (Some(true), Some("t3.micro")),
        "the first type had capacity"
    );
    // recreate -e: a new persistent volume of that size for the recreated box.
    let images = bake_two(&e, LOGIN_BOX, &[]);
    let r = e.json(&["recreate", LOGIN_BOX, "-Q", "-e", "2", "-i", &images[0]]);
    assert!(r["persistent_volume"].as_str().is_some_and(|v| v.starts_with("vol-")), "{r}");
    // autostop -o: only that box.
    e.ok(&["create", LOGIN_BOX, "-Q"]);
    let set = e.json(&["autostop", LOGIN_BOX, "40m", "-o", "-1"]);
    assert_eq!(set["instance_ids"].as_array().unwrap().len(), 1, "{set}");
    let all = boxes(&e, Some(LOGIN_BOX));
    assert_eq!(all.iter().filter(|b| b["autostop"] == "40m stop").count(), 1, "{all:?}");
    // create-cluster -O (the baked value) and -k.
    let _agents = Agents::start(&e, false);
    let node_images = bake_two(&e, LOGIN_NODE, &["-O", "flavor=salty"]);
    e.ok(&[
        "create-cluster",
        "login",
        "-c",
        "k",
        "-s",
        "1",
        "-O",
        "flavor=salty",
        "-k",
        "other",
        "-i",
        &node_images[1],
        "--skip-ssh-check",
    ]);
    let n = nodes(&e, "k");
    assert!(n.iter().all(|b| b["key_name"] == "other" && b["options"]["flavor"] == "salty"), "{n:?}");
}
