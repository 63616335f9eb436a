//! Fused kernels: each does in one launch what burn runs as a chain of them. burn's ops launch
//! one kernel per element-wise step (its GELU alone is five), and on wgpu every launch has a
//! fixed host-side cost that BENCHMARKS.md found to dominate small ops on an H100.
//!
//! - [`epilogue`]: a matmul's bias, a per-(batch, channel) term (the resnets' time embedding)
//!   and a residual, added in one pass;
//! - [`bias_act`]: bias + GEGLU / GELU / quick GELU / SiLU after a feed-forward's first matmul;
//! - [`split_heads`]: q, k, v `[b, len, h·d]` (+ their biases) → contiguous `[b, h, len, d]`,
//!   q scaled;
//! - [`cat_channels`]: the up blocks' `cat(x, skip)` along the channels;
//! - [`im2col`]: the windows of the zero-padded (and 2× nearest-upsampled) input as the column
//!   matrix of a convolution, read from the unpadded input, optionally group-normalised + SiLU
//!   on the way (the resnets' norm → conv pairs).
//!
//! Arithmetic in f32 whatever the storage type, rounded once. Each has a burn-op reference in
//! `ops` (the route taken with `IMAGEN_GPU_KERNELS=0`) and a parity test in
//! `tests/wgpu_kernels.rs`.

use burn::tensor::{DType, Tensor as BurnTensor};
use burn_cubecl::Cube;
use burn_cubecl::kernel::matmul::MatmulStrategy;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::ops::kernels::Windows;
use crate::ops::types::Act;

use super::launch::{contiguous, contiguous_opt, elem_type, elementwise_count, empty_like, prepare, raw};

/// `y + bias[c] + (per_bc[b, c] + bc_bias[c]) + (residual + res_bias[c])`, each term present
/// when its flag is set; `y` and `residual` contiguous `[outer, channels, inner]`, `per_bc`
/// `[outer, channels]`. Absent terms are bound to `bias` (never read).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn epilogue_kernel<F: Float>(
    y: &Tensor<F>,
    bias: &Tensor<F>,
    per_bc: &Tensor<F>,
    bc_bias: &Tensor<F>,
    residual: &Tensor<F>,
    res_bias: &Tensor<F>,
    output: &mut Tensor<F>,
    channels: u32,
    inner: u32,
    #[comptime] has_bc: bool,
    #[comptime] has_bc_bias: bool,
    #[comptime] has_residual: bool,
    #[comptime] has_res_bias: bool,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let bc = pos / inner as usize;
    let c = bc % channels as usize;
    // The order of burn's ops it replaces ((y + bias) + term), so f32 results are identical.
    let mut v = f32::cast_from(y[pos]) + f32::cast_from(bias[c]);
    if has_bc {
        let mut t = f32::cast_from(per_bc[bc]);
        if has_bc_bias {
            t += f32::cast_from(bc_bias[c]);
        }
        v += t;
    }
    if has_residual {
        let mut r = f32::cast_from(residual[pos]);
        if has_res_bias {
            r += f32::cast_from(res_bias[c]);
        }
        v += r;
    }
    output[pos] = F::cast_from(v);
}

/// GELU, exact (erf) form, as PyTorch's default.
#[cube]
fn gelu(x: f32) -> f32 {
    0.5f32 * x * (1.0f32 + Erf::erf(x * 0.70710677f32))
}

/// `act(h + bias)` over rows of `cols` outputs. GEGLU (`act` 0): `h` rows are `2·cols` wide,
/// hidden ‖ gate, and the output is `hidden · gelu(gate)`; 1: GELU; 2: quick GELU `x·σ(1.702x)`;
/// 3: SiLU `x·σ(x)`.
#[cube(launch)]
fn bias_act_kernel<F: Float>(
    h: &Tensor<F>,
    bias: &Tensor<F>,
    output: &mut Tensor<F>,
    cols: u32,
    #[comptime] act: u32,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let n = cols as usize;
    let j = pos % n;
    if act == 0 {
        let base = (pos / n) * 2 * n;
        let hidden = f32::cast_from(h[base + j]) + f32::cast_from(bias[j]);
        let gate = f32::cast_from(h[base + n + j]) + f32::cast_from(bias[n + j]);
        output[pos] = F::cast_from(hidden * gelu(gate));
    } else if act == 1 {
        output[pos] = F::cast_from(gelu(f32::cast_from(h[pos]) + f32::cast_from(bias[j])));
    } else if act == 2 {
        let x = f32::cast_from(h[pos]) + f32::cast_from(bias[j]);
        output[pos] = F::cast_from(x / (1.0f32 + (-1.702f32 * x).exp()));
    } else {
        let x = f32::cast_from(h[pos]) + f32::cast_from(bias[j]);
        output[pos] = F::cast_from(x / (1.0f32 + (-x).exp()));
    }
}

/// q `[b, n, heads·d]` → `[b, heads, n, d]` times `scale`, and k, v `[b, m, heads·d]` →
/// `[b, heads, m, d]`, all three in one launch (contiguous inputs), each plus its bias
/// (`[heads·d]`) first when `has_bias` (else the biases are bound to `q`, never read).
#[cube(launch)]
fn split_heads_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    q_bias: &Tensor<F>,
    k_bias: &Tensor<F>,
    v_bias: &Tensor<F>,
    q_out: &mut Tensor<F>,
    k_out: &mut Tensor<F>,
    v_out: &mut Tensor<F>,
    n: u32,
    m: u32,
    heads: u32,
    d: u32,
    scale: f32,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    let (heads, d) = (heads as usize, d as usize);
    // The channel (head · d + i) of element `pos`, whichever tensor it is in.
    let channel = pos / d / (n as usize) % heads * d + pos % d;
    if pos < q_out.len() {
        let mut x = f32::cast_from(q[head_source(pos, n as usize, heads, d)]);
        if has_bias {
            x += f32::cast_from(q_bias[channel]);
        }
        q_out[pos] = F::cast_from(x * scale);
    }
    if pos < k_out.len() {
        let src = head_source(pos, m as usize, heads, d);
        let channel = pos / d / (m as usize) % heads * d + pos % d;
        if has_bias {
            k_out[pos] = F::cast_from(f32::cast_from(k[src]) + f32::cast_from(k_bias[channel]));
            v_out[pos] = F::cast_from(f32::cast_from(v[src]) + f32::cast_from(v_bias[channel]));
        } else {
            k_out[pos] = k[src];
            v_out[pos] = v[src];
        }
    }
}

/// Where element `pos` of `[b, heads, len, d]` sits in `[b, len, heads·d]`.
#[cube]
fn head_source(pos: usize, len: usize, heads: usize, d: usize) -> usize {
    let i = pos % d;
    let l = (pos / d) % len;
    let bh = pos / (d * len);
    ((bh / heads * len + l) * heads + bh % heads) * d + i
}

/// Output columns each thread of [`im2col_kernel`] writes. Its index arithmetic (half a dozen
/// integer divisions: long instruction sequences on GPUs, scalar code on lavapipe) is done once
/// per thread instead of once per element.
const IM2COL_COLS: usize = 8;

/// The column matrix `[b, cin·kh·kw, rows·wo]` of output rows `row0..row0 + rows` of a
/// convolution over `input` (`[b, cin, h, w]`, contiguous) upsampled `up`× (nearest) and then
/// zero-padded by `top`/`left` (and whatever bottom/right the output size implies). With `norm`,
/// each value read is first group-normalised (`stats`: f32 mean and 1/σ per (batch, group) row,
/// then γ, β) and put through SiLU: the resnets' `conv(silu(norm(x)))` without the normalised
/// tensor ever being written. Unused inputs are bound to others, never read.
///
/// Thread `t` owns one (batch, window element k, output row y) and the columns `xs`, `xs + span`,
/// … of it (`span = ⌈wo / IM2COL_COLS⌉`): neighbouring threads write neighbouring elements at
/// every step of the loop, so the stores stay coalesced.
#[cube(launch)]
fn im2col_kernel<F: Float>(
    input: &Tensor<F>,
    stats: &Tensor<f32>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    output: &mut Tensor<F>,
    cin: u32,
    h: u32,
    w: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    top: u32,
    left: u32,
    row0: u32,
    rows: u32,
    wo: u32,
    span: u32,
    channels_per_group: u32,
    #[comptime] up: u32,
    #[comptime] norm: bool,
    #[define(F)] _dtype: ElemType,
) {
    let t = ABSOLUTE_POS;
    let (cin, h, w, kh, kw) = (cin as usize, h as usize, w as usize, kh as usize, kw as usize);
    let (sh, sw, top, left) = (sh as usize, sw as usize, top as usize, left as usize);
    let (row0, rows, wo) = (row0 as usize, rows as usize, wo as usize);
    // A literal in the shader: the divisions by it become shifts.
    let up = comptime!(up as usize);
    let cols = comptime!(IM2COL_COLS);
    let span = span as usize;
    // [b, k, y, xs] of the threads; [b, k, y·wo + x] of the output.
    if t >= output.len() / wo * span {
        terminate!();
    }
    let window = cin * kh * kw;
    let xs = t % span;
    let y = t / span % rows;
    let k = t / (span * rows) % window;
    let b = t / (span * rows * window);
    let c = k / (kw * kh);
    let kx = k % kw;
    // Row in the padded, upsampled input; the input row it reads (when inside the padding).
    let py = (y + row0) * sh + k / kw % kh;
    let row_ok = py >= top && py < top + h * up;
    let mut in_row = 0usize;
    if row_ok {
        in_row = ((b * cin + c) * h + (py - top) / up) * w;
    }
    let out_row = (b * window + k) * rows * wo + y * wo;
    // The group-norm terms of channel c (as `group_norm_apply_kernel`, kernels.rs, so f32
    // results are identical).
    let mut mean = 0.0f32;
    let mut scale = 1.0f32;
    let mut g = 1.0f32;
    let mut be = 0.0f32;
    if norm {
        let cpg = channels_per_group as usize;
        let stat = (b * (cin / cpg) + c / cpg) * 2;
        mean = stats[stat];
        scale = stats[stat + 1];
        g = f32::cast_from(gamma[c]);
        be = f32::cast_from(beta[c]);
    }
    #[unroll]
    for j in 0..cols {
        let x = xs + j * span;
        if x < wo {
            let px = x * sw + kx;
            let mut v = F::new(0.0);
            if row_ok && px >= left && px < left + w * up {
                let value = input[in_row + (px - left) / up];
                if norm {
                    let mut z = (f32::cast_from(value) - mean) * scale * g + be;
                    z = z / (1.0f32 + (-z).exp());
                    v = F::cast_from(z);
                } else {
                    v = value;
                }
            }
            output[out_row + x] = v;
        }
    }
}

/// See [`epilogue_kernel`]. y: `[outer, channels, inner]` (any shape of that many elements),
/// per_bc: `[outer, channels]` and its own optional bias `[channels]`, residual: y's shape and
/// its own optional bias `[channels]` → y's shape; `None` where the tensors are not raw cube
/// float tensors (the caller then adds with burn's ops).
pub(super) fn epilogue<const D: usize>(
    y: BurnTensor<D>,
    bias: BurnTensor<1>,
    per_bc: Option<(BurnTensor<2>, Option<BurnTensor<1>>)>,
    residual: Option<(BurnTensor<D>, Option<BurnTensor<1>>)>,
    channels: usize,
    inner: usize,
) -> Option<BurnTensor<D>> {
    let total: usize = y.dims().iter().product();
    let (input, elem, output) = prepare(y)?;
    let bias = contiguous(bias)?;
    let (per_bc, bc_bias) = match per_bc {
        Some((t, b)) => (Some(contiguous(t)?), contiguous_opt(b)?),
        None => (None, None),
    };
    let (residual, res_bias) = match residual {
        Some((t, b)) => (Some(contiguous(t)?), contiguous_opt(b)?),
        None => (None, None),
    };
    let flags = (
        per_bc.is_some(),
        bc_bias.is_some(),
        residual.is_some(),
        res_bias.is_some(),
    );
    let or_bias = |t: Option<CubeTensor>| t.unwrap_or_else(|| bias.clone()).into_tensor_arg();
    let (cube_count, cube_dim) = elementwise_count(&input, total);
    epilogue_kernel::launch(
        &input.client.clone(),
        cube_count,
        cube_dim,
        input.into_tensor_arg(),
        bias.clone().into_tensor_arg(),
        or_bias(per_bc),
        or_bias(bc_bias),
        or_bias(residual),
        or_bias(res_bias),
        output.clone().into_tensor_arg(),
        channels as u32,
        inner as u32,
        flags.0,
        flags.1,
        flags.2,
        flags.3,
        elem,
    );
    Some(BurnTensor::from_primitive::<Cube>(output))
}

/// See [`bias_act_kernel`]. h: `[rows, k]` with k = 2·cols for GEGLU, else cols → `[rows, cols]`.
pub(super) fn bias_act(h: BurnTensor<2>, bias: BurnTensor<1>, act: Act) -> Option<BurnTensor<2>> {
    let [rows, k] = h.dims();
    let (cols, code) = match act {
        Act::Geglu => (k / 2, 0),
        Act::Gelu => (k, 1),
        Act::QuickGelu => (k, 2),
        Act::Silu => (k, 3),
        // burn's `gelu_approximate` composes it (no kernel of ours yet)
        Act::GeluTanh => return None,
    };
    let input = contiguous(h)?;
    let elem = elem_type(input.dtype)?;
    let bias = contiguous(bias)?;
    let output = empty_like(&input, [rows, cols], input.dtype);
    let (cube_count, cube_dim) = elementwise_count(&input, rows * cols);
    bias_act_kernel::launch(
        &input.client.clone(),
        cube_count,
        cube_dim,
        input.into_tensor_arg(),
        bias.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        cols as u32,
        code,
        elem,
    );
    Some(BurnTensor::from_primitive::<Cube>(output))
}

/// See [`split_heads_kernel`]. q: `[b, n, heads·d]`, k/v: `[b, m, heads·d]`, biases
/// `[heads·d]` each → q, k, v as `[b, heads, len, d]`, q times `scale`.
pub(super) fn split_heads(
    [q, k, v]: [BurnTensor<3>; 3],
    biases: Option<[BurnTensor<1>; 3]>,
    heads: usize,
    scale: f32,
) -> Option<[BurnTensor<4>; 3]> {
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    let (q, k, v) = (contiguous(q)?, contiguous(k)?, contiguous(v)?);
    let elem = elem_type(q.dtype)?;
    let has_bias = biases.is_some();
    let [qb, kb, vb] = match biases {
        Some([qb, kb, vb]) => [contiguous(qb)?, contiguous(kb)?, contiguous(vb)?],
        None => [q.clone(), q.clone(), q.clone()],
    };
    let empty = |len: usize| empty_like(&q, [b, heads, len, d], q.dtype);
    let (q_out, k_out, v_out) = (empty(n), empty(m), empty(m));
    let (cube_count, cube_dim) = elementwise_count(&q, b * n.max(m) * inner);
    split_heads_kernel::launch(
        &q.client.clone(),
        cube_count,
        cube_dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        qb.into_tensor_arg(),
        kb.into_tensor_arg(),
        vb.into_tensor_arg(),
        q_out.clone().into_tensor_arg(),
        k_out.clone().into_tensor_arg(),
        v_out.clone().into_tensor_arg(),
        n as u32,
        m as u32,
        heads as u32,
        d as u32,
        scale,
        has_bias,
        elem,
    );
    Some([q_out, k_out, v_out].map(BurnTensor::from_primitive::<Cube>))
}

/// `probs · v` per head, written by the matmul straight into the `[b, n, heads, d]` layout the
/// output projection reads (its output handed over as a permuted view), so the heads need no
/// merging copy. probs: `[b, heads, n, m]`, v: `[b, heads, m, d]` → `[b, n, heads·d]`
pub(super) fn attention_output(probs: BurnTensor<4>, v: BurnTensor<4>) -> Option<BurnTensor<3>> {
    let [b, heads, n, _] = probs.dims();
    let d = v.dims()[3];
    let (probs, v) = (raw(probs)?, raw(v)?);
    let dtype = probs.dtype;
    let merged = empty_like(&probs, [b, n, heads, d], dtype);
    // [b, n, h, d] -> [b, h, n, d] (a view of the same buffer)
    let view = burn_cubecl::ops::permute(merged.clone(), &[0, 2, 1, 3]);
    matmul_to_view(probs, v, view)?;
    Some(BurnTensor::<4>::from_primitive::<Cube>(merged).reshape([b, n, heads * d]))
}

/// `lhs · rhs` written by cubek's matmul into `view`, a strided or offset view of a buffer the
/// caller owns (its output layout honours the view's strides and offset on every routine).
fn matmul_to_view(lhs: CubeTensor, rhs: CubeTensor, view: CubeTensor) -> Option<()> {
    let dtype = view.dtype;
    burn_cubecl::kernel::matmul::matmul(lhs, rhs, Some(view), MatmulStrategy::default(), dtype).ok()?;
    Some(())
}

/// An empty `[b, c, n]` output (x's dtype and device) whose column ranges `cols` (one per band
/// of a banded convolution) can each be handed to [`matmul_into`] as a view of its buffer: only
/// when every range starts and ends at a byte offset the device accepts for a binding (burn's
/// `slice` copies otherwise). `None` where they do not, or x is not a raw cube tensor.
pub(super) fn band_output(
    x: &BurnTensor<4>,
    [b, c, n]: [usize; 3],
    cols: &[std::ops::Range<usize>],
) -> Option<BurnTensor<3>> {
    let x = raw(x.clone())?;
    let align = x.client.properties().memory.alignment;
    let bytes = |elems: usize| (elems * x.dtype.size()) as u64;
    let aligned = |r: &std::ops::Range<usize>| {
        bytes(r.start).is_multiple_of(align) && bytes(n - r.end).is_multiple_of(align) && r.end <= n
    };
    if !cols.iter().all(aligned) {
        return None;
    }
    Some(BurnTensor::from_primitive::<Cube>(empty_like(&x, [b, c, n], x.dtype)))
}

/// `lhs · rhs` written by the matmul straight into columns `cols` of `out` (`[b, c, n]`, from
/// [`band_output`]): its output is a view of `out`'s buffer, so banded convolutions need no
/// per-band tensors and no concatenation. lhs: `[1 | b, c, k]`, rhs: `[b, k, cols.len()]`.
/// `None` where the tensors are not raw cube tensors or the matmul declines (the view may then
/// be partly written: the caller recomputes).
pub(super) fn matmul_into(
    lhs: BurnTensor<3>,
    rhs: BurnTensor<3>,
    out: &BurnTensor<3>,
    cols: std::ops::Range<usize>,
) -> Option<()> {
    let [b, c, _] = out.dims();
    // [b, c, n] -> [b, c, cols] (a view: band_output checked the offsets)
    let view = burn_cubecl::kernel::slice(raw(out.clone())?, &[0..b, 0..c, cols]);
    matmul_to_view(raw(lhs)?, raw(rhs)?, view)
}

/// `[b, c1, hw] ‖ [b, c2, hw]` along the channels (contiguous inputs) → `[b, c1 + c2, hw]`.
#[cube(launch)]
fn cat_channels_kernel<F: Float>(
    first: &Tensor<F>,
    second: &Tensor<F>,
    output: &mut Tensor<F>,
    c1: u32,
    c2: u32,
    hw: u32,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let (c1, c2, hw) = (c1 as usize, c2 as usize, hw as usize);
    let p = pos % hw;
    let c = pos / hw % (c1 + c2);
    let b = pos / (hw * (c1 + c2));
    if c < c1 {
        output[pos] = first[(b * c1 + c) * hw + p];
    } else {
        output[pos] = second[(b * c2 + c - c1) * hw + p];
    }
}

/// See [`cat_channels_kernel`]: one launch where burn's `cat` takes an allocation and a
/// slice-assign per input. x: `[b, c1, h, w]`, y: `[b, c2, h, w]` → `[b, c1 + c2, h, w]`
pub(super) fn cat_channels(x: BurnTensor<4>, y: BurnTensor<4>) -> Option<BurnTensor<4>> {
    let [b, c1, h, w] = x.dims();
    let c2 = y.dims()[1];
    let (first, second) = (contiguous(x)?, contiguous(y)?);
    let elem = elem_type(first.dtype)?;
    let output = empty_like(&first, [b, c1 + c2, h, w], first.dtype);
    let (cube_count, cube_dim) = elementwise_count(&first, b * (c1 + c2) * h * w);
    cat_channels_kernel::launch(
        &first.client.clone(),
        cube_count,
        cube_dim,
        first.into_tensor_arg(),
        second.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        c1 as u32,
        c2 as u32,
        (h * w) as u32,
        elem,
    );
    Some(BurnTensor::from_primitive::<Cube>(output))
}

/// Group norm + SiLU applied to what [`im2col`] reads: per-(batch, group) statistics from
/// [`group_stats`], γ and β.
#[derive(Clone, Debug)]
pub struct Norm {
    stats: CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
    groups: usize,
}

/// The statistics of `norm` over `x` (`[b, c, h, w]`), for [`im2col`]; `None` where the
/// tensors are not raw cube tensors or the norm has no affine parameters.
pub(super) fn group_stats(x: &BurnTensor<4>, norm: &burn::nn::GroupNorm) -> Option<Norm> {
    let [b, c, h, w] = x.dims();
    let groups = norm.num_groups;
    let input = contiguous(x.clone())?;
    let elem = elem_type(input.dtype)?;
    let gamma = contiguous(norm.gamma.as_ref()?.val())?;
    let beta = contiguous(norm.beta.as_ref()?.val())?;
    let stats = super::kernels::row_stats(&input, b * groups, c / groups * h * w, norm.epsilon, elem);
    Some(Norm {
        stats,
        gamma,
        beta,
        groups,
    })
}

/// See [`im2col_kernel`]. x: `[b, cin, h, w]` → `[b, cin·kh·kw, rows·wo]`.
pub(super) fn im2col(x: BurnTensor<4>, g: &Windows, norm: Option<&Norm>) -> Option<BurnTensor<3>> {
    let [b, cin, h, w] = x.dims();
    let [kh, kw] = g.kernel;
    let rows = g.rows.len();
    let input = contiguous(x)?;
    let elem = elem_type(input.dtype)?;
    let shape = [b, cin * kh * kw, rows * g.wo];
    let output = empty_like(&input, shape, input.dtype);
    let (stats, gamma, beta, cpg) = match norm {
        Some(n) => (n.stats.clone(), n.gamma.clone(), n.beta.clone(), cin / n.groups),
        // Never read: any f32 buffer for the statistics (a 1-element one), the input for γ, β.
        None => {
            let dummy = empty_like(&input, [1], DType::F32);
            (dummy, input.clone(), input.clone(), 1)
        }
    };
    let threads = b * cin * kh * kw * rows * g.wo.div_ceil(IM2COL_COLS);
    let (cube_count, cube_dim) = elementwise_count(&input, threads);
    let u = |v: usize| v as u32;
    im2col_kernel::launch(
        &input.client.clone(),
        cube_count,
        cube_dim,
        input.into_tensor_arg(),
        stats.into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        u(cin),
        u(h),
        u(w),
        u(kh),
        u(kw),
        u(g.stride[0]),
        u(g.stride[1]),
        u(g.pad[0]),
        u(g.pad[1]),
        u(g.rows.start),
        u(rows),
        u(g.wo),
        u(g.wo.div_ceil(IM2COL_COLS)),
        u(cpg),
        u(g.up),
        norm.is_some(),
        elem,
    );
    Some(BurnTensor::from_primitive::<Cube>(output))
}
