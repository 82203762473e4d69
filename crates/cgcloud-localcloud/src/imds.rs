//! The instance metadata service of the local cloud, as EC2's at 169.254.169.254: a guest's
//! packets to that address's port 80 are redirected on the bridge to this server (see
//! [`crate::net`]), which knows the asking instance by its source address (each veth may send
//! only from its own IP). It serves IMDSv2 tokens (a PUT with a TTL; answers leave with an IP
//! TTL of 1, EC2's hop limit, so a container behind NAT in a box gets none), refuses IMDSv1 to
//! an instance launched with `HttpTokens=required`, and answers what boxes read: instance id,
//! AMI, type, placement, local address and hostname, public key, user data, the identity
//! document, the spot interruption notice, and the instance profile's temporary credentials.
//!
//! Those credentials are the only ones a guest gets: the proxy's guest door accepts a request
//! only if it is signed with credentials issued here (see [`crate::proxy`]). They expire after
//! [`credential_ttl`] and a fresh set is handed out well before, as EC2 does; the issued sets
//! are kept in the run directory so that a restarted controller still knows them.

use crate::Error;
use cgcloud_core::http::{self, HttpError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// What IMDS tells an instance about itself (from moto, refreshed by the controller's ticks).
#[derive(Debug, Clone, Default)]
pub struct InstanceMeta {
    pub id: String,
    pub ip: String,
    pub fqdn: String,
    pub image_id: String,
    pub instance_type: String,
    pub zone: String,
    pub key_name: Option<String>,
    /// The instance profile's name, if it has one.
    pub profile: Option<String>,
    /// `HttpTokens=required`: IMDSv1 is refused.
    pub tokens_required: bool,
    pub spot: bool,
}

/// Credentials issued to an instance for its instance profile's role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub instance_id: String,
    pub role_name: String,
    pub role_arn: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// Seconds since the epoch.
    pub issued: u64,
    pub expires: u64,
}

/// What the IMDS server and the proxy share.
#[derive(Debug, Default)]
pub struct Registry {
    /// private IP → instance
    pub instances: HashMap<String, InstanceMeta>,
    /// access key id → credentials
    pub credentials: HashMap<String, Issued>,
    /// IMDSv2 token → (instance IP, expiry)
    tokens: HashMap<String, (String, SystemTime)>,
    /// instance id → the spot interruption notice (the JSON EC2 publishes)
    pub interruptions: HashMap<String, String>,
    /// instance profile → (role name, role ARN), asked of IAM once
    roles: HashMap<String, (String, String)>,
    /// instance IP → (requests it may still make at once, when that was counted)
    allowance: HashMap<String, (f64, std::time::Instant)>,
}

/// Requests an instance may make of IMDS a second, and at once: EC2 throttles each instance's
/// metadata requests too, and a guest looping on IMDS must not take the service from the others.
const RATE: f64 = 250.0;
const BURST: f64 = 500.0;

impl Registry {
    /// Takes one request from `ip`'s allowance; false if it has none left.
    fn allow(&mut self, ip: &str, now: std::time::Instant) -> bool {
        let (left, at) = self.allowance.entry(ip.to_owned()).or_insert((BURST, now));
        *left = (*left + now.saturating_duration_since(*at).as_secs_f64() * RATE).min(BURST);
        *at = now;
        if *left >= 1.0 {
            *left -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The role of instance profile `profile`, from IAM the first time and remembered after (a
/// credential fetch asks for it twice; IAM is not asked on every IMDS request).
async fn profile_role(reg: &Shared, cloud: &cgcloud_aws::Cloud, profile: &str) -> Option<(String, String)> {
    if let Some(r) = reg.lock().ok().and_then(|r| r.roles.get(profile).cloned()) {
        return Some(r);
    }
    let role = cloud.instance_profile_role(profile).await.ok().flatten()?;
    if let Ok(mut r) = reg.lock() {
        r.roles.insert(profile.to_owned(), role.clone());
    }
    Some(role)
}

pub type Shared = Arc<Mutex<Registry>>;

impl Registry {
    /// Given every instance and its state: a spot notice lasts while its instance runs, as on
    /// EC2, and credentials die with their instance (on EC2 they would live until they expire).
    pub fn forget_gone<'a>(&mut self, instances: impl Iterator<Item = (&'a str, &'a str)> + Clone) {
        let running: std::collections::HashSet<&str> =
            instances.clone().filter(|(_, s)| matches!(*s, "pending" | "running")).map(|(id, _)| id).collect();
        self.interruptions.retain(|id, _| running.contains(id.as_str()));
        let alive: std::collections::HashSet<&str> =
            instances.filter(|(_, s)| !matches!(*s, "terminated" | "shutting-down")).map(|(id, _)| id).collect();
        self.credentials.retain(|_, c| alive.contains(c.instance_id.as_str()));
    }
}

/// How long issued credentials live: `CGCLOUD_LOCAL_CREDENTIAL_TTL` seconds (at least 120),
/// else an hour. A new set is handed out once a quarter of that is left.
pub fn credential_ttl() -> Duration {
    let secs = std::env::var("CGCLOUD_LOCAL_CREDENTIAL_TTL").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(3600);
    Duration::from_secs(secs.max(120))
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// `n` random bytes from the kernel.
fn random(n: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; n];
    let mut f = std::fs::File::open("/dev/urandom").map_err(|e| Error::io(Path::new("/dev/urandom"), e))?;
    std::io::Read::read_exact(&mut f, &mut buf).map_err(|e| Error::io(Path::new("/dev/urandom"), e))?;
    Ok(buf)
}

fn random_text(n: usize, alphabet: &[u8]) -> Result<String, Error> {
    Ok(random(n)?.into_iter().map(|b| alphabet[usize::from(b) % alphabet.len()] as char).collect())
}

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Where issued credentials are kept (root-only).
pub fn credentials_file(run_dir: &Path) -> PathBuf {
    run_dir.join("credentials.json")
}

/// Loads the unexpired credentials a previous controller issued.
pub fn load(run_dir: &Path) -> HashMap<String, Issued> {
    let t = now();
    std::fs::read_to_string(credentials_file(run_dir))
        .ok()
        .and_then(|s| serde_json::from_str::<HashMap<String, Issued>>(&s).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, c)| c.expires > t)
        .collect()
}

/// Writes the issued credentials for a restarted controller (atomically, root-only).
fn save(run_dir: &Path, creds: &HashMap<String, Issued>) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = credentials_file(run_dir);
    let tmp = f.with_extension("json.tmp");
    // A leftover of an interrupted save; usually there is none.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&tmp, e)),
        _ => {}
    }
    let json = serde_json::to_string(creds).map_err(|e| Error::io(&tmp, e.into()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut w| w.write_all(json.as_bytes()))
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &f).map_err(|e| Error::io(&f, e))
}

/// The current credentials of `instance` for `role`, issuing a new set when none is left with
/// more than a quarter of its life. Expired sets are dropped.
pub fn credentials_for(
    reg: &mut Registry,
    run_dir: &Path,
    instance: &str,
    role_name: &str,
    role_arn: &str,
) -> Result<(String, Issued), Error> {
    let t = now();
    let ttl = credential_ttl().as_secs();
    reg.credentials.retain(|_, c| c.expires > t);
    let current = reg
        .credentials
        .iter()
        .filter(|(_, c)| c.instance_id == instance && c.role_arn == role_arn && c.expires > t + ttl / 4)
        .max_by_key(|(_, c)| c.issued)
        .map(|(k, c)| (k.clone(), c.clone()));
    if let Some(c) = current {
        return Ok(c);
    }
    let key = format!("ASIA{}", random_text(16, UPPER)?);
    let issued = Issued {
        instance_id: instance.to_owned(),
        role_name: role_name.to_owned(),
        role_arn: role_arn.to_owned(),
        secret_access_key: random_text(40, SECRET)?,
        session_token: random_text(160, SECRET)?,
        issued: t,
        expires: t + ttl,
    };
    reg.credentials.insert(key.clone(), issued.clone());
    // The new set is valid in memory either way; only a restarted controller would not know it
    // (and its guest would be refused until the set rotates), which is no reason to fail now.
    if let Err(e) = save(run_dir, &reg.credentials) {
        tracing::warn!("IMDS: issued credentials not saved: {e}");
    }
    Ok((key, issued))
}

/// The largest request IMDS reads.
const MAX_HEAD: usize = 8 * 1024;
/// EC2's bounds for an IMDSv2 token's TTL.
const TOKEN_TTL: std::ops::RangeInclusive<u64> = 1..=21_600;

/// Connections served at once (all guests together); more wait to be accepted.
const CONNECTIONS: usize = 256;
/// Unexpired IMDSv2 tokens one instance may hold (EC2 throttles token requests too).
const TOKENS_PER_INSTANCE: usize = 1000;

/// Serves IMDS on `listener` until the process ends.
pub async fn serve(listener: TcpListener, reg: Shared, cloud: cgcloud_aws::Cloud, run_dir: PathBuf) {
    let run_dir = Arc::new(run_dir);
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (reg, cloud, run_dir) = (reg.clone(), cloud.clone(), run_dir.clone());
        tokio::spawn(async move {
            let _slot = slot;
            // EC2's hop limit: an answer crosses one hop, and no NAT inside the box.
            let _ = stream.set_ttl(1);
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                handle(stream, peer.ip().to_string(), &reg, &cloud, &run_dir),
            )
            .await;
        });
    }
}

/// A parsed IMDS request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub token: Option<String>,
    pub token_ttl: Option<String>,
    pub forwarded: bool,
}

/// Parses a request head (the bytes before the blank line) with the shared HTTP layer.
pub fn parse(head: &[u8]) -> Result<Request, HttpError> {
    // The body is never read: IMDS answers from the head alone and then closes.
    let head = http::parse_request_head(head, usize::MAX)?;
    // A header given twice counts as its last.
    let last =
        |name: &str| head.headers.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    Ok(Request {
        method: head.method.clone(),
        path: head.target.split('?').next().unwrap_or_default().to_owned(),
        token: last("x-aws-ec2-metadata-token"),
        token_ttl: last("x-aws-ec2-metadata-token-ttl-seconds"),
        forwarded: last("x-forwarded-for").is_some(),
    })
}

fn response(status: u16, reason: &str, content_type: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut headers = vec![("Content-Type", content_type), ("Server", "EC2ws")];
    headers.extend_from_slice(extra);
    headers.push(("Connection", "close"));
    http::response(status, reason, &headers, body.as_bytes())
}

fn text(body: &str) -> Vec<u8> {
    response(200, "OK", "text/plain", body, &[])
}

fn not_found() -> Vec<u8> {
    response(404, "Not Found", "text/html", "<html><body><h1>404 - Not Found</h1></body></html>\n", &[])
}

/// One connection: one request, answered from its head, then closed.
async fn handle(mut stream: TcpStream, peer: String, reg: &Shared, cloud: &cgcloud_aws::Cloud, run_dir: &Path) {
    let mut data = Vec::new();
    let mut buf = [0u8; 2048];
    let mut searched = 0;
    let end = loop {
        if let Some(end) = http::find_head_end(&data, searched, MAX_HEAD) {
            break end;
        }
        if data.len() > MAX_HEAD {
            return;
        }
        searched = data.len();
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let answer = match parse(&data[..end]) {
        Ok(req) => answer(&req, &peer, reg, cloud, run_dir).await,
        Err(_) => response(400, "Bad Request", "text/plain", "bad request\n", &[]),
    };
    // The guest may have gone: nothing to do about an answer it does not read.
    if let Err(e) = stream.write_all(&answer).await {
        tracing::debug!("IMDS answer to {peer} not sent: {e}");
    }
    let _ = stream.shutdown().await;
}

async fn answer(req: &Request, peer: &str, reg: &Shared, cloud: &cgcloud_aws::Cloud, run_dir: &Path) -> Vec<u8> {
    let Some(inst) = reg.lock().ok().and_then(|r| r.instances.get(peer).cloned()) else {
        return response(403, "Forbidden", "text/plain", "not an instance of this cloud\n", &[]);
    };
    if !reg.lock().is_ok_and(|mut r| r.allow(peer, std::time::Instant::now())) {
        return response(429, "Too Many Requests", "text/plain", "", &[]);
    }
    if req.method == "PUT" {
        if req.path != "/latest/api/token" {
            return response(405, "Method Not Allowed", "text/plain", "", &[]);
        }
        // EC2 refuses a token request that came through a proxy.
        if req.forwarded {
            return response(403, "Forbidden", "text/plain", "", &[]);
        }
        let Some(ttl) = req.token_ttl.as_deref().and_then(|t| t.parse::<u64>().ok()).filter(|t| TOKEN_TTL.contains(t))
        else {
            return response(400, "Bad Request", "text/plain", "", &[]);
        };
        let Ok(token) = random_text(56, SECRET) else {
            return response(500, "Internal Server Error", "text/plain", "", &[]);
        };
        if let Ok(mut r) = reg.lock() {
            let t = SystemTime::now();
            r.tokens.retain(|_, (_, exp)| *exp > t);
            if r.tokens.values().filter(|(ip, _)| ip == peer).count() >= TOKENS_PER_INSTANCE {
                return response(429, "Too Many Requests", "text/plain", "", &[]);
            }
            r.tokens.insert(token.clone(), (peer.to_owned(), t + Duration::from_secs(ttl)));
        }
        return response(
            200,
            "OK",
            "text/plain",
            &token,
            &[("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", &ttl.to_string())],
        );
    }
    if req.method != "GET" {
        return response(405, "Method Not Allowed", "text/plain", "", &[]);
    }
    match &req.token {
        Some(t) => {
            let valid = reg
                .lock()
                .ok()
                .and_then(|r| r.tokens.get(t).cloned())
                .is_some_and(|(ip, exp)| ip == peer && exp > SystemTime::now());
            if !valid {
                return response(401, "Unauthorized", "text/plain", "", &[]);
            }
        }
        None if inst.tokens_required => return response(401, "Unauthorized", "text/plain", "", &[]),
        None => {}
    }
    let path = req.path.trim_end_matches('/');
    let path = if req.path.ends_with('/') && path.is_empty() { "/" } else { path };
    match path {
        "/" => text("latest"),
        "/latest" => text("api\ndynamic\nmeta-data\nuser-data"),
        "/latest/user-data" => match cloud.user_data(&inst.id).await {
            Ok(u) if !u.is_empty() => response(200, "OK", "application/octet-stream", &u, &[]),
            _ => not_found(),
        },
        "/latest/dynamic" => text("instance-identity/"),
        "/latest/dynamic/instance-identity" => text("document"),
        "/latest/dynamic/instance-identity/document" => {
            let doc = serde_json::json!({
                "accountId": "123456789012",
                "architecture": std::env::consts::ARCH,
                "availabilityZone": inst.zone,
                "imageId": inst.image_id,
                "instanceId": inst.id,
                "instanceType": inst.instance_type,
                "pendingTime": rfc3339(now()),
                "privateIp": inst.ip,
                "region": crate::REGION,
                "version": "2017-09-30",
            });
            response(200, "OK", "application/json", &serde_json::to_string_pretty(&doc).unwrap_or_default(), &[])
        }
        p => match p.strip_prefix("/latest/meta-data") {
            Some(rest) => meta_data(rest.trim_start_matches('/'), &inst, reg, cloud, run_dir).await,
            None => not_found(),
        },
    }
}

async fn meta_data(
    rest: &str,
    inst: &InstanceMeta,
    reg: &Shared,
    cloud: &cgcloud_aws::Cloud,
    run_dir: &Path,
) -> Vec<u8> {
    let interruption = reg.lock().ok().and_then(|r| r.interruptions.get(&inst.id).cloned());
    let mac = crate::net::mac_of(&inst.ip).unwrap_or_default();
    match rest {
        "" => {
            let mut entries = vec!["ami-id", "hostname", "instance-id", "instance-life-cycle", "instance-type"];
            if inst.profile.is_some() {
                entries.push("iam/");
            }
            entries.extend(["local-hostname", "local-ipv4", "mac", "placement/"]);
            if inst.key_name.is_some() {
                entries.push("public-keys/");
            }
            if interruption.is_some() {
                entries.push("spot/");
            }
            entries.push("events/");
            text(&entries.join("\n"))
        }
        "ami-id" => text(&inst.image_id),
        "instance-id" => text(&inst.id),
        "instance-type" => text(&inst.instance_type),
        "instance-life-cycle" => text(if inst.spot { "spot" } else { "on-demand" }),
        "hostname" | "local-hostname" => text(&inst.fqdn),
        "local-ipv4" => text(&inst.ip),
        "mac" => text(&mac),
        "placement" => text("availability-zone\nregion"),
        "placement/availability-zone" => text(&inst.zone),
        "placement/region" => text(crate::REGION),
        "events" => text("maintenance/"),
        "events/maintenance" => text("scheduled"),
        "events/maintenance/scheduled" => text("[]"),
        "spot" => match interruption {
            Some(_) => text("instance-action"),
            None => not_found(),
        },
        "spot/instance-action" => match interruption {
            Some(doc) => response(200, "OK", "application/json", &doc, &[]),
            None => not_found(),
        },
        "public-keys" => match &inst.key_name {
            Some(k) => text(&format!("0={k}")),
            None => not_found(),
        },
        "public-keys/0" => text("openssh-key"),
        "public-keys/0/openssh-key" => match &inst.key_name {
            Some(k) => match cloud.key_pair(k).await.ok().flatten().and_then(|k| k.public_key) {
                Some(key) => text(&key),
                None => not_found(),
            },
            None => not_found(),
        },
        "iam" if inst.profile.is_some() => text("info\nsecurity-credentials/"),
        "iam/info" | "iam/security-credentials" | "iam/security-credentials/" => {
            let Some(profile) = &inst.profile else { return not_found() };
            let Some((role, _)) = profile_role(reg, cloud, profile).await else { return not_found() };
            if rest == "iam/info" {
                let doc = serde_json::json!({
                    "Code": "Success",
                    "LastUpdated": rfc3339(now()),
                    "InstanceProfileArn": format!("arn:aws:iam::123456789012:instance-profile/{profile}"),
                    "InstanceProfileId": "AIPALOCALCLOUD",
                });
                return response(200, "OK", "application/json", &doc.to_string(), &[]);
            }
            text(&role)
        }
        r => match r.strip_prefix("iam/security-credentials/") {
            Some(asked) => {
                let Some(profile) = &inst.profile else { return not_found() };
                let Some((role, role_arn)) = profile_role(reg, cloud, profile).await else { return not_found() };
                if asked != role {
                    return not_found();
                }
                let issued = reg
                    .lock()
                    .map_err(|_| ())
                    .and_then(|mut r| credentials_for(&mut r, run_dir, &inst.id, &role, &role_arn).map_err(|_| ()));
                let Ok((key, c)) = issued else { return response(500, "Internal Server Error", "text/plain", "", &[]) };
                let doc = serde_json::json!({
                    "Code": "Success",
                    "LastUpdated": rfc3339(c.issued),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": key,
                    "SecretAccessKey": c.secret_access_key,
                    "Token": c.session_token,
                    "Expiration": rfc3339(c.expires),
                });
                response(200, "OK", "application/json", &serde_json::to_string_pretty(&doc).unwrap_or_default(), &[])
            }
            None => not_found(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let r = parse(
            b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600",
        )
        .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.token_ttl.as_deref()),
            ("PUT", "/latest/api/token", Some("21600"))
        );
        let r =
            parse(b"GET /latest/meta-data/?x HTTP/1.1\r\nx-aws-ec2-metadata-token: abc\r\nX-Forwarded-For: 1.2.3.4")
                .unwrap();
        assert_eq!((r.path.as_str(), r.token.as_deref(), r.forwarded), ("/latest/meta-data/", Some("abc"), true));
        assert!(parse(b"").is_err());
        assert!(parse(b"GET /latest/meta-data/ HTTP/1.1\nX-Forwarded-For: 1.2.3.4").is_err(), "CRLF only");
    }

    /// One request to the server at `addr`: the status line and the body.
    async fn ask(addr: std::net::SocketAddr, request: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.lines().next().unwrap_or_default().to_owned();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    /// What EC2 does and README says: IMDSv1 refused to an instance launched with
    /// `HttpTokens=required` (v2 with a token served, v1 served to one without it), and a
    /// token request through a proxy refused.
    #[tokio::test]
    async fn v1_is_refused_when_tokens_are_required() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reg: Shared = Default::default();
        let meta = |tokens_required| InstanceMeta {
            id: "i-0123456789abcdef0".into(),
            ip: "127.0.0.1".into(),
            tokens_required,
            ..Default::default()
        };
        reg.lock().unwrap().instances.insert("127.0.0.1".into(), meta(true));
        let cloud = crate::test_cloud().await;
        let run = tempfile::tempdir().unwrap();
        tokio::spawn(serve(listener, reg.clone(), cloud, run.path().to_owned()));

        let get = "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
        assert_eq!(ask(addr, get).await.0, "HTTP/1.1 401 Unauthorized");
        let put = "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
        let (status, token) = ask(addr, put).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let with_token =
            format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n");
        assert_eq!(ask(addr, &with_token).await, ("HTTP/1.1 200 OK".into(), "i-0123456789abcdef0".into()));
        let forwarded = "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n";
        assert_eq!(ask(addr, forwarded).await.0, "HTTP/1.1 403 Forbidden");
        // An instance without HttpTokens=required may still use v1.
        reg.lock().unwrap().instances.insert("127.0.0.1".into(), meta(false));
        assert_eq!(ask(addr, get).await.1, "i-0123456789abcdef0");
        // At most 1000 unexpired tokens per instance (each is memory of the controller's).
        {
            let mut r = reg.lock().unwrap();
            let later = SystemTime::now() + Duration::from_secs(600);
            let held = r.tokens.len();
            for i in held..TOKENS_PER_INSTANCE {
                r.tokens.insert(format!("t{i}"), ("127.0.0.1".into(), later));
            }
        }
        assert_eq!(ask(addr, put).await.0, "HTTP/1.1 429 Too Many Requests");
    }

    #[test]
    fn credentials_die_with_their_instance() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::default();
        let arn = "arn:aws:iam::123456789012:role/r";
        let (a, _) = credentials_for(&mut reg, dir.path(), "i-a", "r", arn).unwrap();
        let (b, _) = credentials_for(&mut reg, dir.path(), "i-b", "r", arn).unwrap();
        let (c, _) = credentials_for(&mut reg, dir.path(), "i-c", "r", arn).unwrap();
        reg.forget_gone([("i-a", "running"), ("i-b", "stopped"), ("i-c", "shutting-down")].into_iter());
        assert!(reg.credentials.contains_key(&a) && reg.credentials.contains_key(&b));
        assert!(!reg.credentials.contains_key(&c), "a terminating instance's credentials live on");
        reg.forget_gone([("i-a", "terminated")].into_iter());
        assert!(!reg.credentials.contains_key(&a));
    }

    #[test]
    fn each_instance_is_throttled_on_its_own() {
        let mut r = Registry::default();
        let t0 = std::time::Instant::now();
        assert_eq!((0..600).filter(|_| r.allow("10.199.1.4", t0)).count(), BURST as usize);
        assert!(r.allow("10.199.1.5", t0), "another instance has its own allowance");
        let later = t0 + Duration::from_secs(1);
        assert_eq!((0..600).filter(|_| r.allow("10.199.1.4", later)).count(), RATE as usize);
    }

    #[test]
    fn credentials_rotate_before_they_expire_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::default();
        let (k1, c1) = credentials_for(&mut reg, dir.path(), "i-1", "r", "arn:aws:iam::123456789012:role/r").unwrap();
        assert!(k1.starts_with("ASIA") && k1.len() == 20 && c1.secret_access_key.len() == 40);
        let (k2, _) = credentials_for(&mut reg, dir.path(), "i-1", "r", "arn:aws:iam::123456789012:role/r").unwrap();
        assert_eq!(k1, k2, "a set with most of its life left is handed out again");
        let (k3, _) = credentials_for(&mut reg, dir.path(), "i-2", "r", "arn:aws:iam::123456789012:role/r").unwrap();
        assert_ne!(k1, k3, "each instance has its own");
        // Near its end, the set is replaced; the old one stays valid until it expires.
        reg.credentials.get_mut(&k1).unwrap().expires = now() + 60;
        let (k4, _) = credentials_for(&mut reg, dir.path(), "i-1", "r", "arn:aws:iam::123456789012:role/r").unwrap();
        assert_ne!(k1, k4);
        assert!(reg.credentials.contains_key(&k1));
        // A restarted controller knows them (the file is root's alone).
        let loaded = load(dir.path());
        assert!(loaded.contains_key(&k3) && loaded.contains_key(&k4));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(credentials_file(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Expired ones are dropped.
        reg.credentials.get_mut(&k1).unwrap().expires = now() - 1;
        credentials_for(&mut reg, dir.path(), "i-3", "r", "arn:aws:iam::123456789012:role/r").unwrap();
        assert!(!reg.credentials.contains_key(&k1));
    }
}
