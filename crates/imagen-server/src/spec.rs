//! A validated request as the queue stores it: everything a worker needs to run the job again
//! after a restart (the seed already resolved, so a re-run draws the same image). Input images
//! are kept beside it as lossless PNGs under `inputs/{id}/` in the image storage (the data
//! directory, or the object store every worker reads).

use std::io::Cursor;

use imagen_engine::pipeline::SkipLayerGuidance;
use imagen_engine::rng::RngKind;
use imagen_engine::scheduler::SamplerKind;
use imagen_engine::{GenerateRequest, InitImage, MaskedContent};
use serde::{Deserialize, Serialize};

use crate::blobs::Blobs;
use crate::error::{Error, Result};
use crate::jobs::{ResponseFormat, Submission};
use crate::media::OutputFormat;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub model: String,
    pub loras: Vec<(String, f32)>,
    pub prompt: String,
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance: f64,
    pub scheduler: Option<String>,
    pub seed: u64,
    pub rng: String,
    pub num_images: usize,
    /// Image-to-image: the strength (the image and any mask are files beside the spec).
    pub strength: Option<f64>,
    pub mask: bool,
    /// What the masked area starts from; absent in jobs queued before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_content: Option<String>,
    pub long_prompt: bool,
    pub max_sequence_length: Option<usize>,
    pub true_cfg_scale: Option<f64>,
    /// (layers, scale, start, stop)
    pub skip_layer_guidance: Option<(Vec<usize>, f64, f64, f64)>,
    pub output: String,
    pub b64: bool,
}

fn input(id: &str, name: &str) -> String {
    format!("inputs/{id}/{name}")
}

impl JobSpec {
    /// The spec of a submission; writes its input images to the image storage.
    pub fn store(sub: &Submission, id: &str, blobs: &Blobs) -> Result<Self> {
        let r = &sub.request;
        if let Some(init) = &r.init {
            let png = |img: image::DynamicImage| -> Result<Vec<u8>> {
                let mut out = Cursor::new(Vec::new());
                img.write_to(&mut out, image::ImageFormat::Png)
                    .map_err(|e| Error::Config(format!("writing the input image of {id}: {e}")))?;
                Ok(out.into_inner())
            };
            blobs.put(&input(id, "init.png"), png(init.image.clone().into())?)?;
            if let Some(mask) = &init.mask {
                blobs.put(&input(id, "mask.png"), png(mask.clone().into())?)?;
            }
        }
        Ok(JobSpec {
            model: sub.model.clone(),
            loras: sub.loras.clone(),
            prompt: r.prompt.clone(),
            negative_prompt: r.negative_prompt.clone(),
            width: r.width,
            height: r.height,
            steps: r.steps,
            guidance: r.guidance,
            scheduler: r.scheduler.map(|k| k.name().to_owned()),
            seed: r.seed,
            rng: match r.rng {
                RngKind::Torch => "torch",
                RngKind::Philox => "philox",
            }
            .into(),
            num_images: r.num_images,
            strength: r.init.as_ref().map(|i| i.strength),
            mask: r.init.as_ref().is_some_and(|i| i.mask.is_some()),
            masked_content: r
                .init
                .as_ref()
                .map(|i| i.masked)
                .filter(|m| *m != MaskedContent::Original)
                .map(|m| m.name().to_owned()),
            long_prompt: r.long_prompt,
            max_sequence_length: r.max_sequence_length,
            true_cfg_scale: r.true_cfg_scale,
            skip_layer_guidance: r
                .skip_layer_guidance
                .as_ref()
                .map(|s| (s.layers.clone(), s.scale, s.start, s.stop)),
            output: sub.output.ext().into(),
            b64: sub.response_format == ResponseFormat::B64Json,
        })
    }

    /// The request to run, with its input images read back.
    pub fn request(&self, blobs: &Blobs, id: &str) -> Result<GenerateRequest> {
        let bad = |m: String| Error::Config(format!("job {id}: {m}"));
        let init = match self.strength {
            None => None,
            Some(strength) => {
                let read = |name: &str| {
                    let bytes = blobs
                        .get(&input(id, name))?
                        .ok_or_else(|| bad(format!("{name} is missing")))?;
                    image::load_from_memory(&bytes).map_err(|e| bad(format!("{name}: {e}")))
                };
                Some(InitImage {
                    image: read("init.png")?.to_rgb8(),
                    strength,
                    mask: if self.mask {
                        Some(read("mask.png")?.to_luma8())
                    } else {
                        None
                    },
                    masked: match &self.masked_content {
                        Some(m) => MaskedContent::parse(m).ok_or_else(|| bad(format!("masked_content {m:?}")))?,
                        None => MaskedContent::Original,
                    },
                })
            }
        };
        Ok(GenerateRequest {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width: self.width,
            height: self.height,
            steps: self.steps,
            guidance: self.guidance,
            scheduler: self
                .scheduler
                .as_deref()
                .map(SamplerKind::parse)
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
            seed: self.seed,
            rng: RngKind::parse(&self.rng).ok_or_else(|| bad(format!("rng {:?}", self.rng)))?,
            num_images: self.num_images,
            init,
            long_prompt: self.long_prompt,
            max_sequence_length: self.max_sequence_length,
            true_cfg_scale: self.true_cfg_scale,
            skip_layer_guidance: self.skip_layer_guidance.clone().map(|(layers, scale, start, stop)| {
                SkipLayerGuidance {
                    layers,
                    scale,
                    start,
                    stop,
                }
            }),
        })
    }

    pub fn output(&self) -> OutputFormat {
        OutputFormat::parse(&self.output).unwrap_or(OutputFormat::Png)
    }

    /// Drops the job's input images once it has ended.
    pub fn remove_inputs(blobs: &Blobs, id: &str) {
        blobs.remove(&[input(id, "init.png"), input(id, "mask.png")]);
    }
}
