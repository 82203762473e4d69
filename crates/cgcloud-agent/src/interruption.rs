//! Spot interruption notices: on a spot instance, EC2 publishes in IMDS that it will stop or
//! terminate the instance two minutes ahead. The agent polls for it and runs the role's hook,
//! `/etc/cgcloud/spot-interruption` (e.g. slurm-box drains the node so that no new job starts
//! there), once, as `hooks.rs` runs root's hooks.

use crate::hooks::HookError;
use std::path::Path;
use std::time::Duration;

/// Where a role puts its hook.
pub const HOOK: &str = "/etc/cgcloud/spot-interruption";

/// Runs the hook with the notice in `CGCLOUD_SPOT_NOTICE`, for at most 90 s (the instance has
/// 120 s left).
fn run_hook(hook: &Path, notice: &str) -> Result<(), HookError> {
    crate::hooks::run(hook, &[], &[("CGCLOUD_SPOT_NOTICE", notice.to_owned())], Duration::from_secs(90))
}

/// Polls `imds` every `every` until a notice appears, then runs `hook` (when there is one) and
/// returns the notice. IMDS errors are retried, more slowly, and reported once.
pub fn watch(imds: &str, hook: &Path, every: Duration, log: impl Fn(&str, String)) -> String {
    let http = ureq::AgentBuilder::new().timeout(Duration::from_secs(3)).build();
    let mut reported = false;
    // A token serves the polls of four minutes (its TTL is five); a failed poll drops it.
    let mut token: Option<(String, std::time::Instant)> = None;
    loop {
        if token.as_ref().is_none_or(|(_, got)| got.elapsed() > Duration::from_secs(240)) {
            token = None;
        }
        let polled = match &token {
            Some((t, _)) => crate::imds::spot_instance_action(&http, imds, t),
            None => crate::imds::token_at(&http, imds).and_then(|t| {
                let polled = crate::imds::spot_instance_action(&http, imds, &t);
                token = Some((t, std::time::Instant::now()));
                polled
            }),
        };
        if polled.is_err() {
            token = None;
        }
        match polled {
            Ok(Some(notice)) => {
                log("warning", format!("spot interruption notice: {}", notice.trim()));
                if std::fs::symlink_metadata(hook).is_ok() {
                    match run_hook(hook, &notice) {
                        Ok(()) => log("info", format!("ran {}", hook.display())),
                        Err(e) => log("error", format!("spot interruption hook not run or failed: {e}")),
                    }
                }
                return notice;
            }
            Ok(None) => std::thread::sleep(every),
            Err(e) => {
                if !reported {
                    log("warning", format!("cannot watch for spot interruptions: {e}"));
                    reported = true;
                }
                std::thread::sleep(every * 6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// An IMDS that answers 404 for the spot notice `quiet` times, then a notice.
    fn fake_imds(quiet: usize) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let polls = Arc::new(AtomicUsize::new(0));
        let seen = polls.clone();
        let tokens = Arc::new(AtomicUsize::new(0));
        let issued = tokens.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut line = String::new();
                let mut token_ok = false;
                while reader.read_line(&mut line).unwrap() > 2 {
                    token_ok |= line.to_ascii_lowercase().starts_with("x-aws-ec2-metadata-token: tok");
                    line.clear();
                }
                let (status, body) = if request.starts_with("PUT /latest/api/token") {
                    issued.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", "tok".to_owned())
                } else if request.starts_with("GET /latest/meta-data/spot/instance-action") && token_ok {
                    if seen.fetch_add(1, Ordering::SeqCst) < quiet {
                        ("404 Not Found", String::new())
                    } else {
                        ("200 OK", r#"{"action": "terminate", "time": "2026-11-30T03:00:00Z"}"#.to_owned())
                    }
                } else {
                    ("401 Unauthorized", String::new())
                };
                // The agent may have hung up already; the test looks at what it saw, not at this.
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (base, polls, tokens)
    }

    #[test]
    fn a_notice_runs_the_hook_once_with_the_notice() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let hook = dir.path().join("hook");
        std::fs::write(&hook, format!("#!/bin/sh\necho \"$CGCLOUD_SPOT_NOTICE\" >> {}\n", marker.display())).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (base, polls, tokens) = fake_imds(3);
        let notice = watch(&base, &hook, Duration::from_millis(10), |_, _| {});
        assert!(notice.contains("terminate"));
        assert_eq!(polls.load(Ordering::SeqCst), 4, "three quiet polls, then the notice");
        assert_eq!(tokens.load(Ordering::SeqCst), 1, "one token serves every poll");
        let ran = std::fs::read_to_string(&marker).unwrap();
        assert_eq!(ran.lines().count(), 1);
        assert!(ran.contains("\"action\": \"terminate\""), "{ran}");
    }

    #[test]
    fn a_hook_anyone_could_change_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let hook = dir.path().join("hook");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o777)).unwrap();
        let logged = std::sync::Mutex::new(Vec::new());
        let (base, _, _) = fake_imds(0);
        watch(&base, &hook, Duration::from_millis(10), |level, m| logged.lock().unwrap().push(format!("{level}: {m}")));
        assert!(!marker.exists(), "a world-writable hook ran as root");
        assert!(logged.lock().unwrap().iter().any(|l| l.contains("writable by group or others")), "{logged:?}");
        // A link to a safe file is refused too: the agent never follows a path someone else controls.
        let safe = dir.path().join("safe");
        std::fs::write(&safe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&safe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&safe, &link).unwrap();
        assert!(crate::hooks::hook_is_safe(&link).unwrap_err().to_string().contains("not a regular file"));
        crate::hooks::hook_is_safe(&safe).unwrap();
    }
}
