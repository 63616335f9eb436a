//! Multi-head attention. CPU: imagen's tiled kernel. GPU backends, on the route
//! [`AttentionRoute`] names: two batched matmuls around a softmax (q, k, v split into heads with
//! their biases in one launch, the causal mask in the softmax kernel, the heads merged by the
//! second matmul's write, when the fused kernels run), burn-cubecl's flash attention, or burn's.

use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData};

use super::kernels::GpuKernels;
use super::{AttentionRoute, Gpu, Routes, linear, on_gpu};
use crate::cpu;

/// Scaled-dot-product attention over interleaved heads, softmax scale `1/√d`.
/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    let r = Routes::current();
    if r.cpu_kernels
        && let Some(out) = cpu::attention(&q, &k, &v, heads, causal, r.cpu_bf16)
    {
        return out;
    }
    if on_gpu(&q) {
        match r.gpu_attention {
            AttentionRoute::Burn => {}
            AttentionRoute::Matmul => return two_matmuls(&r, q, k, v, heads, causal),
            AttentionRoute::Flash => {
                return Gpu::flash_attention(&q, &k, &v, heads, causal, r.flash_planes)
                    .unwrap_or_else(|| two_matmuls(&r, q, k, v, heads, causal));
            }
        }
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
    let out = burn::tensor::module::attention(split(q, n), split(k, m), split(v, m), None, None, opts);
    // [b, h, n, d] -> [b, n, h, d] -> [b, n, h·d]
    out.swap_dims(1, 2).reshape([b, n, inner])
}

/// Multi-head attention with its q/k/v projections (self-attention when `context` is `None`),
/// before the output projection; with the fused kernels the projections' biases are added by
/// the head-split kernel. x: `[b, n, dim]`, context: `[b, m, ctx]` → `[b, n, h·d]`
pub fn qkv_attention(
    [to_q, to_k, to_v]: [&Linear; 3],
    x: Tensor<3>,
    context: Option<&Tensor<3>>,
    heads: usize,
    causal: bool,
) -> Tensor<3> {
    let ctx = context.cloned().unwrap_or_else(|| x.clone());
    let r = Routes::current();
    let biases = match [&to_q.bias, &to_k.bias, &to_v.bias] {
        [Some(q), Some(k), Some(v)] => Some(Some([q.val(), k.val(), v.val()])),
        [None, None, None] => Some(None),
        _ => None,
    };
    if let Some(biases) = biases.filter(|_| fused_route(&r, &x)) {
        let project = |lin: &Linear, t: &Tensor<3>| product(lin, t);
        let qkv = [project(to_q, &x), project(to_k, &ctx), project(to_v, &ctx)];
        return match fused(qkv.clone(), biases.clone(), heads, causal) {
            Some(out) => out,
            None => {
                let [q, k, v] = qkv;
                let [q, k, v] = match biases {
                    Some([qb, kb, vb]) => [q + qb.unsqueeze(), k + kb.unsqueeze(), v + vb.unsqueeze()],
                    None => [q, k, v],
                };
                two_matmuls(&r, q, k, v, heads, causal)
            }
        };
    }
    let q = linear(to_q, x);
    let k = linear(to_k, ctx.clone());
    let v = linear(to_v, ctx);
    attention(q, k, v, heads, causal)
}

/// Cross-attention with the context's keys and values already projected: `to_q(x)`, then
/// attention (before the output projection). x: `[b, n, dim]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
pub fn q_attention(to_q: &Linear, x: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let r = Routes::current();
    if fused_route(&r, &x) && to_q.bias.is_none() {
        let q = product(to_q, &x);
        return fused([q.clone(), k.clone(), v.clone()], None, heads, false)
            .unwrap_or_else(|| two_matmuls(&r, q, k, v, heads, false));
    }
    attention(linear(to_q, x), k, v, heads, false)
}

/// The fused route: the two-matmul route on a GPU backend with the fused kernels on.
fn fused_route(r: &Routes, x: &Tensor<3>) -> bool {
    on_gpu(x) && r.gpu_attention == AttentionRoute::Matmul && r.fused()
}

/// `x · W` without the bias. x: `[b, len, in]` → `[b, len, out]`
fn product(lin: &Linear, x: &Tensor<3>) -> Tensor<3> {
    let [b, len, d_in] = x.dims();
    let y = x.clone().reshape([b * len, d_in]).matmul(lin.weight.val());
    // [b·len, h·d] -> [b, len, h·d]
    let inner = y.dims()[1];
    y.reshape([b, len, inner])
}

/// `softmax(q·kᵀ/√d)·v` per head, with two batched matmuls: the fused kernels where they run,
/// else burn ops (with imagen's softmax kernel unless the GPU kernels are off).
/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
fn two_matmuls(r: &Routes, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    if r.fused()
        && let Some(out) = fused([q.clone(), k.clone(), v.clone()], None, heads, causal)
    {
        return out;
    }
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    // [b, len, h·d] -> [b, len, h, d] -> [b, h, len, d]
    let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, d]).swap_dims(1, 2);
    let (q, k, v) = (split(q, n), split(k, m), split(v, m));
    let q = q * scale;
    // [b, h, n, d] · [b, h, d, m] -> [b, h, n, m]
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if causal {
        // -inf above the diagonal: position i sees keys 0..=i. [n, m] -> [1, 1, n, m]
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..m).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let device = scores.device();
        scores = scores + Tensor::<2>::from_data(TensorData::new(mask, [n, m]), &device).reshape([1, 1, n, m]);
    }
    let probs = r
        .gpu_kernels
        .then(|| Gpu::softmax_last(scores.clone(), false))
        .flatten()
        .unwrap_or_else(|| softmax(scores, 3));
    // [b, h, n, m] · [b, h, m, d] -> [b, h, n, d] -> [b, n, h, d] -> [b, n, h·d]
    probs.matmul(v).swap_dims(1, 2).reshape([b, n, inner])
}

/// [`two_matmuls`] on the fused kernels: q, k, v (plus their biases) split into contiguous
/// heads in one launch, q scaled, the causal mask inside the softmax kernel. `None` where the
/// kernels decline. q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
fn fused(qkv: [Tensor<3>; 3], biases: Option<[Tensor<1>; 3]>, heads: usize, causal: bool) -> Option<Tensor<3>> {
    let [b, n, inner] = qkv[0].dims();
    // Scale q before the product (as PyTorch's math path), so f16 scores stay small.
    let scale = (1.0 / ((inner / heads) as f64).sqrt()) as f32;
    let [qh, kh, vh] = Gpu::split_heads(qkv, biases, heads, scale)?;
    // Contiguous heads: kᵀ is a column-major view the matmul reads as it is.
    // [b, h, n, d] · [b, h, d, m] -> [b, h, n, m]
    let probs = Gpu::softmax_last(qh.matmul(kh.swap_dims(2, 3)), causal)?;
    // [b, h, n, m] · [b, h, m, d] -> [b, n, h, d] -> [b, n, h·d], merged by the matmul's write
    Gpu::attention_output(probs.clone(), vh.clone())
        .or_else(|| Some(probs.matmul(vh).swap_dims(1, 2).reshape([b, n, inner])))
}

/// Attention with an additive bias on the scores and an explicit scale (T5: relative position
/// bias, scale 1). q: `[b, n, h·d]`, k/v: `[b, m, h·d]`, bias: `[1 or b, h, n, m]` → `[b, n, h·d]`
pub fn attention_biased(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    bias: Tensor<4>,
    heads: usize,
    scale: f64,
) -> Tensor<3> {
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, d]).swap_dims(1, 2);
    let [_, h, bn, bm] = bias.dims();
    let bias = bias.expand([b, h, bn, bm]);
    let opts = AttentionModuleOptions {
        scale: Some(scale),
        ..Default::default()
    };
    let out = burn::tensor::module::attention(split(q, n), split(k, m), split(v, m), None, Some(bias), opts);
    out.swap_dims(1, 2).reshape([b, n, inner])
}

/// Rotary position embedding on interleaved pairs (diffusers' `apply_rotary_emb`,
/// `use_real_unbind_dim=-1`): each pair (x₀, x₁) becomes (x₀·cos − x₁·sin, x₁·cos + x₀·sin).
/// x: `[b, n, h, d]`, cos/sin: `[n, d]` (each frequency repeated for its pair) → `[b, n, h, d]`
pub fn rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [b, n, h, d] = x.dims();
    let pairs = x.clone().reshape([b, n, h, d / 2, 2]);
    let real = pairs.clone().narrow(4, 0, 1);
    let imag = pairs.narrow(4, 1, 1);
    let rotated = Tensor::cat(vec![imag.neg(), real], 4).reshape([b, n, h, d]);
    let c = cos.clone().reshape([1, n, 1, d]);
    let s = sin.clone().reshape([1, n, 1, d]);
    x * c + rotated * s
}
