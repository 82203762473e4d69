//! A launch as a transaction: what it created so far, the rollback that removes it when the
//! launch fails or is interrupted, and the marks that tell `cleanup` about launches that died.

use super::*;

/// What a launch has created so far, shared with the rollback path.
#[derive(Debug, Default)]
pub(crate) struct TxnState {
    pub(crate) instances: Vec<String>,
    pub(crate) security_group: Option<String>,
    pub(crate) instance_profile: Option<String>,
    /// A persistent volume this launch created (an existing one is never removed).
    pub(crate) volume: Option<String>,
    /// An elastic cluster's leader's own IAM role and profile, and its workers' launch template.
    pub(crate) leader_profile: Option<String>,
    pub(crate) launch_template: Option<String>,
    /// The rollback asked EC2 to terminate `instances`.
    pub(crate) terminating: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Txn {
    pub(crate) id: String,
    /// This process (`cgcloud:launcher`).
    pub(crate) launcher: String,
    pub(crate) state: Arc<Mutex<TxnState>>,
}

impl Txn {
    pub(crate) fn new() -> Txn {
        let id = format!("l-{:016x}", rand::random::<u64>());
        Txn { id, launcher: launcher_id(), state: Arc::new(Mutex::new(TxnState::default())) }
    }

    /// The tags of what this launch creates until it completes (`cleanup` finds them if it
    /// is interrupted).
    pub(crate) fn pending_tags(&self) -> Tags {
        let mut t = Tags::new();
        t.insert(tags::LAUNCH.into(), self.id.clone());
        t.insert(tags::LAUNCH_STATE.into(), tags::LAUNCH_PENDING.into());
        t.insert(tags::LAUNCHER.into(), self.launcher.clone());
        t
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut TxnState) -> R) -> R {
        match self.state.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// This process, as `HOST:PID:BOOT-ID` (tag `cgcloud:launcher`).
pub(crate) fn launcher_id() -> String {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    format!("{}:{}:{}", read("/proc/sys/kernel/hostname"), std::process::id(), read("/proc/sys/kernel/random/boot_id"))
}

/// Whether the launch process a `cgcloud:launcher` tag names is gone: `Some(true)` if it ran on
/// this machine and does not run any more (or the machine rebooted since), `Some(false)` if it
/// still runs here, `None` if it ran elsewhere (then only its age can tell).
pub(crate) fn launcher_gone(launcher: &str) -> Option<bool> {
    let mut parts = launcher.splitn(3, ':');
    let (host, pid, boot) = (parts.next()?, parts.next()?, parts.next()?);
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    if host != read("/proc/sys/kernel/hostname") {
        return None;
    }
    if boot != read("/proc/sys/kernel/random/boot_id") {
        return Some(true);
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Some(!String::from_utf8_lossy(argv0).ends_with("cgcloud"))
}

/// Undoes a failed launch: terminates its boxes and removes what it created for them. What is
/// done is taken off the launch's state as it goes, so that a second Ctrl-C can say what is
/// left.
pub(super) async fn rollback(ctx: &Ctx, txn: &Txn) {
    let state = txn.with(|s| TxnState {
        instances: s.instances.clone(),
        security_group: s.security_group.clone(),
        instance_profile: s.instance_profile.clone(),
        volume: s.volume.clone(),
        leader_profile: s.leader_profile.clone(),
        launch_template: s.launch_template.clone(),
        terminating: s.terminating,
    });
    let Ok(cloud) = ctx.cloud().await else { return };
    // The launch's tag finds what an interrupted RunInstances made before it answered.
    let mut state = state;
    if let Ok(ns) = ctx.namespace().await {
        match cloud.boxes_with_tag(ns.as_str(), tags::LAUNCH, &txn.id).await {
            Ok(found) => {
                for b in found {
                    if !state.instances.contains(&b.instance_id) {
                        state.instances.push(b.instance_id.clone());
                        txn.with(|s| s.instances.push(b.instance_id));
                    }
                }
            }
            Err(e) => tracing::warn!("could not look for the launch's instances by tag: {e}"),
        }
    }
    if !state.instances.is_empty() {
        ctx.out.note(format!("rolling back: terminating {}", state.instances.join(", ")));
        if let Err(e) = cloud.terminate(&state.instances).await {
            tracing::error!(
                "could not terminate {}: {e}; run `cgcloud cleanup` to find them",
                state.instances.join(", ")
            );
            return;
        }
        txn.with(|s| s.terminating = true);
        if let Err(e) = crate::commands::boxes::forget(ctx, &state.instances).await {
            tracing::warn!("could not forget the host keys of {}: {e:#}", state.instances.join(", "));
        }
    }
    if let Some(t) = &state.launch_template {
        match cloud.delete_launch_template(t).await {
            Ok(()) => txn.with(|s| s.launch_template = None),
            Err(e) => tracing::warn!("could not delete launch template {t}: {e}; `cgcloud cleanup` removes it later"),
        }
    }
    if state.security_group.is_none()
        && state.instance_profile.is_none()
        && state.volume.is_none()
        && state.leader_profile.is_none()
    {
        txn.with(|s| s.instances.clear());
        return;
    }
    // A security group (or volume) can only go once no instance uses it.
    if !state.instances.is_empty() {
        if let Err(e) = wait_for_state(ctx, cloud, &state.instances, "terminated", "rolled-back boxes").await {
            tracing::warn!("{e}; `cgcloud cleanup` removes the rest later");
            return;
        }
        txn.with(|s| s.instances.clear());
    }
    if let Some(vol) = &state.volume {
        // A volume this launch made holds nothing yet; it detaches once its box is gone.
        let gone = async {
            wait_volume(cloud, vol, "available", Duration::from_secs(120)).await?;
            cloud.delete_volume(vol).await.map_err(anyhow::Error::from)
        };
        match gone.await {
            Ok(()) => txn.with(|s| s.volume = None),
            Err(e) => tracing::warn!("could not delete the new persistent volume {vol}: {e:#}; delete it by hand"),
        }
    }
    if let Some(sg) = &state.security_group {
        match cloud.delete_security_group(sg).await {
            Ok(()) => txn.with(|s| s.security_group = None),
            Err(e) => tracing::warn!("could not delete security group {sg}: {e}; `cgcloud cleanup` removes it later"),
        }
    }
    for profile in state.instance_profile.iter().chain(&state.leader_profile) {
        let res = async {
            cloud.delete_instance_profile(profile).await?;
            cloud.delete_role(profile).await
        }
        .await;
        match res {
            Ok(()) => txn.with(|s| {
                s.instance_profile.take_if(|p| p == profile);
                s.leader_profile.take_if(|p| p == profile);
            }),
            Err(e) => {
                tracing::warn!("could not delete IAM role/profile {profile}: {e}; `cgcloud reset-security` removes it")
            }
        }
    }
}

/// What an interrupted rollback leaves, and the command that removes it.
pub(super) fn leftovers(txn: &Txn, ns: &str) -> String {
    txn.with(|s| {
        let mut left = Vec::new();
        if !s.instances.is_empty() {
            let how = if s.terminating { " (terminating)" } else { "" };
            left.push(format!("instance(s) {}{how}", s.instances.join(", ")));
        }
        if let Some(sg) = &s.security_group {
            left.push(format!("security group {sg}"));
        }
        if let Some(v) = &s.volume {
            left.push(format!("new persistent volume {v}"));
        }
        if let Some(t) = &s.launch_template {
            left.push(format!("launch template {t}"));
        }
        let mut fix = format!("cgcloud -n {ns} cleanup --min-age 0 --yes");
        if s.volume.is_some() {
            fix.push_str(" --persistent-volumes");
        }
        let mut text = if left.is_empty() {
            "nothing of the launch is left".to_owned()
        } else {
            format!("left behind: {}; remove it with `{fix}` (run it again if a group is still in use)", left.join(", "))
        };
        if let Some(p) = s.instance_profile.as_ref().or(s.leader_profile.as_ref()) {
            text.push_str(&format!(
                "; IAM role {p} stays (the role's next launch uses it; `cgcloud -n {ns} reset-security` removes the namespace's)"
            ));
        }
        text
    })
}

/// Marks the launch complete on its boxes, and on the IAM role and volume it made.
pub(crate) async fn finish_launch(cloud: &Cloud, txn: &Txn, ids: &[String]) -> Result<()> {
    let (profiles, volume) = txn
        .with(|s| (s.instance_profile.iter().chain(&s.leader_profile).cloned().collect::<Vec<_>>(), s.volume.clone()));
    let mut resources = ids.to_vec();
    resources.extend(volume);
    cloud.delete_tags(&resources, &[tags::LAUNCH_STATE]).await?;
    for p in profiles {
        cloud.untag_role_and_profile(&p, tags::LAUNCH_STATE).await?;
    }
    Ok(())
}

/// Runs `work` as a transaction: on error or Ctrl-C the launch is rolled back, unless `keep`.
pub(crate) async fn transaction<T>(
    ctx: &Ctx,
    txn: &Txn,
    keep: bool,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let result = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if let Err(e) = &result {
        let ids = txn.with(|s| s.instances.clone());
        if keep {
            if !ids.is_empty() {
                if let Ok(cloud) = ctx.cloud().await {
                    let mut t = Tags::new();
                    t.insert(tags::LAUNCH_STATE.into(), "failed".into());
                    if let Err(e) = cloud.create_tags(&ids, &t).await {
                        tracing::warn!("could not mark {} as a failed launch: {e}", ids.join(", "));
                    }
                }
                ctx.out.note(format!("keeping {} for debugging (--never-terminate)", ids.join(", ")));
            }
        } else {
            tracing::debug!("launch failed: {e:#}");
            // A second Ctrl-C stops the rollback, saying what is left and how to remove it.
            tokio::select! {
                _ = rollback(ctx, txn) => {}
                _ = tokio::signal::ctrl_c() => {
                    let ns = ctx.namespace().await.map(|n| n.to_string()).unwrap_or_else(|_| ctx.settings.namespace.clone());
                    let what = leftovers(txn, &ns);
                    if crate::output::json_errors() {
                        eprintln!("{}", crate::output::error_json("interrupted", &format!("interrupted twice; the rollback stopped: {what}"), None));
                    } else {
                        eprintln!("error: interrupted twice; the rollback stopped: {what}");
                    }
                    std::process::exit(130);
                }
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_rollback_names_what_is_left_and_the_command() {
        let txn = Txn::new();
        assert_eq!(leftovers(&txn, "/team/"), "nothing of the launch is left");
        txn.with(|s| {
            s.instances = vec!["i-1".into(), "i-2".into()];
            s.terminating = true;
            s.security_group = Some("sg-1".into());
            s.volume = Some("vol-1".into());
            s.instance_profile = Some("team_r".into());
        });
        let text = leftovers(&txn, "/team/");
        assert!(text.contains("instance(s) i-1, i-2 (terminating)") && text.contains("security group sg-1"), "{text}");
        assert!(text.contains("`cgcloud -n /team/ cleanup --min-age 0 --yes --persistent-volumes`"), "{text}");
        assert!(text.contains("IAM role team_r stays"), "{text}");
    }
}
