//! Compiling a role for one OS and a set of option values into a [`Plan`]: repositories first,
//! then packages, groups and users, then the role's ordered steps (includes first). Role
//! options, role variables and `os.*` are substituted here; `box.*` and `cluster.*` are left
//! for the agent on the box.

use crate::os::{Family, OsDef};
use crate::role::{targets, OnDecl, Role, RoleStep};
use cgcloud_core::plan::{render, Action, On, Plan, Step};
use std::collections::BTreeMap;

/// Placeholders known only on the box.
pub const DEFERRED: &[&str] = &["box.", "cluster."];

#[derive(Debug, thiserror::Error)]
#[error("role '{role}' on {os}: {message}")]
pub struct CompileError {
    pub role: String,
    pub os: String,
    pub message: String,
}

fn on(o: OnDecl) -> On {
    match o {
        OnDecl::All => On::All,
        OnDecl::Leader => On::Leader,
        OnDecl::Workers => On::Workers,
    }
}

/// The compile-time variables: role vars, effective option values, and `os.*`.
pub fn variables(role: &Role, os: &OsDef, options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut v = role.vars.clone();
    v.extend(role.option_values(options));
    v.insert("role.name".into(), role.name.clone());
    // For the base role's IMDS rule: nftables' set of the users who may reach it.
    v.insert(
        "role.imds_users".into(),
        std::iter::once("root").chain(role.imds_users.iter().map(String::as_str)).collect::<Vec<_>>().join(", "),
    );
    v.insert("os.id".into(), os.id.clone());
    v.insert("os.name".into(), os.name.clone());
    v.insert("os.family".into(), os.family.as_str().to_owned());
    v.insert("os.distro".into(), os.distro.clone());
    v.insert("os.release".into(), os.release.clone());
    v.insert("os.codename".into(), os.codename.clone().unwrap_or_default());
    v.insert("os.admin_user".into(), os.admin_user.clone());
    v
}

pub fn compile(role: &Role, os: &OsDef, options: &BTreeMap<String, String>) -> Result<Plan, CompileError> {
    let cx = Cx { role, os, vars: variables(role, os, options) };
    // An option without a default must be given: say which, and what it is, before anything
    // is launched.
    if let Some((name, decl)) = role.options.iter().find(|(n, d)| d.default.is_none() && !options.contains_key(*n)) {
        return Err(cx.err(format!("option '{name}' has no default: give it with -O {name}=VALUE ({})", decl.help)));
    }
    let mut steps: Vec<Step> =
        cx.setup()?.into_iter().map(|(title, action)| Step { title, on: On::All, action }).collect();
    for s in &role.steps {
        let (on_spec, at, when) = s.placement();
        if let Some(w) = when {
            if !crate::when::parse(w).and_then(|e| e.eval(&cx.vars)).map_err(|m| cx.err(m))? {
                continue;
            }
        }
        let (title, action) = cx.action(s)?;
        // A step with several targets becomes one plan step per target (the agent picks its own).
        for t in targets(on_spec, at).map_err(|m| cx.err(m))? {
            steps.push(Step { title: title.clone(), on: on(t), action: action.clone() });
        }
    }
    let plan = Plan { role: role.name.clone(), os: os.id.clone(), family: os.family.as_str().to_owned(), steps };
    // A role whose root commands act where its users can plant symlinks does not compile, nor
    // one whose root hooks this plan leaves out or puts where a user could replace them.
    let mut found = crate::lint::check(&plan);
    if let Some(s) = role.cluster.as_ref().and_then(|c| c.scaling.as_ref()) {
        found.extend(crate::lint::hooks(&plan, &s.hooks()));
    }
    if !found.is_empty() {
        return Err(cx.err(found.join("\n")));
    }
    Ok(plan)
}

/// What compiling one role for one OS knows: the role, the OS and the compile-time variables.
struct Cx<'a> {
    role: &'a Role,
    os: &'a OsDef,
    vars: BTreeMap<String, String>,
}

impl Cx<'_> {
    fn err(&self, message: String) -> CompileError {
        CompileError { role: self.role.name.clone(), os: self.os.id.clone(), message }
    }

    /// `s` with the compile-time placeholders filled in.
    fn r(&self, s: &str) -> Result<String, CompileError> {
        render(s, &self.vars, DEFERRED)
            .map_err(|m| self.err(format!("{m} in '{}'", s.chars().take(60).collect::<String>())))
    }

    fn ro(&self, s: &Option<String>) -> Result<Option<String>, CompileError> {
        s.as_deref().map(|s| self.r(s)).transpose()
    }

    /// What comes before the role's steps, on every box: repositories, packages, groups, users.
    fn setup(&self) -> Result<Vec<(String, Action)>, CompileError> {
        let (role, os) = (self.role, self.os);
        let mut out = Vec::new();
        for repo in &role.repos {
            match (os.family, &repo.apt, &repo.dnf) {
                (Family::Apt, Some(a), _) => out.push((
                    format!("add apt repository {}", repo.name),
                    Action::AptRepo {
                        name: repo.name.clone(),
                        uri: self.r(&a.uri)?,
                        suites: a.suites.iter().map(|s| self.r(s)).collect::<Result<_, _>>()?,
                        components: a.components.clone(),
                        key_url: self.r(&a.key_url)?,
                        key_sha256: self.ro(&a.key_sha256)?,
                        key_fingerprint: self.ro(&a.key_fingerprint)?,
                    },
                )),
                (Family::Dnf, _, Some(d)) => out.push((
                    format!("add dnf repository {}", repo.name),
                    Action::DnfRepo {
                        name: repo.name.clone(),
                        baseurl: self.r(&d.baseurl)?,
                        gpgkey: self.r(&d.gpgkey)?,
                    },
                )),
                _ => {}
            }
        }
        let packages = role.packages_for(os);
        if !packages.is_empty() {
            out.push((format!("install {}", packages.join(" ")), Action::Packages { names: packages }));
        }
        for g in &role.groups {
            out.push((format!("group {}", g.name), Action::Group { name: g.name.clone(), system: g.system }));
        }
        for u in &role.users {
            out.push((
                format!("user {}", u.name),
                Action::User {
                    name: u.name.clone(),
                    groups: u.groups.clone(),
                    shell: u.shell.clone(),
                    system: u.system,
                    sudo: u.sudo,
                    home: u.home.clone(),
                },
            ));
        }
        Ok(out)
    }

    /// The title and action of one of the role's steps.
    fn action(&self, s: &RoleStep) -> Result<(String, Action), CompileError> {
        let err = |m: String| self.err(m);
        Ok(match s {
            RoleStep::File { path, content, owner, group, mode, .. } => {
                let content = self.r(content)?;
                let template = DEFERRED.iter().any(|d| content.contains(&format!("{{{{ {d}")));
                check_path(path).map_err(err)?;
                check_mode(mode).map_err(err)?;
                let action = Action::File {
                    path: self.r(path)?,
                    content,
                    owner: self.ro(owner)?,
                    group: self.ro(group)?,
                    mode: mode.clone(),
                    template,
                };
                (format!("file {path}"), action)
            }
            RoleStep::Directory { path, owner, group, mode, .. } => {
                let path = self.r(path)?;
                check_path(&path).map_err(err)?;
                check_mode(mode).map_err(err)?;
                let action = Action::Directory {
                    path: path.clone(),
                    owner: self.ro(owner)?,
                    group: self.ro(group)?,
                    mode: mode.clone(),
                };
                (format!("directory {path}"), action)
            }
            RoleStep::Download { .. } => self.download(s)?,
            RoleStep::Command { run, name, creates, unless, user, .. } => {
                let run = self.r(run)?;
                let title = name.clone().unwrap_or_else(|| {
                    format!("run {}", run.lines().next().unwrap_or("").chars().take(60).collect::<String>())
                });
                (
                    title,
                    Action::Command { run, creates: self.ro(creates)?, unless: self.ro(unless)?, user: self.ro(user)? },
                )
            }
            RoleStep::Service { name, unit, enable, start, restart_on, wait_for, .. } => {
                let mut unit = self.ro(unit)?;
                if let Some(w) = wait_for {
                    let host = self.r(&w.host)?;
                    let with_wait =
                        w.insert_into(unit.as_deref(), &host).map_err(|m| err(format!("service {name}: {m}")))?;
                    unit = Some(with_wait);
                }
                let action = Action::Service {
                    name: self.r(name)?,
                    unit,
                    enable: *enable,
                    start: *start,
                    restart_on: restart_on.iter().map(|p| self.r(p)).collect::<Result<_, _>>()?,
                };
                (format!("service {}", self.r(name)?), action)
            }
        })
    }

    fn download(&self, s: &RoleStep) -> Result<(String, Action), CompileError> {
        let RoleStep::Download {
            url,
            sha256,
            sha512,
            sha256_url,
            sha512_url,
            dest,
            extract,
            strip_components,
            mode,
            ..
        } = s
        else {
            return Err(self.err("not a download".into()));
        };
        let pinned = |digest: &Option<String>, name: &str, len: usize| -> Result<Option<String>, CompileError> {
            let Some(d) = self.ro(digest)? else { return Ok(None) };
            let d = d.to_lowercase();
            if d.len() != len || !d.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(self.err(format!("download of {url}: {name} must be {len} hex digits, not '{d}'")));
            }
            Ok(Some(d))
        };
        check_path(dest).map_err(|m| self.err(m))?;
        let url = self.r(url)?;
        let title = format!("download {}", url.rsplit('/').next().unwrap_or(&url));
        let action = Action::Download {
            sha256: pinned(sha256, "sha256", 64)?,
            sha512: pinned(sha512, "sha512", 128)?,
            sha256_url: self.ro(sha256_url)?,
            sha512_url: self.ro(sha512_url)?,
            url,
            dest: self.r(dest)?,
            extract: *extract,
            strip_components: *strip_components,
            mode: mode.clone(),
        };
        Ok((title, action))
    }
}

fn check_path(p: &str) -> Result<(), String> {
    if p.starts_with('/') || p.starts_with("{{") {
        Ok(())
    } else {
        Err(format!("path '{p}' must be absolute"))
    }
}

fn check_mode(m: &Option<String>) -> Result<(), String> {
    match m {
        Some(m) if !(3..=4).contains(&m.len()) || !m.chars().all(|c| ('0'..='7').contains(&c)) => {
            Err(format!("mode '{m}' must be octal, like \"0644\""))
        }
        _ => Ok(()),
    }
}
