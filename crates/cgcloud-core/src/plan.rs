//! Plans: what provisioning a box means, as a list of typed, idempotent steps. A role compiles
//! to a plan on the workstation; the agent applies it on the box (over SSH for `create`, or at
//! first boot for cluster nodes). Each step checks before it acts, so applying a plan twice
//! changes nothing the second time.
//!
//! Text in steps may hold `{{ name }}` placeholders. Role options, role variables and `os.*`
//! are substituted when the plan is compiled; `box.*` and `cluster.*` facts are substituted
//! by the agent on the box, where they are known.
//!
//! The placeholder language is hand-written rather than `minijinja`'s on purpose: it is a name
//! and a few quoting filters, nothing else, so every placeholder of every role is checked when
//! the role is loaded and the agent, which renders the deferred ones as root, carries no template
//! engine; a Jinja template could loop, branch and call, and reads an unknown name as empty.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// Which boxes of a cluster a step applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum On {
    /// Every box; for a cluster's image, these run when the image is baked.
    #[default]
    All,
    /// Only the cluster leader, at its first boot in a cluster.
    Leader,
    /// Only cluster workers, at their first boot in a cluster.
    Workers,
}

impl On {
    pub fn is_all(&self) -> bool {
        *self == On::All
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub role: String,
    /// The OS id the plan was compiled for, e.g. `debian-12`.
    pub os: String,
    /// `apt` or `dnf`.
    pub family: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What the step does, for progress and logs.
    pub title: String,
    #[serde(default, skip_serializing_if = "On::is_all")]
    pub on: On,
    #[serde(flatten)]
    pub action: Action,
}

/// One idempotent operation. Every variant has a check that makes it a no-op when the box
/// already is as described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum Action {
    /// An apt source with its signing key (written to /etc/apt/keyrings).
    AptRepo {
        name: String,
        uri: String,
        suites: Vec<String>,
        components: Vec<String>,
        key_url: String,
        key_sha256: Option<String>,
        /// The OpenPGP fingerprint the key must have (the only primary key in the file).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_fingerprint: Option<String>,
    },
    /// A dnf repository.
    DnfRepo {
        name: String,
        baseurl: String,
        gpgkey: String,
    },
    /// Packages installed with the OS's package manager.
    Packages {
        names: Vec<String>,
    },
    Group {
        name: String,
        system: bool,
    },
    User {
        name: String,
        groups: Vec<String>,
        shell: String,
        system: bool,
        sudo: bool,
        home: Option<String>,
    },
    Directory {
        path: String,
        owner: Option<String>,
        group: Option<String>,
        mode: Option<String>,
    },
    /// A file with exactly this content; `template` content has `{{ box.* }}`/`{{ cluster.* }}`
    /// placeholders that the agent fills in.
    File {
        path: String,
        content: String,
        owner: Option<String>,
        group: Option<String>,
        mode: Option<String>,
        template: bool,
    },
    /// A download verified against exactly one of: a pinned SHA-256 or SHA-512, or the digest
    /// in a checksum file published beside it (`sha256_url`, `sha512_url`; fetched at every
    /// apply); archives can be extracted into `dest`.
    Download {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha512: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha512_url: Option<String>,
        dest: String,
        extract: bool,
        strip_components: u32,
        mode: Option<String>,
    },
    /// A shell command, skipped if `creates` exists or `unless` succeeds.
    Command {
        run: String,
        creates: Option<String>,
        unless: Option<String>,
        user: Option<String>,
    },
    /// A systemd service: its unit file (if given), enabled and started; restarted when one
    /// of `restart_on` (file paths) changed in this run.
    Service {
        name: String,
        unit: Option<String>,
        enable: bool,
        start: bool,
        restart_on: Vec<String>,
    },
}

impl Plan {
    /// A stable hash of the plan, recorded on boxes and images to notice role changes.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..8])
    }
}

/// A digest algorithm of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Sha512,
}

impl DigestAlg {
    /// How many hex digits its digest has.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlg::Sha256 => 64,
            DigestAlg::Sha512 => 128,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DigestAlg::Sha256 => "SHA-256",
            DigestAlg::Sha512 => "SHA-512",
        }
    }

    /// The lower-case hex digest of `data`.
    pub fn digest(self, data: &[u8]) -> String {
        match self {
            DigestAlg::Sha256 => hex::encode(Sha256::digest(data)),
            DigestAlg::Sha512 => hex::encode(sha2::Sha512::digest(data)),
        }
    }
}

/// The digest for file `name` in the text of a published checksum file, lower case: GNU's
/// `HEX  NAME` lines (one or many files; `*NAME` too, and a bare `HEX`), BSD's
/// `SHA512 (NAME) = HEX`, and GnuPG's `--print-md` (older Apache releases): `NAME: HEX HEX ...`,
/// upper case in groups, continued on the following lines.
pub fn published_digest(text: &str, name: &str, alg: DigestAlg) -> Option<String> {
    let is_hex = |s: &str| s.len() == alg.hex_len() && s.chars().all(|c| c.is_ascii_hexdigit());
    if let Some(rest) = text.trim_start().strip_prefix(name).and_then(|r| r.strip_prefix(':')) {
        let hex: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
        return is_hex(&hex).then(|| hex.to_ascii_lowercase());
    }
    let names_it = |n: &str| n == name || n.ends_with(&format!("/{name}"));
    for line in text.lines().map(str::trim) {
        if let Some((head, hex)) = line.split_once(" = ") {
            let bsd_name = head.split_once(" (").and_then(|(_, n)| n.strip_suffix(')'));
            if bsd_name.is_some_and(names_it) && is_hex(hex.trim()) {
                return Some(hex.trim().to_ascii_lowercase());
            }
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(hex), file) = (words.next(), words.next()) else {
            continue;
        };
        if is_hex(hex) && file.map(|f| f.trim_start_matches('*')).is_none_or(names_it) {
            return Some(hex.to_ascii_lowercase());
        }
    }
    None
}

/// Substitutes `{{ name }}` placeholders from `vars`. Placeholders whose name starts with one
/// of `deferred` are left for later; any other unknown name is an error.
pub fn render(text: &str, vars: &BTreeMap<String, String>, deferred: &[&str]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("unclosed '{{{{' in: {}", text.chars().take(80).collect::<String>()));
        };
        let expr = after[..end].trim();
        let mut parts = expr.split('|').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let filters: Vec<&str> = parts.collect();
        match vars.get(name) {
            Some(v) => out.push_str(&filter(v, &filters)?),
            None if deferred.iter().any(|d| name.starts_with(d)) => {
                out.push_str("{{ ");
                out.push_str(expr);
                out.push_str(" }}");
            }
            None => return Err(format!("unknown variable '{name}'")),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Applies `{{ value | filter }}` filters, in order:
/// - `shell`: one word for a POSIX shell, single-quoted;
/// - `unit`: the inside of a double-quoted systemd unit-file value (`Environment="K={{ v | unit }}"`):
///   `\`, `"` and `%` escaped, so that a value cannot end the quotes or expand a specifier;
/// - `lines`: the two characters `\n` become line breaks (option values hold no newlines);
/// - `words`: one whitespace-separated word per line (a list option, e.g. plugins.txt).
fn filter(value: &str, filters: &[&str]) -> Result<String, String> {
    let mut v = value.to_owned();
    for f in filters {
        v = match *f {
            "shell" => format!("'{}'", v.replace('\'', r"'\''")),
            "unit" => v.replace('\\', r"\\").replace('"', r#"\""#).replace('%', "%%"),
            "lines" => v.replace("\\n", "\n"),
            "words" => v.split_whitespace().map(|w| format!("{w}\n")).collect(),
            other => return Err(format!("unknown filter '{other}' (filters: shell, unit, lines, words)")),
        };
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_checksum_files() {
        let h256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let h512 = "ee26b0dd4af7e749aa1a8ee3c10ae9923f618980772e473f8819a5d4940e0db27ac185f8a0e1d5f84f88bc887fd67b143732c304cc5fa9ad8e6f57f50028a8ff";
        let (s256, s512) = (DigestAlg::Sha256, DigestAlg::Sha512);
        let f = "spark-4.0.1-bin-hadoop3.tgz";
        // A bare digest; GNU's `HEX  NAME` (and binary mode's `*NAME`).
        assert_eq!(published_digest(&format!("{h256}\n"), "x.jar", s256).as_deref(), Some(h256));
        assert_eq!(published_digest(&format!("{h512}  {f}\n"), f, s512).as_deref(), Some(h512));
        assert_eq!(published_digest(&format!("{}  *{f}\n", h512.to_uppercase()), f, s512).as_deref(), Some(h512));
        // A file of several: the line of this one.
        let many = format!("{}  other.tgz\n{h512}  dist/{f}\n", "a".repeat(128));
        assert_eq!(published_digest(&many, f, s512).as_deref(), Some(h512));
        // BSD (Hadoop's .sha512).
        let bsd = format!("SHA512 (hadoop-3.4.1.tar.gz) = {h512}\n");
        assert_eq!(published_digest(&bsd, "hadoop-3.4.1.tar.gz", s512).as_deref(), Some(h512));
        // GnuPG's --print-md (older Apache releases): upper case, in groups, over several lines.
        let up = h512.to_uppercase();
        let groups: Vec<&str> = (0..16).map(|i| &up[i * 8..i * 8 + 8]).collect();
        let gpg = format!("{f}: {}\n{}{}\n", groups[..6].join(" "), " ".repeat(f.len() + 2), groups[6..].join(" "));
        assert_eq!(published_digest(&gpg, f, s512).as_deref(), Some(h512));
        // Another file's digest, the wrong length, or nothing: none.
        assert_eq!(published_digest(&format!("{h512}  other.tgz\n"), f, s512), None);
        assert_eq!(published_digest(&format!("{h256}  {f}\n"), f, s512), None);
        assert_eq!(published_digest("<html>Not Found</html>", f, s512), None);
        assert_eq!(s512.digest(b"test"), h512);
        assert_eq!(s256.digest(b"test"), h256);
    }

    #[test]
    fn filters_quote_for_their_context() {
        let mut vars = BTreeMap::new();
        vars.insert("v".to_owned(), r#"a b'c"d\e%f;$(id)\nnext"#.to_owned());
        assert_eq!(render("{{ v | shell }}", &vars, &[]).unwrap(), r#"'a b'\''c"d\e%f;$(id)\nnext'"#);
        assert_eq!(render("{{ v|unit }}", &vars, &[]).unwrap(), r#"a b'c\"d\\e%%f;$(id)\\nnext"#);
        assert_eq!(render("{{ v | lines }}", &vars, &[]).unwrap(), "a b'c\"d\\e%f;$(id)\nnext");
        assert!(render("{{ v | nope }}", &vars, &[]).unwrap_err().contains("unknown filter 'nope'"));
        vars.insert("list".to_owned(), "  ec2:1.2  git:5.10.1 ".to_owned());
        assert_eq!(render("{{ list | words }}", &vars, &[]).unwrap(), "ec2:1.2\ngit:5.10.1\n");
        // Deferred placeholders keep their filters for the agent.
        assert_eq!(render("{{ box.ip | shell }}", &vars, &["box."]).unwrap(), "{{ box.ip | shell }}");
    }

    #[test]
    fn render_substitutes_and_defers() {
        let mut vars = BTreeMap::new();
        vars.insert("version".to_owned(), "4.0.1".to_owned());
        vars.insert("os.codename".to_owned(), "bookworm".to_owned());
        assert_eq!(render("spark-{{version}}.tgz", &vars, &[]).unwrap(), "spark-4.0.1.tgz");
        assert_eq!(render("{{ os.codename }} main", &vars, &[]).unwrap(), "bookworm main");
        assert_eq!(render("ip={{box.private_ip}}", &vars, &["box.", "cluster."]).unwrap(), "ip={{ box.private_ip }}");
        assert_eq!(render("{{ nope }}", &vars, &["box."]).unwrap_err(), "unknown variable 'nope'");
        assert!(render("{{ open", &vars, &[]).is_err());
        assert_eq!(render("no placeholders", &vars, &[]).unwrap(), "no placeholders");
    }

    #[test]
    fn plans_round_trip_and_hash_stably() {
        let p = Plan {
            role: "r".into(),
            os: "debian-12".into(),
            family: "apt".into(),
            steps: vec![
                Step { title: "install".into(), on: On::All, action: Action::Packages { names: vec!["htop".into()] } },
                Step {
                    title: "leader only".into(),
                    on: On::Leader,
                    action: Action::Command { run: "true".into(), creates: None, unless: None, user: None },
                },
            ],
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""do":"packages""#) && json.contains(r#""on":"leader""#));
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.hash(), p.hash());
        assert_eq!(p.hash().len(), 16);
    }
}
