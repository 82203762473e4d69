//! The leader's launches as IAM authorizes them, resource by resource: the exact launch the
//! agent makes is allowed, and each way of reaching past its cluster is denied.

use super::*;
use crate::policy::{agent_statements, writes_workstation_tags, Policy, Request};

const NS: &str = "/team/";
const LEADER: &str = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaaaaaaaaaaaaaa1";
const OTHER_LEADER: &str = "arn:aws:ec2:us-west-2:123456789012:instance/i-0bbbbbbbbbbbbbbb2";
const TEMPLATE: &str = "arn:aws:ec2:us-west-2:123456789012:launch-template/lt-0123456789abcdef0";
const OTHER_TEMPLATE: &str = "arn:aws:ec2:us-west-2:123456789012:launch-template/lt-0fedcba987654321f";
const VPC: &str = "arn:aws:ec2:us-west-2:123456789012:vpc/vpc-0123456789abcdef0";
const PROFILE: &str = "arn:aws:iam::123456789012:instance-profile/team_slurm-worker";
const ROLE: &str = "arn:aws:iam::123456789012:role/team_slurm-worker";

fn worker_tags() -> Tags {
    [
        (tags::NAMESPACE, NS),
        (tags::CLUSTER, "hpc"),
        (tags::CLUSTER_TYPE, "slurm"),
        (tags::ROLE, "slurm-worker"),
        (tags::NODE_ROLE, "slurm-box"),
        (tags::NODE_PREFIX, "w"),
        (tags::LEADER, "i-0aaaaaaaaaaaaaaa1"),
        (tags::LEADER_ARN, LEADER),
        (tags::KEYPAIRS, "@@developers"),
        (tags::NAME, "team_slurm-worker"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn types() -> Vec<String> {
    vec!["m7i.*".into(), "m6i.*".into()]
}

/// The scope of the test cluster's leader, with these types and tags.
fn scope<'a>(types: &'a [String], tags: &'a Tags) -> ScalerScope<'a> {
    ScalerScope {
        template_arn: TEMPLATE,
        vpc_arn: VPC,
        worker_profile_arn: PROFILE,
        worker_role_arn: ROLE,
        instance_types: types,
        tags,
    }
}

fn leader_policy() -> Policy {
    let (t, ty) = (worker_tags(), types());
    let scope = scope(&ty, &t);
    let mut statements = agent_statements(NS, "team_cgcloud-agent_");
    statements.extend(scaler_statements(&scope).unwrap());
    Policy { statements }
}

/// One RunInstances call as the leader's agent makes it, and what an attacker may change.
#[derive(Clone)]
struct Launch {
    from: &'static str,
    template: Option<&'static str>,
    instance_type: &'static str,
    vpc: &'static str,
    profile: &'static str,
    passed_role: &'static str,
    /// The template's tags merged with the request's.
    tags: Tags,
    /// Resources given in the request instead of taken from the template.
    overridden: Vec<&'static str>,
    spot: bool,
}

fn launch() -> Launch {
    let mut tags = worker_tags();
    tags.insert(tags::ORDINALS.into(), "1,2".into());
    tags.insert(tags::LAUNCH_CALL.into(), "scale-1".into());
    Launch {
        from: LEADER,
        template: Some(TEMPLATE),
        instance_type: "m7i.large",
        vpc: VPC,
        profile: PROFILE,
        passed_role: ROLE,
        tags,
        overridden: Vec::new(),
        spot: true,
    }
}

/// Every authorization the launch needs, as IAM makes them.
fn requests(l: &Launch) -> Vec<Request> {
    let arn = |kind: &str, id: &str| format!("arn:aws:ec2:us-west-2:123456789012:{kind}/{id}");
    let base = |action: &str, resource: &str| {
        let mut r = Request::new(action, resource).with("ec2:SourceInstanceARN", &[l.from]);
        if let Some(t) = l.template {
            r = r.with("ec2:LaunchTemplate", &[t]);
        }
        r
    };
    let tagged = |mut r: Request| {
        for (k, v) in &l.tags {
            r = r.with(&format!("aws:RequestTag/{k}"), &[v]);
        }
        let keys: Vec<&str> = l.tags.keys().map(String::as_str).collect();
        r.with("aws:TagKeys", &keys)
    };
    let mut out = vec![
        tagged(base("ec2:RunInstances", &arn("instance", "*")))
            .with("ec2:InstanceType", &[l.instance_type])
            .with("ec2:InstanceProfile", &[l.profile]),
        tagged(base("ec2:RunInstances", &arn("volume", "*"))),
        base("ec2:RunInstances", &arn("subnet", "subnet-0123456789abcdef0")).with("ec2:Vpc", &[l.vpc]),
        base("ec2:RunInstances", &arn("network-interface", "*")).with("ec2:Vpc", &[l.vpc]),
        tagged(base("ec2:CreateTags", &arn("instance", "*"))).with("ec2:CreateAction", &["RunInstances"]),
        tagged(base("ec2:CreateTags", &arn("volume", "*"))).with("ec2:CreateAction", &["RunInstances"]),
        Request::new("iam:PassRole", l.passed_role)
            .with("iam:PassedToService", &["ec2.amazonaws.com"])
            .with("ec2:SourceInstanceARN", &[l.from]),
    ];
    if let Some(t) = l.template {
        out.push(base("ec2:RunInstances", t));
    }
    for (kind, id) in
        [("image", "ami-0123456789abcdef0"), ("security-group", "sg-0123456789abcdef0"), ("key-pair", "team")]
    {
        let from_template = !l.overridden.contains(&kind) && l.template.is_some();
        out.push(
            base("ec2:RunInstances", &arn(kind, id))
                .with("ec2:IsLaunchTemplateResource", &[if from_template { "true" } else { "false" }]),
        );
    }
    if l.spot {
        out.push(base("ec2:RunInstances", &arn("spot-instances-request", "*")));
    }
    out
}

fn allowed(p: &Policy, l: &Launch) -> bool {
    requests(l).iter().all(|r| p.allows(r))
}

#[test]
fn a_leader_launches_its_clusters_workers() {
    let p = leader_policy();
    for r in requests(&launch()) {
        assert!(p.allows(&r), "{} on {} denied", r.action, r.resource);
    }
    assert!(allowed(&p, &Launch { spot: false, instance_type: "m6i.xlarge", ..launch() }));
    // Without launch-call or ordinals (e.g. one worker) is fine too.
    let mut bare = launch();
    bare.tags.remove(tags::LAUNCH_CALL);
    bare.tags.remove(tags::ORDINALS);
    assert!(allowed(&p, &bare));
    assert_eq!(writes_workstation_tags(&p), None, "its tagging is bound to launches of its cluster");
}

#[test]
fn a_leader_launches_nothing_else() {
    let p = leader_policy();
    let with_tag = |k: &str, v: &str| {
        let mut l = launch();
        l.tags.insert(k.into(), v.into());
        l
    };
    let without_tag = |k: &str| {
        let mut l = launch();
        l.tags.remove(k);
        l
    };
    let attacks: Vec<(&str, Launch)> = vec![
        ("another cluster's template", Launch { template: Some(OTHER_TEMPLATE), ..launch() }),
        ("no template", Launch { template: None, ..launch() }),
        ("its own image", Launch { overridden: vec!["image"], ..launch() }),
        ("its own security group", Launch { overridden: vec!["security-group"], ..launch() }),
        ("its own key", Launch { overridden: vec!["key-pair"], ..launch() }),
        ("another profile", Launch { profile: "arn:aws:iam::123456789012:instance-profile/team_admin", ..launch() }),
        (
            "its own profile",
            Launch { profile: "arn:aws:iam::123456789012:instance-profile/team_hpc-leader", ..launch() },
        ),
        ("passing another role", Launch { passed_role: "arn:aws:iam::123456789012:role/team_admin", ..launch() }),
        ("another VPC", Launch { vpc: "arn:aws:ec2:us-west-2:123456789012:vpc/vpc-0ffffffffffffffff", ..launch() }),
        ("a type outside the patterns", Launch { instance_type: "p5.48xlarge", ..launch() }),
        ("into another cluster", with_tag(tags::CLUSTER, "other")),
        ("into another namespace", with_tag(tags::NAMESPACE, "/other/")),
        ("as another role", with_tag(tags::ROLE, "jenkins-master")),
        ("under another leader", with_tag(tags::LEADER_ARN, OTHER_LEADER)),
        ("as a leader", with_tag(tags::ORDINAL, "0")),
        ("with a persistent volume", with_tag(tags::PERSISTENT, "true")),
        ("with a volume given to another box", with_tag(tags::ATTACH_TO, OTHER_LEADER)),
        ("trusting other key pairs", with_tag(tags::KEYPAIRS, "*")),
        ("with an autostop", with_tag(tags::AUTOSTOP, "60")),
        ("with bounds of its own", with_tag(tags::SCALING, "min=0 max=999 idle=60")),
        ("with other node names", with_tag(tags::NODE_PREFIX, "x")),
        ("without its cluster's tag", without_tag(tags::CLUSTER)),
        ("without its leader's ARN", without_tag(tags::LEADER_ARN)),
        ("from another box", Launch { from: OTHER_LEADER, ..launch() }),
    ];
    for (what, l) in attacks {
        assert!(!allowed(&p, &l), "a launch {what} was allowed");
    }
    // Tagging an existing instance (no CreateAction) into its cluster, or under itself.
    let retag = Request::new("ec2:CreateTags", "arn:aws:ec2:us-west-2:123456789012:instance/i-0ccccccccccccccc3")
        .with("ec2:SourceInstanceARN", &[LEADER])
        .with("aws:RequestTag/cgcloud:leader-arn", &[LEADER])
        .with("aws:TagKeys", &[tags::LEADER_ARN]);
    assert!(!p.allows(&retag));
    // Terminating another leader's node.
    let terminate =
        Request::new("ec2:TerminateInstances", "arn:aws:ec2:us-west-2:123456789012:instance/i-0ddddddddddddddd4")
            .with("ec2:SourceInstanceARN", &[LEADER])
            .with("ec2:ResourceTag/cgcloud:namespace", &[NS])
            .with("ec2:ResourceTag/cgcloud:leader-arn", &[OTHER_LEADER]);
    assert!(!p.allows(&terminate));
    assert!(p.allows(&terminate.with("ec2:ResourceTag/cgcloud:leader-arn", &[LEADER])), "its own worker");
    // A worker's (or any other box's) policy launches nothing.
    let worker = Policy { statements: agent_statements(NS, "team_cgcloud-agent_") };
    assert!(requests(&launch()).iter().any(|r| !worker.allows(r)));
    assert!(!allowed(&worker, &launch()));
}

#[test]
fn only_bound_launch_tagging_may_name_workstation_tags() {
    let bound = || leader_policy().statements.into_iter().find(|s| s.why == "tag its workers as they launch").unwrap();
    assert!(launch_tagging_is_bound(&bound()));
    let unbound: Vec<(&str, Statement)> = vec![
        ("no CreateAction", {
            let mut s = bound();
            s.conditions.retain(|c| c.key != "ec2:CreateAction");
            s
        }),
        ("CreateAction of another call", {
            let mut s = bound();
            s.conditions
                .iter_mut()
                .filter(|c| c.key == "ec2:CreateAction")
                .for_each(|c| c.values = vec!["CreateVolume".into()]);
            s
        }),
        ("any resource", Statement { resources: vec!["*".into()], ..bound() }),
        ("key pairs too", {
            let mut s = bound();
            s.resources.push("arn:aws:ec2:*:*:key-pair/*".into());
            s
        }),
        ("a cluster pattern", {
            let mut s = bound();
            s.conditions
                .iter_mut()
                .filter(|c| c.key == "aws:RequestTag/cgcloud:cluster")
                .for_each(|c| c.values = vec!["*".into()]);
            s
        }),
        ("a literal leader", {
            let mut s = bound();
            s.conditions
                .iter_mut()
                .filter(|c| c.key == "aws:RequestTag/cgcloud:leader-arn")
                .for_each(|c| c.values = vec![LEADER.into()]);
            s
        }),
        ("an ordinal key", {
            let mut s = bound();
            s.conditions
                .iter_mut()
                .filter(|c| c.key == "aws:TagKeys")
                .for_each(|c| c.values.push(tags::ORDINAL.into()));
            s
        }),
        ("a node role unpinned", {
            let mut s = bound();
            s.conditions.retain(|c| c.key != "aws:RequestTag/cgcloud:node-role");
            s
        }),
        ("more actions", {
            let mut s = bound();
            s.actions.push("ec2:DeleteTags".into());
            s
        }),
    ];
    for (what, s) in unbound {
        assert!(!launch_tagging_is_bound(&s), "{what}");
        assert!(writes_workstation_tags(&Policy { statements: vec![s] }).is_some(), "{what}");
    }
}

#[test]
fn a_scope_that_would_tag_what_a_launch_must_not_is_refused() {
    let ty = types();
    for (key, add) in [
        (tags::ORDINAL, true),
        (tags::ATTACH_TO, true),
        (tags::LAUNCH_STATE, true),
        (tags::ORDINALS, true),
        (tags::LEADER_ARN, false),
        (tags::CLUSTER, false),
    ] {
        let mut t = worker_tags();
        if add {
            t.insert(key.into(), "x".into());
        } else {
            t.remove(key);
        }
        let e = scaler_statements(&scope(&ty, &t)).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
}

#[test]
fn the_leaders_policy_reads_back_and_is_snapshotted() {
    let p = leader_policy();
    let scaler = Policy {
        statements: p
            .statements
            .iter()
            .filter(|s| {
                s.why.starts_with("launch") || s.why.starts_with("tag its workers") || s.why.starts_with("pass")
            })
            .cloned()
            .collect(),
    };
    let back = Policy::from_json(&scaler.to_json().to_string()).unwrap();
    assert!(allowed(&scaler, &launch()), "the scaler's statements alone cover a launch");
    for l in [
        launch(),
        Launch { template: Some(OTHER_TEMPLATE), ..launch() },
        Launch { instance_type: "p5.48xlarge", ..launch() },
    ] {
        for r in requests(&l) {
            assert_eq!(back.allows(&r), scaler.allows(&r), "{} on {}", r.action, r.resource);
        }
    }
    crate::policy::tests::snapshot(
        &scaler,
        "crates/cgcloud-core/tests/leader-scaler-policy.json",
        include_str!("../../../tests/leader-scaler-policy.json"),
    );
}
