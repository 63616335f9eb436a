//! Stride-1 convolution straight from the padded input with AVX-512: no packing at all.
//!
//! A register tile is 6 output channels × 64 consecutive positions of the padded-width output
//! (24 zmm accumulators). For each input channel and kernel tap it loads 4 vectors of the input
//! shifted by the tap's offset and broadcasts 6 weights: 24 FMAs per 10 loads (6×4 measured a
//! little ahead of 4×6, whose input loads are mostly cache-line splits). Weights are read
//! in place (`[cout, cin, kh, kw]` is sequential in (cin, tap) for a fixed output channel), so a
//! 3×3 conv needs neither im2col nor a packed copy of its weights.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::gemm::{Mat, MatMut};

/// Output channels per register tile.
pub(crate) const MR: usize = 6;
/// Vectors of 16 positions per register tile.
const NV: usize = 4;
/// Positions per register tile.
pub(crate) const NR: usize = 16 * NV;
/// Register tiles of positions per task, and output channels per task.
const TILES_PER_TASK: usize = 4;
const CHANNELS_PER_TASK: usize = 64;

/// Whether this CPU can run [`conv`].
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[o, p] = bias[o] + Σ_c Σ_t w[o, c·taps + t] · x[c, p + offsets[t]]` for `o < cout`,
/// `p < n` rounded up to [`NR`]: `x` rows are the padded input planes, `w` rows the output
/// channels' weights (`cin·taps` each). `dst` has row stride `≥ n.next_multiple_of(NR)`.
///
/// # Safety
/// `x` must be readable for `(cin − 1)·x.rs + n.next_multiple_of(NR) + max(offsets)`
/// elements; `w` for `cout` rows of `cin·offsets.len()`; `dst` is writable for `cout` rows.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv(
    x: Mat,
    cin: usize,
    offsets: &[usize],
    w: Mat,
    bias: Option<&[f32]>,
    cout: usize,
    n: usize,
    dst: MatMut,
    kw: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let tiles = n.div_ceil(NR);
        let chunks = tiles.div_ceil(TILES_PER_TASK);
        let groups = cout.div_ceil(CHANNELS_PER_TASK);
        (0..chunks * groups).into_par_iter().for_each(|task| {
            let (chunk, group) = (task % chunks, task / chunks);
            let o_end = ((group + 1) * CHANNELS_PER_TASK).min(cout);
            let t_end = ((chunk + 1) * TILES_PER_TASK).min(tiles);
            let mut o = group * CHANNELS_PER_TASK;
            while o < o_end {
                let rows = MR.min(o_end - o);
                for t in chunk * TILES_PER_TASK..t_end {
                    let p = t * NR;
                    let b = bias.map(|b| &b[o..o + rows]);
                    let (xp, wo) = (x.at(p), w.at(o * w.rs as usize));
                    let d = dst.at(o * dst.rs as usize + p);
                    // SAFETY: the caller's bounds; tasks write disjoint (rows × NR) blocks.
                    unsafe {
                        match rows {
                            6 => tile::<6>(xp, cin, offsets, wo, b, d, kw),
                            5 => tile::<5>(xp, cin, offsets, wo, b, d, kw),
                            4 => tile::<4>(xp, cin, offsets, wo, b, d, kw),
                            3 => tile::<3>(xp, cin, offsets, wo, b, d, kw),
                            2 => tile::<2>(xp, cin, offsets, wo, b, d, kw),
                            _ => tile::<1>(xp, cin, offsets, wo, b, d, kw),
                        }
                    }
                }
                o += rows;
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, cin, offsets, w, bias, cout, n, dst, kw);
        unreachable!("available() is false off x86-64");
    }
}

/// One `R × NR` register tile (views as in [`conv`], moved to the tile's first row/position).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // R × NV register tile: indices are the point
unsafe fn tile<const R: usize>(
    x: Mat,
    cin: usize,
    offsets: &[usize],
    w: Mat,
    bias: Option<&[f32]>,
    dst: MatMut,
    kw: usize,
) {
    let taps = offsets.len();
    let (cstride, wstride) = (x.rs as usize, w.rs as usize);
    let (x, w) = (x.ptr, w.ptr);
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    if let Some(b) = bias {
        for r in 0..R {
            acc[r] = [_mm512_set1_ps(b[r]); NV];
        }
    }
    // SAFETY (whole body): in bounds by `conv`'s contract.
    unsafe {
        for c in 0..cin {
            let xc = x.add(c * cstride);
            // The next channel's plane is cstride away, beyond what the hardware prefetcher
            // follows: fetch its rows (taps with j = 0 start them) while this one computes.
            if c + 1 < cin {
                for &off in offsets.iter().step_by(kw) {
                    let next = xc.add(cstride + off);
                    for line in 0..NR / 16 + 1 {
                        _mm_prefetch::<_MM_HINT_T0>(next.add(16 * line) as *const i8);
                    }
                }
            }
            let wc = w.add(c * taps);
            for (t, &off) in offsets.iter().enumerate() {
                let xp = xc.add(off);
                let mut xv = [_mm512_setzero_ps(); NV];
                for (v, xv) in xv.iter_mut().enumerate() {
                    *xv = _mm512_loadu_ps(xp.add(16 * v));
                }
                for r in 0..R {
                    let wv = _mm512_set1_ps(*wc.add(r * wstride + t));
                    for v in 0..NV {
                        acc[r][v] = _mm512_fmadd_ps(wv, xv[v], acc[r][v]);
                    }
                }
            }
        }
        for r in 0..R {
            let d = dst.ptr.offset(r as isize * dst.rs);
            for v in 0..NV {
                _mm512_storeu_ps(d.add(16 * v), acc[r][v]);
            }
        }
    }
}
