//! Which IAM requests an API call makes: for every action a box may call, the resources it
//! touches (their ARNs, the tags IAM would give as context, an instance's profile) as moto knows
//! them. An action not listed here is unmodelled, hence denied.

use super::*;

/// What authorization needs to know from moto.
pub(crate) trait Lookup {
    /// The tags of an EC2 resource (none if it does not exist).
    async fn ec2_tags(&self, id: &str) -> Result<Tags, AwsError>;
    /// The ARN of an instance's instance profile.
    async fn instance_profile(&self, id: &str) -> Result<Option<String>, AwsError>;
    /// The tags of the queue called `name`, None if there is none.
    async fn queue_tags(&self, name: &str) -> Result<Option<Tags>, AwsError>;
}

impl Lookup for cgcloud_aws::Cloud {
    async fn ec2_tags(&self, id: &str) -> Result<Tags, AwsError> {
        self.resource_tags(id).await
    }

    async fn instance_profile(&self, id: &str) -> Result<Option<String>, AwsError> {
        self.instance_profile_of(id).await
    }

    async fn queue_tags(&self, name: &str) -> Result<Option<Tags>, AwsError> {
        cgcloud_aws::Cloud::queue_tags(self, name).await
    }
}

/// The ARN IAM gives EC2 resource `id`, by its prefix.
pub(super) fn ec2_resource(caller: &Caller, id: &str) -> Result<String, Unevaluated> {
    let kind = match id.split_once('-').map(|(p, _)| p) {
        Some("i") => "instance",
        Some("vol") => "volume",
        Some("sg") => "security-group",
        Some("key") => "key-pair",
        Some("subnet") => "subnet",
        Some("vpc") => "vpc",
        Some("eni") => "network-interface",
        // Images and snapshots have no account in their ARNs.
        Some("ami") => return Ok(format!("arn:aws:ec2:{}::image/{id}", caller.region)),
        Some("snap") => return Ok(format!("arn:aws:ec2:{}::snapshot/{id}", caller.region)),
        _ => return Err(Unevaluated::Unmodelled(format!("a resource id of an unknown kind ({id})"))),
    };
    Ok(caller.ec2(&format!("{kind}/{id}")))
}

/// `request` with `tags` as `prefix/KEY` context keys.
fn with_tags(mut r: Request, prefix: &str, tags: &Tags) -> Request {
    for (k, v) in tags {
        r.context.insert(format!("{prefix}/{k}"), vec![v.clone()]);
    }
    r
}

/// `request` with the tags a call asks for: `aws:RequestTag/…` and `aws:TagKeys`.
fn with_request_tags(r: Request, tags: &Tags) -> Request {
    let mut r = with_tags(r, "aws:RequestTag", tags);
    if !tags.is_empty() {
        r.context.insert("aws:TagKeys".into(), tags.keys().cloned().collect());
    }
    r
}

/// The IAM requests `call` makes for `caller`: every one must be allowed.
pub(crate) async fn requests<L: Lookup>(call: &Call, caller: &Caller, look: &L) -> Result<Vec<Request>, Unevaluated> {
    let service = if call.service == "monitoring" { "cloudwatch" } else { call.service.as_str() };
    let r = Requests { call, caller, look, me: caller.arn(), action: format!("{service}:{}", call.action) };
    match service {
        "sts" if call.action == "GetCallerIdentity" => Ok(Vec::new()),
        "ec2" => r.ec2().await,
        "sqs" => r.sqs().await,
        "iam" if call.action == "GetGroup" => {
            let name = call.one("GroupName").unwrap_or_default();
            Ok(vec![r.base(&format!("arn:aws:iam::{}:group/{name}", caller.account))])
        }
        "sns" => r.sns(),
        "cloudwatch" if call.action == "PutMetricData" => {
            let namespace = call.one("Namespace").unwrap_or_default();
            Ok(vec![r.base("*").with("cloudwatch:namespace", &[namespace])])
        }
        _ => r.unmodelled(),
    }
}

/// One call being turned into IAM requests.
struct Requests<'a, L> {
    call: &'a Call,
    caller: &'a Caller,
    look: &'a L,
    /// The calling instance's ARN.
    me: String,
    /// The call's IAM action, e.g. `ec2:CreateTags`.
    action: String,
}

impl<L: Lookup> Requests<'_, L> {
    /// A request for the call's action on `resource`, from the calling instance.
    fn base(&self, resource: &str) -> Request {
        Request::new(&self.action, resource)
            .with("ec2:SourceInstanceARN", &[&self.me])
            .with("aws:PrincipalAccount", &[&self.caller.account])
    }

    fn unmodelled(&self) -> Result<Vec<Request>, Unevaluated> {
        Err(Unevaluated::Unmodelled(format!("{} is not an action the local cloud authorizes for boxes", self.action)))
    }

    /// The call's action on an existing EC2 resource: its ARN and tags, and an instance's
    /// profile.
    async fn ec2_existing(&self, id: &str) -> Result<Request, Unevaluated> {
        let arn = ec2_resource(self.caller, id)?;
        let tags = self.look.ec2_tags(id).await.map_err(lookup)?;
        let mut r = with_tags(
            Request::new(&self.action, &arn).with("ec2:SourceInstanceARN", &[&self.me]),
            "ec2:ResourceTag",
            &tags,
        );
        if arn.contains(":instance/") {
            if let Some(p) = self.look.instance_profile(id).await.map_err(lookup)? {
                r = r.with("ec2:InstanceProfile", &[&p]);
            }
        }
        Ok(r)
    }

    /// The `ec2:CreateTags` that tagging a resource at its creation (`create_action`) takes.
    fn tag_on_create(&self, arn: &str, create_action: &str, tags: &Tags) -> Request {
        let tag = Request::new("ec2:CreateTags", arn)
            .with("ec2:SourceInstanceARN", &[&self.me])
            .with("ec2:CreateAction", &[create_action]);
        with_request_tags(tag, tags)
    }

    async fn ec2(&self) -> Result<Vec<Request>, Unevaluated> {
        let call = self.call;
        let mut out = Vec::new();
        match call.action.as_str() {
            // IAM gives EC2's Describe actions no resource-level permissions.
            a if a.starts_with("Describe") => out.push(self.base("*")),
            "GetConsoleOutput" => out.push(self.ec2_existing(call.one("InstanceId").unwrap_or_default()).await?),
            "CreateTags" | "DeleteTags" => {
                let tags = call.tags("Tag");
                for id in call.list("ResourceId") {
                    out.push(with_request_tags(self.ec2_existing(id).await?, &tags));
                }
            }
            "StopInstances" | "StartInstances" | "TerminateInstances" | "RebootInstances" => {
                for id in call.list("InstanceId") {
                    out.push(self.ec2_existing(id).await?);
                }
            }
            "CreateVolume" => {
                let tags = call.tag_specifications("volume")?;
                let new = self.caller.ec2("volume/*");
                out.push(with_request_tags(self.base(&new), &tags));
                if let Some(snap) = call.one("SnapshotId") {
                    out.push(self.ec2_existing(snap).await?);
                }
                if !tags.is_empty() {
                    out.push(self.tag_on_create(&new, "CreateVolume", &tags));
                }
            }
            "AttachVolume" | "DetachVolume" | "DeleteVolume" => {
                for id in [call.one("VolumeId"), call.one("InstanceId")].into_iter().flatten() {
                    out.push(self.ec2_existing(id).await?);
                }
            }
            "ImportKeyPair" => {
                let name = call.one("KeyName").unwrap_or_default();
                let tags = call.tag_specifications("key-pair")?;
                let arn = self.caller.ec2(&format!("key-pair/{name}"));
                out.push(with_request_tags(self.base(&arn), &tags));
                if !tags.is_empty() {
                    out.push(self.tag_on_create(&arn, "ImportKeyPair", &tags));
                }
            }
            _ => return self.unmodelled(),
        }
        Ok(out)
    }

    fn queue_arn(&self, name: &str) -> String {
        format!("arn:aws:sqs:{}:{}:{name}", self.caller.region, self.caller.account)
    }

    /// The tags a call asks to put on a queue (query or JSON protocol).
    fn requested_queue_tags(&self) -> Tags {
        if self.call.json_tags.is_empty() {
            self.call.tags("Tag")
        } else {
            self.call.json_tags.clone()
        }
    }

    async fn sqs(&self) -> Result<Vec<Request>, Unevaluated> {
        let call = self.call;
        match call.action.as_str() {
            "ListQueues" => Ok(vec![self.base("*")]),
            "CreateQueue" | "GetQueueUrl" => {
                let name = call.one("QueueName").unwrap_or_default();
                let existing = self.look.queue_tags(name).await.map_err(lookup)?.unwrap_or_default();
                let requested = self.requested_queue_tags();
                let r = with_tags(self.base(&self.queue_arn(name)), "aws:ResourceTag", &existing);
                let mut out = vec![with_request_tags(r.clone(), &requested)];
                // Tagging at creation takes TagQueue too.
                if call.action == "CreateQueue" && !requested.is_empty() {
                    let tag = Request { action: "sqs:TagQueue".into(), ..r };
                    out.push(with_request_tags(tag, &requested));
                }
                Ok(out)
            }
            "GetQueueAttributes"
            | "SetQueueAttributes"
            | "ReceiveMessage"
            | "DeleteMessage"
            | "DeleteMessageBatch"
            | "SendMessage"
            | "SendMessageBatch"
            | "ChangeMessageVisibility"
            | "ChangeMessageVisibilityBatch"
            | "PurgeQueue"
            | "DeleteQueue"
            | "ListQueueTags"
            | "TagQueue"
            | "UntagQueue" => {
                // moto finds the queue by the URL's last segment.
                let url = call.one("QueueUrl").unwrap_or_default();
                let name = url.rsplit('/').next().unwrap_or_default();
                let existing = self.look.queue_tags(name).await.map_err(lookup)?.unwrap_or_default();
                let mut r = with_tags(self.base(&self.queue_arn(name)), "aws:ResourceTag", &existing);
                if call.action == "TagQueue" {
                    r = with_request_tags(r, &self.requested_queue_tags());
                }
                if call.action == "UntagQueue" {
                    let keys: Vec<String> = call.list("TagKey").into_iter().map(str::to_owned).collect();
                    r.context.insert("aws:TagKeys".into(), keys);
                }
                Ok(vec![r])
            }
            _ => self.unmodelled(),
        }
    }

    fn sns(&self) -> Result<Vec<Request>, Unevaluated> {
        let call = self.call;
        match call.action.as_str() {
            "CreateTopic" => {
                let name = call.one("Name").unwrap_or_default();
                Ok(vec![self.base(&format!("arn:aws:sns:{}:{}:{name}", self.caller.region, self.caller.account))])
            }
            "Subscribe" | "Publish" | "GetTopicAttributes" | "ListSubscriptionsByTopic" => {
                let topic = call.one("TopicArn").unwrap_or_default();
                if !topic.starts_with("arn:aws:sns:") {
                    return Err(Unevaluated::Malformed(format!("TopicArn {topic:?} is not an SNS topic's ARN")));
                }
                let mut r = self.base(topic);
                if call.action == "Subscribe" {
                    // What IAM gives for Subscribe: where the notifications would go.
                    r = r
                        .with("sns:Protocol", &[&call.one("Protocol").unwrap_or_default().to_ascii_lowercase()])
                        .with("sns:Endpoint", &[call.one("Endpoint").unwrap_or_default()]);
                }
                Ok(vec![r])
            }
            _ => self.unmodelled(),
        }
    }
}

fn lookup(e: cgcloud_aws::AwsError) -> Unevaluated {
    Unevaluated::Lookup(e.to_string())
}
