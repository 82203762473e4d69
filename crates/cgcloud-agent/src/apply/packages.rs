//! Packages: the distribution's upgrade, installing packages, and apt repositories with
//! their pinned signing keys.

use super::*;

impl Runner {
    pub(super) fn upgrade(&mut self, family: &str) -> StepResult {
        if family == "apt" {
            self.sh("apt-get", &["-q", "update"])?;
            self.apt_updated = true;
            self.sh(
                "apt-get",
                &["-q", "-y", "-o", "Dpkg::Options::=--force-confold", "-o", "DPkg::Lock::Timeout=600", "upgrade"],
            )?;
        } else {
            self.sh("dnf", &["-y", "-q", "upgrade"])?;
        }
        Ok(Outcome::Changed)
    }

    pub(super) fn packages(&mut self, family: &str, names: &[String]) -> StepResult {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        if family == "apt" {
            let mut args = vec!["-W", "-f", "${db:Status-Status}\\n"];
            args.extend(&refs);
            let installed = Command::new("dpkg-query")
                .args(&args)
                .stderr(Stdio::null())
                .output()
                .map(|o| {
                    let s = String::from_utf8_lossy(&o.stdout).into_owned();
                    o.status.success() && s.lines().count() == names.len() && s.lines().all(|l| l.trim() == "installed")
                })
                .unwrap_or(false);
            if installed && !self.apt_sources_changed {
                return Ok(Outcome::Ok);
            }
            if installed {
                return Ok(Outcome::Ok);
            }
            if !self.apt_updated || self.apt_sources_changed {
                self.sh("apt-get", &["-q", "update"])?;
                self.apt_updated = true;
                self.apt_sources_changed = false;
            }
            let mut args =
                vec!["-q", "-y", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confold", "install"];
            args.extend(&refs);
            self.sh("apt-get", &args)?;
        } else {
            let mut q = vec!["-q"];
            q.extend(&refs);
            if self.test("rpm", &q) {
                return Ok(Outcome::Ok);
            }
            let mut args = vec!["-y", "-q", "install"];
            args.extend(&refs);
            self.sh("dnf", &args)?;
        }
        Ok(Outcome::Changed)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn apt_repo(
        &mut self,
        name: &str,
        uri: &str,
        suites: &[String],
        components: &[String],
        key_url: &str,
        key_sha: Option<&str>,
        key_fingerprint: Option<&str>,
    ) -> StepResult {
        // A pinned key is stored as binary packets (`.gpg`), which apt reads with either of its
        // verifiers; an unpinned one as downloaded.
        let ext = if key_fingerprint.is_some() { "gpg" } else { "asc" };
        let key_path = format!("/etc/apt/keyrings/{name}.{ext}");
        let list = format!("deb [signed-by={key_path}] {uri} {} {}\n", suites.join(" "), components.join(" "));
        let list_path = format!("/etc/apt/sources.list.d/{name}.list");
        let list_same = std::fs::read_to_string(&list_path).is_ok_and(|c| c == list);
        let key_ok = match (key_fingerprint, std::fs::read(&key_path)) {
            (_, Err(_)) => false,
            (Some(want), Ok(have)) => crate::pgp::pinned_key(&have, want).is_ok(),
            (None, Ok(_)) => true,
        };
        if list_same && key_ok {
            return Ok(Outcome::Ok);
        }
        let tmp = format!("/etc/apt/keyrings/.{name}.download");
        std::fs::create_dir_all("/etc/apt/keyrings").map_err(|e| fail(format!("/etc/apt/keyrings: {e}")))?;
        self.sh("curl", &["-fsSL", "--retry", "3", "-o", &tmp, key_url])?;
        let key = std::fs::read(&tmp).map_err(|e| fail(format!("{tmp}: {e}")))?;
        // Best effort: a temporary file left in root's downloads directory is replaced by the next.
        let _ = std::fs::remove_file(&tmp);
        if let Some(want) = key_sha {
            let got = hex::encode(Sha256::digest(&key));
            if !got.eq_ignore_ascii_case(want) {
                return Err(fail(format!("the key from {key_url} has SHA-256 {got}, expected {want}")));
            }
        }
        let key = match key_fingerprint {
            Some(want) => crate::pgp::pinned_key(&key, want)
                .map_err(|e| fail(format!("refusing the signing key from {key_url} for repository {name}: {e}")))?,
            None => key,
        };
        self.write_file(&key_path, &key, Some("0644"), None, None)?;
        self.write_file(&list_path, list.as_bytes(), Some("0644"), None, None)?;
        self.apt_sources_changed = true;
        Ok(Outcome::Changed)
    }
}
