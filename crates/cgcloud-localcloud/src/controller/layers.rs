//! The controller's image layers: an image moto records of a local instance becomes an overlay
//! layer made from the powered-off host's disk; layers of deregistered images go once no disk
//! or other layer uses them.

use super::*;
use cgcloud_core::fsutil::remove_dir_all_if_exists;

/// A disk layer made from an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LayerMeta {
    pub(super) image_id: String,
    /// The lower directories for instances launched from this image, top first.
    pub(super) lowers: Vec<PathBuf>,
}

impl Controller {
    pub(super) fn layer_dir(&self, image_id: &str) -> PathBuf {
        self.dir().join("layers").join(image_id)
    }

    pub(super) fn layer(&self, image_id: &str) -> Option<LayerMeta> {
        serde_json::from_str(&std::fs::read_to_string(self.layer_dir(image_id).join("layer.json")).ok()?).ok()
    }

    /// The lower directories for an instance launched from `image_id`: `Ok(None)` while the
    /// image is still being turned into a layer, `Err` if it can never be realized.
    pub(super) fn lowers_for(
        &self,
        image_id: &str,
        pending_images: &HashMap<String, String>,
    ) -> Result<Option<Vec<PathBuf>>, String> {
        if let Some(b) = self.base.get(image_id) {
            return Ok(Some(vec![b.rootfs.clone()]));
        }
        if let Some(l) = self.layer(image_id) {
            return Ok(Some(l.lowers));
        }
        if pending_images.contains_key(image_id) {
            return Ok(None);
        }
        let known: Vec<String> = self.base.values().map(|b| format!("{} ({})", b.os_id, b.ami_id)).collect();
        Err(format!(
            "the local cloud cannot run image {image_id}: it runs only its Debian images ({}) and images baked from them",
            known.join(", ")
        ))
    }

    /// Turns new images of local instances into layers; removes layers of deregistered images.
    /// Returns the images still waiting for their source instance to power off, with that
    /// instance: its disk must outlive a terminate until the layer is made (`cgcloud create -I
    /// -T` terminates as soon as EC2 says the image is available, which moto says at once; the
    /// source's power-off could end between this look and the tick's, and its disk go first).
    pub(super) async fn process_images(
        &mut self,
        local: &HashSet<String>,
        instances: &[Observed],
    ) -> Result<HashMap<String, String>, Error> {
        let images = self.cloud.own_images().await?;
        let mut pending = HashMap::new();
        let mut alive = HashSet::new();
        for img in &images {
            let id = img.image_id.as_str();
            alive.insert(id.to_owned());
            if self.layer(id).is_some() {
                continue;
            }
            let Some(src) = img.source_instance.as_deref().filter(|s| local.contains(*s)) else { continue };
            let src_state = instances.iter().find(|i| i.id == src).map(|i| i.state.as_str()).unwrap_or("");
            let host = Host { dir: self.dir(), id: src };
            // Wait for a stopping host to power off, so the layer is a consistent disk.
            if self.is_busy(src) || (matches!(src_state, "stopping" | "stopped") && host.pid().is_some()) {
                pending.insert(id.to_owned(), src.to_owned());
                continue;
            }
            match self.make_layer(id, src).await {
                Ok(()) => log(format!("image {id}: layer from {src}")),
                Err(e) => log(format!("image {id}: cannot make a layer from {src}: {e}")),
            }
        }
        // Layers of deregistered images go once no disk uses them.
        let in_use: HashSet<PathBuf> = std::fs::read_dir(self.dir().join("instances"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Host { dir: self.dir(), id: &e.file_name().to_string_lossy() }.meta())
            .flat_map(|m| m.lowers)
            .collect();
        for entry in std::fs::read_dir(self.dir().join("layers")).into_iter().flatten().flatten() {
            let image = entry.file_name().to_string_lossy().into_owned();
            let fs = entry.path().join("fs");
            let used_by_layer = self.layers_above(&fs);
            if !alive.contains(&image) && !in_use.contains(&fs) && !used_by_layer {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => log(format!("image {image}: layer removed")),
                    Err(e) => log(format!("image {image}: cannot remove its layer {}: {e}", entry.path().display())),
                }
            }
        }
        Ok(pending)
    }

    /// True if another layer stacks on top of `fs`.
    pub(super) fn layers_above(&self, fs: &Path) -> bool {
        std::fs::read_dir(self.dir().join("layers")).into_iter().flatten().flatten().any(|e| {
            let meta: Option<LayerMeta> =
                std::fs::read_to_string(e.path().join("layer.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
            meta.is_some_and(|m| m.lowers.iter().skip(1).any(|l| l == fs))
        })
    }

    /// A stopped instance's upper directory becomes the layer (and the instance continues on
    /// top of it with an empty upper); a running one's is copied, as with a no-reboot image.
    pub(super) async fn make_layer(&self, image_id: &str, src: &str) -> Result<(), Error> {
        let host = Host { dir: self.dir(), id: src };
        let mut meta = host.meta().ok_or_else(|| Error::Controller(format!("{src} has no disk")))?;
        let dir = self.layer_dir(image_id);
        let tmp = self.dir().join("layers").join(format!(".{image_id}"));
        remove_dir_all_if_exists(&tmp).map_err(|e| Error::io(&tmp, e))?;
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let fs = dir.join("fs");
        if host.pid().is_some() {
            // The guest owns what it copies: frozen, it cannot swap a directory for a symlink
            // between cp's look and its open (which would copy the machine's files into the
            // image), and the copy is a consistent disk, as a no-reboot image is on EC2.
            crate::host::freeze(src, true).await?;
            let copied = sys::run(
                "cp",
                &["-a", "--reflink=auto", &format!("{}/.", host.upper().display()), &tmp.join("fs").to_string_lossy()],
            )
            .await;
            crate::host::freeze(src, false).await?;
            copied?;
        } else {
            std::fs::rename(host.upper(), tmp.join("fs")).map_err(|e| Error::io(&host.upper(), e))?;
            std::fs::create_dir_all(host.upper()).map_err(|e| Error::io(&host.upper(), e))?;
            meta.lowers.insert(0, fs.clone());
        }
        let mut lowers = vec![fs];
        lowers.extend(meta.lowers.iter().filter(|l| !l.starts_with(&dir)).cloned());
        let layer = LayerMeta { image_id: image_id.to_owned(), lowers };
        let lf = tmp.join("layer.json");
        std::fs::write(&lf, serde_json::to_string_pretty(&layer).unwrap_or_default()).map_err(|e| Error::io(&lf, e))?;
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        host.write_meta(&meta)?;
        Ok(())
    }
}
