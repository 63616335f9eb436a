//! FLUX.1's transformer (`diffusers.FluxTransformer2DModel`): double-stream blocks (image and
//! text tokens with their own weights, one joint attention), then single-stream blocks over the
//! concatenated sequence, adaLN-Zero modulation from the timestep (+ guidance) and pooled text,
//! 3-axis RoPE over (text: 0; image: row, column) ids. Configured from `transformer/config.json`.

use burn::module::Module;
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use super::dit::{AdaNorm, EPS, FeedForward, modulate};
use super::embeddings::{TimeTextEmbed, rope_tables};
use super::resnet::linear;
use crate::error::Result;
use crate::load::config::unsupported;
use crate::ops::{self, Act};

const COMPONENT: &str = "transformer";

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct FluxConfig {
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub pooled_projection_dim: usize,
    pub guidance_embeds: bool,
    pub axes_dims_rope: Vec<usize>,
}

impl Default for FluxConfig {
    /// FLUX.1-schnell (dev: `guidance_embeds`).
    fn default() -> Self {
        FluxConfig {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
        }
    }
}

impl FluxConfig {
    pub fn validate(&self) -> Result<()> {
        if self.patch_size != 1 {
            return Err(unsupported(COMPONENT, format!("patch_size {}", self.patch_size)));
        }
        if self.axes_dims_rope.iter().sum::<usize>() != self.attention_head_dim
            || self.axes_dims_rope.iter().any(|d| d % 2 != 0)
        {
            return Err(unsupported(
                COMPONENT,
                "axes_dims_rope must be even and sum to attention_head_dim",
            ));
        }
        if !self.in_channels.is_multiple_of(4) {
            return Err(unsupported(COMPONENT, "in_channels is not 4 × latent channels"));
        }
        Ok(())
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// The VAE latent channels the transformer's 2×2 packed tokens hold.
    pub fn latent_channels(&self) -> usize {
        self.in_channels / 4
    }

    pub fn init(&self, d: &Device) -> FluxTransformer2DModel {
        let dim = self.inner_dim();
        let hd = self.attention_head_dim;
        let rms = || RmsNormConfig::new(hd).with_epsilon(EPS).init(d);
        let attention = |added: bool, out: bool| FluxAttention {
            to_q: linear(dim, dim, true, d),
            to_k: linear(dim, dim, true, d),
            to_v: linear(dim, dim, true, d),
            norm_q: rms(),
            norm_k: rms(),
            to_out: out.then(|| linear(dim, dim, true, d)),
            add_q_proj: added.then(|| linear(dim, dim, true, d)),
            add_k_proj: added.then(|| linear(dim, dim, true, d)),
            add_v_proj: added.then(|| linear(dim, dim, true, d)),
            norm_added_q: added.then(rms),
            norm_added_k: added.then(rms),
            to_add_out: added.then(|| linear(dim, dim, true, d)),
        };
        let ff = || FeedForward {
            proj: linear(dim, 4 * dim, true, d),
            out: linear(4 * dim, dim, true, d),
        };
        let mlp = 4 * dim;
        FluxTransformer2DModel {
            time_text_embed: TimeTextEmbed::new(dim, self.pooled_projection_dim, self.guidance_embeds, d),
            context_embedder: linear(self.joint_attention_dim, dim, true, d),
            x_embedder: linear(self.in_channels, dim, true, d),
            transformer_blocks: (0..self.num_layers)
                .map(|_| FluxTransformerBlock {
                    norm1: AdaNorm::new(dim, 6, d),
                    norm1_context: AdaNorm::new(dim, 6, d),
                    attn: attention(true, true),
                    ff: ff(),
                    ff_context: ff(),
                })
                .collect(),
            single_transformer_blocks: (0..self.num_single_layers)
                .map(|_| FluxSingleTransformerBlock {
                    norm: AdaNorm::new(dim, 3, d),
                    proj_mlp: linear(dim, mlp, true, d),
                    proj_out: linear(dim + mlp, dim, true, d),
                    attn: attention(false, false),
                })
                .collect(),
            norm_out: AdaNorm::new(dim, 2, d),
            proj_out: linear(dim, self.out_channels.unwrap_or(self.in_channels), true, d),
            heads: self.num_attention_heads,
            axes_dims_rope: self.axes_dims_rope.clone(),
        }
    }
}

/// `FluxAttention`: q/k/v with per-head RMS norms; the double-stream blocks' text projections
/// (`add_*`) and output projections; single-stream blocks have neither.
#[derive(Module, Debug)]
pub struct FluxAttention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub norm_q: RmsNorm,
    pub norm_k: RmsNorm,
    pub to_out: Option<Linear>,
    pub add_q_proj: Option<Linear>,
    pub add_k_proj: Option<Linear>,
    pub add_v_proj: Option<Linear>,
    pub norm_added_q: Option<RmsNorm>,
    pub norm_added_k: Option<RmsNorm>,
    pub to_add_out: Option<Linear>,
}

/// Rotary tables for the joint sequence: (cos, sin), each `[n, head_dim]`.
pub type Rope = (Tensor<2>, Tensor<2>);

/// q, k, v of `x`, heads split: each `[b, n, h, d]`.
fn project([q, k, v]: [&Linear; 3], x: Tensor<3>, heads: usize) -> [Tensor<4>; 3] {
    let [b, n, dim] = x.dims();
    let split = |t: Tensor<3>| t.reshape([b, n, heads, dim / heads]);
    [
        split(ops::linear(q, x.clone())),
        split(ops::linear(k, x.clone())),
        split(ops::linear(v, x)),
    ]
}

/// Attention over the joint sequence: q, k already normed and rotated, `[b, n, h, d]` each →
/// `[b, n, h·d]`.
fn joint_attention([q, k, v]: [Tensor<4>; 3], heads: usize) -> Tensor<3> {
    let [b, n, h, d] = q.dims();
    let flat = |t: Tensor<4>| t.reshape([b, n, h * d]);
    ops::attention(flat(q), flat(k), flat(v), heads, false)
}

#[derive(Module, Debug)]
pub struct FluxTransformerBlock {
    pub norm1: AdaNorm,
    pub norm1_context: AdaNorm,
    pub attn: FluxAttention,
    pub ff: FeedForward,
    pub ff_context: FeedForward,
}

impl FluxTransformerBlock {
    /// x: `[b, n_img, dim]`, ctx: `[b, n_txt, dim]`, temb: `[b, dim]` → (x, ctx)
    fn forward(
        &self,
        x: Tensor<3>,
        ctx: Tensor<3>,
        temb: &Tensor<2>,
        rope: &Rope,
        heads: usize,
    ) -> (Tensor<3>, Tensor<3>) {
        let m = self.norm1.chunks(temb);
        let c = self.norm1_context.chunks(temb);
        let a = &self.attn;
        let (Some(aq), Some(ak), Some(av), Some(nq), Some(nk), Some(add_out), Some(out)) = (
            &a.add_q_proj,
            &a.add_k_proj,
            &a.add_v_proj,
            &a.norm_added_q,
            &a.norm_added_k,
            &a.to_add_out,
            &a.to_out,
        ) else {
            unreachable!("double-stream blocks are built with their text projections")
        };
        let n_txt = ctx.dims()[1];
        let [iq, ik, iv] = project([&a.to_q, &a.to_k, &a.to_v], modulate(x.clone(), &m[0], &m[1]), heads);
        let [tq, tk, tv] = project([aq, ak, av], modulate(ctx.clone(), &c[0], &c[1]), heads);
        // text first in the joint sequence: the image tokens' rotary positions start after it
        let (cos, sin) = rope;
        let q = vec![
            ops::rms_norm_rope(nq, tq, cos, sin, 0),
            ops::rms_norm_rope(&a.norm_q, iq, cos, sin, n_txt),
        ];
        let k = vec![
            ops::rms_norm_rope(nk, tk, cos, sin, 0),
            ops::rms_norm_rope(&a.norm_k, ik, cos, sin, n_txt),
        ];
        let joint = [Tensor::cat(q, 1), Tensor::cat(k, 1), Tensor::cat(vec![tv, iv], 1)];
        let h = joint_attention(joint, heads);
        let [b, n, inner] = h.dims();
        let h_txt = h.clone().slice([0..b, 0..n_txt, 0..inner]);
        let h_img = h.slice([0..b, n_txt..n, 0..inner]);

        let x = ops::gated_add(x, &m[2], ops::linear(out, h_img));
        let x = ops::gated_add(x.clone(), &m[5], self.ff.forward(modulate(x, &m[3], &m[4])));
        let ctx = ops::gated_add(ctx, &c[2], ops::linear(add_out, h_txt));
        let ctx = ops::gated_add(ctx.clone(), &c[5], self.ff_context.forward(modulate(ctx, &c[3], &c[4])));
        (x, ctx)
    }
}

#[derive(Module, Debug)]
pub struct FluxSingleTransformerBlock {
    pub norm: AdaNorm,
    pub proj_mlp: Linear,
    pub proj_out: Linear,
    pub attn: FluxAttention,
}

impl FluxSingleTransformerBlock {
    /// x: `[b, n_txt + n_img, dim]` → same
    fn forward(&self, x: Tensor<3>, temb: &Tensor<2>, rope: &Rope, heads: usize) -> Tensor<3> {
        let m = self.norm.chunks(temb);
        let normed = modulate(x.clone(), &m[0], &m[1]);
        let mlp = ops::linear_act(&self.proj_mlp, normed.clone(), Act::GeluTanh);
        let a = &self.attn;
        let [q, k, v] = project([&a.to_q, &a.to_k, &a.to_v], normed, heads);
        let (cos, sin) = rope;
        let q = ops::rms_norm_rope(&a.norm_q, q, cos, sin, 0);
        let k = ops::rms_norm_rope(&a.norm_k, k, cos, sin, 0);
        let h = joint_attention([q, k, v], heads);
        ops::gated_add(x, &m[2], ops::linear(&self.proj_out, Tensor::cat(vec![h, mlp], 2)))
    }
}

#[derive(Module, Debug)]
pub struct FluxTransformer2DModel {
    pub time_text_embed: TimeTextEmbed,
    pub context_embedder: Linear,
    pub x_embedder: Linear,
    pub transformer_blocks: Vec<FluxTransformerBlock>,
    pub single_transformer_blocks: Vec<FluxSingleTransformerBlock>,
    /// `AdaLayerNormContinuous`: (scale, shift), in that order
    pub norm_out: AdaNorm,
    pub proj_out: Linear,
    pub heads: usize,
    pub axes_dims_rope: Vec<usize>,
}

/// What the transformer is called with besides the image tokens.
pub struct FluxInputs<'a> {
    /// T5 states `[b, n_txt, joint_attention_dim]`
    pub context: Tensor<3>,
    /// CLIP's pooled output `[b, pooled_projection_dim]`
    pub pooled: Tensor<2>,
    /// One per sample, as the pipeline passes them (σ, i.e. diffusers' `timestep / 1000`).
    pub timesteps: &'a [f32],
    /// FLUX.1-dev's distilled guidance scale, one per sample (ignored without `guidance_embeds`).
    pub guidance: Option<&'a [f32]>,
    /// Position ids of the text tokens then the image tokens (3 axes each).
    pub ids: &'a [Vec<f32>],
}

impl FluxTransformer2DModel {
    pub fn takes_guidance(&self) -> bool {
        self.time_text_embed.guidance_embedder.is_some()
    }

    /// Position ids of a `rows × cols` grid of packed latent tokens: (0, row, column), row-major
    /// (diffusers' `_prepare_latent_image_ids`).
    pub fn image_ids(rows: usize, cols: usize) -> Vec<Vec<f32>> {
        (0..rows)
            .flat_map(|r| (0..cols).map(move |c| vec![0.0, r as f32, c as f32]))
            .collect()
    }

    /// The velocity for packed latents. x: `[b, n_img, in_channels]` → `[b, n_img, out_channels]`
    pub fn forward(&self, x: Tensor<3>, inputs: FluxInputs) -> Tensor<3> {
        let device = x.device();
        // diffusers multiplies by 1000 inside the model, in the activations' f32
        let scale = |v: &[f32]| -> Vec<f32> { v.iter().map(|t| t * 1000.0).collect() };
        let t = scale(inputs.timesteps);
        let g = inputs.guidance.map(scale);
        let temb = self.time_text_embed.forward(&t, g.as_deref(), inputs.pooled);
        let mut x = ops::linear(&self.x_embedder, x);
        let mut ctx = ops::linear(&self.context_embedder, inputs.context);
        let rope = rope_tables(inputs.ids, &self.axes_dims_rope, 10000.0, &device);
        for block in &self.transformer_blocks {
            (x, ctx) = block.forward(x, ctx, &temb, &rope, self.heads);
        }
        let n_txt = ctx.dims()[1];
        let mut joint = Tensor::cat(vec![ctx, x], 1);
        for block in &self.single_transformer_blocks {
            joint = block.forward(joint, &temb, &rope, self.heads);
        }
        let [b, n, dim] = joint.dims();
        let x = joint.slice([0..b, n_txt..n, 0..dim]);
        let m = self.norm_out.chunks(&temb);
        ops::linear(&self.proj_out, modulate(x, &m[1], &m[0]))
    }
}

/// Module path → checkpoint keys (diffusers' names; see [`super::dit::checkpoint_keys`]).
pub fn checkpoint_keys(path: &str) -> Vec<String> {
    super::dit::checkpoint_keys(path)
}
