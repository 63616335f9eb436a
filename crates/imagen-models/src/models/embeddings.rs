//! The diffusion transformers' conditioning embeddings (diffusers `embeddings.py`): sinusoidal
//! timestep projections and their MLPs, the pooled-text projection, and rotary position tables.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};

use super::resnet::linear;
use crate::ops;

/// diffusers' `get_timestep_embedding` with `flip_sin_to_cos=True`, `downscale_freq_shift=0`
/// (`Timesteps(256, True, 0)`), in f32 as torch computes it: `[values.len(), dim]`.
pub fn timestep_sinusoid(values: &[f32], dim: usize, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln() as f32) * i as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(values.len() * 2 * half);
    for &t in values {
        out.extend(freqs.iter().map(|f| (t * f).cos()));
        out.extend(freqs.iter().map(|f| (t * f).sin()));
    }
    Tensor::from_data(TensorData::new(out, [values.len(), 2 * half]), device)
}

/// `TimestepEmbedding`: linear, SiLU, linear. x: `[b, in]` → `[b, dim]`
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(cin: usize, dim: usize, d: &Device) -> Self {
        TimestepEmbedding {
            linear_1: linear(cin, dim, true, d),
            linear_2: linear(dim, dim, true, d),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        ops::linear(&self.linear_2, ops::linear_silu(&self.linear_1, x))
    }
}

/// diffusers' `CombinedTimestep(Guidance)TextProjEmbeddings`: the timestep's (and FLUX.1-dev's
/// guidance's) sinusoid through an MLP each, plus the pooled text through
/// `PixArtAlphaTextProjection` (`text_embedder`, SiLU; same layout as [`TimestepEmbedding`]).
#[derive(Module, Debug)]
pub struct TimeTextEmbed {
    pub timestep_embedder: TimestepEmbedding,
    pub guidance_embedder: Option<TimestepEmbedding>,
    pub text_embedder: TimestepEmbedding,
}

impl TimeTextEmbed {
    pub fn new(dim: usize, pooled_dim: usize, guidance: bool, d: &Device) -> Self {
        TimeTextEmbed {
            timestep_embedder: TimestepEmbedding::new(256, dim, d),
            guidance_embedder: guidance.then(|| TimestepEmbedding::new(256, dim, d)),
            text_embedder: TimestepEmbedding::new(pooled_dim, dim, d),
        }
    }

    /// timesteps, guidance: one per sample, already scaled as the model sees them (×1000);
    /// pooled: `[b, pooled_dim]` → `[b, dim]`
    pub fn forward(&self, timesteps: &[f32], guidance: Option<&[f32]>, pooled: Tensor<2>) -> Tensor<2> {
        let device = pooled.device();
        let mut emb = self
            .timestep_embedder
            .forward(timestep_sinusoid(timesteps, 256, &device));
        if let (Some(g), Some(embedder)) = (guidance, &self.guidance_embedder) {
            emb = emb + embedder.forward(timestep_sinusoid(g, 256, &device));
        }
        emb + self.text_embedder.forward(pooled)
    }
}

/// Rotary tables for n-axis position ids (FLUX's `FluxPosEmbed`): per axis of `axes_dim[i]`
/// channels, frequencies `θ^(−2j/dim)` in f64, each cos/sin repeated for its pair, axes side
/// by side. ids: n × axes → (cos, sin), each `[n, Σ axes_dim]`
pub fn rope_tables(ids: &[Vec<f32>], axes_dim: &[usize], theta: f64, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let width: usize = axes_dim.iter().sum();
    let (mut cos, mut sin) = (
        Vec::with_capacity(ids.len() * width),
        Vec::with_capacity(ids.len() * width),
    );
    for pos in ids {
        for (axis, &dim) in axes_dim.iter().enumerate() {
            let p = pos.get(axis).copied().unwrap_or(0.0) as f64;
            for j in (0..dim).step_by(2) {
                let angle = p * (1.0 / theta.powf(j as f64 / dim as f64));
                let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                cos.extend([c, c]);
                sin.extend([s, s]);
            }
        }
    }
    let n = ids.len();
    (
        Tensor::from_data(TensorData::new(cos, [n, width]), device),
        Tensor::from_data(TensorData::new(sin, [n, width]), device),
    )
}
