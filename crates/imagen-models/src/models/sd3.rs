//! Stable Diffusion 3 / 3.5's MMDiT (`diffusers.SD3Transformer2DModel`): 2×2 patch embedding
//! with a cropped sin-cos position table, joint blocks (image and text tokens with their own
//! weights, one attention over `[image ‖ text]`), the last block `context_pre_only`, SD3.5's
//! RMS q/k norms and Medium's dual-attention layers (a second, image-only attention).
//! Configured from `transformer/config.json`.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Initializer, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use super::dit::{AdaNorm, EPS, FeedForward, modulate};
use super::embeddings::TimeTextEmbed;
use super::resnet::{conv2d, linear};
use crate::error::Result;
use crate::load::config::unsupported;
use crate::ops;

const COMPONENT: &str = "transformer";

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct Sd3Config {
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub caption_projection_dim: usize,
    pub pooled_projection_dim: usize,
    pub out_channels: usize,
    pub pos_embed_max_size: Option<usize>,
    pub dual_attention_layers: Vec<usize>,
    pub qk_norm: Option<String>,
}

impl Default for Sd3Config {
    /// Stable Diffusion 3.5 Medium.
    fn default() -> Self {
        Sd3Config {
            sample_size: 128,
            patch_size: 2,
            in_channels: 16,
            num_layers: 24,
            attention_head_dim: 64,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            caption_projection_dim: 1536,
            pooled_projection_dim: 2048,
            out_channels: 16,
            pos_embed_max_size: Some(384),
            dual_attention_layers: (0..13).collect(),
            qk_norm: Some("rms_norm".into()),
        }
    }
}

impl Sd3Config {
    pub fn validate(&self) -> Result<()> {
        if self.qk_norm.as_deref().is_some_and(|n| n != "rms_norm") {
            return Err(unsupported(COMPONENT, format!("qk_norm {:?}", self.qk_norm)));
        }
        if self.caption_projection_dim != self.inner_dim() {
            return Err(unsupported(
                COMPONENT,
                "caption_projection_dim differs from the inner width",
            ));
        }
        if self.pos_embed_max_size.is_none() || self.patch_size == 0 {
            return Err(unsupported(COMPONENT, "a patch embedding without pos_embed_max_size"));
        }
        Ok(())
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn init(&self, d: &Device) -> Sd3Transformer2DModel {
        let dim = self.inner_dim();
        let max = self
            .pos_embed_max_size
            .unwrap_or(self.sample_size / self.patch_size.max(1));
        let rms = || {
            self.qk_norm
                .is_some()
                .then(|| RmsNormConfig::new(self.attention_head_dim).with_epsilon(EPS).init(d))
        };
        let lin = || linear(dim, dim, true, d);
        let attention = |joint: bool, text_out: bool| Sd3Attention {
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            to_out: lin(),
            norm_q: rms(),
            norm_k: rms(),
            add_q_proj: joint.then(lin),
            add_k_proj: joint.then(lin),
            add_v_proj: joint.then(lin),
            norm_added_q: if joint { rms() } else { None },
            norm_added_k: if joint { rms() } else { None },
            to_add_out: text_out.then(lin),
        };
        let p = self.patch_size;
        Sd3Transformer2DModel {
            pos_embed: PatchEmbed {
                proj: ops_conv(self.in_channels, dim, p, d),
                pos_embed: Initializer::Zeros.init([1, max * max, dim], d),
            },
            time_text_embed: TimeTextEmbed::new(dim, self.pooled_projection_dim, false, d),
            context_embedder: linear(self.joint_attention_dim, self.caption_projection_dim, true, d),
            transformer_blocks: (0..self.num_layers)
                .map(|i| {
                    let pre_only = i + 1 == self.num_layers;
                    let dual = self.dual_attention_layers.contains(&i);
                    JointTransformerBlock {
                        norm1: AdaNorm::new(dim, if dual { 9 } else { 6 }, d),
                        norm1_context: AdaNorm::new(dim, if pre_only { 2 } else { 6 }, d),
                        attn: attention(true, !pre_only),
                        attn2: dual.then(|| attention(false, false)),
                        ff: FeedForward::new(dim, d),
                        ff_context: (!pre_only).then(|| FeedForward::new(dim, d)),
                    }
                })
                .collect(),
            norm_out: AdaNorm::new(dim, 2, d),
            proj_out: linear(dim, p * p * self.out_channels, true, d),
            heads: self.num_attention_heads,
            patch_size: p,
            pos_embed_max_size: max,
        }
    }
}

/// A `p × p`, stride-`p` convolution (the patch embedding).
fn ops_conv(cin: usize, cout: usize, p: usize, d: &Device) -> Conv2d {
    let mut c = conv2d(cin, cout, p, p, 0, d);
    c.stride = [p, p];
    c
}

#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
    /// sin-cos table `[1, max², dim]` (a persistent buffer in the checkpoint), cropped centrally
    pub pos_embed: Param<Tensor<3>>,
}

/// diffusers' `Attention` as the joint blocks use it: q/k/v (+ the text stream's `add_*`
/// projections) with optional RMS q/k norms; `to_add_out` absent in the `context_pre_only` block
/// and in the image-only `attn2`.
#[derive(Module, Debug)]
pub struct Sd3Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub norm_q: Option<RmsNorm>,
    pub norm_k: Option<RmsNorm>,
    pub add_q_proj: Option<Linear>,
    pub add_k_proj: Option<Linear>,
    pub add_v_proj: Option<Linear>,
    pub norm_added_q: Option<RmsNorm>,
    pub norm_added_k: Option<RmsNorm>,
    pub to_add_out: Option<Linear>,
}

/// q, k, v of `x` with the optional q/k norms, heads split: each `[b, n, h, d]`.
fn project([q, k, v]: [&Linear; 3], [nq, nk]: [&Option<RmsNorm>; 2], x: Tensor<3>, heads: usize) -> [Tensor<4>; 3] {
    let [b, n, dim] = x.dims();
    let split = |t: Tensor<3>| t.reshape([b, n, heads, dim / heads]);
    let norm = |t: Tensor<4>, norm: &Option<RmsNorm>| match norm {
        Some(nm) => ops::rms_norm(nm, t),
        None => t,
    };
    [
        norm(split(ops::linear(q, x.clone())), nq),
        norm(split(ops::linear(k, x.clone())), nk),
        split(ops::linear(v, x)),
    ]
}

fn attend([q, k, v]: [Tensor<4>; 3], heads: usize) -> Tensor<3> {
    let [b, n, h, d] = q.dims();
    let flat = |t: Tensor<4>| t.reshape([b, n, h * d]);
    ops::attention(flat(q), flat(k), flat(v), heads, false)
}

impl Sd3Attention {
    /// The image-only attention (`attn2`): x `[b, n, dim]` → `[b, n, dim]`
    fn self_attention(&self, x: Tensor<3>, heads: usize) -> Tensor<3> {
        let qkv = project(
            [&self.to_q, &self.to_k, &self.to_v],
            [&self.norm_q, &self.norm_k],
            x,
            heads,
        );
        ops::linear(&self.to_out, attend(qkv, heads))
    }

    /// Joint attention over `[image ‖ text]`: (image out `[b, n_img, dim]`, text out before
    /// `to_add_out`: `[b, n_txt, dim]`).
    fn joint(&self, x: Tensor<3>, ctx: Tensor<3>, heads: usize) -> (Tensor<3>, Tensor<3>) {
        let n_img = x.dims()[1];
        let [iq, ik, iv] = project(
            [&self.to_q, &self.to_k, &self.to_v],
            [&self.norm_q, &self.norm_k],
            x,
            heads,
        );
        let (Some(aq), Some(ak), Some(av)) = (&self.add_q_proj, &self.add_k_proj, &self.add_v_proj) else {
            unreachable!("joint blocks are built with their text projections")
        };
        let [tq, tk, tv] = project([aq, ak, av], [&self.norm_added_q, &self.norm_added_k], ctx, heads);
        let cat = |a: Tensor<4>, b: Tensor<4>| Tensor::cat(vec![a, b], 1);
        let h = attend([cat(iq, tq), cat(ik, tk), cat(iv, tv)], heads);
        let [b, n, inner] = h.dims();
        let img = h.clone().slice([0..b, 0..n_img, 0..inner]);
        (ops::linear(&self.to_out, img), h.slice([0..b, n_img..n, 0..inner]))
    }
}

#[derive(Module, Debug)]
pub struct JointTransformerBlock {
    /// adaLN-Zero: 6 vectors, 9 with the dual attention (`SD35AdaLayerNormZeroX`)
    pub norm1: AdaNorm,
    /// 6 vectors; the last block's `AdaLayerNormContinuous`: 2 (scale, shift)
    pub norm1_context: AdaNorm,
    pub attn: Sd3Attention,
    pub attn2: Option<Sd3Attention>,
    pub ff: FeedForward,
    pub ff_context: Option<FeedForward>,
}

impl JointTransformerBlock {
    /// x: `[b, n_img, dim]`, ctx: `[b, n_txt, dim]` → (x, ctx; `None` after the last block)
    fn forward(&self, x: Tensor<3>, ctx: Tensor<3>, temb: &Tensor<2>, heads: usize) -> (Tensor<3>, Option<Tensor<3>>) {
        let m = self.norm1.chunks(temb);
        let c = self.norm1_context.chunks(temb);
        let pre_only = self.ff_context.is_none();
        let norm_ctx = if pre_only {
            modulate(ctx.clone(), &c[1], &c[0])
        } else {
            modulate(ctx.clone(), &c[0], &c[1])
        };
        // the dual attention reads the block's input, modulated by its own shift/scale
        let normed2 = self.attn2.as_ref().map(|_| modulate(x.clone(), &m[6], &m[7]));
        let (attn_img, attn_txt) = self.attn.joint(modulate(x.clone(), &m[0], &m[1]), norm_ctx, heads);
        let mut x = ops::gated_add(x, &m[2], attn_img);
        if let (Some(attn2), Some(normed2)) = (&self.attn2, normed2) {
            x = ops::gated_add(x, &m[8], attn2.self_attention(normed2, heads));
        }
        let x = ops::gated_add(x.clone(), &m[5], self.ff.forward(modulate(x, &m[3], &m[4])));
        let (Some(ff_ctx), Some(add_out)) = (&self.ff_context, &self.attn.to_add_out) else {
            return (x, None);
        };
        let ctx = ops::gated_add(ctx, &c[2], ops::linear(add_out, attn_txt));
        let ctx = ops::gated_add(ctx.clone(), &c[5], ff_ctx.forward(modulate(ctx, &c[3], &c[4])));
        (x, Some(ctx))
    }
}

#[derive(Module, Debug)]
pub struct Sd3Transformer2DModel {
    pub pos_embed: PatchEmbed,
    pub time_text_embed: TimeTextEmbed,
    pub context_embedder: Linear,
    pub transformer_blocks: Vec<JointTransformerBlock>,
    /// `AdaLayerNormContinuous`: (scale, shift)
    pub norm_out: AdaNorm,
    pub proj_out: Linear,
    pub heads: usize,
    pub patch_size: usize,
    pub pos_embed_max_size: usize,
}

impl Sd3Transformer2DModel {
    /// The velocity for latents. x: `[b, c, h, w]`, context: `[b, n_txt, joint_attention_dim]`,
    /// pooled: `[b, pooled_projection_dim]`, timesteps: one per sample as the pipeline passes
    /// them (σ·1000) → `[b, out_channels, h, w]`
    pub fn forward(&self, x: Tensor<4>, context: Tensor<3>, pooled: Tensor<2>, timesteps: &[f32]) -> Tensor<4> {
        self.forward_skipping(x, context, pooled, timesteps, &[])
    }

    /// [`forward`](Self::forward) with the joint blocks numbered in `skip` left out (their
    /// inputs passed through), as diffusers' `skip_layers` for skip-layer guidance.
    pub fn forward_skipping(
        &self,
        x: Tensor<4>,
        context: Tensor<3>,
        pooled: Tensor<2>,
        timesteps: &[f32],
        skip: &[usize],
    ) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let p = self.patch_size;
        let (hp, wp) = (h / p, w / p);
        // [b, dim, hp, wp] -> [b, hp·wp, dim]
        let x = ops::conv2d(&self.pos_embed.proj, x);
        let dim = x.dims()[1];
        let x = x.reshape([b, dim, hp * wp]).swap_dims(1, 2) + self.cropped_pos_embed(hp, wp);
        let temb = self.time_text_embed.forward(timesteps, None, pooled);
        let mut ctx = ops::linear(&self.context_embedder, context);
        let mut x = x;
        for (index, block) in self.transformer_blocks.iter().enumerate() {
            if skip.contains(&index) {
                continue;
            }
            let (nx, nctx) = block.forward(x, ctx.clone(), &temb, self.heads);
            x = nx;
            if let Some(c) = nctx {
                ctx = c;
            }
        }
        let m = self.norm_out.chunks(&temb);
        let out = ops::linear(&self.proj_out, modulate(x, &m[1], &m[0]));
        // [b, hp·wp, p·p·c] -> [b, hp, wp, p, p, c] -> [b, c, hp, p, wp, p] -> [b, c, h, w]
        let c = out.dims()[2] / (p * p);
        out.reshape([b, hp, wp, p, p, c])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, c, hp * p, wp * p])
    }

    /// The centre `hp × wp` of the position table: `[1, hp·wp, dim]`.
    fn cropped_pos_embed(&self, hp: usize, wp: usize) -> Tensor<3> {
        let max = self.pos_embed_max_size;
        let table = self.pos_embed.pos_embed.val();
        let dim = table.dims()[2];
        let (top, left) = ((max.saturating_sub(hp)) / 2, (max.saturating_sub(wp)) / 2);
        table
            .reshape([max, max, dim])
            .slice([top..top + hp, left..left + wp, 0..dim])
            .reshape([1, hp * wp, dim])
    }

    /// The largest latent side the position table covers (`pos_embed_max_size · patch_size`).
    pub fn max_latent_side(&self) -> usize {
        self.pos_embed_max_size * self.patch_size
    }
}

/// Module path → checkpoint keys (diffusers' names; see [`super::dit::checkpoint_keys`]).
pub fn checkpoint_keys(path: &str) -> Vec<String> {
    super::dit::checkpoint_keys(path)
}
