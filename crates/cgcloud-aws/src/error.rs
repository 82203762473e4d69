//! One classification of SDK errors, so that every command reports the same causes the same way.

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("no AWS region is configured")]
    NoRegion,
    #[error("no AWS credentials found")]
    NoCredentials { detail: String },
    #[error("cannot reach the AWS endpoint {endpoint}")]
    Unreachable { endpoint: String, detail: String },
    #[error("AWS rejected the credentials ({code}: {message})")]
    BadCredentials { code: String, message: String },
    #[error("{operation} was throttled by AWS and still failed after retries ({code})")]
    Throttled { operation: &'static str, code: String },
    #[error("{operation} failed: {code}: {message}")]
    Service { operation: &'static str, code: String, message: String },
    #[error("{operation} failed: {detail}")]
    Other { operation: &'static str, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("timed out after {seconds} s waiting for {what}")]
    WaitTimeout { what: String, seconds: u64 },
}

impl AwsError {
    /// The service error code, if AWS (or the emulator) answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Service { code, .. }
            | AwsError::Throttled { code, .. }
            | AwsError::BadCredentials { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A short, actionable suggestion for the user.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            AwsError::NoRegion => {
                "pass --zone (e.g. -z us-west-2a) or --region, or set CGCLOUD_ZONE or AWS_REGION".to_owned()
            }
            AwsError::NoCredentials { .. } => "configure credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
                 `aws configure`, `aws sso login`, or --profile NAME); for the local cloud run \
                 `cgcloud local up` and use --profile local"
                .to_owned(),
            AwsError::Unreachable { endpoint, .. }
                if endpoint.contains("127.0.0.1") || endpoint.contains("localhost") =>
            {
                format!("is the emulator running at {endpoint}? For the local cloud run `cgcloud local up` (status: `cgcloud local status`)")
            }
            AwsError::Unreachable { .. } => {
                "check your network connection and the --endpoint / AWS_ENDPOINT_URL setting".to_owned()
            }
            AwsError::BadCredentials { .. } => {
                "check that your access key is valid and not expired (`aws sts get-caller-identity`)".to_owned()
            }
            AwsError::Throttled { .. } => "AWS is rate-limiting this account; wait a minute and try again".to_owned(),
            _ => return None,
        })
    }
}

pub(crate) fn is_throttle(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "RequestThrottled"
            | "SlowDown"
            | "ThrottledException"
    )
}

pub(crate) fn is_bad_credentials(code: &str) -> bool {
    matches!(
        code,
        "AuthFailure"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidAccessKeyId"
    )
}

pub(crate) fn classify<E, R>(operation: &'static str, endpoint: Option<&str>, err: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static + HasStatus,
{
    let endpoint = endpoint.unwrap_or("(AWS default)").to_owned();
    if let SdkError::ServiceError(se) = &err {
        let Some(code) = se.err().code().map(str::to_owned) else {
            // No error code: usually an endpoint that does not implement the call (moto
            // answers HTTP 500 with an HTML page then).
            let status = se.raw().status().as_u16();
            return AwsError::Other {
                operation,
                detail: format!(
                    "the endpoint answered HTTP {status} without an AWS error code (is the call supported there?)"
                ),
            };
        };
        let message = se.err().message().unwrap_or("").to_owned();
        if is_throttle(&code) {
            return AwsError::Throttled { operation, code };
        }
        if is_bad_credentials(&code) {
            return AwsError::BadCredentials { code, message };
        }
        return AwsError::Service { operation, code, message };
    }
    let detail = DisplayErrorContext(&err).to_string();
    let lower = detail.to_lowercase();
    if lower.contains("credentials")
        && (lower.contains("no credentials")
            || lower.contains("failed to load")
            || lower.contains("loading credentials")
            || lower.contains("credentialsnotloaded"))
    {
        return AwsError::NoCredentials { detail };
    }
    match &err {
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => AwsError::Unreachable { endpoint, detail },
        SdkError::TimeoutError(_) => AwsError::Unreachable { endpoint, detail },
        SdkError::DispatchFailure(_) if lower.contains("connect") || lower.contains("dns") => {
            AwsError::Unreachable { endpoint, detail }
        }
        _ => AwsError::Other { operation, detail },
    }
}

/// Raw responses that carry an HTTP status.
pub trait HasStatus {
    fn status(&self) -> aws_smithy_runtime_api::http::StatusCode;
}

impl HasStatus for aws_smithy_runtime_api::http::Response {
    fn status(&self) -> aws_smithy_runtime_api::http::StatusCode {
        aws_smithy_runtime_api::http::Response::status(self)
    }
}

/// Boxes any error as `Other`.
pub(crate) fn other(operation: &'static str, e: impl Into<BoxError>) -> AwsError {
    AwsError::Other { operation, detail: e.into().to_string() }
}
