//! Multi-head scaled-dot-product attention, tiled over queries.
//!
//! Each task takes `TILE` queries of one head: `S = q·kᵀ/√d` for those rows only (`TILE × m`,
//! 1 MiB at m = 4096: it stays in L2), a row softmax in place, then `S·v` written straight into
//! the output's `[b, n, h·d]` layout. The `n × m` score matrix never exists, and neither do the
//! `[b, h, n, d]` transposes of q, k, v and the output.

use rayon::prelude::*;

use super::gemm::{Mat, MatMut, gemm};
use super::scratch;
use super::simd::{self, multiversion};

const TILE: usize = 64;

/// Shapes of one attention call; all tensors row-major, heads interleaved in the last dim.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attn {
    pub batch: usize,
    pub heads: usize,
    /// query length
    pub n: usize,
    /// key/value length
    pub m: usize,
    /// head dim
    pub d: usize,
    /// mask keys after the query's own position (CLIP's text encoder)
    pub causal: bool,
}

/// q: `[batch, n, heads·d]`, k/v: `[batch, m, heads·d]` → `[batch, n, heads·d]`.
pub(crate) fn attention(a: Attn, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let inner = a.heads * a.d;
    assert_eq!(q.len(), a.batch * a.n * inner);
    assert_eq!(k.len(), a.batch * a.m * inner);
    assert_eq!(v.len(), a.batch * a.m * inner);
    let mut out = scratch::output(q.len());
    let out_view = MatMut::rows(&mut out, inner);
    let tiles = a.n.div_ceil(TILE);
    let scale = 1.0 / (a.d as f32).sqrt();
    // Per (batch, head): kᵀ as [d, m] and v as [m, dp] (dp = d rounded up to a vector, zeros
    // after d). In those layouts the GEMMs below read both in place instead of repacking them
    // for every tile of queries (which cost as much as the products at d = 40).
    let dp = a.d.next_multiple_of(16);
    let (kt_len, v_len) = (a.d * a.m, a.m * dp);
    let mut kt = scratch::output(a.batch * a.heads * kt_len);
    let mut vp = scratch::output(a.batch * a.heads * v_len);
    kt.par_chunks_mut(kt_len)
        .zip(vp.par_chunks_mut(v_len))
        .enumerate()
        .for_each(|(bh, (kt, vp))| {
            let (b, h) = (bh / a.heads, bh % a.heads);
            for j in 0..a.m {
                let src = (b * a.m + j) * inner + h * a.d;
                // [m, h·d] -> [d, m] for this head
                for (c, &x) in k[src..src + a.d].iter().enumerate() {
                    kt[c * a.m + j] = x;
                }
                vp[j * dp..j * dp + a.d].copy_from_slice(&v[src..src + a.d]);
            }
        });
    (0..a.batch * a.heads * tiles).into_par_iter().for_each_init(
        || (vec![0f32; TILE * a.m], vec![0f32; TILE * dp]),
        |(scores, o_tile), task| {
            let (bh, tile) = (task / tiles, task % tiles);
            let (b, h) = (bh / a.heads, bh % a.heads);
            let r0 = tile * TILE;
            let rows = TILE.min(a.n - r0);
            let q_off = (b * a.n + r0) * inner + h * a.d;
            let (kt, vp) = (&kt[bh * kt_len..][..kt_len], &vp[bh * v_len..][..v_len]);
            let s = MatMut::rows(scores, a.m);
            let (q_rows, k_cols) = (Mat::rows(&q[q_off..], inner), Mat::rows(kt, a.m));
            // S[rows × m] = scale · q[rows × d] · kᵀ[d × m]
            // SAFETY: q rows r0.. of head h, this head's kᵀ, and this task's own S.
            unsafe { gemm(rows, a.m, a.d, s, false, q_rows, k_cols, scale, false) };
            let mut inv_sums = [0f32; TILE];
            for (i, row) in scores.chunks_mut(a.m).take(rows).enumerate() {
                let valid = if a.causal { (r0 + i + 1).min(a.m) } else { a.m };
                inv_sums[i] = softmax_unnormalised(row, valid);
            }
            // o[rows × dp] = S[rows × m] · v[m × dp]
            let o = MatMut::rows(o_tile, dp);
            let (p, v_rows) = (Mat::rows(scores, a.m), Mat::rows(vp, dp));
            // SAFETY: S and o are this task's buffers, vp is this head's (m × dp).
            unsafe { gemm(rows, dp, a.m, o, false, p, v_rows, 1.0, false) };
            let dst = out_view.at(q_off);
            for (i, inv) in inv_sums.iter().take(rows).enumerate() {
                // SAFETY: each task writes its own rows × head-h columns of `out`; no other
                // task addresses them.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(i * inner), a.d) };
                for (x, &y) in row.iter_mut().zip(&o_tile[i * dp..]) {
                    *x = y * inv;
                }
            }
        },
    );
    out
}

multiversion! {
    /// `row[..valid] = exp(row − max)`, `row[valid..] = 0`; returns `1 / Σ`.
    fn softmax_unnormalised(row: &mut [f32], valid: usize) -> f32 {
        let (live, masked) = row.split_at_mut(valid);
        masked.fill(0.0);
        let max = simd::max(live);
        // exp and its sum in one pass, 16 partial sums
        let mut acc = [0f32; simd::LANES];
        let mut chunks = live.chunks_exact_mut(simd::LANES);
        for c in &mut chunks {
            for i in 0..simd::LANES {
                c[i] = simd::exp(c[i] - max);
                acc[i] += c[i];
            }
        }
        let mut total: f64 = acc.iter().map(|&a| a as f64).sum();
        for x in chunks.into_remainder() {
            *x = simd::exp(*x - max);
            total += *x as f64;
        }
        (1.0 / total) as f32
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::cpu) fn naive(a: Attn, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let inner = a.heads * a.d;
        let mut out = vec![0f32; q.len()];
        for b in 0..a.batch {
            for h in 0..a.heads {
                for i in 0..a.n {
                    let at = |t: &[f32], len: usize, r: usize, c: usize| t[(b * len + r) * inner + h * a.d + c] as f64;
                    let limit = if a.causal { (i + 1).min(a.m) } else { a.m };
                    let s: Vec<f64> = (0..limit)
                        .map(|j| {
                            (0..a.d).map(|c| at(q, a.n, i, c) * at(k, a.m, j, c)).sum::<f64>() / (a.d as f64).sqrt()
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..a.d {
                        let o: f64 = (0..limit).map(|j| e[j] * at(v, a.m, j, c)).sum::<f64>() / z;
                        out[(b * a.n + i) * inner + h * a.d + c] = o as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive() {
        let data = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 2_654_435_761 + seed * 97) >> 7) % 2001) as f32 / 1000.0 - 1.0)
                .collect()
        };
        for (t, a) in [
            Attn {
                batch: 2,
                heads: 3,
                n: 130,
                m: 77,
                d: 8,
                causal: false,
            },
            Attn {
                batch: 1,
                heads: 2,
                n: 77,
                m: 77,
                d: 16,
                causal: true,
            },
            Attn {
                batch: 1,
                heads: 1,
                n: 5,
                m: 200,
                d: 4,
                causal: false,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let inner = a.heads * a.d;
            let q = data(a.batch * a.n * inner, t);
            let k = data(a.batch * a.m * inner, t + 10);
            let v = data(a.batch * a.m * inner, t + 20);
            let got = attention(a, &q, &k, &v);
            let want = naive(a, &q, &k, &v);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{a:?}: {g} vs {w}");
            }
        }
    }
}
