//! EC2's query protocol as the proxy reads it: form bodies decoded, the actions that change
//! what the controller realizes (power changes among them), and `GetConsoleOutput`, which the
//! proxy answers itself from a host's real console.

use base64::Engine as _;
use cgcloud_core::http;
use std::path::Path;

/// EC2 returns at most the last 64 KiB of an instance's console.
const CONSOLE_MAX: usize = 64 * 1024;

pub(crate) fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            // Bytes, not string slices: a request from a guest may put anything after '%'.
            b'%' => match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b&c=d`, decoded; a key without `=` has an empty value.
pub(crate) fn query_params(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

/// The instance of a `GetConsoleOutput` request, if `body` is one and names a plausible id
/// (the id becomes part of a path: anything else is left to moto).
pub fn console_request(body: &[u8]) -> Option<String> {
    let params = query_params(body);
    let action = params.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.as_str());
    if action != Some("GetConsoleOutput") {
        return None;
    }
    let id = params.into_iter().find(|(k, _)| k == "InstanceId").map(|(_, v)| v)?;
    let hex = id.strip_prefix("i-")?;
    (!hex.is_empty() && hex.len() <= 17 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

/// EC2's answer to GetConsoleOutput for a host of the local cloud: the end of its console
/// log, base64-encoded; None for an instance that never ran here (moto answers then).
pub(super) fn console_response(dir: &Path, id: &str) -> Option<Vec<u8>> {
    // Only the tail is read: a guest writes its console, and could make it large.
    let tail = {
        use std::io::{Read as _, Seek as _};
        let mut f = std::fs::File::open(dir.join("instances").join(id).join("console.log")).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(std::io::SeekFrom::Start(len.saturating_sub(CONSOLE_MAX as u64))).ok()?;
        let mut tail = Vec::with_capacity(CONSOLE_MAX);
        f.take(CONSOLE_MAX as u64).read_to_end(&mut tail).ok()?;
        tail
    };
    let tail = tail.as_slice();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetConsoleOutputResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>cgcloud-local-console</requestId><instanceId>{id}</instanceId><timestamp>{}</timestamp>\
         <output>{}</output></GetConsoleOutputResponse>",
        rfc3339(now),
        base64::engine::general_purpose::STANDARD.encode(tail)
    );
    let headers = [("Content-Type", "text/xml;charset=UTF-8"), ("x-amzn-requestid", "cgcloud-local-console")];
    Some(http::response(200, "OK", &headers, body.as_bytes()))
}

/// `secs` since the epoch as `YYYY-MM-DDThh:mm:ss.000Z` (UTC).
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// EC2 actions after which the controller has something to realize: security groups' rules
/// and memberships; instances that appear, change power or go; images made or removed;
/// volumes made, attached, detached or deleted.
const CHANGING: &[&str] = &[
    "AuthorizeSecurityGroupIngress",
    "RevokeSecurityGroupIngress",
    "ModifyInstanceAttribute",
    "ModifyNetworkInterfaceAttribute",
    "DeleteSecurityGroup",
    "RunInstances",
    "StartInstances",
    "StopInstances",
    "RebootInstances",
    "TerminateInstances",
    "RequestSpotInstances",
    "CancelSpotInstanceRequests",
    "CreateFleet",
    "CreateImage",
    "RegisterImage",
    "CopyImage",
    "DeregisterImage",
    "CreateVolume",
    "AttachVolume",
    "DetachVolume",
    "DeleteVolume",
];

/// Whether an EC2 query-protocol request body is one of the [`CHANGING`] actions.
pub fn changes(body: &[u8]) -> bool {
    // Cheap first: most requests (agents' queue polls, describes) are not EC2 mutations.
    let text = String::from_utf8_lossy(body);
    let Some(action) = text.split('&').find_map(|kv| kv.strip_prefix("Action=")) else { return false };
    CHANGING.contains(&action)
}

/// The power events in an EC2 query-protocol request body.
pub fn power_events(body: &[u8]) -> Vec<super::PowerEvent> {
    let params = query_params(body);
    let action = params.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.as_str());
    let make: fn(String) -> super::PowerEvent = match action {
        Some("StopInstances") => super::PowerEvent::Stop,
        Some("StartInstances") => super::PowerEvent::Start,
        Some("RebootInstances") => super::PowerEvent::Reboot,
        _ => return Vec::new(),
    };
    params.into_iter().filter(|(k, _)| k.starts_with("InstanceId.")).map(|(_, v)| make(v)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::PowerEvent;
    use super::*;

    /// The limit docs/security.md names, at its edge: a console read returns only its last
    /// 64 KiB.
    #[test]
    fn console_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let id = "i-0123456789abcdef0";
        std::fs::create_dir_all(dir.path().join("instances").join(id)).unwrap();
        let mut log = vec![b'a'; 100 * 1024];
        log.extend_from_slice(b"THE END");
        std::fs::write(dir.path().join("instances").join(id).join("console.log"), &log).unwrap();
        let answer = String::from_utf8(console_response(dir.path(), id).unwrap()).unwrap();
        let b64 = answer.split("<output>").nth(1).unwrap().split("</output>").next().unwrap();
        let tail = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(tail.len(), CONSOLE_MAX);
        assert!(tail.ends_with(b"THE END"));
    }

    #[test]
    fn parses_power_actions() {
        let body = b"Action=StopInstances&Version=2016-11-15&InstanceId.1=i-abc&InstanceId.2=i-def";
        assert_eq!(power_events(body), vec![PowerEvent::Stop("i-abc".into()), PowerEvent::Stop("i-def".into())]);
        assert_eq!(power_events(b"Action=RebootInstances&InstanceId.1=i-1"), vec![PowerEvent::Reboot("i-1".into())]);
        assert!(power_events(b"Action=DescribeInstances&InstanceId.1=i-1").is_empty());
        assert!(power_events(b"").is_empty());
    }

    #[test]
    fn wakes_the_controller_for_changes_only() {
        assert!(changes(b"Action=RunInstances&Version=2016-11-15&MinCount=1"));
        assert!(changes(b"Version=2016-11-15&Action=CreateImage&InstanceId=i-1"));
        assert!(changes(b"Action=AttachVolume&VolumeId=vol-1"));
        assert!(!changes(b"Action=DescribeInstances&Version=2016-11-15"));
        assert!(!changes(b"Action=CreateTags&ResourceId.1=i-1"));
        assert!(!changes(b"Action=RunInstancesX"));
        assert!(!changes(b"{\"QueueUrl\": \"Action=RunInstances\"}"));
        assert!(!changes(b""));
    }

    #[test]
    fn decodes_forms() {
        assert_eq!(url_decode("a%2Fb+c"), "a/b c");
    }

    #[test]
    fn answers_console_requests_for_its_hosts() {
        assert_eq!(
            console_request(b"Action=GetConsoleOutput&Version=2016-11-15&InstanceId=i-0abc12"),
            Some("i-0abc12".into())
        );
        assert_eq!(console_request(b"Action=GetConsoleOutput&InstanceId=i-..%2F..%2Fetc"), None);
        assert_eq!(console_request(b"Action=GetConsoleOutput&InstanceId=vol-1"), None);
        assert_eq!(console_request(b"Action=DescribeInstances&InstanceId=i-1"), None);
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("instances/i-0abc12");
        std::fs::create_dir_all(&host).unwrap();
        let mut log = vec![b'x'; CONSOLE_MAX];
        log.extend_from_slice(
            b"\n-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3 root@h\n-----END SSH HOST KEY KEYS-----\n",
        );
        std::fs::write(host.join("console.log"), &log).unwrap();
        let answer = String::from_utf8(console_response(dir.path(), "i-0abc12").unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains(&format!("Content-Length: {}", body.len())));
        let b64 = body.split("<output>").nth(1).unwrap().split("</output>").next().unwrap();
        let text = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(text.len(), CONSOLE_MAX, "only the last 64 KiB, as EC2 keeps");
        assert!(
            String::from_utf8_lossy(&text).ends_with("ssh-ed25519 AAAAC3 root@h\n-----END SSH HOST KEY KEYS-----\n")
        );
        assert!(console_response(dir.path(), "i-ffff").is_none(), "moto answers for instances that never ran here");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_237_789), "2026-12-02T18:56:29.000Z");
    }
    #[test]
    fn hostile_requests_do_not_panic() {
        for s in ["%é", "%", "%4", "%%%", "%4é", "é%41", "%zz", "a%2"] {
            let _ = url_decode(s);
        }
        assert_eq!(url_decode("%é"), "%é");
        assert_eq!(url_decode("é%41"), "éA");
        let body = "Action=StopInstances&InstanceId.1=i-%C3%A9%&InstanceId.%é=x".as_bytes();
        assert_eq!(power_events(body), vec![PowerEvent::Stop("i-é%".into()), PowerEvent::Stop("x".into())]);
    }
}
