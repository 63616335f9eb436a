//! diffusers `AutoencoderKL`: the encoder (for image-to-image) and the decoder.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;

use super::attention::{Attention, Keys};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D, conv2d, group_norm};
use crate::error::Result;
use crate::load::config::unsupported;
use crate::ops;

const COMPONENT: &str = "vae";
/// diffusers builds every VAE norm with `resnet_eps = 1e-6`.
const EPS: f64 = 1e-6;

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        AutoencoderKLConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKLConfig {
    /// The SD 1.x/2.x VAE (`vae/config.json` of runwayml/stable-diffusion-v1-5).
    pub fn sd() -> Self {
        AutoencoderKLConfig {
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            sample_size: 512,
            ..Self::default()
        }
    }

    /// Pixels per latent along each side: `2^(blocks − 1)`.
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(unsupported(
                COMPONENT,
                "block type counts differ from block_out_channels",
            ));
        }
        if self.act_fn != "silu" {
            return Err(unsupported(COMPONENT, format!("act_fn {:?}", self.act_fn)));
        }
        for t in self.down_block_types.iter().chain(&self.up_block_types) {
            if t != "DownEncoderBlock2D" && t != "UpDecoderBlock2D" {
                return Err(unsupported(COMPONENT, format!("block type {t}")));
            }
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(unsupported(
                COMPONENT,
                format!("{c} channels vs {} groups", self.norm_num_groups),
            ));
        }
        Ok(())
    }

    pub fn init(&self, d: &Device) -> AutoencoderKL {
        let ch = &self.block_out_channels;
        let n = ch.len();
        let g = self.norm_num_groups;
        let last = ch[n - 1];
        let mid = || MidBlock {
            resnets: (0..2)
                .map(|_| ResnetBlock2D::new(last, last, None, g, EPS, d))
                .collect(),
            attentions: (0..usize::from(self.mid_block_add_attention))
                .map(|_| SpatialAttention {
                    group_norm: group_norm(g, last, EPS, d),
                    attention: Attention::new(last, last, 1, last, true, d),
                })
                .collect(),
        };

        let mut out_c = ch[0];
        let down_blocks = (0..n)
            .map(|i| {
                let in_c = out_c;
                out_c = ch[i];
                EncoderBlock {
                    resnets: (0..self.layers_per_block)
                        .map(|j| ResnetBlock2D::new(if j == 0 { in_c } else { out_c }, out_c, None, g, EPS, d))
                        .collect(),
                    downsamplers: (0..usize::from(i + 1 < n))
                        .map(|_| Downsample2D::new(out_c, 0, d))
                        .collect(),
                }
            })
            .collect();
        let encoder = Encoder {
            conv_in: conv2d(self.in_channels, ch[0], 3, 1, 1, d),
            down_blocks,
            mid_block: mid(),
            conv_norm_out: group_norm(g, last, EPS, d),
            conv_out: conv2d(last, 2 * self.latent_channels, 3, 1, 1, d),
        };

        let mut out_c = ch[n - 1];
        let up_blocks = (0..n)
            .map(|i| {
                let prev_c = out_c;
                out_c = ch[n - 1 - i];
                DecoderBlock {
                    resnets: (0..self.layers_per_block + 1)
                        .map(|j| ResnetBlock2D::new(if j == 0 { prev_c } else { out_c }, out_c, None, g, EPS, d))
                        .collect(),
                    upsamplers: (0..usize::from(i + 1 < n)).map(|_| Upsample2D::new(out_c, d)).collect(),
                }
            })
            .collect();
        let decoder = Decoder {
            conv_in: conv2d(self.latent_channels, last, 3, 1, 1, d),
            mid_block: mid(),
            up_blocks,
            conv_norm_out: group_norm(g, ch[0], EPS, d),
            conv_out: conv2d(ch[0], self.out_channels, 3, 1, 1, d),
        };

        let lc = self.latent_channels;
        AutoencoderKL {
            encoder,
            decoder,
            quant_conv: self.use_quant_conv.then(|| conv2d(2 * lc, 2 * lc, 1, 1, 0, d)),
            post_quant_conv: self.use_post_quant_conv.then(|| conv2d(lc, lc, 1, 1, 0, d)),
        }
    }
}

/// Single-head self-attention over the pixels, with its own group norm and a residual.
#[derive(Module, Debug)]
pub struct SpatialAttention {
    pub group_norm: GroupNorm,
    pub attention: Attention,
}

impl SpatialAttention {
    /// x: `[b, c, h, w]` → `[b, c, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        // [b, c, h, w] -> [b, h·w, c]
        let seq = ops::group_norm(&self.group_norm, x.clone(), false)
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let out = self.attention.forward(seq, Keys::Own, None).tensor();
        // [b, h·w, c] -> [b, c, h, w]
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}

/// `UNetMidBlock2D`: resnet, (attention, resnet).
#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<SpatialAttention>,
}

impl MidBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        if let Some(attn) = self.attentions.first() {
            x = attn.forward(x);
        }
        self.resnets[1].forward(x, None)
    }
}

#[derive(Module, Debug)]
pub struct EncoderBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsamplers: Vec<Downsample2D>,
}

#[derive(Module, Debug)]
pub struct DecoderBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsamplers: Vec<Upsample2D>,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<EncoderBlock>,
    pub mid_block: MidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<DecoderBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
}

/// The encoder's diagonal Gaussian over latents; `sample = mean + std · noise`.
pub struct LatentDistribution {
    /// `[b, latent_channels, h/f, w/f]`
    pub mean: Tensor<4>,
    /// `[b, latent_channels, h/f, w/f]`
    pub std: Tensor<4>,
}

impl AutoencoderKL {
    /// image in `[-1, 1]`: `[b, 3, h, w]` → distribution over unscaled latents.
    pub fn encode(&self, image: Tensor<4>) -> LatentDistribution {
        let e = &self.encoder;
        let mut x = ops::conv2d(&e.conv_in, image);
        for block in &e.down_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for down in &block.downsamplers {
                x = down.forward(x);
            }
        }
        x = e.mid_block.forward(x);
        x = ops::norm_silu_conv2d_add(&e.conv_norm_out, &e.conv_out, x, ops::ConvAdd::Nothing);
        if let Some(q) = &self.quant_conv {
            x = ops::conv2d(q, x);
        }
        let [b, c2, h, w] = x.dims();
        let c = c2 / 2;
        let mean = x.clone().slice([0..b, 0..c, 0..h, 0..w]);
        let logvar = x.slice([0..b, c..c2, 0..h, 0..w]).clamp(-30.0, 20.0);
        LatentDistribution {
            mean,
            std: (logvar * 0.5).exp(),
        }
    }

    /// Unscaled latents `[b, c, h, w]` → image `[b, 3, h·f, w·f]`, roughly in `[-1, 1]`.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let dec = &self.decoder;
        let z = match &self.post_quant_conv {
            Some(p) => ops::conv2d(p, z),
            None => z,
        };
        let mut x = dec.mid_block.forward(ops::conv2d(&dec.conv_in, z));
        for block in &dec.up_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for up in &block.upsamplers {
                x = up.forward(x, None);
            }
        }
        ops::norm_silu_conv2d_add(&dec.conv_norm_out, &dec.conv_out, x, ops::ConvAdd::Nothing)
    }

    /// diffusers' `tiled_decode`, for images too large to decode at once: latent tiles of
    /// `tile` (the VAE's `sample_size / 8`) stepping by `tile·(1 − overlap)`, each decoded alone,
    /// each blended into its upper and left neighbours (already blended, as diffusers does in
    /// place) over `8·tile·overlap` pixels, then cropped and stitched.
    ///
    /// z: `[b, c, h, w]` → `[b, out, 8h, 8w]`
    pub fn decode_tiled(&self, z: Tensor<4>, tile: usize, overlap: f64) -> Tensor<4> {
        let [b, c, h, w] = z.dims();
        let scale = 1usize << self.decoder.up_blocks.len().saturating_sub(1);
        let step = ((tile as f64 * (1.0 - overlap)) as usize).max(1);
        let tile_px = tile * scale;
        let blend = (tile_px as f64 * overlap) as usize;
        let limit = tile_px - blend;
        let mut rows: Vec<Vec<Tensor<4>>> = (0..h)
            .step_by(step)
            .map(|i| {
                (0..w)
                    .step_by(step)
                    .map(|j| {
                        self.decode(
                            z.clone()
                                .slice([0..b, 0..c, i..(i + tile).min(h), j..(j + tile).min(w)]),
                        )
                    })
                    .collect()
            })
            .collect();
        for i in 0..rows.len() {
            for j in 0..rows[i].len() {
                let mut t = rows[i][j].clone();
                if i > 0 {
                    t = blend_edge(&rows[i - 1][j], t, blend, 2);
                }
                if j > 0 {
                    t = blend_edge(&rows[i][j - 1], t, blend, 3);
                }
                rows[i][j] = t;
            }
        }
        let stitched: Vec<Tensor<4>> = rows
            .into_iter()
            .map(|row| {
                let parts = row
                    .into_iter()
                    .map(|t| {
                        let [tb, tc, th, tw] = t.dims();
                        t.slice([0..tb, 0..tc, 0..th.min(limit), 0..tw.min(limit)])
                    })
                    .collect();
                Tensor::cat(parts, 3)
            })
            .collect();
        Tensor::cat(stitched, 2)
    }
}

/// diffusers' `blend_v` (dim 2) / `blend_h` (dim 3): the first `extent` rows/columns of `b`
/// fade in from the last ones of `a`, weight `y / extent` on `b`.
fn blend_edge(a: &Tensor<4>, b: Tensor<4>, extent: usize, dim: usize) -> Tensor<4> {
    let (da, db) = (a.dims(), b.dims());
    let extent = extent.min(da[dim]).min(db[dim]);
    if extent == 0 {
        return b;
    }
    let narrow = |t: Tensor<4>, from: usize, to: usize| {
        let d = t.dims();
        let mut r = [0..d[0], 0..d[1], 0..d[2], 0..d[3]];
        r[dim] = from..to;
        t.slice(r)
    };
    // weights [1, 1, extent, 1] or [1, 1, 1, extent]
    let wb: Vec<f32> = (0..extent).map(|y| (y as f64 / extent as f64) as f32).collect();
    let wa: Vec<f32> = (0..extent).map(|y| (1.0 - y as f64 / extent as f64) as f32).collect();
    let shape = if dim == 2 { [1, 1, extent, 1] } else { [1, 1, 1, extent] };
    let device = b.device();
    let wb = Tensor::<4>::from_data(TensorData::new(wb, shape), &device);
    let wa = Tensor::<4>::from_data(TensorData::new(wa, shape), &device);
    let edge = narrow(a.clone(), da[dim] - extent, da[dim]) * wa + narrow(b.clone(), 0, extent) * wb;
    let rest = narrow(b, extent, db[dim]);
    Tensor::cat(vec![edge, rest], dim)
}

/// Module path → checkpoint keys: current diffusers names first, then the pre-0.14 attention
/// names (`query`/`key`/`value`/`proj_attn`) that many published VAEs still use.
pub fn checkpoint_keys(path: &str) -> Vec<String> {
    let key = path
        .replace(".attention.to_out.", ".to_out.0.")
        .replace(".attention.", ".");
    let legacy = [
        (".to_q.", ".query."),
        (".to_k.", ".key."),
        (".to_v.", ".value."),
        (".to_out.0.", ".proj_attn."),
    ]
    .iter()
    .find(|(new, _)| key.contains(new))
    .map(|(new, old)| key.replace(new, old));
    std::iter::once(key).chain(legacy).collect()
}
