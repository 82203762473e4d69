//! The only crate that links the AWS SDK. It builds the clients from cgcloud's settings (the
//! endpoint is the only seam between real AWS and the local cloud), and offers cgcloud's own
//! verbs over EC2, IAM, STS, SQS, SNS and CloudWatch (and SSM's GetParameter, signed by hand in
//! `ssm`). Errors are classified once here, so
//! the CLI can give each a one-line cause and a hint.

pub mod agent;
pub mod ec2;
pub mod error;
pub mod iam;
pub mod ssm;

pub use error::AwsError;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How to reach AWS (or an EC2-compatible endpoint). Every field is optional; unset fields
/// fall back to the SDK's standard chain (environment, `~/.aws`, SSO, instance role).
#[derive(Debug, Clone, Default)]
pub struct ConnectSettings {
    pub region: Option<String>,
    pub aws_profile: Option<String>,
    pub endpoint: Option<String>,
    /// Static credentials, e.g. the local cloud's dummy keys.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub max_attempts: Option<u32>,
    /// How long one attempt of a request may take before it is retried (default 90 s).
    pub attempt_timeout: Option<Duration>,
}

/// Counts the requests sent, so benchmarks can report API calls per operation: every attempt,
/// and the operations they belong to (the difference is the SDK's retries).
#[derive(Debug, Default)]
struct RequestCounter {
    attempts: AtomicU64,
    operations: AtomicU64,
}

#[derive(Debug, Clone)]
struct CountingInterceptor(Arc<RequestCounter>);

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "cgcloud-request-counter"
    }

    fn read_before_execution(
        &self,
        _ctx: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.0.operations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Connected clients for one region. The SDK clients stay inside this crate: what the rest of
/// cgcloud may do with AWS is the verbs in `ec2`, `iam`, `agent` and `ssm`.
#[derive(Clone, Debug)]
pub struct Cloud {
    pub(crate) ec2: aws_sdk_ec2::Client,
    pub(crate) iam: aws_sdk_iam::Client,
    pub(crate) sts: aws_sdk_sts::Client,
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) sns: aws_sdk_sns::Client,
    pub(crate) cloudwatch: aws_sdk_cloudwatch::Client,
    pub region: String,
    /// The endpoint override in effect, if any (for messages).
    pub endpoint: Option<String>,
    /// For the calls made without an SDK client (`ssm`).
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    counter: Arc<RequestCounter>,
}

impl Cloud {
    /// Builds the clients. This does not send any request.
    pub async fn connect(settings: &ConnectSettings) -> Result<Cloud, AwsError> {
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https);
        if let Some(p) = &settings.aws_profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &settings.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &settings.endpoint {
            loader = loader.endpoint_url(e);
        }
        if let (Some(ak), Some(sk)) = (&settings.access_key_id, &settings.secret_access_key) {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                ak.clone(),
                sk.clone(),
                None,
                None,
                "cgcloud-config",
            ));
        }
        let attempts = settings.max_attempts.unwrap_or(5).max(1);
        loader = loader
            .retry_config(
                RetryConfig::standard().with_max_attempts(attempts).with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(settings.attempt_timeout.unwrap_or(Duration::from_secs(90)))
                    .build(),
            );
        let conf = loader.load().await;
        let region = conf.region().map(|r| r.to_string()).ok_or(AwsError::NoRegion)?;
        let endpoint = conf.endpoint_url().map(str::to_owned);
        let counter = Arc::new(RequestCounter::default());
        let interceptor = CountingInterceptor(counter.clone());
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&conf).interceptor(interceptor.clone()).build(),
        );
        let iam = aws_sdk_iam::Client::from_conf(
            aws_sdk_iam::config::Builder::from(&conf).interceptor(interceptor.clone()).build(),
        );
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(&conf).interceptor(interceptor.clone()).build(),
        );
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&conf).interceptor(interceptor.clone()).build(),
        );
        let sns = aws_sdk_sns::Client::from_conf(
            aws_sdk_sns::config::Builder::from(&conf).interceptor(interceptor.clone()).build(),
        );
        let cloudwatch = aws_sdk_cloudwatch::Client::from_conf(
            aws_sdk_cloudwatch::config::Builder::from(&conf).interceptor(interceptor).build(),
        );
        let credentials = conf.credentials_provider();
        Ok(Cloud { ec2, iam, sts, sqs, sns, cloudwatch, region, endpoint, credentials, counter })
    }

    /// How many requests (including retries) these clients have sent.
    pub fn requests_sent(&self) -> u64 {
        self.counter.attempts.load(Ordering::Relaxed)
    }

    /// Counts a request sent without an SDK client: an attempt, and an operation if it is the
    /// operation's first attempt.
    pub(crate) fn count_request(&self, first_attempt: bool) {
        self.counter.attempts.fetch_add(1, Ordering::Relaxed);
        if first_attempt {
            self.counter.operations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many of those were the SDK's retries (throttling, timeouts, 5xx).
    pub fn retries_sent(&self) -> u64 {
        let attempts = self.counter.attempts.load(Ordering::Relaxed);
        attempts.saturating_sub(self.counter.operations.load(Ordering::Relaxed))
    }

    /// The caller's account id and ARN.
    pub async fn caller_identity(&self) -> Result<(String, String), AwsError> {
        let out = self.sts.get_caller_identity().send().await.map_err(|e| self.classify("sts:GetCallerIdentity", e))?;
        Ok((out.account().unwrap_or_default().to_owned(), out.arn().unwrap_or_default().to_owned()))
    }

    pub(crate) fn classify<E, R>(
        &self,
        operation: &'static str,
        err: aws_smithy_runtime_api::client::result::SdkError<E, R>,
    ) -> AwsError
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static + error::HasStatus,
    {
        error::classify(operation, self.endpoint.as_deref(), err)
    }
}

/// The user name that `__me__` stands for, from an STS caller ARN: the IAM user name, or for
/// an assumed role (SSO, CI) the session name, which is usually the person's login or email.
pub fn user_name_from_arn(arn: &str) -> Option<String> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let mut parts = resource.split('/');
    match parts.next()? {
        "user" => parts.next_back().map(str::to_owned),
        "assumed-role" => parts.nth(1).map(str::to_owned),
        "federated-user" => parts.next().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_from_arns() {
        assert_eq!(user_name_from_arn("arn:aws:iam::123:user/hannes").as_deref(), Some("hannes"));
        assert_eq!(user_name_from_arn("arn:aws:iam::123:user/dev/team/ann").as_deref(), Some("ann"));
        assert_eq!(user_name_from_arn("arn:aws:sts::123:user/moto").as_deref(), Some("moto"));
        assert_eq!(
            user_name_from_arn("arn:aws:sts::123:assumed-role/AWSReservedSSO_Dev_abc/ann@example.com").as_deref(),
            Some("ann@example.com")
        );
        assert_eq!(user_name_from_arn("arn:aws:sts::123:federated-user/bob").as_deref(), Some("bob"));
        assert_eq!(user_name_from_arn("arn:aws:iam::123:root"), None);
        assert_eq!(user_name_from_arn("garbage"), None);
    }
}
