//! The context every command runs in: settings, roles, and the connection to the cloud and
//! the namespace, both resolved lazily (so that `list-roles` needs no credentials).

use crate::cli::{LoginArgs, Selection, SshAddress};
use crate::output::Printer;
use crate::settings::Settings;
use anyhow::{bail, Context as _, Result};
use cgcloud_aws::Cloud;
use cgcloud_core::model::{select_box, BoxInfo, Selector};
use cgcloud_core::{tags, Namespace};
use cgcloud_remote::SshTarget;
use cgcloud_roles::Registry;
use tokio::sync::OnceCell;

pub struct Ctx {
    pub settings: Settings,
    pub out: Printer,
    registry: OnceCell<Registry>,
    cloud: OnceCell<Cloud>,
    namespace: OnceCell<Namespace>,
    me: OnceCell<String>,
}

impl Ctx {
    pub fn new(settings: Settings, out: Printer) -> Ctx {
        Ctx {
            settings,
            out,
            registry: OnceCell::new(),
            cloud: OnceCell::new(),
            namespace: OnceCell::new(),
            me: OnceCell::new(),
        }
    }

    pub async fn registry(&self) -> Result<&Registry> {
        self.registry
            .get_or_try_init(|| async { Registry::load(&crate::settings::plugin_dirs()).context("cannot load roles") })
            .await
    }

    pub async fn cloud(&self) -> Result<&Cloud> {
        self.cloud.get_or_try_init(|| async { Ok(Cloud::connect(&self.settings.connect).await?) }).await
    }

    /// The caller's user name: `CGCLOUD_ME`, else from the STS caller identity.
    pub async fn me(&self) -> Result<&str> {
        self.me
            .get_or_try_init(|| async {
                if let Ok(me) = std::env::var("CGCLOUD_ME") {
                    if !me.is_empty() {
                        return Ok(me);
                    }
                }
                let (_, arn) = self.cloud().await?.caller_identity().await?;
                cgcloud_aws::user_name_from_arn(&arn).with_context(|| {
                    format!(
                        "cannot tell your user name from the caller identity '{arn}' (root or an unusual \
                         principal); set CGCLOUD_ME=<name> or pass an explicit --namespace"
                    )
                })
            })
            .await
            .map(String::as_str)
    }

    /// The namespace with `__me__` resolved.
    pub async fn namespace(&self) -> Result<&Namespace> {
        self.namespace
            .get_or_try_init(|| async {
                let spec = &self.settings.namespace;
                Namespace::check(spec)?;
                let me =
                    if spec.contains(cgcloud_core::namespace::ME) { Some(self.me().await?.to_owned()) } else { None };
                let resolved: Result<Result<Namespace, _>, anyhow::Error> =
                    Namespace::resolve(spec, || me.ok_or_else(|| anyhow::anyhow!("no user name")));
                Ok(resolved??)
            })
            .await
    }

    /// Resolves `__me__` in a key-pair name (keeping any `@host` suffix).
    pub async fn resolve_keypair(&self, name: &str) -> Result<String> {
        if !name.contains(cgcloud_core::namespace::ME) {
            return Ok(name.to_owned());
        }
        let me = self.me().await?;
        let user = me.split('@').next().unwrap_or(me).to_lowercase();
        Ok(name.replace(cgcloud_core::namespace::ME, &user))
    }

    /// Exactly one live box of `role`, chosen by `selection`.
    pub async fn select(&self, role: &str, selection: &Selection) -> Result<BoxInfo> {
        let ns = self.namespace().await?;
        let boxes = self.cloud().await?.list_boxes(ns.as_str(), Some(role)).await?;
        if boxes.is_empty() {
            // Distinguish a typo in the role from a role without boxes.
            self.registry().await?.box_role(role)?;
        }
        let sel = Selector {
            cluster: selection.cluster.clone(),
            ordinal: selection.ordinal,
            instance_id: selection.instance_id.clone(),
        };
        Ok(select_box(role, ns.as_str(), boxes, &sel)?)
    }

    /// The SSH target for a box.
    pub async fn ssh_target(
        &self,
        b: &BoxInfo,
        login: Option<&LoginArgs>,
        address: Option<SshAddress>,
    ) -> Result<SshTarget> {
        let mut targets = self.ssh_targets(std::slice::from_ref(b), login, address).await?;
        targets.pop().context("no SSH target")
    }

    /// [`Ctx::ssh_target`] for many boxes at once, doing once what is the same for all of them
    /// (the known_hosts file, each role's default login, the control directory), so that a
    /// fan-out over a cluster costs little more than the `ssh` processes it starts.
    pub async fn ssh_targets(
        &self,
        boxes: &[BoxInfo],
        login: Option<&LoginArgs>,
        address: Option<SshAddress>,
    ) -> Result<Vec<SshTarget>> {
        let mut keys = Vec::with_capacity(boxes.len());
        for b in boxes {
            if b.state != "running" {
                bail!(
                    "box {} ({}) is {}, not running; start it with `cgcloud start {} -I {}`",
                    b.instance_id,
                    b.role,
                    b.state,
                    b.role,
                    b.instance_id
                );
            }
            // `host_key` holds the tag only if it is one bare key (see `cgcloud_aws::ec2`); the
            // box writes the tag, so anything else is never put into known_hosts.
            let host_key = b.host_key.as_deref().with_context(|| {
                if b.tags.contains_key(tags::HOST_KEY) {
                    format!(
                        "box {} published an SSH host key (tag {}) that is not one `type base64` key, so its \
                         identity cannot be verified; refusing to connect",
                        b.instance_id,
                        tags::HOST_KEY
                    )
                } else if b.tags.contains_key(tags::CLUSTER) && !b.tags.contains_key(tags::CONFIGURED) {
                    format!(
                        "box {} has not published its SSH host key yet (cluster nodes do when their first-boot \
                         configuration ends); try again in a minute",
                        b.instance_id
                    )
                } else {
                    format!(
                        "box {} has no recorded SSH host key (tag cgcloud:host-key), so its identity cannot be verified",
                        b.instance_id
                    )
                }
            })?;
            keys.push((b.instance_id.as_str(), host_key));
        }
        let known_hosts = self.settings.known_hosts();
        cgcloud_remote::hostkey::record_many(&known_hosts, &keys)?;
        let control_dir = control_dir();
        cgcloud_remote::private_dir(&control_dir)?;
        // Extra ssh options for every connection, e.g. `-i ~/.ssh/work_key`.
        let extra: Vec<String> =
            std::env::var("CGCLOUD_SSH_OPTS").unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        let mut logins: std::collections::HashMap<&str, Option<String>> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(boxes.len());
        for b in boxes {
            let admin = b.admin_user.clone().unwrap_or_else(|| "root".to_owned());
            let user = match login {
                Some(LoginArgs { user: Some(u), .. }) => u.clone(),
                Some(LoginArgs { admin: true, .. }) => admin,
                _ => {
                    if !logins.contains_key(b.role.as_str()) {
                        logins.insert(&b.role, self.default_login(b).await);
                    }
                    logins.get(b.role.as_str()).cloned().flatten().unwrap_or(admin)
                }
            };
            let address = pick_address(b, address.unwrap_or(self.settings.ssh_address))?;
            out.push(SshTarget {
                address,
                user,
                alias: b.instance_id.clone(),
                known_hosts: known_hosts.clone(),
                control_dir: control_dir.clone(),
                extra: extra.clone(),
            });
        }
        Ok(out)
    }

    /// The role's default login for a box, if the role still exists and declares one.
    async fn default_login(&self, b: &BoxInfo) -> Option<String> {
        let role = self.registry().await.ok()?.box_role(&b.role).ok()?;
        role.default_user.clone()
    }
}

/// Where SSH multiplexing sockets live: the user's runtime directory when there is one, else a
/// directory in the temporary directory named after the uid (`private_dir` checks that it is
/// ours and closed). Short, because socket paths are limited to ~100 bytes.
pub fn control_dir() -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from) {
        if run.is_absolute() && run.is_dir() {
            return run.join("cgcloud-ssh");
        }
    }
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid().to_string()).unwrap_or_else(|_| "user".into());
    std::env::temp_dir().join(format!("cgcloud-ssh-{uid}"))
}

pub fn pick_address(b: &BoxInfo, how: SshAddress) -> Result<String> {
    let public = b.public_ip.clone();
    let private = b.private_ip.clone();
    match how {
        SshAddress::Public => {
            public.with_context(|| format!("box {} has no public IP; use --ssh-address private", b.instance_id))
        }
        SshAddress::Private => private.with_context(|| format!("box {} has no private IP", b.instance_id)),
        SshAddress::Auto => public.or(private).with_context(|| format!("box {} has no IP address yet", b.instance_id)),
    }
}
