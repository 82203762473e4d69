//! IAM policies as typed data: the statements cgcloud gives boxes' instance profiles, their
//! JSON form, and a small evaluator of IAM's rules (the subset cgcloud's policies use), so that
//! what a box's credentials can and cannot do is tested here: moto does not evaluate IAM.
//!
//! The evaluator follows IAM's logic for identity policies: a request is allowed if some
//! `Allow` statement matches it and no `Deny` statement does. A statement matches when its
//! action and resource patterns (`*` and `?` wildcards, case-insensitive actions) match and
//! every condition holds. Conditions on a key the request does not carry fail, except
//! `ForAllValues:*`, which holds for a missing or empty key, as in IAM.

use crate::tags;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Effect {
    Allow,
    Deny,
}

/// A condition operator of the kinds cgcloud uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    StringEquals,
    StringLike,
    /// Every value of a multi-valued key (e.g. `aws:TagKeys`) is one of the listed values.
    ForAllValuesStringEquals,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::StringEquals => "StringEquals",
            Op::StringLike => "StringLike",
            Op::ForAllValuesStringEquals => "ForAllValues:StringEquals",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub op: Op,
    pub key: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// What the statement is for (shown in the snapshot, and as IAM's `Sid` without spaces).
    pub why: &'static str,
    pub effect: Effect,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    pub conditions: Vec<Condition>,
}

impl Statement {
    pub fn allow(why: &'static str, actions: &[&str], resources: &[&str]) -> Statement {
        Statement {
            why,
            effect: Effect::Allow,
            actions: actions.iter().map(|s| (*s).to_owned()).collect(),
            resources: resources.iter().map(|s| (*s).to_owned()).collect(),
            conditions: Vec::new(),
        }
    }

    pub fn when(mut self, op: Op, key: &str, values: &[&str]) -> Statement {
        self.conditions.push(Condition {
            op,
            key: key.to_owned(),
            values: values.iter().map(|s| (*s).to_owned()).collect(),
        });
        self
    }

    /// IAM's JSON form of the statement.
    pub fn to_json(&self) -> serde_json::Value {
        let mut st = serde_json::json!({
            "Sid": self.why.split(|c: char| !c.is_ascii_alphanumeric()).map(|w| {
                let mut cs = w.chars();
                cs.next().map(|f| f.to_ascii_uppercase().to_string() + cs.as_str()).unwrap_or_default()
            }).collect::<String>(),
            "Effect": self.effect,
            "Action": self.actions,
            "Resource": self.resources,
        });
        if !self.conditions.is_empty() {
            let mut by_op: BTreeMap<&str, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
            for c in &self.conditions {
                by_op.entry(c.op.as_str()).or_default().insert(c.key.clone(), serde_json::json!(c.values));
            }
            st["Condition"] = serde_json::json!(by_op);
        }
        st
    }

    fn matches(&self, r: &Request) -> bool {
        let action = r.action.to_ascii_lowercase();
        self.actions.iter().any(|a| iam_match(&a.to_ascii_lowercase(), &action))
            && self.resources.iter().any(|p| iam_match(p, &r.resource))
            && self.conditions.iter().all(|c| c.holds(r))
    }
}

impl Condition {
    fn holds(&self, r: &Request) -> bool {
        let got = r.context.get(&self.key);
        match self.op {
            Op::StringEquals => got.is_some_and(|vs| vs.iter().any(|v| self.values.contains(v))),
            Op::StringLike => got.is_some_and(|vs| vs.iter().any(|v| self.values.iter().any(|p| iam_match(p, v)))),
            Op::ForAllValuesStringEquals => got.is_none_or(|vs| vs.iter().all(|v| self.values.contains(v))),
        }
    }
}

/// IAM's wildcards: `*` any run of characters (`/` included), `?` any one character; nothing
/// else is special. (`crate::glob` is for key-pair names: its `*` stops at `/` and it has
/// character sets, which IAM does not.)
fn iam_match(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    // Iterative matching with backtracking to the last `*`.
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// One API request as IAM sees it: the action, one resource ARN, and the context keys.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub action: String,
    pub resource: String,
    pub context: BTreeMap<String, Vec<String>>,
}

impl Request {
    pub fn new(action: &str, resource: &str) -> Request {
        Request { action: action.to_owned(), resource: resource.to_owned(), context: BTreeMap::new() }
    }

    pub fn with(mut self, key: &str, values: &[&str]) -> Request {
        self.context.insert(key.to_owned(), values.iter().map(|s| (*s).to_owned()).collect());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

impl Policy {
    /// True if the policy allows the request (an `Allow` matches and no `Deny` does).
    pub fn allows(&self, r: &Request) -> bool {
        let matching = || self.statements.iter().filter(|s| s.matches(r));
        matching().any(|s| s.effect == Effect::Allow) && !matching().any(|s| s.effect == Effect::Deny)
    }

    pub fn to_json(&self) -> serde_json::Value {
        // IAM wants every Sid of a policy unique.
        let mut seen = std::collections::BTreeSet::new();
        let statements: Vec<serde_json::Value> = self
            .statements
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut j = s.to_json();
                let sid = j["Sid"].as_str().unwrap_or_default().to_owned();
                if !seen.insert(sid.clone()) {
                    j["Sid"] = serde_json::json!(format!("{sid}{i}"));
                }
                j
            })
            .collect();
        serde_json::json!({"Version": "2012-10-17", "Statement": statements})
    }
}

/// The tags a box's agent writes on its own instance (first-boot configuration).
pub const AGENT_INSTANCE_TAGS: [&str; 2] = [tags::CONFIGURED, tags::FAILURE];

/// What the agent on a box of namespace `ns` needs: key pairs and tags to read, IAM groups to
/// expand `@@group`, its notification queue, and for cluster nodes: tagging itself configured
/// (only those tag keys) and creating, tagging at creation and attaching its persistent volume
/// (only volumes of the namespace). `queue_prefix` is the namespace's agent-queue prefix.
pub fn agent_statements(ns: &str, queue_prefix: &str) -> Vec<Statement> {
    let ns_tag = format!("ec2:ResourceTag/{}", tags::NAMESPACE);
    let request_ns_tag = format!("aws:RequestTag/{}", tags::NAMESPACE);
    let queues = format!("arn:aws:sqs:*:*:{queue_prefix}*");
    let topic = format!("arn:aws:sns:*:*:{}", crate::AGENT_TOPIC);
    vec![
        Statement::allow(
            "read key pairs and tags",
            &["ec2:DescribeKeyPairs", "ec2:DescribeTags", "ec2:DescribeInstances", "ec2:DescribeVolumes"],
            &["*"],
        ),
        // Only the keys the agent writes: not key-pair patterns, host keys, options or cluster
        // membership, which other boxes' agents and the workstation trust.
        Statement::allow("mark a node configured", &["ec2:CreateTags"], &["arn:aws:ec2:*:*:instance/*"])
            .when(Op::StringEquals, &ns_tag, &[ns])
            .when(Op::ForAllValuesStringEquals, "aws:TagKeys", &AGENT_INSTANCE_TAGS),
        Statement::allow("create the persistent volume", &["ec2:CreateVolume"], &["arn:aws:ec2:*:*:volume/*"]).when(
            Op::StringEquals,
            &request_ns_tag,
            &[ns],
        ),
        // Tags on volumes only as part of creating them.
        Statement::allow("tag the new volume", &["ec2:CreateTags"], &["arn:aws:ec2:*:*:volume/*"])
            .when(Op::StringEquals, "ec2:CreateAction", &["CreateVolume"])
            .when(Op::StringEquals, &request_ns_tag, &[ns]),
        Statement::allow(
            "attach the persistent volume",
            &["ec2:AttachVolume"],
            &["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"],
        )
        .when(Op::StringEquals, &ns_tag, &[ns]),
        Statement::allow("expand group patterns", &["iam:GetGroup"], &["*"]),
        Statement::allow(
            "own notification queue",
            &[
                "sqs:CreateQueue",
                "sqs:GetQueueUrl",
                "sqs:GetQueueAttributes",
                "sqs:SetQueueAttributes",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
            ],
            &[&queues],
        ),
        Statement::allow("subscribe to key notifications", &["sns:CreateTopic", "sns:Subscribe"], &[&topic]),
        Statement::allow("report metrics", &["cloudwatch:PutMetricData"], &["*"]).when(
            Op::StringEquals,
            "cloudwatch:namespace",
            &["CGCloud"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "/team/";
    const ME: &str = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaaaaaaaaaaaaaa1";
    const PEER: &str = "arn:aws:ec2:us-west-2:123456789012:instance/i-0bbbbbbbbbbbbbbb2";
    const OTHER_NS_BOX: &str = "arn:aws:ec2:us-west-2:123456789012:instance/i-0ccccccccccccccc3";

    fn policy() -> Policy {
        Policy { statements: agent_statements(NS, "team_cgcloud-agent_") }
    }

    /// CreateTags on `arn` (an instance in namespace `ns`) with these tag keys.
    fn tag(arn: &str, ns: &str, keys: &[&str]) -> Request {
        Request::new("ec2:CreateTags", arn).with("ec2:ResourceTag/cgcloud:namespace", &[ns]).with("aws:TagKeys", keys)
    }

    #[test]
    fn a_box_marks_itself_configured() {
        assert!(policy().allows(&tag(ME, NS, &["cgcloud:configured"])));
        assert!(policy().allows(&tag(ME, NS, &["cgcloud:configured", "cgcloud:failure"])));
    }

    #[test]
    fn a_box_cannot_rewrite_what_others_trust() {
        for key in [
            "cgcloud:keypairs",
            "cgcloud:host-key",
            "cgcloud:option:spark_version",
            "cgcloud:cluster",
            "cgcloud:ordinal",
            "cgcloud:leader",
            "Name",
        ] {
            assert!(!policy().allows(&tag(PEER, NS, &[key])), "{key} on a peer");
            assert!(!policy().allows(&tag(ME, NS, &[key])), "{key} on itself");
            assert!(!policy().allows(&tag(PEER, NS, &["cgcloud:configured", key])), "{key} smuggled in");
        }
        // Nothing at all outside the namespace.
        assert!(!policy().allows(&tag(OTHER_NS_BOX, "/other/", &["cgcloud:configured"])));
    }

    #[test]
    fn volume_tags_only_when_creating_a_volume_of_the_namespace() {
        let vol = "arn:aws:ec2:us-west-2:123456789012:volume/vol-0123456789abcdef0";
        let create = Request::new("ec2:CreateVolume", vol).with("aws:RequestTag/cgcloud:namespace", &[NS]);
        assert!(policy().allows(&create));
        let elsewhere = Request::new("ec2:CreateVolume", vol).with("aws:RequestTag/cgcloud:namespace", &["/other/"]);
        assert!(!policy().allows(&elsewhere));
        let at_creation = Request::new("ec2:CreateTags", vol)
            .with("ec2:CreateAction", &["CreateVolume"])
            .with("aws:RequestTag/cgcloud:namespace", &[NS]);
        assert!(policy().allows(&at_creation));
        // Retagging an existing volume (e.g. to claim a peer's persistent volume): denied.
        let retag = Request::new("ec2:CreateTags", vol)
            .with("ec2:ResourceTag/cgcloud:namespace", &[NS])
            .with("aws:RequestTag/cgcloud:namespace", &[NS])
            .with("aws:TagKeys", &["cgcloud:cluster"]);
        assert!(!policy().allows(&retag));
    }

    #[test]
    fn queues_topics_metrics_are_scoped() {
        let q = |name: &str| Request::new("sqs:ReceiveMessage", &format!("arn:aws:sqs:us-west-2:123456789012:{name}"));
        assert!(policy().allows(&q("team_cgcloud-agent_i-0aaaaaaaaaaaaaaa1")));
        assert!(!policy().allows(&q("other_cgcloud-agent_i-0ccccccccccccccc3")));
        assert!(!policy().allows(&Request::new("sqs:DeleteQueue", "arn:aws:sqs:us-west-2:1:team_cgcloud-agent_i-1")));
        let metric = |ns: &str| Request::new("cloudwatch:PutMetricData", "*").with("cloudwatch:namespace", &[ns]);
        assert!(policy().allows(&metric("CGCloud")));
        assert!(!policy().allows(&metric("AWS/EC2")));
        assert!(!policy().allows(&Request::new("sns:Publish", "arn:aws:sns:us-west-2:1:cgcloud-agent-notifications")));
        assert!(!policy().allows(&Request::new("ec2:TerminateInstances", PEER)));
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
    }

    #[test]
    fn json_form() {
        let json = Policy { statements: agent_statements(NS, "team_cgcloud-agent_") }.to_json();
        let text = serde_json::to_string_pretty(&json).unwrap();
        let expected = include_str!("../tests/agent-policy.json");
        if std::env::var_os("CGCLOUD_UPDATE_POLICY").is_some() {
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agent-policy.json"), &text).unwrap();
        } else {
            assert_eq!(
                text,
                expected.trim_end(),
                "the agent's policy changed; review and accept with CGCLOUD_UPDATE_POLICY=1"
            );
        }
        assert_eq!(
            json["Statement"][1]["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"][0],
            "cgcloud:configured"
        );
        let twice = Policy {
            statements: vec![Statement::allow("x", &["a:b"], &["*"]), Statement::allow("x", &["a:c"], &["*"])],
        };
        let j = twice.to_json();
        assert_ne!(j["Statement"][0]["Sid"], j["Statement"][1]["Sid"]);
    }
}
