//! diffusers' `Attention`, `BasicTransformerBlock` and `Transformer2DModel` (spatial transformer).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::cpu;
use crate::fused::{self, Act};
use crate::layers::{conv2d, group_norm, linear};

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

    /// x: `[b, n, query_dim]`, context: `[b, m, context_dim]` → `[b, n, query_dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        cpu::linear(&self.to_out, self.heads_out(x, context))
    }

    /// `forward(x, context) + residual` and its layer norm by `ln` (a transformer block's next
    /// pre-norm): (sum, normed). On GPU backends the bias, the residual and the norm take one
    /// launch after `to_out`'s matmul. residual: `[b, n, query_dim]` → 2 × `[b, n, query_dim]`
    pub fn forward_add_norm(
        &self,
        x: Tensor<3>,
        context: Option<&Tensor<3>>,
        residual: Tensor<3>,
        ln: &LayerNorm,
    ) -> (Tensor<3>, Tensor<3>) {
        fused::linear_add_norm(&self.to_out, self.heads_out(x, context), residual, ln, LN_EPS)
    }

    /// `to_k(context)`, `to_v(context)`: what cross-attention computes from the context alone,
    /// the same at every denoising step of a generation (see `UNet2DConditionModel::cross_kv`).
    /// context: `[b, m, context_dim]` → 2 × `[b, m, h·d]`
    pub fn kv(&self, context: &Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        (
            cpu::linear(&self.to_k, context.clone()),
            cpu::linear(&self.to_v, context.clone()),
        )
    }

    /// [`forward_add_norm`](Self::forward_add_norm) of cross-attention with the context's keys
    /// and values already projected ([`kv`](Self::kv)). x: `[b, n, query_dim]` → 2 × `[b, n, query_dim]`
    pub fn forward_add_kv_norm(
        &self,
        x: Tensor<3>,
        (k, v): &(Tensor<3>, Tensor<3>),
        residual: Tensor<3>,
        ln: &LayerNorm,
    ) -> (Tensor<3>, Tensor<3>) {
        let out = fused::q_attention(&self.to_q, x, k.clone(), v.clone(), self.heads);
        fused::linear_add_norm(&self.to_out, out, residual, ln, LN_EPS)
    }

    /// The attention's output before `to_out`: `[b, n, h·d]`.
    fn heads_out(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        fused::qkv_attention([&self.to_q, &self.to_k, &self.to_v], x, context, self.heads, false)
    }
}

/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`, softmax scale `1/√d`.
pub fn multi_head_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    if let Some(out) = cpu::attention(&q, &k, &v, heads, causal) {
        return out;
    }
    if crate::gpu::on_gpu(&q)
        && let Some(out) = crate::gpu::attention(&q, &k, &v, heads, causal)
    {
        return out;
    }
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    // [b, n, h·d] -> [b, n, h, d] -> [b, h, n, d]
    let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, d]).swap_dims(1, 2);
    let opts = AttentionModuleOptions {
        is_causal: causal,
        ..Default::default()
    };
    let out = attention(split(q, n), split(k, m), split(v, m), None, None, opts);
    // [b, h, n, d] -> [b, n, h, d] -> [b, n, h·d]
    out.swap_dims(1, 2).reshape([b, n, inner])
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

    /// x: `[b, n, dim]` → `[b, n, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        cpu::linear(&self.out, fused::linear_act(&self.geglu, x, Act::Geglu))
    }

    /// `forward(x) + residual`. residual: `[b, n, dim]`
    pub fn forward_add(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        fused::linear_add(&self.out, fused::linear_act(&self.geglu, x, Act::Geglu), residual)
    }

    /// `forward(x) + residual` and its layer norm by `ln` (the next block's pre-norm), as
    /// [`Attention::forward_add_norm`]. residual: `[b, n, dim]` → 2 × `[b, n, dim]`
    pub fn forward_add_norm(&self, x: Tensor<3>, residual: Tensor<3>, ln: &LayerNorm) -> (Tensor<3>, Tensor<3>) {
        fused::linear_add_norm(
            &self.out,
            fused::linear_act(&self.geglu, x, Act::Geglu),
            residual,
            ln,
            LN_EPS,
        )
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

    /// x: `[b, n, dim]`, context: `[b, m, context_dim]` → `[b, n, dim]`
    pub fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        self.forward_kv(x, &self.attn2.kv(context))
    }

    /// [`forward`](Self::forward) with the cross-attention's keys and values of the context
    /// already projected ([`Attention::kv`]).
    pub fn forward_kv(&self, x: Tensor<3>, kv: &(Tensor<3>, Tensor<3>)) -> Tensor<3> {
        let h = cpu::layer_norm(&self.norm1, x.clone(), LN_EPS);
        self.forward_normed(x, h, kv, None).0
    }

    /// [`forward_kv`](Self::forward_kv) from `h = norm1(x)`, computed by whatever produced `x`
    /// (on GPU backends its last residual add and this norm are one launch, as every add + norm
    /// here). With `next` (the following block's `norm1`), the output's norm by it as well.
    /// x, h: `[b, n, dim]` → (`[b, n, dim]`, its norm by `next`)
    pub fn forward_normed(
        &self,
        x: Tensor<3>,
        h: Tensor<3>,
        kv: &(Tensor<3>, Tensor<3>),
        next: Option<&LayerNorm>,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let (x, h) = self.attn1.forward_add_norm(h, None, x, &self.norm2);
        let (x, h) = self.attn2.forward_add_kv_norm(h, kv, x, &self.norm3);
        match next {
            Some(ln) => {
                let (x, h) = self.ff.forward_add_norm(h, x, ln);
                (x, Some(h))
            }
            None => (self.ff.forward_add(h, x), None),
        }
    }
}

/// `proj_in`/`proj_out`: a 1×1 conv (SD 1.x) or a linear layer (`use_linear_projection`, SD 2.x).
#[derive(Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
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
        let x = cpu::group_norm(&self.norm, x, false);
        let blocks = &self.transformer_blocks;
        // [b, c, h, w] -> [b, h·w, c], with the first block's pre-norm of it
        let (mut seq, mut normed) = match blocks.first() {
            Some(first) => {
                let (seq, h) = fused::proj_in_norm(&self.proj_in, x, &first.norm1, LN_EPS);
                (seq, Some(h))
            }
            None => (fused::proj_in(&self.proj_in, x), None),
        };
        for (i, (block, kv)) in blocks.iter().zip(kv).enumerate() {
            // Each block hands the next one its pre-norm (always there: the fallback is never taken).
            let h = normed
                .take()
                .unwrap_or_else(|| cpu::layer_norm(&block.norm1, seq.clone(), LN_EPS));
            (seq, normed) = block.forward_normed(seq, h, kv, blocks.get(i + 1).map(|b| &b.norm1));
        }
        // [b, h·w, c] -> [b, c, h, w], + residual
        fused::proj_out_add(&self.proj_out, seq, residual)
    }
}
