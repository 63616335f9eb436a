//! Where generated images and uploaded input images live: the data directory's folders (the
//! default), another folder (a shared mount), or S3-compatible object storage every node
//! reaches (`--images s3://bucket/prefix`, through `object_store`, credentials and endpoint
//! from the usual `AWS_*` variables). Keys are `images/{job id}/{n}.{ext}` and
//! `inputs/{job id}/{init,mask}.png` under the root or prefix.
//!
//! The interface is synchronous: the engine thread writes results and the dispatcher reads
//! inputs. S3 calls run on a small runtime of their own, so a caller on the server's runtime
//! waits without nesting runtimes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

pub enum Blobs {
    /// Keys are paths under this folder.
    Local(PathBuf),
    S3(S3),
}

pub struct S3 {
    store: Arc<AmazonS3>,
    /// `s3://bucket/prefix` as configured (for messages).
    url: String,
    prefix: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for S3 {
    fn drop(&mut self) {
        // dropping a runtime blocks, which a server thread may not do
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Blobs {
    /// `images`: unset (the data directory), a folder, or `s3://bucket[/prefix]`.
    pub fn open(images: Option<&str>, data_dir: &Path) -> Result<Blobs> {
        let Some(spec) = images.filter(|s| !s.is_empty()) else {
            return Ok(Blobs::Local(data_dir.to_owned()));
        };
        let Some(rest) = spec.strip_prefix("s3://") else {
            if spec.contains("://") {
                return Err(Error::Config(format!(
                    "images {spec:?}: a folder or s3://bucket/prefix"
                )));
            }
            return Ok(Blobs::Local(PathBuf::from(spec)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!("images {spec:?}: no bucket")));
        }
        // reqwest's rustls takes the process's crypto provider; ring is the one already built
        // for the other TLS clients. A second install (tests, two stores) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| Error::Config(format!("images {spec}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("imagen-s3")
            .enable_all()
            .build()?;
        Ok(Blobs::S3(S3 {
            store: Arc::new(store),
            url: spec.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            runtime: Some(runtime),
        }))
    }

    /// Writes `bytes` at `key`; when it returns, every node can read them.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Blobs::Local(root) => {
                let path = root.join(key);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                // written whole, then renamed: a reader never sees half a file
                let tmp = path.with_extension("part");
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, &path)?;
                Ok(())
            }
            Blobs::S3(s3) => {
                let (store, key) = (s3.store.clone(), s3.key(key));
                let put = async move { store.put(&key, PutPayload::from(bytes)).await };
                s3.block(put)?.map(|_| ()).map_err(|e| s3.error("writing", e))
            }
        }
    }

    /// The bytes at `key`; `None` when there are none.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Blobs::Local(root) => match std::fs::read(root.join(key)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            Blobs::S3(s3) => {
                let (store, key) = (s3.store.clone(), s3.key(key));
                let get = async move {
                    match store.get(&key).await {
                        Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                };
                s3.block(get)?.map_err(|e| s3.error("reading", e))
            }
        }
    }

    /// Removes the named keys (missing ones are fine): a finished job's inputs.
    pub fn remove(&self, keys: &[String]) {
        match self {
            Blobs::Local(root) => {
                for k in keys {
                    let path = root.join(k);
                    let _ = std::fs::remove_file(&path);
                    if let Some(dir) = path.parent() {
                        // only once empty
                        let _ = std::fs::remove_dir(dir);
                    }
                }
            }
            Blobs::S3(s3) => {
                for k in keys {
                    let (store, key) = (s3.store.clone(), s3.key(k));
                    let res = s3.block(async move { store.delete(&key).await });
                    if let Ok(Err(e)) = res {
                        tracing::warn!("{}", s3.error("removing", e));
                    }
                }
            }
        }
    }

    /// Where blobs go, for the start-up line and `/readyz`.
    pub fn describe(&self) -> String {
        match self {
            Blobs::Local(root) => root.display().to_string(),
            Blobs::S3(s3) => s3.url.clone(),
        }
    }
}

impl S3 {
    fn key(&self, key: &str) -> Key {
        match self.prefix.is_empty() {
            true => Key::from(key),
            false => Key::from(format!("{}/{key}", self.prefix)),
        }
    }

    fn error(&self, what: &str, e: object_store::Error) -> Error {
        Error::Config(format!("{what} {}: {e}", self.url))
    }

    /// Runs `f` on the S3 runtime and waits for it (from any thread, async or not).
    fn block<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> Result<T> {
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Config("the object store is shut down".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| Error::Config(format!("{}: the request was dropped", self.url)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_blobs_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = Blobs::open(None, dir.path()).expect("local");
        assert_eq!(b.get("images/gen_1/0.png").expect("get"), None);
        b.put("images/gen_1/0.png", vec![1, 2, 3]).expect("put");
        assert_eq!(b.get("images/gen_1/0.png").expect("get"), Some(vec![1, 2, 3]));
        assert!(dir.path().join("images/gen_1/0.png").exists());
        b.remove(&["images/gen_1/0.png".into()]);
        assert_eq!(b.get("images/gen_1/0.png").expect("get"), None);
        assert!(!dir.path().join("images/gen_1").exists());
        assert!(Blobs::open(Some("gs://x"), dir.path()).is_err());
        assert!(Blobs::open(Some("s3://"), dir.path()).is_err());
    }
}
