//! The evaluator against IAM's rules, and what cgcloud's statements allow and refuse: the
//! attacks of a box on its own and others' resources.

use super::*;

const NS: &str = "/team/";
const ME: &str = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaaaaaaaaaaaaaa1";
const PEER: &str = "arn:aws:ec2:us-west-2:123456789012:instance/i-0bbbbbbbbbbbbbbb2";
const OTHER_NS_BOX: &str = "arn:aws:ec2:us-west-2:123456789012:instance/i-0ccccccccccccccc3";

fn policy() -> Policy {
    Policy { statements: agent_statements(NS, "team_cgcloud-agent_") }
}

/// CreateTags on instance `arn` with these tag keys, signed by box `from`.
fn tag(arn: &str, keys: &[&str], from: &str) -> Request {
    Request::new("ec2:CreateTags", arn)
        .with("ec2:ResourceTag/cgcloud:namespace", &[NS])
        .with("aws:TagKeys", keys)
        .with("ec2:SourceInstanceARN", &[from])
}

#[test]
fn a_box_tags_itself_with_what_its_agent_writes() {
    assert!(policy().allows(&tag(ME, &["cgcloud:configured"], ME)));
    assert!(policy().allows(&tag(ME, &["cgcloud:configured", "cgcloud:failure", "cgcloud:host-key"], ME)));
}

#[test]
fn a_box_cannot_rewrite_what_others_trust() {
    for key in [
        "cgcloud:keypairs",
        "cgcloud:option:spark_version",
        "cgcloud:cluster",
        "cgcloud:ordinal",
        "cgcloud:leader",
        "cgcloud:leader-arn",
        "cgcloud:autostop",
        "cgcloud:autostop-action",
        "cgcloud:scaling",
        "cgcloud:scaling-types",
        "cgcloud:scaling-market",
        "cgcloud:scaling-subnets",
        "cgcloud:scaling-node",
        "cgcloud:launch-template",
        "cgcloud:node-prefix",
        "cgcloud:owner",
        "Name",
    ] {
        assert!(!policy().allows(&tag(PEER, &[key], ME)), "{key} on a peer");
        assert!(!policy().allows(&tag(ME, &[key], ME)), "{key} on itself");
        assert!(!policy().allows(&tag(ME, &["cgcloud:configured", key], ME)), "{key} smuggled in");
    }
    // Not even the keys it may write on itself, on a peer of its namespace: a peer's host
    // key (impersonation) or its configured state (a leader waiting for it).
    for key in AGENT_INSTANCE_TAGS {
        assert!(!policy().allows(&tag(PEER, &[key], ME)), "{key} on a peer");
        assert!(!policy().allows(&tag(OTHER_NS_BOX, &[key], ME)), "{key} outside the namespace");
    }
    // Credentials that are not a box's (no source instance) get nothing from this policy.
    let unsourced = Request::new("ec2:CreateTags", ME).with("aws:TagKeys", &["cgcloud:configured"]);
    assert!(!policy().allows(&unsourced));
}

/// A box can neither make a volume nor tag one: it could otherwise plant a volume named for a
/// future node's slot (with a setuid shell on it), or give itself a peer's.
#[test]
fn boxes_neither_create_nor_tag_volumes() {
    let vol = "arn:aws:ec2:us-west-2:123456789012:volume/vol-0123456789abcdef0";
    let create = Request::new("ec2:CreateVolume", vol)
        .with("aws:RequestTag/cgcloud:namespace", &[NS])
        .with("ec2:SourceInstanceARN", &[ME]);
    assert!(!policy().allows(&create));
    let at_creation = Request::new("ec2:CreateTags", vol)
        .with("ec2:CreateAction", &["CreateVolume"])
        .with("aws:RequestTag/cgcloud:namespace", &[NS])
        .with("aws:TagKeys", &["cgcloud:namespace", "cgcloud:attach-to"])
        .with("ec2:SourceInstanceARN", &[ME]);
    assert!(!policy().allows(&at_creation));
    // Giving itself an existing volume: denied.
    let retag = Request::new("ec2:CreateTags", vol)
        .with("ec2:ResourceTag/cgcloud:namespace", &[NS])
        .with("aws:RequestTag/cgcloud:attach-to", &[ME])
        .with("aws:TagKeys", &["cgcloud:attach-to"])
        .with("ec2:SourceInstanceARN", &[ME]);
    assert!(!policy().allows(&retag));
}

#[test]
fn the_agents_policy_writes_no_tag_nodes_trust() {
    assert_eq!(writes_workstation_tags(&policy()), None);
    // Statements that would are caught whatever else they are conditioned on: a plugin
    // role's plain CreateTags, one limited to a region, one whose keys include a trusted one.
    for extra in [
        Statement::allow("tag anything", &["ec2:CreateTags"], &["*"]),
        Statement::allow("tag here", &["ec2:*"], &["arn:aws:ec2:eu-west-1:*:instance/*"]).when(
            Op::StringEquals,
            "aws:RequestTag/cgcloud:cluster",
            &["prod"],
        ),
        Statement::allow("tag some", &["ec2:CreateTags"], &["*"]).when(
            Op::ForAllValuesStringEquals,
            "aws:TagKeys",
            &["Name", "cgcloud:ordinals"],
        ),
    ] {
        let mut p = policy();
        p.statements.push(extra);
        assert!(writes_workstation_tags(&p).is_some(), "{:?}", p.statements.last());
    }
    // Tags on what nodes never read (a spot request) are not their business.
    let mut p = policy();
    p.statements.push(Statement::allow(
        "tag requests",
        &["ec2:CreateTags"],
        &["arn:aws:ec2:*:*:spot-instances-request/*"],
    ));
    assert_eq!(writes_workstation_tags(&p), None);
}

#[test]
fn subscriptions_only_for_agent_queues() {
    let topic = "arn:aws:sns:us-west-2:123456789012:cgcloud-agent-notifications";
    let sub = |protocol: &str, endpoint: &str| {
        Request::new("sns:Subscribe", topic)
            .with("ec2:SourceInstanceARN", &[ME])
            .with("aws:PrincipalAccount", &["123456789012"])
            .with("sns:Protocol", &[protocol])
            .with("sns:Endpoint", &[endpoint])
    };
    assert!(policy().allows(&sub("sqs", "arn:aws:sqs:us-west-2:123456789012:team_cgcloud-agent_i-0aaaaaaaaaaaaaaa1")));
    // Anything else would carry the team's key events elsewhere: a web hook, a mailbox, a
    // queue of another account or outside the namespace's agents.
    assert!(!policy().allows(&sub("https", "https://attacker.example/hook")));
    assert!(!policy().allows(&sub("email", "someone@example.com")));
    assert!(!policy().allows(&sub("sqs", "arn:aws:sqs:us-west-2:999999999999:team_cgcloud-agent_x")));
    assert!(!policy().allows(&sub("sqs", "arn:aws:sqs:us-west-2:123456789012:other_queue")));
    assert!(!policy().allows(
        &sub("sqs", "arn:aws:sqs:us-west-2:123456789012:team_cgcloud-agent_x").with("aws:PrincipalAccount", &[])
    ));
}

/// Autostop's powers: a box stops or terminates itself; a leader the nodes tagged with its
/// ARN as their leader's; nobody a peer, another cluster's node or another namespace's.
#[test]
fn boxes_stop_only_themselves_and_leaders_their_nodes() {
    let power = |action: &str, target: &str, leader_arn: Option<&str>, ns: &str, from: &str| {
        let mut r = Request::new(action, target)
            .with("ec2:SourceInstanceARN", &[from])
            .with("ec2:ResourceTag/cgcloud:namespace", &[ns]);
        if let Some(l) = leader_arn {
            r = r.with("ec2:ResourceTag/cgcloud:leader-arn", &[l]);
        }
        policy().allows(&r)
    };
    for action in ["ec2:StopInstances", "ec2:TerminateInstances"] {
        assert!(power(action, ME, None, NS, ME), "{action} itself");
        assert!(!power(action, PEER, None, NS, ME), "{action} a peer");
        // ME leads PEER's cluster: allowed; PEER leads ME's: not for ME.
        assert!(power(action, PEER, Some(ME), NS, ME), "{action} a node it leads");
        assert!(!power(action, OTHER_NS_BOX, Some(PEER), NS, ME), "{action} another leader's node");
        assert!(!power(action, OTHER_NS_BOX, Some(ME), "/other/", ME), "{action} outside the namespace");
        // Without instance credentials, nothing.
        assert!(!policy().allows(&Request::new(action, ME)), "{action} unsourced");
    }
    // The leader-ARN tag is the workstation's: a box cannot write it on anyone, itself
    // included (a_box_cannot_rewrite_what_others_trust), so it cannot make itself a leader.
}

#[test]
fn volumes_attach_only_to_the_box_itself() {
    let attach = |resource: &str, tags: &[(&str, &str)]| {
        let mut r = Request::new("ec2:AttachVolume", resource).with("ec2:SourceInstanceARN", &[ME]);
        for (k, v) in tags {
            r = r.with(&format!("ec2:ResourceTag/{k}"), &[v]);
        }
        r
    };
    let vol = "arn:aws:ec2:us-west-2:123456789012:volume/vol-0123456789abcdef0";
    let ns = ("cgcloud:namespace", NS);
    let given = ("cgcloud:attach-to", ME);
    assert!(policy().allows(&attach(ME, &[ns])));
    assert!(policy().allows(&attach(vol, &[ns, ("cgcloud:persistent", "true"), given])));
    // A persistent volume of the namespace given to another node (a detached peer's, or one
    // planted for this slot by another box): denied.
    assert!(!policy().allows(&attach(vol, &[ns, ("cgcloud:persistent", "true"), ("cgcloud:attach-to", PEER)])));
    assert!(!policy().allows(&attach(vol, &[ns, ("cgcloud:persistent", "true")])));
    // A peer's instance (to attach a volume it can then read from there): denied.
    assert!(!policy().allows(&attach(PEER, &[ns])));
    // Volumes that are not persistent volumes of the namespace: a peer's root or data
    // volume, another namespace's persistent volume.
    assert!(!policy().allows(&attach(vol, &[ns])));
    assert!(!policy().allows(&attach(vol, &[("cgcloud:namespace", "/other/"), ("cgcloud:persistent", "true")])));
}

#[test]
fn a_box_uses_only_its_own_queue() {
    let arn = |name: &str| format!("arn:aws:sqs:us-west-2:123456789012:{name}");
    let mine = arn("team_cgcloud-agent_i-0aaaaaaaaaaaaaaa1");
    let peers = arn("team_cgcloud-agent_i-0bbbbbbbbbbbbbbb2");
    let create = |queue: &str, owner: &str| {
        Request::new("sqs:CreateQueue", queue)
            .with("aws:RequestTag/cgcloud:instance", &[owner])
            .with("ec2:SourceInstanceARN", &[ME])
    };
    assert!(policy().allows(&create(&mine, ME)));
    // Creating a queue for a peer, or untagged, or creating the peer's existing queue again.
    assert!(!policy().allows(&create(&peers, PEER)));
    assert!(!policy().allows(&Request::new("sqs:CreateQueue", &mine).with("ec2:SourceInstanceARN", &[ME])));
    assert!(!policy().allows(&create(&peers, ME).with("aws:ResourceTag/cgcloud:instance", &[PEER])));
    let tag_peer = Request::new("sqs:TagQueue", &peers)
        .with("aws:RequestTag/cgcloud:instance", &[ME])
        .with("aws:ResourceTag/cgcloud:instance", &[PEER])
        .with("ec2:SourceInstanceARN", &[ME]);
    assert!(!policy().allows(&tag_peer), "a box cannot take over a peer's queue by retagging it");
    let receive = |queue: &str, owner: &str| {
        Request::new("sqs:ReceiveMessage", queue)
            .with("aws:ResourceTag/cgcloud:instance", &[owner])
            .with("ec2:SourceInstanceARN", &[ME])
    };
    assert!(policy().allows(&receive(&mine, ME)));
    assert!(!policy().allows(&receive(&peers, PEER)), "a peer's queue");
    assert!(!policy().allows(&receive(&arn("other_cgcloud-agent_i-0ccccccccccccccc3"), ME)), "another namespace");
    assert!(!policy().allows(&Request::new("sqs:DeleteQueue", &mine).with("ec2:SourceInstanceARN", &[ME])));
}

#[test]
fn topics_metrics_and_the_rest_are_scoped() {
    let metric = |ns: &str| Request::new("cloudwatch:PutMetricData", "*").with("cloudwatch:namespace", &[ns]);
    assert!(policy().allows(&metric("CGCloud")));
    assert!(!policy().allows(&metric("AWS/EC2")));
    assert!(!policy().allows(&Request::new("sns:Publish", "arn:aws:sns:us-west-2:1:cgcloud-agent-notifications")));
    assert!(!policy().allows(&Request::new("ec2:TerminateInstances", PEER).with("ec2:SourceInstanceARN", &[ME])));
}

#[test]
fn instance_arns_name_the_partition() {
    assert_eq!(instance_arn("us-west-2", "123456789012", "i-1"), "arn:aws:ec2:us-west-2:123456789012:instance/i-1");
    assert!(instance_arn("cn-north-1", "1", "i-1").starts_with("arn:aws-cn:"));
    assert!(instance_arn("us-gov-west-1", "1", "i-1").starts_with("arn:aws-us-gov:"));
    assert_eq!(
        launch_template_arn("us-west-2", "123456789012", "lt-1"),
        "arn:aws:ec2:us-west-2:123456789012:launch-template/lt-1"
    );
    assert!(launch_template_arn("cn-north-1", "1", "lt-1").starts_with("arn:aws-cn:"));
}

#[test]
fn members_register_only_their_own_key_pairs() {
    let p = Policy { statements: key_pair_statements() };
    let kp = |name: &str| format!("arn:aws:ec2:us-west-2:123456789012:key-pair/{name}");
    let import = |who: &str, name: &str, owner: &str| {
        Request::new("ec2:ImportKeyPair", &kp(name))
            .with("aws:username", &[who])
            .with("aws:RequestTag/cgcloud:owner", &[owner])
    };
    let tag_on_import = |who: &str, name: &str, owner: &str| {
        Request::new("ec2:CreateTags", &kp(name))
            .with("aws:username", &[who])
            .with("ec2:CreateAction", &["ImportKeyPair"])
            .with("aws:RequestTag/cgcloud:owner", &[owner])
    };
    assert!(p.allows(&import("alice", "alice@laptop", "alice")));
    assert!(p.allows(&tag_on_import("alice", "alice@laptop", "alice")));
    // Mallory names a key pair for alice: untagged it is not alice's (keypairs.rs), and
    // tagged as alice's it is refused.
    assert!(!p.allows(&import("mallory", "alice@evil", "alice")));
    assert!(!p.allows(&tag_on_import("mallory", "alice@evil", "alice")));
    let retag = Request::new("ec2:CreateTags", &kp("alice@evil"))
        .with("aws:username", &["mallory"])
        .with("aws:RequestTag/cgcloud:owner", &["alice"]);
    assert!(!p.allows(&retag), "tagging an existing key pair");
    let untag = Request::new("ec2:DeleteTags", &kp("alice@laptop")).with("aws:username", &["mallory"]);
    assert!(!p.allows(&untag));
    let delete = |who: &str| {
        Request::new("ec2:DeleteKeyPair", &kp("alice@laptop"))
            .with("aws:username", &[who])
            .with("ec2:ResourceTag/cgcloud:owner", &["alice"])
    };
    assert!(p.allows(&delete("alice")) && !p.allows(&delete("mallory")));
    // A principal without a user name (a role session) cannot claim anyone's.
    let anon = Request::new("ec2:ImportKeyPair", &kp("alice")).with("aws:RequestTag/cgcloud:owner", &["alice"]);
    assert!(!p.allows(&anon));
    snapshot(&p, "docs/key-pair-policy.json", include_str!("../../../../docs/key-pair-policy.json"));
}

/// Compares `p` with its checked-in JSON (`path` from the workspace root); rewrites the file
/// instead with CGCLOUD_UPDATE_POLICY=1.
pub(super) fn snapshot(p: &Policy, path: &str, expected: &str) {
    let text = serde_json::to_string_pretty(&p.to_json()).unwrap();
    if std::env::var_os("CGCLOUD_UPDATE_POLICY").is_some() {
        std::fs::write(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR")), text + "\n").unwrap();
    } else {
        assert_eq!(text, expected.trim_end(), "{path} changed; review and accept with CGCLOUD_UPDATE_POLICY=1");
    }
}

#[test]
fn iam_wildcards() {
    assert!(iam_match("*", "arn:aws:ec2:r:1:instance/i-1"));
    assert!(iam_match("arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:r:1:instance/i-1"));
    assert!(!iam_match("arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:r:1:instance/i-1"));
    assert!(iam_match("team_cgcloud-agent_*", "team_cgcloud-agent_i-1"));
    assert!(!iam_match("team_cgcloud-agent_*", "team.x_cgcloud-agent_i-1"));
    assert!(iam_match("a?c", "abc") && !iam_match("a?c", "ac") && iam_match("[x]", "[x]"));
}

#[test]
fn evaluator_follows_iam_rules() {
    let p = Policy {
        statements: vec![
            Statement::allow("a", &["ec2:Describe*"], &["*"]),
            Statement { effect: Effect::Deny, ..Statement::allow("d", &["ec2:DescribeTags"], &["*"]) },
            Statement::allow("c", &["s3:GetObject"], &["*"]).when(Op::StringEquals, "aws:SourceVpc", &["vpc-1"]),
        ],
    };
    assert!(p.allows(&Request::new("EC2:describeinstances", "x")));
    assert!(!p.allows(&Request::new("ec2:DescribeTags", "x")), "an explicit deny wins");
    assert!(!p.allows(&Request::new("s3:GetObject", "x")), "a missing condition key fails");
    assert!(p.allows(&Request::new("s3:GetObject", "x").with("aws:SourceVpc", &["vpc-1"])));
    assert!(!p.allows(&Request::new("ec2:RunInstances", "x")), "nothing allows it");
    let own = Policy {
        statements: vec![Statement::allow("v", &["ec2:StopInstances"], &["${ec2:SourceInstanceARN}"]).when(
            Op::StringEqualsIfExists,
            "aws:ResourceTag/o",
            &["${aws:username}"],
        )],
    };
    let stop = |arn: &str| Request::new("ec2:StopInstances", arn).with("ec2:SourceInstanceARN", &[ME]);
    assert!(own.allows(&stop(ME)), "a variable in the resource");
    assert!(!own.allows(&stop(PEER)));
    assert!(!own.allows(&Request::new("ec2:StopInstances", ME)), "a variable the request lacks");
    assert!(!own.allows(&stop(ME).with("aws:ResourceTag/o", &["alice"])), "IfExists with the key present");
    assert!(own.allows(&stop(ME).with("aws:ResourceTag/o", &["alice"]).with("aws:username", &["alice"])));
    assert!(
        substitute("a${x}b${y}", &Request::new("a", "b").with("x", &["1"]).with("y", &["2"])).as_deref()
            == Some("a1b2")
    );
    assert!(substitute("${x", &Request::new("a", "b")).is_none());
}

#[test]
fn policies_read_back_from_iam_json() {
    let p = policy();
    let back = Policy::from_json(&p.to_json().to_string()).unwrap();
    assert_eq!(back.statements.len(), p.statements.len());
    for (a, b) in back.statements.iter().zip(&p.statements) {
        assert_eq!((a.effect, &a.actions, &a.resources), (b.effect, &b.actions, &b.resources));
        let sorted = |s: &Statement| {
            let mut c: Vec<_> = s.conditions.iter().map(|c| (c.op, c.key.clone(), c.values.clone())).collect();
            c.sort();
            c
        };
        assert_eq!(sorted(a), sorted(b));
    }
    let single = r#"{"Statement": {"Effect": "Deny", "Action": "ec2:*", "Resource": "*"}}"#;
    assert_eq!(Policy::from_json(single).unwrap().statements[0].effect, Effect::Deny);
    for unmodelled in [
        r#"{"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]}"#,
        r#"{"Statement": [{"Effect": "Allow", "Action": "*", "NotResource": "x"}]}"#,
        r#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "1.2.3.4/32"}}}]}"#,
        r#"{"Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}"#,
        "not json",
    ] {
        assert!(Policy::from_json(unmodelled).is_err(), "{unmodelled}");
    }
}

#[test]
fn json_form() {
    let json = Policy { statements: agent_statements(NS, "team_cgcloud-agent_") }.to_json();
    let text = serde_json::to_string_pretty(&json).unwrap();
    let expected = include_str!("../../tests/agent-policy.json");
    if std::env::var_os("CGCLOUD_UPDATE_POLICY").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agent-policy.json"), &text).unwrap();
    } else {
        assert_eq!(
            text,
            expected.trim_end(),
            "the agent's policy changed; review and accept with CGCLOUD_UPDATE_POLICY=1"
        );
    }
    assert_eq!(json["Statement"][1]["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"][0], "cgcloud:configured");
    assert_eq!(json["Statement"][1]["Condition"]["StringEquals"]["aws:ARN"][0], "${ec2:SourceInstanceARN}");
    let twice =
        Policy { statements: vec![Statement::allow("x", &["a:b"], &["*"]), Statement::allow("x", &["a:c"], &["*"])] };
    let j = twice.to_json();
    assert_ne!(j["Statement"][0]["Sid"], j["Statement"][1]["Sid"]);
}
