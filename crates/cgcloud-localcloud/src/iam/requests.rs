//! Which IAM requests an API call makes: for every action a box may call, the resources it
//! touches (their ARNs, the tags IAM would give as context, an instance's profile) as moto knows
//! them. An action not listed here is unmodelled, hence denied.
//!
//! RunInstances touches the most: the template it launches from, the new instance and its
//! volumes, the image, groups and key (each said to come from the template or not), the subnet
//! and the new interface in its VPC, a spot request, the tags it writes (as `ec2:CreateTags`)
//! and the profile's role (as `iam:PassRole`). Its parameters are read in full: one this module
//! does not know may name another resource, so it is unmodelled.

use super::*;
use cgcloud_aws::ec2::TemplateFacts;
use cgcloud_core::policy::launch_template_arn;

/// A launch template as a RunInstances request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TemplateKey<'a> {
    Id(&'a str),
    Name(&'a str),
}

/// An instance profile as a RunInstances request or a template names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProfileKey<'a> {
    Arn(&'a str),
    Name(&'a str),
}

/// An instance profile as IAM has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub arn: String,
    /// The role a launch with it passes; None for a profile without one.
    pub role_arn: Option<String>,
}

/// What authorization needs to know from moto.
pub(crate) trait Lookup {
    /// The tags of an EC2 resource (none if it does not exist).
    async fn ec2_tags(&self, id: &str) -> Result<Tags, AwsError>;
    /// The ARN of an instance's instance profile.
    async fn instance_profile(&self, id: &str) -> Result<Option<String>, AwsError>;
    /// The tags of the queue called `name`, None if there is none.
    async fn queue_tags(&self, name: &str) -> Result<Option<Tags>, AwsError>;
    /// The id of `template` and what its version `version` (a number, `$Latest` or
    /// `$Default`) launches with; None if there is no such template or version.
    async fn launch_template(
        &self,
        template: TemplateKey<'_>,
        version: &str,
    ) -> Result<Option<(String, TemplateFacts)>, AwsError>;
    /// The id of the VPC of subnet `id`, None if there is no such subnet.
    async fn subnet_vpc(&self, id: &str) -> Result<Option<String>, AwsError>;
    /// Instance profile `profile` and its role, None if there is no such profile.
    async fn profile(&self, profile: ProfileKey<'_>) -> Result<Option<Profile>, AwsError>;
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

    async fn launch_template(
        &self,
        template: TemplateKey<'_>,
        version: &str,
    ) -> Result<Option<(String, TemplateFacts)>, AwsError> {
        match template {
            TemplateKey::Id(id) => Ok(self.launch_template_facts(id, version).await?.map(|f| (id.to_owned(), f))),
            TemplateKey::Name(name) => self.named_launch_template_facts(name, version).await,
        }
    }

    async fn subnet_vpc(&self, id: &str) -> Result<Option<String>, AwsError> {
        match self.network(Some(id), None).await {
            Ok(n) if !n.vpc_id.is_empty() => Ok(Some(n.vpc_id)),
            // What `network` says of a subnet that does not exist.
            Ok(_) | Err(AwsError::Invalid(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn profile(&self, profile: ProfileKey<'_>) -> Result<Option<Profile>, AwsError> {
        // A profile's name is the last part of its ARN (the path comes before it).
        let name = match profile {
            ProfileKey::Arn(arn) => arn.rsplit('/').next().unwrap_or_default(),
            ProfileKey::Name(name) => name,
        };
        let Some(arn) = self.instance_profile_arn(name).await? else { return Ok(None) };
        // moto finds a profile given by ARN by the whole ARN, path included.
        if matches!(profile, ProfileKey::Arn(given) if given != arn) {
            return Ok(None);
        }
        let role_arn = self.instance_profile_role(name).await?.map(|(_, role_arn)| role_arn);
        Ok(Some(Profile { arn, role_arn }))
    }
}

impl std::fmt::Display for TemplateKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateKey::Id(id) => write!(f, "launch template {id}"),
            TemplateKey::Name(name) => write!(f, "launch template {name:?}"),
        }
    }
}

impl std::fmt::Display for ProfileKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProfileKey::Arn(arn) => write!(f, "instance profile {arn}"),
            ProfileKey::Name(name) => write!(f, "instance profile {name:?}"),
        }
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
        Some("lt") => "launch-template",
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
                let tags = call.tags("Tag")?;
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
            "RunInstances" => return self.run_instances().await,
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
    fn requested_queue_tags(&self) -> Result<Tags, Unevaluated> {
        if self.call.json_tags.is_empty() {
            self.call.tags("Tag")
        } else {
            Ok(self.call.json_tags.clone())
        }
    }

    async fn sqs(&self) -> Result<Vec<Request>, Unevaluated> {
        let call = self.call;
        match call.action.as_str() {
            "ListQueues" => Ok(vec![self.base("*")]),
            "CreateQueue" | "GetQueueUrl" => {
                let name = call.one("QueueName").unwrap_or_default();
                let existing = self.look.queue_tags(name).await.map_err(lookup)?.unwrap_or_default();
                let requested = self.requested_queue_tags()?;
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
                    r = with_request_tags(r, &self.requested_queue_tags()?);
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

/// The instance type EC2 (and moto) launches when neither the request nor its template names one.
const DEFAULT_INSTANCE_TYPE: &str = "m1.small";

/// The parameters of RunInstances this module reads, with `N` for a list member's number. Any
/// other is unmodelled: it may name a resource the launch is authorized on (an interface, a
/// snapshot, a placement group) or give the context a key this module does not build.
const RUN_INSTANCES_PARAMS: &[&str] = &[
    "Action",
    "Version",
    "DryRun",
    "ImageId",
    "InstanceType",
    "SubnetId",
    "KeyName",
    "UserData",
    "MinCount",
    "MaxCount",
    "ClientToken",
    "SecurityGroupId.N",
    "IamInstanceProfile.Arn",
    "IamInstanceProfile.Name",
    "LaunchTemplate.LaunchTemplateId",
    "LaunchTemplate.LaunchTemplateName",
    "LaunchTemplate.Version",
    "InstanceMarketOptions.MarketType",
    "InstanceMarketOptions.SpotOptions.SpotInstanceType",
    "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior",
    "InstanceMarketOptions.SpotOptions.MaxPrice",
    "InstanceMarketOptions.SpotOptions.ValidUntil",
    "InstanceMarketOptions.SpotOptions.BlockDurationMinutes",
    "TagSpecification.N.ResourceType",
    "TagSpecification.N.Tag.N.Key",
    "TagSpecification.N.Tag.N.Value",
];

/// Whether parameter `key` has `shape` (`N` stands for a member's number).
fn has_shape(key: &str, shape: &str) -> bool {
    let (k, s): (Vec<&str>, Vec<&str>) = (key.split('.').collect(), shape.split('.').collect());
    k.len() == s.len()
        && k.iter().zip(&s).all(
            |(k, s)| {
                if *s == "N" {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())
                } else {
                    k == s
                }
            },
        )
}

/// Refuses a RunInstances parameter this module does not read, saying what it would take, and
/// an empty one but a tag's value: moto takes an empty image, key, subnet or profile for none
/// (and the template's), which this module would not.
fn run_instances_param(key: &str, value: &str) -> Result<(), Unevaluated> {
    if RUN_INSTANCES_PARAMS.iter().any(|shape| has_shape(key, shape)) {
        if value.is_empty() && !has_shape(key, "TagSpecification.N.Tag.N.Value") {
            return Err(Unevaluated::Malformed(format!("RunInstances parameter {key} is empty")));
        }
        return Ok(());
    }
    let what = match key.split('.').next().unwrap_or_default() {
        "NetworkInterface" => "network interfaces (NetworkInterface.N)".to_owned(),
        "BlockDeviceMapping" => "block device mappings (BlockDeviceMapping.N)".to_owned(),
        // By name, a group is found in whichever VPC moto looks in, and moto adds it to the
        // template's groups rather than replacing them.
        "SecurityGroup" => "security groups by name (SecurityGroup.N; name them by id, SecurityGroupId.N)".to_owned(),
        _ => format!("parameter {key}"),
    };
    Err(Unevaluated::Unmodelled(format!("RunInstances with {what}")))
}

/// A template version as RunInstances takes it, as it is looked up: only the forms EC2
/// documents, since moto reads others its own way (`-1` is the one before the latest).
fn template_version(v: Option<&str>) -> Result<&str, Unevaluated> {
    match v {
        // What EC2 and moto launch when a request names no version.
        None => Ok("$Default"),
        Some(v @ ("$Latest" | "$Default")) => Ok(v),
        Some(v) if (1..=18).contains(&v.len()) && !v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()) => Ok(v),
        Some(v) => Err(Unevaluated::Malformed(format!(
            "LaunchTemplate.Version {v:?} is not a version number, $Latest or $Default"
        ))),
    }
}

/// `id` if it is an id of the kind `prefix` names (`ami`, `sg`, `subnet`): any other would be
/// authorized as another kind of resource.
fn id_of<'a>(param: &str, prefix: &str, id: &'a str) -> Result<&'a str, Unevaluated> {
    match id.split_once('-') {
        Some((p, rest)) if p == prefix && !rest.is_empty() => Ok(id),
        _ => Err(Unevaluated::Malformed(format!("{param} {id:?} is not a {prefix}- id"))),
    }
}

impl<L: Lookup> Requests<'_, L> {
    /// RunInstances: one request per resource the launch touches, as IAM makes them. Values
    /// the request does not give come from its template (whose facts moto has); tags are the
    /// template's with the request's over them, as both EC2 and moto merge them.
    async fn run_instances(&self) -> Result<Vec<Request>, Unevaluated> {
        let call = self.call;
        for (k, v) in &call.params {
            run_instances_param(k, v)?;
        }
        let specs = call.tag_specifications_of(&["instance", "volume"])?;
        let template = self.launch_template().await?;
        let facts = template.as_ref().map(|(_, f)| f);
        let template_arn = template.as_ref().map(|(arn, _)| arn.as_str());
        // Every request but PassRole says which template the launch is from.
        let from = |r: Request| match template_arn {
            Some(arn) => r.with("ec2:LaunchTemplate", &[arn]),
            None => r,
        };
        let is_template_resource = |yes: bool| if yes { "true" } else { "false" };
        let merged = |kind: &str, template_tags: Option<&Tags>| {
            let mut tags = template_tags.cloned().unwrap_or_default();
            tags.extend(specs.get(kind).cloned().unwrap_or_default());
            tags
        };
        let instance_tags = merged("instance", facts.map(|f| &f.instance_tags));
        let volume_tags = merged("volume", facts.map(|f| &f.volume_tags));
        let spot = self.spot()?;
        let profile = self.launch_profile(facts).await?;
        let mut out = Vec::new();

        if let Some(arn) = template_arn {
            out.push(from(self.base(arn)));
        }
        let new_instance = self.caller.ec2("instance/*");
        let instance_type = call
            .one("InstanceType")
            .or(facts.and_then(|f| f.instance_type.as_deref()))
            .unwrap_or(DEFAULT_INSTANCE_TYPE);
        let mut instance = with_request_tags(from(self.base(&new_instance)), &instance_tags)
            .with("ec2:InstanceType", &[instance_type]);
        if let Some(p) = &profile {
            instance = instance.with("ec2:InstanceProfile", &[&p.arn]);
        }
        out.push(instance);

        let image = match (call.one("ImageId"), facts.and_then(|f| f.image_id.as_deref())) {
            (Some(id), _) => (id, false),
            (None, Some(id)) => (id, true),
            (None, None) => {
                return Err(Unevaluated::Malformed("RunInstances without an ImageId, its own or its template's".into()))
            }
        };
        let image_request = self.ec2_existing(id_of("ImageId", "ami", image.0)?).await?;
        out.push(from(image_request).with("ec2:IsLaunchTemplateResource", &[is_template_resource(image.1)]));

        // The request's groups replace the template's.
        let requested = call.list("SecurityGroupId");
        let groups: Vec<(&str, bool)> = if requested.is_empty() {
            facts.map(|f| f.security_group_ids.iter().map(|g| (g.as_str(), true)).collect()).unwrap_or_default()
        } else {
            requested.into_iter().map(|g| (g, false)).collect()
        };
        for (group, template_resource) in &groups {
            let r = self.ec2_existing(id_of("SecurityGroupId", "sg", group)?).await?;
            out.push(from(r).with("ec2:IsLaunchTemplateResource", &[is_template_resource(*template_resource)]));
        }
        if groups.is_empty() {
            // The VPC's default group, which this module does not look up: a policy that names
            // groups does not match it.
            let r = from(self.base(&self.caller.ec2("security-group/*")));
            out.push(r.with("ec2:IsLaunchTemplateResource", &["false"]));
        }

        let key = match (call.one("KeyName"), facts.and_then(|f| f.key_name.as_deref())) {
            (Some(name), _) => Some((name, false)),
            (None, Some(name)) => Some((name, true)),
            (None, None) => None,
        };
        if let Some((name, template_resource)) = key {
            let r = from(self.base(&self.caller.ec2(&format!("key-pair/{name}"))));
            out.push(r.with("ec2:IsLaunchTemplateResource", &[is_template_resource(template_resource)]));
        }

        let interface = from(self.base(&self.caller.ec2("network-interface/*")));
        match call.one("SubnetId") {
            Some(subnet) => {
                let subnet = id_of("SubnetId", "subnet", subnet)?;
                let Some(vpc) = self.look.subnet_vpc(subnet).await.map_err(lookup)? else {
                    return Err(Unevaluated::Malformed(format!("subnet {subnet} does not exist")));
                };
                let vpc = self.caller.ec2(&format!("vpc/{vpc}"));
                let subnet_request = self.ec2_existing(subnet).await?;
                let subnet_arn = subnet_request.resource.clone();
                out.push(from(subnet_request).with("ec2:Vpc", &[&vpc]));
                out.push(interface.with("ec2:Vpc", &[&vpc]).with("ec2:Subnet", &[&subnet_arn]));
            }
            None => {
                // The default subnet, which this module does not look up: without its VPC, a
                // policy that names one does not match.
                out.push(from(self.base(&self.caller.ec2("subnet/*"))));
                out.push(interface);
            }
        }

        out.push(with_request_tags(from(self.base(&self.caller.ec2("volume/*"))), &volume_tags));
        if spot {
            out.push(from(self.base(&self.caller.ec2("spot-instances-request/*"))));
        }
        // The template's tags are written by the launch as much as the request's.
        for (kind, tags) in [("instance/*", &instance_tags), ("volume/*", &volume_tags)] {
            if !tags.is_empty() {
                out.push(from(self.tag_on_create(&self.caller.ec2(kind), "RunInstances", tags)));
            }
        }
        if let Some(role) = profile.as_ref().and_then(|p| p.role_arn.as_deref()) {
            let pass = Request::new("iam:PassRole", role)
                .with("ec2:SourceInstanceARN", &[&self.me])
                .with("aws:PrincipalAccount", &[&self.caller.account]);
            out.push(pass.with("iam:PassedToService", &["ec2.amazonaws.com"]));
        }
        Ok(out)
    }

    /// The ARN and facts of the template version a launch is from, if it names one.
    async fn launch_template(&self) -> Result<Option<(String, TemplateFacts)>, Unevaluated> {
        let call = self.call;
        let malformed = |m: &str| Err(Unevaluated::Malformed(m.to_owned()));
        let key = match (call.one("LaunchTemplate.LaunchTemplateId"), call.one("LaunchTemplate.LaunchTemplateName")) {
            (Some(_), Some(_)) => return malformed("a launch template both by id and by name"),
            (Some(id), None) => TemplateKey::Id(id),
            (None, Some(name)) => TemplateKey::Name(name),
            (None, None) if call.one("LaunchTemplate.Version").is_some() => {
                return malformed("LaunchTemplate.Version without a template")
            }
            (None, None) => return Ok(None),
        };
        let version = template_version(call.one("LaunchTemplate.Version"))?;
        let Some((id, facts)) = self.look.launch_template(key, version).await.map_err(lookup)? else {
            return Err(Unevaluated::Malformed(format!("{key} has no version {version}")));
        };
        if !facts.unmodelled.is_empty() {
            return Err(Unevaluated::Unmodelled(format!(
                "RunInstances from {key}, whose version {version} holds {}",
                facts.unmodelled.join(", ")
            )));
        }
        Ok(Some((launch_template_arn(&self.caller.region, &self.caller.account, &id), facts)))
    }

    /// Whether the launch is on the spot market (its only market besides on-demand here).
    fn spot(&self) -> Result<bool, Unevaluated> {
        match self.call.one("InstanceMarketOptions.MarketType") {
            Some("spot") => Ok(true),
            Some(other) => Err(Unevaluated::Unmodelled(format!("RunInstances on the {other:?} market"))),
            None if self.call.params.iter().any(|(k, _)| k.starts_with("InstanceMarketOptions.")) => {
                Err(Unevaluated::Malformed("InstanceMarketOptions without a MarketType".into()))
            }
            None => Ok(false),
        }
    }

    /// The profile the launched instances get: the request's, else the template's.
    async fn launch_profile(&self, facts: Option<&TemplateFacts>) -> Result<Option<Profile>, Unevaluated> {
        let call = self.call;
        let key = match (call.one("IamInstanceProfile.Arn"), call.one("IamInstanceProfile.Name")) {
            (Some(_), Some(_)) => {
                return Err(Unevaluated::Malformed("an instance profile both by ARN and by name".into()))
            }
            (Some(arn), None) => ProfileKey::Arn(arn),
            (None, Some(name)) => ProfileKey::Name(name),
            (None, None) => match facts.and_then(|f| f.instance_profile_arn.as_deref()) {
                Some(arn) => ProfileKey::Arn(arn),
                None => return Ok(None),
            },
        };
        match self.look.profile(key).await.map_err(lookup)? {
            Some(p) => Ok(Some(p)),
            None => Err(Unevaluated::Malformed(format!("{key} does not exist"))),
        }
    }
}

fn lookup(e: cgcloud_aws::AwsError) -> Unevaluated {
    Unevaluated::Lookup(e.to_string())
}
