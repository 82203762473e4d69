//! The scaling tags as the leader reads them, hostlists as Slurm writes them, and the bound on
//! what a resume launches.

use super::*;

fn scaling() -> Scaling {
    Scaling {
        min: 0,
        max: 4,
        idle_secs: 600,
        types: vec!["m7i.large".into(), "m6i.large".into()],
        market: Market::Spot { bid: Some("0.0500".into()), fallback: true },
        subnets: vec!["subnet-0123456789abcdef0".into(), "subnet-0fedcba9".into()],
        node: NodeShape { cpus: 2, mem_mib: 7168 },
    }
}

#[test]
fn tags_round_trip() {
    let s = scaling();
    let t = s.to_tags();
    assert_eq!(t[tags::SCALING], "min=0 max=4 idle=600");
    assert_eq!(t[tags::SCALING_MARKET], "spot bid=0.0500 fallback");
    assert_eq!(Scaling::from_tags(&t), Ok(Some(s.clone())));
    for market in [Market::OnDemand, Market::Spot { bid: None, fallback: false }] {
        let s = Scaling { market, ..s.clone() };
        assert_eq!(Scaling::from_tags(&s.to_tags()), Ok(Some(s)));
    }
    assert_eq!(Scaling::from_tags(&Tags::new()), Ok(None), "a cluster that does not scale");
    assert_eq!(s.summary(), "0–4 idle 10m spot, then on-demand m7i.large,m6i.large");
}

#[test]
fn malformed_tags_are_refused() {
    let cases: &[(&str, &str)] = &[
        (tags::SCALING, "min=0 max=4"),
        (tags::SCALING, "min=0 max=4 idle=600 extra=1"),
        (tags::SCALING, "min=0 max=4 max=5 idle=600"),
        (tags::SCALING, "min=5 max=4 idle=600"),
        (tags::SCALING, "min=0 max=0 idle=600"),
        (tags::SCALING, "min=0 max=4097 idle=600"),
        (tags::SCALING, "min=0 max=04 idle=600"),
        (tags::SCALING, "min=-1 max=4 idle=600"),
        (tags::SCALING, "min=0 max=+4 idle=600"),
        (tags::SCALING, "min=0 max=4 idle=5"),
        (tags::SCALING, "min=0 max=99999999999 idle=600"),
        (tags::SCALING_TYPES, ""),
        (tags::SCALING_TYPES, "m7i.large,"),
        (tags::SCALING_TYPES, "m7i.large;reboot"),
        (tags::SCALING_TYPES, "M7i.large"),
        (tags::SCALING_TYPES, "m7i.large,m7i.large"),
        (tags::SCALING_TYPES, "m7i"),
        (tags::SCALING_MARKET, "spot bid=0"),
        (tags::SCALING_MARKET, "spot bid=1e3"),
        (tags::SCALING_MARKET, "spot bid=-1"),
        (tags::SCALING_MARKET, "spot bid=0.1 bid=0.2"),
        (tags::SCALING_MARKET, "spot fallback fallback"),
        (tags::SCALING_MARKET, "on-demand fallback"),
        (tags::SCALING_MARKET, "reserved"),
        (tags::SCALING_SUBNETS, "subnet-xyz"),
        (tags::SCALING_SUBNETS, "subnet-0123456789abcdef0 subnet-0fedcba9"),
        (tags::SCALING_SUBNETS, "sg-0fedcba9"),
        (tags::SCALING_NODE, "cpus=0 mem=100"),
        (tags::SCALING_NODE, "cpus=2"),
        (tags::SCALING_NODE, "cpus=2 mem=7168 gpus=1"),
    ];
    for (tag, value) in cases {
        let mut t = scaling().to_tags();
        t.insert((*tag).to_owned(), (*value).to_owned());
        let e = Scaling::from_tags(&t).expect_err(&format!("{tag}={value}"));
        assert_eq!(e.tag, *tag, "{tag}={value} blamed on {e}");
    }
    // One of the five missing, with the bounds there: an error, not a cluster that does not scale.
    for tag in [tags::SCALING_TYPES, tags::SCALING_MARKET, tags::SCALING_SUBNETS, tags::SCALING_NODE] {
        let mut t = scaling().to_tags();
        t.remove(tag);
        assert_eq!(Scaling::from_tags(&t).expect_err(tag).tag, tag);
    }
    // What a box could smuggle into Slurm's configuration or a terminal comes back printable.
    let mut t = scaling().to_tags();
    t.insert(tags::SCALING.into(), "min=0\nmax=4\u{1b}[2J".into());
    let e = Scaling::from_tags(&t).unwrap_err();
    assert!(!e.to_string().chars().any(char::is_control), "{e:?}");
}

#[test]
fn bids_are_written_as_ec2_reads_them() {
    assert_eq!(bid_text(0.05).as_deref(), Some("0.0500"));
    assert_eq!(bid_text(1.23456).as_deref(), Some("1.2346"));
    assert_eq!(bid_text(0.0), None);
    assert_eq!(bid_text(-1.0), None);
    assert_eq!(bid_text(f64::NAN), None);
    assert_eq!(bid_text(1e9), None);
}

#[test]
fn template_tag() {
    let t = TemplateTag::parse("lt-0123456789abcdef0:3").unwrap();
    assert_eq!((t.id.as_str(), t.version), ("lt-0123456789abcdef0", 3));
    assert_eq!(t.to_string(), "lt-0123456789abcdef0:3");
    for bad in
        ["lt-0123456789abcdef0", "lt-0123456789abcdef0:0", "lt-xyz:1", "ami-01234567:1", "lt-01234567:$Latest", ""]
    {
        assert!(TemplateTag::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn node_names() {
    assert_eq!(node_name("w", 7), "w7");
    assert_eq!(node_number("w", "w7"), Some(7));
    for bad in ["w0", "w07", "x7", "w", "w7a", "w-7", "w+7", "ww7", "w99999999999"] {
        assert_eq!(node_number("w", bad), None, "{bad}");
    }
}

#[test]
fn hostlists_as_slurm_writes_them() {
    let set = |v: &[u32]| v.iter().copied().collect::<BTreeSet<u32>>();
    assert_eq!(expand("w", "w3", 8), Ok(set(&[3])));
    assert_eq!(expand("w", "w[1-3,5]", 8), Ok(set(&[1, 2, 3, 5])));
    assert_eq!(expand("w", "w[1-2],w5,w[7-8]", 8), Ok(set(&[1, 2, 5, 7, 8])));
    assert_eq!(expand("w", "w1,w1,w[1-1]", 8), Ok(set(&[1])));
    for bad in [
        "",
        "w0",
        "w9",
        "w[0-2]",
        "w[2-1]",
        "w[1-9]",
        "w[01-02]",
        "w[1-2",
        "w[1-2]x",
        "w[1-2],",
        ",w1",
        "v1",
        "w[1-2]]",
        "w[a-b]",
        "w[1--2]",
        "w[]",
        "w[1,]",
        "w 1",
        "w1;reboot",
        "w[1-4294967295]",
    ] {
        assert!(expand("w", bad, 8).is_err(), "{bad:?}");
    }
    for nodes in [set(&[1]), set(&[1, 2, 3, 5]), set(&[2, 4, 6, 7, 8])] {
        let text = compress("w", &nodes);
        assert_eq!(expand("w", &text, 8), Ok(nodes), "{text}");
    }
    assert_eq!(compress("w", &set(&[1, 2, 3, 5])), "w[1-3,5]");
    assert_eq!(compress("w", &set(&[])), "");
}

#[test]
fn a_resume_never_plans_past_max() {
    let set = |v: &[u32]| v.iter().copied().collect::<BTreeSet<u32>>();
    let p = plan_launch(&set(&[1, 2, 3, 4]), &set(&[2]), 1, 4);
    assert_eq!((p.launch, p.already, p.deferred), (vec![1, 3, 4], vec![2], vec![]));
    // Two instances still shutting down (not busy, but counted): only two more now.
    let p = plan_launch(&set(&[1, 2, 3, 4]), &set(&[]), 2, 4);
    assert_eq!((p.launch, p.deferred), (vec![1, 2], vec![3, 4]));
    // More instances than max (max lowered): nothing.
    assert!(plan_launch(&set(&[1]), &set(&[]), 9, 4).launch.is_empty());
    // Exhaustively over small cases: never past max, never a busy node, each node once.
    for asked in 0u32..32 {
        for busy in 0u32..32 {
            for instances in 0..6 {
                let (asked, busy) = (bits(asked), bits(busy));
                let p = plan_launch(&asked, &busy, instances, 4);
                assert!(p.launch.len() + instances <= 4 || p.launch.is_empty());
                assert!(p.launch.iter().all(|n| !busy.contains(n) && asked.contains(n)));
                assert_eq!(p.launch.len() + p.already.len() + p.deferred.len(), asked.len());
            }
        }
    }
}

fn bits(mask: u32) -> BTreeSet<u32> {
    (0..5).filter(|b| mask & (1 << b) != 0).map(|b| b + 1).collect()
}

#[test]
fn launch_order_and_cooldowns() {
    let s = scaling();
    let order = s.launch_order();
    let spot = |t: &str| Attempt::Spot { instance_type: t.into() };
    let od = |t: &str| Attempt::OnDemand { instance_type: t.into() };
    let (a, b) = ("subnet-0123456789abcdef0".to_owned(), "subnet-0fedcba9".to_owned());
    assert_eq!(
        order,
        vec![
            (spot("m7i.large"), a.clone()),
            (spot("m7i.large"), b.clone()),
            (spot("m6i.large"), a.clone()),
            (spot("m6i.large"), b.clone()),
            (od("m7i.large"), a.clone()),
            (od("m7i.large"), b.clone()),
        ]
    );
    let on_demand = Scaling { market: Market::OnDemand, ..s.clone() };
    assert_eq!(on_demand.launch_order()[2], (od("m6i.large"), a.clone()));

    let mut c = Cooldowns::default();
    c.failed(&spot("m7i.large"), &a, 1000, COOLDOWN_SECS);
    c.failed(&spot("m7i.large"), &b, 1010, COOLDOWN_SECS);
    let usable = c.usable(&order, 1100);
    assert_eq!(usable[0], (spot("m6i.large"), a.clone()), "the next type, first zone");
    assert_eq!(usable.len(), 4);
    assert_eq!(c.next_end(1100), Some(1600));
    assert_eq!(c.usable(&order, 1600).len(), 5, "the first zone's cooldown is over");
    c.expire(1610);
    assert_eq!(c.usable(&order, 1610), order);
    assert_eq!(c.next_end(1610), None);
}

#[test]
fn hostlist_errors_are_printable() {
    let e = expand("w", "w1,\u{1b}[2Jx", 8).unwrap_err();
    assert!(!e.to_string().chars().any(char::is_control), "{e:?}");
}
