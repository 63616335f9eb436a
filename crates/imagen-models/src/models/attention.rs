//! diffusers' `Attention`, `FeedForward`, `BasicTransformerBlock` and `Transformer2DModel`
//! (spatial transformer).
//!
//! A transformer's residual stream is an [`ops::Stream`]: each residual add is left pending
//! until the layer norm after it, so on GPU backends the two run as one launch, while each
//! block still reads as diffusers' `norm → attention/feed-forward → + residual`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Tensor};

use super::resnet::{conv2d, group_norm, linear};
use crate::ops::{self, Act, Pointwise, Stream};

/// Multi-head attention. Self-attention when `context` is `None`.
#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// diffusers `to_out.0` (index 1 is dropout).
    pub to_out: Linear,
    pub heads: usize,
}

/// Where an attention's keys and values come from.
#[derive(Clone, Copy, Debug)]
pub enum Keys<'a> {
    /// Its own input (self-attention).
    Own,
    /// `[b, m, context_dim]`, projected by `to_k`/`to_v` (cross-attention).
    Context(&'a Tensor<3>),
    /// `to_k(context)`, `to_v(context)` already projected ([`Attention::kv`]).
    Projected(&'a (Tensor<3>, Tensor<3>)),
}

impl Attention {
    /// `qkv_bias`: false in the UNet, true in the VAE's mid-block attention.
    pub fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        qkv_bias: bool,
        d: &Device,
    ) -> Self {
        let inner = heads * head_dim;
        Attention {
            to_q: linear(query_dim, inner, qkv_bias, d),
            to_k: linear(context_dim, inner, qkv_bias, d),
            to_v: linear(context_dim, inner, qkv_bias, d),
            to_out: linear(inner, query_dim, true, d),
            heads,
        }
    }

    /// diffusers' attention processor: attention over `keys`, `to_out`, and with `residual`
    /// (its `residual_connection`) the residual added.
    /// x: `[b, n, query_dim]`, residual: `[b, n, query_dim]` → `[b, n, query_dim]`
    pub fn forward(&self, x: Tensor<3>, keys: Keys, residual: Option<Tensor<3>>) -> Stream<3> {
        let heads = match keys {
            Keys::Own => ops::qkv_attention([&self.to_q, &self.to_k, &self.to_v], x, None, self.heads, false),
            Keys::Context(c) => ops::qkv_attention([&self.to_q, &self.to_k, &self.to_v], x, Some(c), self.heads, false),
            Keys::Projected((k, v)) => ops::q_attention(&self.to_q, x, k.clone(), v.clone(), self.heads),
        };
        match residual {
            Some(r) => ops::linear_residual(&self.to_out, heads, r),
            None => ops::linear(&self.to_out, heads).into(),
        }
    }

    /// `to_k(context)`, `to_v(context)`: what cross-attention computes from the context alone,
    /// the same at every denoising step of a generation (see `UNet2DConditionModel::cross_kv`).
    /// context: `[b, m, context_dim]` → 2 × `[b, m, h·d]`
    pub fn kv(&self, context: &Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        (
            ops::linear(&self.to_k, context.clone()),
            ops::linear(&self.to_v, context.clone()),
        )
    }
}

/// GEGLU feed-forward: `ff.net.0.proj` (dim → 2·inner), `hidden · gelu(gate)`, `ff.net.2`.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub geglu: Linear,
    pub out: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, d: &Device) -> Self {
        let inner = 4 * dim;
        FeedForward {
            geglu: linear(dim, 2 * inner, true, d),
            out: linear(inner, dim, true, d),
        }
    }

    /// The feed-forward of `x`, plus `residual` when given (the block's add after it).
    /// x: `[b, n, dim]` → `[b, n, dim]`
    pub fn forward(&self, x: Tensor<3>, residual: Option<Tensor<3>>) -> Stream<3> {
        let h = ops::linear_act(&self.geglu, x, Act::Geglu);
        match residual {
            Some(r) => ops::linear_residual(&self.out, h, r),
            None => ops::linear(&self.out, h).into(),
        }
    }
}

/// diffusers' `BasicTransformerBlock` norms use PyTorch's default epsilon.
const LN_EPS: f64 = 1e-5;

/// Self-attention, cross-attention and feed-forward, each pre-norm with a residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(dim: usize, context_dim: usize, heads: usize, head_dim: usize, d: &Device) -> Self {
        let ln = || LayerNormConfig::new(dim).with_epsilon(LN_EPS).init(d);
        BasicTransformerBlock {
            norm1: ln(),
            attn1: Attention::new(dim, dim, heads, head_dim, false, d),
            norm2: ln(),
            attn2: Attention::new(dim, context_dim, heads, head_dim, false, d),
            norm3: ln(),
            ff: FeedForward::new(dim, d),
        }
    }

    /// x: `[b, n, dim]`, context: cross-attention's keys (`Keys::Context` or `Keys::Projected`)
    /// → `[b, n, dim]`
    pub fn forward(&self, x: Stream<3>, context: Keys) -> Stream<3> {
        let (x, h) = x.layer_norm(&self.norm1, LN_EPS);
        let x = self.attn1.forward(h, Keys::Own, Some(x));
        let (x, h) = x.layer_norm(&self.norm2, LN_EPS);
        let x = self.attn2.forward(h, context, Some(x));
        let (x, h) = x.layer_norm(&self.norm3, LN_EPS);
        self.ff.forward(h, Some(x))
    }
}

/// `proj_in`/`proj_out`: a 1×1 conv (SD 1.x) or a linear layer (`use_linear_projection`, SD 2.x).
#[derive(Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    /// The projection as the ops take it.
    pub fn op(&self) -> Pointwise<'_> {
        match self {
            Projection::Conv(c) => Pointwise::Conv(c),
            Projection::Linear(l) => Pointwise::Linear(l),
        }
    }
}

/// diffusers `Transformer2DModel` for continuous inputs.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

pub struct Transformer2DConfig {
    pub channels: usize,
    pub context_dim: usize,
    pub heads: usize,
    pub layers: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl Transformer2DModel {
    pub fn new(c: &Transformer2DConfig, d: &Device) -> Self {
        let head_dim = c.channels / c.heads;
        let proj = || match c.linear_projection {
            true => Projection::Linear(linear(c.channels, c.channels, true, d)),
            false => Projection::Conv(conv2d(c.channels, c.channels, 1, 1, 0, d)),
        };
        Transformer2DModel {
            norm: group_norm(c.groups, c.channels, 1e-6, d),
            proj_in: proj(),
            transformer_blocks: (0..c.layers)
                .map(|_| BasicTransformerBlock::new(c.channels, c.context_dim, c.heads, head_dim, d))
                .collect(),
            proj_out: proj(),
        }
    }

    /// x: `[b, c, h, w]`, context: `[b, m, context_dim]` → `[b, c, h, w]`
    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        self.forward_kv(x, &self.cross_kv(context))
    }

    /// Each transformer block's cross-attention keys and values of `context`
    /// ([`Attention::kv`]), for [`forward_kv`](Self::forward_kv).
    pub fn cross_kv(&self, context: &Tensor<3>) -> Vec<(Tensor<3>, Tensor<3>)> {
        self.transformer_blocks.iter().map(|b| b.attn2.kv(context)).collect()
    }

    /// [`forward`](Self::forward) with [`cross_kv`](Self::cross_kv) of this model (one pair per
    /// transformer block). x: `[b, c, h, w]` → `[b, c, h, w]`
    pub fn forward_kv(&self, x: Tensor<4>, kv: &[(Tensor<3>, Tensor<3>)]) -> Tensor<4> {
        debug_assert_eq!(kv.len(), self.transformer_blocks.len(), "cross_kv of another model");
        let residual = x.clone();
        let x = ops::group_norm(&self.norm, x, false);
        // [b, c, h, w] -> [b, h·w, c]
        let mut seq = ops::proj_in(self.proj_in.op(), x);
        for (block, kv) in self.transformer_blocks.iter().zip(kv) {
            seq = block.forward(seq, Keys::Projected(kv));
        }
        // [b, h·w, c] -> [b, c, h, w], + residual
        ops::proj_out_add(self.proj_out.op(), seq.tensor(), residual)
    }
}
