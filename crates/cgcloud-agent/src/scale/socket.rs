//! The scale socket, `/run/cgcloud/scale.sock`: how Slurm's power-saving programs, which run as
//! the slurm user and hold no credentials, ask the root agent to launch or terminate workers.
//! A request is one line, `VERB HOSTLIST` (`up w[1-3]`); the answer one line, `ok …` or
//! `error …`. Only root and the role's group may connect (the socket is root:GROUP 0660 in a
//! root-owned directory); each caller is logged by its kernel-given uid and pid. The hostlist
//! is checked by the scaler against the cluster's bounds; here only its size and characters.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

pub const SOCKET: &str = "/run/cgcloud/scale.sock";

/// The longest request line: Slurm compresses hostlists, so even thousands of workers are short.
const MAX_LINE: u64 = 64 * 1024;
/// Connections handled at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Slurm's ResumeProgram: launch these workers.
    Up,
    /// Slurm's SuspendProgram: terminate them.
    Down,
    /// Slurm's ResumeFailProgram: they did not join in time; terminate what was launched.
    Fail,
    /// What the scaler knows, for people and tests.
    Status,
}

impl Verb {
    pub fn parse(word: &str) -> Option<Verb> {
        match word {
            "up" => Some(Verb::Up),
            "down" => Some(Verb::Down),
            "fail" => Some(Verb::Fail),
            "status" => Some(Verb::Status),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Up => "up",
            Verb::Down => "down",
            Verb::Fail => "fail",
            Verb::Status => "status",
        }
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub verb: Verb,
    pub nodes: String,
}

/// A request line as a caller wrote it.
pub fn parse(line: &str) -> Result<Ask, String> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (verb, nodes) = line.split_once(' ').unwrap_or((line, ""));
    let verb = Verb::parse(verb).ok_or("not 'up', 'down', 'fail' or 'status' followed by a hostlist")?;
    let plain = nodes.chars().all(|c| c.is_ascii_alphanumeric() || "[]-,".contains(c));
    if !plain || (verb != Verb::Status && nodes.is_empty()) {
        return Err("the hostlist holds characters no worker name has".into());
    }
    Ok(Ask { verb, nodes: nodes.to_owned() })
}

/// Listens on `path` (root:`gid`, 0660) and answers each request with `handle`'s `Ok` (`ok …`)
/// or `Err` (`error …`), in threads of their own. Returns once listening.
pub fn serve(
    path: &Path,
    gid: u32,
    handle: impl Fn(Ask) -> Result<String, String> + Send + Sync + 'static,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    cgcloud_core::fsutil::remove_file_if_exists(path)?;
    let listener = UnixListener::bind(path)?;
    std::os::unix::fs::chown(path, Some(0).filter(|_| rustix::process::geteuid().is_root()), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    crate::conns::serve_each(
        move || listener.accept().map(|(s, _)| s),
        MAX_CONNECTIONS,
        move |stream| answer(stream, &handle),
    );
    Ok(())
}

fn answer(stream: UnixStream, handle: &(impl Fn(Ask) -> Result<String, String> + ?Sized)) {
    let who = rustix::net::sockopt::socket_peercred(&stream)
        .map(|c| format!("uid {} pid {}", c.uid.as_raw(), c.pid.as_raw_nonzero()))
        .unwrap_or_else(|_| "an unknown caller".into());
    // A caller that sends nothing must not hold the connection for ever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10))); // failing to set it only risks a stuck thread
    let mut line = String::new();
    let read = BufReader::new(&stream).take(MAX_LINE).read_line(&mut line);
    let reply = match read {
        Ok(_) if line.ends_with('\n') => match parse(&line) {
            Ok(ask) => {
                crate::log::log("info", format!("scale: {} {} from {who}", ask.verb.as_str(), ask.nodes));
                match handle(ask) {
                    Ok(said) => format!("ok {said}"),
                    Err(why) => format!("error {why}"),
                }
            }
            Err(why) => format!("error {why}"),
        },
        _ => "error a request is one line, ending in a newline".into(),
    };
    let reply: String = cgcloud_core::tags::printable(&reply);
    // The caller may have gone; there is no one else to tell.
    let _ = (&stream).write_all(format!("{reply}\n").as_bytes());
}

/// Why a request could not be made, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("{path}: {error} (is the agent running on the cluster's leader?)")]
    Connect { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("the agent refused: {0}")]
    Refused(String),
}

/// Sends one request and returns the agent's answer (`ok …` stripped). Waits as long as a
/// resume may take (every type and zone tried).
pub fn ask(path: &Path, verb: Verb, nodes: &str) -> Result<String, AskError> {
    let p = || path.display().to_string();
    let mut s = UnixStream::connect(path).map_err(|error| AskError::Connect { path: p(), error })?;
    let io = |error| AskError::Io { path: p(), error };
    s.set_read_timeout(Some(Duration::from_secs(900))).map_err(io)?;
    s.write_all(format!("{} {nodes}\n", verb.as_str()).as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(&s).take(MAX_LINE).read_line(&mut line).map_err(io)?;
    let line = line.trim_end();
    match line.strip_prefix("ok") {
        Some(said) => Ok(said.trim_start().to_owned()),
        None => Err(AskError::Refused(line.strip_prefix("error ").unwrap_or(line).to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_plain_line() {
        assert_eq!(parse("up w[1-3,5]\n"), Ok(Ask { verb: Verb::Up, nodes: "w[1-3,5]".into() }));
        assert_eq!(parse("status\n").unwrap().verb, Verb::Status);
        for bad in ["up\n", "launch w1\n", "up w1;reboot\n", "up w1 w2\n", "up $(id)\n", "down w\u{1b}1\n"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_request_gets_the_handlers_answer_and_the_socket_is_the_groups() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/scale.sock");
        let gid = rustix::process::getegid().as_raw();
        serve(&path, gid, |a| match a.verb {
            Verb::Up => Ok(format!("launched {}", a.nodes)),
            _ => Err("no".into()),
        })
        .unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.permissions().mode() & 0o777, meta.gid()), (0o660, gid));
        assert_eq!(ask(&path, Verb::Up, "w[1-2]").unwrap(), "launched w[1-2]");
        assert!(matches!(ask(&path, Verb::Down, "w1"), Err(AskError::Refused(r)) if r == "no"));
        // A raw client that breaks the protocol gets an error, and the server goes on.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"up w1\x1b[2J\n").unwrap();
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply).unwrap();
        assert!(reply.starts_with("error ") && !reply.trim_end().chars().any(char::is_control), "{reply:?}");
        assert_eq!(ask(&path, Verb::Up, "w3").unwrap(), "launched w3");
        // Served again (an agent restart): the stale socket is replaced.
        serve(&path, gid, |_| Ok("again".into())).unwrap();
        assert_eq!(ask(&path, Verb::Status, "").unwrap(), "again");
    }
}
