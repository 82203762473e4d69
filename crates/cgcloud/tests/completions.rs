//! Shell completion and man pages: what a user gets from `cgcloud completions bash` in a real
//! bash (commands, flags, roles, cluster types, and the namespace's cluster names from moto),
//! that every supported shell gets a script, and that the man pages are written.

#![allow(clippy::unwrap_used)] // tests may unwrap

use testkit::{FakeAgents, TestEnv};

/// What bash offers for `words` (the last one being completed), with the script sourced.
fn bash_completes(e: &TestEnv, words: &[&str]) -> Vec<String> {
    let script = String::from_utf8(e.cmd().args(["completions", "bash"]).output().unwrap().stdout).unwrap();
    let file = e.home.path().join("cgcloud.bash");
    std::fs::write(&file, script).unwrap();
    let words_quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source {}\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_TYPE=9\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n_clap_complete_cgcloud cgcloud \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\ncomplete -p cgcloud >/dev/null || exit 3\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        file.display(),
        words_quoted.join(" "),
        words.len() - 1
    );
    let mut bash = std::process::Command::new("bash");
    bash.args(["--norc", "-c", &program]);
    // The environment cgcloud runs with (moto's endpoint and region, the test's HOME).
    for (k, v) in e.cmd().get_envs() {
        match v {
            Some(v) => bash.env(k, v),
            None => bash.env_remove(k),
        };
    }
    let out = bash.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn bash_completes_commands_flags_roles_and_clusters() {
    let e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    let got = bash_completes(&e, &["cgcloud", "create-c"]);
    assert_eq!(got, ["create-cluster"]);
    let got = bash_completes(&e, &["cgcloud", "create", "jenkins-agent-d"]);
    assert_eq!(got, ["jenkins-agent-debian-trixie"]);
    let got = bash_completes(&e, &["cgcloud", "create-cluster", "sp"]);
    assert_eq!(got, ["spark"]);
    let got = bash_completes(&e, &["cgcloud", "ssh", "spark-l"]);
    assert_eq!(got, ["spark-leader"], "cluster nodes' role names complete too");
    let got = bash_completes(&e, &["cgcloud", "create", "--ebs-v"]);
    assert_eq!(got, ["--ebs-volume-size"]);
    // Cluster names come from the namespace's boxes.
    let key = e.keygen("id_ed25519", "ed25519");
    e.ok(&["register-key", key.with_extension("pub").to_str().unwrap()]);
    e.ok(&["create", "generic-cluster-box", "-Q"]);
    e.ok(&["stop", "generic-cluster-box"]);
    e.ok(&["image", "generic-cluster-box"]);
    let _agents = FakeAgents::start(&e);
    e.ok(&["create-cluster", "generic", "-s", "0", "-c", "nightly-build", "--skip-ssh-check"]);
    let got = bash_completes(&e, &["cgcloud", "ssh-cluster", "generic", "-c", "night"]);
    assert_eq!(got, ["nightly-build"]);
}

#[test]
fn every_shell_gets_a_script_and_man_pages_are_written() {
    let e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = e.cmd().args(["completions", shell]).output().unwrap();
        assert!(out.status.success() && out.stdout.len() > 100, "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("CGCLOUD_COMPLETE"), "{shell}");
    }
    let err = e.fails(&["completions", "tcsh"]);
    assert!(err.contains("possible values"), "{err}");
    let dir = e.home.path().join("man");
    e.ok(&["man-pages", dir.to_str().unwrap()]);
    let main = std::fs::read_to_string(dir.join("cgcloud.1")).unwrap();
    assert!(main.contains(".TH cgcloud 1") && main.contains("create\\-cluster"), "{}", &main[..200.min(main.len())]);
    for page in ["cgcloud-create.1", "cgcloud-register-agents.1", "cgcloud-local-up.1", "cgcloud-doctor.1"] {
        assert!(dir.join(page).is_file(), "no {page}");
    }
    assert!(!dir.join("cgcloud-man-pages.1").exists(), "the hidden command has no page");
}

/// `--version` prints the crate's version, and `--help` (top level and per command) lists the
/// commands and flags this file's completions come from.
#[test]
fn version_and_help() {
    let e = TestEnv::new(env!("CARGO_BIN_EXE_cgcloud"));
    for flag in ["--version", "-V"] {
        let out = e.ok(&[flag]);
        assert_eq!(out.trim(), format!("cgcloud {}", env!("CARGO_PKG_VERSION")));
    }
    let top = e.ok(&["--help"]);
    assert!(top.contains("update-instance-profile") && top.contains("create-cluster"), "{top}");
    assert!(!top.contains("controller"), "the local cloud's controller is internal: {top}");
    let create = e.ok(&["create", "-h"]);
    assert!(create.contains("--spot-bid") && create.contains("--upgrade"), "{create}");
    let ssh = e.ok(&["ssh", "--help"]);
    assert!(ssh.contains("--forward"), "{ssh}");
}
