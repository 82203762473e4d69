//! An elastic cluster's leader at the guests' door: the RunInstances its agent makes
//! (`cgcloud-agent`'s `scale::launch::Call::params`, rebuilt here parameter by parameter) is
//! allowed by its policy (`agent_statements` and `scaler_statements`), and so is terminating
//! its workers; each way of reaching past its cluster is denied, and the denial names the
//! request that was (what the door logs and answers), or says why the call was not evaluated.

use super::*;
use cgcloud_core::policy::scaler::{scaler_statements, ScalerScope};
use cgcloud_core::tags as keys;
use cgcloud_core::{ordinals, sigv4};

const WORKER: &str = "i-0ccccccccccccccc3";
const OTHER_WORKER: &str = "i-0ddddddddddddddd4";
const TEMPLATE: &str = "lt-0123456789abcdef0";
const OTHER_TEMPLATE: &str = "lt-0fedcba987654321f";
/// A template holding what the facts leave out (network interfaces).
const ODD_TEMPLATE: &str = "lt-0eeeeeeeeeeeeeeee";
const SUBNET: &str = "subnet-0123456789abcdef0";
const OTHER_SUBNET: &str = "subnet-0ffffffffffffffff";
const VPC: &str = "vpc-0123456789abcdef0";
const IMAGE: &str = "ami-0123456789abcdef0";
const GROUP: &str = "sg-0123456789abcdef0";
const KEY: &str = "team";
const PROFILE: &str = "arn:aws:iam::123456789012:instance-profile/team_slurm-worker";
const ROLE: &str = "arn:aws:iam::123456789012:role/team_slurm-worker";
const ADMIN_PROFILE: &str = "arn:aws:iam::123456789012:instance-profile/team_admin";
const ADMIN_ROLE: &str = "arn:aws:iam::123456789012:role/team_admin";

fn ec2(rest: &str) -> String {
    format!("arn:aws:ec2:us-west-2:123456789012:{rest}")
}

/// A RunInstances call's parameters, in order.
type Params = Vec<(String, String)>;

fn own(pairs: &[(&str, &str)]) -> Params {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// What the workstation put in the cluster's template for instances and volumes alike.
fn worker_tags(cluster: &str, leader: &str) -> Tags {
    own(&[
        (keys::NAMESPACE, NS),
        (keys::CLUSTER, cluster),
        (keys::CLUSTER_TYPE, "slurm"),
        (keys::ROLE, "slurm-worker"),
        (keys::NODE_ROLE, "slurm-box"),
        (keys::NODE_PREFIX, "w"),
        (keys::LEADER, leader),
        (keys::LEADER_ARN, &arn(leader)),
        (keys::KEYPAIRS, "@@developers"),
        (keys::NAME, "team_slurm-worker"),
    ])
    .into_iter()
    .collect()
}

fn facts(tags: Tags) -> TemplateFacts {
    TemplateFacts {
        image_id: Some(IMAGE.into()),
        security_group_ids: vec![GROUP.into()],
        key_name: Some(KEY.into()),
        instance_profile_arn: Some(PROFILE.into()),
        instance_type: None,
        instance_tags: tags.clone(),
        volume_tags: tags,
        unmodelled: Vec::new(),
    }
}

/// moto with this cluster's template (ME leads it) and another cluster's (PEER leads it, with
/// the same image, group, key and profile), the cluster's VPC and another, the workers' profile
/// and an administrator's, and a worker of each cluster.
fn leader_fake() -> Fake {
    let mut f = fake();
    f.templates.insert(TEMPLATE.into(), ("team_hpc-workers".into(), facts(worker_tags("hpc", ME))));
    f.templates.insert(OTHER_TEMPLATE.into(), ("team_other-workers".into(), facts(worker_tags("other", PEER))));
    let odd = TemplateFacts { unmodelled: vec!["NetworkInterfaces".into()], ..facts(worker_tags("hpc", ME)) };
    f.templates.insert(ODD_TEMPLATE.into(), ("team_odd-workers".into(), odd));
    f.subnets.insert(SUBNET.into(), VPC.into());
    f.subnets.insert(OTHER_SUBNET.into(), "vpc-0ffffffffffffffff".into());
    f.profiles.insert(PROFILE.into(), ROLE.into());
    f.profiles.insert(ADMIN_PROFILE.into(), ADMIN_ROLE.into());
    f.tags.insert(WORKER.into(), worker_tags("hpc", ME));
    f.tags.insert(OTHER_WORKER.into(), worker_tags("other", PEER));
    f
}

/// The leader's role: the agent's statements and the scaler's for this cluster.
fn leader_policy() -> Policy {
    let (tags, types) = (worker_tags("hpc", ME), vec!["m7i.*".to_owned(), "m6i.*".to_owned()]);
    let (template_arn, vpc_arn) = (ec2(&format!("launch-template/{TEMPLATE}")), ec2(&format!("vpc/{VPC}")));
    let scope = ScalerScope {
        template_arn: &template_arn,
        vpc_arn: &vpc_arn,
        worker_profile_arn: PROFILE,
        worker_role_arn: ROLE,
        instance_types: &types,
        tags: &tags,
    };
    let mut statements = agent_statements(NS, "team_cgcloud-agent_");
    statements.extend(scaler_statements(&scope).expect("the scope of a valid cluster"));
    Policy { statements }
}

/// A worker's role (and any other box's): the agent's statements only.
fn worker_policy() -> Policy {
    Policy { statements: agent_statements(NS, "team_cgcloud-agent_") }
}

/// The agent's call for workers 1 and 2 from version 1 of the template, on the spot market
/// with a bid, the template's tags and the launch's on instances and volumes alike.
fn agent_launch() -> Params {
    let token = "scale-1-1";
    let mut p = own(&[
        ("LaunchTemplate.LaunchTemplateId", TEMPLATE),
        ("LaunchTemplate.Version", "1"),
        ("InstanceType", "m7i.large"),
        ("SubnetId", SUBNET),
        ("MinCount", "2"),
        ("MaxCount", "2"),
        ("ClientToken", token),
        ("InstanceMarketOptions.MarketType", "spot"),
        ("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time"),
        ("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior", "terminate"),
        ("InstanceMarketOptions.SpotOptions.MaxPrice", "0.0500"),
    ]);
    let mut tags = worker_tags("hpc", ME);
    tags.insert(keys::ORDINALS.into(), ordinals::tag_value(&[1, 2]));
    tags.insert(keys::LAUNCH_CALL.into(), token.into());
    for (i, kind) in ["instance", "volume"].iter().enumerate() {
        let spec = format!("TagSpecification.{}", i + 1);
        p.push((format!("{spec}.ResourceType"), (*kind).to_owned()));
        for (j, (k, v)) in tags.iter().enumerate() {
            p.push((format!("{spec}.Tag.{}.Key", j + 1), k.clone()));
            p.push((format!("{spec}.Tag.{}.Value", j + 1), v.clone()));
        }
    }
    p
}

/// The form body of a RunInstances with `params`, as the agent's client sends it.
fn body(params: &[(String, String)]) -> String {
    let mut b = "Action=RunInstances&Version=2016-11-15".to_owned();
    for (k, v) in params {
        b.push_str(&format!("&{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)));
    }
    b
}

/// The agent's call with `key` set to `value` (added if it is not there).
fn with(key: &str, value: &str) -> Params {
    let mut p = agent_launch();
    match p.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value.to_owned(),
        None => p.push((key.to_owned(), value.to_owned())),
    }
    p
}

/// `params` without the keys that start with `prefix`.
fn without(mut params: Params, prefix: &str) -> Params {
    params.retain(|(k, _)| !k.starts_with(prefix));
    params
}

/// The agent's call with tag `key` = `value` in its TagSpecification `spec` (1: instances,
/// 2: volumes), replacing the one there.
fn tagged(spec: usize, key: &str, value: &str) -> Params {
    let mut p = agent_launch();
    let prefix = format!("TagSpecification.{spec}.Tag.");
    let at = p.iter().find(|(k, v)| k.starts_with(&prefix) && k.ends_with(".Key") && v == key).map(|(k, _)| k.clone());
    match at {
        Some(k) => {
            let value_key = k.replace(".Key", ".Value");
            if let Some(kv) = p.iter_mut().find(|(k, _)| *k == value_key) {
                kv.1 = value.to_owned();
            }
        }
        None => {
            p.push((format!("{prefix}99.Key"), key.to_owned()));
            p.push((format!("{prefix}99.Value"), value.to_owned()));
        }
    }
    p
}

/// What the door's evaluation comes to for a call of the leader's to EC2: the first request
/// `policy` denies (None: allowed), or why the call was not evaluated.
async fn decide(policy: &Policy, body: &str) -> Result<Option<Request>, Unevaluated> {
    let call = Call::parse(&request(body, &[]), "ec2", &["host"])?;
    let reqs = requests(&call, &caller(), &leader_fake()).await?;
    Ok(first_denied(policy, &reqs).cloned())
}

#[test]
fn what_a_leader_does_is_allowed() {
    run(async {
        let p = leader_policy();
        // What one launch is authorized on, as the core's model of IAM has it.
        let call = Call::parse(&request(&body(&agent_launch()), &[]), "ec2", &["host"]).unwrap();
        let reqs = requests(&call, &caller(), &leader_fake()).await.unwrap();
        let made: Vec<(&str, &str)> = reqs.iter().map(|r| (r.action.as_str(), r.resource.as_str())).collect();
        let template = ec2(&format!("launch-template/{TEMPLATE}"));
        let expected = [
            ("ec2:RunInstances", template.clone()),
            ("ec2:RunInstances", ec2("instance/*")),
            ("ec2:RunInstances", format!("arn:aws:ec2:us-west-2::image/{IMAGE}")),
            ("ec2:RunInstances", ec2(&format!("security-group/{GROUP}"))),
            ("ec2:RunInstances", ec2(&format!("key-pair/{KEY}"))),
            ("ec2:RunInstances", ec2(&format!("subnet/{SUBNET}"))),
            ("ec2:RunInstances", ec2("network-interface/*")),
            ("ec2:RunInstances", ec2("volume/*")),
            ("ec2:RunInstances", ec2("spot-instances-request/*")),
            ("ec2:CreateTags", ec2("instance/*")),
            ("ec2:CreateTags", ec2("volume/*")),
            ("iam:PassRole", ROLE.to_owned()),
        ];
        assert_eq!(made, expected.iter().map(|(a, r)| (*a, r.as_str())).collect::<Vec<_>>());
        let value = |i: usize, key: &str| reqs[i].context.get(key).cloned().unwrap_or_default();
        assert_eq!(value(1, "ec2:InstanceType"), ["m7i.large"]);
        assert_eq!(value(1, "ec2:InstanceProfile"), [PROFILE]);
        assert_eq!(value(1, "aws:RequestTag/cgcloud:leader-arn"), [arn(ME)]);
        assert_eq!(value(2, "ec2:IsLaunchTemplateResource"), ["true"]);
        assert_eq!(value(5, "ec2:Vpc"), [ec2(&format!("vpc/{VPC}"))]);
        assert_eq!(value(9, "ec2:CreateAction"), ["RunInstances"]);
        assert_eq!(value(11, "iam:PassedToService"), ["ec2.amazonaws.com"]);
        for r in &reqs[..11] {
            assert_eq!(r.context.get("ec2:LaunchTemplate"), Some(&vec![template.clone()]), "{}", r.resource);
            assert_eq!(r.context.get("ec2:SourceInstanceARN"), Some(&vec![arn(ME)]), "{}", r.resource);
        }

        let on_demand = without(agent_launch(), "InstanceMarketOptions.");
        let by_name =
            without(with("LaunchTemplate.LaunchTemplateName", "team_hpc-workers"), "LaunchTemplate.LaunchTemplateId");
        for (what, params) in [
            ("the agent's launch", agent_launch()),
            ("on demand", on_demand),
            ("another type of the patterns", with("InstanceType", "m6i.xlarge")),
            ("the latest version", with("LaunchTemplate.Version", "$Latest")),
            ("the default version", without(agent_launch(), "LaunchTemplate.Version")),
            ("the template by name", by_name),
            // Tags are the template's with the request's over them: naming none is the same.
            ("the template's tags only", without(agent_launch(), "TagSpecification.")),
        ] {
            assert_eq!(decide(&p, &body(&params)).await.map(|d| d.map(|r| r.resource)), Ok(None), "{what}");
        }
        for action in ["TerminateInstances", "StopInstances"] {
            let b = format!("Action={action}&Version=2016-11-15&InstanceId.1={WORKER}");
            assert!(decide(&p, &b).await.unwrap().is_none(), "{action} of its worker");
        }
    });
}

#[test]
fn what_a_leader_must_not_do_is_denied() {
    run(async {
        let p = leader_policy();
        let instances = ec2("instance/*");
        let launch = |params: &[(String, String)]| body(params);
        // (what, the call, the request denied first)
        let denied: Vec<(&str, String, String)> = vec![
            (
                "another cluster's template",
                launch(&with("LaunchTemplate.LaunchTemplateId", OTHER_TEMPLATE)),
                ec2(&format!("launch-template/{OTHER_TEMPLATE}")),
            ),
            (
                "its own image",
                launch(&with("ImageId", "ami-0ffffffffffffffff")),
                "arn:aws:ec2:us-west-2::image/ami-0ffffffffffffffff".into(),
            ),
            (
                "the template's image, named in the request",
                launch(&with("ImageId", IMAGE)),
                format!("arn:aws:ec2:us-west-2::image/{IMAGE}"),
            ),
            (
                "its own security group",
                launch(&with("SecurityGroupId.1", "sg-0ffffffffffffffff")),
                ec2("security-group/sg-0ffffffffffffffff"),
            ),
            ("its own key", launch(&with("KeyName", "mallory")), ec2("key-pair/mallory")),
            ("another profile by ARN", launch(&with("IamInstanceProfile.Arn", ADMIN_PROFILE)), instances.clone()),
            ("another profile by name", launch(&with("IamInstanceProfile.Name", "team_admin")), instances.clone()),
            ("into another cluster", launch(&tagged(1, keys::CLUSTER, "other")), instances.clone()),
            ("under another leader", launch(&tagged(1, keys::LEADER_ARN, &arn(PEER))), instances.clone()),
            ("as a leader", launch(&tagged(1, keys::ORDINAL, "0")), instances.clone()),
            ("with a volume given to a box", launch(&tagged(2, keys::ATTACH_TO, &arn(PEER))), ec2("volume/*")),
            ("a type outside the patterns", launch(&with("InstanceType", "p5.48xlarge")), instances.clone()),
            ("in another VPC", launch(&with("SubnetId", OTHER_SUBNET)), ec2(&format!("subnet/{OTHER_SUBNET}"))),
            (
                "without the template",
                launch(
                    &[
                        without(agent_launch(), "LaunchTemplate."),
                        own(&[
                            ("ImageId", IMAGE),
                            ("SecurityGroupId.1", GROUP),
                            ("KeyName", KEY),
                            ("IamInstanceProfile.Arn", PROFILE),
                        ]),
                    ]
                    .concat(),
                ),
                instances.clone(),
            ),
            (
                "tagging an existing worker",
                format!(
                    "Action=CreateTags&ResourceId.1={WORKER}&Tag.1.Key=cgcloud%3Aleader-arn&Tag.1.Value={}",
                    sigv4::uri_encode(&arn(ME))
                ),
                ec2(&format!("instance/{WORKER}")),
            ),
            (
                "terminating another cluster's worker",
                format!("Action=TerminateInstances&InstanceId.1={OTHER_WORKER}"),
                ec2(&format!("instance/{OTHER_WORKER}")),
            ),
        ];
        for (what, b, resource) in denied {
            let first = decide(&p, &b).await.map(|d| d.map(|r| r.resource));
            assert_eq!(first, Ok(Some(resource)), "{what}");
        }
        // A worker (any box but the leader) launches nothing, not even the leader's launch.
        let worker = decide(&worker_policy(), &body(&agent_launch())).await.unwrap().map(|r| r.resource);
        assert_eq!(worker, Some(ec2(&format!("launch-template/{TEMPLATE}"))));

        // What the door does not evaluate: denied all the same, saying why.
        let not_evaluated: Vec<(&str, Params, &str)> = vec![
            (
                "network interfaces",
                [without(agent_launch(), "SubnetId"), own(&[("NetworkInterface.1.SubnetId", OTHER_SUBNET)])].concat(),
                "network interfaces",
            ),
            ("block device mappings", with("BlockDeviceMapping.1.Ebs.VolumeSize", "100"), "block device mappings"),
            ("groups by name", with("SecurityGroup.1", "default"), "by name"),
            ("a placement group", with("Placement.GroupName", "x"), "Placement.GroupName"),
            (
                "tags for an interface",
                with("TagSpecification.3.ResourceType", "network-interface"),
                "network-interface",
            ),
            ("another market", with("InstanceMarketOptions.MarketType", "capacity-block"), "market"),
            ("a template holding more", with("LaunchTemplate.LaunchTemplateId", ODD_TEMPLATE), "NetworkInterfaces"),
        ];
        for (what, params, why) in not_evaluated {
            match decide(&p, &body(&params)).await {
                Err(Unevaluated::Unmodelled(m)) => assert!(m.contains(why), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        let malformed: Vec<(&str, Params)> = vec![
            // moto would take -1 for the version before the latest.
            ("a negative version", with("LaunchTemplate.Version", "-1")),
            ("a version with a leading zero", with("LaunchTemplate.Version", "01")),
            ("a template by id and by name", with("LaunchTemplate.LaunchTemplateName", "team_other-workers")),
            ("a template that does not exist", with("LaunchTemplate.LaunchTemplateId", "lt-0000000000000000a")),
            ("a version that does not exist", with("LaunchTemplate.Version", "2")),
            // moto would keep one of the two values, and this module could evaluate the other.
            (
                "a tag given twice",
                tagged(1, keys::CLUSTER, "hpc")
                    .into_iter()
                    .chain(own(&[
                        ("TagSpecification.1.Tag.98.Key", keys::CLUSTER),
                        ("TagSpecification.1.Tag.98.Value", "other"),
                    ]))
                    .collect(),
            ),
            // moto takes an empty image for none, and the template's.
            ("an empty image", with("ImageId", "")),
            ("an image that is not one", with("ImageId", "i-0ccccccccccccccc3")),
            ("a subnet that does not exist", with("SubnetId", "subnet-0000000000000000a")),
        ];
        for (what, params) in malformed {
            let d = decide(&p, &body(&params)).await;
            assert!(matches!(d, Err(Unevaluated::Malformed(_))), "{what}: {d:?}");
        }
    });
}
