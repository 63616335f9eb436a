//! The engine as an actor: one named thread owns the loaded models and runs jobs from a
//! bounded queue, one at a time or, handed several at once, as one batch (`batch.rs`). Callers (the HTTP server) never touch tensors; they submit a [`Job`] and
//! hear back through its event callback. A panic inside a job fails that job, not the thread.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, RwLock};

use burn::tensor::Device;
use image::RgbImage;
use imagen_models::load::lora::LoraFile;

use crate::catalog::{LoraInfo, ModelInfo};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::pipeline::GenerateRequest;

/// One finished image and the seed that reproduces it alone.
pub struct Generated {
    pub image: RgbImage,
    pub seed: u64,
    /// Images denoised in the same batch as this one (1: alone).
    pub batch: usize,
}

/// What a job reports, in order: `Started`, any number of `Progress`, then `Finished`.
pub enum JobEvent {
    Started,
    /// A small PNG of the latents after the step reported next (models with a `taesd/`
    /// preview decoder).
    Preview(Vec<u8>),
    Progress {
        step: usize,
        total: usize,
    },
    Finished(Result<Vec<Generated>>),
}

pub struct Job {
    /// A model id from the catalog.
    pub model: String,
    /// LoRA ids from the catalog and their scales, merged for this job only.
    pub loras: Vec<(String, f32)>,
    pub request: GenerateRequest,
    /// Set to stop the job: it ends with [`Error::Cancelled`] before it starts, or after the
    /// denoising step under way.
    pub cancel: Arc<AtomicBool>,
    /// Called on the engine thread; keep it cheap (send on a channel, update a cell).
    pub events: Box<dyn FnMut(JobEvent) + Send>,
}

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    Stopped,
}

/// The handle the server keeps; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Vec<Job>>,
    catalog: Arc<RwLock<Catalog>>,
    /// Ids of the models held in memory, least recently used first, with the resident memory
    /// each one's load added.
    loaded_ids: Arc<RwLock<Vec<(String, u64)>>>,
    ready: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
}

pub struct EngineConfig {
    pub models: Vec<ModelInfo>,
    pub loras: Vec<LoraInfo>,
    /// `cpu` or `wgpu` (see `imagen_models::device`).
    pub backend: String,
    /// `f32`, or `f16` on a GPU backend (see `imagen_models::device::open`).
    pub dtype: String,
    /// Jobs waiting beyond the one running.
    pub queue_capacity: usize,
    /// Models kept loaded at once (least recently used is dropped first).
    pub max_loaded: usize,
    /// Loaded before the first job, so `ready()` turns true without a request.
    pub preload: Option<String>,
    /// Images denoised together at most when jobs are submitted as a batch (1: one at a time).
    pub max_batch: usize,
}

impl Engine {
    pub fn spawn(config: EngineConfig) -> Result<Self> {
        let device = imagen_models::device::open(&config.backend, &config.dtype)?;
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let ready = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let catalog = Arc::new(RwLock::new(Catalog::new(config.models, config.loras)));
        let loaded_ids = Arc::new(RwLock::new(Vec::new()));
        let state = EngineThread {
            catalog: catalog.clone(),
            loaded_ids: loaded_ids.clone(),
            lora_files: HashMap::new(),
            previews: HashMap::new(),
            loaded: Vec::new(),
            load_bytes: HashMap::new(),
            device,
            max_loaded: config.max_loaded.max(1),
            max_batch: config.max_batch.max(1),
            ready: ready.clone(),
            queued: queued.clone(),
        };
        let preload = config.preload;
        std::thread::Builder::new()
            .name("imagen-engine".into())
            .spawn(move || state.run(rx, preload))
            .map_err(|e| Error::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            tx,
            catalog,
            loaded_ids,
            ready,
            queued,
        })
    }

    /// Replaces the models and LoRAs jobs may name (a rescan of the models folder). A loaded
    /// model stays loaded until evicted; files read before (a LoRA, a model) are not reread.
    pub fn set_catalog(&self, models: Vec<ModelInfo>, loras: Vec<LoraInfo>) {
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Catalog::new(models, loras);
    }

    /// Queue a job; fails at once when the queue is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), SubmitError> {
        self.submit_batch(vec![job])
    }

    /// Queue jobs to run together: compatible text-to-image jobs on one Stable Diffusion model
    /// share their denoising batches (up to `max_batch` images); the rest run one by one.
    pub fn submit_batch(&self, jobs: Vec<Job>) -> std::result::Result<(), SubmitError> {
        let n = jobs.len();
        self.queued.fetch_add(n, Ordering::SeqCst);
        self.tx.try_send(jobs).map_err(|e| {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            match e {
                TrySendError::Full(_) => SubmitError::QueueFull,
                TrySendError::Disconnected(_) => SubmitError::Stopped,
            }
        })
    }

    /// The models held in memory now.
    pub fn loaded_models(&self) -> Vec<String> {
        let ids = self.loaded_ids.read().unwrap_or_else(|e| e.into_inner());
        ids.iter().map(|(id, _)| id.clone()).collect()
    }

    /// (id, bytes) of each loaded model: the resident memory its load added (its weights as
    /// held: f32, bf16 or block-quantized; on a GPU backend only what stays in host memory).
    pub fn loaded_memory(&self) -> Vec<(String, u64)> {
        self.loaded_ids.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A model is loaded and the engine thread is alive.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Jobs accepted and not yet finished.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// What jobs may name: model infos and LoRA paths by id.
struct Catalog {
    models: HashMap<String, ModelInfo>,
    lora_paths: HashMap<String, std::path::PathBuf>,
}

impl Catalog {
    fn new(models: Vec<ModelInfo>, loras: Vec<LoraInfo>) -> Self {
        Catalog {
            models: models.into_iter().map(|m| (m.id.clone(), m)).collect(),
            lora_paths: loras.into_iter().map(|l| (l.id, l.path)).collect(),
        }
    }
}

struct EngineThread {
    catalog: Arc<RwLock<Catalog>>,
    loaded_ids: Arc<RwLock<Vec<(String, u64)>>>,
    /// Resident bytes each loaded model's load added.
    load_bytes: HashMap<String, u64>,
    /// Parsed LoRA files, kept once read (they are small next to a model).
    lora_files: HashMap<String, Arc<LoraFile>>,
    /// Preview decoders by model id, loaded on first use (`None`: failed, not retried).
    previews: HashMap<String, Option<Arc<Preview>>>,
    /// Most recently used last.
    loaded: Vec<(String, Arc<Model>)>,
    device: Device,
    max_loaded: usize,
    max_batch: usize,
    ready: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
}

impl EngineThread {
    fn run(mut self, rx: Receiver<Vec<Job>>, preload: Option<String>) {
        if let Some(id) = preload
            && let Err(e) = self.model(&id)
        {
            eprintln!("imagen-engine: preloading {id}: {e}");
        }
        while let Ok(mut jobs) = rx.recv() {
            for job in jobs.iter_mut() {
                (job.events)(JobEvent::Started);
            }
            let mut results: Vec<Option<Result<Vec<Generated>>>> = Vec::new();
            if jobs.len() > 1 && self.max_batch > 1 {
                match catch_unwind(AssertUnwindSafe(|| self.run_batch(&mut jobs))) {
                    Ok(Ok(r)) => results = r,
                    // whatever went wrong, each job gets its own run below
                    Ok(Err(e)) => eprintln!(
                        "imagen-engine: a batch of {} failed ({e}); running them alone",
                        jobs.len()
                    ),
                    Err(panic) => eprintln!(
                        "imagen-engine: a batch panicked ({}); running them alone",
                        panic_message(&panic)
                    ),
                }
            }
            results.resize_with(jobs.len(), || None);
            for (job, result) in jobs.iter_mut().zip(results) {
                let result = result.unwrap_or_else(|| {
                    catch_unwind(AssertUnwindSafe(|| self.run_job(job)))
                        .unwrap_or_else(|panic| Err(Error::Internal(panic_message(&panic))))
                });
                // The conv kernels' per-thread scratch can be hundreds of MB after a large decode:
                // an idle server should not hold it.
                imagen_models::ops::release_scratch();
                self.queued.fetch_sub(1, Ordering::SeqCst);
                (job.events)(JobEvent::Finished(result));
            }
        }
    }

    /// The job's model with its LoRAs merged (a patched copy; the loaded model stays as it is).
    fn prepared(&mut self, model: &str, loras: &[(String, f32)]) -> Result<Arc<Model>> {
        let sd = self.model(model)?;
        if loras.is_empty() {
            return Ok(sd);
        }
        let files = loras
            .iter()
            .map(|(id, scale)| Ok((self.lora(id)?, *scale)))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<(&LoraFile, f32)> = files.iter().map(|(f, s)| (f.as_ref(), *s)).collect();
        Ok(Arc::new(
            sd.with_loras(&refs, &self.device)
                .map_err(|e| Error::BadInput(format!("LoRA: {e}")))?,
        ))
    }

    fn run_job(&mut self, job: &mut Job) -> Result<Vec<Generated>> {
        if job.cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let sd = self.prepared(&job.model, &job.loras)?;
        let preview = self.preview(&job.model, sd.latent_channels());
        // the step's preview waits here until its progress event goes out
        let latest: std::cell::RefCell<Option<Vec<u8>>> = Default::default();
        let mut on_step = |_: usize, latents: &burn::tensor::Tensor<4>| {
            if let Some(p) = &preview {
                *latest.borrow_mut() = p.png(latents);
            }
        };
        let (events, cancel) = (&mut job.events, &job.cancel);
        let mut progress = |step: usize, total: usize| {
            if let Some(png) = latest.borrow_mut().take() {
                events(JobEvent::Preview(png));
            }
            events(JobEvent::Progress { step, total });
            !cancel.load(Ordering::SeqCst)
        };
        let images = sd.generate_seeded_with(&job.request, &self.device, &mut progress, &mut on_step)?;
        Ok(images
            .into_iter()
            .map(|(image, seed)| Generated { image, seed, batch: 1 })
            .collect())
    }

    /// Jobs handed over together: their images grouped by what can share a batch
    /// ([`crate::batch::batch_key`]) and denoised `max_batch` at a time. `None` for a job
    /// that cannot join one (it runs alone).
    fn run_batch(&mut self, jobs: &mut [Job]) -> Result<Vec<Option<Result<Vec<Generated>>>>> {
        let mut results: Vec<Option<Result<Vec<Generated>>>> = jobs.iter().map(|_| None).collect();
        let Some(first) = jobs.first() else { return Ok(results) };
        let (model_id, loras) = (first.model.clone(), first.loras.clone());
        if jobs.iter().any(|j| j.model != model_id || j.loras != loras) {
            return Ok(results);
        }
        let model = self.prepared(&model_id, &loras)?;
        let Model::StableDiffusion(sd) = model.as_ref() else {
            return Ok(results);
        };
        let preview = self.preview(&model_id, model.latent_channels());
        // every image of every job that can join: (job, image index, its lone request)
        let mut items: Vec<(usize, usize, GenerateRequest)> = Vec::new();
        let mut joined = vec![false; jobs.len()];
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            if job.cancel.load(Ordering::SeqCst) {
                results[j] = Some(Err(Error::Cancelled));
                continue;
            }
            if crate::pipeline::validate(&job.request).is_err() {
                continue;
            }
            let ones: Vec<GenerateRequest> = (0..job.request.num_images)
                .map(|i| crate::batch::single(&job.request, i))
                .collect();
            let Some(keys) = ones
                .iter()
                .map(|o| crate::batch::batch_key(sd, o))
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            for (i, (one, key)) in ones.into_iter().zip(keys).enumerate() {
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, members)) => members.push(items.len()),
                    None => groups.push((key, vec![items.len()])),
                }
                items.push((j, i, one));
            }
            joined[j] = true;
        }
        let mut images: Vec<Vec<Option<(RgbImage, u64, usize)>>> =
            jobs.iter().map(|j| vec![None; j.request.num_images]).collect();
        let mut done = vec![0usize; jobs.len()];
        for (_, members) in &groups {
            for chunk in members.chunks(self.max_batch) {
                let reqs: Vec<GenerateRequest> = chunk.iter().map(|&x| crate::batch::single(&items[x].2, 0)).collect();
                let mut step = |k: usize, _step: usize, total: usize, latents: &burn::tensor::Tensor<4>| {
                    let (j, i, _) = items[chunk[k]];
                    let job = &mut jobs[j];
                    if i == 0
                        && let Some(png) = preview.as_ref().and_then(|p| p.png(latents))
                    {
                        (job.events)(JobEvent::Preview(png));
                    }
                    done[j] += 1;
                    (job.events)(JobEvent::Progress {
                        step: done[j],
                        total: job.request.num_images * total,
                    });
                    !job.cancel.load(Ordering::SeqCst)
                };
                let latents = crate::batch::denoise_batch(sd, &reqs, &self.device, &mut step)?;
                for (k, l) in latents.into_iter().enumerate() {
                    let (j, i, ref one) = items[chunk[k]];
                    if let Some(l) = l {
                        images[j][i] = model
                            .decode(l)?
                            .into_iter()
                            .next()
                            .map(|im| (im, one.seed, chunk.len()));
                    }
                }
            }
        }
        for (j, result) in results.iter_mut().enumerate() {
            if joined[j] {
                // every image made (a cancel mid-batch leaves holes: the job is cancelled)
                let made: Option<Vec<Generated>> = images[j]
                    .drain(..)
                    .map(|x| x.map(|(image, seed, batch)| Generated { image, seed, batch }))
                    .collect();
                *result = Some(made.ok_or(Error::Cancelled));
            }
        }
        Ok(results)
    }

    fn read_catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self, id: &str) -> Option<ModelInfo> {
        self.read_catalog().models.get(id).cloned()
    }

    /// The model's preview decoder, if it has one that takes its latents.
    fn preview(&mut self, id: &str, channels: usize) -> Option<Arc<Preview>> {
        if let Some(p) = self.previews.get(id) {
            return p.clone();
        }
        let dir = self.info(id)?.preview_decoder?;
        let loaded = match imagen_models::models::taesd::load(&dir, &self.device) {
            Ok((config, _)) if config.latent_channels != channels => {
                eprintln!(
                    "imagen-engine: {}: {}-channel latents, the model's are {channels}; no previews",
                    dir.display(),
                    config.latent_channels
                );
                None
            }
            Ok((config, decoder)) => Some(Arc::new(Preview { config, decoder })),
            Err(e) => {
                eprintln!("imagen-engine: preview decoder {}: {e}; no previews", dir.display());
                None
            }
        };
        self.previews.insert(id.to_owned(), loaded.clone());
        loaded
    }

    fn lora(&mut self, id: &str) -> Result<Arc<LoraFile>> {
        if let Some(f) = self.lora_files.get(id) {
            return Ok(f.clone());
        }
        let path = self
            .read_catalog()
            .lora_paths
            .get(id)
            .cloned()
            .ok_or_else(|| Error::BadInput(format!("unknown LoRA {id:?}")))?;
        let file = Arc::new(LoraFile::open(&path).map_err(|e| Error::BadInput(format!("LoRA {id:?}: {e}")))?);
        self.lora_files.insert(id.to_owned(), file.clone());
        Ok(file)
    }

    /// The loaded model, loading it (and dropping the least recently used) when needed.
    fn model(&mut self, id: &str) -> Result<Arc<Model>> {
        if let Some(pos) = self.loaded.iter().position(|(m, _)| m == id) {
            let entry = self.loaded.remove(pos);
            let sd = entry.1.clone();
            self.loaded.push(entry);
            return Ok(sd);
        }
        let info = self
            .info(id)
            .ok_or_else(|| Error::BadInput(format!("unknown model {id:?}")))?;
        if self.loaded.len() >= self.max_loaded {
            let (gone, _) = self.loaded.remove(0);
            self.load_bytes.remove(&gone);
        }
        let before = resident_bytes();
        let mut sd = Model::load(&info.path, info.single_file.as_deref(), &self.device)?;
        sd.set_prediction_type(info.prediction_override.clone())?;
        self.load_bytes
            .insert(id.to_owned(), resident_bytes().saturating_sub(before));
        let sd = Arc::new(sd);
        self.loaded.push((id.to_owned(), sd.clone()));
        *self.loaded_ids.write().unwrap_or_else(|e| e.into_inner()) = self
            .loaded
            .iter()
            .map(|(m, _)| (m.clone(), self.load_bytes.get(m).copied().unwrap_or(0)))
            .collect();
        self.ready.store(true, Ordering::SeqCst);
        Ok(sd)
    }
}

/// This process's resident memory (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the engine panicked".into())
}

/// A tiny decoder for step previews.
struct Preview {
    config: imagen_models::models::taesd::AutoencoderTinyConfig,
    decoder: imagen_models::models::taesd::TinyDecoder,
}

impl Preview {
    /// Longest side of a preview image.
    const SIDE: u32 = 256;

    /// The first image of the batch as a PNG of at most [`Self::SIDE`] pixels a side.
    fn png(&self, latents: &burn::tensor::Tensor<4>) -> Option<Vec<u8>> {
        let first = latents.clone().narrow(0, 0, 1);
        let image = crate::pipeline::tensor_to_images(self.decoder.decode(self.config.unscale(first)))
            .ok()?
            .into_iter()
            .next()?;
        let (w, h) = image.dimensions();
        let scale = (Self::SIDE as f32 / w.max(h) as f32).min(1.0);
        let small = image::imageops::resize(
            &image,
            ((w as f32 * scale) as u32).max(1),
            ((h as f32 * scale) as u32).max(1),
            image::imageops::FilterType::Triangle,
        );
        let mut out = std::io::Cursor::new(Vec::new());
        small.write_to(&mut out, image::ImageFormat::Png).ok()?;
        Some(out.into_inner())
    }
}
