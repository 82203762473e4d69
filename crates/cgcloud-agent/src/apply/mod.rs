//! Applying a plan: each step is checked first and only acted on when the box differs from
//! what it describes, so a second run changes nothing. Progress goes to stdout (JSON lines
//! with `--json`, for the workstation, or text), command output to the log file.
//!
//! Here: the runner, the dispatch of steps and commands (`sh`, which, unlike `sys::run`, streams
//! a command's output into the apply log as it comes). By kind of step: `packages`, `accounts`
//! (users and groups), `files` (files, directories, downloads) and `service`.

use crate::facts::Facts;
use crate::safefs::{self, Attrs};
use cgcloud_core::plan::{render, Action, DigestAlg, On, Plan, Step};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

mod accounts;
mod files;
mod packages;
mod service;

use files::DOWNLOADS;

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Already as described.
    Ok,
    Changed,
    /// Not for this box (a cluster step on another kind of node).
    Skipped,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Changed => "changed",
            Outcome::Skipped => "skipped",
        }
    }
}

pub struct Runner {
    facts: Facts,
    log: PathBuf,
    json: bool,
    /// Files written in this run, for services' `restart_on`.
    changed_paths: BTreeSet<String>,
    apt_updated: bool,
    apt_sources_changed: bool,
    /// Tail of the output of the last command, for failure reports.
    last_output: String,
    /// Start services without waiting for them (at first boot, inside cloud-init, where
    /// waiting for a unit ordered after cloud-init would deadlock).
    pub no_block: bool,
    /// Run only the steps of a node's first boot (`on` leader/workers): the bake-time steps
    /// already ran in the image, and running them again could undo what cloud-init has put
    /// in place since (e.g. a bake step that removes a key the cluster's user data supplies).
    pub boot_only: bool,
    /// After a failed run: the step and the last line it printed, for the node's failure tag.
    pub failure: Option<String>,
    /// Where downloads wait for their checksum check: `DOWNLOADS` (a temporary one in tests).
    downloads: PathBuf,
}

/// A failed step: what went wrong and the tail of the output.
#[derive(Debug)]
pub struct StepError {
    pub message: String,
    pub output: String,
}

type StepResult = Result<Outcome, StepError>;

fn fail(message: impl Into<String>) -> StepError {
    StepError { message: message.into(), output: String::new() }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Makes again the directories a cluster node's first boot made (its role's `at = "boot"`
/// directory steps), with their owners and modes, through the same safe operations. Run at every
/// boot before the services: after a stop/start the instance store is blank, and roles must
/// never need a root command in a unit to make them (a root `install -d -o user` below a
/// directory that user owns follows the user's symlinks). Returns false before the first boot
/// (no facts yet), when `boot` does it.
pub fn restore_boot_directories(plan: &Path, facts: &Path) -> Result<bool, String> {
    let Ok(facts_text) = std::fs::read_to_string(facts) else { return Ok(false) };
    let Ok(plan_text) = std::fs::read_to_string(plan) else { return Ok(false) };
    let facts = Facts::parse(&facts_text)?;
    let mut plan: Plan = serde_json::from_str(&plan_text).map_err(|e| format!("{}: {e}", plan.display()))?;
    plan.steps.retain(|s| s.on != On::All && matches!(s.action, Action::Directory { .. }));
    let mut runner = Runner::new(facts, "/var/log/cgcloud/apply.log".into(), false);
    runner.boot_only = true;
    if runner.run(&plan, false) {
        Ok(true)
    } else {
        Err(runner.failure.take().unwrap_or_else(|| "a directory of the first boot could not be made".into()))
    }
}

impl Runner {
    pub fn new(facts: Facts, log: PathBuf, json: bool) -> Runner {
        Runner {
            facts,
            log,
            json,
            changed_paths: BTreeSet::new(),
            apt_updated: false,
            apt_sources_changed: false,
            last_output: String::new(),
            no_block: false,
            boot_only: false,
            failure: None,
            downloads: PathBuf::from(DOWNLOADS),
        }
    }

    fn emit(&self, value: serde_json::Value, text: String) {
        let mut out = std::io::stdout().lock();
        // Progress to a reader that has gone (the workstation's ssh) is nothing to stop the run for.
        let _ = if self.json { writeln!(out, "{value}") } else { writeln!(out, "{text}") };
        let _ = out.flush();
    }

    fn log_line(&self, text: &str) {
        if let Some(dir) = self.log.parent() {
            // The log is a record, not the run: a log that cannot be written loses lines, not steps.
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(f, "{text}");
        }
    }

    /// Applies every step in order; stops at the first failure. Returns success.
    pub fn run(&mut self, plan: &Plan, upgrade: bool) -> bool {
        let mut steps: Vec<Step> = Vec::new();
        if upgrade {
            steps.push(Step {
                title: "upgrade the OS packages".into(),
                on: On::All,
                action: Action::Command { run: String::new(), creates: None, unless: None, user: None },
            });
        }
        steps.extend(plan.steps.iter().cloned());
        let total = steps.len();
        let (mut changed, mut ok, mut skipped) = (0, 0, 0);
        self.log_line(&format!("=== applying plan of role {} for {} ({} steps)", plan.role, plan.os, total));
        for (i, step) in steps.iter().enumerate() {
            let n = i + 1;
            self.emit(
                serde_json::json!({"event": "start", "step": n, "total": total, "name": step.title}),
                format!("[{n}/{total}] {}", step.title),
            );
            self.log_line(&format!("--- [{n}/{total}] {}", step.title));
            let started = Instant::now();
            let result = if upgrade && i == 0 { self.upgrade(&plan.family) } else { self.step(&plan.family, step) };
            let ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(o) => {
                    match o {
                        Outcome::Changed => changed += 1,
                        Outcome::Ok => ok += 1,
                        Outcome::Skipped => skipped += 1,
                    }
                    self.log_line(&format!("    {} ({ms} ms)", o.as_str()));
                    self.emit(
                        serde_json::json!({"event": "done", "step": n, "status": o.as_str(), "ms": ms}),
                        format!("[{n}/{total}] {}: {} ({ms} ms)", step.title, o.as_str()),
                    );
                }
                Err(e) => {
                    let output = if e.output.is_empty() { tail(&self.last_output, 25) } else { e.output.clone() };
                    self.log_line(&format!("    FAILED: {}", e.message));
                    let said = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&e.message);
                    self.failure = Some(format!("step '{}' failed: {}", step.title, said.trim()));
                    self.emit(
                        serde_json::json!({"event": "failed", "step": n, "name": step.title, "error": e.message, "output": output}),
                        format!("[{n}/{total}] {}: FAILED: {}\n{output}", step.title, e.message),
                    );
                    return false;
                }
            }
        }
        self.emit(
            serde_json::json!({"event": "summary", "changed": changed, "ok": ok, "skipped": skipped}),
            format!("{changed} changed, {ok} unchanged, {skipped} skipped"),
        );
        true
    }

    /// Runs a program; fails with its output if it exits non-zero.
    fn sh(&mut self, program: &str, args: &[&str]) -> Result<String, StepError> {
        self.log_line(&format!("$ {program} {}", args.join(" ")));
        let out = Command::new(program)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        self.log_line(text.trim_end());
        self.last_output = text.clone();
        if !out.status.success() {
            return Err(StepError {
                message: format!(
                    "`{program} {}` exited with {}",
                    args.join(" ").chars().take(200).collect::<String>(),
                    out.status.code().unwrap_or(-1)
                ),
                output: tail(&text, 25),
            });
        }
        Ok(text)
    }

    /// True if the program exits 0 (output discarded).
    fn test(&self, program: &str, args: &[&str]) -> bool {
        crate::sys::succeeds(program, args)
    }

    fn render(&self, text: &str) -> Result<String, StepError> {
        render(text, &self.facts.vars, &[]).map_err(|e| fail(format!("template: {e}")))
    }

    /// The action with `{{ box.* }}` / `{{ cluster.* }}` filled in wherever they occur.
    fn render_action(&self, action: &Action) -> Result<Action, StepError> {
        fn walk(v: &mut serde_json::Value, r: &dyn Fn(&str) -> Result<String, StepError>) -> Result<(), StepError> {
            match v {
                serde_json::Value::String(s) if s.contains("{{") => *s = r(s)?,
                serde_json::Value::Array(a) => a.iter_mut().try_for_each(|x| walk(x, r))?,
                serde_json::Value::Object(o) => o.values_mut().try_for_each(|x| walk(x, r))?,
                _ => {}
            }
            Ok(())
        }
        let mut v = serde_json::to_value(action).map_err(|e| fail(e.to_string()))?;
        walk(&mut v, &|s| self.render(s))?;
        serde_json::from_value(v).map_err(|e| fail(e.to_string()))
    }

    fn step(&mut self, family: &str, step: &Step) -> StepResult {
        let role = self.facts.cluster_role();
        let applies = match step.on {
            On::All => !self.boot_only,
            On::Leader => role == "leader",
            On::Workers => role == "worker",
        };
        if !applies {
            return Ok(Outcome::Skipped);
        }
        // Fill the box and cluster facts into every text of the step (paths, units, ...).
        let action = self.render_action(&step.action)?;
        match &action {
            Action::AptRepo { name, uri, suites, components, key_url, key_sha256, key_fingerprint } => {
                self.apt_repo(name, uri, suites, components, key_url, key_sha256.as_deref(), key_fingerprint.as_deref())
            }
            Action::DnfRepo { name, baseurl, gpgkey } => {
                let content =
                    format!("[{name}]\nname={name}\nbaseurl={baseurl}\nenabled=1\ngpgcheck=1\ngpgkey={gpgkey}\n");
                self.write_file(&format!("/etc/yum.repos.d/{name}.repo"), content.as_bytes(), Some("0644"), None, None)
            }
            Action::Packages { names } => self.packages(family, names),
            Action::Group { name, system } => {
                if self.test("getent", &["group", name]) {
                    return Ok(Outcome::Ok);
                }
                let mut args = vec![];
                if *system {
                    args.push("--system");
                }
                args.push(name);
                self.sh("groupadd", &args)?;
                Ok(Outcome::Changed)
            }
            Action::User { name, groups, shell, system, sudo, home } => {
                self.user(name, groups, shell, *system, *sudo, home.as_deref())
            }
            Action::Directory { path, owner, group, mode } => {
                self.directory(path, owner.as_deref(), group.as_deref(), mode.as_deref())
            }
            Action::File { path, content, owner, group, mode, .. } => {
                self.write_file(path, content.as_bytes(), mode.as_deref(), owner.as_deref(), group.as_deref())
            }
            Action::Download { url, sha256, sha512, sha256_url, sha512_url, dest, extract, strip_components, mode } => {
                let (alg, want) = match (sha256, sha512, sha256_url, sha512_url) {
                    (Some(h), None, None, None) => (DigestAlg::Sha256, h.to_ascii_lowercase()),
                    (None, Some(h), None, None) => (DigestAlg::Sha512, h.to_ascii_lowercase()),
                    (None, None, Some(u), None) => {
                        (DigestAlg::Sha256, self.published_digest(url, u, DigestAlg::Sha256)?)
                    }
                    (None, None, None, Some(u)) => {
                        (DigestAlg::Sha512, self.published_digest(url, u, DigestAlg::Sha512)?)
                    }
                    _ => return Err(fail(format!("the download of {url} must name exactly one checksum"))),
                };
                self.download(url, alg, &want, dest, *extract, *strip_components, mode.as_deref())
            }
            Action::Command { run, creates, unless, user } => {
                if let Some(c) = creates {
                    if Path::new(c).exists() {
                        return Ok(Outcome::Ok);
                    }
                }
                if let Some(u) = unless {
                    if self.test("sh", &["-c", u]) {
                        return Ok(Outcome::Ok);
                    }
                }
                match user {
                    Some(u) => self.sh("runuser", &["-u", u, "--", "sh", "-ec", run])?,
                    None => self.sh("sh", &["-ec", run])?,
                };
                Ok(Outcome::Changed)
            }
            Action::Service { name, unit, enable, start, restart_on } => {
                self.service(name, unit.as_deref(), *enable, *start, restart_on)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(dir: &Path) -> Runner {
        Runner::new(Facts::default(), dir.join("apply.log"), true)
    }

    #[test]
    fn files_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/motd").to_string_lossy().into_owned();
        let mut r = runner(dir.path());
        assert_eq!(r.write_file(&path, b"hello\n", Some("0640"), None, None).unwrap(), Outcome::Changed);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
        assert_eq!(safefs::stat(Path::new(&path)).unwrap().mode, 0o640);
        assert_eq!(r.write_file(&path, b"hello\n", Some("0640"), None, None).unwrap(), Outcome::Ok);
        assert_eq!(
            r.write_file(&path, b"hello\n", Some("0600"), None, None).unwrap(),
            Outcome::Changed,
            "mode differs"
        );
        assert!(!r.changed_paths.is_empty());
    }

    #[test]
    fn plan_runs_are_idempotent_and_cluster_steps_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let plan: Plan = serde_json::from_value(serde_json::json!({
            "role": "t", "os": "debian-12", "family": "apt",
            "steps": [
                {"title": "dir", "do": "directory", "path": format!("{d}/data"), "owner": null, "group": null, "mode": "0750"},
                {"title": "file", "do": "file", "path": format!("{d}/data/conf"), "content": "ip={{ box.private_ip }}\n", "owner": null, "group": null, "mode": null, "template": true},
                {"title": "cmd", "do": "command", "run": format!("echo x >> {d}/count"), "creates": format!("{d}/count"), "unless": null, "user": null},
                {"title": "guarded", "do": "command", "run": format!("echo y >> {d}/other"), "creates": null, "unless": format!("test -f {d}/other"), "user": null},
                {"title": "leader", "do": "command", "on": "leader", "run": format!("touch {d}/leader"), "creates": null, "unless": null, "user": null}
            ]
        }))
        .unwrap();
        let facts = Facts::parse(r#"{"box": {"private_ip": "10.199.1.9"}, "cluster": {"role": "worker"}}"#).unwrap();
        let mut r = Runner::new(facts.clone(), dir.path().join("log"), true);
        assert!(r.run(&plan, false));
        assert_eq!(std::fs::read_to_string(format!("{d}/data/conf")).unwrap(), "ip=10.199.1.9\n");
        assert!(!Path::new(&format!("{d}/leader")).exists(), "a leader step ran on a worker");
        let mut again = Runner::new(facts, dir.path().join("log"), true);
        assert!(again.run(&plan, false));
        assert_eq!(std::fs::read_to_string(format!("{d}/count")).unwrap(), "x\n");
        assert_eq!(std::fs::read_to_string(format!("{d}/other")).unwrap(), "y\n");
        assert!(again.changed_paths.is_empty(), "second run changed {:?}", again.changed_paths);
    }

    #[test]
    fn first_boot_runs_only_boot_steps() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(format!("{d}/key"), "from user data").unwrap();
        let plan: Plan = serde_json::from_value(serde_json::json!({
            "role": "t", "os": "debian-12", "family": "apt",
            "steps": [
                {"title": "no key in the image", "do": "command", "run": format!("rm -f {d}/key"), "creates": null, "unless": format!("test ! -e {d}/key"), "user": null},
                {"title": "leader", "do": "command", "on": "leader", "run": format!("touch {d}/leader"), "creates": null, "unless": null, "user": null}
            ]
        }))
        .unwrap();
        let facts = Facts::parse(r#"{"cluster": {"role": "leader"}}"#).unwrap();
        let mut r = Runner::new(facts, dir.path().join("log"), true);
        r.boot_only = true;
        assert!(r.run(&plan, false));
        assert!(Path::new(&format!("{d}/leader")).exists());
        assert!(Path::new(&format!("{d}/key")).exists(), "a bake-time step ran again at first boot");
    }

    #[test]
    fn failures_stop_the_run_with_output() {
        let dir = tempfile::tempdir().unwrap();
        let plan: Plan = serde_json::from_value(serde_json::json!({
            "role": "t", "os": "debian-12", "family": "apt",
            "steps": [{"title": "boom", "do": "command", "run": "echo about to fail; exit 7", "creates": null, "unless": null, "user": null}]
        }))
        .unwrap();
        let mut r = runner(dir.path());
        assert!(!r.run(&plan, false));
        let log = std::fs::read_to_string(dir.path().join("apply.log")).unwrap();
        assert!(log.contains("about to fail") && log.contains("FAILED"), "{log}");
        // What a node publishes when its first boot fails: the step and its last words.
        assert_eq!(r.failure.as_deref(), Some("step 'boom' failed: about to fail"));
    }

    /// A download step of a plan, as the compiler writes it.
    fn download_step(url: &str, checksum: (&str, &str), dest: &str, extract: bool) -> Action {
        let mut step = serde_json::json!({
            "do": "download", "url": url, "dest": dest, "extract": extract, "strip_components": u32::from(extract), "mode": null
        });
        step[checksum.0] = checksum.1.into();
        serde_json::from_value(step).unwrap()
    }

    #[test]
    fn downloads_check_sha512() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(format!("{d}/tool.jar"), b"test").unwrap();
        let sha512 = DigestAlg::Sha512.digest(b"test");
        let mut r = runner(dir.path());
        r.downloads = dir.path().join("downloads");
        let url = format!("file://{d}/tool.jar");
        let step = download_step(&url, ("sha512", &sha512.to_uppercase()), &format!("{d}/opt/tool.jar"), false);
        std::fs::create_dir(format!("{d}/opt")).unwrap();
        assert_eq!(
            r.step("apt", &Step { title: "t".into(), on: On::All, action: step.clone() }).unwrap(),
            Outcome::Changed
        );
        assert_eq!(std::fs::read(format!("{d}/opt/tool.jar")).unwrap(), b"test");
        assert_eq!(r.step("apt", &Step { title: "t".into(), on: On::All, action: step }).unwrap(), Outcome::Ok);
        // A different digest fails the step and leaves nothing behind.
        let wrong = DigestAlg::Sha512.digest(b"other");
        let step = download_step(&url, ("sha512", &wrong), &format!("{d}/opt/other.jar"), false);
        let err = r.step("apt", &Step { title: "t".into(), on: On::All, action: step }).unwrap_err().message;
        assert!(err.contains(&format!("has SHA-512 {sha512}, expected {wrong}")), "{err}");
        assert!(!Path::new(&format!("{d}/opt/other.jar")).exists());
    }

    #[test]
    fn downloads_check_published_checksum_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(format!("{d}/src/spark-1.0")).unwrap();
        std::fs::write(format!("{d}/src/spark-1.0/README"), b"spark").unwrap();
        let tgz = format!("{d}/spark-1.0.tgz");
        assert!(Command::new("tar")
            .args(["-czf", &tgz, "-C", &format!("{d}/src"), "spark-1.0"])
            .status()
            .unwrap()
            .success());
        let sha512 = DigestAlg::Sha512.digest(&std::fs::read(&tgz).unwrap());
        // Apache's GNU-style .sha512, as scripts/apache-mirror and current releases publish it.
        std::fs::write(format!("{tgz}.sha512"), format!("{sha512}  spark-1.0.tgz\n")).unwrap();
        let mut r = runner(dir.path());
        r.downloads = dir.path().join("downloads");
        let url = format!("file://{tgz}");
        let home = format!("{d}/opt/spark");
        let step = Step {
            title: "t".into(),
            on: On::All,
            action: download_step(&url, ("sha512_url", &format!("{url}.sha512")), &home, true),
        };
        assert_eq!(r.step("apt", &step).unwrap(), Outcome::Changed);
        assert_eq!(std::fs::read_to_string(format!("{home}/README")).unwrap(), "spark");
        assert_eq!(std::fs::read_to_string(format!("{home}/.cgcloud-sha512")).unwrap(), sha512);
        assert_eq!(r.step("apt", &step).unwrap(), Outcome::Ok, "the marker says it is there");
        // A checksum file without this file's digest fails the step.
        std::fs::write(format!("{tgz}.sha512"), format!("{sha512}  other.tgz\n")).unwrap();
        std::fs::remove_file(format!("{home}/.cgcloud-sha512")).unwrap();
        let err = r.step("apt", &step).unwrap_err().message;
        assert!(err.contains("spark-1.0.tgz.sha512 has no SHA-512 for spark-1.0.tgz"), "{err}");
    }

    #[test]
    fn missing_facts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let r = runner(dir.path());
        assert!(r.render("{{ cluster.leader_ip }}").is_err());
    }
}
