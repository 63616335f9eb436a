//! TAESD's decoder (diffusers `AutoencoderTiny`): a few-million-parameter stand-in for the VAE
//! decoder, for fast decodes and step previews. Configured from its `config.json`; checkpoint
//! names are `decoder.layers.<i>…` of one `nn.Sequential`, mapped in [`checkpoint_keys`].

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use super::resnet::conv2d;
use crate::error::Result;
use crate::load::config::{read_json, unsupported};
use crate::load::weights::{Weights, load_module};
use crate::ops::{self, upsample_nearest};

const COMPONENT: &str = "taesd";

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct AutoencoderTinyConfig {
    pub out_channels: usize,
    pub latent_channels: usize,
    pub decoder_block_out_channels: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub upsampling_scaling_factor: usize,
    pub act_fn: String,
    pub upsample_fn: String,
    pub scaling_factor: f64,
    /// taesd3-style decoders take the VAE's shifted latents back (`latents / scaling + shift`).
    pub shift_factor: f64,
}

impl Default for AutoencoderTinyConfig {
    /// diffusers' defaults, which are TAESD's.
    fn default() -> Self {
        AutoencoderTinyConfig {
            out_channels: 3,
            latent_channels: 4,
            decoder_block_out_channels: vec![64; 4],
            num_decoder_blocks: vec![3, 3, 3, 1],
            upsampling_scaling_factor: 2,
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl AutoencoderTinyConfig {
    pub fn validate(&self) -> Result<()> {
        if self.act_fn != "relu" || self.upsample_fn != "nearest" || self.upsampling_scaling_factor != 2 {
            return Err(unsupported(COMPONENT, "act_fn/upsample_fn other than relu/nearest ×2"));
        }
        let ch = &self.decoder_block_out_channels;
        if ch.len() != self.num_decoder_blocks.len() || ch.is_empty() || ch.iter().any(|&c| c != ch[0]) {
            // TAESD keeps one width throughout; other shapes would need the blocks' skip convs.
            return Err(unsupported(COMPONENT, "decoder blocks of different widths"));
        }
        Ok(())
    }

    /// The pipelines' latents as this decoder takes them (diffusers: `latents / scaling_factor +
    /// shift_factor`, with the tiny decoder's own factors).
    pub fn unscale(&self, latents: Tensor<4>) -> Tensor<4> {
        latents / self.scaling_factor as f32 + self.shift_factor as f32
    }

    pub fn init(&self, d: &Device) -> TinyDecoder {
        let ch = &self.decoder_block_out_channels;
        let n = ch.len();
        TinyDecoder {
            conv_in: conv2d(self.latent_channels, ch[0], 3, 1, 1, d),
            stages: (0..n)
                .map(|i| {
                    let c = ch[i];
                    let last = i + 1 == n;
                    TinyStage {
                        blocks: (0..self.num_decoder_blocks[i])
                            .map(|_| TinyBlock {
                                conv1: conv2d(c, c, 3, 1, 1, d),
                                conv2: conv2d(c, c, 3, 1, 1, d),
                                conv3: conv2d(c, c, 3, 1, 1, d),
                            })
                            .collect(),
                        conv: if last {
                            conv2d(c, self.out_channels, 3, 1, 1, d)
                        } else {
                            no_bias_conv(c, c, d)
                        },
                        upsample: !last,
                    }
                })
                .collect(),
        }
    }

    /// Module path → checkpoint key: the Sequential's running index for each of our fields.
    fn key(&self, path: &str) -> String {
        let Some(rest) = path.strip_prefix("stages.") else {
            return path.replacen("conv_in.", "decoder.layers.0.", 1);
        };
        let mut parts = rest.splitn(2, '.');
        let stage: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let rest = parts.next().unwrap_or("");
        let n = self.num_decoder_blocks.len();
        // conv_in, ReLU, then per stage: blocks, Upsample (not the last), conv.
        let start: usize = 2
            + (0..stage)
                .map(|i| self.num_decoder_blocks[i] + usize::from(i + 1 < n) + 1)
                .sum::<usize>();
        if let Some(r) = rest.strip_prefix("blocks.") {
            let (b, r) = r.split_once('.').unwrap_or((r, ""));
            let b: usize = b.parse().unwrap_or(0);
            let r = r
                .replacen("conv1.", "conv.0.", 1)
                .replacen("conv2.", "conv.2.", 1)
                .replacen("conv3.", "conv.4.", 1);
            return format!("decoder.layers.{}.{r}", start + b);
        }
        let conv = start + self.num_decoder_blocks[stage] + usize::from(stage + 1 < n);
        format!("decoder.layers.{conv}.{}", rest.strip_prefix("conv.").unwrap_or(rest))
    }
}

fn no_bias_conv(cin: usize, cout: usize, d: &Device) -> Conv2d {
    burn::nn::conv::Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(d)
}

/// `AutoencoderTinyBlock`: three 3×3 convs with ReLUs between, a residual, a ReLU.
#[derive(Module, Debug)]
pub struct TinyBlock {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Conv2d,
}

#[derive(Module, Debug)]
pub struct TinyStage {
    pub blocks: Vec<TinyBlock>,
    pub conv: Conv2d,
    pub upsample: bool,
}

#[derive(Module, Debug)]
pub struct TinyDecoder {
    pub conv_in: Conv2d,
    pub stages: Vec<TinyStage>,
}

impl TinyDecoder {
    /// Latents as [`AutoencoderTinyConfig::unscale`] leaves them: `[b, latent_channels, h, w]`
    /// → image in `[-1, 1]`, `[b, 3, 8h, 8w]`.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = relu(ops::conv2d(&self.conv_in, (z / 3.0).tanh() * 3.0));
        for stage in &self.stages {
            for b in &stage.blocks {
                let h = ops::conv2d(
                    &b.conv3,
                    relu(ops::conv2d(&b.conv2, relu(ops::conv2d(&b.conv1, x.clone())))),
                );
                x = relu(h + x);
            }
            if stage.upsample {
                let [_, _, h, w] = x.dims();
                x = upsample_nearest(x, 2 * h, 2 * w);
            }
            x = ops::conv2d(&stage.conv, x);
        }
        x * 2.0 - 1.0
    }
}

/// Loads TAESD from its diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`).
pub fn load(dir: &Path, device: &Device) -> Result<(AutoencoderTinyConfig, TinyDecoder)> {
    let config: AutoencoderTinyConfig = read_json(&dir.join("config.json"))?;
    config.validate()?;
    let weights = Weights::open_component(dir, "diffusion_pytorch_model", &[None, Some("fp16")])?;
    let keys = |p: &str| vec![config.key(p)];
    let decoder = load_module(config.init(device), &weights, COMPONENT, &keys, device)?;
    Ok((config, decoder))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `decoder.layers` indices of diffusers' default TAESD (blocks 3, 3, 3, 1).
    #[test]
    fn keys_follow_the_sequential() {
        let c = AutoencoderTinyConfig::default();
        assert_eq!(c.key("conv_in.weight"), "decoder.layers.0.weight");
        assert_eq!(
            c.key("stages.0.blocks.0.conv1.weight"),
            "decoder.layers.2.conv.0.weight"
        );
        assert_eq!(c.key("stages.0.blocks.2.conv3.bias"), "decoder.layers.4.conv.4.bias");
        assert_eq!(c.key("stages.0.conv.weight"), "decoder.layers.6.weight"); // after Upsample at 5
        assert_eq!(
            c.key("stages.1.blocks.0.conv2.weight"),
            "decoder.layers.7.conv.2.weight"
        );
        assert_eq!(
            c.key("stages.3.blocks.0.conv1.weight"),
            "decoder.layers.17.conv.0.weight"
        );
        assert_eq!(c.key("stages.3.conv.bias"), "decoder.layers.18.bias");
    }
}
