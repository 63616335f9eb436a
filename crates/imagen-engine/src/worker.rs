//! The engine as an actor: one named thread owns the loaded models and runs jobs one at a time
//! from a bounded queue. Callers (the HTTP server) never touch tensors; they submit a [`Job`] and
//! hear back through its event callback. A panic inside a job fails that job, not the thread.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

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
    tx: SyncSender<Job>,
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
}

impl Engine {
    pub fn spawn(config: EngineConfig) -> Result<Self> {
        let device = imagen_models::device::open(&config.backend, &config.dtype)?;
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let ready = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let state = EngineThread {
            models: config.models.into_iter().map(|m| (m.id.clone(), m)).collect(),
            lora_paths: config.loras.into_iter().map(|l| (l.id, l.path)).collect(),
            lora_files: HashMap::new(),
            previews: HashMap::new(),
            loaded: Vec::new(),
            device,
            max_loaded: config.max_loaded.max(1),
            ready: ready.clone(),
            queued: queued.clone(),
        };
        let preload = config.preload;
        std::thread::Builder::new()
            .name("imagen-engine".into())
            .spawn(move || state.run(rx, preload))
            .map_err(|e| Error::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine { tx, ready, queued })
    }

    /// Queue a job; fails at once when the queue is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), SubmitError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.tx.try_send(job).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            match e {
                TrySendError::Full(_) => SubmitError::QueueFull,
                TrySendError::Disconnected(_) => SubmitError::Stopped,
            }
        })
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

struct EngineThread {
    models: HashMap<String, ModelInfo>,
    lora_paths: HashMap<String, std::path::PathBuf>,
    /// Parsed LoRA files, kept once read (they are small next to a model).
    lora_files: HashMap<String, Arc<LoraFile>>,
    /// Preview decoders by model id, loaded on first use (`None`: failed, not retried).
    previews: HashMap<String, Option<Arc<Preview>>>,
    /// Most recently used last.
    loaded: Vec<(String, Arc<Model>)>,
    device: Device,
    max_loaded: usize,
    ready: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
}

impl EngineThread {
    fn run(mut self, rx: Receiver<Job>, preload: Option<String>) {
        if let Some(id) = preload
            && let Err(e) = self.model(&id)
        {
            eprintln!("imagen-engine: preloading {id}: {e}");
        }
        while let Ok(mut job) = rx.recv() {
            (job.events)(JobEvent::Started);
            let result = catch_unwind(AssertUnwindSafe(|| self.run_job(&mut job)))
                .unwrap_or_else(|panic| Err(Error::Internal(panic_message(&panic))));
            // The conv kernels' per-thread scratch can be hundreds of MB after a large decode:
            // an idle server should not hold it.
            imagen_models::ops::release_scratch();
            self.queued.fetch_sub(1, Ordering::SeqCst);
            (job.events)(JobEvent::Finished(result));
        }
    }

    fn run_job(&mut self, job: &mut Job) -> Result<Vec<Generated>> {
        if job.cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let mut sd = self.model(&job.model)?;
        if !job.loras.is_empty() {
            let files = job
                .loras
                .iter()
                .map(|(id, scale)| Ok((self.lora(id)?, *scale)))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<(&LoraFile, f32)> = files.iter().map(|(f, s)| (f.as_ref(), *s)).collect();
            // A patched copy for this job; the loaded model stays as it is.
            sd = Arc::new(
                sd.with_loras(&refs, &self.device)
                    .map_err(|e| Error::BadInput(format!("LoRA: {e}")))?,
            );
        }
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
            .map(|(image, seed)| Generated { image, seed })
            .collect())
    }

    /// The model's preview decoder, if it has one that takes its latents.
    fn preview(&mut self, id: &str, channels: usize) -> Option<Arc<Preview>> {
        if let Some(p) = self.previews.get(id) {
            return p.clone();
        }
        let dir = self.models.get(id)?.preview_decoder.clone()?;
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
            .lora_paths
            .get(id)
            .ok_or_else(|| Error::BadInput(format!("unknown LoRA {id:?}")))?;
        let file = Arc::new(LoraFile::open(path).map_err(|e| Error::BadInput(format!("LoRA {id:?}: {e}")))?);
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
            .models
            .get(id)
            .ok_or_else(|| Error::BadInput(format!("unknown model {id:?}")))?;
        if self.loaded.len() >= self.max_loaded {
            self.loaded.remove(0);
        }
        let mut sd = Model::load(&info.path, info.single_file.as_deref(), &self.device)?;
        sd.set_prediction_type(info.prediction_override.clone())?;
        let sd = Arc::new(sd);
        self.loaded.push((id.to_owned(), sd.clone()));
        self.ready.store(true, Ordering::SeqCst);
        Ok(sd)
    }
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
