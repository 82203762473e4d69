//! Acceptance tests against real AWS, for what the emulator and the local cloud cannot show:
//! the base-image lookups and first boot of every supported distribution, with IAM, real
//! security groups and public-IP SSH. Opt-in only:
//!
//! ```sh
//! AWS_PROFILE=... CGCLOUD_ZONE=us-west-2a cargo test -p cgcloud --features aws-acceptance \
//!     --test aws_acceptance -- --test-threads 4
//! ```
//!
//! Cost: one t3.micro (or t4g.micro) per role for about five minutes, well under US$0.10 in
//! all. Every test works in its own namespace `/acceptance-<random>/` and removes its boxes,
//! security group, IAM role and key pair when it ends; if a run is killed, clean up with
//! `cgcloud -n /acceptance-<random>/ cleanup --yes && cgcloud -n ... reset-security --yes`.
#![cfg(feature = "aws-acceptance")]
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::process::Command;

fn cgcloud(ns: &str, home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cgcloud"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("CGCLOUD_SSH_OPTS", format!("-i {}/id_ed25519 -o IdentitiesOnly=yes", home.display()))
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap()
}

fn acceptance(role: &str) {
    assert!(std::env::var("CGCLOUD_ZONE").is_ok(), "set CGCLOUD_ZONE (and AWS credentials) for the acceptance tests");
    let home = tempfile::tempdir().unwrap();
    let ns = format!("/acceptance-{:08x}/", rand_suffix());
    let key = home.path().join("id_ed25519");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let key_name = format!("cgcloud-acceptance-{}", &ns[12..20]);
    let run = |args: &[&str]| cgcloud(&ns, home.path(), args);
    assert!(run(&["register-key", key.with_extension("pub").to_str().unwrap(), "-k", &key_name]).status.success());
    let created = run(&["create", role, "-k", &key_name]);
    let result = std::panic::catch_unwind(|| {
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
        let out = run(&["ssh", role, "--", "uname -a && cloud-init status"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Linux"));
        assert_eq!(run(&["ssh", role, "--", "false"]).status.code(), Some(1));
    });
    // Clean up whatever happened.
    let _ = run(&["terminate", role]);
    let _ = run(&["cleanup", "--yes"]);
    let _ = run(&["reset-security", "--yes"]);
    let _ = Command::new("aws").args(["ec2", "delete-key-pair", "--key-name", &key_name]).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() ^ std::process::id()
}

macro_rules! acceptance_tests {
    ($($name:ident => $role:literal),* $(,)?) => {
        $(#[test] fn $name() { acceptance($role) })*
    };
}

acceptance_tests! {
    ubuntu_jammy => "generic-ubuntu-jammy-box",
    ubuntu_noble => "generic-ubuntu-noble-box",
    ubuntu_resolute => "generic-ubuntu-resolute-box",
    debian_bookworm => "generic-debian-bookworm-box",
    debian_trixie => "generic-debian-trixie-box",
    fedora_43 => "generic-fedora-43-box",
    fedora_44 => "generic-fedora-44-box",
    fedora_45 => "generic-fedora-45-box",
    centos_stream_9 => "generic-centos-stream-9-box",
    centos_stream_10 => "generic-centos-stream-10-box",
    amazon_linux_2023 => "generic-amazon-linux-2023-box",
}
