//! SSM GetParameter, the one SSM call cgcloud makes (an OS definition may name the public
//! parameter that holds a distribution's current image id). It is signed here with
//! `cgcloud_core::sigv4` and sent over the same small HTTP client the agent uses, because the
//! generated aws-sdk-ssm client cost a fifth of a clean release build for this one call.

use crate::{AwsError, Cloud};
use aws_credential_types::provider::ProvideCredentials;
use cgcloud_core::sigv4;
use std::time::{Duration, SystemTime};

const OPERATION: &str = "ssm:GetParameter";
const ATTEMPTS: u32 = 3;

/// Where SSM is for `region`: the endpoint override if there is one (the local cloud), else
/// `AWS_ENDPOINT_URL_SSM`, else the region's public endpoint.
pub(crate) fn endpoint(region: &str, endpoint_override: Option<&str>, ssm_env: Option<&str>) -> String {
    if let Some(e) = endpoint_override.or(ssm_env).filter(|e| !e.is_empty()) {
        return format!("{}/", e.trim_end_matches('/'));
    }
    let suffix = if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
    format!("https://ssm.{region}.{suffix}/")
}

/// The error code of a JSON-protocol error answer: `__type` without its namespace
/// (`com.amazonaws.ssm#ParameterNotFound` → `ParameterNotFound`).
pub(crate) fn error_code(body: &str, header: Option<&str>) -> Option<String> {
    let from_body = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("__type").and_then(|t| t.as_str()).map(str::to_owned));
    let raw = from_body.or_else(|| header.map(str::to_owned))?;
    let code = raw.rsplit('#').next().unwrap_or(&raw);
    let code = code.split(':').next().unwrap_or(code).trim();
    (!code.is_empty()).then(|| code.to_owned())
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")).and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// One attempt's outcome: the answer, an error worth retrying, or a final error.
enum Attempt {
    Done(Option<String>),
    Retry(AwsError),
    Fail(AwsError),
}

fn send(url: &str, region: &str, name: &str, creds: &sigv4::Credentials) -> Attempt {
    let body = serde_json::json!({ "Name": name }).to_string();
    let host = url.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let content_type = "application/x-amz-json-1.1";
    let target = "AmazonSSM.GetParameter";
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let signed = sigv4::sign(
        "POST",
        "/",
        "",
        &[("host", &host), ("content-type", content_type), ("x-amz-target", target)],
        body.as_bytes(),
        region,
        "ssm",
        creds,
        &sigv4::amz_date(now),
    );
    let http = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .try_proxy_from_env(true)
        .build();
    let mut req = http.post(url).set("content-type", content_type).set("x-amz-target", target);
    for (k, v) in &signed {
        req = req.set(k, v);
    }
    match req.send_string(&body) {
        Ok(resp) => {
            let text = match resp.into_string() {
                Ok(t) => t,
                Err(e) => return Attempt::Retry(AwsError::Other { operation: OPERATION, detail: e.to_string() }),
            };
            let value = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| {
                v.get("Parameter").and_then(|p| p.get("Value")).and_then(|v| v.as_str()).map(str::to_owned)
            });
            match value {
                Some(v) => Attempt::Done(Some(v)),
                None => Attempt::Fail(AwsError::Other {
                    operation: OPERATION,
                    detail: "the answer holds no Parameter.Value".to_owned(),
                }),
            }
        }
        Err(ureq::Error::Status(status, resp)) => {
            let header = resp.header("x-amzn-errortype").map(str::to_owned);
            let text = resp.into_string().unwrap_or_default();
            let Some(code) = error_code(&text, header.as_deref()) else {
                let e = AwsError::Other {
                    operation: OPERATION,
                    detail: format!(
                        "the endpoint answered HTTP {status} without an AWS error code (is the call supported there?)"
                    ),
                };
                return if status >= 500 { Attempt::Retry(e) } else { Attempt::Fail(e) };
            };
            if code == "ParameterNotFound" {
                return Attempt::Done(None);
            }
            let message = error_message(&text);
            if crate::error::is_throttle(&code) {
                return Attempt::Retry(AwsError::Throttled { operation: OPERATION, code });
            }
            if crate::error::is_bad_credentials(&code) {
                return Attempt::Fail(AwsError::BadCredentials { code, message });
            }
            let e = AwsError::Service { operation: OPERATION, code, message };
            if status >= 500 {
                Attempt::Retry(e)
            } else {
                Attempt::Fail(e)
            }
        }
        Err(e) => Attempt::Retry(AwsError::Unreachable { endpoint: url.to_owned(), detail: e.to_string() }),
    }
}

impl Cloud {
    /// The value of an SSM parameter (e.g. a public image-id parameter), or `None` if there is
    /// no such parameter. Throttling, 5xx answers and unreachable endpoints are retried twice.
    pub async fn ssm_parameter(&self, name: &str) -> Result<Option<String>, AwsError> {
        let provider = self
            .credentials
            .clone()
            .ok_or_else(|| AwsError::NoCredentials { detail: "no credentials provider is configured".into() })?;
        let c = provider.provide_credentials().await.map_err(|e| AwsError::NoCredentials { detail: e.to_string() })?;
        let creds = sigv4::Credentials {
            access_key_id: c.access_key_id().to_owned(),
            secret_access_key: c.secret_access_key().to_owned(),
            session_token: c.session_token().map(str::to_owned),
        };
        let ssm_env = std::env::var("AWS_ENDPOINT_URL_SSM").ok();
        let url = endpoint(&self.region, self.endpoint.as_deref(), ssm_env.as_deref());
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            self.count_request(attempt == 1);
            let (u, r, n, cr) = (url.clone(), self.region.clone(), name.to_owned(), creds.clone());
            let outcome = tokio::task::spawn_blocking(move || send(&u, &r, &n, &cr))
                .await
                .map_err(|e| AwsError::Other { operation: OPERATION, detail: e.to_string() })?;
            match outcome {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e) if attempt >= ATTEMPTS => return Err(e),
                Attempt::Retry(e) => {
                    tracing::debug!("{OPERATION} attempt {attempt} failed ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("us-west-2", None, None), "https://ssm.us-west-2.amazonaws.com/");
        assert_eq!(endpoint("cn-north-1", None, None), "https://ssm.cn-north-1.amazonaws.com.cn/");
        assert_eq!(endpoint("us-west-2", Some("http://127.0.0.1:5000/"), None), "http://127.0.0.1:5000/");
        assert_eq!(endpoint("us-west-2", None, Some("http://127.0.0.1:4566")), "http://127.0.0.1:4566/");
        // The explicit override wins over the service-specific variable.
        assert_eq!(endpoint("us-west-2", Some("http://a:1"), Some("http://b:2")), "http://a:1/");
    }

    #[test]
    fn error_codes() {
        let b = r#"{"__type":"com.amazonaws.ssm#ParameterNotFound","message":""}"#;
        assert_eq!(error_code(b, None).as_deref(), Some("ParameterNotFound"));
        assert_eq!(error_code(r#"{"__type":"ThrottlingException"}"#, None).as_deref(), Some("ThrottlingException"));
        assert_eq!(
            error_code("<html>", Some("AccessDeniedException:http://x")).as_deref(),
            Some("AccessDeniedException")
        );
        assert_eq!(error_code("<html>", None), None);
        assert_eq!(error_message(r#"{"__type":"X","message":"no access"}"#), "no access");
    }
}
