//! The Hugging Face Hub's HTTP routes, as `huggingface_hub` uses them: a repo's file list
//! with sizes and LFS hashes (`/api/models/{repo}/revision/{rev}?blobs=true`) and each file
//! (`/{repo}/resolve/{commit}/{path}`, a redirect to the LFS store for large files). Works
//! against a mirror (`HF_ENDPOINT`) and gated repos (`HF_TOKEN`). Downloads go to `<file>.part`,
//! resume with `Range` after a cut (in this run or the next), and are checked before they take
//! their name: SHA-256 for LFS files, the git blob SHA-1 for the others.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sha1::Digest as _;

/// One file of a repo at a revision.
#[derive(Debug, Clone)]
pub struct RepoFile {
    pub path: String,
    pub size: u64,
    /// SHA-256 of the content, for files kept in LFS.
    pub sha256: Option<String>,
    /// The git blob id (SHA-1 of `blob <size>\0<content>`), for the others.
    pub blob_id: Option<String>,
}

pub struct Repo {
    /// The commit the revision resolved to: every file is fetched at it.
    pub commit: String,
    pub files: Vec<RepoFile>,
}

pub struct Hub {
    endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// How many times one file is tried (resuming each time) before the pull fails.
const ATTEMPTS: u32 = 5;

impl Hub {
    /// `HF_ENDPOINT` (default https://huggingface.co) and `HF_TOKEN` (or the older
    /// `HUGGING_FACE_HUB_TOKEN`), as the Hub's own tools read them.
    pub fn from_env() -> Hub {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into());
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // the token goes to a mirror's own redirects, never to the LFS store's host
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("imagen/", env!("CARGO_PKG_VERSION"), "; hf_hub-compatible"))
            .build()
            .into();
        Hub {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token: var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")),
            agent,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn get(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let req = self.agent.get(url);
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    /// The files of `repo` at `revision` (a branch, tag or commit).
    pub fn repo(&self, repo: &str, revision: &str) -> Result<Repo> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.endpoint,
            encode(revision)
        );
        let mut resp = self
            .get(&url)
            .call()
            .with_context(|| format!("reaching {}", self.endpoint))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if status != 200 {
            bail!("{}", self.refusal(repo, revision, status, &body));
        }
        let v: Value = serde_json::from_str(&body).context("the Hub's answer is not JSON")?;
        let commit = v["sha"].as_str().unwrap_or(revision).to_owned();
        let files = v["siblings"]
            .as_array()
            .context("the Hub's answer lists no files (siblings)")?
            .iter()
            .filter_map(|s| {
                let path = s["rfilename"].as_str()?.to_owned();
                let lfs = s.get("lfs").filter(|l| l.is_object());
                Some(RepoFile {
                    size: lfs.and_then(|l| l["size"].as_u64()).or(s["size"].as_u64())?,
                    sha256: lfs.and_then(|l| l["sha256"].as_str()).map(str::to_lowercase),
                    blob_id: s["blobId"].as_str().map(str::to_lowercase),
                    path,
                })
            })
            .collect();
        Ok(Repo { commit, files })
    }

    /// What a refused request means, in words a user can act on.
    fn refusal(&self, repo: &str, revision: &str, status: u16, body: &str) -> String {
        let said = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match status {
            401 | 403 if self.token.is_none() => format!(
                "{repo} needs a Hugging Face token (gated or private): accept its license on the Hub, \
                 then set HF_TOKEN ({status} {said})"
            ),
            401 | 403 => format!(
                "{repo}: the token in HF_TOKEN may not read it; accept the model's license on the Hub \
                 with that account ({status} {said})"
            ),
            404 => format!(
                "{repo}@{revision}: no such repo or revision on {} ({said})",
                self.endpoint
            ),
            _ => format!("{repo}: the Hub answered {status} {said}"),
        }
    }

    /// Fetches `file` into `dest`, resuming a `.part` left by an earlier cut; `progress` gets
    /// how many bytes of the file are on disk as they arrive.
    pub fn download(
        &self,
        repo: &str,
        commit: &str,
        file: &RepoFile,
        dest: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let part = part_path(dest);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let url = format!("{}/{repo}/resolve/{commit}/{}", self.endpoint, encode_path(&file.path));
        let mut tries = 0;
        loop {
            match self.fetch_into(&url, file, &part, progress) {
                Ok(()) => break,
                Err(Fetch::Fatal(e)) => return Err(e),
                Err(Fetch::Retry(e)) => {
                    tries += 1;
                    if tries == ATTEMPTS {
                        bail!(
                            "{}: gave up after {ATTEMPTS} tries ({e:#}); run the pull again to resume",
                            file.path
                        );
                    }
                    std::thread::sleep(Duration::from_millis(250 << tries.min(4)));
                }
            }
        }
        verify(file, &part)?;
        std::fs::rename(&part, dest).with_context(|| format!("naming {}", dest.display()))?;
        Ok(())
    }

    fn fetch_into(&self, url: &str, file: &RepoFile, part: &Path, progress: &dyn Fn(u64)) -> Result<(), Fetch> {
        let mut have = std::fs::metadata(part).map_or(0, |m| m.len());
        if have > file.size {
            have = 0;
        }
        if have == file.size {
            progress(have);
            return Ok(());
        }
        let mut req = self.get(url);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let resp = req.call().map_err(|e| Fetch::Retry(e.into()))?;
        let status = resp.status().as_u16();
        let append = match status {
            206 => true,
            200 => false,
            // a Range past the end: what is there is whole
            416 if have > 0 => {
                progress(have);
                return Ok(());
            }
            500..=599 | 429 => return Err(Fetch::Retry(anyhow::anyhow!("{}: HTTP {status}", file.path))),
            _ => {
                let body = resp.into_body().read_to_string().unwrap_or_default();
                // the listing named this file: a 404 now is the file's, not the repo's
                let e = if status == 404 {
                    format!(
                        "{}: the Hub lists it but answered 404 for it ({})",
                        file.path,
                        body.trim()
                    )
                } else {
                    self.refusal(&file.path, "", status, &body)
                };
                return Err(Fetch::Fatal(anyhow::anyhow!(e)));
            }
        };
        let mut pos = if append { have } else { 0 };
        progress(pos);
        let mut out = if append {
            OpenOptions::new().append(true).open(part)
        } else {
            File::create(part)
        }
        .map_err(|e| Fetch::Fatal(anyhow::Error::new(e).context(format!("writing {}", part.display()))))?;
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    return Err(Fetch::Retry(
                        anyhow::Error::new(e).context(format!("reading {}", file.path)),
                    ));
                }
            };
            out.write_all(&buf[..n])
                .map_err(|e| Fetch::Fatal(anyhow::Error::new(e).context(format!("writing {}", part.display()))))?;
            pos += n as u64;
            progress(pos);
        }
        out.flush().map_err(|e| Fetch::Fatal(e.into()))?;
        let got = std::fs::metadata(part).map_or(0, |m| m.len());
        if got < file.size {
            return Err(Fetch::Retry(anyhow::anyhow!(
                "{}: the connection ended early",
                file.path
            )));
        }
        Ok(())
    }
}

enum Fetch {
    /// Worth another try: a cut connection, a 5xx.
    Retry(anyhow::Error),
    /// Not: a refusal, a full disk.
    Fatal(anyhow::Error),
}

pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_owned();
    name.push(".part");
    dest.with_file_name(name)
}

/// The whole file against the Hub's hash; a mismatch removes it (a resume cannot mend it).
fn verify(file: &RepoFile, part: &Path) -> Result<()> {
    let len = std::fs::metadata(part)?.len();
    if len != file.size {
        std::fs::remove_file(part).ok();
        bail!("{}: {len} bytes, the Hub says {}", file.path, file.size);
    }
    let mut f = File::open(part)?;
    f.seek(SeekFrom::Start(0))?;
    let (want, got) = if let Some(want) = &file.sha256 {
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        (want.clone(), hex::encode(h.finalize()))
    } else if let Some(want) = &file.blob_id {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {len}\0").as_bytes());
        std::io::copy(&mut f, &mut h)?;
        (want.clone(), hex::encode(h.finalize()))
    } else {
        return Ok(());
    };
    if want != got {
        std::fs::remove_file(part).ok();
        bail!(
            "{}: checksum mismatch (the Hub says {want}, got {got}); removed, run the pull again",
            file.path
        );
    }
    Ok(())
}

/// Percent-encodes what a URL path segment may not hold as is.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(p: &str) -> String {
    p.split('/').map(encode).collect::<Vec<_>>().join("/")
}
