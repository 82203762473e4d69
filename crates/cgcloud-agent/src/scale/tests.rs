//! The scaler against moto: Slurm's requests through the socket launch workers from the
//! cluster's template within the bounds, suspend them, and hand vanished and failed workers to
//! the role's hooks. Capacity faults come from testkit's fault proxy in front of moto.

use super::*;
use std::os::unix::fs::PermissionsExt as _;
use testkit::fault::{Fault, FaultProxy, Rule};
use testkit::TestEnv;

struct Cluster {
    env: TestEnv,
    dir: tempfile::TempDir,
    template: String,
    subnets: Vec<String>,
    leader_arn: String,
}

/// A template in moto tagged as the workstation tags an elastic cluster's (in a namespace of
/// its own), and hooks that record their arguments.
fn cluster(ns: &str) -> Cluster {
    let env = TestEnv::new("/nonexistent");
    let leader_arn = format!("arn:aws:ec2:{}:123456789012:instance/i-0leader{ns}", env.region);
    let out = env.boto3(&format!(
        "ec2 = client('ec2')\n\
         subnets = [s['SubnetId'] for s in ec2.describe_subnets()['Subnets'] if s['DefaultForAz']][:2]\n\
         ami = ec2.describe_images(Owners=['amazon'])['Images'][0]['ImageId']\n\
         tags = [{{'Key': k, 'Value': v}} for k, v in [('cgcloud:namespace', '/{ns}/'), ('cgcloud:cluster', 'hpc'), ('cgcloud:leader-arn', '{leader_arn}'), ('cgcloud:node-prefix', 'w'), ('cgcloud:role', 'slurm-worker')]]\n\
         t = ec2.create_launch_template(LaunchTemplateName='{ns}-hpc', LaunchTemplateData={{'ImageId': ami, 'TagSpecifications': [{{'ResourceType': 'instance', 'Tags': tags}}]}}, TagSpecifications=[{{'ResourceType': 'launch-template', 'Tags': tags}}])\n\
         print(t['LaunchTemplate']['LaunchTemplateId'], ' '.join(subnets))"
    ));
    let mut words = out.split_whitespace().map(str::to_owned);
    let template = words.next().unwrap();
    let subnets: Vec<String> = words.collect();
    assert_eq!(subnets.len(), 2, "{out}");
    let dir = tempfile::tempdir().unwrap();
    for hook in ["on-bounds", "on-failed", "on-vanished"] {
        let path = dir.path().join(hook);
        let log = dir.path().join(format!("{hook}.log"));
        std::fs::write(&path, format!("#!/bin/sh\necho \"$*|$CGCLOUD_SCALE_MAX\" >> {}\n", log.display())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Cluster { env, dir, template, subnets, leader_arn }
}

impl Cluster {
    fn config(&self) -> ScaleConfig {
        let p = |name: &str| self.dir.path().join(name);
        ScaleConfig {
            node_prefix: "w".into(),
            socket_group: "root".into(),
            resume_timeout: 600,
            on_bounds: Some(p("on-bounds")),
            on_failed: Some(p("on-failed")),
            on_vanished: Some(p("on-vanished")),
            socket: p("scale.sock"),
            state: p("scaler.json"),
            cooldown: 600,
            reconcile: 3600,
        }
    }

    fn bounds(&self, max: u32, types: &[&str]) -> Bounds {
        let mut t = Scaling {
            min: 0,
            max,
            idle_secs: 600,
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            market: scaling::Market::Spot { bid: None, fallback: true },
            subnets: self.subnets.clone(),
            node: scaling::NodeShape { cpus: 2, mem_mib: 3000 },
        }
        .to_tags();
        t.insert(tags::LAUNCH_TEMPLATE.into(), format!("{}:1", self.template));
        t.insert(tags::LEADER_ARN.into(), self.leader_arn.clone());
        t.insert(tags::ORDINAL.into(), "0".into());
        Bounds::from_tags(&t).unwrap().unwrap()
    }

    fn start(&self, endpoint: &str, ns: &str) -> mpsc::Sender<Msg> {
        let creds = cgcloud_core::sigv4::Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        };
        let aws = Client::new(&self.env.region, Some(endpoint.to_owned()), Some(creds));
        start(self.config(), aws, format!("/{ns}/"), "i-0leader".into()).unwrap()
    }

    fn ask(&self, verb: Verb, nodes: &str) -> Result<String, socket::AskError> {
        socket::ask(&self.dir.path().join("scale.sock"), verb, nodes)
    }

    fn log(&self, hook: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{hook}.log"))).unwrap_or_default()
    }

    /// The workers in moto: (ordinals tag, launch index, state, type) of each.
    fn workers(&self) -> Vec<String> {
        let out = self.env.boto3(&format!(
            "ec2 = client('ec2')\n\
             for r in ec2.describe_instances(Filters=[{{'Name': 'tag:cgcloud:leader-arn', 'Values': ['{}']}}])['Reservations']:\n\
             \x20   for i in r['Instances']:\n\
             \x20       t = {{x['Key']: x['Value'] for x in i.get('Tags', [])}}\n\
             \x20       print(t.get('cgcloud:ordinals'), i['AmiLaunchIndex'], i['State']['Name'], i['InstanceType'], t.get('cgcloud:cluster'), i['InstanceId'])",
            self.leader_arn
        ));
        let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
        v.sort();
        v
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn slurm_asks_and_workers_come_and_go_within_the_bounds() {
    let c = cluster("scale-basic");
    let tx = c.start(&c.env.moto_endpoint.clone(), "scale-basic");
    assert!(matches!(c.ask(Verb::Up, "w1"), Err(socket::AskError::Refused(r)) if r.contains("no scaling bounds")));
    tx.send(Msg::Bounds(Box::new(c.bounds(3, &["m5.large"])))).unwrap();
    wait_for("on_bounds", || c.log("on-bounds") == "|3\n");

    let said = c.ask(Verb::Up, "w[1-2]").unwrap();
    assert_eq!(said, "launched w[1-2]");
    let w = c.workers();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w.iter().all(|l| l.contains(" running m5.large hpc ") && l.starts_with("1,2 ")), "{w:?}");
    // Again: nothing more (Slurm may ask twice); past max, refused before anything is launched.
    assert_eq!(c.ask(Verb::Up, "w[1-2]").unwrap(), "launched ; already up w[1-2]");
    assert!(matches!(c.ask(Verb::Up, "w[3-4]"), Err(socket::AskError::Refused(r)) if r.contains("between 1 and 3")));
    assert_eq!(c.workers().len(), 2);

    // Slurm suspends w2: terminated, and not taken for a vanishing.
    assert!(c.ask(Verb::Down, "w2").unwrap().starts_with("terminated 1 instance(s)"));
    // A resume Slurm gave up on: terminated, and offered again later.
    assert!(c.ask(Verb::Fail, "w3").unwrap().starts_with("terminated 0 instance(s)"));
    let status = c.ask(Verb::Status, "").unwrap();
    assert!(status.ends_with("failed [w3]"), "{status}");
    // A worker above a lowered maximum is suspended as any other, and not launched again.
    assert_eq!(c.ask(Verb::Up, "w2").unwrap(), "launched w2");
    tx.send(Msg::Bounds(Box::new(c.bounds(1, &["m5.large"])))).unwrap();
    wait_for("on_bounds again", || c.log("on-bounds").ends_with("|1\n"));
    assert!(matches!(c.ask(Verb::Up, "w2"), Err(socket::AskError::Refused(r)) if r.contains("between 1 and 1")));
    assert!(c.ask(Verb::Down, "w2").unwrap().starts_with("terminated 1 instance(s)"));
    // Someone terminates w1 behind the scaler's back (a spot interruption, say).
    let w1 = c.workers().into_iter().find(|l| l.contains("running")).unwrap();
    let id = w1.rsplit(' ').next().unwrap().to_owned();
    c.env.boto3(&format!("client('ec2').terminate_instances(InstanceIds=['{id}'])"));
    let status = c.ask(Verb::Status, "").unwrap();
    assert!(status.contains("workers 0 []"), "{status}");
    assert_eq!(c.log("on-vanished"), "w1 instance gone: terminated|\n", "w2 was suspended, not vanished");
    assert_eq!(c.log("on-failed"), "");
    // The state survives a restart of the agent.
    let state: Known = serde_json::from_slice(&std::fs::read(c.dir.path().join("scaler.json")).unwrap()).unwrap();
    assert!(state.workers.is_empty());
}

#[test]
fn no_capacity_falls_back_and_total_failure_goes_to_on_failed() {
    let c = cluster("scale-fallback");
    let proxy = FaultProxy::start(&c.env.moto_endpoint);
    let tx = c.start(&proxy.endpoint, "scale-fallback");
    tx.send(Msg::Bounds(Box::new(c.bounds(4, &["m5.large", "m5a.large"])))).unwrap();
    wait_for("on_bounds", || !c.log("on-bounds").is_empty());
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::insufficient_capacity()).when("InstanceType=m5.large")]);
    assert_eq!(c.ask(Verb::Up, "w[1-2]").unwrap(), "launched w[1-2]");
    let w = c.workers();
    assert!(w.len() == 2 && w.iter().all(|l| l.contains(" m5a.large ")), "{w:?}");
    // m5.large spot was tried in both subnets (for both, then for one), then m5a.large spot
    // in the first.
    assert_eq!(proxy.count("RunInstances"), 5);

    // Nothing anywhere: the workers go to on_failed with every answer, and are not retried
    // before the cooldown.
    proxy.set_rules(vec![Rule::always("RunInstances", Fault::insufficient_capacity())]);
    let said = c.ask(Verb::Up, "w[3-4]").unwrap();
    assert!(said.starts_with("launched ; failed w[3-4]: "), "{said}");
    let failed = c.log("on-failed");
    assert!(failed.starts_with("down w[3-4] ") && failed.contains("InsufficientInstanceCapacity"), "{failed}");
    let status = c.ask(Verb::Status, "").unwrap();
    assert!(status.ends_with("failed [w[3-4]]"), "{status}");
}
