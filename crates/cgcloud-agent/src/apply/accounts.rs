//! Users and groups: made, or brought to the shell, groups and sudo the plan describes.

use super::*;

impl Runner {
    pub(super) fn user(
        &mut self,
        name: &str,
        groups: &[String],
        shell: &str,
        system: bool,
        sudo: bool,
        home: Option<&str>,
    ) -> StepResult {
        let mut changed = false;
        if self.test("getent", &["passwd", name]) {
            let current = Command::new("id")
                .args(["-nG", name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let have: BTreeSet<&str> = current.split_whitespace().collect();
            let missing: Vec<&str> = groups.iter().map(String::as_str).filter(|g| !have.contains(g)).collect();
            if !missing.is_empty() {
                self.sh("usermod", &["-aG", &missing.join(","), name])?;
                changed = true;
            }
        } else {
            let mut args = vec!["--create-home", "--shell", shell];
            if system {
                args.push("--system");
            }
            // useradd makes a group named after the user, unless one exists already.
            if self.test("getent", &["group", name]) {
                args.extend(["--gid", name]);
            }
            if let Some(h) = home {
                args.extend(["--home-dir", h]);
            }
            let joined = groups.join(",");
            if !groups.is_empty() {
                args.extend(["--groups", &joined]);
            }
            args.push(name);
            self.sh("useradd", &args)?;
            changed = true;
        }
        if sudo {
            let o = self.write_file(
                &format!("/etc/sudoers.d/cgcloud-{name}"),
                format!("{name} ALL=(ALL) NOPASSWD:ALL\n").as_bytes(),
                Some("0440"),
                None,
                None,
            )?;
            changed |= o == Outcome::Changed;
        }
        Ok(if changed { Outcome::Changed } else { Outcome::Ok })
    }

    /// The uid, gid and mode a file or directory should have: what the step names (an owner
    /// without a group means the owner's login group, as `chown owner:` does), else what `have`
    /// has, else the agent's own user (root) and `default`.
    pub(super) fn wanted(
        path: &str,
        have: Option<Attrs>,
        owner: Option<&str>,
        group: Option<&str>,
        mode: Option<&str>,
        default: u32,
    ) -> Result<Attrs, StepError> {
        let (my_uid, my_gid) = safefs::process_ids();
        let (uid, login_gid) = match owner {
            Some(o) => match o.parse::<u32>() {
                Ok(uid) => (uid, None),
                Err(_) => {
                    let a = crate::keys::account(o).ok_or_else(|| fail(format!("{path}: no such user '{o}'")))?;
                    (a.uid, Some(a.gid))
                }
            },
            None => (have.map_or(my_uid, |h| h.uid), None),
        };
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => crate::keys::group_id(g).ok_or_else(|| fail(format!("{path}: no such group '{g}'")))?,
            },
            None => login_gid.or(have.map(|h| h.gid)).unwrap_or(my_gid),
        };
        let mode = match mode {
            Some(m) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| fail(format!("{path}: mode '{m}' is not an octal mode such as 0644")))?,
            None => have.map_or(default, |h| h.mode),
        };
        Ok(Attrs { uid, gid, mode })
    }
}
