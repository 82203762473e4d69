//! Who may do what through the guests' door: a request must be signed (SigV4) with
//! credentials IMDS issued to an instance ([`authenticate`]), and its instance profile's role
//! must allow it as IAM would ([`authorize`], over [`crate::iam`]). What is refused is answered
//! with the error document and code of the service asked ([`Denied`]).

use super::ec2::{query_params, url_decode};
use super::guest::GuestRequest;
use super::Door;
use cgcloud_core::http;

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A request the guests' door refuses, with AWS's error code for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// EC2's error document, or the other query services'.
    pub ec2: bool,
}

impl Denied {
    /// A denial with EC2's code `code_ec2` for EC2 requests and `code` for the others'.
    fn new(ec2: bool, status: u16, code_ec2: &'static str, code: &'static str, message: String) -> Denied {
        Denied { status, code: if ec2 { code_ec2 } else { code }, message, ec2 }
    }

    /// The answer, in the JSON protocol's form for a request that came in it (`json`: SQS's,
    /// with the query-compatible code header its SDKs read) and in XML otherwise.
    pub(super) fn response(&self, json: bool) -> Vec<u8> {
        let reason = match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            503 => "Service Unavailable",
            _ => "Forbidden",
        };
        if json {
            let body =
                serde_json::json!({"__type": format!("com.amazonaws.sqs#{}", self.code), "message": self.message})
                    .to_string();
            let kind = if self.status >= 500 { "Receiver" } else { "Sender" };
            let error = format!("{};{kind}", self.code);
            let headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-query-error", error.as_str())];
            return http::response(self.status, reason, &headers, body.as_bytes());
        }
        let message = xml_escape(&self.message);
        let body = if self.ec2 {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{message}</Message></Error></Errors><RequestID>cgcloud-local</RequestID></Response>",
                self.code
            )
        } else {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse><Error><Type>Sender</Type><Code>{}</Code><Message>{message}</Message></Error><RequestId>cgcloud-local</RequestId></ErrorResponse>",
                self.code
            )
        };
        http::response(self.status, reason, &[("Content-Type", "text/xml;charset=UTF-8")], body.as_bytes())
    }
}

/// The most a request's signing time may differ from the proxy's clock, as AWS allows.
const MAX_SKEW: u64 = 15 * 60;

/// Who signed a guest's request, and for what.
#[derive(Debug)]
pub struct Signer {
    pub issued: crate::imds::Issued,
    /// The credential scope's service (SigV4 signing name) and region.
    pub service: String,
    pub region: String,
    /// The headers the signature covers (lower case).
    pub signed_headers: Vec<String>,
}

/// Checks a guest's request: signed (SigV4) with credentials IMDS issued, unexpired, with
/// their session token, and the signature computed over exactly the headers the client says
/// it signed.
pub fn authenticate(
    req: &GuestRequest,
    imds: &crate::imds::Shared,
    now: std::time::SystemTime,
) -> Result<Signer, Denied> {
    let auth = req.header("authorization").unwrap_or_default();
    let service = auth.split("Credential=").nth(1).and_then(|c| c.split('/').nth(3)).unwrap_or_default().to_owned();
    let ec2 = service == "ec2" || service.is_empty();
    let deny = |status, code_ec2, code, message| Denied::new(ec2, status, code_ec2, code, message);
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(deny(
            401,
            "AuthFailure",
            "MissingAuthenticationToken",
            "the request is not signed with AWS Signature Version 4; boxes sign with their instance profile's credentials from IMDS".into(),
        ));
    };
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_default()
            .to_owned()
    };
    let (credential, signed, signature) = (field("Credential"), field("SignedHeaders"), field("Signature"));
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, _service, "aws4_request"] = scope.as_slice() else {
        return Err(deny(403, "AuthFailure", "IncompleteSignature", "the credential scope is malformed".into()));
    };
    let Some(issued) = imds.lock().ok().and_then(|r| r.credentials.get(*key).cloned()) else {
        return Err(deny(
            401,
            "AuthFailure",
            "InvalidClientTokenId",
            format!("the security token included in the request is invalid ({key} was not issued to an instance of this cloud)"),
        ));
    };
    let now_secs = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if issued.expires <= now_secs {
        return Err(deny(
            400,
            "RequestExpired",
            "ExpiredToken",
            "the security token included in the request is expired".into(),
        ));
    }
    // The token may travel in the query string too (presigned requests).
    let query_token = req
        .target
        .split_once('?')
        .map(|(_, q)| query_params(q.as_bytes()))
        .and_then(|p| p.into_iter().find(|(k, _)| k == "X-Amz-Security-Token").map(|(_, v)| v));
    let token = req.header("x-amz-security-token").or(query_token);
    if token.as_deref() != Some(issued.session_token.as_str()) {
        return Err(deny(
            401,
            "AuthFailure",
            "InvalidClientTokenId",
            "the session token does not belong to the access key".into(),
        ));
    }
    let amz_date = req.header("x-amz-date").unwrap_or_default();
    match amz_date_secs(&amz_date) {
        Some(t) if t.abs_diff(now_secs) <= MAX_SKEW && amz_date.starts_with(date) => {}
        _ => {
            return Err(deny(
                403,
                "RequestExpired",
                "SignatureDoesNotMatch",
                "the request's X-Amz-Date is missing, malformed, or more than 15 minutes from the server's time".into(),
            ))
        }
    }
    let headers = signed_headers(req, &signed).map_err(|why| deny(403, "AuthFailure", "SignatureDoesNotMatch", why))?;
    let payload_hash = cgcloud_core::sigv4::payload_hash(&req.body);
    if req.header("x-amz-content-sha256").is_some_and(|h| h != payload_hash) {
        return Err(deny(
            403,
            "AuthFailure",
            "SignatureDoesNotMatch",
            "x-amz-content-sha256 is not the body's hash".into(),
        ));
    }
    let (path, query) = req.target.split_once('?').unwrap_or((req.target.as_str(), ""));
    let canonical = cgcloud_core::sigv4::Canonical {
        method: &req.method,
        path,
        query: &canonical_query(query),
        headers: &headers,
        payload_hash: &payload_hash,
    };
    let want = cgcloud_core::sigv4::signature(&canonical, &issued.secret_access_key, &amz_date, &scope[1..].join("/"));
    if !constant_time_eq(want.as_bytes(), signature.as_bytes()) {
        return Err(deny(
            403,
            "AuthFailure",
            "SignatureDoesNotMatch",
            "the request signature we calculated does not match the signature you provided".into(),
        ));
    }
    Ok(Signer {
        service: service.clone(),
        region: (*region).to_owned(),
        signed_headers: headers.into_iter().map(|(name, _)| name).collect(),
        issued,
    })
}

/// Evaluates a signed guest request against its instance profile's policies (see
/// [`crate::iam`]), as IAM would; denied as EC2 and the other services deny.
pub(super) async fn authorize(req: &GuestRequest, who: &Signer, door: &Door) -> Result<(), Denied> {
    use crate::iam::Unevaluated;
    let ec2 = who.service == "ec2";
    let deny = |status, code_ec2, code, message| Denied::new(ec2, status, code_ec2, code, message);
    let issued = &who.issued;
    let caller = crate::iam::Caller {
        instance_id: issued.instance_id.clone(),
        region: who.region.clone(),
        account: issued.role_arn.split(':').nth(4).unwrap_or_default().to_owned(),
    };
    let signed: Vec<&str> = who.signed_headers.iter().map(String::as_str).collect();
    let evaluated = async {
        let call = crate::iam::Call::parse(req, &who.service, &signed)?;
        let requests = crate::iam::requests(&call, &caller, &door.cloud).await?;
        Ok::<_, Unevaluated>((call, requests))
    };
    let (call, requests) = match evaluated.await {
        Ok(x) => x,
        Err(Unevaluated::Malformed(why)) => {
            return Err(deny(400, "InvalidParameterValue", "InvalidParameterValue", why));
        }
        Err(Unevaluated::Unmodelled(why)) => {
            return Err(deny(
                403,
                "UnauthorizedOperation",
                "AccessDenied",
                format!("{why} (the local cloud denies what it cannot evaluate as IAM would)"),
            ));
        }
        Err(Unevaluated::Lookup(why)) => {
            return Err(deny(503, "Unavailable", "ServiceUnavailable", format!("cannot authorize the request: {why}")));
        }
    };
    let policy = door
        .policies
        .of(&door.cloud, &issued.role_name)
        .await
        .map_err(|why| deny(403, "UnauthorizedOperation", "AccessDenied", why))?;
    match crate::iam::first_denied(&policy, &requests) {
        None => Ok(()),
        Some(r) => Err(deny(
            403,
            "UnauthorizedOperation",
            "AccessDenied",
            format!(
                "You are not authorized to perform this operation. User: arn:aws:sts::{}:assumed-role/{}/{} is not authorized to perform: {} on resource: {} ({} of instance {})",
                caller.account, issued.role_name, issued.instance_id, r.action, r.resource, call.action, issued.instance_id
            ),
        )),
    }
}

/// The headers the client signed (`signed`: SignedHeaders), in its order, with their canonical
/// values; host must be one of them. Else why the signature cannot match.
fn signed_headers(req: &GuestRequest, signed: &str) -> Result<Vec<(String, String)>, String> {
    let names: Vec<&str> = signed.split(';').filter(|n| !n.is_empty()).collect();
    if !names.contains(&"host") {
        return Err("the host header is not signed".into());
    }
    let mut headers = Vec::with_capacity(names.len());
    for name in &names {
        let Some(v) = req.header(name) else { return Err(format!("signed header '{name}' is missing")) };
        headers.push(((*name).to_owned(), v.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    Ok(headers)
}

/// An `X-Amz-Date` (`YYYYMMDDThhmmssZ`) as seconds since the epoch.
fn amz_date_secs(amz_date: &str) -> Option<u64> {
    humantime::parse_rfc3339(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        amz_date.get(0..4).unwrap_or("x"),
        amz_date.get(4..6).unwrap_or("x"),
        amz_date.get(6..8).unwrap_or("x"),
        amz_date.get(9..11).unwrap_or("x"),
        amz_date.get(11..13).unwrap_or("x"),
        amz_date.get(13..15).unwrap_or("x"),
    ))
    .ok()
    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    .map(|d| d.as_secs())
}

/// A query string in SigV4's canonical form: parameters sorted, each encoded once.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("X-Amz-Signature="))
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (cgcloud_core::sigv4::uri_encode(&url_decode(k)), cgcloud_core::sigv4::uri_encode(&url_decode(v)))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(
        issued_key: &str,
        issued: &crate::imds::Issued,
        body: &[u8],
        when: u64,
        token: Option<&str>,
    ) -> GuestRequest {
        let creds = cgcloud_core::sigv4::Credentials {
            access_key_id: issued_key.to_owned(),
            secret_access_key: issued.secret_access_key.clone(),
            session_token: Some(token.unwrap_or(&issued.session_token).to_owned()),
        };
        let ct = "application/x-www-form-urlencoded; charset=utf-8";
        let h = cgcloud_core::sigv4::sign(
            "POST",
            "/",
            "",
            &[("host", "10.199.0.1:5401"), ("content-type", ct)],
            body,
            "us-west-2",
            "ec2",
            &creds,
            &cgcloud_core::sigv4::amz_date(when),
        );
        let mut headers =
            vec![("Host".to_owned(), "10.199.0.1:5401".to_owned()), ("Content-Type".to_owned(), ct.to_owned())];
        headers.extend(h);
        GuestRequest { method: "POST".into(), target: "/".into(), headers, body: body.to_vec(), close: false }
    }

    #[test]
    fn guests_must_sign_with_credentials_imds_issued() {
        let dir = tempfile::tempdir().unwrap();
        let imds = crate::imds::Shared::default();
        let (key, issued) = {
            let mut r = imds.lock().unwrap();
            crate::imds::credentials_for(&mut r, dir.path(), "i-1", "box", "arn:aws:iam::123456789012:role/box")
                .unwrap()
        };
        let now = std::time::SystemTime::now();
        let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let body = b"Action=DescribeInstances&Version=2016-11-15";
        let ok = signed(&key, &issued, body, secs, None);
        let who = authenticate(&ok, &imds, now).unwrap();
        assert_eq!(
            (who.issued.instance_id.as_str(), who.service.as_str(), who.region.as_str()),
            ("i-1", "ec2", "us-west-2")
        );
        assert_eq!(who.signed_headers, ["content-type", "host", "x-amz-date", "x-amz-security-token"]);
        // Each way of getting it wrong, with AWS's code.
        let mut tampered = signed(&key, &issued, body, secs, None);
        tampered.body = b"Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-2".to_vec();
        assert_eq!(authenticate(&tampered, &imds, now).unwrap_err().code, "AuthFailure");
        let wrong_token = signed(&key, &issued, body, secs, Some("not-the-token"));
        assert_eq!(authenticate(&wrong_token, &imds, now).unwrap_err().code, "AuthFailure");
        let unknown = signed("ASIAUNKNOWN", &issued, body, secs, None);
        assert!(authenticate(&unknown, &imds, now).unwrap_err().message.contains("not issued"));
        let stale = signed(&key, &issued, body, secs - 3600, None);
        assert_eq!(authenticate(&stale, &imds, now).unwrap_err().code, "RequestExpired");
        let unsigned = GuestRequest { headers: Vec::new(), ..signed(&key, &issued, body, secs, None) };
        assert_eq!(authenticate(&unsigned, &imds, now).unwrap_err().status, 401);
        // The local cloud's own key, known to all, is not accepted from a guest.
        let admin = crate::imds::Issued { secret_access_key: crate::SECRET_KEY.into(), ..issued.clone() };
        assert!(authenticate(&signed(crate::ACCESS_KEY, &admin, body, secs, None), &imds, now).is_err());
        // Expired credentials.
        imds.lock().unwrap().credentials.get_mut(&key).unwrap().expires = secs - 1;
        assert_eq!(authenticate(&ok, &imds, now).unwrap_err().code, "RequestExpired");
        // Other services answer with their own codes and error document.
        let d = Denied { status: 403, code: "SignatureDoesNotMatch", message: "<x>".into(), ec2: false };
        let text = String::from_utf8(d.response(false)).unwrap();
        let json = String::from_utf8(d.response(true)).unwrap();
        assert!(json.contains("x-amzn-query-error: SignatureDoesNotMatch;Sender\r\n"), "{json}");
        let body: serde_json::Value = serde_json::from_str(json.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            (body["__type"].as_str(), body["message"].as_str()),
            (Some("com.amazonaws.sqs#SignatureDoesNotMatch"), Some("<x>"))
        );
        assert!(text.contains("<ErrorResponse>") && text.contains("&lt;x&gt;") && text.starts_with("HTTP/1.1 403"));
        assert_eq!(canonical_query("b=2&a=1%2F"), "a=1%2F&b=2");
    }
}
