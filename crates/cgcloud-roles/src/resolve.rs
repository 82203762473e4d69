//! Resolving a role: merging its `include`s in order (the merge rules are in `role.rs`),
//! then checking everything that can be checked before an OS or option values are chosen, so
//! that a mistake is reported when the role is loaded, naming its file (and its step).

use crate::role::{self, merge_values, Role, RoleFile};
use crate::{parse_err, when, Registry, RoleError};
use std::collections::BTreeMap;

impl Registry {
    pub(crate) fn resolve(&self, name: &str) -> Result<Role, RoleError> {
        let mut merged = toml::Value::Table(toml::Table::new());
        self.merge_into(name, &mut Vec::new(), &mut merged)?;
        let loaded = &self.roles[name];
        let table = merged.as_table_mut().ok_or_else(|| parse_err(name, "not a table"))?;
        table.insert("name".into(), loaded.file.name.clone().into());
        table.insert("description".into(), loaded.file.description.clone().into());
        let file: RoleFile = merged.try_into().map_err(|e| parse_err(&loaded.source, e))?;
        let os = file
            .os
            .iter()
            .map(|id| {
                self.oses.get(id).cloned().ok_or_else(|| RoleError::UnknownOs {
                    role: name.to_owned(),
                    os: id.clone(),
                    known: self.oses.keys().cloned().collect::<Vec<_>>().join(", "),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if os.is_empty() {
            return Err(RoleError::NoOs(name.to_owned()));
        }
        check(&file, &loaded.source)?;
        Ok(Role {
            name: file.name,
            description: file.description,
            source: loaded.source.clone(),
            os,
            default_user: file.default_user,
            imds_users: file.imds_users,
            legacy: file.legacy,
            instance: file.instance,
            packages: file.packages,
            ports: file.ports,
            forwards: file.forwards,
            options: file.options,
            iam: file.iam,
            vars: file.vars,
            repos: file.repos,
            groups: file.groups,
            users: file.users,
            steps: file.steps,
            agent: file.agent,
            cluster: file.cluster,
            key_pairs: file.key_pairs,
            jenkins_agent: file.jenkins_agent,
        })
    }

    fn merge_into(&self, name: &str, stack: &mut Vec<String>, out: &mut toml::Value) -> Result<(), RoleError> {
        if let Some(pos) = stack.iter().position(|n| n == name) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(name.to_owned());
            return Err(RoleError::Cycle(cycle));
        }
        let loaded = self.roles.get(name).ok_or_else(|| RoleError::UnknownInclude {
            role: stack.last().cloned().unwrap_or_default(),
            include: name.to_owned(),
        })?;
        stack.push(name.to_owned());
        for inc in &loaded.file.include {
            self.merge_into(inc, stack, out)?;
        }
        stack.pop();
        let mut own = loaded.value.clone();
        if let Some(t) = own.as_table_mut() {
            for k in ["name", "description", "abstract", "include", "overrides", "variants"] {
                t.remove(k);
            }
        }
        merge_values(out, own);
        Ok(())
    }
}

/// Everything about a merged role file that holds whatever OS and option values are chosen.
fn check(file: &RoleFile, source: &str) -> Result<(), RoleError> {
    for port in &file.ports {
        port.check().map_err(|message| parse_err(source, message))?;
    }
    for forward in &file.forwards {
        forward.check().map_err(|message| parse_err(source, message))?;
        if let Some(o) = forward.option.as_ref().filter(|o| !file.options.contains_key(*o)) {
            return Err(parse_err(source, format!("forwards: '{o}' is not an option of the role")));
        }
    }
    if let Some(c) = &file.cluster {
        c.check().map_err(|message| parse_err(source, message))?;
        if let Some(s) = &c.scaling {
            s.check_hooks(&file.steps).map_err(|message| parse_err(source, message))?;
        }
    }
    for secret in file.cluster.iter().flat_map(|c| &c.secrets) {
        secret.check().map_err(|message| parse_err(source, message))?;
    }
    for user in &file.imds_users {
        if user == "root" || !role::valid_user_name(user) {
            return Err(parse_err(
                source,
                format!("imds_users: '{user}' is not a user name (root may always reach IMDS)"),
            ));
        }
        // The base role's rule names users, and loads before any step: only users the plan
        // makes first (not a package installed by a later step) exist by then.
        if !file.users.iter().any(|u| &u.name == user) {
            return Err(parse_err(
                source,
                format!("imds_users: '{user}' must be a user of the role ([[users]]), so that it exists when the IMDS rule loads"),
            ));
        }
    }
    for kp in &file.key_pairs {
        kp.check().map_err(|message| parse_err(source, message))?;
    }
    if let Some(j) = &file.jenkins_agent {
        j.check().map_err(|message| parse_err(source, message))?;
    }
    if file.instance.persistent_volume_gb == Some(0) {
        return Err(parse_err(source, "instance.persistent_volume_gb must be at least 1"));
    }
    for st in &file.iam {
        st.render("/", "/cgcloud/", "").map_err(|m| parse_err(source, m))?;
    }
    // Step placement and conditions are checked here, so that a mistake is reported when
    // the role is loaded, not when some OS or option value happens to reach it.
    let kinds = when_kinds(&file.options, &file.vars);
    for (i, step) in file.steps.iter().enumerate() {
        let (on, at, when) = step.placement();
        let at_step = |m: String| parse_err(source, format!("step {}: {m}", i + 1));
        role::targets(on, at).map_err(at_step)?;
        if let Some(w) = when {
            when::parse(w).and_then(|e| e.check(&kinds)).map_err(at_step)?;
        }
    }
    for (opt, decl) in &file.options {
        if let Some(p) = &decl.pattern {
            regex::Regex::new(p).map_err(|e| parse_err(source, format!("option '{opt}': bad pattern: {e}")))?;
        }
        if let Some(d) = &decl.default {
            decl.allows(&d.to_string()).map_err(|expected| {
                parse_err(source, format!("option '{opt}': the default '{d}' is not {expected}"))
            })?;
        }
    }
    Ok(())
}

/// What each name a `when` may use is: `bool` options and `true`/`false` variables are
/// booleans; other options and variables, `os.*` and `role.name` are text.
fn when_kinds(
    options: &BTreeMap<String, role::OptionDecl>,
    vars: &BTreeMap<String, String>,
) -> BTreeMap<String, when::Kind> {
    let mut kinds: BTreeMap<String, when::Kind> =
        ["os.id", "os.name", "os.family", "os.distro", "os.release", "os.codename", "os.admin_user", "role.name"]
            .into_iter()
            .map(|n| (n.to_owned(), when::Kind::Text))
            .collect();
    for (name, value) in vars {
        let k = if value == "true" || value == "false" { when::Kind::Bool } else { when::Kind::Text };
        kinds.insert(name.clone(), k);
    }
    for (name, decl) in options {
        let k = if decl.option_type == role::OptionType::Bool { when::Kind::Bool } else { when::Kind::Text };
        kinds.insert(name.clone(), k);
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::reg_with;
    use cgcloud_core::plan::Action;

    #[test]
    fn forwards_are_checked_when_the_role_loads() {
        let role = |forward: &str| {
            let text = format!(
                "name='r'\ndescription='d'\nos=['debian-12']\n[options.p]\ntype='int'\ndefault=1\nhelp='h'\n\
                 [[forwards]]\ndescription='UI'\n{forward}\n"
            );
            reg_with(&[("r.toml", &text)]).and_then(|reg| reg.role("r"))
        };
        let r = role("port=80\non='leader'").unwrap();
        assert!(r.forwards[0].applies_to(None) && r.forwards[0].applies_to(Some(0)));
        assert!(!r.forwards[0].applies_to(Some(3)), "a leader's UI is not a worker's");
        assert_eq!(r.forwards[0].host, "localhost");
        for (bad, says) in [
            ("port=0", "needs a port"),
            ("port=80\nhost='-oProxyCommand=x'", "not a host name"),
            ("port=80\nhost='a b'", "not a host name"),
            ("port=80\noption='nope'", "'nope' is not an option"),
            ("port=80\non='everyone'", "unknown variant"),
        ] {
            let err = role(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn steps_name_their_phase_targets_and_conditions() {
        let role = |steps: &str| {
            let text = format!(
                "name='r'\ndescription='d'\nos=['debian-12']\n\
                 [options.hdfs]\ntype='bool'\ndefault=true\nhelp='h'\n\
                 [options.scheduler]\ntype='string'\ndefault='slurm'\nhelp='h'\n{steps}"
            );
            reg_with(&[("r.toml", &text)]).and_then(|reg| reg.role("r"))
        };
        let step = |extra: &str| format!("[[steps]]\ndo='command'\nrun='true'\ncreates='/x'\n{extra}\n");
        let plan = |extra: &str| {
            let r = role(&step(extra)).unwrap();
            let os = r.os[0].clone();
            crate::compile::compile(&r, &os, &BTreeMap::new()).unwrap()
        };
        let ons = |extra: &str| -> Vec<String> {
            plan(extra).steps.iter().filter(|s| s.title == "run true").map(|s| format!("{:?}", s.on)).collect()
        };
        assert_eq!(ons(""), ["All"]);
        assert_eq!(ons("at='boot'"), ["Leader", "Workers"]);
        assert_eq!(ons("at='boot'\non=['workers', 'leader']"), ["Workers", "Leader"]);
        assert_eq!(ons("at='boot'\non='leader'"), ["Leader"]);
        assert_eq!(ons("at='boot'\nwhen='hdfs and scheduler == \"slurm\"'"), ["Leader", "Workers"]);
        assert!(ons("when='not hdfs'").is_empty());
        assert!(ons("when='scheduler != \"slurm\"'").is_empty());
        // Mistakes are reported when the role is loaded, naming the step.
        for (extra, says) in [
            ("at='bake'\non='leader'", "cannot name leader or workers"),
            ("at='boot'\non=['all', 'leader']", "cannot combine"),
            ("when='hfds'", "'hfds', which is not an option"),
            ("when='scheduler'", "compare it"),
            ("when='hdfs =='", "quoted value"),
        ] {
            let err = role(&step(extra)).unwrap_err().to_string();
            assert!(err.contains("step 1") && err.contains(says), "{extra}: {err}");
        }
    }

    /// Each retired form of the role language is an error that names the file and the step
    /// and says what to write instead (issue 29).
    #[test]
    fn old_syntax_says_what_to_write_instead() {
        let load = |step: &str| {
            let text = format!(
                "name='r'\ndescription='d'\nos=['debian-12']\n\
                 [options.src]\ntype='string'\ndefault='apache'\nhelp='h'\n\
                 [[steps]]\ndo='directory'\npath='/srv'\n\
                 [[steps]]\ndo='command'\nname='the step'\nrun='true'\n{step}\n"
            );
            reg_with(&[("plugin/r.toml", &text)]).and_then(|reg| reg.role("r")).map(|_| ())
        };
        for (step, says) in [
            ("unless='false'", "`unless = \"false\"` is gone: write `always = true`"),
            ("unless=' false '", "write `always = true`"),
            (
                "creates='/x'\non='leader'",
                "`on = \"leader\"` steps run at a cluster node's first boot: add `at = \"boot\"`",
            ),
            (
                "creates='/x'\non=['workers']",
                "`on = [\"workers\"]` steps run at a cluster node's first boot: add `at = \"boot\"`",
            ),
            ("creates='/x'\nunless='test {{ src | shell }} != pypi'", "write `when = \"src == 'pypi'\"`"),
            ("unless='test {{ src }} = apache'", "write `when = \"src != 'apache'\"`"),
            ("", "a command needs `creates = PATH`"),
            ("always=true\ncreates='/x'", "drop `creates` and `unless`, or `always`"),
        ] {
            let err = load(step).unwrap_err().to_string();
            assert!(err.contains("plugin/r.toml: step 2 (command 'the step'): "), "{step}: {err}");
            assert!(err.contains(says), "{step}: {err}");
        }
        // What to write instead loads; an `unless` that asks the box stays an `unless`.
        for step in [
            "always=true",
            "creates='/x'\nat='boot'\non='leader'",
            "creates='/x'\nwhen=\"src == 'pypi'\"",
            "unless='test {{ cluster.role }} != leader'",
            "unless='test -e /x'",
        ] {
            load(step).unwrap_or_else(|e| panic!("{step}: {e}"));
        }
    }

    #[test]
    fn downloads_name_one_checksum() {
        let plan = |checksum: &str| {
            let text = format!(
                "name='r'\ndescription='d'\nos=['debian-12']\n[vars]\nurl='https://example.org/x-1.tgz'\n\
                 [[steps]]\ndo='download'\nurl='{{{{ url }}}}'\ndest='/opt/x'\nextract=true\n{checksum}\n"
            );
            let reg = reg_with(&[("r.toml", &text)])?;
            let r = reg.role("r")?;
            crate::compile::compile(&r, &r.os[0], &BTreeMap::new()).map_err(|e| parse_err("r.toml", e))
        };
        let h512 = "AB".repeat(64);
        let p = plan(&format!("sha512='{h512}'")).unwrap();
        let download = |p: &cgcloud_core::plan::Plan| p.steps.last().unwrap().action.clone();
        assert!(
            matches!(download(&p), Action::Download { sha512: Some(h), sha256: None, .. } if h == h512.to_lowercase())
        );
        let p = plan("sha512_url='{{ url }}.sha512'").unwrap();
        assert!(
            matches!(download(&p), Action::Download { sha512_url: Some(u), .. } if u == "https://example.org/x-1.tgz.sha512")
        );
        for (checksum, says) in [
            ("", "step 1 (download {{ url }}): a download names exactly one checksum"),
            ("sha256='ab'\nsha512_url='x'", "a download names exactly one checksum"),
            ("sha512='abc'", "sha512 must be 128 hex digits"),
            ("sha256='{}'", "sha256 must be 64 hex digits"),
        ] {
            let checksum = checksum.replace("{}", &h512);
            let err = plan(&checksum).unwrap_err().to_string();
            assert!(err.contains("r.toml") && err.contains(says), "{checksum}: {err}");
        }
    }

    #[test]
    fn always_runs_at_every_apply() {
        let text = "name='r'\ndescription='d'\nos=['debian-12']\n[[steps]]\ndo='command'\nrun='sshd -t'\nalways=true\n";
        let reg = reg_with(&[("r.toml", text)]).unwrap();
        let r = reg.role("r").unwrap();
        let plan = crate::compile::compile(&r, &r.os[0], &BTreeMap::new()).unwrap();
        let step = plan.steps.iter().find(|s| s.title == "run sshd -t").unwrap();
        // No guard: the agent runs a command without `creates` or `unless` every time.
        assert_eq!(
            step.action,
            cgcloud_core::plan::Action::Command { run: "sshd -t".into(), creates: None, unless: None, user: None }
        );
    }

    #[test]
    fn cluster_secrets_are_checked_when_the_role_loads() {
        let role = |secret: &str| {
            let text = format!(
                "name='c'\ndescription='d'\nos=['debian-12']\n[cluster]\ntype='c'\nleader='c-leader'\nworker='c-worker'\n\
                 [[cluster.secrets]]\n{secret}\n"
            );
            reg_with(&[("c.toml", &text)]).and_then(|reg| reg.role("c"))
        };
        let ok = role("path='/etc/munge/munge.key'\nbytes=1024\nowner='munge:munge'").unwrap();
        let s = &ok.cluster.unwrap().secrets[0];
        assert_eq!((s.bytes, s.mode.as_str()), (1024, "0400"));
        for (secret, says) in [
            ("path='etc/key'", "must be absolute"),
            ("path='/etc/../shadow'", "without '..'"),
            ("path='/etc/k;rm -rf /'", "plain"),
            ("path='/k'\nbytes=8", "16 to 4096"),
            ("path='/k'\nowner='root;x'", "user:group"),
            ("path='/k'\nmode='0644'", "every user"),
            ("path='/k'\nmode='9'", "octal"),
        ] {
            let err = role(secret).unwrap_err().to_string();
            assert!(err.contains(says), "{secret}: {err}");
        }
    }

    /// A cluster role with `[cluster.scaling]` (`scaling`: the table's lines) and `steps`.
    fn elastic(scaling: &str, steps: &str) -> Result<Role, RoleError> {
        let text = format!(
            "name='e'\ndescription='d'\nos=['debian-12']\n[cluster]\ntype='e'\nleader='e-leader'\nworker='e-worker'\n\
             [cluster.scaling]\n{scaling}\n{steps}"
        );
        reg_with(&[("e.toml", &text)]).and_then(|reg| reg.role("e"))
    }

    const HOOK_STEP: &str = "[[steps]]\ndo='file'\npath='/usr/local/sbin/bounds'\nmode='0755'\ncontent='#!/bin/sh'\n";

    #[test]
    fn scaling_has_defaults() {
        let role = elastic("", "").unwrap();
        let s = role.cluster.unwrap().scaling.unwrap();
        assert_eq!(s, role::ScalingDecl::default());
        assert_eq!((s.node_prefix.as_str(), s.socket_group.as_str()), ("w", "slurm"));
        assert_eq!((s.idle.as_secs(), s.resume_timeout.as_secs()), (600, 600));
        assert_eq!((s.instance_types.as_slice(), s.hooks()), (["*".to_owned()].as_slice(), vec![]));
        let set =
            elastic("node_prefix='node'\nidle='1h30m'\nresume_timeout='90s'\ninstance_types=['m7i.*','c?i.large']", "")
                .unwrap()
                .cluster
                .unwrap()
                .scaling
                .unwrap();
        assert_eq!((set.node_prefix.as_str(), set.idle.as_secs(), set.resume_timeout.as_secs()), ("node", 5400, 90));
        let hooked = elastic("on_bounds='/usr/local/sbin/bounds'", HOOK_STEP).unwrap();
        assert_eq!(hooked.cluster.unwrap().scaling.unwrap().hooks(), [("on_bounds", "/usr/local/sbin/bounds")]);
        // Cluster types that do not say so do not scale; slurm does, and toil through it.
        let reg = crate::Registry::builtin().unwrap();
        assert!(reg.cluster_type("spark").unwrap().cluster.unwrap().scaling.is_none());
        for t in ["slurm", "toil"] {
            let s = reg.cluster_type(t).unwrap().cluster.unwrap().scaling.unwrap();
            assert_eq!((s.node_prefix.as_str(), s.socket_group.as_str()), ("w", "slurm"), "{t}");
            assert_eq!(s.hooks().len(), 3, "{t}");
        }
    }

    #[test]
    fn scaling_mistakes_say_what_to_write() {
        let step = |extra: &str| format!("[[steps]]\ndo='file'\npath='/usr/local/sbin/h'\ncontent='x'\n{extra}\n");
        let hook = "on_failed='/usr/local/sbin/h'";
        for (scaling, steps, says) in [
            ("node_prefix='W'", String::new(), "cluster.scaling.node_prefix 'W': write 1 to 8 lower-case letters"),
            ("node_prefix=''", String::new(), "node_prefix '': write 1 to 8"),
            ("node_prefix='worker1'", String::new(), "node_prefix 'worker1': write 1 to 8"),
            ("node_prefix='abcdefghi'", String::new(), "node_prefix 'abcdefghi': write 1 to 8"),
            ("socket_group='Slurm'", String::new(), "cluster.scaling.socket_group 'Slurm': write a group name"),
            ("socket_group='a;b'", String::new(), "socket_group 'a;b': write a group name"),
            ("idle='ten'", String::new(), "'ten' is not a duration"),
            ("idle=600", String::new(), "expected a string"),
            ("idle='30s'", String::new(), "cluster.scaling.idle '30s': write whole seconds from 1m to 24h"),
            ("idle='25h'", String::new(), "cluster.scaling.idle '1day 1h': write whole seconds from 1m to 24h"),
            ("idle='90500ms'", String::new(), "idle '1m 30s 500ms': write whole seconds"),
            (
                "resume_timeout='2h'",
                String::new(),
                "cluster.scaling.resume_timeout '2h': write whole seconds from 1m to 1h",
            ),
            ("instance_types=[]", String::new(), "instance_types is empty"),
            ("instance_types=['M7i.large']", String::new(), "'M7i.large' is not an instance type pattern"),
            ("instance_types=['m7i.*;x']", String::new(), "'m7i.*;x' is not an instance type pattern"),
            ("on_bounds='bin/bounds'", String::new(), "cluster.scaling.on_bounds 'bin/bounds': write an absolute path"),
            ("on_bounds='/usr/../bounds'", String::new(), "write an absolute path"),
            (
                "on_vanished='/usr/local/sbin/a b'",
                String::new(),
                "on_vanished '/usr/local/sbin/a b': write an absolute path",
            ),
            ("maximum=4", String::new(), "unknown field `maximum`"),
            (
                hook,
                String::new(),
                "on_failed '/usr/local/sbin/h' is not a file the role makes on the leader: add a step",
            ),
            (hook, step("mode='0755'\nat='boot'\non='workers'"), "is not a file the role makes on the leader"),
            (hook, step("mode='0755'\nowner='slurm'"), "step 1 (file /usr/local/sbin/h) gives it to slurm"),
            (hook, step(""), "has mode 0644 (the default)"),
            (hook, step("mode='0775'"), "has mode 0775: the agent runs only a hook executable by root"),
            (hook, step("mode='0644'"), "write `mode = \"0755\"`"),
            (
                hook,
                "[[steps]]\ndo='directory'\npath='/usr/local/sbin/h'\n".to_owned(),
                "makes it, but a hook must be made by a `file` step",
            ),
        ] {
            let err = elastic(scaling, &steps).unwrap_err().to_string();
            assert!(err.contains("e.toml") && err.contains(says), "{scaling} {steps}: {err}");
        }
        // Made at the leader's first boot, or by root at bake with another group, it is fine.
        elastic(hook, &step("mode='0750'\ngroup='slurm'\nat='boot'\non='leader'")).unwrap();
        elastic(hook, &step("mode='0700'\nowner='root'")).unwrap();
    }

    /// `[cluster.scaling]` merges key by key like the rest of `[cluster]`: a role including a
    /// scaling cluster role (as toil-box includes slurm-box) scales the same way, with what it
    /// says itself winning, and the included role's steps make the hooks.
    #[test]
    fn scaling_is_inherited_through_include() {
        let base = format!(
            "name='eb'\ndescription='d'\nos=['debian-12']\n\
             [cluster]\ntype='eb'\nleader='eb-leader'\nworker='eb-worker'\n\
             [cluster.scaling]\nnode_prefix='n'\nidle='20m'\non_bounds='/usr/local/sbin/bounds'\n{HOOK_STEP}"
        );
        let top = "name='et'\ndescription='d'\ninclude=['eb']\n\
             [cluster]\ntype='et'\nleader='et-leader'\nworker='et-worker'\n\
             [cluster.scaling]\nidle='30m'\ninstance_types=['m7i.*']\n";
        let reg = reg_with(&[("eb.toml", &base), ("et.toml", top)]).unwrap();
        let c = reg.cluster_type("et").unwrap().cluster.unwrap();
        let s = c.scaling.unwrap();
        assert_eq!((c.cluster_type.as_str(), s.node_prefix.as_str(), s.idle.as_secs()), ("et", "n", 1800));
        assert_eq!(s.instance_types, ["m7i.*"]);
        assert_eq!(s.hooks(), [("on_bounds", "/usr/local/sbin/bounds")]);
        // Inherited values are checked in the including role too.
        let bad = "name='ex'\ndescription='d'\ninclude=['eb']\n[cluster]\ntype='ex'\nleader='ex-leader'\n\
                   worker='ex-worker'\n[cluster.scaling]\non_failed='/nowhere'\n";
        let err = reg_with(&[("eb.toml", &base), ("ex.toml", bad)]).unwrap().role("ex").unwrap_err().to_string();
        assert!(err.contains("ex.toml: cluster.scaling.on_failed '/nowhere' is not a file the role makes"), "{err}");
    }

    /// What only the compiled plan shows: a `when` that leaves the hook's step out, and a hook
    /// where a user could replace it (the role lint's owned paths).
    #[test]
    fn hooks_are_checked_in_the_plan() {
        let compiled = |steps: &str| {
            let text = format!(
                "name='e'\ndescription='d'\nos=['debian-12']\n[options.elastic]\ntype='bool'\ndefault=false\nhelp='h'\n\
                 [cluster]\ntype='e'\nleader='e-leader'\nworker='e-worker'\n\
                 [cluster.scaling]\non_bounds='/opt/app/bounds'\n\
                 [[steps]]\ndo='file'\npath='/opt/app/bounds'\nmode='0755'\ncontent='#!/bin/sh'\n{steps}"
            );
            let r = reg_with(&[("e.toml", &text)]).and_then(|reg| reg.role("e")).unwrap();
            crate::compile::compile(&r, &r.os[0], &BTreeMap::new()).map(|_| ()).map_err(|e| e.to_string())
        };
        compiled("").unwrap();
        let err = compiled("when='elastic'").unwrap_err();
        assert!(err.contains("on_bounds '/opt/app/bounds': this plan makes no such file on the leader"), "{err}");
        let err = compiled("[[steps]]\ndo='directory'\npath='/opt/app'\nowner='app'").unwrap_err();
        assert!(err.contains("step 'directory /opt/app' gives /opt/app to app, who could replace the hook"), "{err}");
    }

    #[test]
    fn cycles_are_named() {
        let reg = reg_with(&[
            ("a.toml", "name='a'\ndescription='a'\ninclude=['b']\nos=['debian-12']"),
            ("b.toml", "name='b'\ndescription='b'\ninclude=['a']"),
        ])
        .unwrap();
        let err = reg.role("a").unwrap_err();
        assert_eq!(err.to_string(), "include cycle: a -> b -> a");
    }

    #[test]
    fn imds_users_are_users_the_role_makes() {
        let role = |extra: &str| {
            reg_with(&[("p.toml", &format!("name='p'\ndescription='d'\ninclude=['base']\nos=['debian-12']\n{extra}"))])
                .and_then(|reg| reg.role("p"))
        };
        let err = role("imds_users=['svc']").unwrap_err().to_string();
        assert!(err.contains("imds_users: 'svc' must be a user of the role"), "{err}");
        let err = role("imds_users=['bad name']").unwrap_err().to_string();
        assert!(err.contains("is not a user name"), "{err}");
        let p = role("imds_users=['svc']\n[[users]]\nname='svc'\nsystem=true").unwrap();
        let plan = crate::compile::compile(&p, &p.os[0], &BTreeMap::new()).unwrap();
        let rule = plan
            .steps
            .iter()
            .find_map(|s| match &s.action {
                cgcloud_core::plan::Action::File { path, content, .. } if path.ends_with("imds-guard.nft") => {
                    Some(content)
                }
                _ => None,
            })
            .unwrap();
        assert!(rule.contains("meta skuid { root, svc } accept"), "{rule}");
    }
}
