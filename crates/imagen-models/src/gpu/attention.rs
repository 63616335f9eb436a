//! Attention on GPU backends: the routes of [`super::AttentionRoute`], and the fused route (q, k,
//! v split into heads with their biases in one launch, the causal mask in the softmax kernel,
//! the heads merged by the second matmul's write).

use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};

use super::linear::linear_rows;
use super::{AttentionRoute, attention_route, cube, fused, fused_kernels, kernels, own_kernels};

/// Attention on the chosen route; `None` = burn's own op.
/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
pub(crate) fn attention(q: &Tensor<3>, k: &Tensor<3>, v: &Tensor<3>, heads: usize, causal: bool) -> Option<Tensor<3>> {
    let two_matmuls = || attention_two_matmuls(q.clone(), k.clone(), v.clone(), heads, causal);
    match attention_route() {
        AttentionRoute::Burn => None,
        AttentionRoute::Matmul => Some(two_matmuls()),
        AttentionRoute::Flash => Some(cube::flash_attention(q, k, v, heads, causal).unwrap_or_else(two_matmuls)),
    }
}

/// `softmax(q·kᵀ/√d)·v` per head, with two batched matmuls.
/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
fn attention_two_matmuls(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    if fused_kernels()
        && let Some(out) = attention_fused([q.clone(), k.clone(), v.clone()], None, heads, causal)
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
    let probs = own_kernels()
        .then(|| kernels::softmax_last(scores.clone(), false))
        .flatten()
        .unwrap_or_else(|| softmax(scores, 3));
    // [b, h, n, m] · [b, h, m, d] -> [b, h, n, d] -> [b, n, h, d] -> [b, n, h·d]
    probs.matmul(v).swap_dims(1, 2).reshape([b, n, inner])
}

/// [`attention_two_matmuls`] on the fused kernels: q, k, v (plus their biases) split into
/// contiguous heads in one launch, q scaled, the causal mask inside the softmax kernel.
/// `None` where the kernels decline. q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
fn attention_fused(
    qkv: [Tensor<3>; 3],
    biases: Option<[Tensor<1>; 3]>,
    heads: usize,
    causal: bool,
) -> Option<Tensor<3>> {
    let [b, n, inner] = qkv[0].dims();
    // Scale q before the product (as PyTorch's math path), so f16 scores stay small.
    let scale = (1.0 / ((inner / heads) as f64).sqrt()) as f32;
    let [qh, kh, vh] = fused::split_heads(qkv, biases, heads, scale)?;
    // Contiguous heads: kᵀ is a column-major view the matmul reads as it is.
    // [b, h, n, d] · [b, h, d, m] -> [b, h, n, m]
    let probs = kernels::softmax_last(qh.matmul(kh.swap_dims(2, 3)), causal)?;
    // [b, h, n, m] · [b, h, m, d] -> [b, n, h, d] -> [b, n, h·d], merged by the matmul's write
    fused::attention_output(probs.clone(), vh.clone())
        .or_else(|| Some(probs.matmul(vh).swap_dims(1, 2).reshape([b, n, inner])))
}

/// Attention with its q/k/v projections: the three matmuls without their biases, which the
/// head split adds. `None` (nothing run) off the matmul route or with the fused kernels off,
/// or when only some of the projections have a bias. x: `[b, n, dim]`, context: `[b, m, ctx]`
/// → `[b, n, h·d]` (before the output projection)
pub(crate) fn qkv_attention(
    [to_q, to_k, to_v]: [&Linear; 3],
    x: &Tensor<3>,
    context: &Tensor<3>,
    heads: usize,
    causal: bool,
) -> Option<Tensor<3>> {
    if attention_route() != AttentionRoute::Matmul || !fused_kernels() {
        return None;
    }
    let biases = match [&to_q.bias, &to_k.bias, &to_v.bias] {
        [Some(q), Some(k), Some(v)] => Some([q.val(), k.val(), v.val()]),
        [None, None, None] => None,
        _ => return None,
    };
    let [b, n, _] = x.dims();
    let m = context.dims()[1];
    let project = |lin: &Linear, t: &Tensor<3>, len: usize| {
        let y = linear_rows(lin, t);
        // [b·len, h·d] -> [b, len, h·d]
        let inner = y.dims()[1];
        y.reshape([b, len, inner])
    };
    let qkv = [
        project(to_q, x, n),
        project(to_k, context, m),
        project(to_v, context, m),
    ];
    Some(match attention_fused(qkv.clone(), biases.clone(), heads, causal) {
        Some(out) => out,
        None => {
            let [q, k, v] = qkv;
            let [q, k, v] = match biases {
                Some([qb, kb, vb]) => [q + qb.unsqueeze(), k + kb.unsqueeze(), v + vb.unsqueeze()],
                None => [q, k, v],
            };
            attention_two_matmuls(q, k, v, heads, causal)
        }
    })
}

/// [`qkv_attention`] with k and v already projected (with their biases, if any): `to_q` as a
/// bare matmul when it has no bias. `None` (nothing run) as [`qkv_attention`], or when `to_q`
/// has a bias. x: `[b, n, dim]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
pub(crate) fn q_attention(
    to_q: &Linear,
    x: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
) -> Option<Tensor<3>> {
    if attention_route() != AttentionRoute::Matmul || !fused_kernels() || to_q.bias.is_some() {
        return None;
    }
    let [b, n, _] = x.dims();
    let q = linear_rows(to_q, x);
    // [b·n, h·d] -> [b, n, h·d]
    let inner = q.dims()[1];
    let q = q.reshape([b, n, inner]);
    Some(
        attention_fused([q.clone(), k.clone(), v.clone()], None, heads, false)
            .unwrap_or_else(|| attention_two_matmuls(q, k.clone(), v.clone(), heads, false)),
    )
}
