//! The role lint, run by the compiler on every plan: nothing a role runs as root may act on a
//! path below one the same role gives to a non-root owner (or on that path itself, except to
//! give it). A user who owns a directory can put a symlink or a FIFO anywhere in it, and a root
//! command that then writes, chowns or reads there follows it: `install -d -o sparkbox
//! DATA/spark/work` run as root after sparkbox swapped `work` for a symlink to `/usr/local/sbin`
//! gave sparkbox that directory. Directories and files that must be made in such places go
//! through `directory` and `file` steps, which the agent applies with its safe file operations
//! (`cgcloud-agent`'s `safefs`: no symlink followed where a user could have put it).
//!
//! Paths are compared as text, placeholders such as `{{ cluster.data_dir }}` included: a role
//! writes a path the same way wherever it uses it. Shell variables (`"$dir"`) are not resolved;
//! the lint catches what a role states, not everything a script could compute.

use cgcloud_core::plan::{Action, On, Plan};

/// A path a step gives to a non-root owner.
#[derive(Debug, Clone)]
struct Owned {
    path: String,
    owner: String,
    step: String,
}

/// Every violation in `plan`, as messages naming the step, the command, the path and its owner.
pub fn check(plan: &Plan) -> Vec<String> {
    let owned = owned_paths(plan);
    let mut out = Vec::new();
    for step in &plan.steps {
        for text in root_commands(&step.action).iter().map(|t| tight(t)) {
            for o in &owned {
                for (at, below) in mentions(&text, &o.path) {
                    if !below && gives(&text, &o.path) {
                        continue;
                    }
                    let command: String = text.trim().chars().take(120).collect();
                    let shown = if below { format!("{at}, below {}", o.path) } else { at };
                    out.push(format!(
                        "step '{}' runs `{command}` as root on {shown}, which step '{}' gives to {}: {} can put a \
                         symlink there that root would follow. Make it with a `directory` or `file` step (the \
                         agent's safe file operations), or run the command as {}",
                        step.title, o.step, o.owner, o.owner, o.owner
                    ));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What keeps the role's root hooks (`[cluster.scaling]`'s, as (field, path)) from being run as
/// the role meant: a plan that does not make the file on the leader (a `when` left its step
/// out), or a hook at or below a path a step gives to a non-root owner, who could replace it.
pub fn hooks(plan: &Plan, hooks: &[(&str, &str)]) -> Vec<String> {
    let owned = owned_paths(plan);
    let mut out = Vec::new();
    for (field, hook) in hooks {
        let made = plan.steps.iter().any(|s| {
            matches!(&s.action, Action::File { path, .. } if path == hook) && matches!(s.on, On::All | On::Leader)
        });
        if !made {
            out.push(format!(
                "cluster.scaling.{field} '{hook}': this plan makes no such file on the leader (a `when` leaves its \
                 `file` step out): make it whatever the options are"
            ));
        }
        for o in &owned {
            if *hook == o.path || hook.strip_prefix(o.path.as_str()).is_some_and(|r| r.starts_with('/')) {
                out.push(format!(
                    "cluster.scaling.{field} '{hook}': step '{}' gives {} to {}, who could replace the hook that root \
                     runs. Put it where only root writes, e.g. /usr/local/sbin",
                    o.step, o.path, o.owner
                ));
            }
        }
    }
    out
}

fn is_root(user: Option<&str>) -> bool {
    matches!(user, None | Some("root") | Some("0"))
}

/// Paths that steps give to non-root owners: `directory` and `file` steps with such an owner (or
/// a group that may write, or writable by all), users' home directories, and what root commands
/// `chown` or `install -o` to someone else.
fn owned_paths(plan: &Plan) -> Vec<Owned> {
    let mut out = Vec::new();
    for step in &plan.steps {
        let mut add = |path: &str, owner: &str| {
            out.push(Owned {
                path: tight(path.trim_end_matches('/')),
                owner: owner.to_owned(),
                step: step.title.clone(),
            })
        };
        match &step.action {
            Action::Directory { path, owner, group, mode } | Action::File { path, owner, group, mode, .. } => {
                let bits = mode.as_deref().and_then(|m| u32::from_str_radix(m, 8).ok()).unwrap_or(0);
                if !is_root(owner.as_deref()) {
                    add(path, owner.as_deref().unwrap_or_default());
                } else if bits & 0o020 != 0 && !is_root(group.as_deref()) {
                    add(path, &format!("group {}", group.as_deref().unwrap_or_default()));
                } else if bits & 0o002 != 0 {
                    add(path, "every user");
                }
            }
            Action::User { name, home, system, .. } => match home {
                Some(h) => add(h, name),
                None if !system => add(&format!("/home/{name}"), name),
                None => {}
            },
            Action::Command { run, user, .. } if is_root(user.as_deref()) => {
                for (owner, paths) in given_by(&tight(run)) {
                    for p in paths {
                        add(&p, &owner);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The shell texts of `action` that run as root: a root command, any command's `unless` check, and the
/// `Exec*=` lines of a unit that run as root (no `User=`, or a `+`/`!` prefix).
fn root_commands(action: &Action) -> Vec<String> {
    match action {
        // The agent runs a command's `unless` check as root whoever the command runs as.
        Action::Command { run, unless, user, .. } => {
            is_root(user.as_deref()).then(|| run.clone()).into_iter().chain(unless.clone()).collect()
        }
        Action::Service { unit: Some(unit), .. } => {
            let mut section = String::new();
            let mut user = None;
            let mut exec = Vec::new();
            for line in unit.lines().map(str::trim) {
                if line.starts_with('[') {
                    section = line.to_owned();
                    continue;
                }
                if section != "[Service]" {
                    continue;
                }
                let Some((key, value)) = line.split_once('=') else { continue };
                let key = key.trim();
                if key == "User" {
                    user = Some(value.trim().to_owned());
                } else if key.starts_with("Exec") {
                    let value = value.trim_start();
                    let prefix: String = value.chars().take_while(|c| "-@:+!|".contains(*c)).collect();
                    exec.push((prefix.contains('+') || prefix.contains('!'), value[prefix.len()..].to_owned()));
                }
            }
            let unprivileged = !is_root(user.as_deref());
            exec.into_iter().filter(|(elevated, _)| *elevated || !unprivileged).map(|(_, cmd)| cmd).collect()
        }
        _ => Vec::new(),
    }
}

/// `text` with its placeholders written without inner spaces (`{{cluster.data_dir}}`), so that
/// a path holding one is one word.
fn tight(text: &str) -> String {
    text.replace("{{ ", "{{").replace(" }}", "}}")
}

/// Where `text` names `path` or something below it: (the path named, whether it is below).
fn mentions(text: &str, path: &str) -> Vec<(String, bool)> {
    let boundary = |c: Option<char>| c.is_none_or(|c| c.is_whitespace() || "\"'=:;,()&|<>`".contains(c));
    let mut out = Vec::new();
    for (i, _) in text.match_indices(path) {
        if !boundary(text[..i].chars().next_back()) {
            continue;
        }
        let rest = &text[i + path.len()..];
        let end = rest.find(|c: char| boundary(Some(c))).unwrap_or(rest.len());
        let tail = rest[..end].trim_end_matches('/');
        if tail.is_empty() {
            out.push((path.to_owned(), false));
        } else if tail.starts_with('/') {
            out.push((format!("{path}{tail}"), true));
        }
    }
    out
}

/// The simple commands of a script: its lines split at `;`, `&&`, `||` and `|`, as words
/// without quotes.
fn simple_commands(script: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in script.lines() {
        let line = line.replace("&&", ";").replace("||", ";").replace('|', ";");
        for cmd in line.split(';') {
            let words: Vec<String> =
                cmd.split_whitespace().map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_owned()).collect();
            if !words.is_empty() {
                out.push(words);
            }
        }
    }
    out
}

/// What the `chown` and `install -o` commands of a root script give to someone other than
/// root: (owner, paths).
fn given_by(script: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for words in simple_commands(script) {
        let Some(start) = words.iter().position(|w| w.ends_with("chown") || w.ends_with("install")) else {
            continue;
        };
        let args = &words[start + 1..];
        let owner = if words[start].ends_with("chown") {
            args.iter().find(|a| !a.starts_with('-')).map(|spec| spec.split([':', '.']).next().unwrap_or("").to_owned())
        } else {
            args.iter().enumerate().find_map(|(i, a)| match a.as_str() {
                "-o" | "--owner" => args.get(i + 1).cloned(),
                a if a.starts_with("--owner=") => Some(a["--owner=".len()..].to_owned()),
                a if a.starts_with("-o") && a.len() > 2 => Some(a[2..].to_owned()),
                _ => None,
            })
        };
        let Some(owner) = owner.filter(|o| !o.is_empty() && !is_root(Some(o))) else { continue };
        let paths: Vec<String> = args
            .iter()
            .filter(|a| a.starts_with('/') || a.starts_with("{{"))
            .map(|a| a.trim_end_matches('/').to_owned())
            .collect();
        out.push((owner, paths));
    }
    out
}

/// True if `text` is a command that gives `path` to a non-root owner (and nothing more there).
fn gives(text: &str, path: &str) -> bool {
    given_by(text).iter().any(|(_, paths)| paths.iter().any(|p| p == path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cgcloud_core::plan::Step;

    fn plan(steps: Vec<Action>) -> Plan {
        Plan {
            role: "r".into(),
            os: "debian-12".into(),
            family: "apt".into(),
            steps: steps
                .into_iter()
                .enumerate()
                .map(|(i, action)| Step { title: format!("step {i}"), on: On::All, action })
                .collect(),
        }
    }

    fn dir(path: &str, owner: &str) -> Action {
        Action::Directory { path: path.into(), owner: Some(owner.into()), group: None, mode: None }
    }

    fn unit(text: &str) -> Action {
        Action::Service { name: "s".into(), unit: Some(text.into()), enable: true, start: true, restart_on: vec![] }
    }

    fn root(run: &str) -> Action {
        Action::Command { run: run.into(), creates: None, unless: None, user: None }
    }

    /// The spark-box unit that let sparkbox become root: a `+` line making directories below one
    /// sparkbox owns.
    #[test]
    fn root_unit_lines_below_a_users_directory_are_refused() {
        let d = "{{ cluster.data_dir }}";
        let p = plan(vec![
            dir(&format!("{d}/spark"), "sparkbox"),
            unit(&format!(
                "[Service]\nUser=sparkbox\nExecStartPre=+/usr/bin/install -d -o sparkbox {d}/spark {d}/spark/work\nExecStart=/opt/x {d}/spark/work\n"
            )),
        ]);
        let found = check(&p);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("/spark/work, below {{cluster.data_dir}}/spark"), "{}", found[0]);
        assert!(found[0].contains("step 0") && found[0].contains("gives to sparkbox"), "{}", found[0]);
        // Giving the directory itself, in a root-owned parent, is what the line is for.
        let ok = plan(vec![
            dir(&format!("{d}/spark"), "sparkbox"),
            unit(&format!("[Service]\nUser=sparkbox\nExecStartPre=+/usr/bin/install -d -o sparkbox {d}/spark\n")),
        ]);
        assert!(check(&ok).is_empty(), "{:?}", check(&ok));
        // Without User=, every Exec line runs as root.
        let p = plan(vec![dir("/srv/data", "app"), unit("[Service]\nExecStart=/usr/bin/tar -xf x -C /srv/data/sub\n")]);
        assert_eq!(check(&p).len(), 1);
        // Unprivileged lines of a unit with User= are the user's own business.
        let p = plan(vec![
            dir("/srv/data", "app"),
            unit("[Service]\nUser=app\nExecStart=/usr/bin/tar -xf x -C /srv/data/sub\n"),
        ]);
        assert!(check(&p).is_empty());
    }

    #[test]
    fn root_commands_in_homes_and_chowned_paths_are_refused() {
        let user = Action::User {
            name: "bob".into(),
            groups: vec![],
            shell: "/bin/bash".into(),
            system: false,
            sudo: false,
            home: None,
        };
        let p = plan(vec![user, root("echo x >> /home/bob/.profile")]);
        assert_eq!(check(&p).len(), 1, "{:?}", check(&p));
        // A path a root script chowns to a user is the user's from then on.
        let p =
            plan(vec![root("mkdir -p /opt/app && chown -R app:app /opt/app"), root("tar -xzf a.tgz -C /opt/app/lib")]);
        let found = check(&p);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("step 1"), "{}", found[0]);
        let p = plan(vec![root("install -d -m 0750 -o jenkins -g jenkins /var/lib/j"), root("cp x /var/lib/j")]);
        assert_eq!(check(&p).len(), 1, "{:?}", check(&p));
        // A group-writable directory is its group's; a root-owned one is nobody's.
        let shared = Action::Directory {
            path: "/srv/shared".into(),
            owner: None,
            group: Some("team".into()),
            mode: Some("2775".into()),
        };
        assert_eq!(check(&plan(vec![shared, root("touch /srv/shared/x")])).len(), 1);
        let mine = Action::Directory { path: "/srv/mine".into(), owner: Some("root".into()), group: None, mode: None };
        assert!(check(&plan(vec![mine, root("touch /srv/mine/x")])).is_empty());
        // A path that merely starts with the same characters is another path.
        assert!(check(&plan(vec![dir("/srv/a", "app"), root("touch /srv/ab/x")])).is_empty());
        // A check run as root counts too: it can hang on a FIFO or read through a symlink.
        let unless = Action::Command {
            run: "true".into(),
            creates: None,
            unless: Some("grep -q x /srv/a/conf".into()),
            user: None,
        };
        assert_eq!(check(&plan(vec![dir("/srv/a", "app"), unless])).len(), 1);
        let as_app =
            Action::Command { run: "touch /srv/a/x".into(), creates: None, unless: None, user: Some("app".into()) };
        assert!(check(&plan(vec![dir("/srv/a", "app"), as_app])).is_empty());
        // ... but its `unless` check runs as root.
        let checked_as_root = Action::Command {
            run: "touch /srv/a/x".into(),
            creates: None,
            unless: Some("test -s /srv/a/x".into()),
            user: Some("app".into()),
        };
        assert_eq!(check(&plan(vec![dir("/srv/a", "app"), checked_as_root])).len(), 1);
    }
}
