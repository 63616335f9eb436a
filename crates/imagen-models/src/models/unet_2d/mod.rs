//! diffusers `UNet2DConditionModel` (SD 1.x / 2.x), configured from its `config.json`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use super::attention::{Transformer2DConfig, Transformer2DModel};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D, conv2d, group_norm, linear};
use crate::ops;

mod config;

pub use config::UNet2DConditionConfig;

const COMPONENT: &str = "unet";

impl UNet2DConditionConfig {
    /// Build the module with lazily initialised parameters (filled by the weight loader).
    pub fn init(&self, d: &Device) -> UNet2DConditionModel {
        let n = self.block_out_channels.len();
        let ch = &self.block_out_channels;
        let layers = self.layers_per_block.per_block(n);
        let heads = self.heads(n);
        let ctx = self.cross_attention_dim.per_block(n);
        let tlayers = self.transformer_layers_per_block.per_block(n);
        let (groups, eps) = (self.norm_num_groups, self.norm_eps);
        let temb = ch[0] * 4;
        let transformer = |c: usize, i: usize| {
            Transformer2DModel::new(
                &Transformer2DConfig {
                    channels: c,
                    context_dim: ctx[i],
                    heads: heads[i],
                    layers: tlayers[i],
                    groups,
                    linear_projection: self.use_linear_projection,
                },
                d,
            )
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut out_c = ch[0];
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = ch[i];
            let cross = kind == "CrossAttnDownBlock2D";
            down_blocks.push(DownBlock {
                resnets: (0..layers[i])
                    .map(|j| ResnetBlock2D::new(if j == 0 { in_c } else { out_c }, out_c, Some(temb), groups, eps, d))
                    .collect(),
                attentions: (0..if cross { layers[i] } else { 0 })
                    .map(|_| transformer(out_c, i))
                    .collect(),
                downsamplers: (0..usize::from(i + 1 < n))
                    .map(|_| Downsample2D::new(out_c, self.downsample_padding, d))
                    .collect(),
            });
        }

        let last = ch[n - 1];
        let mid_cross = self.mid_block_type.as_deref() != Some("UNetMidBlock2D");
        let mid_block = MidBlock {
            resnets: (0..2)
                .map(|_| ResnetBlock2D::new(last, last, Some(temb), groups, eps, d))
                .collect(),
            attentions: (0..usize::from(mid_cross)).map(|_| transformer(last, n - 1)).collect(),
        };

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_c = rev[0];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let bi = n - 1 - i; // the down block this up block mirrors
            let prev_c = out_c;
            out_c = rev[i];
            let in_c = rev[(i + 1).min(n - 1)];
            let num = layers[bi] + 1;
            let cross = kind == "CrossAttnUpBlock2D";
            up_blocks.push(UpBlock {
                resnets: (0..num)
                    .map(|j| {
                        let skip = if j == num - 1 { in_c } else { out_c };
                        let res_in = if j == 0 { prev_c } else { out_c };
                        ResnetBlock2D::new(res_in + skip, out_c, Some(temb), groups, eps, d)
                    })
                    .collect(),
                attentions: (0..if cross { num } else { 0 })
                    .map(|_| transformer(out_c, bi))
                    .collect(),
                upsamplers: (0..usize::from(i + 1 < n)).map(|_| Upsample2D::new(out_c, d)).collect(),
            });
        }

        UNet2DConditionModel {
            conv_in: conv2d(self.in_channels, ch[0], 3, 1, 1, d),
            time_embedding: TimestepEmbedding {
                linear_1: linear(ch[0], temb, true, d),
                linear_2: linear(temb, temb, true, d),
                cond_proj: self.time_cond_proj_dim.map(|c| linear(c, ch[0], false, d)),
            },
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(groups, ch[0], eps, d),
            conv_out: conv2d(ch[0], self.out_channels, 3, 1, 1, d),
            add_embedding: match (&self.addition_embed_type, self.projection_class_embeddings_input_dim) {
                (Some(_), Some(dim)) => Some(TimestepEmbedding {
                    linear_1: linear(dim, temb, true, d),
                    linear_2: linear(temb, temb, true, d),
                    cond_proj: None,
                }),
                _ => None,
            },
            add_time_channels: self.addition_time_embed_dim.unwrap_or(0),
            time_channels: ch[0],
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
        }
    }
}

/// Every cross-attention's keys and values of one text context, per transformer block, in the
/// order the UNet runs its spatial transformers ([`UNet2DConditionModel::cross_kv`]).
#[derive(Clone, Debug)]
pub struct CrossKv(Vec<Vec<(Tensor<3>, Tensor<3>)>>);

/// SDXL's added conditioning (`addition_embed_type = "text_time"`).
pub struct AddedCond {
    /// The second text encoder's projected pooled output: `[b, projection_dim]`.
    pub text_embeds: Tensor<2>,
    /// Per batch row: original (h, w), crop (top, left), target (h, w).
    pub time_ids: Vec<[f32; 6]>,
}

/// `linear_1` → SiLU → `linear_2` on the sinusoidal timestep features.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
    /// LCM-distilled UNets: the guidance embedding, projected and added to the input.
    pub cond_proj: Option<Linear>,
}

#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    /// Empty for `DownBlock2D`.
    pub attentions: Vec<Transformer2DModel>,
    /// One for every block but the last.
    pub downsamplers: Vec<Downsample2D>,
}

#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Vec<Upsample2D>,
}

#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    /// SDXL: (pooled text ++ sinusoidal size/crop ids) → added to the time embedding.
    pub add_embedding: Option<TimestepEmbedding>,
    pub add_time_channels: usize,
    pub time_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
}

impl UNet2DConditionModel {
    /// Predict the noise (or v) for `sample` at `timesteps`.
    ///
    /// sample: `[b, in, h, w]`, timesteps: `b` values (or one, broadcast),
    /// context: `[b, m, cross_attention_dim]` → `[b, out, h, w]`
    pub fn forward(&self, sample: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> Tensor<4> {
        self.forward_with(sample, timesteps, context, None, None)
    }

    /// LCM-distilled UNets (`time_cond_proj_dim`): diffusers' `get_guidance_scale_embedding` of
    /// `w` (the pipelines pass `guidance_scale − 1`), `[b, time_cond_proj_dim]`; `None` for
    /// other UNets.
    pub fn guidance_embedding(&self, w: f32, b: usize, device: &Device) -> Option<Tensor<2>> {
        let dim = self.time_embedding.cond_proj.as_ref()?.weight.dims()[0];
        let half = dim / 2;
        let step = 10000f32.ln() / (half as f32 - 1.0);
        let w = w * 1000.0;
        let args: Vec<f32> = (0..half).map(|i| w * (i as f32 * -step).exp()).collect();
        let row: Vec<f32> = args
            .iter()
            .map(|a| a.sin())
            .chain(args.iter().map(|a| a.cos()))
            .collect();
        let mut data = Vec::with_capacity(b * dim);
        for _ in 0..b {
            data.extend(&row);
            data.extend(std::iter::repeat_n(0.0, dim - 2 * half));
        }
        Some(Tensor::from_data(TensorData::new(data, [b, dim]), device))
    }

    /// [`forward`](Self::forward) with SDXL's added conditioning and an LCM-distilled UNet's
    /// guidance embedding (`timestep_cond`, see [`guidance_embedding`](Self::guidance_embedding));
    /// each is ignored by models without it.
    pub fn forward_with(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        context: &Tensor<3>,
        added: Option<&AddedCond>,
        timestep_cond: Option<&Tensor<2>>,
    ) -> Tensor<4> {
        self.forward_kv(sample, timesteps, &self.cross_kv(context), added, timestep_cond)
    }

    /// The keys and values every cross-attention projects from `context`: the same at each
    /// denoising step, so a generation computes them once and calls
    /// [`forward_kv`](Self::forward_kv) (diffusers recomputes them at every step).
    /// context: `[b, m, cross_attention_dim]`
    pub fn cross_kv(&self, context: &Tensor<3>) -> CrossKv {
        let transformers = self
            .down_blocks
            .iter()
            .flat_map(|b| &b.attentions)
            .chain(&self.mid_block.attentions)
            .chain(self.up_blocks.iter().flat_map(|b| &b.attentions));
        CrossKv(transformers.map(|t| t.cross_kv(context)).collect())
    }

    /// [`forward_with`](Self::forward_with) from this UNet's [`cross_kv`](Self::cross_kv) of the
    /// context instead of the context.
    pub fn forward_kv(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        kv: &CrossKv,
        added: Option<&AddedCond>,
        timestep_cond: Option<&Tensor<2>>,
    ) -> Tensor<4> {
        // The transformers in the order `cross_kv` listed them.
        let mut kv = kv.0.iter().map(Vec::as_slice);
        let mut kv = move || kv.next().unwrap_or_default();
        let b = sample.dims()[0];
        let device = sample.device();
        let ts: Vec<f32> = (0..b)
            .map(|i| timesteps.get(i).or(timesteps.last()).copied().unwrap_or(0.0))
            .collect();
        let mut temb = self.sinusoid(&ts, self.time_channels, &device);
        if let (Some(proj), Some(cond)) = (&self.time_embedding.cond_proj, timestep_cond) {
            temb = temb + ops::linear_plain(proj, cond.clone());
        }
        let time = &self.time_embedding;
        let hidden = ops::linear_silu(&time.linear_1, temb);
        // Every resnet takes SiLU(temb): applied once here, not in each of them (diffusers).
        let temb = match (&self.add_embedding, added) {
            (Some(add), Some(cond)) => {
                let ids: Vec<f32> = cond.time_ids.iter().flatten().copied().collect();
                let rows = cond.time_ids.len();
                // [rows * 6, d] → [rows, 6 * d]
                let time_ids = self
                    .sinusoid(&ids, self.add_time_channels, &device)
                    .reshape([rows, 6 * self.add_time_channels]);
                // [b, text] ++ [b, 6d] → [b, text + 6d]
                let x = Tensor::cat(vec![cond.text_embeds.clone(), time_ids], 1);
                let added = ops::linear_plain(&add.linear_2, ops::linear_silu(&add.linear_1, x));
                silu(ops::linear_plain(&time.linear_2, hidden) + added)
            }
            _ => ops::linear_silu(&time.linear_2, hidden),
        };

        let mut x = ops::conv2d(&self.conv_in, sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            for (i, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(x, Some(&temb));
                if let Some(attn) = block.attentions.get(i) {
                    x = attn.forward_kv(x, kv());
                }
                skips.push(x.clone());
            }
            for down in &block.downsamplers {
                x = down.forward(x);
                skips.push(x.clone());
            }
        }

        x = self.mid_block.resnets[0].forward(x, Some(&temb));
        for (attn, resnet) in self.mid_block.attentions.iter().zip(&self.mid_block.resnets[1..]) {
            x = resnet.forward(attn.forward_kv(x, kv()), Some(&temb));
        }
        if self.mid_block.attentions.is_empty() {
            x = self.mid_block.resnets[1].forward(x, Some(&temb));
        }

        for block in &self.up_blocks {
            for (i, resnet) in block.resnets.iter().enumerate() {
                let Some(skip) = skips.pop() else { break };
                // [b, c, h, w] ++ [b, c_skip, h, w] -> [b, c + c_skip, h, w]
                x = resnet.forward(ops::cat_channels(x, skip), Some(&temb));
                if let Some(attn) = block.attentions.get(i) {
                    x = attn.forward_kv(x, kv());
                }
            }
            for up in &block.upsamplers {
                // Resize to the next skip's size: 2× normally, exact for odd latent sizes.
                let size = skips.last().map(|s| {
                    let [_, _, h, w] = s.dims();
                    [h, w]
                });
                x = up.forward(x, size);
            }
        }

        ops::norm_silu_conv2d_add(&self.conv_norm_out, &self.conv_out, x, ops::ConvAdd::Nothing)
    }

    /// diffusers `get_timestep_embedding` of each value, computed in f32 on the host:
    /// `[values.len(), dim]`.
    fn sinusoid(&self, values: &[f32], dim: usize, device: &Device) -> Tensor<2> {
        let half = dim / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = -(10000f64.ln() as f32) * i as f32 / (half as f32 - self.freq_shift as f32);
                exponent.exp()
            })
            .collect();
        let mut out = Vec::with_capacity(values.len() * 2 * half);
        for &t in values {
            let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
            let (sin, cos) = (args.iter().map(|a| a.sin()), args.iter().map(|a| a.cos()));
            if self.flip_sin_to_cos {
                out.extend(cos.chain(sin));
            } else {
                out.extend(sin.chain(cos));
            }
        }
        Tensor::from_data(TensorData::new(out, [values.len(), 2 * half]), device)
    }
}

/// Module path → checkpoint key: the one place where our field names differ from diffusers'.
pub fn checkpoint_keys(path: &str) -> Vec<String> {
    const RENAMES: [(&str, &str); 3] = [
        (".to_out.", ".to_out.0."),
        (".ff.geglu.", ".ff.net.0.proj."),
        (".ff.out.", ".ff.net.2."),
    ];
    let mut key = path.to_owned();
    for (ours, theirs) in RENAMES {
        key = key.replace(ours, theirs);
    }
    vec![key]
}
