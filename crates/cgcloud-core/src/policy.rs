//! IAM policies as typed data: the statements cgcloud gives boxes' instance profiles, their
//! JSON form, and a small evaluator of IAM's rules (the subset cgcloud's policies use), so that
//! what a box's credentials can and cannot do is tested here: moto does not evaluate IAM.
//!
//! The evaluator follows IAM's logic for identity policies: a request is allowed if some
//! `Allow` statement matches it and no `Deny` statement does. A statement matches when its
//! action and resource patterns (`*` and `?` wildcards, case-insensitive actions) match and
//! every condition holds. Conditions on a key the request does not carry fail, except
//! `ForAllValues:*` and `*IfExists`, which hold for a missing key, as in IAM. Policy variables
//! (`${ec2:SourceInstanceARN}`) in resources and condition values are replaced by the request's
//! value of that key; a statement whose variable the request lacks does not match.

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
    /// `StringEquals` if the request carries the key; holds if it does not.
    StringEqualsIfExists,
    /// `StringLike` if the request carries the key; holds if it does not.
    StringLikeIfExists,
    /// Every value of a multi-valued key (e.g. `aws:TagKeys`) is one of the listed values.
    ForAllValuesStringEquals,
    /// `true` or `false`, without regard to case.
    Bool,
    /// An ARN matching one of the patterns component by component (partition, service, region,
    /// account, resource), wildcards within each.
    ArnLike,
}

impl Op {
    /// Every operator, for parsing and messages.
    pub const ALL: [Op; 7] = [
        Op::StringEquals,
        Op::StringLike,
        Op::StringEqualsIfExists,
        Op::StringLikeIfExists,
        Op::ForAllValuesStringEquals,
        Op::Bool,
        Op::ArnLike,
    ];

    /// The operator IAM's JSON calls `name`.
    pub fn parse(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::StringEquals => "StringEquals",
            Op::StringLike => "StringLike",
            Op::StringEqualsIfExists => "StringEqualsIfExists",
            Op::StringLikeIfExists => "StringLikeIfExists",
            Op::ForAllValuesStringEquals => "ForAllValues:StringEquals",
            Op::Bool => "Bool",
            Op::ArnLike => "ArnLike",
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
            "Sid": self.why.replace('\'', "").split(|c: char| !c.is_ascii_alphanumeric()).map(|w| {
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
            && self.resources.iter().any(|p| substitute(p, r).is_some_and(|p| iam_match(&p, &r.resource)))
            && self.conditions.iter().all(|c| c.holds(r))
    }
}

impl Condition {
    fn holds(&self, r: &Request) -> bool {
        let resource = [r.resource.clone()];
        let got = match r.context.get(&self.key) {
            None if self.key == "aws:ARN" => Some(&resource[..]),
            got => got.map(Vec::as_slice),
        };
        let values: Vec<String> = self.values.iter().filter_map(|v| substitute(v, r)).collect();
        match self.op {
            Op::StringEquals => got.is_some_and(|vs| vs.iter().any(|v| values.contains(v))),
            Op::StringLike => got.is_some_and(|vs| vs.iter().any(|v| values.iter().any(|p| iam_match(p, v)))),
            Op::StringEqualsIfExists => got.is_none_or(|vs| vs.iter().any(|v| values.contains(v))),
            Op::StringLikeIfExists => got.is_none_or(|vs| vs.iter().any(|v| values.iter().any(|p| iam_match(p, v)))),
            Op::ForAllValuesStringEquals => got.is_none_or(|vs| vs.iter().all(|v| values.contains(v))),
            Op::Bool => got.is_some_and(|vs| vs.iter().any(|v| values.iter().any(|p| p.eq_ignore_ascii_case(v)))),
            Op::ArnLike => got.is_some_and(|vs| vs.iter().any(|v| values.iter().any(|p| arn_like(p, v)))),
        }
    }
}

/// `s` with its policy variables (`${key}`) replaced by the request's single value of `key`;
/// `None` if the request lacks one.
fn substitute(s: &str, r: &Request) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let end = rest[start..].find('}')? + start;
        out.push_str(&rest[..start]);
        match r.context.get(&rest[start + 2..end]).map(Vec::as_slice) {
            Some([v]) => out.push_str(v),
            _ => return None,
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
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

/// IAM's `ArnLike`: the six colon-separated parts of the ARN each match the pattern's part (the
/// last, the resource, may itself hold colons); something that is not an ARN matches nothing.
fn arn_like(pattern: &str, arn: &str) -> bool {
    let (p, a): (Vec<&str>, Vec<&str>) = (pattern.splitn(6, ':').collect(), arn.splitn(6, ':').collect());
    p.len() == 6 && a.len() == 6 && p[0] == "arn" && a[0] == "arn" && p.iter().zip(&a).all(|(p, a)| iam_match(p, a))
}

/// Whether `s` matches an IAM pattern (`*` any characters, `?` one), as IAM matches resources
/// and `StringLike` values.
pub fn wildcard_match(pattern: &str, s: &str) -> bool {
    iam_match(pattern, s)
}

/// A policy document the evaluator cannot read as IAM would: what it holds that is not modelled.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyParseError(String);

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

    /// A policy from IAM's JSON, as IAM stores it. Anything the evaluator does not model
    /// (`NotAction`, `NotResource`, `Principal`, an operator it lacks) is an error naming it,
    /// so that a caller can refuse rather than evaluate something else than IAM would.
    pub fn from_json(text: &str) -> Result<Policy, PolicyParseError> {
        Self::parse(text).map_err(PolicyParseError)
    }

    fn parse(text: &str) -> Result<Policy, String> {
        use serde_json::Value;
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let list = |v: Option<&Value>, what: &str| -> Result<Vec<String>, String> {
            match v {
                None => Ok(Vec::new()),
                Some(Value::String(s)) => Ok(vec![s.clone()]),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_owned).ok_or_else(|| format!("{what} holds a non-string")))
                    .collect(),
                Some(_) => Err(format!("{what} is neither a string nor a list")),
            }
        };
        let statements = match doc.get("Statement") {
            Some(Value::Array(a)) => a.clone(),
            Some(o @ Value::Object(_)) => vec![o.clone()],
            _ => return Err("no Statement".into()),
        };
        let mut out = Vec::new();
        for st in &statements {
            let Value::Object(fields) = st else { return Err("a statement is not an object".into()) };
            for key in fields.keys() {
                if !matches!(key.as_str(), "Sid" | "Effect" | "Action" | "Resource" | "Condition") {
                    return Err(format!("statement element {key} is not modelled"));
                }
            }
            let effect = match fields.get("Effect").and_then(Value::as_str) {
                Some("Allow") => Effect::Allow,
                Some("Deny") => Effect::Deny,
                other => return Err(format!("Effect {other:?}")),
            };
            let mut conditions = Vec::new();
            if let Some(c) = fields.get("Condition") {
                let Value::Object(ops) = c else { return Err("Condition is not an object".into()) };
                for (op_name, keys) in ops {
                    let op =
                        Op::parse(op_name).ok_or_else(|| format!("condition operator {op_name} is not modelled"))?;
                    let Value::Object(keys) = keys else { return Err(format!("{op_name} is not an object")) };
                    for (key, values) in keys {
                        conditions.push(Condition { op, key: key.clone(), values: list(Some(values), key)? });
                    }
                }
            }
            out.push(Statement {
                why: "policy statement",
                effect,
                actions: list(fields.get("Action"), "Action")?,
                resources: list(fields.get("Resource"), "Resource")?,
                conditions,
            });
        }
        Ok(Policy { statements: out })
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

/// The tags a box's agent writes on its own instance: the outcome of its first-boot
/// configuration, and the host key it generated at first boot (cluster nodes).
pub const AGENT_INSTANCE_TAGS: [&str; 4] = [tags::CONFIGURED, tags::FAILURE, tags::HOST_KEY, tags::ACTIVE_AT];

/// The tags cluster nodes trust about each other and their volumes (membership, leadership,
/// ordinals, which node a volume is for, autostop, an elastic cluster's bounds and template),
/// which only the workstation may write: a box allowed to write one could plant a leader in a
/// cluster or a volume on a node, stop a cluster, or have a leader launch past its bounds.
pub const WORKSTATION_TAGS: [&str; 19] = [
    tags::CLUSTER,
    tags::CLUSTER_TYPE,
    tags::ORDINAL,
    tags::ORDINALS,
    tags::LEADER,
    tags::LEADER_ARN,
    tags::NODE_ROLE,
    tags::PERSISTENT,
    tags::ATTACH_TO,
    tags::EBS_VOLUME_SIZE,
    tags::AUTOSTOP,
    tags::AUTOSTOP_ACTION,
    tags::SCALING,
    tags::SCALING_TYPES,
    tags::SCALING_MARKET,
    tags::SCALING_SUBNETS,
    tags::SCALING_NODE,
    tags::LAUNCH_TEMPLATE,
    tags::NODE_PREFIX,
];

/// Whether a box with `policy` could write one of [`WORKSTATION_TAGS`], judged by the policy's
/// shape rather than by sample requests (which a condition on some other key, another region or
/// profile would slip past): every statement that allows `ec2:CreateTags` must limit the keys
/// with `ForAllValues:StringEquals` on `aws:TagKeys`, and list none of those, unless it can only
/// tag a leader's own workers as it launches them (`scaler::launch_tagging_is_bound`). Returns
/// what is wrong, or `None`.
pub fn writes_workstation_tags(policy: &Policy) -> Option<String> {
    // Whether a resource pattern can name an instance or a volume, whatever its region and
    // account (`*` and partial ARNs can).
    let on_nodes = |pattern: &str| match pattern.splitn(6, ':').nth(5) {
        Some(resource) => ["instance/i-0", "volume/vol-0"].iter().any(|r| iam_match(resource, r)),
        None => true,
    };
    for s in policy.statements.iter().filter(|s| s.effect == Effect::Allow) {
        if !s.actions.iter().any(|a| iam_match(&a.to_ascii_lowercase(), "ec2:createtags"))
            || !s.resources.iter().any(|r| on_nodes(r))
        {
            continue;
        }
        let keys = s.conditions.iter().find(|c| c.op == Op::ForAllValuesStringEquals && c.key == "aws:TagKeys");
        match keys {
            None => {
                return Some(format!(
                    "any tag (a statement allows {} on {} without limiting aws:TagKeys)",
                    s.actions.join(", "),
                    s.resources.join(", ")
                ))
            }
            // An elastic cluster's leader tags its workers into its cluster as they launch.
            Some(_) if scaler::launch_tagging_is_bound(s) => {}
            Some(c) => {
                if let Some(k) = WORKSTATION_TAGS.iter().find(|k| c.values.iter().any(|v| v == *k)) {
                    return Some(format!("{k} (a statement allows it in aws:TagKeys)"));
                }
            }
        }
    }
    None
}

/// The instance a request comes from, when it is signed with an instance profile's credentials
/// (an IAM policy variable; absent for any other caller, so statements using it match only
/// requests from a box, about that box).
pub const SOURCE_INSTANCE: &str = "${ec2:SourceInstanceARN}";

/// Binds an instance statement to the calling box: `aws:ARN` (the ARN of the resource being
/// authorized) equals `${ec2:SourceInstanceARN}`. IAM wants ARNs in `Resource` (moto and IAM
/// refuse a bare variable there), so the comparison is a condition. `aws:ARN` is not in IAM's
/// list of documented keys, but it is how this is done in practice; see docs/security.md.
fn itself(s: Statement) -> Statement {
    s.when(Op::StringEquals, "aws:ARN", &[SOURCE_INSTANCE])
}

/// The ARN partition of `region`.
fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// The ARN of instance `id` of `account` in `region`, as `ec2:SourceInstanceARN` spells it.
pub fn instance_arn(region: &str, account: &str, id: &str) -> String {
    format!("arn:{}:ec2:{region}:{account}:instance/{id}", partition(region))
}

/// The ARN of launch template `id` of `account` in `region`, as `ec2:LaunchTemplate` spells it.
pub fn launch_template_arn(region: &str, account: &str, id: &str) -> String {
    format!("arn:{}:ec2:{region}:{account}:launch-template/{id}", partition(region))
}

/// What the agent on a box of namespace `ns` needs: key pairs and tags to read, IAM groups to
/// expand `@@group`, its own notification queue, and for cluster nodes: tagging itself (only the
/// keys it writes) and attaching to itself the persistent volume the workstation gave it.
/// `queue_prefix` is the namespace's agent-queue prefix.
///
/// Everything that writes is bound to the calling box through `${ec2:SourceInstanceARN}`: a box
/// tags only itself, attaches volumes only to itself, and uses only the queue tagged with its
/// own ARN (SQS authorizes by queue tags), so a box cannot act on a peer even in its namespace.
pub fn agent_statements(ns: &str, queue_prefix: &str) -> Vec<Statement> {
    let ns_tag = format!("ec2:ResourceTag/{}", tags::NAMESPACE);
    let persistent_tag = format!("ec2:ResourceTag/{}", tags::PERSISTENT);
    let queue_request_tag = format!("aws:RequestTag/{}", tags::QUEUE_OWNER);
    let queue_tag = format!("aws:ResourceTag/{}", tags::QUEUE_OWNER);
    let queues = format!("arn:aws:sqs:*:*:{queue_prefix}*");
    let topic = format!("arn:aws:sns:*:*:{}", crate::AGENT_TOPIC);
    vec![
        Statement::allow(
            "read key pairs and tags",
            &["ec2:DescribeKeyPairs", "ec2:DescribeTags", "ec2:DescribeInstances", "ec2:DescribeVolumes"],
            &["*"],
        ),
        // Only its own instance, and only the keys the agent writes: not key-pair patterns,
        // options or cluster membership, which the agents and the workstation trust.
        itself(Statement::allow("tag itself", &["ec2:CreateTags"], &["arn:aws:ec2:*:*:instance/*"])).when(
            Op::ForAllValuesStringEquals,
            "aws:TagKeys",
            &AGENT_INSTANCE_TAGS,
        ),
        // AttachVolume is authorized on both the instance and the volume: a box attaches only
        // to itself, and only the persistent volume the workstation made and gave to it (a
        // tag no box can write: boxes neither create nor tag volumes).
        itself(Statement::allow("attach volumes to itself", &["ec2:AttachVolume"], &["arn:aws:ec2:*:*:instance/*"])),
        Statement::allow(
            "attach the persistent volume given to it",
            &["ec2:AttachVolume"],
            &["arn:aws:ec2:*:*:volume/*"],
        )
        .when(Op::StringEquals, &ns_tag, &[ns])
        .when(Op::StringEquals, &persistent_tag, &["true"])
        .when(Op::StringEquals, &format!("ec2:ResourceTag/{}", tags::ATTACH_TO), &[SOURCE_INSTANCE]),
        // Autostop: a box stops or terminates itself; a cluster's leader also the nodes whose
        // leader-ARN tag (the workstation's, which boxes cannot write) names it.
        itself(Statement::allow(
            "stop or terminate itself",
            &["ec2:StopInstances", "ec2:TerminateInstances"],
            &["arn:aws:ec2:*:*:instance/*"],
        )),
        Statement::allow(
            "stop or terminate the nodes it leads",
            &["ec2:StopInstances", "ec2:TerminateInstances"],
            &["arn:aws:ec2:*:*:instance/*"],
        )
        .when(Op::StringEquals, &format!("ec2:ResourceTag/{}", tags::LEADER_ARN), &[SOURCE_INSTANCE])
        .when(Op::StringEquals, &ns_tag, &[ns]),
        Statement::allow("expand group patterns", &["iam:GetGroup"], &["*"]),
        // A queue is created tagged with its box's ARN, and then used only by that box. The
        // `IfExists` keeps a box from claiming an existing queue by creating it again.
        Statement::allow("create its own queue", &["sqs:CreateQueue", "sqs:TagQueue"], &[&queues])
            .when(Op::StringEquals, &queue_request_tag, &[SOURCE_INSTANCE])
            .when(Op::StringEqualsIfExists, &queue_tag, &[SOURCE_INSTANCE]),
        Statement::allow(
            "use its own queue",
            &[
                "sqs:GetQueueUrl",
                "sqs:GetQueueAttributes",
                "sqs:SetQueueAttributes",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
            ],
            &[&queues],
        )
        .when(Op::StringEquals, &queue_tag, &[SOURCE_INSTANCE]),
        Statement::allow("find the key notification topic", &["sns:CreateTopic"], &[&topic]),
        // Only a queue: an agent queue of the namespace in the box's own account (IAM has no
        // variable for the instance's id, which names its queue; a peer's queue subscribed
        // again gets each notification twice, which the agent does not mind).
        Statement::allow("subscribe its queue to key notifications", &["sns:Subscribe"], &[&topic])
            .when(Op::StringEquals, "sns:Protocol", &["sqs"])
            .when(
                Op::StringLike,
                "sns:Endpoint",
                &[&format!("arn:aws:sqs:*:${{aws:PrincipalAccount}}:{queue_prefix}*")],
            ),
        Statement::allow("report metrics", &["cloudwatch:PutMetricData"], &["*"]).when(
            Op::StringEquals,
            "cloudwatch:namespace",
            &["CGCloud"],
        ),
    ]
}

/// What a team member's IAM policy should say about key pairs, so that `@user` and `@@group`
/// patterns cannot be fooled (`keypairs.rs`): a member imports key pairs only tagged with their
/// own user name, tags key pairs only as part of importing them, and deletes only their own.
/// Shipped as `docs/key-pair-policy.json`. It holds only if no other policy of theirs grants
/// `ec2:CreateTags` or `ec2:DeleteTags` on key pairs more widely (e.g. `AmazonEC2FullAccess`).
pub fn key_pair_statements() -> Vec<Statement> {
    let owner = format!("aws:RequestTag/{}", tags::OWNER);
    let key_pairs = "arn:aws:ec2:*:*:key-pair/*";
    vec![
        Statement::allow("list key pairs", &["ec2:DescribeKeyPairs"], &["*"]),
        Statement::allow("import own key pairs", &["ec2:ImportKeyPair"], &[key_pairs]).when(
            Op::StringEquals,
            &owner,
            &["${aws:username}"],
        ),
        Statement::allow("tag own key pairs on import", &["ec2:CreateTags"], &[key_pairs])
            .when(Op::StringEquals, "ec2:CreateAction", &["ImportKeyPair"])
            .when(Op::StringEquals, &owner, &["${aws:username}"]),
        Statement::allow("delete own key pairs", &["ec2:DeleteKeyPair"], &[key_pairs]).when(
            Op::StringEquals,
            &format!("ec2:ResourceTag/{}", tags::OWNER),
            &["${aws:username}"],
        ),
    ]
}

pub mod scaler;

#[cfg(test)]
mod tests;
