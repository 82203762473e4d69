//! `bench imds [N]`: what the sealed local cloud costs a box. On a box created with the agent:
//! N times (default 200) the credentials an agent fetches from IMDS (token, role, credentials:
//! three requests), timed inside the box; then N signed DescribeKeyPairs (what every agent
//! calls) through the guests' door (signature verified, request parsed, IAM policy evaluated,
//! passed on) against N through this machine's door (a plain relay), each on a new connection,
//! p50 and p99 of each and the difference; and the same for a CreateTags of the box on itself,
//! whose evaluation looks up the box's tags and instance profile in moto.

use crate::{cgcloud, percentile, BenchUser};
use anyhow::{bail, Context as _, Result};
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant, SystemTime};

/// Timed inside the box: one process, so that process start-up is not measured.
const IN_BOX: &str = r#"
import json, sys, time, urllib.request
m = "http://169.254.169.254/latest"
def call(method, path, headers):
    r = urllib.request.Request(m + path, method=method, headers=headers)
    with urllib.request.urlopen(r, timeout=5) as a:
        return a.read().decode()
out = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    tok = call("PUT", "/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    h = {"X-aws-ec2-metadata-token": tok}
    role = call("GET", "/meta-data/iam/security-credentials/", h).split()[0]
    json.loads(call("GET", "/meta-data/iam/security-credentials/" + role, h))["AccessKeyId"]
    out.append((time.perf_counter() - t) * 1000)
print(json.dumps(out))
"#;

pub(crate) async fn imds(n: usize) -> Result<()> {
    let user = BenchUser::new()?;
    let h = user.home();
    let role = "generic-debian-bookworm-box";
    let b: serde_json::Value = serde_json::from_str(&cgcloud(&h, &["-q", "--output", "json", "create", role])?)?;
    let id = b["instance_id"].as_str().context("no instance id")?.to_owned();

    let quoted = format!("'{}'", IN_BOX.replace('\'', r"'\''"));
    let got = cgcloud(&h, &["ssh", role, "-I", &id, "--", &format!("python3 -c {quoted} {n}")])?;
    let mut fetch: Vec<f64> = serde_json::from_str(got.trim()).context("the box's timings")?;
    fetch.sort_by(f64::total_cmp);

    // The credentials IMDS issued to the box (root's file): this machine signs as the box.
    let lc = cgcloud_localcloud::LocalCloud::new(cgcloud_localcloud::LocalCloud::default_dir());
    let state = lc.state().context("the local cloud is down")?;
    let issued = cgcloud_localcloud::imds::load(&lc.run_dir());
    let (key, c) = issued.iter().find(|(_, c)| c.instance_id == id).context("no credentials issued to the box")?;
    let creds = cgcloud_core::sigv4::Credentials {
        access_key_id: key.clone(),
        secret_access_key: c.secret_access_key.clone(),
        session_token: Some(c.session_token.clone()),
    };
    let describe = "Action=DescribeKeyPairs&Version=2016-11-15";
    let tag = format!(
        "Action=CreateTags&Version=2016-11-15&ResourceId.1={id}&Tag.1.Key={}&Tag.1.Value=bench",
        cgcloud_core::tags::ACTIVE_AT.replace(':', "%3A")
    );
    let guests_door = format!("{}:{}", cgcloud_localcloud::net::GATEWAY, state.port);
    let own_door = format!("127.0.0.1:{}", state.port);
    let guest = timed(&guests_door, n, Some(&creds), describe)?;
    let own = timed(&own_door, n, None, describe)?;
    let guest_tag = timed(&guests_door, n, Some(&creds), &tag)?;
    let own_tag = timed(&own_door, n, None, &tag)?;
    cgcloud(&h, &["-q", "terminate", role, "-I", &id])?;

    println!("imds: {n} rounds on one box (release build: `cargo run --release -p xtask`)");
    println!("{:<44} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!(
        "{:<44} {:>9.2} {:>9.2}",
        "IMDS credentials (token, role, credentials)",
        percentile(&fetch, 0.5),
        percentile(&fetch, 0.99)
    );
    let row = |name: &str, v: &[f64]| println!("{name:<44} {:>9.2} {:>9.2}", percentile(v, 0.5), percentile(v, 0.99));
    let added = |name: &str, guest: &[f64], own: &[f64]| {
        println!(
            "{name:<44} {:>9.2} {:>9.2}",
            percentile(guest, 0.5) - percentile(own, 0.5),
            percentile(guest, 0.99) - percentile(own, 0.99)
        )
    };
    row("DescribeKeyPairs, guests' door (signed)", &guest);
    row("DescribeKeyPairs, this machine's door", &own);
    added("added by the guests' door", &guest, &own);
    row("CreateTags on itself, guests' door", &guest_tag);
    row("CreateTags on itself, this machine's door", &own_tag);
    added("added (IAM looks up tags and profile)", &guest_tag, &own_tag);
    Ok(())
}

/// `n` requests with form `body` to `addr`, each on a connection of its own (moto closes every connection
/// after one answer, which this machine's door passes on), signed with `creds` if given; sorted
/// latencies in ms, connecting included.
fn timed(addr: &str, n: usize, creds: Option<&cgcloud_core::sigv4::Credentials>, body: &str) -> Result<Vec<f64>> {
    let ct = "application/x-www-form-urlencoded; charset=utf-8";
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut head =
            format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n", body.len());
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
        let c = creds.cloned().unwrap_or(cgcloud_core::sigv4::Credentials {
            access_key_id: "localcloud".into(),
            secret_access_key: "localcloud".into(),
            session_token: None,
        });
        for (k, v) in cgcloud_core::sigv4::sign(
            "POST",
            "/",
            "",
            &[("host", addr), ("content-type", ct)],
            body.as_bytes(),
            cgcloud_localcloud::REGION,
            "ec2",
            &c,
            &cgcloud_core::sigv4::amz_date(now),
        ) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr)?;
        // As HTTP clients do (urllib3, the AWS SDKs): head and body go out at once.
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        read_answer(&mut s)?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Reads one HTTP answer with a Content-Length; fails on anything but 200.
fn read_answer(s: &mut std::net::TcpStream) -> Result<()> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("the connection closed mid-answer");
        }
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            bail!("answer: {}", String::from_utf8_lossy(&got));
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .context("an answer without a length")?;
        if got.len() >= end + 4 + len {
            return Ok(());
        }
    }
}
