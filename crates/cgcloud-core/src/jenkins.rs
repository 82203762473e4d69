//! The Jenkins EC2 plugin's configuration as code (JCasC) for a master's agents: one cloud,
//! `jenkins.clouds[].amazonEC2`, with one template per agent role. A template names no AMI:
//! the plugin searches the namespace's images of the role (owner, tag filters) and launches the
//! newest, so baking a new agent image needs no edit of the master. Field names follow the
//! plugin's `EC2Cloud`/`SlaveTemplate` data-bound constructors (2059.x); [`KNOWN_KEYS`] lists
//! every key written here, and the tests check the output against it.

use crate::tags::{self, Tags};
use serde_json::{json, Value};

/// The JCasC id of the SSH key credential the master's role defines for its agents.
pub const AGENT_KEY_CREDENTIAL: &str = "cgcloud-agent-key";

/// The EC2 plugin's cloud, as cgcloud writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloud {
    /// The cloud's name in Jenkins.
    pub name: String,
    pub region: String,
    /// An EC2-compatible endpoint other than AWS's own (the plugin's `altEC2Endpoint`).
    pub endpoint: Option<String>,
}

/// One agent role as an EC2-plugin template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The agent role; the template's `description`, its key for replacement.
    pub role: String,
    pub namespace: String,
    pub labels: Vec<String>,
    pub instance_type: String,
    /// The agent's work directory (`remoteFS`).
    pub remote_fs: String,
    /// The account the plugin logs in as (`remoteAdmin`).
    pub user: String,
    /// The role's security group, by name.
    pub security_group: String,
    pub subnet_id: Option<String>,
    /// The role's instance profile, by ARN (what the plugin wants).
    pub instance_profile_arn: String,
    /// Tags of the instances the plugin launches.
    pub tags: Tags,
    /// The most instances of this template at once.
    pub instance_cap: u32,
    pub idle_minutes: u32,
    pub executors: u32,
    /// On the spot market: `Some(None)` up to the on-demand price, `Some(Some(p))` at most
    /// `p` dollars an hour; on demand when spot capacity is short.
    pub spot: Option<Option<String>>,
}

/// Every key this module writes, each as the plugin (or JCasC) names it.
pub const KNOWN_KEYS: &[&str] = &[
    // jenkins.clouds[]
    "jenkins",
    "clouds",
    "amazonEC2",
    // EC2Cloud
    "name",
    "region",
    "altEC2Endpoint",
    "useInstanceProfileForCredentials",
    "sshKeysCredentialsId",
    "instanceCapStr",
    "noDelayProvisioning",
    "templates",
    // SlaveTemplate
    "description",
    "ami",
    "amiOwners",
    "amiFilters",
    "values",
    "labelString",
    "mode",
    "type",
    "remoteFS",
    "remoteAdmin",
    "amiType",
    "unixData",
    "sshPort",
    "connectionStrategy",
    "hostKeyVerificationStrategy",
    "securityGroups",
    "subnetId",
    "iamInstanceProfile",
    "tags",
    "value",
    "spotConfig",
    "useBidPrice",
    "spotMaxBidPrice",
    "fallbackToOndemand",
    "idleTerminationMinutes",
    "numExecutors",
    "initScript",
    "userData",
    "javaPath",
    "deleteRootOnTermination",
    "stopOnTerminate",
];

/// The script the plugin runs on a new agent (as `remoteAdmin`, from its own file, so with a
/// shebang) before it starts the Jenkins agent: it waits until the work directory is writable,
/// since the agent's instance-store disk is mounted over it at boot.
pub fn init_script(remote_fs: &str) -> String {
    format!(
        "#!/bin/sh\n# Written by cgcloud register-agents: waits until the agent's work directory can be written.\n\
         while ! touch {remote_fs}/.writable 2>/dev/null; do sleep 1; done\n"
    )
}

/// The template of one agent role.
pub fn template(t: &Template) -> Value {
    let mut v = json!({
        "description": t.role,
        "ami": "",
        "amiOwners": "self",
        "amiFilters": [
            {"name": format!("tag:{}", tags::NAMESPACE), "values": t.namespace},
            {"name": format!("tag:{}", tags::ROLE), "values": t.role},
            {"name": "state", "values": "available"},
        ],
        "labelString": t.labels.join(" "),
        "mode": "EXCLUSIVE",
        "type": t.instance_type,
        "remoteFS": t.remote_fs,
        "remoteAdmin": t.user,
        "amiType": {"unixData": {"sshPort": "22"}},
        "connectionStrategy": "PRIVATE_IP",
        "hostKeyVerificationStrategy": "CHECK_NEW_HARD",
        "securityGroups": t.security_group,
        "iamInstanceProfile": t.instance_profile_arn,
        "tags": t.tags.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "idleTerminationMinutes": t.idle_minutes.to_string(),
        "instanceCapStr": t.instance_cap.to_string(),
        "numExecutors": t.executors,
        "initScript": init_script(&t.remote_fs),
        "userData": "",
        "javaPath": "java",
        "deleteRootOnTermination": true,
        "stopOnTerminate": false,
    });
    if let Some(subnet) = &t.subnet_id {
        v["subnetId"] = json!(subnet);
    }
    if let Some(price) = &t.spot {
        let mut spot = json!({"useBidPrice": price.is_some(), "fallbackToOndemand": true});
        if let Some(p) = price {
            spot["spotMaxBidPrice"] = json!(p);
        }
        v["spotConfig"] = spot;
    }
    v
}

/// The whole agents file: `jenkins.clouds` with the one cloud and its templates, in role
/// order. The cloud's cap is the sum of the templates'.
pub fn casc(cloud: &Cloud, templates: &[Template]) -> Value {
    let mut c = json!({
        "name": cloud.name,
        "region": cloud.region,
        "useInstanceProfileForCredentials": true,
        "sshKeysCredentialsId": AGENT_KEY_CREDENTIAL,
        "instanceCapStr": templates.iter().map(|t| t.instance_cap).sum::<u32>().to_string(),
        "noDelayProvisioning": true,
        "templates": templates.iter().map(template).collect::<Vec<_>>(),
    });
    if let Some(e) = &cloud.endpoint {
        c["altEC2Endpoint"] = json!(e);
    }
    let mut v = json!({"jenkins": {"clouds": [{"amazonEC2": c}]}});
    escape_interpolation(&mut v);
    v
}

/// JCasC replaces `${…}` in every string with a variable, a secret or a file's contents
/// (`${readFile:/path}`); nothing cgcloud writes is meant to be interpolated, and some of it
/// comes from tags and key-pair patterns, so every `${` is written as JCasC's escape, `^${`.
fn escape_interpolation(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("${") => *s = s.replace("${", "^${"),
        Value::Array(a) => a.iter_mut().for_each(escape_interpolation),
        Value::Object(m) => m.values_mut().for_each(escape_interpolation),
        _ => {}
    }
}

/// The agents file as written on the master.
pub fn casc_yaml(cloud: &Cloud, templates: &[Template]) -> String {
    format!(
        "# Written by `cgcloud register-agents`: the EC2 plugin's agent templates, one per agent role.\n\
         # Edits here are replaced at the next register-agents; change the roles or its options instead.\n{}",
        crate::yaml::to_string(&casc(cloud, templates))
    )
}

/// Every mapping key in `v`, depth first (for checking generated JCasC against known names).
pub fn keys(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, item) in m {
                    out.push(k.clone());
                    walk(item, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample(role: &str, spot: Option<Option<String>>) -> Template {
        let mut t = Tags::new();
        t.insert(tags::NAMESPACE.into(), "/hannes/".into());
        t.insert(tags::ROLE.into(), role.into());
        t.insert(tags::KEYPAIRS.into(), "jenkins@hannes_jenkins-master".into());
        Template {
            role: role.into(),
            namespace: "/hannes/".into(),
            labels: vec!["debian".into(), "trixie".into()],
            instance_type: "t3.large".into(),
            remote_fs: "/srv/jenkins-agent".into(),
            user: "jenkins".into(),
            security_group: format!("hannes_{role}"),
            subnet_id: Some("subnet-0123".into()),
            instance_profile_arn: format!("arn:aws:iam::123456789012:instance-profile/cgcloud/hannes/hannes_{role}"),
            tags: t,
            instance_cap: 10,
            idle_minutes: 30,
            executors: 1,
            spot,
        }
    }

    #[test]
    fn every_key_is_a_known_plugin_field() {
        let cloud = Cloud { name: "cgcloud".into(), region: "us-west-2".into(), endpoint: Some("http://x".into()) };
        let v = casc(
            &cloud,
            &[
                sample("jenkins-agent-debian-trixie", None),
                sample("jenkins-agent-ubuntu-noble", Some(Some("0.05".into()))),
            ],
        );
        for k in keys(&v) {
            assert!(KNOWN_KEYS.contains(&k.as_str()), "'{k}' is not a field of the EC2 plugin's JCasC");
        }
        let c = &v["jenkins"]["clouds"][0]["amazonEC2"];
        assert_eq!(c["instanceCapStr"], "20");
        assert_eq!(c["templates"][0]["hostKeyVerificationStrategy"], "CHECK_NEW_HARD");
        assert_eq!(c["templates"][0]["connectionStrategy"], "PRIVATE_IP");
        assert!(c["templates"][0].get("spotConfig").is_none());
        assert_eq!(c["templates"][1]["spotConfig"]["spotMaxBidPrice"], "0.05");
        assert_eq!(c["templates"][1]["spotConfig"]["fallbackToOndemand"], true);
        let spot = template(&sample("r", Some(None)));
        assert_eq!(spot["spotConfig"]["useBidPrice"], false);
        assert!(spot["spotConfig"].get("spotMaxBidPrice").is_none());
    }

    /// Golden: the agents file for two roles, one on spot. Accept a deliberate change with
    /// `CGCLOUD_UPDATE_GOLDEN=1 cargo test -p cgcloud-core`.
    #[test]
    fn agents_file_is_golden() {
        let cloud = Cloud { name: "cgcloud".into(), region: "us-west-2".into(), endpoint: None };
        let text = casc_yaml(
            &cloud,
            &[
                sample("jenkins-agent-debian-trixie", None),
                sample("jenkins-agent-ubuntu-noble", Some(Some("0.05".into()))),
            ],
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jenkins-agents.yaml");
        if std::env::var_os("CGCLOUD_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        assert_eq!(
            text,
            include_str!("../tests/jenkins-agents.yaml"),
            "review, then accept with CGCLOUD_UPDATE_GOLDEN=1"
        );
    }

    #[test]
    fn the_init_script_can_be_run_directly() {
        let s = init_script("/srv/jenkins-agent");
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("touch /srv/jenkins-agent/.writable"));
    }

    /// A value that JCasC would interpolate (a key-pair pattern someone chose, say) reaches
    /// Jenkins as text: `${readFile:…}` would otherwise put a file of the master into a tag.
    #[test]
    fn interpolation_is_escaped() {
        let mut t = sample("jenkins-agent-debian-trixie", None);
        t.tags.insert(tags::KEYPAIRS.into(), "alice ${readFile:/mnt/persistent/secrets/jenkins-admin-password}".into());
        let cloud = Cloud { name: "cgcloud /hannes/".into(), region: "us-west-2".into(), endpoint: None };
        let text = casc_yaml(&cloud, &[t]);
        assert!(text.contains("^${readFile:/mnt/persistent/secrets/jenkins-admin-password}"), "{text}");
        assert!(!text.replace("^${", "").contains("${"), "{text}");
    }
}
