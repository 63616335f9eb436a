//! Multi-head scaled-dot-product attention, tiled over queries.
//!
//! Each task takes `TILE` queries of one head: `S = q·kᵀ/√d` for those rows only (`TILE × m`,
//! 1 MiB at m = 4096: it stays in L2), a row softmax in place, then `S·v` written straight into
//! the output's `[b, n, h·d]` layout. The `n × m` score matrix never exists, and neither do the
//! `[b, h, n, d]` transposes of q, k, v and the output.

use rayon::prelude::*;

use super::gemm::{Mat, MatMut, gemm};
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
    let mut out = vec![0f32; q.len()];
    let out_view = MatMut {
        ptr: out.as_mut_ptr(),
        rs: inner as isize,
        cs: 1,
    };
    let tiles = a.n.div_ceil(TILE);
    let scale = 1.0 / (a.d as f32).sqrt();
    (0..a.batch * a.heads * tiles).into_par_iter().for_each_init(
        || vec![0f32; TILE * a.m],
        |scores, task| {
            let (bh, tile) = (task / tiles, task % tiles);
            let (b, h) = (bh / a.heads, bh % a.heads);
            let r0 = tile * TILE;
            let rows = TILE.min(a.n - r0);
            let q_off = (b * a.n + r0) * inner + h * a.d;
            let kv_off = b * a.m * inner + h * a.d;
            let s = MatMut {
                ptr: scores.as_mut_ptr(),
                rs: a.m as isize,
                cs: 1,
            };
            // S[rows × m] = scale · q[rows × d] · kᵀ[d × m]
            // SAFETY: q rows r0.. of head h, k's m rows of head h (read as columns), S is this
            // task's own buffer of TILE·m.
            unsafe {
                gemm(
                    rows,
                    a.m,
                    a.d,
                    s,
                    false,
                    Mat {
                        ptr: q[q_off..].as_ptr(),
                        rs: inner as isize,
                        cs: 1,
                    },
                    Mat {
                        ptr: k[kv_off..].as_ptr(),
                        rs: 1,
                        cs: inner as isize,
                    },
                    scale,
                    false,
                )
            };
            let mut inv_sums = [0f32; TILE];
            for (i, row) in scores.chunks_mut(a.m).take(rows).enumerate() {
                let valid = if a.causal { (r0 + i + 1).min(a.m) } else { a.m };
                inv_sums[i] = softmax_unnormalised(row, valid);
            }
            let dst = out_view.at(q_off);
            // out[rows × d] = S[rows × m] · v[m × d]
            // SAFETY: each task writes its own rows × head-h columns of `out`; no other task
            // addresses them. v rows are head h's columns of v.
            unsafe {
                gemm(
                    rows,
                    a.d,
                    a.m,
                    dst,
                    false,
                    Mat {
                        ptr: scores.as_ptr(),
                        rs: a.m as isize,
                        cs: 1,
                    },
                    Mat {
                        ptr: v[kv_off..].as_ptr(),
                        rs: inner as isize,
                        cs: 1,
                    },
                    1.0,
                    false,
                )
            };
            for (i, inv) in inv_sums.iter().take(rows).enumerate() {
                // SAFETY: as above, this task's own rows.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(i * inner), a.d) };
                row.iter_mut().for_each(|x| *x *= inv);
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
        for x in live.iter_mut() {
            *x = simd::exp(*x - max);
        }
        (1.0 / simd::sum(live)) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Attn, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
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
