//! The controller's volumes: EBS attachments that moto records made real as loop devices in the
//! (running) hosts, detachments taken back out, and deleted volumes' data dropped.

use super::*;

/// A volume made visible in a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Attachment {
    pub(super) instance: String,
    /// The host's systemd-nspawn: a host booted again needs the device made again.
    pub(super) nspawn_pid: u32,
    pub(super) device: String,
}

impl Controller {
    /// Makes attached volumes appear in their (running) hosts, releases detached ones, and
    /// drops the data of deleted ones. Returns whether an attachment waits for its host's init
    /// (then the next tick comes soon).
    pub(super) async fn realize_volumes(&mut self, local: &HashSet<String>) -> bool {
        let volumes = match self.cloud.all_volumes().await {
            Ok(v) => v,
            Err(e) => {
                log(format!("volumes: {e}"));
                return false;
            }
        };
        let mut alive = HashSet::new();
        let mut waiting = false;
        for v in &volumes {
            let id = v.volume_id.as_str();
            alive.insert(id.to_owned());
            let attachment = v.attachments.iter().find(|a| local.contains(&a.instance_id));
            let Some(att) = attachment else {
                if let Some(was) = self.attached.remove(id) {
                    self.detach(id, &was).await;
                }
                continue;
            };
            let instance = att.instance_id.clone();
            // Root volumes of the launch mapping are the host's overlay disk, not devices.
            let device = att.device.clone();
            if device.is_empty() || device.ends_with("sda1") || device.ends_with("xvda") || device == "/dev/sda" {
                continue;
            }
            if !crate::volumes::valid_device(&device) {
                if self.refused.insert((id.to_owned(), device.clone())) {
                    log(format!("volume {id}: cannot attach to {instance}: '{device}' is not an EC2 device name"));
                }
                continue;
            }
            let Some(pid) = (Host { dir: self.dir(), id: &instance }).pid() else { continue };
            if self.stuck.contains(&pid) {
                continue;
            }
            let want = Attachment { instance: instance.clone(), nspawn_pid: pid, device: device.clone() };
            if self.attached.get(id) == Some(&want) {
                continue;
            }
            if let Some(was) = self.attached.remove(id) {
                // Moved to another instance or device (detached and attached again between ticks).
                self.detach(id, &was).await;
            }
            match crate::volumes::attach(
                self.dir(),
                &instance,
                id,
                i32::try_from(v.size_gb.max(1)).unwrap_or(i32::MAX),
                pid,
                &device,
            )
            .await
            {
                Ok(crate::volumes::Attached::Done) => {
                    log(format!("volume {id}: attached to {instance} at {}", crate::volumes::guest_device(&device)));
                    self.attached.insert(id.to_owned(), want);
                }
                Ok(crate::volumes::Attached::NotYet) => waiting = true,
                Ok(crate::volumes::Attached::Unanswered) => {
                    log(format!(
                        "volume {id}: cannot attach to {instance}: its /dev does not answer; not trying again"
                    ));
                    self.stuck.insert(pid);
                }
                Err(e) => log(format!("volume {id}: cannot attach to {instance}: {e}")),
            }
        }
        for id in crate::volumes::known(self.dir()) {
            if !alive.contains(&id) {
                crate::volumes::delete(self.dir(), &id).await;
                self.attached.remove(&id);
                log(format!("volume {id}: deleted"));
            }
        }
        waiting
    }

    /// Takes a detached volume's device out of its host (if that still runs) and releases it.
    pub(super) async fn detach(&self, id: &str, was: &Attachment) {
        let running = (Host { dir: self.dir(), id: &was.instance }).pid() == Some(was.nspawn_pid);
        if running {
            if let Err(e) = crate::volumes::remove_from_host(was.nspawn_pid, &was.device).await {
                log(format!("volume {id}: cannot remove {} from {}: {e}", was.device, was.instance));
            }
        }
        // The loop device's numbers will back other volumes: the host must not open them
        // again (it may have kept a link to the node).
        if let Some(mm) = crate::volumes::loop_numbers(self.dir(), id).await {
            if let Err(e) = crate::host::allow_block_device(&was.instance, &mm, false) {
                log(format!("volume {id}: cannot revoke {mm} from {}: {e}", was.instance));
            }
        }
        crate::volumes::release(self.dir(), id).await;
        log(format!("volume {id}: detached from {}", was.instance));
    }
}
