//! A minimal AWS client for the agent: query-protocol calls (form POST, XML answer) to EC2,
//! IAM, SQS, SNS and CloudWatch, signed with SigV4. Credentials come from the agent's config
//! (the local cloud) or from the instance profile via IMDSv2 (real EC2).

use cgcloud_core::sigv4::{self, Credentials};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("{action}: cannot reach {url}: {detail}")]
    Transport { action: String, url: String, detail: String },
    #[error("{action}: {code}: {message}")]
    Service { action: String, code: String, message: String },
    #[error("{action}: unexpected answer: {detail}")]
    Parse { action: String, detail: String },
    #[error("no credentials: {0}")]
    Credentials(crate::imds::ImdsError),
}

pub struct Client {
    pub region: String,
    endpoint: Option<String>,
    static_creds: Option<Credentials>,
    imds_creds: std::cell::RefCell<Option<(Credentials, SystemTime)>>,
    http: ureq::Agent,
}

/// The services the agent talks to: (signing name, API version, endpoint host prefix).
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Ec2,
    Iam,
    Sqs,
    Sns,
    CloudWatch,
}

impl Service {
    fn info(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Service::Ec2 => ("ec2", "2016-11-15", "ec2"),
            Service::Iam => ("iam", "2010-05-08", "iam"),
            Service::Sqs => ("sqs", "2012-11-05", "sqs"),
            Service::Sns => ("sns", "2010-03-31", "sns"),
            Service::CloudWatch => ("monitoring", "2010-08-01", "monitoring"),
        }
    }
}

/// The trimmed text of `n`'s first child element named `name` (empty if there is none).
pub fn child_text(n: roxmltree::Node, name: &str) -> String {
    n.children().find(|c| c.tag_name().name() == name).and_then(|c| c.text()).unwrap_or_default().trim().to_owned()
}

/// A parsed XML answer.
pub struct Answer(pub String);

impl Answer {
    /// The text of every element named `name`, in document order.
    pub fn texts(&self, name: &str) -> Vec<String> {
        match roxmltree::Document::parse(&self.0) {
            Ok(doc) => doc
                .descendants()
                .filter(|n| n.tag_name().name() == name)
                .map(|n| n.text().unwrap_or_default().trim().to_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn text(&self, name: &str) -> Option<String> {
        self.texts(name).into_iter().next()
    }

    /// For each element named `item`, the texts of its descendants named in `fields`.
    pub fn records(&self, item: &str, fields: &[&str]) -> Vec<Vec<String>> {
        let Ok(doc) = roxmltree::Document::parse(&self.0) else { return Vec::new() };
        doc.descendants()
            .filter(|n| n.tag_name().name() == item)
            .map(|n| {
                fields
                    .iter()
                    .map(|f| {
                        n.descendants()
                            .find(|d| d.tag_name().name() == *f)
                            .and_then(|d| d.text())
                            .unwrap_or_default()
                            .trim()
                            .to_owned()
                    })
                    .collect()
            })
            .collect()
    }
}

impl Client {
    pub fn new(region: &str, endpoint: Option<String>, static_creds: Option<Credentials>) -> Client {
        let http =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout(Duration::from_secs(40)).build();
        Client { region: region.to_owned(), endpoint, static_creds, imds_creds: std::cell::RefCell::new(None), http }
    }

    fn url(&self, service: Service) -> String {
        if let Some(e) = &self.endpoint {
            return format!("{}/", e.trim_end_matches('/'));
        }
        let (_, _, host) = service.info();
        match service {
            Service::Iam => "https://iam.amazonaws.com/".to_owned(),
            _ => format!("https://{host}.{}.amazonaws.com/", self.region),
        }
    }

    fn credentials(&self) -> Result<Credentials, AwsError> {
        if let Some(c) = &self.static_creds {
            return Ok(c.clone());
        }
        if let Some((c, expires)) = self.imds_creds.borrow().as_ref() {
            if SystemTime::now() + Duration::from_secs(300) < *expires {
                return Ok(c.clone());
            }
        }
        let (c, expires) = crate::imds::role_credentials(&self.http).map_err(AwsError::Credentials)?;
        *self.imds_creds.borrow_mut() = Some((c.clone(), expires));
        Ok(c)
    }

    /// Calls `action` with form `params`; returns the XML answer or the service's error.
    /// Credentials from IMDS that the service no longer accepts (revoked, or issued by a cloud
    /// that has since been replaced) are fetched again, once.
    pub fn call(&self, service: Service, action: &str, params: &[(&str, String)]) -> Result<Answer, AwsError> {
        match self.call_once(service, action, params) {
            Err(AwsError::Service { code, .. })
                if self.static_creds.is_none()
                    && matches!(
                        code.as_str(),
                        "InvalidClientTokenId" | "ExpiredToken" | "AuthFailure" | "RequestExpired"
                    ) =>
            {
                *self.imds_creds.borrow_mut() = None;
                self.call_once(service, action, params)
            }
            other => other,
        }
    }

    fn call_once(&self, service: Service, action: &str, params: &[(&str, String)]) -> Result<Answer, AwsError> {
        let (signing_name, version, _) = service.info();
        let url = self.url(service);
        let mut body = format!("Action={}&Version={version}", sigv4::uri_encode(action));
        for (k, v) in params {
            body.push('&');
            body.push_str(&sigv4::uri_encode(k));
            body.push('=');
            body.push_str(&sigv4::uri_encode(v));
        }
        let host = url.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/').to_owned();
        let region = if matches!(service, Service::Iam) { "us-east-1" } else { self.region.as_str() };
        let creds = self.credentials()?;
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let signed = sigv4::sign(
            "POST",
            "/",
            "",
            &[("host", &host), ("content-type", content_type)],
            body.as_bytes(),
            region,
            signing_name,
            &creds,
            &sigv4::amz_date(now),
        );
        let mut req = self.http.post(&url).set("content-type", content_type);
        for (k, v) in &signed {
            req = req.set(k, v);
        }
        match req.send_string(&body) {
            Ok(resp) => {
                let text =
                    resp.into_string().map_err(|e| AwsError::Parse { action: action.into(), detail: e.to_string() })?;
                Ok(Answer(text))
            }
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let a = Answer(text);
                Err(AwsError::Service {
                    action: action.into(),
                    code: a.text("Code").unwrap_or_else(|| format!("HTTP {status}")),
                    message: a.text("Message").unwrap_or_default(),
                })
            }
            Err(e) => Err(AwsError::Transport { action: action.into(), url, detail: e.to_string() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let a = Answer(
            r#"<DescribeKeyPairsResponse><keySet><item><keyName>alice</keyName><publicKey>ssh-ed25519 AAA</publicKey></item>
            <item><keyName>bob</keyName><publicKey>ssh-rsa BBB</publicKey></item></keySet></DescribeKeyPairsResponse>"#
                .into(),
        );
        assert_eq!(a.texts("keyName"), vec!["alice", "bob"]);
        assert_eq!(a.records("item", &["keyName", "publicKey"])[1], vec!["bob", "ssh-rsa BBB"]);
        assert_eq!(Answer("not xml".into()).text("x"), None);
    }
}
