//! AWS's limits on the names cgcloud derives from a namespace, a role, a cluster and a key
//! pair, checked before anything is created: a name that is too long must fail the command
//! at once, not half-way through a launch (e.g. when the image is named, after provisioning).

use crate::Namespace;

/// One derived name and the limit of the resource it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub what: &'static str,
    pub name: String,
    pub max: usize,
}

/// EC2's limit on a key pair's name.
pub const KEY_PAIR_NAME: usize = 255;
/// EC2's limit on a tag value (and IAM's).
pub const TAG_VALUE: usize = 256;
/// EC2's limit on a tag key.
pub const TAG_KEY: usize = 128;
/// IAM's limit on a role's name (its instance profile's is 128).
pub const IAM_ROLE_NAME: usize = 64;
/// IAM's limit on a path.
pub const IAM_PATH: usize = 512;
/// EC2's limit on an image's name.
pub const IMAGE_NAME: usize = 128;
/// EC2's limit on a security group's name and description, and an image's description.
pub const GROUP_NAME: usize = 255;
pub const DESCRIPTION: usize = 255;
/// SQS's limit on a queue's name.
pub const QUEUE_NAME: usize = 80;
/// EC2's limit on the number of tags of one resource.
pub const TAGS_PER_RESOURCE: usize = 50;
/// The most tags cgcloud and its agent put on a box besides its role options (launch,
/// cluster and agent tags), with room to spare.
pub const RESERVED_TAGS: usize = 30;

/// The longest suffix cgcloud puts after a role's name in an image name (`_YYYY-MM-DD__HH-MM-SS`
/// after encoding).
const IMAGE_SUFFIX: &str = "_2026-12-31_23-59-59";
/// The longest instance id (i- and 17 hex digits).
const INSTANCE_ID: &str = "i-0123456789abcdef0";

/// Every name a launch of `role` in `ns` (in cluster `cluster`, with `box_roles`: the names its
/// boxes are listed under) derives, with its limit. `iam` when the boxes get an instance
/// profile; `options` the option names the boxes record in tags.
pub fn derived(
    ns: &Namespace,
    role: &str,
    box_roles: &[&str],
    cluster: Option<&str>,
    iam: bool,
    options: &[&str],
) -> Result<Vec<Derived>, crate::namespace::NamespaceError> {
    let aws = |n: &str| ns.to_aws_name(n);
    let mut out = vec![
        Derived { what: "security group name", name: aws(role)?, max: GROUP_NAME },
        Derived {
            what: "security group description",
            name: format!("cgcloud: boxes of role {role} in namespace {ns}"),
            max: DESCRIPTION,
        },
        Derived { what: "image name", name: ns.to_aws_name(&format!("{role}{IMAGE_SUFFIX}"))?, max: IMAGE_NAME },
        Derived {
            what: "image description",
            name: format!("cgcloud image of role {role} in namespace {ns}, from {INSTANCE_ID}"),
            max: DESCRIPTION,
        },
        Derived { what: "namespace tag", name: ns.to_string(), max: TAG_VALUE },
        Derived { what: "persistent volume name", name: aws(role)?, max: TAG_VALUE },
        Derived { what: "agent queue name", name: ns.agent_queue_name(INSTANCE_ID), max: QUEUE_NAME },
    ];
    for b in box_roles {
        out.push(Derived { what: "instance Name tag", name: aws(b)?, max: TAG_VALUE });
    }
    if iam {
        out.push(Derived { what: "IAM role and instance profile name", name: aws(role)?, max: IAM_ROLE_NAME });
        out.push(Derived { what: "IAM path", name: ns.iam_path(), max: IAM_PATH });
    }
    if let Some(c) = cluster {
        out.push(Derived { what: "cluster node volume name", name: format!("{}__99999", aws(c)?), max: TAG_VALUE });
    }
    for o in options {
        out.push(Derived { what: "option tag key", name: crate::tags::option_tag(o), max: TAG_KEY });
    }
    Ok(out)
}

/// A name or count over one of AWS's limits; each says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("the {what} would be '{name}' ({len} characters; AWS allows {max}): use a shorter namespace or name")]
    TooLong { what: &'static str, name: String, len: usize, max: usize },
    #[error("{0} role options are given; a box records each in a tag, and EC2 allows {TAGS_PER_RESOURCE} tags per instance, {RESERVED_TAGS} of which cgcloud needs: give at most {max}", max = TAGS_PER_RESOURCE - RESERVED_TAGS)]
    TooManyOptions(usize),
    #[error("key pair name '{name}' is {len} characters long; EC2 allows 1 to {KEY_PAIR_NAME}")]
    KeyPairLength { name: String, len: usize },
    #[error("key pair name '{0}' must be printable ASCII")]
    KeyPairNotAscii(String),
}

/// The first derived name over its limit, as an error that names the resource and says how to
/// fix it.
pub fn check(names: &[Derived]) -> Result<(), LimitError> {
    match names.iter().find(|d| d.name.chars().count() > d.max) {
        None => Ok(()),
        Some(d) => {
            Err(LimitError::TooLong { what: d.what, name: d.name.clone(), len: d.name.chars().count(), max: d.max })
        }
    }
}

/// Whether a box recording `options` role options in tags stays within EC2's tags per
/// resource.
pub fn check_option_count(options: usize) -> Result<(), LimitError> {
    if options + RESERVED_TAGS > TAGS_PER_RESOURCE {
        return Err(LimitError::TooManyOptions(options));
    }
    Ok(())
}

/// A key pair's name within EC2's limit.
pub fn check_key_pair(name: &str) -> Result<(), LimitError> {
    if name.is_empty() || name.chars().count() > KEY_PAIR_NAME {
        return Err(LimitError::KeyPairLength { name: name.to_owned(), len: name.chars().count() });
    }
    if !name.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        return Err(LimitError::KeyPairNotAscii(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Namespace {
        Namespace::parse(s).unwrap()
    }

    #[test]
    fn ordinary_names_pass() {
        let d = derived(
            &ns("/hannes/"),
            "spark-box",
            &["spark-leader", "spark-worker"],
            Some("wf"),
            true,
            &["spark_version"],
        )
        .unwrap();
        check(&d).unwrap();
        assert!(d.iter().any(|x| x.what == "image name" && x.name.starts_with("hannes_spark-box__2026")));
    }

    #[test]
    fn each_limit_is_named_when_exceeded() {
        // 60 characters of namespace: fine for SQS (hashed) and tags, too long for IAM roles.
        let long = format!("/{}/", "a".repeat(60));
        let d =
            derived(&ns(&long), "generic-debian-trixie-box", &["generic-debian-trixie-box"], None, true, &[]).unwrap();
        let err = check(&d).unwrap_err().to_string();
        assert!(err.contains("IAM role") || err.contains("image name"), "{err}");
        // Without IAM, the image name (128) still fails first at this length? 60 + 1 + 25 + 21 = 107: no.
        let d = derived(&ns(&long), "generic-debian-trixie-box", &[], None, false, &[]).unwrap();
        check(&d).unwrap();
        // 120 characters: the image name.
        let longer = format!("/{}/", "b".repeat(120));
        let d = derived(&ns(&longer), "r", &[], None, false, &[]).unwrap();
        assert!(check(&d).unwrap_err().to_string().contains("image name"), "{}", check(&d).unwrap_err().to_string());
        // 300 characters of namespace: the security group description goes past 255 first.
        let huge = format!("/{}/", "c".repeat(300));
        let d = derived(&ns(&huge), "r", &[], None, false, &[]).unwrap();
        let err = check(&d).unwrap_err().to_string();
        assert!(err.contains("security group") && err.contains("AWS allows 255"), "{err}");
        // Queue names never exceed 80: long namespaces are hashed.
        assert!(d.iter().find(|x| x.what == "agent queue name").unwrap().name.len() <= 80);
        // Option tag keys.
        let o = "o".repeat(120);
        let d = derived(&ns("/t/"), "r", &[], None, false, &[o.as_str()]).unwrap();
        assert!(check(&d).unwrap_err().to_string().contains("option tag key"));
    }

    #[test]
    fn option_count() {
        check_option_count(20).unwrap();
        assert!(check_option_count(21).unwrap_err().to_string().contains("at most 20"));
    }

    #[test]
    fn key_pair_names() {
        check_key_pair("alice").unwrap();
        assert!(check_key_pair(&"k".repeat(300)).unwrap_err().to_string().contains("300 characters"));
        assert!(check_key_pair("").is_err());
        assert!(check_key_pair("tab\there").is_err());
    }
}
