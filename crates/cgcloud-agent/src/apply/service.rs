//! systemd services: the unit written, enabled, started, and restarted when a file it
//! depends on changed in the same run.

use super::*;

impl Runner {
    pub(super) fn service(
        &mut self,
        name: &str,
        unit: Option<&str>,
        enable: bool,
        start: bool,
        restart_on: &[String],
    ) -> StepResult {
        let mut changed = false;
        let mut unit_changed = false;
        if let Some(u) = unit {
            let path = format!("/etc/systemd/system/{name}.service");
            if self.write_file(&path, u.as_bytes(), Some("0644"), None, None)? == Outcome::Changed {
                self.sh("systemctl", &["daemon-reload"])?;
                changed = true;
                unit_changed = true;
            }
        }
        // A drop-in (`NAME.service.d/*.conf`) written by an earlier step of this run changes
        // the unit as much as its file does.
        let drop_in_dir = format!("/etc/systemd/system/{name}.service.d/");
        if !unit_changed && self.changed_paths.iter().any(|p| p.starts_with(&drop_in_dir)) {
            self.sh("systemctl", &["daemon-reload"])?;
            unit_changed = true;
        }
        if enable && !self.test("systemctl", &["is-enabled", "--quiet", name]) {
            self.sh("systemctl", &["enable", name])?;
            changed = true;
        }
        if start {
            let active = self.test("systemctl", &["is-active", "--quiet", name]);
            let restart = active && (unit_changed || restart_on.iter().any(|p| self.changed_paths.contains(p)));
            let verb = if restart {
                Some("restart")
            } else if !active {
                Some("start")
            } else {
                None
            };
            if let Some(verb) = verb {
                if self.no_block {
                    self.sh("systemctl", &["--no-block", verb, name])?;
                } else {
                    self.sh("systemctl", &[verb, name])?;
                }
                changed = true;
            }
        }
        Ok(if changed { Outcome::Changed } else { Outcome::Ok })
    }
}
