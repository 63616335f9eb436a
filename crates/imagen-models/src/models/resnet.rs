//! Small building blocks shared by the UNet and the VAE: ResNet blocks, down/up-sampling and
//! module constructors with PyTorch's defaults.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::ops::{self, ConvAdd};

pub(crate) fn conv2d(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, d: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(d)
}

pub(crate) fn linear(cin: usize, cout: usize, bias: bool, d: &Device) -> Linear {
    LinearConfig::new(cin, cout).with_bias(bias).init(d)
}

pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, d: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels).with_epsilon(eps).init(d)
}

/// diffusers `ResnetBlock2D` (default `time_embedding_norm`, `output_scale_factor` 1).
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `temb_channels`: `None` for the VAE, which has no time embedding.
    pub fn new(cin: usize, cout: usize, temb_channels: Option<usize>, groups: usize, eps: f64, d: &Device) -> Self {
        ResnetBlock2D {
            norm1: group_norm(groups, cin, eps, d),
            conv1: conv2d(cin, cout, 3, 1, 1, d),
            time_emb_proj: temb_channels.map(|t| linear(t, cout, true, d)),
            norm2: group_norm(groups, cout, eps, d),
            conv2: conv2d(cout, cout, 3, 1, 1, d),
            conv_shortcut: (cin != cout).then(|| conv2d(cin, cout, 1, 1, 0, d)),
        }
    }

    /// x: `[b, cin, h, w]`, temb: `[b, temb_channels]` already through SiLU (diffusers applies
    /// it in every block; the UNet does it once for all) → `[b, cout, h, w]`
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let time = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(t)) => ops::projected(proj, t.clone()),
            _ => ConvAdd::Nothing,
        };
        let h = ops::norm_silu_conv2d_add(&self.norm1, &self.conv1, x.clone(), time);
        let shortcut = match &self.conv_shortcut {
            Some(c) => ops::shortcut(c, x),
            None => ConvAdd::Residual(x),
        };
        ops::norm_silu_conv2d_add(&self.norm2, &self.conv2, h, shortcut)
    }
}

/// diffusers `Downsample2D` with `use_conv`: a stride-2 3×3 conv. The VAE uses padding 0 and pads
/// right/bottom by one first (`pad = (0, 1, 0, 1)`), the UNet pads 1 all round.
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, d: &Device) -> Self {
        let conv = if padding == 0 {
            Conv2dConfig::new([channels, channels], [3, 3])
                .with_stride([2, 2])
                // (top, left, bottom, right)
                .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
                .init(d)
        } else {
            conv2d(channels, channels, 3, 2, padding, d)
        };
        Downsample2D { conv }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        ops::conv2d(&self.conv, x)
    }
}

/// diffusers `Upsample2D` with `use_conv`: nearest-neighbour resize, then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, d: &Device) -> Self {
        Upsample2D {
            conv: conv2d(channels, channels, 3, 1, 1, d),
        }
    }

    /// x: `[b, c, h, w]` → `[b, c, size.0, size.1]` (`2h × 2w` when `size` is `None`).
    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        ops::upsample_conv(&self.conv, x, size)
    }
}
