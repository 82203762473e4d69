//! The member list against moto: a leader's server on loopback and workers' first boots
//! (`cluster::find_self`) that take its list and ask EC2 for themselves alone, counted by
//! testkit's proxy in front of moto; and lists that must be refused (forged, another cluster's,
//! stale, oversized), after which the worker asks EC2 for the members as before.

use super::*;
use crate::cluster::find_self;
use std::net::Ipv4Addr;
use testkit::fault::FaultProxy;
use testkit::TestEnv;

const KEY: [u8; KEY_LEN] = [42; KEY_LEN];

fn client(env: &TestEnv, endpoint: &str) -> Client {
    let creds = cgcloud_core::sigv4::Credentials {
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        session_token: None,
    };
    Client::new(&env.region, Some(endpoint.to_owned()), Some(creds))
}

/// `n` instances in moto tagged as the members of cluster c1 in namespace `/ns/`, ordinals
/// 0 (the leader) to n-1; their ids.
fn launch(env: &TestEnv, ns: &str, n: u32, first: u32) -> Vec<String> {
    let out = env.boto3(&format!(
        "ec2 = client('ec2')\n\
         ami = ec2.describe_images(Owners=['amazon'])['Images'][0]['ImageId']\n\
         tags = [{{'Key': 'cgcloud:namespace', 'Value': '/{ns}/'}}, {{'Key': 'cgcloud:cluster', 'Value': 'c1'}}]\n\
         r = ec2.run_instances(ImageId=ami, MinCount={n}, MaxCount={n}, TagSpecifications=[{{'ResourceType': 'instance', 'Tags': tags}}])\n\
         ids = [i['InstanceId'] for i in r['Instances']]\n\
         for k, i in enumerate(ids):\n\
         \x20   ec2.create_tags(Resources=[i], Tags=[{{'Key': 'cgcloud:ordinal', 'Value': str({first} + k)}}])\n\
         print(' '.join(ids))"
    ));
    out.split_whitespace().map(str::to_owned).collect()
}

fn leader_at(addr: SocketAddr, wait: Duration) -> Leader {
    Leader { addr, key: KEY.to_vec(), wait, newest: 0.into(), fresh: false }
}

/// A leader's server for namespace `ns` on loopback.
fn serve_leader(env: &TestEnv, ns: &str) -> (Arc<Publisher>, SocketAddr) {
    let publisher = Arc::new(Publisher::new(client(env, &env.moto_endpoint), &format!("/{ns}/"), "c1", KEY.to_vec()));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, publisher.clone());
    (publisher, addr)
}

/// A server that answers every request with `body`, as someone on the network could.
fn impostor(body: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    addr
}

#[test]
fn a_worker_takes_the_leaders_list_and_asks_ec2_for_itself_alone() {
    let env = TestEnv::new("/nonexistent");
    let ids = launch(&env, "members-ok", 4, 0);
    let (publisher, addr) = serve_leader(&env, "members-ok");
    let proxy = FaultProxy::start(&env.moto_endpoint);
    let worker = client(&env, &proxy.endpoint);
    let leader = leader_at(addr, Duration::from_secs(60));
    let (me, cluster, nodes) = find_self(&worker, "/members-ok/", &ids[2], Some("c1"), Some(&leader)).unwrap().unwrap();
    assert_eq!((me.id.as_str(), cluster.as_str(), me.ordinal()), (ids[2].as_str(), "c1", Some(2)));
    assert_eq!(nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), ids, "leader first, then by ordinal");
    assert!(nodes.iter().all(|n| n.private_ip.parse::<Ipv4Addr>().is_ok() && !n.private_dns.is_empty()));
    assert_eq!(nodes[0].ordinal(), Some(0));
    // The worker's one EC2 request: itself.
    assert_eq!(proxy.count("DescribeInstances"), 1);
    assert_eq!(publisher.reads.load(Ordering::Relaxed), 1);
    let facts = crate::cluster::facts(&me, &nodes, "us-west-2", "/members-ok/");
    assert_eq!(facts["cluster"]["leader_id"], ids[0].as_str());
    assert_eq!(facts["cluster"]["worker_ips"].as_array().unwrap().len(), 3);

    // A worker launched after the leader's last read: the leader reads EC2 again for it (once
    // its list is a few seconds old), and the worker waits until it is listed.
    let late = launch(&env, "members-ok", 1, 4);
    let (_, _, nodes) = find_self(&worker, "/members-ok/", &late[0], Some("c1"), Some(&leader)).unwrap().unwrap();
    assert_eq!(nodes.len(), 5);
    assert_eq!(proxy.count("DescribeInstances"), 2);
    assert_eq!(publisher.reads.load(Ordering::Relaxed), 2);

    // A refresh knows only its own id (and tags): its entry is the list's, address and all.
    let bare = Node { id: ids[3].clone(), ..Default::default() };
    let nodes = from_leader(&leader, "/members-ok/", "c1", &bare).unwrap();
    let own = nodes.iter().find(|n| n.id == ids[3]).unwrap();
    assert!(own.private_ip.parse::<Ipv4Addr>().is_ok() && own.ordinal() == Some(3), "{own:?}");
    assert_eq!(proxy.count("DescribeInstances"), 2);

    // The leader itself (ordinal 0) asks EC2 for the members, as before.
    let (_, _, nodes) = find_self(&worker, "/members-ok/", &ids[0], Some("c1"), Some(&leader)).unwrap().unwrap();
    assert_eq!(nodes.len(), 5);
    assert_eq!(proxy.count("DescribeInstances"), 4);
}

#[test]
fn forged_foreign_stale_and_oversized_lists_are_refused_and_the_worker_asks_ec2() {
    let env = TestEnv::new("/nonexistent");
    let ids = launch(&env, "members-bad", 3, 0);
    let ns = "/members-bad/";
    let ec2 = client(&env, &env.moto_endpoint);
    let real = crate::cluster::members(&ec2, ns, "c1").unwrap();
    let now = unix_now();
    let list = |cluster: &str, at: u64| member_list(cluster, &real, at);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("forged", list("c1", now).sign(&[1; KEY_LEN]).unwrap()),
        ("another cluster's", list("c2", now).sign(&KEY).unwrap()),
        ("stale", list("c1", now - MAX_AGE_SECS - 60).sign(&KEY).unwrap()),
        ("oversized", vec![b'x'; MAX_BYTES + 10]),
    ];
    for (what, body) in cases {
        let proxy = FaultProxy::start(&env.moto_endpoint);
        let worker = client(&env, &proxy.endpoint);
        // A refused list ends the wait at once: the minute is never waited.
        let leader = leader_at(impostor(body), Duration::from_secs(60));
        let me = crate::cluster::describe_self(&worker, &ids[1]).unwrap();
        let err = from_leader(&leader, ns, "c1", &me).unwrap_err();
        let expected = match what {
            "forged" => matches!(err, FetchError::Refused { source: MembersError::BadMac, .. }),
            "another cluster's" => matches!(err, FetchError::Refused { source: MembersError::OtherCluster { .. }, .. }),
            "stale" => matches!(err, FetchError::Refused { source: MembersError::Stale { .. }, .. }),
            _ => matches!(err, FetchError::Refused { source: MembersError::TooLarge(_), .. }),
        };
        assert!(expected, "{what}: {err}");
        // First boot goes on with EC2's members.
        let (_, _, nodes) = find_self(&worker, ns, &ids[1], Some("c1"), Some(&leader)).unwrap().unwrap();
        assert_eq!(nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), ids, "{what}");
        assert_eq!(proxy.count("DescribeInstances"), 3, "{what}: self twice (once above), then the members");
    }
    // A replay of an older list than one already taken is refused too (the daemon's refreshes).
    let older = list("c1", now - 10).sign(&KEY).unwrap();
    let leader = leader_at(impostor(older), Duration::from_secs(60));
    leader.newest.set(now - 5);
    let me = crate::cluster::describe_self(&ec2, &ids[1]).unwrap();
    assert!(matches!(
        from_leader(&leader, ns, "c1", &me),
        Err(FetchError::Refused { source: MembersError::Stale { .. }, .. })
    ));
    // No leader answering: the worker asks until its wait is over, then asks EC2.
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap();
    let leader = leader_at(closed, Duration::from_secs(2));
    assert!(matches!(from_leader(&leader, ns, "c1", &me), Err(FetchError::Closed { .. })));
    let (_, _, nodes) = find_self(&ec2, ns, &ids[1], Some("c1"), Some(&leader)).unwrap().unwrap();
    assert_eq!(nodes.len(), 3);
}

#[test]
fn the_leader_answers_only_get_of_the_list_and_leaves_out_malformed_members() {
    let req = |asking: Option<&str>, fresh| Ok(Request { asking: asking.map(str::to_owned), fresh, view: View::All });
    assert_eq!(parse_request("GET /v1/members HTTP/1.1\r\n\r\n"), req(None, false));
    assert_eq!(
        parse_request("GET /v1/members?for=i-0123456789abcdef0 HTTP/1.1\r\n\r\n"),
        req(Some("i-0123456789abcdef0"), false)
    );
    assert_eq!(
        parse_request("GET /v1/members?for=i-0123456789abcdef0&fresh=1 HTTP/1.1\r\n\r\n"),
        req(Some("i-0123456789abcdef0"), true)
    );
    assert_eq!(parse_request("GET /v1/members?for=../../x&fresh=yes HTTP/1.1\r\n\r\n"), req(None, false));
    assert_eq!(
        parse_request("GET /v1/members?for=i-0123456789abcdef0&view=leader HTTP/1.1\r\n\r\n"),
        Ok(Request { asking: Some("i-0123456789abcdef0".into()), fresh: false, view: View::Leader })
    );
    assert_eq!(parse_request("GET /v1/members?view=some HTTP/1.1\r\n\r\n"), Err("400 Bad Request"));
    assert_eq!(parse_request("POST /v1/members HTTP/1.1\r\n\r\n"), Err("405 Method Not Allowed"));
    assert_eq!(parse_request("GET /etc/passwd HTTP/1.1\r\n\r\n"), Err("404 Not Found"));
    let mut tags = std::collections::BTreeMap::new();
    tags.insert(cgcloud_core::tags::ORDINAL.to_owned(), "1".to_owned());
    tags.insert(cgcloud_core::tags::HOST_KEY.to_owned(), "ssh-ed25519 AAAA\n* evil".to_owned());
    let good = Node {
        id: "i-0123456789abcdef0".into(),
        private_ip: "10.0.0.2".into(),
        private_dns: "ip-10-0-0-2.ec2.internal".into(),
        tags,
        ..Default::default()
    };
    let pending = Node { id: "i-0123456789abcdef1".into(), ..Default::default() };
    let list = member_list("c1", &[good, pending], 1);
    assert_eq!(list.members.len(), 1, "no address yet: in a later list");
    assert_eq!(
        (list.members[0].ordinal, list.members[0].host_key.as_str()),
        (Some(1), ""),
        "a bad host key is dropped"
    );
    let nodes = nodes_of(&list, "/ns/");
    assert_eq!(nodes[0].ordinal(), Some(1));
    assert_eq!(nodes[0].hostname(), "ip-10-0-0-2");
}

#[test]
fn a_refresh_gets_the_members_of_now_and_first_boots_share_the_leaders_last_read() {
    let env = TestEnv::new("/nonexistent");
    let ids = launch(&env, "members-fresh", 2, 0);
    let (publisher, _) = serve_leader(&env, "members-fresh");
    publisher.list(None, false).unwrap();
    // A node that is listed, and a fresh request just after a read: the same list.
    publisher.list(Some(&ids[1]), false).unwrap();
    publisher.list(Some(&ids[1]), true).unwrap();
    assert_eq!(publisher.reads.load(Ordering::Relaxed), 1);
    // New members, and a while later: a first boot that is listed still gets the last read
    // (it is younger than FRESH_SECS), a refresh asking for the members of now does not.
    let new = launch(&env, "members-fresh", 2, 2);
    std::thread::sleep(Duration::from_secs(ON_DEMAND_SECS) + Duration::from_millis(200));
    publisher.list(Some(&ids[1]), false).unwrap();
    assert_eq!(publisher.reads.load(Ordering::Relaxed), 1);
    let bytes = publisher.list(Some(&ids[1]), true).unwrap();
    assert_eq!(publisher.reads.load(Ordering::Relaxed), 2);
    let list = MemberList::verify(&bytes, &KEY, "c1", 0, unix_now()).unwrap();
    assert!(new.iter().all(|id| list.members.iter().any(|m| &m.id == id)), "{list:?}");
}

/// Tags every instance of `ids` with `key` = `value`.
fn tag_all(env: &TestEnv, ids: &[String], key: &str, value: &str) {
    let ids = ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", ");
    env.boto3(&format!(
        "client('ec2').create_tags(Resources=[{ids}], Tags=[{{'Key': '{key}', 'Value': '{value}'}}])\nprint('ok')"
    ));
}

#[test]
fn an_elastic_workers_boot_costs_the_same_whatever_the_clusters_size() {
    let env = TestEnv::new("/nonexistent");
    let ids = launch(&env, "members-elastic", 3, 0);
    tag_all(&env, &ids, cgcloud_core::tags::NODE_PREFIX, "w");
    let (publisher, addr) = serve_leader(&env, "members-elastic");
    let proxy = FaultProxy::start(&env.moto_endpoint);
    let worker = client(&env, &proxy.endpoint);
    let leader = leader_at(addr, Duration::from_secs(60));
    let http = ureq::AgentBuilder::new().build();
    let (mut sizes, mut members) = (Vec::new(), 3);
    for (round, more) in [1u32, 60].into_iter().enumerate() {
        let grown = launch(&env, "members-elastic", more, members);
        members += more;
        tag_all(&env, &grown, cgcloud_core::tags::NODE_PREFIX, "w");
        let me = &ids[2];
        // As a node asks after its leader's last read (a few seconds on), so that it is new.
        std::thread::sleep(Duration::from_secs(ON_DEMAND_SECS) + Duration::from_millis(200));
        let asked = proxy.count("DescribeInstances");
        let (found, _, nodes) =
            find_self(&worker, "/members-elastic/", me, Some("c1"), Some(&leader)).unwrap().unwrap();
        assert_eq!(crate::cluster::view_of(&found.tags), View::Leader);
        // The leader and itself, whatever the cluster's size; one EC2 request: itself.
        let got: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(got, [ids[0].as_str(), me.as_str()], "round {round}");
        assert_eq!(proxy.count("DescribeInstances") - asked, 1);
        let facts = crate::cluster::facts(&found, &nodes, "us-west-2", "/members-elastic/");
        assert_eq!(facts["cluster"]["leader_ip"], nodes[0].private_ip.as_str());
        assert_eq!(
            (facts["cluster"]["size"].as_str(), facts["cluster"]["worker_ips"].as_array().map(Vec::len)),
            (Some(""), Some(0))
        );
        // The members of now (`fresh`), then the view made from them.
        let full = fetch(&http, addr, me, true, View::All).unwrap();
        let bytes = fetch(&http, addr, me, false, View::Leader).unwrap();
        let list = MemberList::verify(&full, &KEY, "c1", 0, unix_now()).unwrap();
        assert_eq!(list.members.len() as u32, members, "the leader itself knows every member");
        sizes.push((bytes.len(), full.len()));
    }
    // 4 members, then 64: the leader's view stays the same size, the full list grows.
    let ((view4, full4), (view64, full64)) = (sizes[0], sizes[1]);
    assert!(view64.abs_diff(view4) < 8 && view4 < 600, "{sizes:?}");
    assert!(full64 > full4 + 50 * 40, "{sizes:?}");
    assert!(publisher.reads.load(Ordering::Relaxed) >= 2);

    // No leader to ask: the worker asks EC2 for the leader and itself, not every member.
    let gone = leader_at(impostor(b"not a list".to_vec()), Duration::from_secs(5));
    let asked = proxy.count("DescribeInstances");
    let (_, _, nodes) = find_self(&worker, "/members-elastic/", &ids[1], Some("c1"), Some(&gone)).unwrap().unwrap();
    let got: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(got, [ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(proxy.count("DescribeInstances") - asked, 2, "itself, then the leader (filtered by its ordinal)");

    // A leader from before views answers with every member: the worker keeps its own view.
    let all = publisher.list(None, false).unwrap();
    let old = leader_at(impostor(all.to_vec()), Duration::from_secs(5));
    let bare = Node { id: ids[1].clone(), tags: nodes[1].tags.clone(), ..Default::default() };
    let nodes = from_leader(&old, "/members-elastic/", "c1", &bare).unwrap();
    assert_eq!(nodes.len(), 2);
}
