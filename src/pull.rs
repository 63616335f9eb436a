//! `imagen pull`: a diffusers pipeline (only what it needs: `model_index.json`, each used
//! component's configs, tokenizer files and safetensors weights in one variant) or one file
//! (a single-file checkpoint, a GGUF) from the Hub into the models folder, under a readable id.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::hub::{Hub, RepoFile};

#[derive(clap::Args)]
pub struct PullArgs {
    /// `owner/name[@revision]` for a diffusers pipeline, or `owner/name/path/in/repo.gguf`
    /// (or .safetensors) for one file.
    repo: String,
    /// One file of the repo (a single-file checkpoint or GGUF) instead of the pipeline.
    #[arg(long)]
    file: Option<String>,
    /// A branch, tag or commit (default main; also `owner/name@revision`).
    #[arg(long)]
    revision: Option<String>,
    /// The weights' variant where the repo has it, e.g. fp16 (half the download); components
    /// without it get the plain weights.
    #[arg(long)]
    variant: Option<String>,
    /// Where models live (default: as `imagen serve` finds it: ./weights, else
    /// ~/.local/share/imagen/models).
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// The model's id here (default: the repo's name, e.g. stable-diffusion-v1-5).
    #[arg(long)]
    name: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Components a pipeline lists that imagen never loads.
const UNUSED: &[&str] = &["safety_checker", "feature_extractor", "image_encoder"];

pub fn run(a: PullArgs) -> Result<()> {
    let (repo, file, revision) = parse_target(&a.repo, a.file.as_deref(), a.revision.as_deref())?;
    let models = a.models_dir.unwrap_or_else(imagen_server::config::default_models_dir);
    let hub = Hub::from_env();
    let info = hub.repo(&repo, &revision)?;
    let name = a.name.unwrap_or_else(|| {
        let base = file.as_deref().unwrap_or(&repo);
        base.rsplit('/').next().unwrap_or(base).to_owned()
    });
    check_name(&name)?;
    // a single file lands as models/<name>; a pipeline's files under models/<name>/
    let root = models.join(&name);
    let files: Vec<RepoFile> = match &file {
        Some(path) => {
            let f = info
                .files
                .iter()
                .find(|f| &f.path == path)
                .cloned()
                .with_context(|| format!("{repo}@{revision} has no file {path:?}"))?;
            if root.is_dir() {
                bail!("{} is a folder; choose another --name", root.display());
            }
            vec![f]
        }
        None => {
            let Some(index) = info.files.iter().find(|f| f.path == "model_index.json") else {
                let singles: Vec<&str> = info
                    .files
                    .iter()
                    .map(|f| f.path.as_str())
                    .filter(|p| p.ends_with(".safetensors") || p.ends_with(".gguf"))
                    .take(12)
                    .collect();
                bail!(
                    "{repo} is not a diffusers pipeline (no model_index.json); pull one file of it with \
                     --file, e.g. one of: {}",
                    singles.join(", ")
                );
            };
            // the index names the components: fetch it first
            hub.download(&repo, &info.commit, index, &root.join("model_index.json"), &|_| ())?;
            let components = components(&root.join("model_index.json"))?;
            select(&info.files, &components, a.variant.as_deref())?
        }
    };
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .progress_chars("=> "),
        );
        bar
    };
    eprintln!(
        "pulling {repo}@{} ({} files, {}) from {} into {}",
        &info.commit[..info.commit.len().min(12)],
        files.len(),
        indicatif::HumanBytes(total),
        hub.endpoint(),
        if file.is_some() { &models } else { &root }.display()
    );
    let mut done = 0u64;
    for f in &files {
        let dest = if file.is_some() {
            root.clone()
        } else {
            root.join(&f.path)
        };
        bar.set_message(f.path.clone());
        if already_there(f, &dest) {
            done += f.size;
            bar.set_position(done);
            continue;
        }
        hub.download(&repo, &info.commit, f, &dest, &|n| bar.set_position(done + n))?;
        done += f.size;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    if file.is_none() {
        let record = serde_json::json!({"repo": repo, "revision": revision, "commit": info.commit,
                                        "variant": a.variant, "files": files.iter().map(|f| &f.path).collect::<Vec<_>>()});
        std::fs::write(root.join(".imagen-pull.json"), format!("{record:#}\n"))?;
    }
    println!("pulled {repo} as {name:?} into {}", models.display());
    println!(
        "serve it: imagen serve --models-dir {}   (a running server: POST /sdapi/v1/refresh-checkpoints)",
        models.display()
    );
    Ok(())
}

/// (repo, file, revision) from `owner/name[@rev][/path]` and the flags.
fn parse_target(target: &str, file: Option<&str>, revision: Option<&str>) -> Result<(String, Option<String>, String)> {
    let mut parts = target.splitn(3, '/');
    let (Some(owner), Some(name)) = (parts.next(), parts.next()) else {
        bail!("{target:?}: give the repo as owner/name, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5");
    };
    let (name, rev_at) = match name.split_once('@') {
        Some((n, r)) => (n, Some(r)),
        None => (name, None),
    };
    if owner.is_empty() || name.is_empty() || rev_at.is_some_and(str::is_empty) {
        bail!("{target:?}: give the repo as owner/name[@revision]");
    }
    let in_path = parts.next().filter(|p| !p.is_empty());
    if in_path.is_some() && file.is_some() {
        bail!("{target:?} names a file already; drop --file");
    }
    if rev_at.is_some() && revision.is_some() {
        bail!("{target:?} names a revision already; drop --revision");
    }
    let file = in_path.or(file).map(str::to_owned);
    let revision = rev_at.or(revision).unwrap_or("main").to_owned();
    Ok((format!("{owner}/{name}"), file, revision))
}

/// A folder or file name: no separators, nothing hidden.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        bail!("{name:?} cannot be a model id here; choose another --name");
    }
    Ok(())
}

/// The components `model_index.json` names with a class (a `null` one is absent), less the
/// ones imagen never loads.
fn components(index: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(index)?;
    let v: serde_json::Value = serde_json::from_str(&text).context("model_index.json is not JSON")?;
    let map = v.as_object().context("model_index.json is not an object")?;
    Ok(map
        .iter()
        .filter(|(k, _)| !k.starts_with('_') && !UNUSED.contains(&k.as_str()))
        .filter(|(_, v)| v.as_array().is_some_and(|a| a.len() == 2 && a[1].is_string()))
        .map(|(k, _)| k.clone())
        .collect())
}

/// The variant of a weights file: `x.fp16.safetensors`, `x.fp16-00001-of-00002.safetensors`,
/// `x.safetensors.index.fp16.json` → fp16; the plain names → `None`.
fn variant_of(file: &str) -> Option<&str> {
    if let Some(rest) = file.split(".safetensors.index.").nth(1) {
        return rest.strip_suffix(".json").filter(|v| !v.is_empty());
    }
    let stem = file.strip_suffix(".safetensors")?;
    // a shard's suffix: -00001-of-00002
    let stem = match stem.rsplit_once('-') {
        Some((head, n)) if n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()) => head
            .strip_suffix("-of")
            .and_then(|h| h.rsplit_once('-'))
            .map_or(stem, |(h, _)| h),
        _ => stem,
    };
    stem.rsplit_once('.').map(|(_, v)| v)
}

fn is_weights(file: &str) -> bool {
    file.ends_with(".safetensors") || file.contains(".safetensors.index.")
}

/// The files a pipeline needs: per component, its configs and tokenizer files, and its
/// safetensors weights in `variant` where it has them, else the plain ones (else, where the
/// repo has only one variant, that one).
fn select(files: &[RepoFile], components: &BTreeSet<String>, variant: Option<&str>) -> Result<Vec<RepoFile>> {
    let mut out = Vec::new();
    for c in components {
        let prefix = format!("{c}/");
        let mine: Vec<&RepoFile> = files.iter().filter(|f| f.path.starts_with(&prefix)).collect();
        let name = |f: &RepoFile| f.path.rsplit('/').next().unwrap_or_default().to_owned();
        for f in &mine {
            let n = name(f);
            let config = n.ends_with(".json") || n.ends_with(".txt") || n.ends_with(".model");
            if config && !is_weights(&n) {
                out.push((*f).clone());
            }
        }
        let weights: Vec<&&RepoFile> = mine.iter().filter(|f| is_weights(&name(f))).collect();
        let has = |v: Option<&str>| weights.iter().any(|f| variant_of(&name(f)) == v);
        let variants: BTreeSet<Option<String>> = weights
            .iter()
            .map(|f| variant_of(&name(f)).map(str::to_owned))
            .collect();
        let pick: Option<Option<String>> = if variant.is_some() && has(variant) {
            Some(variant.map(str::to_owned))
        } else if has(None) {
            Some(None)
        } else if variants.len() == 1 {
            variants.iter().next().cloned()
        } else {
            None
        };
        if let Some(pick) = pick {
            out.extend(
                weights
                    .iter()
                    .filter(|f| variant_of(&name(f)) == pick.as_deref())
                    .map(|f| (**f).clone()),
            );
        } else if weights.is_empty()
            && mine
                .iter()
                .any(|f| [".bin", ".ckpt", ".pt", ".pth"].iter().any(|e| f.path.ends_with(e)))
        {
            bail!("{c}/ has PyTorch pickles only (.bin/.ckpt); imagen reads safetensors weights");
        } else if !weights.is_empty() {
            let have: Vec<String> = variants
                .into_iter()
                .map(|v| v.unwrap_or_else(|| "plain".into()))
                .collect();
            bail!("{c}/ has no plain weights; choose a --variant: {}", have.join(", "));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A file a finished earlier pull left: the size matches (its hash was checked then).
fn already_there(f: &RepoFile, dest: &Path) -> bool {
    std::fs::metadata(dest).is_ok_and(|m| m.len() == f.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_and_targets() {
        assert_eq!(variant_of("diffusion_pytorch_model.safetensors"), None);
        assert_eq!(variant_of("diffusion_pytorch_model.fp16.safetensors"), Some("fp16"));
        assert_eq!(variant_of("diffusion_pytorch_model-00001-of-00003.safetensors"), None);
        assert_eq!(
            variant_of("diffusion_pytorch_model.fp16-00001-of-00003.safetensors"),
            Some("fp16")
        );
        assert_eq!(variant_of("diffusion_pytorch_model.safetensors.index.json"), None);
        assert_eq!(
            variant_of("diffusion_pytorch_model.safetensors.index.fp16.json"),
            Some("fp16")
        );
        assert_eq!(variant_of("model.bf16.safetensors"), Some("bf16"));
        let t = |s: &str| parse_target(s, None, None).map_err(|e| e.to_string());
        assert_eq!(t("a/b").ok(), Some(("a/b".into(), None, "main".into())));
        assert_eq!(t("a/b@v2").ok(), Some(("a/b".into(), None, "v2".into())));
        assert_eq!(
            t("a/b/x/y.gguf").ok(),
            Some(("a/b".into(), Some("x/y.gguf".into()), "main".into()))
        );
        assert_eq!(
            t("a/b@r/y.gguf").ok(),
            Some(("a/b".into(), Some("y.gguf".into()), "r".into()))
        );
        assert!(t("justone").is_err());
        assert!(t("a/b@").is_err());
        assert!(check_name("../x").is_err());
    }
}
