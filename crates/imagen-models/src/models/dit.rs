//! Pieces the diffusion transformers share (FLUX.1, SD3): adaLN's modulation vectors, the
//! tanh-GELU feed-forward, and the modulated layer norm.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use super::resnet::linear;
use crate::ops::{self, Act};

/// The norms' epsilon in every FLUX and SD3 block (layer norms and q/k RMS norms).
pub const EPS: f64 = 1e-6;

/// The modulation of adaLN: `linear(silu(temb))`, split into `parts` vectors of `dim`.
#[derive(Module, Debug)]
pub struct AdaNorm {
    pub linear: Linear,
}

impl AdaNorm {
    pub fn new(dim: usize, parts: usize, d: &Device) -> Self {
        AdaNorm {
            linear: linear(dim, parts * dim, true, d),
        }
    }

    /// temb: `[b, dim]` → `parts` × `[b, dim]`
    pub fn chunks(&self, temb: &Tensor<2>) -> Vec<Tensor<2>> {
        let emb = ops::linear(&self.linear, burn::tensor::activation::silu(temb.clone()));
        let [_, total] = emb.dims();
        let dim = temb.dims()[1];
        (0..total / dim).map(|i| emb.clone().narrow(1, i * dim, dim)).collect()
    }
}

#[derive(Module, Debug)]
pub struct FeedForward {
    /// `net.0.proj`, GELU (tanh) after it
    pub proj: Linear,
    /// `net.2`
    pub out: Linear,
}

impl FeedForward {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        ops::linear(&self.out, ops::linear_act(&self.proj, x, Act::GeluTanh))
    }
}

impl FeedForward {
    pub fn new(dim: usize, d: &Device) -> Self {
        FeedForward {
            proj: linear(dim, 4 * dim, true, d),
            out: linear(4 * dim, dim, true, d),
        }
    }
}

/// adaLN: a layer norm without affine parameters, then `· (1 + scale) + shift`.
pub fn modulate(x: Tensor<3>, shift: &Tensor<2>, scale: &Tensor<2>) -> Tensor<3> {
    ops::modulated_layer_norm(x, shift.clone(), scale.clone(), EPS)
}

/// Module path → checkpoint keys for the diffusion transformers: diffusers' names, less the
/// list indices of the feed-forwards (`net.0.proj`, `net.2`) and of `to_out.0`.
pub fn checkpoint_keys(path: &str) -> Vec<String> {
    const RENAMES: [(&str, &str); 5] = [
        (".ff.proj.", ".ff.net.0.proj."),
        (".ff.out.", ".ff.net.2."),
        (".ff_context.proj.", ".ff_context.net.0.proj."),
        (".ff_context.out.", ".ff_context.net.2."),
        (".to_out.", ".to_out.0."),
    ];
    let mut key = path.to_owned();
    for (ours, theirs) in RENAMES {
        key = key.replace(ours, theirs);
    }
    vec![key]
}
