//! The EC2 instance metadata service (IMDSv2), used only on real EC2 when the agent's config
//! carries no credentials: the instance profile's temporary credentials, the instance id, its
//! life cycle (spot or on-demand) and a pending spot interruption.

use cgcloud_core::sigv4::Credentials;
use std::time::{Duration, SystemTime};

pub const IMDS: &str = "http://169.254.169.254";

/// What IMDS did not answer; `what` is the token or the path asked for.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS {what}: {error}")]
    Request { what: String, error: Box<ureq::Error> },
    #[error("IMDS {what}: {error}")]
    Read { what: String, error: std::io::Error },
    #[error("the instance has no IAM role")]
    NoRole,
    #[error("IMDS credentials: {0}")]
    Credentials(serde_json::Error),
    #[error("IMDS credentials lack {0}")]
    Lacks(&'static str),
}

/// The answer's body, or an error naming `what` was asked for.
fn body(what: &str, answer: Result<ureq::Response, ureq::Error>) -> Result<String, ImdsError> {
    answer
        .map_err(|error| ImdsError::Request { what: what.to_owned(), error: Box::new(error) })?
        .into_string()
        .map_err(|error| ImdsError::Read { what: what.to_owned(), error })
}

fn token(http: &ureq::Agent) -> Result<String, ImdsError> {
    token_at(http, IMDS)
}

pub fn token_at(http: &ureq::Agent, base: &str) -> Result<String, ImdsError> {
    let answer = http
        .put(&format!("{base}/latest/api/token"))
        .set("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .timeout(Duration::from_secs(2))
        .call();
    body("token", answer)
}

fn get(http: &ureq::Agent, token: &str, path: &str) -> Result<String, ImdsError> {
    let answer = http
        .get(&format!("{IMDS}{path}"))
        .set("X-aws-ec2-metadata-token", token)
        .timeout(Duration::from_secs(2))
        .call();
    body(path, answer)
}

/// The instance profile's credentials and when they expire.
pub fn role_credentials(http: &ureq::Agent) -> Result<(Credentials, SystemTime), ImdsError> {
    let t = token(http)?;
    let role = get(http, &t, "/latest/meta-data/iam/security-credentials/")?;
    let role = role.lines().next().ok_or(ImdsError::NoRole)?.trim().to_owned();
    let doc = get(http, &t, &format!("/latest/meta-data/iam/security-credentials/{role}"))?;
    let v: serde_json::Value = serde_json::from_str(&doc).map_err(ImdsError::Credentials)?;
    let field = |k: &'static str| v[k].as_str().map(str::to_owned).ok_or(ImdsError::Lacks(k));
    // EC2 hands out a fresh set well before the old one expires; without a readable expiry,
    // assume EC2's shortest (an hour) and refresh before it.
    let expires = v["Expiration"]
        .as_str()
        .and_then(|e| humantime::parse_rfc3339(e).ok())
        .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(45 * 60));
    Ok((
        Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("Token")?),
        },
        expires,
    ))
}

/// `spot` or `on-demand` (IMDS's instance-life-cycle).
pub fn life_cycle(http: &ureq::Agent) -> Result<String, ImdsError> {
    let t = token(http)?;
    get(http, &t, "/latest/meta-data/instance-life-cycle").map(|s| s.trim().to_owned())
}

/// The instance id from IMDS.
pub fn instance_id(http: &ureq::Agent) -> Result<String, ImdsError> {
    let t = token(http)?;
    get(http, &t, "/latest/meta-data/instance-id")
}

/// The pending spot interruption of this instance (the JSON document EC2 publishes two minutes
/// before it stops or terminates a spot instance), or `None` while there is none (404). `token`
/// comes from `token_at`.
pub fn spot_instance_action(http: &ureq::Agent, base: &str, token: &str) -> Result<Option<String>, ImdsError> {
    let answer = http
        .get(&format!("{base}/latest/meta-data/spot/instance-action"))
        .set("X-aws-ec2-metadata-token", token)
        .timeout(Duration::from_secs(2))
        .call();
    match answer {
        Err(ureq::Error::Status(404, _)) => Ok(None),
        answer => body("spot/instance-action", answer).map(Some),
    }
}
