//! What a running local cloud costs the machine: the CPU time moto and the controller take and
//! the requests per second the controller's proxy passes, measured over a short window. An
//! idle local cloud should cost (nearly) nothing: its cores are the hosts' cores.

use crate::RunState;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Measured over `window_s` seconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cost {
    pub window_s: f64,
    /// Percent of one core.
    pub moto_cpu_percent: Option<f64>,
    pub controller_cpu_percent: Option<f64>,
    pub requests_per_s: Option<f64>,
}

/// CPU time (user and system) process `pid` has used, in seconds; /proc counts in USER_HZ,
/// which is 100 on Linux.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The number of requests the proxy on 127.0.0.1:`port` has passed.
pub async fn requests(port: u16) -> Option<u64> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", crate::proxy::STATS_PATH);
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let read = async {
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
                    return v["requests"].as_u64();
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok().flatten()
}

/// Measures the cost of the running local cloud over `window`.
pub async fn measure(state: &RunState, window: Duration) -> Cost {
    let cpu = |pid: Option<u32>| pid.and_then(process_cpu_seconds);
    let (m0, c0, r0, t0) = (cpu(state.moto_pid), cpu(state.controller_pid), requests(state.port).await, Instant::now());
    tokio::time::sleep(window).await;
    let (m1, c1, r1) = (cpu(state.moto_pid), cpu(state.controller_pid), requests(state.port).await);
    let secs = t0.elapsed().as_secs_f64();
    let percent = |a: Option<f64>, b: Option<f64>| Some(((b? - a?) / secs * 100.0 * 10.0).round() / 10.0);
    Cost {
        window_s: (secs * 10.0).round() / 10.0,
        moto_cpu_percent: percent(m0, m1),
        controller_cpu_percent: percent(c0, c1),
        // The measurement's own second request is not the cloud's.
        requests_per_s: match (r0, r1) {
            (Some(a), Some(b)) => Some(((b.saturating_sub(a).saturating_sub(1)) as f64 / secs * 10.0).round() / 10.0),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_cpu_time() {
        let before = process_cpu_seconds(std::process::id()).unwrap();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = process_cpu_seconds(std::process::id()).unwrap();
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert!(process_cpu_seconds(u32::MAX).is_none());
    }
}
