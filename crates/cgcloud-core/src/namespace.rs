//! Namespaces and the reversible mapping of namespaced names to AWS resource names.
//!
//! A namespace is a path that starts and ends with `/`, e.g. `/` or `/hannes/` or
//! `/team/ci/`. Every resource cgcloud creates is named inside exactly one namespace, and the
//! name is encoded into an AWS name with [`Namespace::to_aws_name`]: the leading `/` is dropped,
//! `_` becomes `__` and `/` becomes `_`. Because no component may start with `_`, the encoding is
//! reversible ([`Namespace::from_aws_name`]).

use std::fmt;

/// The placeholder that stands for the caller's own user name.
pub const ME: &str = "__me__";

/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "/__me__/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error("invalid namespace '{0}': {1}")]
    InvalidNamespace(String, &'static str),
    #[error("invalid name '{0}': {1}")]
    InvalidName(String, &'static str),
    #[error("'{0}' is not a cgcloud AWS name: {1}")]
    NotAnAwsName(String, &'static str),
    #[error("cannot turn user name '{0}' into a namespace component")]
    InvalidUser(String),
}

/// A validated namespace with `__me__` already substituted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Namespace(String);

const COMPONENT_HINT: &str = "it must start and end with '/' and each component must start with \
                              a lower-case letter or digit and contain only lower-case letters, \
                              digits, '.', '_' and '-'";

fn valid_component(c: &str) -> bool {
    let mut chars = c.chars();
    match chars.next() {
        Some(first) if first.is_ascii_lowercase() || first.is_ascii_digit() => {}
        _ => return false,
    }
    chars.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
}

/// Checks `/(component/)*component?` : a path made of valid components, with a leading slash.
fn valid_path(path: &str, trailing_slash_required: bool) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let (body, has_trailing) = match rest.strip_suffix('/') {
        Some(b) => (b, true),
        None => (rest, false),
    };
    if trailing_slash_required && !has_trailing {
        return false;
    }
    !body.is_empty() && body.split('/').all(valid_component)
}

/// Turns an IAM user name (or session name) into a namespace component: everything from the
/// first `@` on is dropped and the rest is lower-cased; characters that are not allowed become `-`.
pub fn user_to_component(user: &str) -> Result<String, NamespaceError> {
    let local = user.split('@').next().unwrap_or_default().to_lowercase();
    let mapped: String = local
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    let trimmed = mapped.trim_start_matches(['_', '.', '-']);
    if trimmed.is_empty() || !valid_component(trimmed) {
        return Err(NamespaceError::InvalidUser(user.to_owned()));
    }
    Ok(trimmed.to_owned())
}

impl Namespace {
    /// The root namespace `/`.
    pub fn root() -> Self {
        Namespace("/".to_owned())
    }

    /// Parses a namespace that must not contain `__me__`.
    pub fn parse(s: &str) -> Result<Self, NamespaceError> {
        if s.contains(ME) {
            return Err(NamespaceError::InvalidNamespace(s.to_owned(), "'__me__' must be resolved first"));
        }
        Self::check(s)?;
        Ok(Namespace(s.to_owned()))
    }

    /// Checks the syntax of a namespace that may still contain `__me__`, without resolving it.
    pub fn check(s: &str) -> Result<(), NamespaceError> {
        if !s.starts_with('/') || !s.ends_with('/') {
            return Err(NamespaceError::InvalidNamespace(s.to_owned(), COMPONENT_HINT));
        }
        // `__me__` is replaced by a valid component later; check the rest with a stand-in.
        let probe = s.replace(ME, "me");
        if !valid_path(&probe, true) {
            return Err(NamespaceError::InvalidNamespace(s.to_owned(), COMPONENT_HINT));
        }
        Ok(())
    }

    /// Parses a namespace, replacing every `__me__` with `user` (see [`user_to_component`]).
    /// `user` is only called when the namespace contains `__me__`.
    pub fn resolve<E>(s: &str, user: impl FnOnce() -> Result<String, E>) -> Result<Result<Self, NamespaceError>, E> {
        if let Err(e) = Self::check(s) {
            return Ok(Err(e));
        }
        if !s.contains(ME) {
            return Ok(Ok(Namespace(s.to_owned())));
        }
        let user = user()?;
        Ok(user_to_component(&user).and_then(|c| Self::parse(&s.replace(ME, &c))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// Makes `name` absolute: names starting with `/` are kept, others are put in this namespace.
    pub fn absolute_name(&self, name: &str) -> Result<String, NamespaceError> {
        let abs = if name.starts_with('/') { name.to_owned() } else { format!("{}{}", self.0, name) };
        if abs == "/" || !valid_path(&abs, false) {
            return Err(NamespaceError::InvalidName(name.to_owned(), COMPONENT_HINT));
        }
        Ok(abs)
    }

    /// Encodes a (relative or absolute) name as an AWS resource name.
    pub fn to_aws_name(&self, name: &str) -> Result<String, NamespaceError> {
        let abs = self.absolute_name(name)?;
        Ok(abs[1..].replace('_', "__").replace('/', "_"))
    }

    /// The `Name` of the persistent volume of node `ordinal` of cluster `cluster`, as the original
    /// named them: the cluster's AWS name, `__`, the ordinal (e.g. `hannes_spark__2`).
    pub fn node_volume_name(&self, cluster: &str, ordinal: u32) -> Result<String, NamespaceError> {
        Ok(format!("{}__{ordinal}", self.to_aws_name(cluster)?))
    }

    /// Decodes an AWS name into an absolute name, without reference to any namespace.
    pub fn decode_aws_name(aws: &str) -> Result<String, NamespaceError> {
        let decoded =
            format!("/{}", aws.split("__").map(|piece| piece.replace('_', "/")).collect::<Vec<_>>().join("_"));
        if decoded == "/" || !valid_path(&decoded, false) {
            return Err(NamespaceError::NotAnAwsName(aws.to_owned(), "it does not decode to a valid name"));
        }
        Ok(decoded)
    }

    /// Decodes an AWS name; the result is relative if it lies in this namespace, else absolute.
    pub fn from_aws_name(&self, aws: &str) -> Result<String, NamespaceError> {
        let abs = Self::decode_aws_name(aws)?;
        Ok(match abs.strip_prefix(self.0.as_str()) {
            Some(rel) if !rel.is_empty() => rel.to_owned(),
            _ => abs,
        })
    }

    /// True if the AWS name decodes to a name directly in this namespace (not in a child).
    pub fn owns_aws_name(&self, aws: &str) -> bool {
        match Self::decode_aws_name(aws) {
            Ok(abs) => abs
                .strip_prefix(self.0.as_str())
                .is_some_and(|rel| !rel.is_empty() && !rel.trim_end_matches('/').contains('/')),
            Err(_) => false,
        }
    }

    /// The last component of a name.
    pub fn base_name(name: &str) -> &str {
        name.trim_end_matches('/').rsplit('/').next().unwrap_or(name)
    }

    /// The namespace as an IAM path, e.g. `/cgcloud/hannes/`. IAM paths list by prefix, so an
    /// exact comparison of `Path` keeps child namespaces out.
    pub fn iam_path(&self) -> String {
        format!("/cgcloud{}", self.0)
    }

    /// The name of a box agent's SQS queue. SQS allows only `[A-Za-z0-9_-]`, up to 80
    /// characters: `.` (legal in namespaces) becomes `D` (upper case never occurs in names, so
    /// this stays unambiguous), and a namespace too long to fit is replaced by a hash of it.
    pub fn agent_queue_name(&self, instance_id: &str) -> String {
        format!("{}{instance_id}", self.agent_queue_prefix())
    }

    /// The prefix shared by the agent queues of this namespace (for listing them).
    pub fn agent_queue_prefix(&self) -> String {
        let prefix = format!("{}cgcloud-agent_", self.aws_prefix().replace('.', "D"));
        // 80 minus the longest instance id (i- plus 17 hex digits).
        if prefix.len() <= 80 - 19 {
            return prefix;
        }
        use sha2::{Digest as _, Sha256};
        let h = hex::encode(&Sha256::digest(self.0.as_bytes())[..8]);
        format!("cgcloud-ns-{h}_cgcloud-agent_")
    }

    /// The prefix that `to_aws_name` puts in front of every relative name, e.g. `hannes_`.
    pub fn aws_prefix(&self) -> String {
        self.0[1..].replace('_', "__").replace('/', "_")
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Namespace {
    type Err = NamespaceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Namespace {
        Namespace::parse(s).expect("valid namespace")
    }

    #[test]
    fn valid_namespaces() {
        for s in ["/", "/foo/", "/foo/bar/", "/0x/", "/a.b_c-d/", "/g_/", "/hannes@x/".replace('@', "").as_str()] {
            assert!(Namespace::parse(s).is_ok(), "{s} should be valid");
        }
    }

    #[test]
    fn invalid_namespaces() {
        for s in ["", "foo", "/foo", "foo/", "//foo/", "/foo//", "/_foo/", "/Foo/", "/fö/", "/.a/", "/-a/", "/a b/"] {
            assert!(Namespace::parse(s).is_err(), "{s:?} should be invalid");
        }
    }

    #[test]
    fn me_is_substituted_lowercased_and_domain_dropped() {
        let r: Result<_, ()> = Namespace::resolve("/__me__/", || Ok("Hannes@example.com".to_owned()));
        assert_eq!(r.unwrap().unwrap().as_str(), "/hannes/");
        let r: Result<_, ()> = Namespace::resolve("/team/__me__/x/", || Ok("jenkins@jenkins-master".to_owned()));
        assert_eq!(r.unwrap().unwrap().as_str(), "/team/jenkins/x/");
        // The user lookup is not made when it is not needed.
        let r: Result<_, &str> = Namespace::resolve("/fixed/", || Err("must not be called"));
        assert_eq!(r.unwrap().unwrap().as_str(), "/fixed/");
        // A syntax error is reported before any lookup.
        let r: Result<_, &str> = Namespace::resolve("/__me__", || Err("must not be called"));
        assert!(r.unwrap().is_err());
    }

    #[test]
    fn user_names_are_sanitized() {
        assert_eq!(user_to_component("John.Doe").unwrap(), "john.doe");
        assert_eq!(user_to_component("john+doe").unwrap(), "john-doe");
        assert_eq!(user_to_component("_svc").unwrap(), "svc");
        assert!(user_to_component("@nobody").is_err());
        assert!(user_to_component("").is_err());
    }

    #[test]
    fn to_aws_name_vectors() {
        assert_eq!(ns("/").to_aws_name("/foo_bar").unwrap(), "foo__bar");
        assert_eq!(ns("/this_ns/").to_aws_name("foo_bar").unwrap(), "this__ns_foo__bar");
        assert_eq!(ns("/this_ns/").to_aws_name("/sub_ns/foo_bar").unwrap(), "sub__ns_foo__bar");
        assert_eq!(ns("/").to_aws_name("g_/").unwrap(), "g___");
        assert_eq!(ns("/hannes/").to_aws_name("spark-master").unwrap(), "hannes_spark-master");
        assert_eq!(ns("/").to_aws_name("spark-master").unwrap(), "spark-master");
    }

    #[test]
    fn from_aws_name_vectors() {
        let n = ns("/this_ns/");
        assert_eq!(n.from_aws_name("this__ns_foo__bar").unwrap(), "foo_bar");
        assert_eq!(n.from_aws_name("sub__ns_foo__bar").unwrap(), "/sub_ns/foo_bar");
        assert_eq!(ns("/").from_aws_name("foo__bar").unwrap(), "foo_bar");
        assert_eq!(ns("/").from_aws_name("g___").unwrap(), "g_/");
        assert!(n.from_aws_name("_foo").is_err());
        assert!(n.from_aws_name("").is_err());
        assert!(n.from_aws_name("Foo").is_err());
    }

    #[test]
    fn encoding_round_trips() {
        let names = ["a", "a_b", "a__b", "a_/b", "x/y_z/w", "a.b-c_", "0", "a___b"];
        for space in ["/", "/a_/", "/x_y/z/", "/n.s/"] {
            let n = ns(space);
            for name in names {
                let Ok(aws) = n.to_aws_name(name) else {
                    continue;
                };
                assert_eq!(n.from_aws_name(&aws).unwrap(), name, "{space} {name} -> {aws}");
                assert!(!aws.contains('/'));
            }
        }
    }

    #[test]
    fn ownership_is_exact_even_at_root() {
        let root = Namespace::root();
        let hannes = ns("/hannes/");
        let aws_root = root.to_aws_name("spark-box").unwrap();
        let aws_h = hannes.to_aws_name("spark-box").unwrap();
        assert!(root.owns_aws_name(&aws_root));
        assert!(!root.owns_aws_name(&aws_h), "root must not own names of child namespaces");
        assert!(hannes.owns_aws_name(&aws_h));
        assert!(!hannes.owns_aws_name(&aws_root));
        assert!(!hannes.owns_aws_name(&ns("/hannes/sub/").to_aws_name("x").unwrap()));
        assert!(!hannes.owns_aws_name("Not_Ours"));
    }

    #[test]
    fn agent_queue_names_are_valid_sqs_names() {
        let valid = |q: &str| q.len() <= 80 && q.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let id = "i-0123456789abcdef0";
        assert_eq!(ns("/hannes/").agent_queue_name(id), "hannes_cgcloud-agent_i-0123456789abcdef0");
        assert_eq!(Namespace::root().agent_queue_name(id), "cgcloud-agent_i-0123456789abcdef0");
        let dotted = ns("/team.a/").agent_queue_name(id);
        assert_eq!(dotted, "teamDa_cgcloud-agent_i-0123456789abcdef0");
        assert_ne!(dotted, ns("/teamda/").agent_queue_name(id));
        let long = ns(&format!("/{}/", "x".repeat(70))).agent_queue_name(id);
        for q in [dotted, long.clone()] {
            assert!(valid(&q), "{q}");
        }
        assert!(long.starts_with("cgcloud-ns-"));
        assert!(ns("/hannes/").agent_queue_name(id).starts_with(&ns("/hannes/").agent_queue_prefix()));
    }

    #[test]
    fn base_name_and_paths() {
        assert_eq!(Namespace::base_name("/a/b/c"), "c");
        assert_eq!(Namespace::base_name("c"), "c");
        assert_eq!(ns("/a/").iam_path(), "/cgcloud/a/");
        assert_eq!(Namespace::root().iam_path(), "/cgcloud/");
        assert_eq!(ns("/a_b/c/").aws_prefix(), "a__b_c_");
        assert_eq!(Namespace::root().aws_prefix(), "");
    }
}
