//! Files, directories and downloads: written or fetched only when what is on the box differs,
//! never through a link a user could have planted; downloads checked against a pinned digest or
//! a published checksum file.

use super::*;

/// Where downloads wait for their checksum check (root's alone).
pub(super) const DOWNLOADS: &str = "/var/lib/cgcloud/downloads";

/// The largest file a step compares with what it would write.
pub(super) const MAX_FILE: u64 = 64 << 20;

/// The largest downloaded file a step reads back to compare its digest. (`u64::MAX`, as it
/// was, overflowed in safefs::read's `max + 1`: a download was never found already in place.)
pub(super) const MAX_DOWNLOAD: u64 = 16 << 30;

impl Runner {
    pub(super) fn directory(
        &mut self,
        path: &str,
        owner: Option<&str>,
        group: Option<&str>,
        mode: Option<&str>,
    ) -> StepResult {
        let p = Path::new(path);
        let have = safefs::stat(p).filter(|_| p.is_dir());
        let want = Self::wanted(path, have, owner, group, mode, 0o755)?;
        if have == Some(want) {
            return Ok(Outcome::Ok);
        }
        safefs::make_dir(p, want).map_err(|e| fail(e.to_string()))?;
        Ok(Outcome::Changed)
    }

    /// Writes `content` to `path` atomically unless it is already there with these attributes.
    /// Nothing on the way is followed where a user could have put a symlink (see `safefs`).
    pub(super) fn write_file(
        &mut self,
        path: &str,
        content: &[u8],
        mode: Option<&str>,
        owner: Option<&str>,
        group: Option<&str>,
    ) -> StepResult {
        let p = Path::new(path);
        let have = safefs::stat(p);
        let want = Self::wanted(path, have, owner, group, mode, 0o644)?;
        let same = safefs::read(p, MAX_FILE).ok().flatten().is_some_and(|c| c == content);
        if same && have == Some(want) {
            return Ok(Outcome::Ok);
        }
        safefs::write_atomic(p, content, want).map_err(|e| fail(e.to_string()))?;
        if !same {
            self.changed_paths.insert(path.to_owned());
        }
        Ok(Outcome::Changed)
    }

    /// The digest of `url`'s file in the checksum file published at `checksum_url`. Fetched
    /// from where the file comes from, it guards against a damaged download, not against the
    /// server: roles pin `sha256`/`sha512` where that matters.
    pub(super) fn published_digest(
        &mut self,
        url: &str,
        checksum_url: &str,
        alg: DigestAlg,
    ) -> Result<String, StepError> {
        let downloads = self.downloads_dir()?;
        let tmp = downloads.join(format!("{}.checksum", hex::encode(Sha256::digest(checksum_url.as_bytes()))));
        let tmp_s = tmp.display().to_string();
        self.sh("curl", &["-fsSL", "--retry", "3", "--max-filesize", "1048576", "-o", &tmp_s, checksum_url])?;
        let text = std::fs::read_to_string(&tmp).map_err(|e| fail(format!("{checksum_url}: {e}")));
        // Best effort: a temporary file left in root's downloads directory is replaced by the next.
        let _ = std::fs::remove_file(&tmp);
        let name = url.rsplit('/').next().unwrap_or(url);
        cgcloud_core::plan::published_digest(&text?, name, alg)
            .ok_or_else(|| fail(format!("{checksum_url} has no {} for {name}", alg.name())))
    }

    /// Root's own directory for downloads (the agent's user's, in tests), so that nothing a
    /// user can reach sees a file before its checksum is checked.
    pub(super) fn downloads_dir(&self) -> Result<PathBuf, StepError> {
        let (uid, gid) = safefs::process_ids();
        safefs::make_dir(&self.downloads, Attrs { uid, gid, mode: 0o700 }).map_err(|e| fail(e.to_string()))?;
        Ok(self.downloads.clone())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn download(
        &mut self,
        url: &str,
        alg: DigestAlg,
        want: &str,
        dest: &str,
        extract: bool,
        strip: u32,
        mode: Option<&str>,
    ) -> StepResult {
        // An extracted archive is marked with the digest it came from: `.cgcloud-sha256` (as
        // before SHA-512 existed) or `.cgcloud-sha512`.
        let marker = Path::new(dest).join(match alg {
            DigestAlg::Sha256 => ".cgcloud-sha256",
            DigestAlg::Sha512 => ".cgcloud-sha512",
        });
        if extract && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == want) {
            return Ok(Outcome::Ok);
        }
        if !extract
            && safefs::read(Path::new(dest), MAX_DOWNLOAD).ok().flatten().is_some_and(|d| alg.digest(&d) == want)
        {
            return Ok(Outcome::Ok);
        }
        let tmp = self.downloads_dir()?.join(format!("{}.part", hex::encode(Sha256::digest(dest.as_bytes()))));
        let tmp_s = tmp.display().to_string();
        self.sh("curl", &["-fsSL", "--retry", "3", "-o", &tmp_s, url])?;
        let data = std::fs::read(&tmp).map_err(|e| fail(format!("{tmp_s}: {e}")))?;
        let got = alg.digest(&data);
        if got != want {
            // Best effort: a temporary file left in root's downloads directory is replaced by the next.
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(format!("{url} has {} {got}, expected {want}", alg.name())));
        }
        if extract {
            drop(data);
            let d = Path::new(dest);
            let want_dir = Self::wanted(dest, safefs::stat(d).filter(|_| d.is_dir()), None, None, None, 0o755)?;
            safefs::make_dir(d, want_dir).map_err(|e| fail(e.to_string()))?;
            let strip_arg = format!("--strip-components={strip}");
            // The archive's owners mean nothing here: its files become the agent's (root's).
            let result = self.sh("tar", &["-xf", &tmp_s, "--no-same-owner", "-C", dest, &strip_arg]);
            // Best effort: a temporary file left in root's downloads directory is replaced by the next.
            let _ = std::fs::remove_file(&tmp);
            result?;
            let (uid, gid) = safefs::process_ids();
            safefs::write_atomic(&marker, want.as_bytes(), Attrs { uid, gid, mode: 0o644 })
                .map_err(|e| fail(e.to_string()))?;
        } else {
            // Best effort: a temporary file left in root's downloads directory is replaced by the next.
            let _ = std::fs::remove_file(&tmp);
            let attrs = Self::wanted(dest, safefs::stat(Path::new(dest)), None, None, mode, 0o644)?;
            safefs::write_atomic(Path::new(dest), &data, attrs).map_err(|e| fail(e.to_string()))?;
        }
        Ok(Outcome::Changed)
    }
}
