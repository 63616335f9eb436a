//! imagen's own GPU kernels, in CubeCL's Rust dialect so that one source serves both wgpu
//! routes (compiled to WGSL on lavapipe and the default build, to SPIR-V with the `vulkan`
//! feature). Only where burn's composed ops were measured to be the bottleneck (BENCHMARKS.md);
//! each has its burn-op reference in `ops` and a parity test (`tests/wgpu_kernels.rs`).

use burn::tensor::{DType, Tensor as BurnTensor};
use burn_cubecl::Cube;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::launch::{contiguous, contiguous_opt, elementwise_count, empty_like, prepare};

/// Threads per cube of the statistics kernel (a power of two: the tree reduction halves it).
const STATS_THREADS: usize = 256;

/// Mean and `1/√(var + ε)` of each row of `input` (`[rows, n]`, contiguous), in f32, one cube
/// per row; two passes over the row (mean, then the centred squares) as PyTorch does, so f16
/// inputs lose nothing to `E[x²] − E[x]²` cancellation. stats: `[rows, 2]`.
#[cube(launch)]
fn row_stats_kernel<F: Float>(
    input: &Tensor<F>,
    stats: &mut Tensor<f32>,
    rows: u32,
    n: u32,
    epsilon: f32,
    #[comptime] threads: usize,
    #[define(F)] _dtype: ElemType,
) {
    // Whole cubes past the last row (the grid is 2-D, see `row_cubes`) leave together.
    if CUBE_POS >= rows as usize {
        terminate!();
    }
    let row = CUBE_POS;
    let len = n as usize;
    let base = row * len;
    let unit = UNIT_POS as usize;
    let mut shared = Shared::<[f32]>::new_slice(threads);
    let mean = cube_sum(input, base, base + len, 0.0, &mut shared, unit, false, threads) / f32::cast_from(n);
    let var = cube_sum(input, base, base + len, mean, &mut shared, unit, true, threads) / f32::cast_from(n);
    if unit == 0 {
        stats[row * 2] = mean;
        stats[row * 2 + 1] = 1.0f32 / (var + epsilon).sqrt();
    }
}

/// Partial statistics of chunk `CUBE_POS_X` (elements `[c·chunk, (c+1)·chunk)`) of row
/// `CUBE_POS_Y` of `input` (`[rows, n]`, contiguous): its count, mean and sum of squared
/// deviations, two passes as [`row_stats_kernel`]. partial: `[rows, chunks, 3]`
#[cube(launch)]
fn chunk_stats_kernel<F: Float>(
    input: &Tensor<F>,
    partial: &mut Tensor<f32>,
    n: u32,
    chunk: u32,
    chunks: u32,
    #[comptime] threads: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS_Y as usize;
    let c = CUBE_POS_X as usize;
    let len = n as usize;
    let start = row * len + c * chunk as usize;
    let end = row * len + min((c + 1) * chunk as usize, len);
    let count = f32::cast_from(end - start);
    let unit = UNIT_POS as usize;
    let mut shared = Shared::<[f32]>::new_slice(threads);
    let mean = cube_sum(input, start, end, 0.0, &mut shared, unit, false, threads) / count;
    let m2 = cube_sum(input, start, end, mean, &mut shared, unit, true, threads);
    if unit == 0 {
        let o = (row * chunks as usize + c) * 3;
        partial[o] = count;
        partial[o + 1] = mean;
        partial[o + 2] = m2;
    }
}

/// A row's chunk statistics combined pairwise (Chan, Golub and LeVeque: stable, unlike sums
/// of squares) into (mean, 1/√(var + ε)), one unit per row. partial: `[rows, chunks, 3]`,
/// stats: `[rows, 2]`
#[cube(launch)]
fn combine_stats_kernel(partial: &Tensor<f32>, stats: &mut Tensor<f32>, rows: u32, chunks: u32, epsilon: f32) {
    let row = ABSOLUTE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let base = row * chunks as usize * 3;
    let mut count = partial[base];
    let mut mean = partial[base + 1];
    let mut m2 = partial[base + 2];
    let mut c = 1usize;
    while c < chunks as usize {
        let o = base + c * 3;
        let nb = partial[o];
        let total = count + nb;
        let delta = partial[o + 1] - mean;
        mean += delta * nb / total;
        m2 += partial[o + 2] + delta * delta * count * nb / total;
        count = total;
        c += 1;
    }
    stats[row * 2] = mean;
    stats[row * 2 + 1] = 1.0f32 / (m2 / count + epsilon).sqrt();
}

/// `Σ (x − centre)`, or `Σ (x − centre)²` when `square`, over `input[start..end]`: each unit
/// takes every `threads`-th element, then the cube reduces through `shared`. Every unit gets the
/// total, and `shared` is free again on return. The statistics kernels call it twice (the mean,
/// then the centred squares).
#[cube]
#[allow(clippy::too_many_arguments)]
fn cube_sum<F: Float>(
    input: &Tensor<F>,
    start: usize,
    end: usize,
    centre: f32,
    shared: &mut Shared<[f32]>,
    unit: usize,
    #[comptime] square: bool,
    #[comptime] threads: usize,
) -> f32 {
    let mut acc = 0.0f32;
    let mut i = start + unit;
    while i < end {
        let d = f32::cast_from(input[i]) - centre;
        if square {
            acc += d * d;
        } else {
            acc += d;
        }
        i += threads;
    }
    row_total(acc, shared, unit, threads)
}

/// `shared[0] = Σ shared[0..threads]`, halving the active units each step (unrolled: the
/// steps are known at compile time).
#[cube]
fn tree_sum(shared: &mut Shared<[f32]>, unit: usize, #[comptime] threads: usize) {
    let steps = comptime!(threads.trailing_zeros());
    #[unroll]
    for s in 0..steps {
        let half = comptime!(threads >> (s + 1));
        if unit < half {
            shared[unit] += shared[unit + half];
        }
        sync_cube();
    }
}

/// `shared[0] = max shared[0..threads]`, as [`tree_sum`].
#[cube]
fn tree_max(shared: &mut Shared<[f32]>, unit: usize, #[comptime] threads: usize) {
    let steps = comptime!(threads.trailing_zeros());
    #[unroll]
    for s in 0..steps {
        let half = comptime!(threads >> (s + 1));
        if unit < half {
            shared[unit] = max(shared[unit], shared[unit + half]);
        }
        sync_cube();
    }
}

/// Layer norm of each row of `input` (`[rows, n]`, contiguous), one cube per row: the mean, the
/// centred squares (two passes, as [`row_stats_kernel`]) and the normalised write, in f32.
/// Rows are short (320 to 1 280 channels), so one launch does what group norm needs two for.
#[cube(launch)]
fn layer_norm_rows_kernel<F: Float>(
    input: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    output: &mut Tensor<F>,
    rows: u32,
    n: u32,
    epsilon: f32,
    #[comptime] threads: usize,
    #[define(F)] _dtype: ElemType,
) {
    if CUBE_POS >= rows as usize {
        terminate!();
    }
    let len = n as usize;
    let base = CUBE_POS * len;
    let unit = UNIT_POS as usize;
    let mut shared = Shared::<[f32]>::new_slice(threads);
    let mean = cube_sum(input, base, base + len, 0.0, &mut shared, unit, false, threads) / f32::cast_from(n);
    let var = cube_sum(input, base, base + len, mean, &mut shared, unit, true, threads) / f32::cast_from(n);
    let rstd = 1.0f32 / (var + epsilon).sqrt();

    let mut k = unit;
    while k < len {
        let y = (f32::cast_from(input[base + k]) - mean) * rstd * f32::cast_from(gamma[k]) + f32::cast_from(beta[k]);
        output[base + k] = F::cast_from(y);
        k += threads;
    }
}

/// [`layer_norm_rows_kernel`] of `y + bias (+ residual)`, which it also writes (`sum`): a
/// linear layer's epilogue and the layer norm after it (a transformer block's next pre-norm) in
/// one launch. Each unit keeps its `per_unit` sums (elements `unit`, `unit + threads`, …) in
/// registers, rounded to `F` as the two launches it replaces store them, and reduces them in
/// the same order as `cube_sum`: f32 results are identical to theirs. `residual` is bound to
/// `y` (never read) without `has_residual`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn add_layer_norm_rows_kernel<F: Float>(
    y: &Tensor<F>,
    bias: &Tensor<F>,
    residual: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    sum: &mut Tensor<F>,
    output: &mut Tensor<F>,
    rows: u32,
    n: u32,
    epsilon: f32,
    #[comptime] has_residual: bool,
    #[comptime] threads: usize,
    #[comptime] per_unit: usize,
    #[define(F)] _dtype: ElemType,
) {
    if CUBE_POS >= rows as usize {
        terminate!();
    }
    let len = n as usize;
    let base = CUBE_POS * len;
    let unit = UNIT_POS as usize;
    let mut shared = Shared::<[f32]>::new_slice(threads);
    let mut values = Array::<f32>::new(per_unit);
    let mut acc = 0.0f32;
    #[unroll]
    for j in 0..per_unit {
        let k = unit + j * threads;
        values[j] = 0.0f32;
        if k < len {
            // As `epilogue_kernel` (fused.rs): (y + bias) + residual, stored as F.
            let mut v = f32::cast_from(y[base + k]) + f32::cast_from(bias[k]);
            if has_residual {
                v += f32::cast_from(residual[base + k]);
            }
            let stored = F::cast_from(v);
            sum[base + k] = stored;
            values[j] = f32::cast_from(stored);
            acc += values[j];
        }
    }
    let mean = row_total(acc, &mut shared, unit, threads) / f32::cast_from(n);
    acc = 0.0f32;
    #[unroll]
    for j in 0..per_unit {
        if unit + j * threads < len {
            let d = values[j] - mean;
            acc += d * d;
        }
    }
    let var = row_total(acc, &mut shared, unit, threads) / f32::cast_from(n);
    let rstd = 1.0f32 / (var + epsilon).sqrt();
    #[unroll]
    for j in 0..per_unit {
        let k = unit + j * threads;
        if k < len {
            let v = (values[j] - mean) * rstd * f32::cast_from(gamma[k]) + f32::cast_from(beta[k]);
            output[base + k] = F::cast_from(v);
        }
    }
}

/// The cube's total of every unit's `acc` (as the end of `cube_sum`); `shared` is free again on
/// return.
#[cube]
fn row_total(acc: f32, shared: &mut Shared<[f32]>, unit: usize, #[comptime] threads: usize) -> f32 {
    shared[unit] = acc;
    sync_cube();
    tree_sum(shared, unit, threads);
    let total = shared[0];
    sync_cube();
    total
}

/// Softmax of each row of `input` (`[rows, n]`, contiguous), one cube per row: max, sum of
/// `exp(x − max)` and the normalised write, in f32 whatever `F` is. `causal`: the rows are
/// `queries` query positions repeated, and row `i` (mod `queries`) sees keys `0..=i` only, the
/// others getting 0 (CLIP's mask, without building and adding one).
#[cube(launch)]
fn softmax_rows_kernel<F: Float>(
    input: &Tensor<F>,
    output: &mut Tensor<F>,
    rows: u32,
    n: u32,
    queries: u32,
    #[comptime] threads: usize,
    #[comptime] causal: bool,
    #[define(F)] _dtype: ElemType,
) {
    if CUBE_POS >= rows as usize {
        terminate!();
    }
    let len = n as usize;
    let base = CUBE_POS * len;
    let unit = UNIT_POS as usize;
    let mut shared = Shared::<[f32]>::new_slice(threads);
    let mut seen = len;
    if causal {
        seen = min(CUBE_POS % queries as usize + 1, len);
    }

    let mut top = f32::new(-3.0e38);
    let mut i = unit;
    while i < seen {
        top = max(top, f32::cast_from(input[base + i]));
        i += threads;
    }
    shared[unit] = top;
    sync_cube();
    tree_max(&mut shared, unit, threads);
    let row_max = shared[0];
    sync_cube();

    let mut sum = 0.0f32;
    let mut j = unit;
    while j < seen {
        sum += (f32::cast_from(input[base + j]) - row_max).exp();
        j += threads;
    }
    let inv = 1.0f32 / row_total(sum, &mut shared, unit, threads);

    let mut k = unit;
    while k < len {
        let mut p = 0.0f32;
        if k < seen {
            p = (f32::cast_from(input[base + k]) - row_max).exp() * inv;
        }
        output[base + k] = F::cast_from(p);
        k += threads;
    }
}

/// `(x − mean) · rstd · γ[c] + β[c]`, then SiLU when `silu`; one unit per element of the
/// contiguous `[b, c, hw]` input, statistics per (batch, group) row of `stats`.
#[cube(launch)]
fn group_norm_apply_kernel<F: Float>(
    input: &Tensor<F>,
    stats: &Tensor<f32>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    output: &mut Tensor<F>,
    channels: u32,
    hw: u32,
    channels_per_group: u32,
    #[comptime] silu: bool,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let plane = pos / hw as usize;
    let c = plane % channels as usize;
    let b = plane / channels as usize;
    let groups = channels / channels_per_group;
    let row = b * groups as usize + c / channels_per_group as usize;
    let mean = stats[row * 2];
    let rstd = stats[row * 2 + 1];
    let mut y = (f32::cast_from(input[pos]) - mean) * rstd * f32::cast_from(gamma[c]) + f32::cast_from(beta[c]);
    if silu {
        y = y / (1.0f32 + (-y).exp());
    }
    output[pos] = F::cast_from(y);
}

/// Elements per chunk of a long row's statistics (16 per thread).
const CHUNK: usize = STATS_THREADS * 16;

/// `[rows, 2]` f32 (mean, 1/√(var + ε)) of the contiguous `input` read as `[rows, n]`. Rows
/// longer than two chunks (group norm's: b·32 rows of up to millions of elements) are split
/// into chunks reduced by separate cubes and then combined: one cube per row left most of an
/// H100 idle (64 cubes for a UNet group norm, 32 for the VAE's), 0.17 ms against PyTorch's
/// 0.056 ms (BENCHMARKS.md, session 5).
pub(super) fn row_stats(input: &CubeTensor, rows: usize, n: usize, epsilon: f64, elem: ElemType) -> CubeTensor {
    let client = input.client.clone();
    let stats = empty_like(input, [rows, 2], DType::F32);
    let chunks = n.div_ceil(CHUNK);
    if chunks >= 2 && rows <= 65_535 && chunks <= 65_535 {
        let partial = empty_like(input, [rows, chunks, 3], DType::F32);
        chunk_stats_kernel::launch(
            &client,
            CubeCount::Static(chunks as u32, rows as u32, 1),
            CubeDim::new_1d(STATS_THREADS as u32),
            input.clone().into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            n as u32,
            CHUNK as u32,
            chunks as u32,
            STATS_THREADS,
            elem,
        );
        let (cube_count, cube_dim) = elementwise_count(input, rows);
        combine_stats_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            partial.into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            rows as u32,
            chunks as u32,
            epsilon as f32,
        );
        return stats;
    }
    row_stats_kernel::launch(
        &client,
        row_cubes(rows),
        CubeDim::new_1d(STATS_THREADS as u32),
        input.clone().into_tensor_arg(),
        stats.clone().into_tensor_arg(),
        rows as u32,
        n as u32,
        epsilon as f32,
        STATS_THREADS,
        elem,
    );
    stats
}

/// One cube per row. A grid dimension holds at most 65 535 cubes (wgpu refused 65 536 rows of
/// self-attention scores at 64² latents, batch 2), so larger counts spill into a second one.
fn row_cubes(rows: usize) -> CubeCount {
    const MAX: usize = 65_535;
    let x = rows.clamp(1, MAX);
    CubeCount::Static(x as u32, rows.div_ceil(x) as u32, 1)
}

/// Group norm (+ SiLU) in two launches. x: `[b, c, h, w]` → same shape; `None` where the
/// tensors are not raw cube tensors (then the caller uses the tensor-op version).
pub(super) fn group_norm(
    x: BurnTensor<4>,
    gamma: BurnTensor<1>,
    beta: BurnTensor<1>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> Option<BurnTensor<4>> {
    let [b, c, h, w] = x.dims();
    let (input, elem, output) = prepare(x)?;
    let (gamma, beta) = (contiguous(gamma)?, contiguous(beta)?);
    let stats = row_stats(&input, b * groups, c / groups * h * w, epsilon, elem);
    let (cube_count, cube_dim) = elementwise_count(&input, b * c * h * w);
    group_norm_apply_kernel::launch(
        &input.client.clone(),
        cube_count,
        cube_dim,
        input.into_tensor_arg(),
        stats.into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        c as u32,
        (h * w) as u32,
        (c / groups) as u32,
        silu,
        elem,
    );
    Some(BurnTensor::from_primitive::<Cube>(output))
}

/// Layer norm over the last axis in one launch; `None` as [`group_norm`].
pub(super) fn layer_norm<const D: usize>(
    x: BurnTensor<D>,
    gamma: BurnTensor<1>,
    beta: BurnTensor<1>,
    epsilon: f64,
) -> Option<BurnTensor<D>> {
    let shape = x.dims();
    let n = shape[D - 1];
    let rows = shape.iter().product::<usize>() / n;
    let (input, elem, output) = prepare(x)?;
    let (gamma, beta) = (contiguous(gamma)?, contiguous(beta)?);
    let threads = if n >= 512 { 256 } else { 128 };
    layer_norm_rows_kernel::launch(
        &input.client.clone(),
        row_cubes(rows),
        CubeDim::new_1d(threads as u32),
        input.into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        rows as u32,
        n as u32,
        epsilon as f32,
        threads,
        elem,
    );
    Some(BurnTensor::from_primitive::<Cube>(output))
}

/// `y + bias (+ residual)` and its layer norm over the last axis, in one launch
/// ([`add_layer_norm_rows_kernel`]). y, residual: `[rows, n]` → (sum, normed), both `[rows, n]`;
/// `None` as [`group_norm`].
pub(super) fn add_layer_norm(
    y: BurnTensor<2>,
    bias: BurnTensor<1>,
    residual: Option<BurnTensor<2>>,
    gamma: BurnTensor<1>,
    beta: BurnTensor<1>,
    epsilon: f64,
) -> Option<(BurnTensor<2>, BurnTensor<2>)> {
    let [rows, n] = y.dims();
    let (input, elem, sum) = prepare(y)?;
    let output = empty_like(&input, [rows, n], input.dtype);
    let residual = contiguous_opt(residual)?;
    let (bias, gamma, beta) = (contiguous(bias)?, contiguous(gamma)?, contiguous(beta)?);
    let threads = if n >= 512 { 256 } else { 128 };
    let has_residual = residual.is_some();
    add_layer_norm_rows_kernel::launch(
        &input.client.clone(),
        row_cubes(rows),
        CubeDim::new_1d(threads as u32),
        input.clone().into_tensor_arg(),
        bias.into_tensor_arg(),
        residual.unwrap_or(input).into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        sum.clone().into_tensor_arg(),
        output.clone().into_tensor_arg(),
        rows as u32,
        n as u32,
        epsilon as f32,
        has_residual,
        threads,
        n.div_ceil(threads),
        elem,
    );
    Some((
        BurnTensor::from_primitive::<Cube>(sum),
        BurnTensor::from_primitive::<Cube>(output),
    ))
}

/// Softmax over the last axis in one launch; `causal` as [`softmax_rows_kernel`], with the
/// second-to-last axis the queries. `None` as [`group_norm`].
pub(super) fn softmax_last<const D: usize>(x: BurnTensor<D>, causal: bool) -> Option<BurnTensor<D>> {
    let shape = x.dims();
    let n = shape[D - 1];
    let queries = if D >= 2 { shape[D - 2] } else { 1 };
    let total: usize = shape.iter().product();
    let (input, elem, output) = prepare(x)?;
    // Short rows (CLIP's 77 keys, cross-attention's 77) waste fewer idle units with 128.
    let threads = if n >= 256 { 256 } else { 128 };
    softmax_rows_kernel::launch(
        &input.client.clone(),
        row_cubes(total / n),
        CubeDim::new_1d(threads as u32),
        input.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        (total / n) as u32,
        n as u32,
        queries as u32,
        threads,
        causal,
        elem,
    );
    Some(BurnTensor::from_primitive::<Cube>(output))
}
