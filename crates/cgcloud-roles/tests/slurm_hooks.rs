//! slurm-box's scripts that run as root with what the leader's agent (or a fact) hands them:
//! the `[cluster.scaling]` hooks, the slurmd starter and the leave hook. Each is taken from the
//! compiled plan and run with `sh` against fake `scontrol`, `sinfo`, `systemctl`, `slurmd` and
//! `mountpoint` that log their argv; the few lines naming system paths (PATH, the include file,
//! the lock, slurmd, /run) are pointed at a directory of the test, and each must be there once.
//! What is checked: bad input is refused before anything is called or written, and good input
//! reaches Slurm as exactly the argv expected.
#![allow(clippy::unwrap_used)] // tests may unwrap

use cgcloud_core::plan::{Action, Plan};
use cgcloud_roles::compile::compile;
use cgcloud_roles::Registry;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn plan() -> Plan {
    let reg = Registry::builtin().unwrap();
    let role = reg.role("slurm-box").unwrap();
    let os = role.os.iter().find(|o| o.id == "debian-12").unwrap();
    compile(&role, os, &BTreeMap::new()).unwrap()
}

fn file(plan: &Plan, path: &str) -> String {
    plan.steps
        .iter()
        .find_map(|s| match &s.action {
            Action::File { path: p, content, mode, owner, .. } if p == path => {
                assert_eq!((mode.as_deref(), owner.as_deref()), (Some("0755"), None), "{path}: root's, 0755");
                Some(content.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {path} in the plan"))
}

/// Logs `NAME ARGS...` (fields separated by 0x1f) to DIR/calls. `sinfo` prints the lines of
/// DIR/nodes (`NAME STATE`) that its `-n` host list and `-t` state select, in its `-o` format.
/// `systemctl is-active` says what DIR/slurmctld holds (default active). `scontrol [-o] show` prints
/// DIR/show, `squeue` DIR/squeue. DIR/NAME.fail makes NAME fail.
const FAKE: &str = r#"#!/bin/sh
name=${0##*/}
{ printf '%s' "$name"; for a in "$@"; do printf '\037%s' "$a"; done; printf '\n'; } >> DIR/calls
[ ! -e "DIR/$name.fail" ] || exit 1
case $name in
systemctl)
    [ "$1" = is-active ] || exit 0
    s=$(cat DIR/slurmctld 2>/dev/null || echo active)
    echo "$s"
    [ "$s" = active ]
    ;;
scontrol)
    [ "$1" != -o ] || shift
    [ "$1" != show ] || cat DIR/show
    ;;
squeue)
    cat DIR/squeue 2>/dev/null
    ;;
sinfo)
    names= states= fmt=
    while [ $# -gt 0 ]; do
        case $1 in -n) names=$2; shift ;; -t) states=$2; shift ;; -o) fmt=$2; shift ;; esac
        shift
    done
    [ "$fmt" != %P ] || { echo all; exit 0; }
    awk -v names="$names" -v states="$states" -v fmt="$fmt" '
        function one(item, set,    p, pre, body, k, m, r, ab, j) {
            p = index(item, "[")
            if (p == 0) { set[item] = 1; return }
            pre = substr(item, 1, p - 1); body = substr(item, p + 1, length(item) - p - 1)
            m = split(body, r, ",")
            for (k = 1; k <= m; k++) {
                if (split(r[k], ab, "-") == 2) { for (j = ab[1] + 0; j <= ab[2] + 0; j++) set[pre j] = 1 }
                else set[pre r[k]] = 1
            }
        }
        BEGIN {
            depth = 0; item = ""
            for (i = 1; i <= length(names); i++) {
                c = substr(names, i, 1)
                if (c == "[") depth++
                if (c == "]") depth--
                if (c == "," && depth == 0) { one(item, want); item = "" } else item = item c
            }
            if (item != "") one(item, want)
        }
        names != "" && !($1 in want) { next }
        { base = $2; sub(/[~#%!*]+$/, "", base) }
        states != "" && base != states { next }
        fmt == "%N" { print $1; next }
        { print $1, $2 }
    ' DIR/nodes
    ;;
esac
"#;

struct Rig {
    dir: PathBuf,
}

impl Rig {
    fn new(name: &str) -> Rig {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("slurm-hooks").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        let fake = FAKE.replace("DIR", dir.to_str().unwrap());
        for name in ["scontrol", "sinfo", "squeue", "systemctl", "slurmd", "mountpoint"] {
            let path = dir.join("bin").join(name);
            std::fs::write(&path, &fake).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let rig = Rig { dir };
        rig.put("nodes", "");
        rig.put("etc/cgcloud-scaling.conf", "");
        rig
    }

    fn put(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).unwrap();
    }

    fn get(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap()
    }

    /// The script, each of `lines` (a line of it, what it becomes, `DIR` being the rig's
    /// directory) replaced, written to the rig.
    fn script(&self, text: &str, lines: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir.to_str().unwrap();
        let mut out = text.to_owned();
        for (line, new) in lines {
            assert_eq!(text.lines().filter(|l| l == line).count(), 1, "the script has no line `{line}`:\n{text}");
            out = out.replace(&format!("\n{line}\n"), &format!("\n{}\n", new.replace("DIR", dir)));
        }
        let path = self.dir.join("script");
        std::fs::write(&path, out).unwrap();
        path
    }

    /// Runs `sh SCRIPT ARGS` with only `env` (and a PATH to the fakes, which a script that
    /// sets its own PATH has replaced): (exit code, stdout, stderr, the fakes' calls).
    fn run(&self, script: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String, Vec<Vec<String>>) {
        let _ = std::fs::remove_file(self.dir.join("calls"));
        let out = Command::new("sh")
            .arg(script)
            .args(args)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", self.dir.join("bin").display()))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let calls = std::fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\u{1f}').map(str::to_owned).collect())
            .collect();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr), calls)
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

const BOUNDS_LINES: &[(&str, &str)] = &[
    ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "PATH=DIR/bin:/usr/bin:/bin"),
    ("conf=/etc/slurm/cgcloud-scaling.conf", "conf=DIR/etc/cgcloud-scaling.conf"),
    ("lock=/run/cgcloud-slurm-bounds.lock", "lock=DIR/bounds.lock"),
];

const HOOK_LINES: &[(&str, &str)] = &[("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "PATH=DIR/bin:/usr/bin:/bin")];

fn bounds_env<'a>(over: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env: BTreeMap<&str, &str> = [
        ("CGCLOUD_SCALE_PREFIX", "w"),
        ("CGCLOUD_SCALE_MIN", "2"),
        ("CGCLOUD_SCALE_MAX", "4"),
        ("CGCLOUD_SCALE_IDLE", "600"),
        ("CGCLOUD_SCALE_RESUME_TIMEOUT", "600"),
        ("CGCLOUD_SCALE_CPUS", "2"),
        ("CGCLOUD_SCALE_MEM", "7168"),
    ]
    .into_iter()
    .collect();
    // `NAME!` leaves NAME out.
    for (k, v) in over {
        if let Some(unset) = k.strip_suffix('!') {
            env.remove(unset);
        } else {
            env.insert(k, v);
        }
    }
    env.into_iter().collect()
}

fn include(min: &str, max: &str, nodes: &str, idle: &str, exc: Option<&str>, list: &str) -> String {
    let exc = exc.map(|e| format!("SuspendExcNodes={e}\n")).unwrap_or_default();
    format!(
        "# Written by cgcloud-slurm-bounds from the cluster's scaling bounds: the leader's agent rewrites it.\n\
         # cgcloud-bounds: prefix=w min={min} max={max} nodes={nodes} idle={idle} resume_timeout=600 cpus=2 mem=7168\n\
         ResumeProgram=/usr/local/sbin/cgcloud-slurm-resume\n\
         SuspendProgram=/usr/local/sbin/cgcloud-slurm-suspend\n\
         ResumeFailProgram=/usr/local/sbin/cgcloud-slurm-resume-fail\n\
         PrologSlurmctld=/usr/local/sbin/cgcloud-slurm-await-nodes\n\
         SuspendTime={idle}\n\
         SuspendTimeout=60\n\
         ResumeTimeout=600\n\
         ResumeRate=0\n\
         SuspendRate=0\n\
         {exc}NodeName={list} CPUs=2 RealMemory=7168 Feature=cloud State=CLOUD\n"
    )
}

#[test]
fn bounds_hook_refuses_what_is_not_a_bound() {
    let plan = plan();
    let rig = Rig::new("bounds-refuses");
    let script = rig.script(&file(&plan, "/usr/local/sbin/cgcloud-slurm-bounds"), BOUNDS_LINES);
    let bad: &[&[(&str, &str)]] = &[
        &[("CGCLOUD_SCALE_PREFIX!", "")],
        &[("CGCLOUD_SCALE_PREFIX", "")],
        &[("CGCLOUD_SCALE_PREFIX", "W")],
        &[("CGCLOUD_SCALE_PREFIX", "w1")],
        &[("CGCLOUD_SCALE_PREFIX", "abcdefghi")],
        &[("CGCLOUD_SCALE_PREFIX", "w;reboot")],
        &[("CGCLOUD_SCALE_PREFIX", "w x")],
        &[("CGCLOUD_SCALE_PREFIX", "w\nNodeName=x")],
        &[("CGCLOUD_SCALE_MIN!", "")],
        &[("CGCLOUD_SCALE_MIN", "x")],
        &[("CGCLOUD_SCALE_MIN", "01")],
        &[("CGCLOUD_SCALE_MIN", "-1")],
        &[("CGCLOUD_SCALE_MIN", "1 ")],
        &[("CGCLOUD_SCALE_MIN", "5")],
        &[("CGCLOUD_SCALE_MAX", "0")],
        &[("CGCLOUD_SCALE_MAX", "65534")],
        &[("CGCLOUD_SCALE_MAX", "9999999999")],
        &[("CGCLOUD_SCALE_MAX", "4\nSlurmUser=root")],
        &[("CGCLOUD_SCALE_IDLE", "0")],
        &[("CGCLOUD_SCALE_IDLE", "$(id)")],
        &[("CGCLOUD_SCALE_RESUME_TIMEOUT", "")],
        &[("CGCLOUD_SCALE_CPUS", "0x10")],
        &[("CGCLOUD_SCALE_MEM", "1e3")],
        &[("CGCLOUD_SCALE_MEM!", "")],
    ];
    for over in bad {
        let (code, _, err, calls) = rig.run(&script, &[], &bounds_env(over));
        assert_eq!(code, 2, "{over:?}: {err}");
        assert!(err.starts_with("cgcloud-slurm-bounds: "), "{over:?}: {err}");
        assert!(calls.is_empty(), "{over:?}: {calls:?}");
    }
    for args in [&["extra"][..], &["--keep", "x"], &["--kep"]] {
        let (code, _, err, calls) = rig.run(&script, args, &bounds_env(&[]));
        assert_eq!((code, calls.len()), (2, 0), "{args:?}: {err}");
    }
    // A header that is not what the hook writes is refused too, in the 30 s loop.
    rig.put(
        "etc/cgcloud-scaling.conf",
        "# cgcloud-bounds: prefix=w min=1 max=2;reboot nodes=4 idle=600 resume_timeout=600 cpus=2 mem=7168\n",
    );
    let (code, _, _, calls) = rig.run(&script, &["--keep"], &[]);
    assert_eq!((code, calls.len()), (2, 0));
    // Nothing was written, no temporary file left.
    let left: Vec<_> = std::fs::read_dir(rig.dir.join("etc")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["cgcloud-scaling.conf"]);
    assert!(rig.get("etc/cgcloud-scaling.conf").contains("max=2;reboot"));
}

#[test]
fn bounds_hook_writes_the_include_and_keeps_slurm_in_step() {
    let plan = plan();
    // The programs the include names are the role's own, as are the hooks it is one of.
    for p in ["cgcloud-slurm-resume", "cgcloud-slurm-suspend", "cgcloud-slurm-resume-fail"] {
        file(&plan, &format!("/usr/local/sbin/{p}"));
    }
    let rig = Rig::new("bounds-writes");
    let script = rig.script(&file(&plan, "/usr/local/sbin/cgcloud-slurm-bounds"), BOUNDS_LINES);
    let conf = "etc/cgcloud-scaling.conf";

    // The first bounds: power saving and the nodes start with a restart; the floor powers up.
    rig.put("nodes", "w1 idle~\nw2 idle~\nw3 idle~\nw4 idle~\n");
    let (code, _, err, calls) = rig.run(&script, &[], &bounds_env(&[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(rig.get(conf), include("2", "4", "4", "600", Some("w[1-2]"), "w[1-4]"));
    let mode = std::fs::metadata(rig.dir.join(conf)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(
        calls,
        [
            argv(&["systemctl", "is-active", "slurmctld"]),
            argv(&["systemctl", "restart", "slurmctld"]),
            argv(&["sinfo", "-h", "-o", "%P"]),
            argv(&["scontrol", "reconfigure"]),
            argv(&["sinfo", "-h", "-N", "-n", "w[1-2]", "-o", "%N %T"]),
            argv(&["scontrol", "update", "nodename=w1,w2", "state=power_up"]),
        ]
    );

    // The same bounds again: nothing to tell Slurm, and a booting floor is not powered up twice.
    rig.put("nodes", "w1 idle#\nw2 allocated\nw3 idle~\nw4 idle~\n");
    let (code, _, err, calls) = rig.run(&script, &[], &bounds_env(&[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        calls,
        [argv(&["systemctl", "is-active", "slurmctld"]), argv(&["sinfo", "-h", "-N", "-n", "w[1-2]", "-o", "%N %T"]),]
    );

    // Another idle time: a reconfigure is enough.
    let (code, _, err, calls) = rig.run(&script, &[], &bounds_env(&[("CGCLOUD_SCALE_IDLE", "900")]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(rig.get(conf), include("2", "4", "4", "900", Some("w[1-2]"), "w[1-4]"));
    assert_eq!(calls[1], argv(&["scontrol", "reconfigure"]));
    assert_eq!(calls.len(), 3, "{calls:?}");

    // A smaller max while w3 runs a job: w3 and w4 are drained, w3 powered down once idle, and
    // the nodes stay declared until then.
    rig.put("nodes", "w1 allocated\nw2 idle~\nw3 allocated\nw4 idle~\n");
    let shrink = [("CGCLOUD_SCALE_MIN", "1"), ("CGCLOUD_SCALE_MAX", "2"), ("CGCLOUD_SCALE_IDLE", "900")];
    let (code, out, err, calls) = rig.run(&script, &[], &bounds_env(&shrink));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("drained w3,w4: above --max-workers 2"), "{out}");
    assert_eq!(rig.get(conf), include("1", "2", "4", "900", Some("w1"), "w[1-4]"));
    assert_eq!(
        calls,
        [
            argv(&["systemctl", "is-active", "slurmctld"]),
            argv(&["sinfo", "-h", "-N", "-n", "w[3-4]", "-o", "%N %T"]),
            argv(&["scontrol", "update", "nodename=w3,w4", "state=drain", "reason=cgcloud: above --max-workers"]),
            argv(&["scontrol", "update", "nodename=w3", "state=power_down"]),
            argv(&["scontrol", "reconfigure"]),
            argv(&["sinfo", "-h", "-N", "-n", "w1", "-o", "%N %T"]),
        ]
    );

    // The 30 s loop: once w3 is powering down, the list shrinks (a restart).
    rig.put("nodes", "w1 allocated\nw2 idle~\nw3 idle%\nw4 drained~\n");
    let (code, _, err, calls) = rig.run(&script, &["--keep"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rig.get(conf), include("1", "2", "2", "900", Some("w1"), "w[1-2]"));
    assert_eq!(
        calls,
        [
            argv(&["systemctl", "is-active", "slurmctld"]),
            argv(&["sinfo", "-h", "-N", "-n", "w[3-4]", "-o", "%N %T"]),
            argv(&["systemctl", "restart", "slurmctld"]),
            argv(&["sinfo", "-h", "-o", "%P"]),
            argv(&["scontrol", "reconfigure"]),
            argv(&["sinfo", "-h", "-N", "-n", "w1", "-o", "%N %T"]),
        ]
    );

    // And then it only keeps the floor: w1 was lost (powered down), so it is powered up again.
    rig.put("nodes", "w1 idle~\nw2 idle~\n");
    let (code, _, err, calls) = rig.run(&script, &["--keep"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        calls,
        [
            argv(&["systemctl", "is-active", "slurmctld"]),
            argv(&["sinfo", "-h", "-N", "-n", "w1", "-o", "%N %T"]),
            argv(&["scontrol", "update", "nodename=w1", "state=power_up"]),
        ]
    );

    // slurmctld not running (the agent was quicker than the first boot): the file is written
    // for it to read when it starts; the loop waits for it.
    rig.put("slurmctld", "inactive");
    let (code, out, err, calls) = rig.run(&script, &[], &bounds_env(&[("CGCLOUD_SCALE_MAX", "3")]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("slurmctld is not running"), "{out}");
    assert_eq!(rig.get(conf), include("2", "3", "3", "600", Some("w[1-2]"), "w[1-3]"));
    assert_eq!(calls, [argv(&["systemctl", "is-active", "slurmctld"])]);
    let (code, _, _, calls) = rig.run(&script, &["--keep"], &[]);
    assert_eq!((code, calls.len()), (0, 1));

    // A cluster that does not scale: the loop finds an empty file and does nothing at all.
    rig.put(conf, "");
    let (code, out, err, calls) = rig.run(&script, &["--keep"], &[]);
    assert_eq!((code, out.as_str(), err.as_str(), calls.len()), (0, "", "", 0));
}

#[test]
fn failed_hook_marks_down_and_retries_only_what_is_still_down() {
    let plan = plan();
    let rig = Rig::new("failed");
    let script = rig.script(&file(&plan, "/usr/local/sbin/cgcloud-slurm-failed"), HOOK_LINES);
    let long_list = format!("w{}", "1".repeat(4096));
    let long_reason = "r".repeat(1001);
    let bad: &[&[&str]] = &[
        &[],
        &["up", "w1"],
        &["down", "w1"],
        &["down", "w1", "r", "x"],
        &["down", "-w1", "r"],
        &["down", "W1", "r"],
        &["down", "w1;id", "r"],
        &["down", "w1 w2", "r"],
        &["down", "w1", "state=idle\nnodename=w2"],
        &["down", "w1", "tab\there"],
        &["down", "w1", ""],
        &["down", "w1", "caf\u{e9}"],
        &["down", &long_list, "r"],
        &["down", "w1", &long_reason],
        &["retry"],
        &["retry", "w1", "x"],
        &["retry", "$(id)"],
        &["retry", "nodename=w1"],
    ];
    for args in bad {
        let (code, _, err, calls) = rig.run(&script, args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(calls.is_empty(), "{args:?}: {calls:?}");
    }

    // The reason reaches scontrol as one argument, whatever its quotes and shell words.
    let reason = r#"no capacity: "m7i.large" ; $(touch /tmp/x) `id` \ 'q' state=idle"#;
    let (code, _, err, calls) = rig.run(&script, &["down", "w[3-5],w7", reason], &[]);
    assert_eq!(code, 0, "{err}");
    let want = format!("reason=cgcloud: {reason}");
    assert_eq!(calls, [argv(&["scontrol", "update", "nodename=w[3-5],w7", "state=down", &want])]);

    // After the cooldown: w4 came back meanwhile, w3 and w5 are still down.
    rig.put("nodes", "w3 down~\nw4 idle\nw5 down\nw6 down\n");
    let (code, _, err, calls) = rig.run(&script, &["retry", "w[3-5]"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        calls,
        [
            argv(&["sinfo", "-h", "-N", "-t", "down", "-n", "w[3-5]", "-o", "%N"]),
            argv(&["scontrol", "update", "nodename=w3,w5", "state=power_down_force"]),
        ]
    );
    rig.put("nodes", "w3 idle~\n");
    let (code, _, _, calls) = rig.run(&script, &["retry", "w3"], &[]);
    assert_eq!((code, calls.len()), (0, 1), "{calls:?}");
    // Slurm does not answer: the agent hears of it.
    rig.put("sinfo.fail", "");
    let (code, _, _, calls) = rig.run(&script, &["retry", "w3"], &[]);
    assert!(code != 0 && calls.len() == 1, "{code} {calls:?}");
}

#[test]
fn vanished_hook_powers_down_by_force_with_the_reason() {
    let plan = plan();
    let rig = Rig::new("vanished");
    let script = rig.script(&file(&plan, "/usr/local/sbin/cgcloud-slurm-vanished"), HOOK_LINES);
    let bad: &[&[&str]] = &[
        &[],
        &["w1"],
        &["w1", "r", "x"],
        &["", "r"],
        &["-w1", "r"],
        &["w1,W2", "r"],
        &["w1 state=idle", "r"],
        &["w1", ""],
        &["w1", "one\ntwo"],
        &["w1", "\u{7f}"],
    ];
    for args in bad {
        let (code, _, err, calls) = rig.run(&script, args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(calls.is_empty(), "{args:?}: {calls:?}");
    }
    let (code, _, err, calls) =
        rig.run(&script, &["w[2-3],w7", "spot interruption (instance-terminated-no-capacity)"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        calls,
        [argv(&[
            "scontrol",
            "update",
            "nodename=w[2-3],w7",
            "state=power_down_force",
            "reason=cgcloud: spot interruption (instance-terminated-no-capacity)",
        ])]
    );
}

/// The power saving programs only hand Slurm's host list to the agent (they run as SlurmUser,
/// with no PATH).
#[test]
fn power_saving_programs_call_the_agent() {
    let plan = plan();
    for (p, verb) in [("resume", "up"), ("suspend", "down"), ("resume-fail", "fail")] {
        let text = file(&plan, &format!("/usr/local/sbin/cgcloud-slurm-{p}"));
        assert_eq!(text, format!("#!/bin/sh\nset -eu\nexec /usr/local/bin/cgcloud-agent scale {verb} \"$1\"\n"));
    }
}

#[test]
fn slurmd_starts_as_the_node_the_facts_name() {
    let plan = plan();
    let rig = Rig::new("slurmd");
    let script = rig.script(
        &file(&plan, "/usr/local/sbin/cgcloud-slurmd"),
        &[
            (r#"    printf '%s\n' "$node" > /run/cgcloud-slurmd.node"#, r#"    printf '%s\n' "$node" > DIR/node"#),
            (
                r#"    exec /usr/sbin/slurmd -D -s -N "$node" --conf-server "$controller""#,
                r#"    exec slurmd -D -s -N "$node" --conf-server "$controller""#,
            ),
            (
                r#"exec /usr/sbin/slurmd -D -s -Z --conf-server "$controller" --conf "CPUs=$cpus RealMemory=$real Feature=$market""#,
                r#"exec slurmd -D -s -Z --conf-server "$controller" --conf "CPUs=$cpus RealMemory=$real Feature=$market""#,
            ),
        ],
    );
    let (code, real, _, _) = rig.run(&script, &["--real-memory"], &[]);
    let real: i64 = real.trim().parse().unwrap();
    if code != 0 || real < 256 {
        eprintln!("skipped: this machine offers Slurm {real} MiB");
        return;
    }
    let cpus = String::from_utf8(Command::new("nproc").output().unwrap().stdout).unwrap();
    let conf = format!("CPUs={} RealMemory={real} Feature=spot", cpus.trim());
    // A static cluster: a dynamic node, as before (systemd drops the empty node name).
    for args in [&["10.0.0.1", "spot"][..], &["10.0.0.1", "spot", "false"]] {
        let (code, _, err, calls) = rig.run(&script, args, &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(calls, [argv(&["slurmd", "-D", "-s", "-Z", "--conf-server", "10.0.0.1", "--conf", &conf])]);
    }
    // An elastic one: the cloud node, once /shared is there; its name for the spot hook.
    let (code, _, err, calls) = rig.run(&script, &["10.0.0.1", "on-demand", "true", "w12"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        calls,
        [
            argv(&["mountpoint", "-q", "/shared"]),
            argv(&["slurmd", "-D", "-s", "-N", "w12", "--conf-server", "10.0.0.1"])
        ]
    );
    assert_eq!(rig.get("node"), "w12\n");
    for bad in [&["10.0.0.1", "spot", "true"][..], &["10.0.0.1", "spot", "yes", "w1"]] {
        let (code, _, _, calls) = rig.run(&script, bad, &[]);
        assert_eq!((code, calls.len()), (1, 0), "{bad:?}");
    }
    for name in ["W1", "w0", "w01", "w", "1", "w1;x", "-N", "w1234567", "abcdefghi1", "w1\nw2"] {
        let (code, _, err, calls) = rig.run(&script, &["10.0.0.1", "spot", "true", name], &[]);
        assert_eq!((code, calls.len()), (1, 0), "{name:?}: {err}");
    }
}

#[test]
fn leaving_marks_an_elastic_node_down_only_when_slurm_did_not_power_it_down() {
    let plan = plan();
    let rig = Rig::new("leave");
    rig.put("slurm.conf", "");
    let script = rig.script(
        &file(&plan, "/usr/local/sbin/cgcloud-slurmd-leave"),
        &[("export SLURM_CONF=/var/spool/slurmd/conf-cache/slurm.conf", "export SLURM_CONF=DIR/slurm.conf")],
    );
    let show = |state: &str| format!("NodeName=w3 Arch=x86_64 CoresPerSocket=1 State={state} ThreadsPerCore=1\n");
    for state in ["IDLE+CLOUD+POWERING_DOWN", "IDLE+CLOUD+POWERED_DOWN", "ALLOCATED+CLOUD+POWER_DOWN"] {
        rig.put("show", &show(state));
        let (code, _, _, calls) = rig.run(&script, &["w3"], &[]);
        assert_eq!((code, calls), (0, vec![argv(&["scontrol", "show", "node", "-o", "w3"])]), "{state}");
    }
    rig.put("show", &show("ALLOCATED+CLOUD"));
    let (code, _, _, calls) = rig.run(&script, &["w3"], &[]);
    assert_eq!(code, 0);
    assert_eq!(calls[1], argv(&["scontrol", "update", "nodename=w3", "state=down", "reason=cgcloud: node stopped"]));
    assert_eq!(calls.len(), 2, "a cloud node is never deleted: {calls:?}");
    // A static cluster's dynamic node (no name given) leaves as it always did.
    let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap();
    let node = format!("nodename={}", host.trim());
    let (code, _, _, calls) = rig.run(&script, &[], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        calls,
        [
            argv(&["scontrol", "update", &node, "state=down", "reason=cgcloud: node stopped"]),
            argv(&["scontrol", "delete", &node]),
        ]
    );
}

#[test]
fn a_spot_notice_drains_the_node_and_requeues_its_jobs_before_it_goes() {
    let plan = plan();
    let rig = Rig::new("spot");
    rig.put("slurm.conf", "");
    rig.put("node", "w3\n");
    let script = rig.script(
        &file(&plan, "/etc/cgcloud/spot-interruption"),
        &[
            ("export SLURM_CONF=/var/spool/slurmd/conf-cache/slurm.conf", "export SLURM_CONF=DIR/slurm.conf"),
            (
                "if [ -r /run/cgcloud-slurmd.node ]; then node=$(cat /run/cgcloud-slurmd.node); fi",
                "if [ -r DIR/node ]; then node=$(cat DIR/node); fi",
            ),
        ],
    );
    let notice = |in_s: i64| {
        let at = std::time::SystemTime::now() + std::time::Duration::from_secs(in_s.max(0) as u64);
        let at = humantime::format_rfc3339_seconds(at);
        format!("{{\"action\": \"terminate\", \"time\": \"{at}\"}}")
    };
    let drain = argv(&["scontrol", "update", "nodename=w3", "state=drain", "reason=spot interruption"]);
    let squeue = argv(&["squeue", "-h", "-w", "w3", "-t", "running", "-o", "%i"]);
    // Only job ids reach scontrol.
    rig.put("squeue", "12\n7_3\n1;reboot\n$(id)\n");
    let (code, _, err, calls) = rig.run(&script, &[], &[("CGCLOUD_SPOT_NOTICE", &notice(5))]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(calls, [drain.clone(), squeue.clone(), argv(&["scontrol", "requeue", "12,7_3"])]);
    // Jobs get until half a minute before the end to finish; none left, nothing to requeue.
    rig.put("squeue", "");
    let start = std::time::Instant::now();
    let (code, _, err, calls) = rig.run(&script, &[], &[("CGCLOUD_SPOT_NOTICE", &notice(32))]);
    assert_eq!(code, 0, "{err}");
    assert!(start.elapsed().as_secs() >= 1, "no wait before the requeue");
    assert_eq!(calls, [drain.clone(), squeue.clone()]);
    // A notice without a time, or not a notice: at once.
    rig.put("squeue", "4\n");
    for bad in ["", "{\"time\": \"soon\"}", "{\"time\": \"2026-13-99T99:99:99Z\"}"] {
        let (code, _, err, calls) = rig.run(&script, &[], &[("CGCLOUD_SPOT_NOTICE", bad)]);
        assert_eq!(code, 0, "{bad}: {err}");
        assert_eq!(calls, [drain.clone(), squeue.clone(), argv(&["scontrol", "requeue", "4"])], "{bad}");
    }
    // A node name that is not one is not used.
    rig.put("node", "w3 -h\n");
    let (code, _, err, calls) = rig.run(&script, &[], &[("CGCLOUD_SPOT_NOTICE", &notice(5))]);
    assert!(code != 0 && err.contains("node name") && calls.is_empty(), "{code} {err} {calls:?}");
}

/// The PrologSlurmctld of elastic clusters: a job starts as soon as its powered-up nodes have
/// registered (not at Slurm's next 30 s pass), because the prolog ends then. It waits only
/// while a node of the job is powered down or powering up and the job is configuring; it
/// always succeeds, and calls nothing with a job id or node list that is not one.
#[test]
fn the_job_prolog_ends_once_the_jobs_nodes_are_up() {
    let rig = Rig::new("await-nodes");
    let script = rig.script(&file(&plan(), "/usr/local/sbin/cgcloud-slurm-await-nodes"), HOOK_LINES);
    let job = [("SLURM_JOB_ID", "7"), ("SLURM_JOB_NODELIST", "w[1-2]")];
    let show = argv(&["scontrol", "-o", "show", "node", "w[1-2]"]);
    let up = "NodeName=w1 Arch=x86_64 State=ALLOCATED+CLOUD ThreadsPerCore=1\nNodeName=w2 State=ALLOCATED+CLOUD\n";
    let powering =
        "NodeName=w1 State=ALLOCATED+CLOUD ThreadsPerCore=1\nNodeName=w2 State=ALLOCATED+CLOUD+POWERING_UP\n";

    // Nodes up (any job on a static or running node): one call, at once.
    rig.put("show", up);
    let (code, _, _, calls) = rig.run(&script, &[], &job);
    assert_eq!((code, calls), (0, vec![show.clone()]));

    // A node still powering up, but the job no longer configuring (requeued): ends.
    rig.put("show", powering);
    rig.put("squeue", "PENDING\n");
    let (code, _, _, calls) = rig.run(&script, &[], &job);
    assert_eq!((code, calls), (0, vec![show.clone(), argv(&["squeue", "-h", "-j", "7", "-o", "%T"])]));

    // Powering up (or still powered down) and configuring: waits until the node is up.
    for waiting in [powering, "NodeName=w2 State=ALLOCATED+CLOUD+POWERED_DOWN\n"] {
        rig.put("show", waiting);
        rig.put("squeue", "CONFIGURING\n");
        let _ = std::fs::remove_file(rig.dir.join("calls"));
        let mut child = Command::new("sh")
            .arg(&script)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", rig.dir.join("bin").display()))
            .envs(job)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert!(child.try_wait().unwrap().is_none(), "the prolog ended while {waiting:?}");
        rig.put("show", up);
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed().as_secs() < 10, "the prolog did not end once the nodes were up");
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert!(status.success());
        assert!(rig.get("calls").lines().filter(|l| l.starts_with("scontrol")).count() >= 3);
    }

    // Not a job id, not a host list: nothing is called, and the job is not held up.
    for bad in [
        [("SLURM_JOB_ID", "7;reboot"), ("SLURM_JOB_NODELIST", "w1")],
        [("SLURM_JOB_ID", ""), ("SLURM_JOB_NODELIST", "w1")],
        [("SLURM_JOB_ID", "7"), ("SLURM_JOB_NODELIST", "w1;reboot")],
        [("SLURM_JOB_ID", "7"), ("SLURM_JOB_NODELIST", "$(id)")],
        [("SLURM_JOB_ID", "7"), ("SLURM_JOB_NODELIST", "-oops")],
        [("SLURM_JOB_ID", "7"), ("SLURM_JOB_NODELIST", "w 1")],
    ] {
        rig.put("show", powering);
        let (code, _, _, calls) = rig.run(&script, &[], &bad);
        assert_eq!((code, calls), (0, vec![]), "{bad:?}");
    }
}
