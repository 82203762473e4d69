//! SSM GetParameter, signed by hand (no SDK client): against moto, and against a stand-in that
//! throttles, errs and checks what it is sent.

#![allow(clippy::unwrap_used)] // tests may unwrap
use cgcloud_aws::{AwsError, Cloud, ConnectSettings};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::sync::{Arc, Mutex};
use testkit::TestEnv;

async fn connect(endpoint: &str, region: &str) -> Cloud {
    Cloud::connect(&ConnectSettings {
        region: Some(region.into()),
        endpoint: Some(endpoint.into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn parameters_are_read_from_moto() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let e = TestEnv::new("/bin/true");
    e.boto3(
        "client('ssm').put_parameter(Name='/cgcloud-test/ubuntu/noble/amd64', Value='ami-0123456789abcdef0', Type='String', Overwrite=True)",
    );
    let cloud = connect(&e.moto_endpoint, &e.region).await;
    let v = cloud.ssm_parameter("/cgcloud-test/ubuntu/noble/amd64").await.unwrap();
    assert_eq!(v.as_deref(), Some("ami-0123456789abcdef0"));
    assert_eq!(cloud.ssm_parameter("/cgcloud-test/no/such/parameter").await.unwrap(), None);
    assert_eq!(cloud.requests_sent(), 2);
    assert_eq!(cloud.retries_sent(), 0);
}

/// A one-request-per-connection HTTP server that answers the n-th request with `answers[n]`
/// (status, JSON body) and records each request's head and body.
fn stand_in(answers: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (stream, (status, body)) in listener.incoming().flatten().zip(answers) {
            let mut reader = BufReader::new(stream);
            let (mut head, mut line, mut length) = (String::new(), String::new(), 0usize);
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
                line.clear();
            }
            let mut req = vec![0; length];
            reader.read_exact(&mut req).unwrap();
            log.lock().unwrap().push(format!("{head}\n{}", String::from_utf8_lossy(&req)));
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (endpoint, seen)
}

#[tokio::test]
async fn throttling_is_retried_and_the_request_is_signed() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let (endpoint, seen) = stand_in(vec![
        (400, r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#),
        (500, r#"{"__type":"InternalServerError","message":"oops"}"#),
        (200, r#"{"Parameter":{"Name":"/p","Type":"String","Value":"ami-1","Version":1}}"#),
    ]);
    let cloud = connect(&endpoint, "eu-west-1").await;
    assert_eq!(cloud.ssm_parameter("/p").await.unwrap().as_deref(), Some("ami-1"));
    assert_eq!((cloud.requests_sent(), cloud.retries_sent()), (3, 2));
    let seen = seen.lock().unwrap();
    let first = seen[0].to_ascii_lowercase();
    assert!(first.contains("x-amz-target: amazonssm.getparameter"), "{first}");
    assert!(first.contains("content-type: application/x-amz-json-1.1"), "{first}");
    assert!(
        first.contains("authorization: aws4-hmac-sha256 credential=testing/")
            && first.contains("/eu-west-1/ssm/aws4_request")
            && first.contains("signedheaders=content-type;host;x-amz-date;x-amz-target"),
        "{first}"
    );
    assert!(seen[0].ends_with(r#"{"Name":"/p"}"#), "{}", seen[0]);
}

#[tokio::test]
async fn errors_name_the_call_and_are_not_retried_when_final() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let (endpoint, _) = stand_in(vec![
        (400, r#"{"__type":"AccessDeniedException","message":"not allowed to ssm:GetParameter"}"#),
        (400, r#"{"__type":"UnrecognizedClientException","message":"bad token"}"#),
    ]);
    let cloud = connect(&endpoint, "us-east-1").await;
    let e = cloud.ssm_parameter("/p").await.unwrap_err();
    assert!(
        matches!(&e, AwsError::Service { operation: "ssm:GetParameter", code, .. } if code == "AccessDeniedException"),
        "{e:?}"
    );
    assert!(e.to_string().contains("not allowed to ssm:GetParameter"), "{e}");
    let e = cloud.ssm_parameter("/p").await.unwrap_err();
    assert!(matches!(&e, AwsError::BadCredentials { .. }), "{e:?}");
    assert_eq!((cloud.requests_sent(), cloud.retries_sent()), (2, 0));
}
