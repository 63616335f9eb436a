//! Multi-head attention with bf16 products on AMX tiles (`--dtype bf16`), tiled over queries as
//! `attention.rs` is: per task, 64 queries of one head. `S = (q/√d)·kᵀ` (q/√d and k rounded to
//! bf16, f32 sums), the row softmax in f32 (max and sum in f32, as PyTorch's bf16 SDPA on CPU
//! keeps its statistics), then `P·v` with P rounded to bf16, and the division by the row sum.

use rayon::prelude::*;

use super::amx::{self, BLOCK, Layout, Operands};
use super::attention::Attn;
use super::lowp::Out;
use super::scratch;
use super::simd::{self, multiversion};

/// Queries per task (two row blocks of the tile GEMM).
const TILE: usize = 2 * BLOCK;

/// q: `[batch, n, heads·d]`, k/v: `[batch, m, heads·d]` → `[batch, n, heads·d]`. Panics without AMX.
pub(crate) fn attention(a: Attn, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let inner = a.heads * a.d;
    assert_eq!(q.len(), a.batch * a.n * inner);
    assert_eq!(k.len(), a.batch * a.m * inner);
    assert_eq!(v.len(), a.batch * a.m * inner);
    // k-dim of S = q·kᵀ is d (padded to dp); of P·v it is m (padded to mp); outputs dp wide
    let dp = a.d.next_multiple_of(BLOCK);
    let mp = a.m.next_multiple_of(BLOCK);
    // per (batch, head): kᵀ as pairs of d blocked by 32 keys [mp/32][dp/2][32] (each B tile's
    // rows contiguous), v as pairs of m [mp/2][dp]
    let (kt_len, v_len) = (dp / 2 * mp, mp / 2 * dp);
    let kt_block = dp / 2 * BLOCK;
    let mut kt = vec![0u32; a.batch * a.heads * kt_len];
    let mut vp = vec![0u32; a.batch * a.heads * v_len];
    kt.par_chunks_mut(kt_len)
        .zip(vp.par_chunks_mut(v_len))
        .enumerate()
        .for_each(|(bh, (kt, vp))| {
            let (b, h) = (bh / a.heads, bh % a.heads);
            let row = |j: usize| (j < a.m).then(|| &v[(b * a.m + j) * inner + h * a.d..][..a.d]);
            for j in 0..a.m {
                let kr = &k[(b * a.m + j) * inner + h * a.d..][..a.d];
                for p in 0..a.d.div_ceil(2) {
                    let hi = if 2 * p + 1 < a.d { kr[2 * p + 1] } else { 0.0 };
                    kt[j / BLOCK * kt_block + p * BLOCK + j % BLOCK] = amx::pair(kr[2 * p], hi);
                }
            }
            for p in 0..a.m.div_ceil(2) {
                let (lo, hi) = (row(2 * p), row(2 * p + 1));
                for c in 0..a.d {
                    vp[p * dp + c] = amx::pair(lo.map_or(0.0, |r| r[c]), hi.map_or(0.0, |r| r[c]));
                }
            }
        });
    let scale = 1.0 / (a.d as f32).sqrt();
    let tiles = a.n.div_ceil(TILE);
    let mut out = scratch::output(q.len());
    let dst = Out(out.as_mut_ptr());
    (0..a.batch * a.heads * tiles).into_par_iter().for_each_init(
        || {
            (
                vec![0u16; TILE * dp],
                vec![0f32; TILE * mp],
                vec![0u16; TILE * mp],
                vec![0f32; TILE * dp],
            )
        },
        |(qa, scores, pa, o), task| {
            let (bh, tile) = (task / tiles, task % tiles);
            let (b, h) = (bh / a.heads, bh % a.heads);
            let r0 = tile * TILE;
            let rows = TILE.min(a.n - r0);
            // A = this tile's queries in bf16, zero rows and columns past the real ones
            qa.fill(0);
            // the softmax scale goes into q before rounding (as PyTorch's CPU SDPA scales q)
            for i in 0..rows {
                let src = &q[(b * a.n + r0 + i) * inner + h * a.d..][..a.d];
                for (d, s) in qa[i * dp..].iter_mut().zip(src) {
                    *d = amx::bf16(*s * scale);
                }
            }
            let s_ops = Operands {
                a: qa,
                lda: dp,
                m_pad: TILE,
                b: &kt[bh * kt_len..][..kt_len],
                plane: BLOCK,
                n_block: kt_block,
                seg_k: dp,
                taps: &[(0, 0)],
            };
            amx::gemm_into(&s_ops, 0..2, 0..mp, scores, Layout::Rows(mp));
            let mut inv_sums = [0f32; TILE];
            for (i, row) in scores.chunks_mut(mp).take(rows).enumerate() {
                let valid = if a.causal { (r0 + i + 1).min(a.m) } else { a.m };
                inv_sums[i] = softmax_row(row, valid, &mut pa[i * mp..][..mp]);
            }
            pa[rows * mp..].fill(0);
            let o_ops = Operands {
                a: pa,
                lda: mp,
                m_pad: TILE,
                b: &vp[bh * v_len..][..v_len],
                plane: dp,
                n_block: BLOCK,
                seg_k: mp,
                taps: &[(0, 0)],
            };
            amx::gemm_into(&o_ops, 0..2, 0..dp, o, Layout::Rows(dp));
            for (i, inv) in inv_sums.iter().take(rows).enumerate() {
                // SAFETY: row r0 + i, head h's columns: only this task writes them.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.at((b * a.n + r0 + i) * inner + h * a.d), a.d) };
                for (x, &y) in row.iter_mut().zip(&o[i * dp..]) {
                    *x = y * inv;
                }
            }
        },
    );
    out
}

multiversion! {
    /// `p[..valid] = bf16(exp(row − max))`, `p[valid..] = 0`, in one pass after the max;
    /// returns `1 / Σ` of the unrounded exponentials (f32 statistics, as PyTorch's bf16 SDPA).
    fn softmax_to_bf16(row: &[f32], valid: usize, p: &mut [u16]) -> f32 {
        let (live, out) = (&row[..valid], &mut p[..valid]);
        let max = simd::max(live);
        let mut acc = [0f32; simd::LANES];
        let mut chunks = live.chunks_exact(simd::LANES);
        let mut outs = out.chunks_exact_mut(simd::LANES);
        for (c, o) in (&mut chunks).zip(&mut outs) {
            for i in 0..simd::LANES {
                let e = simd::exp(c[i] - max);
                acc[i] += e;
                o[i] = amx::bf16(e);
            }
        }
        let mut total: f64 = acc.iter().map(|&a| a as f64).sum();
        for (x, o) in chunks.remainder().iter().zip(outs.into_remainder()) {
            let e = simd::exp(*x - max);
            total += e as f64;
            *o = amx::bf16(e);
        }
        p[valid..].fill(0);
        (1.0 / total) as f32
    }
}

/// [`softmax_to_bf16`], with the CPU's own bf16 rounding where it has one.
fn softmax_row(row: &[f32], valid: usize, p: &mut [u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if amx::native_bf16() {
        // SAFETY: the features were detected.
        return unsafe { softmax_to_bf16_native(row, valid, p) };
    }
    softmax_to_bf16(row, valid, p)
}

/// [`softmax_to_bf16`] with the CPU's own bf16 rounding.
///
/// # Safety
/// AVX512-BF16 must be present (`amx::native_bf16`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,avx512bf16")]
unsafe fn softmax_to_bf16_native(row: &[f32], valid: usize, p: &mut [u16]) -> f32 {
    let (live, out) = (&row[..valid], &mut p[..valid]);
    let max = simd::max(live);
    let mut acc = [0f32; 16];
    let mut chunks = live.chunks_exact(16);
    let mut outs = out.chunks_exact_mut(16);
    for (c, o) in (&mut chunks).zip(&mut outs) {
        let mut e = [0f32; 16];
        for i in 0..16 {
            e[i] = simd::exp(c[i] - max);
            acc[i] += e[i];
        }
        // SAFETY: the features are enabled on this function.
        o.copy_from_slice(&unsafe { amx::round16(&e) });
    }
    let mut total: f64 = acc.iter().map(|&a| a as f64).sum();
    for (x, o) in chunks.remainder().iter().zip(outs.into_remainder()) {
        let e = simd::exp(*x - max);
        total += e as f64;
        *o = amx::bf16(e);
    }
    p[valid..].fill(0);
    (1.0 / total) as f32
}

#[cfg(test)]
mod tests {
    use super::super::attention::tests::naive;
    use super::*;

    fn round(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| f32::from_bits((amx::bf16(x) as u32) << 16)).collect()
    }

    #[test]
    fn matches_definition_within_bf16() {
        if !amx::available() {
            eprintln!("no AMX-BF16 here: skipped");
            return;
        }
        for (batch, heads, n, m, d, causal) in [
            (2, 2, 70, 77, 40, false),
            (1, 3, 65, 65, 64, true),
            (1, 1, 5, 33, 8, false),
        ] {
            let a = Attn {
                batch,
                heads,
                n,
                m,
                d,
                causal,
            };
            let make = |len: usize, seed: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 2.0)
                    .collect()
            };
            let (q, k, v) = (
                make(batch * n * heads * d, 1),
                make(batch * m * heads * d, 2),
                make(batch * m * heads * d, 3),
            );
            let want = naive(a, &round(&q), &round(&k), &round(&v));
            let got = attention(a, &q, &k, &v);
            // P is rounded to bf16 too: 2⁻⁸ relative per weight
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 2e-2 * (1.0 + w.abs()), "{a:?} [{i}] {g} vs {w}");
            }
        }
    }
}
