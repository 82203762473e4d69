//! The agent's part of a box's plan: its configuration file and its services (their unit
//! files are in `assets/`).

use super::*;

/// How the agent runs on the boxes of a launch.
#[derive(Debug, Clone)]
pub(crate) struct AgentSetup {
    pub(crate) metrics: bool,
    pub(crate) interval: u64,
    /// `--metrics` and `--agent-interval` as given: also tags, which the agent honours over its
    /// configuration file (boxes recreated from an image, cluster nodes: their agent.json is
    /// the image's).
    pub(crate) flags: Tags,
    pub(crate) accounts: Vec<String>,
    pub(crate) busy_probe: Option<String>,
    pub(crate) idle_cpu_percent: Option<u32>,
    /// The role's `[cluster.scaling]`, for the agent of an elastic cluster's leader (the
    /// agent's `ScaleConfig`).
    pub(crate) scaling: Option<serde_json::Value>,
}

/// The agent's configuration file and service, appended to the role's plan.
pub(crate) fn agent_steps(ctx: &Ctx, p: &Prepared, region: &str) -> Vec<Step> {
    let Some(a) = &p.agent else { return Vec::new() };
    let s = &ctx.settings.agent;
    let mut config = serde_json::json!({
        "namespace": p.ns.as_str(),
        "region": region,
        "endpoint": s.endpoint,
        "access_key_id": s.access_key_id,
        "secret_access_key": s.secret_access_key,
        "accounts": a.accounts,
        "keypairs": p.keypair_patterns,
        "interval": a.interval,
        "metrics": a.metrics,
        "busy_probe": a.busy_probe,
        "idle_cpu_percent": a.idle_cpu_percent,
    });
    // Only where the role scales, so that every other box's plan (and its hash) is as before.
    if let (Some(scaling), Some(c)) = (&a.scaling, config.as_object_mut()) {
        c.insert("scaling".into(), scaling.clone());
    }
    let unit = include_str!("assets/cgcloud-agent.service");
    // Every boot, before the services that keep data there: instance-store disks are blank
    // after a stop/start, and the persistent volume's nofail mount is ordered before nothing.
    let storage_unit = include_str!("assets/cgcloud-storage.service");
    vec![
        Step {
            title: "service cgcloud-storage".into(),
            on: On::All,
            action: Action::Service {
                name: "cgcloud-storage".into(),
                unit: Some(storage_unit.into()),
                enable: true,
                start: true,
                restart_on: Vec::new(),
            },
        },
        Step {
            title: "agent configuration".into(),
            on: On::All,
            action: Action::File {
                path: "/etc/cgcloud/agent.json".into(),
                content: serde_json::to_string_pretty(&config).unwrap_or_default() + "\n",
                owner: Some("root".into()),
                group: Some("root".into()),
                mode: Some("0600".into()),
                template: false,
            },
        },
        Step {
            title: "service cgcloud-agent".into(),
            on: On::All,
            action: Action::Service {
                name: "cgcloud-agent".into(),
                unit: Some(unit.into()),
                enable: true,
                start: true,
                restart_on: vec!["/etc/cgcloud/agent.json".into(), "/usr/local/bin/cgcloud-agent".into()],
            },
        },
    ]
}
