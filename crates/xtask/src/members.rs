//! `bench members`: what one node's first boot costs to learn its cluster's members, before
//! and after the leader published the list. Against moto: one `create-cluster generic -s N`
//! (stand-in agents tag the nodes configured), so that the instances carry every tag cgcloud
//! gives them, and each an ed25519 host-key tag as a real node publishes; then, for one worker, the old path (DescribeInstances of the members, every page
//! as the agent asks) beside the new one (DescribeInstances of itself, and the list fetched from
//! a stand-in leader: the real agent's `members serve`, fetched with `members fetch`), and the
//! leader's view an elastic cluster's worker fetches instead (the leader and itself: O(1)).

use crate::cgcloud_exe;
use anyhow::{bail, Context as _, Result};
use std::io::BufRead as _;
use std::process::{Command, Stdio};

pub(crate) fn members(ns: &[u32]) -> Result<()> {
    let e = testkit::TestEnv::new(cgcloud_exe()?);
    e.with_key_and_node_image();
    let _agents = testkit::FakeAgents::start(&e);
    let agent = cgcloud_exe()?.with_file_name("cgcloud-agent");
    if !agent.exists() {
        bail!("build the agent first: cargo build -p cgcloud-agent");
    }
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, [9u8; 32])?;
    println!("members: one node's first-boot membership traffic, old path (DescribeInstances of every member)");
    println!("against new (DescribeInstances of itself + the leader's list); moto's XML, EC2's is of the same form");
    println!(
        "{:>6} {:>9} {:>11} {:>9} {:>11} {:>11} {:>11} {:>9} {:>9} {:>8} {:>11} {:>10}",
        "N",
        "old req",
        "old B",
        "new req",
        "new EC2 B",
        "list B",
        "new B",
        "B ratio",
        "list B/m",
        "view B",
        "elastic B",
        "el. ratio"
    );
    for (i, n) in ns.iter().enumerate() {
        let name = format!("members{i}");
        let out = crate::clusters::create_generic_cluster(&e, *n, &name)?;
        if !out.status.success() {
            bail!("create-cluster -s {n} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The old path as the agent takes it (`cluster::members`: these filters, every page),
        // and the new path's EC2 half (`cluster::describe_self`), with their answers' sizes.
        let measured = e.boto3(&format!(
            "ec2 = client('ec2')\nsizes = []\n\
             ec2.meta.events.register('after-call.ec2.DescribeInstances', lambda http_response, **kw: sizes.append(len(http_response.content)))\n\
             leader = [i for r in ec2.describe_instances(Filters=[{{'Name': 'tag:cgcloud:cluster', 'Values': ['{name}']}}, {{'Name': 'tag:cgcloud:ordinal', 'Values': ['0']}}])['Reservations'] for i in r['Instances']][0]\n\
             ns = {{t['Key']: t['Value'] for t in leader['Tags']}}['cgcloud:namespace']\n\
             filters = [{{'Name': 'tag:cgcloud:namespace', 'Values': [ns]}}, {{'Name': 'tag:cgcloud:cluster', 'Values': ['{name}']}}, {{'Name': 'instance-state-name', 'Values': ['pending', 'running']}}]\n\
             ids = [i['InstanceId'] for p in ec2.get_paginator('describe_instances').paginate(Filters=filters) for r in p['Reservations'] for i in r['Instances']]\n\
             for k in range(0, len(ids), 500):\n\
             \x20   ec2.create_tags(Resources=ids[k:k + 500], Tags=[{{'Key': 'cgcloud:host-key', 'Value': 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI' + 'x' * 43}}])\n\
             sizes.clear()\n\
             ids = [i['InstanceId'] for p in ec2.get_paginator('describe_instances').paginate(Filters=filters) for r in p['Reservations'] for i in r['Instances']]\n\
             old = (len(sizes), sum(sizes))\n\
             me = [i for i in ids if i != leader['InstanceId']][-1] if len(ids) > 1 else leader['InstanceId']\n\
             sizes.clear()\n\
             ec2.describe_instances(InstanceIds=[me])\n\
             print(ns, me, len(ids), old[0], old[1], len(sizes), sum(sizes))"
        ));
        let w: Vec<&str> = measured.split_whitespace().collect();
        let [namespace, me, members, old_req, old_b, self_req, self_b] = w[..] else {
            bail!("unexpected measurement: {measured}");
        };
        let num = |s: &str| s.parse::<f64>().with_context(|| format!("not a number: {s}"));
        let config = dir.path().join(format!("agent{i}.json"));
        std::fs::write(
            &config,
            serde_json::json!({
                "namespace": namespace, "region": e.region, "endpoint": e.moto_endpoint,
                "access_key_id": "testing", "secret_access_key": "testing",
                "accounts": [], "keypairs": [],
            })
            .to_string(),
        )?;
        let mut leader = Command::new(&agent)
            .args(["members", "serve", "--cluster", &name, "--listen", "127.0.0.1:0"])
            .arg("--key")
            .arg(&key)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = leader.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        let addr = line.trim().strip_prefix("listening on ").map(str::to_owned);
        let fetch = |addr: &str, view: &str| {
            Command::new(&agent)
                .args(["members", "fetch", "--leader", addr, "--cluster", &name, "--id", me, "--view", view])
                .arg("--key")
                .arg(&key)
                .output()
        };
        let fetched = addr.as_deref().map(|addr| (fetch(addr, "all"), fetch(addr, "leader")));
        // The stand-in leader is this bench's child: stopped by its id.
        let _ = leader.kill();
        let _ = leader.wait();
        let (all, view) = fetched.context("the stand-in leader did not start")?;
        // "N member(s), B bytes, ID listed"
        let bytes_of = |out: std::io::Result<std::process::Output>| -> Result<f64> {
            let out = out?;
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            let b = said.split(", ").nth(1).and_then(|b| b.strip_suffix(" bytes")).map(num).transpose()?;
            match b.filter(|_| out.status.success() && said.contains(" listed")) {
                Some(b) => Ok(b),
                None => bail!("members fetch: {said}{}", String::from_utf8_lossy(&out.stderr)),
            }
        };
        let (list_b, view_b) = (bytes_of(all)?, bytes_of(view)?);
        let (old_b, self_b) = (num(old_b)?, num(self_b)?);
        let new_b = self_b + list_b;
        println!(
            "{n:>6} {old_req:>9} {old_b:>11.0} {:>9} {self_b:>11.0} {list_b:>11.0} {new_b:>11.0} {:>9.1} {:>9.0} {view_b:>8.0} {:>11.0} {:>10.1}",
            format!("{self_req}+1"),
            old_b / new_b,
            list_b / num(members)?,
            self_b + view_b,
            old_b / (self_b + view_b),
        );
        e.ok(&["terminate-cluster", "generic", "-c", &name, "-Q"]);
    }
    println!("old req/new req: EC2 requests (DescribeInstances pages) / EC2 requests + 1 GET from the leader;");
    println!("view B: the leader's view (the leader and the asker), what an elastic cluster's worker fetches;");
    println!("elastic B: its first boot's bytes (new EC2 B + view B); el. ratio: old B / elastic B");
    println!("the leader reads the members from EC2 once per list it makes (every 20 s while asked, or 3 s for a node not yet listed), for all nodes");
    Ok(())
}
