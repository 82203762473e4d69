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
    let err = |message: String| CompileError { role: role.name.clone(), os: os.id.clone(), message };
    // An option without a default must be given: say which, and what it is, before anything
    // is launched.
    if let Some((name, decl)) = role.options.iter().find(|(n, d)| d.default.is_none() && !options.contains_key(*n)) {
        return Err(err(format!("option '{name}' has no default: give it with -O {name}=VALUE ({})", decl.help)));
    }
    let vars = variables(role, os, options);
    let r = |s: &str| {
        render(s, &vars, DEFERRED).map_err(|m| err(format!("{m} in '{}'", s.chars().take(60).collect::<String>())))
    };
    let ro = |s: &Option<String>| s.as_deref().map(r).transpose();
    let mut steps = Vec::new();
    // A step with several targets becomes one plan step per target (the agent picks its own).
    let mut step = |title: String, targets: &[On], action: Action| {
        for t in targets {
            steps.push(Step { title: title.clone(), on: *t, action: action.clone() });
        }
    };

    for repo in &role.repos {
        match (os.family, &repo.apt, &repo.dnf) {
            (Family::Apt, Some(a), _) => step(
                format!("add apt repository {}", repo.name),
                &[On::All],
                Action::AptRepo {
                    name: repo.name.clone(),
                    uri: r(&a.uri)?,
                    suites: a.suites.iter().map(|s| r(s)).collect::<Result<_, _>>()?,
                    components: a.components.clone(),
                    key_url: r(&a.key_url)?,
                    key_sha256: ro(&a.key_sha256)?,
                    key_fingerprint: ro(&a.key_fingerprint)?,
                },
            ),
            (Family::Dnf, _, Some(d)) => step(
                format!("add dnf repository {}", repo.name),
                &[On::All],
                Action::DnfRepo { name: repo.name.clone(), baseurl: r(&d.baseurl)?, gpgkey: r(&d.gpgkey)? },
            ),
            _ => {}
        }
    }
    let packages = role.packages_for(os);
    if !packages.is_empty() {
        step(format!("install {}", packages.join(" ")), &[On::All], Action::Packages { names: packages });
    }
    for g in &role.groups {
        step(format!("group {}", g.name), &[On::All], Action::Group { name: g.name.clone(), system: g.system });
    }
    for u in &role.users {
        step(
            format!("user {}", u.name),
            &[On::All],
            Action::User {
                name: u.name.clone(),
                groups: u.groups.clone(),
                shell: u.shell.clone(),
                system: u.system,
                sudo: u.sudo,
                home: u.home.clone(),
            },
        );
    }
    for s in &role.steps {
        let (on_spec, at, when) = s.placement();
        if let Some(w) = when {
            if !crate::when::parse(w).and_then(|e| e.eval(&vars)).map_err(err)? {
                continue;
            }
        }
        let targets_now: Vec<On> = targets(on_spec, at).map_err(err)?.into_iter().map(on).collect();
        match s {
            RoleStep::File { path, content, owner, group, mode, .. } => {
                let content = r(content)?;
                let template = DEFERRED.iter().any(|d| content.contains(&format!("{{{{ {d}")));
                check_path(path).map_err(err)?;
                check_mode(mode).map_err(err)?;
                step(
                    format!("file {path}"),
                    &targets_now,
                    Action::File {
                        path: r(path)?,
                        content,
                        owner: ro(owner)?,
                        group: ro(group)?,
                        mode: mode.clone(),
                        template,
                    },
                )
            }
            RoleStep::Directory { path, owner, group, mode, .. } => {
                let path = r(path)?;
                check_path(&path).map_err(err)?;
                check_mode(mode).map_err(err)?;
                step(
                    format!("directory {path}"),
                    &targets_now,
                    Action::Directory { path, owner: ro(owner)?, group: ro(group)?, mode: mode.clone() },
                )
            }
            RoleStep::Download {
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
            } => {
                let pinned =
                    |digest: &Option<String>, name: &str, len: usize| -> Result<Option<String>, CompileError> {
                        let Some(d) = ro(digest)? else { return Ok(None) };
                        let d = d.to_lowercase();
                        if d.len() != len || !d.chars().all(|c| c.is_ascii_hexdigit()) {
                            return Err(err(format!("download of {url}: {name} must be {len} hex digits, not '{d}'")));
                        }
                        Ok(Some(d))
                    };
                check_path(dest).map_err(err)?;
                let url = r(url)?;
                step(
                    format!("download {}", url.rsplit('/').next().unwrap_or(&url)),
                    &targets_now,
                    Action::Download {
                        sha256: pinned(sha256, "sha256", 64)?,
                        sha512: pinned(sha512, "sha512", 128)?,
                        sha256_url: ro(sha256_url)?,
                        sha512_url: ro(sha512_url)?,
                        url,
                        dest: r(dest)?,
                        extract: *extract,
                        strip_components: *strip_components,
                        mode: mode.clone(),
                    },
                )
            }
            RoleStep::Command { run, name, creates, unless, user, .. } => {
                let run = r(run)?;
                step(
                    name.clone().unwrap_or_else(|| {
                        format!("run {}", run.lines().next().unwrap_or("").chars().take(60).collect::<String>())
                    }),
                    &targets_now,
                    Action::Command { run, creates: ro(creates)?, unless: ro(unless)?, user: ro(user)? },
                )
            }
            RoleStep::Service { name, unit, enable, start, restart_on, wait_for, .. } => {
                let mut unit = ro(unit)?;
                if let Some(w) = wait_for {
                    let host = r(&w.host)?;
                    unit =
                        Some(w.insert_into(unit.as_deref(), &host).map_err(|m| err(format!("service {name}: {m}")))?);
                }
                step(
                    format!("service {}", r(name)?),
                    &targets_now,
                    Action::Service {
                        name: r(name)?,
                        unit,
                        enable: *enable,
                        start: *start,
                        restart_on: restart_on.iter().map(|p| r(p)).collect::<Result<_, _>>()?,
                    },
                )
            }
        }
    }
    let plan = Plan { role: role.name.clone(), os: os.id.clone(), family: os.family.as_str().to_owned(), steps };
    // A role whose root commands act where its users can plant symlinks does not compile.
    let found = crate::lint::check(&plan);
    if !found.is_empty() {
        return Err(err(found.join("\n")));
    }
    Ok(plan)
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
