//! The calls a resume makes, against a fake EC2 that answers as RunInstances does.

use super::*;
use cgcloud_core::scaling::{NodeShape, COOLDOWN_SECS};
use std::cell::{Cell, RefCell};

fn scaling(market: Market) -> Scaling {
    Scaling {
        min: 0,
        max: 8,
        idle_secs: 600,
        types: vec!["m7i.large".into(), "m6i.large".into()],
        market,
        subnets: vec!["subnet-0aaaaaaa".into(), "subnet-0bbbbbbb".into()],
        node: NodeShape { cpus: 2, mem_mib: 7168 },
    }
}

fn template() -> TemplateTag {
    TemplateTag::parse("lt-0123456789abcdef0:2").unwrap()
}

fn worker_tags() -> Tags {
    [("cgcloud:cluster", "hpc"), ("cgcloud:namespace", "/team/")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

fn param<'a>(p: &'a [(String, String)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A RunInstances answer with `n` instances.
fn answer(n: usize) -> Answer {
    let items: String = (0..n)
        .map(|i| {
            format!(
                "<item><instanceId>i-0{i:016x}</instanceId><amiLaunchIndex>{i}</amiLaunchIndex>\
                 <groupSet><item><groupId>sg-1</groupId></item></groupSet></item>"
            )
        })
        .collect();
    Answer(format!("<RunInstancesResponse><instancesSet>{items}</instancesSet></RunInstancesResponse>"))
}

fn capacity(code: &str) -> AwsError {
    AwsError::Service { action: "RunInstances".into(), code: code.into(), message: "none left".into() }
}

fn plan<'a>(scaling: &'a Scaling, template: &'a TemplateTag, tags: &'a Tags) -> Plan<'a> {
    Plan { scaling, template, tags, cooldown_secs: COOLDOWN_SECS }
}

#[test]
fn a_call_names_the_template_and_only_what_differs() {
    let (t, tags) = (template(), worker_tags());
    let attempt = Attempt::Spot { instance_type: "m7i.large".into() };
    let call = Call {
        template: &t,
        attempt: &attempt,
        bid: Some("0.0500"),
        subnet: "subnet-0aaaaaaa",
        nodes: &[1, 2, 3, 5],
        min_count: 4,
        tags: &tags,
        token: "r1-1",
    };
    let p = call.params();
    let text: Vec<String> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        text,
        [
            "LaunchTemplate.LaunchTemplateId=lt-0123456789abcdef0",
            "LaunchTemplate.Version=2",
            "InstanceType=m7i.large",
            "SubnetId=subnet-0aaaaaaa",
            "MinCount=4",
            "MaxCount=4",
            "ClientToken=r1-1",
            "InstanceMarketOptions.MarketType=spot",
            "InstanceMarketOptions.SpotOptions.SpotInstanceType=one-time",
            "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior=terminate",
            "InstanceMarketOptions.SpotOptions.MaxPrice=0.0500",
            "TagSpecification.1.ResourceType=instance",
            "TagSpecification.1.Tag.1.Key=cgcloud:cluster",
            "TagSpecification.1.Tag.1.Value=hpc",
            "TagSpecification.1.Tag.2.Key=cgcloud:launch-call",
            "TagSpecification.1.Tag.2.Value=r1-1",
            "TagSpecification.1.Tag.3.Key=cgcloud:namespace",
            "TagSpecification.1.Tag.3.Value=/team/",
            "TagSpecification.1.Tag.4.Key=cgcloud:ordinals",
            "TagSpecification.1.Tag.4.Value=1,2,3,5",
            "TagSpecification.2.ResourceType=volume",
            "TagSpecification.2.Tag.1.Key=cgcloud:cluster",
            "TagSpecification.2.Tag.1.Value=hpc",
            "TagSpecification.2.Tag.2.Key=cgcloud:launch-call",
            "TagSpecification.2.Tag.2.Value=r1-1",
            "TagSpecification.2.Tag.3.Key=cgcloud:namespace",
            "TagSpecification.2.Tag.3.Value=/team/",
            "TagSpecification.2.Tag.4.Key=cgcloud:ordinals",
            "TagSpecification.2.Tag.4.Value=1,2,3,5",
        ]
    );
    // Nothing the template decides.
    for key in
        ["ImageId", "SecurityGroupId.1", "KeyName", "UserData", "IamInstanceProfile.Arn", "IamInstanceProfile.Name"]
    {
        assert_eq!(param(&p, key), None, "{key}");
    }
    let od = Attempt::OnDemand { instance_type: "m6i.large".into() };
    let p = Call { attempt: &od, bid: None, ..call }.params();
    assert_eq!(param(&p, "InstanceMarketOptions.MarketType"), None);
    assert_eq!(param(&p, "InstanceType"), Some("m6i.large"));
}

#[test]
fn big_resumes_are_split_into_calls_whose_ordinals_fit_a_tag() {
    let all: Vec<u32> = (1..=1000).collect();
    let b = batches(&all);
    assert_eq!(b.len(), 5);
    assert!(b.iter().all(|c| c.len() <= MAX_PER_CALL));
    let scattered: Vec<u32> = (1..=400).map(|n| n * 7).collect();
    let b = batches(&scattered);
    assert!(b.iter().all(|c| ordinals::tag_value(c).len() <= ordinals::ENCODED_BUDGET));
    assert_eq!(b.concat(), scattered);
    assert_eq!(batches(&[]), Vec::<Vec<u32>>::new());
}

#[test]
fn no_capacity_falls_back_to_the_next_zone_then_type_then_on_demand() {
    let s = scaling(Market::Spot { bid: Some("0.0500".into()), fallback: true });
    let (t, tags) = (template(), worker_tags());
    let seen: RefCell<Vec<(String, String, String)>> = RefCell::new(Vec::new());
    let mut run = |p: &[(String, String)]| {
        let (ty, subnet) = (param(p, "InstanceType").unwrap(), param(p, "SubnetId").unwrap());
        let market = param(p, "InstanceMarketOptions.MarketType").unwrap_or("on-demand");
        seen.borrow_mut().push((ty.into(), subnet.into(), market.into()));
        match (ty, market) {
            ("m7i.large", "spot") => Err(capacity("InsufficientInstanceCapacity")),
            ("m6i.large", "spot") if subnet == "subnet-0aaaaaaa" => Err(capacity("SpotMaxPriceTooLow")),
            // Two of the three in the second zone, the last on demand.
            ("m6i.large", "spot") => Ok(answer(2)),
            _ => Ok(answer(param(p, "MaxCount").unwrap().parse().unwrap())),
        }
    };
    let mut cool = Cooldowns::default();
    let r = plan(&s, &t, &tags).resume(&mut run, &[1, 2, 3], &mut cool, 1000, "r1");
    assert_eq!(r.failed, Vec::<u32>::new());
    assert_eq!(r.launched.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        seen.borrow().iter().map(|(t, s, m)| format!("{t} {s} {m}")).collect::<Vec<_>>(),
        // Each first for all three, then for as many as there are; the partial answer is taken.
        [
            "m7i.large subnet-0aaaaaaa spot",
            "m7i.large subnet-0aaaaaaa spot",
            "m7i.large subnet-0bbbbbbb spot",
            "m7i.large subnet-0bbbbbbb spot",
            "m6i.large subnet-0aaaaaaa spot",
            "m6i.large subnet-0aaaaaaa spot",
            "m6i.large subnet-0bbbbbbb spot",
            "m7i.large subnet-0aaaaaaa on-demand",
        ]
    );
    // The next resume goes straight past the four that ran short (the partial one too).
    seen.borrow_mut().clear();
    let r = plan(&s, &t, &tags).resume(&mut run, &[4], &mut cool, 1100, "r2");
    assert_eq!(r.launched.len(), 1);
    assert_eq!(*seen.borrow(), [("m7i.large".to_owned(), "subnet-0aaaaaaa".to_owned(), "on-demand".to_owned())]);
}

#[test]
fn failures_say_why_and_stop_where_another_type_cannot_help() {
    let s = scaling(Market::Spot { bid: None, fallback: false });
    let (t, tags) = (template(), worker_tags());
    let calls = Cell::new(0);
    let mut short = |_: &[(String, String)]| {
        calls.set(calls.get() + 1);
        Err(capacity("InsufficientInstanceCapacity"))
    };
    let mut cool = Cooldowns::default();
    let r = plan(&s, &t, &tags).resume(&mut short, &[1, 2], &mut cool, 1000, "r1");
    assert_eq!((r.failed.as_slice(), calls.get()), (&[1, 2][..], 8), "two types in two zones, spot only, all then any");
    assert_eq!(
        r.reason,
        "m7i.large spot in subnet-0aaaaaaa: InsufficientInstanceCapacity; m7i.large spot in subnet-0bbbbbbb: \
         InsufficientInstanceCapacity; m6i.large spot in subnet-0aaaaaaa: InsufficientInstanceCapacity; m6i.large spot \
         in subnet-0bbbbbbb: InsufficientInstanceCapacity"
    );
    // While all of them cool down, nothing is called and the reason says so.
    let r = plan(&s, &t, &tags).resume(&mut short, &[1], &mut cool, 1300, "r2");
    assert_eq!((r.failed.as_slice(), calls.get()), (&[1][..], 8));
    assert!(r.reason.contains("cooling down"), "{}", r.reason);
    // After the cooldown, the first type is tried again.
    let _ = plan(&s, &t, &tags).resume(&mut short, &[1], &mut cool, 1000 + COOLDOWN_SECS, "r3");
    assert_eq!(calls.get(), 12, "every attempt again, once each for one worker");

    // Denied (a policy or template problem): no other attempt, and the answer is the reason.
    let mut denied_calls = 0;
    let mut denied = |_: &[(String, String)]| {
        denied_calls += 1;
        Err(AwsError::Service {
            action: "RunInstances".into(),
            code: "UnauthorizedOperation".into(),
            message: "not allowed\u{1b}[2J".into(),
        })
    };
    let r = plan(&s, &t, &tags).resume(&mut denied, &[3], &mut Cooldowns::default(), 1000, "r4");
    assert_eq!((r.failed.as_slice(), denied_calls), (&[3][..], 1));
    assert!(r.reason.contains("UnauthorizedOperation") && !r.reason.chars().any(char::is_control), "{}", r.reason);
}
