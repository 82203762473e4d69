//! IAM for the guests' door: a request signed with an instance's credentials is evaluated
//! against the policies of that instance profile's role, as IAM would, before moto sees it
//! (moto evaluates nothing). The evaluator is `cgcloud_core::policy`'s; this module reads an
//! API call, says which IAM requests it makes (an action, a resource ARN, the context keys IAM
//! gives it) and finds what those need in moto: the role's inline and attached policies, the
//! tags of the resources it names, an instance's profile.
//!
//! Every action a box may call is listed here with the resources it touches. An action that is
//! not, or a request whose context this module cannot build (a tag specification for a kind
//! of resource it does not know, a policy element the evaluator lacks), is denied with a line
//! in the controller's log, never allowed: the policy might have said no.
//!
//! A request's parameters are read once, and read as moto reads them: a key given twice (in
//! the query and the body, or twice in one) is refused, since moto and this module could pick
//! different ones; lists are read by every numbered member (`InstanceId.7` too, which moto
//! would not reach after a gap), so what is authorized always covers what moto acts on.

use crate::proxy::{query_params, GuestRequest};
use cgcloud_aws::AwsError;
use cgcloud_core::policy::{instance_arn, Policy, Request};
use cgcloud_core::tags::Tags;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod requests;

pub(crate) use requests::requests;

/// One API call as the door reads it: the service (its SigV4 signing name), the action and its
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub service: String,
    pub action: String,
    params: Vec<(String, String)>,
    /// Tags given as a JSON map (SQS's JSON protocol).
    json_tags: Tags,
}

/// Who calls: the instance whose credentials signed the request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub instance_id: String,
    pub region: String,
    pub account: String,
}

impl Caller {
    fn arn(&self) -> String {
        instance_arn(&self.region, &self.account, &self.instance_id)
    }

    fn ec2(&self, rest: &str) -> String {
        format!("arn:aws:ec2:{}:{}:{rest}", self.region, self.account)
    }
}

/// Why a call was not evaluated.
#[derive(Debug, PartialEq, Eq)]
pub enum Unevaluated {
    /// The request is ambiguous or not what the service accepts.
    Malformed(String),
    /// This module does not know the action or cannot build its context: denied.
    Unmodelled(String),
    /// moto did not answer a lookup.
    Lookup(String),
}

impl Call {
    /// Reads the call of `req`, signed for `service`.
    pub fn parse(req: &GuestRequest, service: &str, signed_headers: &[&str]) -> Result<Call, Unevaluated> {
        let malformed = |m: &str| Err(Unevaluated::Malformed(m.to_owned()));
        let content_type = req.header("content-type").unwrap_or_default().to_ascii_lowercase();
        let mut call =
            Call { service: service.to_owned(), action: String::new(), params: Vec::new(), json_tags: Tags::new() };
        let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or_default();
        for (k, v) in query_params(query.as_bytes()) {
            // What presigns a URL is the signature's, not the call's.
            if !k.starts_with("X-Amz-") {
                call.params.push((k, v));
            }
        }
        if let Some(target) = req.header("x-amz-target") {
            // moto picks the action from this header: it must be what was signed.
            if !signed_headers.contains(&"x-amz-target") {
                return malformed("X-Amz-Target is not among the signed headers");
            }
            if !call.params.is_empty() {
                return malformed("a JSON-protocol request with query parameters");
            }
            let (Some(action), true) = (target.strip_prefix("AmazonSQS."), service == "sqs") else {
                return Err(Unevaluated::Unmodelled(format!("X-Amz-Target {target} for {service}")));
            };
            if !content_type.starts_with("application/x-amz-json-1.0") {
                return malformed("an SQS JSON request whose Content-Type is not application/x-amz-json-1.0");
            }
            call.action = action.to_owned();
            let body: serde_json::Value = serde_json::from_slice(&req.body)
                .map_err(|_| Unevaluated::Malformed("the JSON body does not parse".into()))?;
            let Some(fields) = body.as_object() else { return malformed("the JSON body is not an object") };
            for (k, v) in fields {
                match (k.as_str(), v) {
                    (_, serde_json::Value::String(s)) => call.params.push((k.clone(), s.clone())),
                    ("tags" | "Tags", serde_json::Value::Object(m)) => {
                        for (tk, tv) in m {
                            let Some(tv) = tv.as_str() else { return malformed("a tag value is not a string") };
                            call.json_tags.insert(tk.clone(), tv.to_owned());
                        }
                    }
                    // Lists and maps other than tags (attributes, entries): not read for
                    // authorization, which names the queue only.
                    _ => {}
                }
            }
        } else {
            if !req.body.is_empty() {
                // moto reads a body of any other type in its own ways (as JSON, for one, when a
                // parameter is missing from the form), which this module would not see.
                if !content_type.starts_with("application/x-www-form-urlencoded") {
                    return malformed("a query-protocol body that is not application/x-www-form-urlencoded");
                }
                let body = std::str::from_utf8(&req.body)
                    .map_err(|_| Unevaluated::Malformed("the body is not UTF-8".into()))?;
                call.params.extend(query_params(body.as_bytes()));
            }
            let name_ok =
                |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if let Some((k, _)) = call.params.iter().find(|(k, _)| !name_ok(k)) {
                return malformed(&format!("{k:?} is not a parameter name"));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some((k, _)) = call.params.iter().find(|(k, _)| !seen.insert(k.as_str())) {
                return malformed(&format!("parameter {k} is given more than once"));
            }
            call.action = call.one("Action").unwrap_or_default().to_owned();
            if call.action.is_empty() {
                return malformed("no Action");
            }
        }
        Ok(call)
    }

    fn one(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every `prefix.N` (N any number).
    fn list(&self, prefix: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('.'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Tags given as `prefix.N.Key` / `prefix.N.Value` (a missing value is empty). A key given
    /// twice is refused: moto keeps one of its values, by its own order of the members, and
    /// this module could evaluate the other.
    fn tags(&self, prefix: &str) -> Result<Tags, Unevaluated> {
        let mut out = Tags::new();
        for (k, v) in &self.params {
            let Some(n) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')).and_then(|r| r.strip_suffix(".Key"))
            else {
                continue;
            };
            let value = self.one(&format!("{prefix}.{n}.Value")).unwrap_or_default();
            if out.insert(v.clone(), value.to_owned()).is_some() {
                return Err(Unevaluated::Malformed(format!("tag {v:?} is given more than once")));
            }
        }
        Ok(out)
    }

    /// The tags of `TagSpecification.N` entries for `kind`; any other kind is unmodelled.
    fn tag_specifications(&self, kind: &str) -> Result<Tags, Unevaluated> {
        Ok(self.tag_specifications_of(&[kind])?.remove(kind).unwrap_or_default())
    }

    /// The tags of `TagSpecification.N` entries by resource type, each of `kinds`; any other
    /// type is unmodelled, and a key given twice for one type is refused (as in [`Call::tags`]).
    fn tag_specifications_of(&self, kinds: &[&str]) -> Result<BTreeMap<String, Tags>, Unevaluated> {
        let numbers: BTreeSet<&str> = self
            .params
            .iter()
            .filter_map(|(k, _)| k.strip_prefix("TagSpecification."))
            .filter_map(|r| r.split('.').next())
            .collect();
        let mut out: BTreeMap<String, Tags> = BTreeMap::new();
        for n in numbers {
            // Tags of a specification without a type would be applied by moto to something.
            let Some(kind) = self.one(&format!("TagSpecification.{n}.ResourceType")) else {
                return Err(Unevaluated::Malformed(format!("TagSpecification.{n} has no ResourceType")));
            };
            if !kinds.contains(&kind) {
                return Err(Unevaluated::Unmodelled(format!("{} tagging a {kind} at creation", self.action)));
            }
            let merged = out.entry(kind.to_owned()).or_default();
            for (k, v) in self.tags(&format!("TagSpecification.{n}.Tag"))? {
                if merged.insert(k.clone(), v).is_some() {
                    return Err(Unevaluated::Malformed(format!("tag {k:?} is given more than once for a {kind}")));
                }
            }
        }
        Ok(out)
    }
}

/// The policies of roles, from IAM, kept for a few seconds: IAM's own changes take about that
/// long to reach every endpoint, and a box's agent calls several times a minute.
#[derive(Clone, Default)]
pub struct Policies {
    cache: Arc<Mutex<HashMap<String, Fetched>>>,
}

/// A role's policy as read at a moment, or why it cannot be evaluated.
type Fetched = (Instant, Result<Policy, String>);

const POLICY_TTL: Duration = Duration::from_secs(5);

impl Policies {
    /// The combined policy of role `role` (an allow in any of its policies, and a deny in none);
    /// an error if one of them cannot be evaluated as IAM would.
    pub async fn of(&self, cloud: &cgcloud_aws::Cloud, role: &str) -> Result<Policy, String> {
        if let Some((at, p)) = self.cache.lock().ok().and_then(|c| c.get(role).cloned()) {
            if at.elapsed() < POLICY_TTL {
                return p;
            }
        }
        let docs =
            cloud.role_policy_documents(role).await.map_err(|e| format!("cannot read role {role}'s policies: {e}"))?;
        let combined = combine(&docs).map_err(|e| format!("role {role}'s policy: {e}"));
        if let Ok(mut c) = self.cache.lock() {
            c.insert(role.to_owned(), (Instant::now(), combined.clone()));
        }
        combined
    }
}

/// Policy documents as one policy (IAM's identity-policy union).
fn combine(docs: &[String]) -> Result<Policy, String> {
    let mut all = Policy::default();
    for d in docs {
        all.statements.extend(Policy::from_json(d).map_err(|e| e.to_string())?.statements);
    }
    Ok(all)
}

/// The first of `requests` that `policy` does not allow.
pub fn first_denied<'a>(policy: &Policy, requests: &'a [Request]) -> Option<&'a Request> {
    requests.iter().find(|r| !policy.allows(r))
}

#[cfg(test)]
mod tests {
    use super::requests::{ec2_resource, Lookup, Profile, ProfileKey, TemplateKey};
    use super::*;
    use cgcloud_aws::ec2::TemplateFacts;
    use cgcloud_core::policy::agent_statements;
    use std::collections::BTreeMap;

    mod leader;

    const ME: &str = "i-0aaaaaaaaaaaaaaa1";
    const PEER: &str = "i-0bbbbbbbbbbbbbbb2";
    const NS: &str = "/team/";

    /// moto as the tests see it: tags by resource, profiles, queues, launch templates (each
    /// with one version), subnets and instance profiles.
    #[derive(Default)]
    struct Fake {
        tags: BTreeMap<String, Tags>,
        queues: BTreeMap<String, Tags>,
        /// id → (name, facts)
        templates: BTreeMap<String, (String, TemplateFacts)>,
        /// subnet → VPC
        subnets: BTreeMap<String, String>,
        /// profile ARN → role ARN
        profiles: BTreeMap<String, String>,
    }

    impl Lookup for Fake {
        async fn ec2_tags(&self, id: &str) -> Result<Tags, AwsError> {
            Ok(self.tags.get(id).cloned().unwrap_or_default())
        }
        async fn instance_profile(&self, id: &str) -> Result<Option<String>, AwsError> {
            Ok(id.starts_with("i-").then(|| "arn:aws:iam::123456789012:instance-profile/cgcloud/team/box".into()))
        }
        async fn queue_tags(&self, name: &str) -> Result<Option<Tags>, AwsError> {
            Ok(self.queues.get(name).cloned())
        }
        async fn launch_template(
            &self,
            template: TemplateKey<'_>,
            version: &str,
        ) -> Result<Option<(String, TemplateFacts)>, AwsError> {
            if !["1", "$Latest", "$Default"].contains(&version) {
                return Ok(None);
            }
            Ok(self
                .templates
                .iter()
                .find(|(id, (name, _))| template == TemplateKey::Id(id) || template == TemplateKey::Name(name))
                .map(|(id, (_, facts))| (id.clone(), facts.clone())))
        }
        async fn subnet_vpc(&self, id: &str) -> Result<Option<String>, AwsError> {
            Ok(self.subnets.get(id).cloned())
        }
        async fn profile(&self, profile: ProfileKey<'_>) -> Result<Option<Profile>, AwsError> {
            Ok(self
                .profiles
                .iter()
                .find(|(arn, _)| match profile {
                    ProfileKey::Arn(a) => a == *arn,
                    ProfileKey::Name(n) => arn.rsplit('/').next() == Some(n),
                })
                .map(|(arn, role)| Profile { arn: arn.clone(), role_arn: Some(role.clone()) }))
        }
    }

    fn caller() -> Caller {
        Caller { instance_id: ME.into(), region: "us-west-2".into(), account: "123456789012".into() }
    }

    fn arn(id: &str) -> String {
        instance_arn("us-west-2", "123456789012", id)
    }

    fn fake() -> Fake {
        let ns = |extra: &[(&str, &str)]| {
            let mut t = Tags::from([("cgcloud:namespace".to_owned(), NS.to_owned())]);
            t.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            t
        };
        let mut f = Fake::default();
        f.tags.insert(ME.into(), ns(&[]));
        f.tags.insert(PEER.into(), ns(&[]));
        f.tags.insert(
            "vol-0000000000000000a".into(),
            ns(&[("cgcloud:persistent", "true"), ("cgcloud:attach-to", &arn(ME))]),
        );
        f.tags.insert("vol-0000000000000000b".into(), ns(&[]));
        // A persistent volume of the namespace given to a peer (or planted for a future node).
        f.tags.insert(
            "vol-0000000000000000c".into(),
            ns(&[("cgcloud:persistent", "true"), ("cgcloud:attach-to", &arn(PEER))]),
        );
        f.subnets.insert("subnet-1".into(), "vpc-1".into());
        f.profiles.insert(
            "arn:aws:iam::123456789012:instance-profile/cgcloud/team/box".into(),
            "arn:aws:iam::123456789012:role/cgcloud/team/box".into(),
        );
        f.queues.insert("team_cgcloud-agent_".to_owned() + ME, Tags::from([("cgcloud:instance".into(), arn(ME))]));
        f.queues.insert("team_cgcloud-agent_".to_owned() + PEER, Tags::from([("cgcloud:instance".into(), arn(PEER))]));
        f
    }

    /// A request with `headers`, and a form body's Content-Type unless they give one.
    fn request(body: &str, headers: &[(&str, &str)]) -> GuestRequest {
        let mut headers: Vec<(String, String)> =
            headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            headers.push(("Content-Type".into(), "application/x-www-form-urlencoded; charset=utf-8".into()));
        }
        GuestRequest {
            method: "POST".into(),
            target: "/".into(),
            headers,
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    /// Whether the agent's policy lets box ME make the call `body` to `service`.
    async fn allowed(service: &str, body: &str) -> Result<bool, Unevaluated> {
        let call = Call::parse(&request(body, &[]), service, &["host"])?;
        let reqs = requests(&call, &caller(), &fake()).await?;
        let policy = Policy { statements: agent_statements(NS, "team_cgcloud-agent_") };
        Ok(first_denied(&policy, &reqs).is_none())
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn what_the_agent_does_is_allowed() {
        run(async {
            let q = format!("http://10.199.0.1:5401/123456789012/team_cgcloud-agent_{ME}");
            for (service, body) in [
                ("ec2", "Action=DescribeKeyPairs&IncludePublicKey=true".to_owned()),
                ("ec2", format!("Action=DescribeTags&Filter.1.Name=resource-id&Filter.1.Value.1={ME}")),
                ("ec2", format!("Action=CreateTags&ResourceId.1={ME}&Tag.1.Key=cgcloud%3Aconfigured&Tag.1.Value=1")),
                ("ec2", format!("Action=StopInstances&InstanceId.1={ME}")),
                ("ec2", format!("Action=AttachVolume&VolumeId=vol-0000000000000000a&InstanceId={ME}&Device=%2Fdev%2Fsdf")),
                ("sns", format!("Action=Subscribe&TopicArn=arn:aws:sns:us-west-2:123456789012:cgcloud-agent-notifications&Protocol=sqs&Endpoint=arn:aws:sqs:us-west-2:123456789012:team_cgcloud-agent_{ME}")),
                ("iam", "Action=GetGroup&GroupName=devs".to_owned()),
                ("sns", "Action=CreateTopic&Name=cgcloud-agent-notifications".to_owned()),
                ("sqs", format!("Action=CreateQueue&QueueName=team_cgcloud-agent_{ME}&Tag.1.Key=cgcloud%3Ainstance&Tag.1.Value={}", arn(ME))),
                ("sqs", format!("Action=ReceiveMessage&QueueUrl={q}&WaitTimeSeconds=20")),
                ("sqs", format!("Action=DeleteMessage&QueueUrl={q}&ReceiptHandle=x")),
                ("monitoring", "Action=PutMetricData&Namespace=CGCloud&MetricData.member.1.MetricName=m".to_owned()),
                ("sts", "Action=GetCallerIdentity".to_owned()),
            ] {
                assert_eq!(allowed(service, &body).await, Ok(true), "{service} {body}");
            }
        });
    }

    #[test]
    fn what_a_box_must_not_do_is_denied() {
        run(async {
            let peer_q = format!("http://10.199.0.1:5401/123456789012/team_cgcloud-agent_{PEER}");
            for (service, body) in [
                // A cluster's secrets are in its nodes' user data.
                ("ec2", format!("Action=DescribeInstanceAttribute&InstanceId={PEER}&Attribute=userData")),
                ("ec2", format!("Action=CreateTags&ResourceId.1={PEER}&Tag.1.Key=cgcloud%3Ahost-key&Tag.1.Value=x")),
                ("ec2", format!("Action=CreateTags&ResourceId.1={ME}&Tag.1.Key=cgcloud%3Aleader-arn&Tag.1.Value=x")),
                // A peer hidden after a gap moto would not reach is authorized all the same.
                ("ec2", format!("Action=TerminateInstances&InstanceId.1={ME}&InstanceId.9={PEER}")),
                ("ec2", format!("Action=TerminateInstances&InstanceId.1={PEER}")),
                ("ec2", format!("Action=AttachVolume&VolumeId=vol-0000000000000000b&InstanceId={ME}&Device=%2Fdev%2Fsdf")),
                ("ec2", format!("Action=AttachVolume&VolumeId=vol-0000000000000000a&InstanceId={PEER}&Device=%2Fdev%2Fsdf")),
                ("ec2", "Action=CreateVolume&Size=1".to_owned()),
                // A volume planted for a future node, or one given to a peer.
                ("ec2", "Action=CreateVolume&Size=1&TagSpecification.1.ResourceType=volume&TagSpecification.1.Tag.1.Key=cgcloud%3Anamespace&TagSpecification.1.Tag.1.Value=%2Fteam%2F&TagSpecification.1.Tag.2.Key=cgcloud%3Apersistent&TagSpecification.1.Tag.2.Value=true".to_owned()),
                ("ec2", format!("Action=AttachVolume&VolumeId=vol-0000000000000000c&InstanceId={ME}&Device=%2Fdev%2Fsdf")),
                ("ec2", "Action=CreateTags&ResourceId.1=vol-0000000000000000c&Tag.1.Key=cgcloud%3Aattach-to&Tag.1.Value=x".to_owned()),
                // Key notifications carried anywhere but an agent queue of the account.
                ("sns", "Action=Subscribe&TopicArn=arn:aws:sns:us-west-2:123456789012:cgcloud-agent-notifications&Protocol=https&Endpoint=https%3A%2F%2Fattacker.example%2F".to_owned()),
                ("sns", "Action=Subscribe&TopicArn=arn:aws:sns:us-west-2:123456789012:cgcloud-agent-notifications&Protocol=sqs&Endpoint=arn:aws:sqs:us-west-2:999999999999:team_cgcloud-agent_x".to_owned()),
                ("ec2", "Action=ImportKeyPair&KeyName=alice%40evil&PublicKeyMaterial=x&TagSpecification.1.ResourceType=key-pair&TagSpecification.1.Tag.1.Key=cgcloud%3Aowner&TagSpecification.1.Tag.1.Value=alice".to_owned()),
                ("ec2", "Action=RunInstances&ImageId=ami-1&MinCount=1&MaxCount=1".to_owned()),
                ("sqs", format!("Action=ReceiveMessage&QueueUrl={peer_q}")),
                ("sqs", format!("Action=TagQueue&QueueUrl={peer_q}&Tag.1.Key=cgcloud%3Ainstance&Tag.1.Value={}", arn(ME))),
                ("sqs", format!("Action=CreateQueue&QueueName=team_cgcloud-agent_{PEER}&Tag.1.Key=cgcloud%3Ainstance&Tag.1.Value={}", arn(ME))),
                ("sns", "Action=Publish&TopicArn=arn:aws:sns:us-west-2:123456789012:cgcloud-agent-notifications&Message=x".to_owned()),
                ("monitoring", "Action=PutMetricData&Namespace=AWS%2FEC2".to_owned()),
                ("iam", "Action=CreateAccessKey&UserName=admin".to_owned()),
            ] {
                assert!(!matches!(allowed(service, &body).await, Ok(true)), "{service} {body}");
            }
            // A box launching is denied by evaluation; unmodelled actions are refused as such.
            for run in [
                "Action=RunInstances&ImageId=ami-1&MinCount=1&MaxCount=1",
                "Action=RunInstances&ImageId=ami-1&SubnetId=subnet-1&SecurityGroupId.1=sg-1&KeyName=k&IamInstanceProfile.Name=box&MinCount=1&MaxCount=1",
            ] {
                assert_eq!(allowed("ec2", run).await, Ok(false), "{run}");
            }
            let made = allowed("ec2", "Action=CreateLaunchTemplate&LaunchTemplateName=x").await;
            assert!(matches!(made, Err(Unevaluated::Unmodelled(_))), "{made:?}");
        });
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        let parse = |target: &str, body: &str, headers: &[(&str, &str)], signed: &[&str]| {
            let mut r = request(body, headers);
            r.target = target.into();
            Call::parse(&r, "ec2", signed)
        };
        let malformed = |r: Result<Call, Unevaluated>| matches!(r, Err(Unevaluated::Malformed(_)));
        assert!(malformed(parse("/?Action=TerminateInstances", "Action=DescribeTags", &[], &["host"])));
        assert!(malformed(parse("/", "Action=DescribeTags&Action=TerminateInstances", &[], &["host"])));
        assert!(malformed(parse("/", "Version=1", &[], &["host"])));
        assert!(malformed(parse("/", "Action=DescribeTags", &[("Content-Type", "application/json")], &["host"])));
        // A JSON body behind a query-string action: moto would read missing parameters from it.
        let untyped = [("Content-Type", "")];
        assert!(malformed(parse(
            "/?Action=AttachVolume&InstanceId=i-1",
            r#"{"VolumeId":"vol-2"}"#,
            &untyped,
            &["host"]
        )));
        assert!(malformed(parse("/?Action=AttachVolume&InstanceId=i-1", r#"{"VolumeId":"vol-2"}"#, &[], &["host"])));
        assert!(malformed(parse("/", "Action=DescribeTags", &untyped, &["host"])), "a form body must say so");
        let target = [("X-Amz-Target", "AmazonSQS.DeleteQueue"), ("Content-Type", "application/x-amz-json-1.0")];
        assert!(malformed(parse("/", "{}", &target, &["host"])), "an unsigned X-Amz-Target");
        let mut sqs = request(r#"{"QueueUrl": "http://x/1/q", "tags": {"a": "b"}}"#, &target);
        sqs.target = "/".into();
        let call = Call::parse(&sqs, "sqs", &["host", "x-amz-target"]).unwrap();
        assert_eq!((call.action.as_str(), call.one("QueueUrl")), ("DeleteQueue", Some("http://x/1/q")));
        assert_eq!(call.json_tags.get("a").map(String::as_str), Some("b"));
        // A presigned request's own parameters are not the call's.
        let presigned = parse("/?Action=DescribeTags&X-Amz-Signature=0", "", &[], &["host"]).unwrap();
        assert_eq!(presigned.params.len(), 1);
        // Tags for a kind of resource other than the one being created.
        let spec = parse(
            "/",
            "Action=CreateVolume&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=a",
            &[],
            &["host"],
        )
        .unwrap();
        assert!(matches!(spec.tag_specifications("volume"), Err(Unevaluated::Unmodelled(_))));
        let untyped = parse("/", "Action=CreateVolume&TagSpecification.1.Tag.1.Key=a", &[], &["host"]).unwrap();
        assert!(matches!(untyped.tag_specifications("volume"), Err(Unevaluated::Malformed(_))));
    }

    #[test]
    fn ec2_resources_have_iam_arns() {
        let c = caller();
        assert_eq!(ec2_resource(&c, "i-1").unwrap(), "arn:aws:ec2:us-west-2:123456789012:instance/i-1");
        assert_eq!(ec2_resource(&c, "ami-1").unwrap(), "arn:aws:ec2:us-west-2::image/ami-1");
        assert_eq!(ec2_resource(&c, "lt-1").unwrap(), "arn:aws:ec2:us-west-2:123456789012:launch-template/lt-1");
        assert!(ec2_resource(&c, "nonsense").is_err());
        assert!(combine(&["{\"Statement\": []}".into(), "{}".into()]).is_err());
    }
}
