//! 2-D convolution, stride 1, by one of four routes ([`Route`], picked per shape by measurement):
//! Winograd for large 3×3 convolutions (`winograd.rs`), im2col + one GEMM for tiny outputs, the
//! AVX-512 direct kernel (`conv_avx512.rs`), or a sum of shifted GEMMs over a zero-padded input.
//!
//! Shifted GEMMs: with the input padded to `[cin, hp, wp]` and the output computed on the padded
//! width (`[cout, ho, wp]`, the last `wp − wo` columns of each row discarded), tap `(i, j)` of the
//! kernel is one GEMM `W[:, :, i, j] · Xpad[:, shifted by i·wp + j]`: the shifted input is a
//! plain strided matrix, so no im2col buffer is built (9× the input for a 3×3 kernel).

use rayon::prelude::*;

use super::conv_avx512;
use super::gemm::{Mat, MatMut, gemm};
use super::geometry::Conv;
use super::scratch;
use super::winograd;
use crate::ops::types::Winograd;

/// How one convolution is computed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    /// Winograd F(4×4, 3×3) (`winograd.rs`): 3×3 kernels with enough tiles.
    Winograd,
    /// Column matrix + one GEMM: outputs of at most [`IM2COL_MAX`] positions.
    Im2col,
    /// The AVX-512 direct kernel (`conv_avx512.rs`).
    Avx512,
    /// A sum of shifted GEMMs (no AVX-512), and 1×1 convolutions without padding.
    ShiftedGemm,
}

/// Outputs up to 8×8 take the im2col route: measured with `imagen bench --component conv
/// --latent 8 --channels 1280`, 14.9 vs 23.1 ms at batch 2 (the direct kernel computes 64-wide
/// position tiles over an 8 × 10 padded-width output); at 16×16 the two are within noise.
const IM2COL_MAX: usize = 64;

fn route(c: &Conv, winograd: Winograd) -> Route {
    let (ho, wo) = c.out_hw();
    let plain_1x1 = c.kh * c.kw == 1 && c.pad == [0; 4];
    if winograd::applies(c, winograd) {
        Route::Winograd
    } else if plain_1x1 {
        Route::ShiftedGemm
    } else if ho * wo <= IM2COL_MAX {
        Route::Im2col
    } else if conv_avx512::available() {
        Route::Avx512
    } else {
        Route::ShiftedGemm
    }
}

/// x: `[batch, cin, h, w]`, weight: `[cout, cin, kh, kw]`, bias: `[cout]` → `[batch, cout, ho, wo]`.
pub(crate) fn conv2d(c: Conv, x: &[f32], weight: &[f32], bias: Option<&[f32]>, winograd: Winograd) -> Vec<f32> {
    assert_eq!(x.len(), c.batch * c.cin * c.h * c.w);
    assert_eq!(weight.len(), c.cout * c.cin * c.kh * c.kw);
    conv2d_by(route(&c, winograd), c, x, weight, bias)
}

fn conv2d_by(route: Route, c: Conv, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    match route {
        Route::Winograd => winograd::conv2d(c, x, weight, bias),
        Route::Im2col => conv2d_im2col(c, x, weight, bias),
        Route::Avx512 => conv2d_avx512(c, x, weight, bias),
        Route::ShiftedGemm => conv2d_shifted(c, x, weight, bias),
    }
}

/// The shifted-GEMM route (see the module doc).
fn conv2d_shifted(c: Conv, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (ho, wo) = c.out_hw();
    let (_, wp) = c.padded_hw();
    let taps = c.kh * c.kw;
    let direct = taps == 1 && c.pad == [0; 4];
    let cstride = c.cstride();
    let n = ho * wp; // GEMM columns: output rows on the padded width
    let mut out = scratch::output(c.batch * c.cout * ho * wo);
    let mut xpad = if direct {
        Vec::new()
    } else {
        scratch::take(0, c.cin * cstride)
    };
    let mut wide = if wp == wo {
        Vec::new()
    } else {
        scratch::take(1, c.cout * n)
    };
    for bi in 0..c.batch {
        let xb = &x[bi * c.cin * c.h * c.w..][..c.cin * c.h * c.w];
        let input: &[f32] = if direct {
            xb
        } else {
            pad_into(&mut xpad, xb, c.cin, c.h, c.w, c.pad, cstride);
            &xpad
        };
        let ob = &mut out[bi * c.cout * ho * wo..][..c.cout * ho * wo];
        let dst: &mut [f32] = if wp == wo { ob } else { &mut wide };
        // Start from the bias so every tap accumulates.
        match bias {
            Some(bias) => dst.par_chunks_mut(n).zip(bias).for_each(|(row, &v)| row.fill(v)),
            None => dst.fill(0.0),
        }
        let dst_view = MatMut::rows(dst, n);
        for i in 0..c.kh {
            for j in 0..c.kw {
                let lhs = Mat {
                    ptr: weight[i * c.kw + j..].as_ptr(),
                    rs: (c.cin * taps) as isize,
                    cs: taps as isize,
                };
                let offset = i * wp + j;
                let rhs = Mat {
                    ptr: input[offset..].as_ptr(),
                    rs: if direct { (c.h * c.w) as isize } else { cstride as isize },
                    cs: 1,
                };
                debug_assert!(direct || offset + (c.cin - 1) * cstride + n <= input.len());
                // SAFETY: rows of `rhs` are cin channel planes of `input` (cstride apart, the
                // furthest read is hp·wp + kw − 2 < cstride into the last one), `lhs` walks the
                // weight tensor with its own strides, `dst` is cout × n; all distinct buffers.
                unsafe { gemm(c.cout, n, c.cin, dst_view, true, lhs, rhs, 1.0, true) };
            }
        }
        if wp != wo {
            compact(ob, &wide, n, c);
        }
    }
    scratch::give(0, xpad);
    scratch::give(1, wide);
    out
}

/// The same computation with the AVX-512 direct kernel: output on the padded width rounded up
/// to whole register tiles, then compacted.
fn conv2d_avx512(c: Conv, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (ho, wo) = c.out_hw();
    let (_, wp) = c.padded_hw();
    let cstride = c.cstride();
    let n = ho * wp;
    let n_pad = n.next_multiple_of(conv_avx512::NR);
    let offsets: Vec<usize> = (0..c.kh).flat_map(|i| (0..c.kw).map(move |j| i * wp + j)).collect();
    let mut out = scratch::output(c.batch * c.cout * ho * wo);
    // The last tile of the last channel reads up to n_pad − n past its plane.
    let mut xpad = scratch::take(0, c.cin * cstride + (n_pad - n));
    let mut wide = scratch::take(1, c.cout * n_pad);
    xpad[c.cin * cstride..].fill(0.0);
    for bi in 0..c.batch {
        let xb = &x[bi * c.cin * c.h * c.w..][..c.cin * c.h * c.w];
        pad_into(&mut xpad, xb, c.cin, c.h, c.w, c.pad, cstride);
        let dst = MatMut::rows(&mut wide, n_pad);
        // SAFETY: reads reach (cin − 1)·cstride + n_pad + max(offsets) ≤ xpad.len() (the max
        // offset is (kh − 1)·wp + kw − 1 and n + that ≤ cstride); weight is cout·cin·taps;
        // `wide` is cout rows of n_pad.
        unsafe {
            conv_avx512::conv(
                Mat::rows(&xpad, cstride),
                c.cin,
                &offsets,
                Mat::rows(weight, c.cin * c.kh * c.kw),
                bias,
                c.cout,
                n,
                dst,
                c.kw,
            )
        };
        compact(&mut out[bi * c.cout * ho * wo..][..c.cout * ho * wo], &wide, n_pad, c);
    }
    scratch::give(0, xpad);
    scratch::give(1, wide);
    out
}

/// Small outputs (the UNet's 8×8 level): the column matrix of the whole batch
/// (`[cin·taps, batch·ho·wo]`, 9× the input: a few MB there) and one GEMM, whose k = cin·taps
/// and n = batch·ho·wo keep it at full speed where the direct kernel's 64-position tiles are
/// mostly padding.
fn conv2d_im2col(c: Conv, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (ho, wo) = c.out_hw();
    let (taps, hw) = (c.kh * c.kw, ho * wo);
    let (k, n) = (c.cin * taps, c.batch * hw);
    let [t, l, _, _] = c.pad;
    let mut cols = scratch::take(0, k * n);
    // row (ci, i, j), column (b, y, x): x[b, ci, y + i − t, x + j − l], 0 outside
    cols.par_chunks_mut(n).enumerate().for_each(|(row, dst)| {
        let (ci, i, j) = (row / taps, (row % taps) / c.kw, row % c.kw);
        for (bi, dimg) in dst.chunks_mut(hw).enumerate() {
            let plane = &x[(bi * c.cin + ci) * c.h * c.w..][..c.h * c.w];
            for (y, drow) in dimg.chunks_mut(wo).enumerate() {
                let Some(sy) = (y + i).checked_sub(t).filter(|&sy| sy < c.h) else {
                    drow.fill(0.0);
                    continue;
                };
                for (xx, d) in drow.iter_mut().enumerate() {
                    let sx = (xx + j).checked_sub(l).filter(|&sx| sx < c.w);
                    *d = sx.map_or(0.0, |sx| plane[sy * c.w + sx]);
                }
            }
        }
    });
    // [cout, batch·hw], then each image's [cout, hw] block into place
    let mut wide = scratch::take(1, c.cout * n);
    if let Some(bias) = bias {
        wide.par_chunks_mut(n).zip(bias).for_each(|(row, &v)| row.fill(v));
    }
    // SAFETY: weight is cout rows of k, cols k rows of n, wide cout rows of n; distinct.
    unsafe {
        gemm(
            c.cout,
            n,
            k,
            MatMut::rows(&mut wide, n),
            bias.is_some(),
            Mat::rows(weight, k),
            Mat::rows(&cols, n),
            1.0,
            true,
        )
    };
    let mut out = scratch::output(c.batch * c.cout * hw);
    out.par_chunks_mut(c.cout * hw).enumerate().for_each(|(bi, ob)| {
        for (orow, wrow) in ob.chunks_mut(hw).zip(wide.chunks(n)) {
            orow.copy_from_slice(&wrow[bi * hw..][..hw]);
        }
    });
    scratch::give(0, cols);
    scratch::give(1, wide);
    out
}

/// `[cout, ho, wp]` output rows on the padded width (each channel `stride` apart in `wide`)
/// → `[cout, ho, wo]` in `out`.
fn compact(out: &mut [f32], wide: &[f32], stride: usize, c: Conv) {
    let (ho, wo) = c.out_hw();
    let (_, wp) = c.padded_hw();
    out.par_chunks_mut(ho * wo)
        .zip(wide.par_chunks(stride))
        .for_each(|(o, w)| {
            for (orow, wrow) in o.chunks_mut(wo).zip(w.chunks(wp)) {
                orow.copy_from_slice(&wrow[..wo]);
            }
        });
}

/// Writes `x` (`[cin, h, w]`) into `dst` as `[cin, hp, wp]` planes `cstride` apart, zeros around.
fn pad_into(dst: &mut [f32], x: &[f32], cin: usize, h: usize, w: usize, pad: [usize; 4], cstride: usize) {
    let [t, l, _, r] = pad;
    let wp = w + l + r;
    dst[..cin * cstride]
        .par_chunks_mut(cstride)
        .zip(x.par_chunks(h * w))
        .for_each(|(plane, src)| {
            plane[..t * wp].fill(0.0);
            for (y, row) in src.chunks(w).enumerate() {
                let d = &mut plane[(t + y) * wp..][..wp];
                d[..l].fill(0.0);
                d[l..l + w].copy_from_slice(row);
                d[l + w..].fill(0.0);
            }
            // bottom rows and the slack past hp·wp
            plane[(t + h) * wp..].fill(0.0);
        });
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Direct 6-loop convolution.
    pub(in crate::cpu) fn naive(c: Conv, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let (ho, wo) = c.out_hw();
        let [t, l, _, _] = c.pad;
        let mut out = vec![0f32; c.batch * c.cout * ho * wo];
        for b in 0..c.batch {
            for o in 0..c.cout {
                for y in 0..ho {
                    for xx in 0..wo {
                        let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                        for ci in 0..c.cin {
                            for i in 0..c.kh {
                                for j in 0..c.kw {
                                    let (sy, sx) = ((y + i) as isize - t as isize, (xx + j) as isize - l as isize);
                                    if sy < 0 || sx < 0 || sy >= c.h as isize || sx >= c.w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * c.cin + ci) * c.h + sy as usize) * c.w + sx as usize];
                                    let wv = w[((o * c.cin + ci) * c.kh + i) * c.kw + j];
                                    acc += (xv * wv) as f64;
                                }
                            }
                        }
                        out[((b * c.cout + o) * ho + y) * wo + xx] = acc as f32;
                    }
                }
            }
        }
        out
    }

    pub(in crate::cpu) fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_naive_for_odd_geometries() {
        let cases = [
            Conv {
                batch: 2,
                cin: 3,
                cout: 5,
                h: 7,
                w: 9,
                kh: 3,
                kw: 3,
                pad: [1, 1, 1, 1],
            },
            Conv {
                batch: 1,
                cin: 4,
                cout: 2,
                h: 5,
                w: 6,
                kh: 1,
                kw: 1,
                pad: [0; 4],
            },
            Conv {
                batch: 1,
                cin: 2,
                cout: 3,
                h: 6,
                w: 5,
                kh: 3,
                kw: 3,
                pad: [0; 4],
            },
            Conv {
                batch: 2,
                cin: 3,
                cout: 4,
                h: 4,
                w: 7,
                kh: 3,
                kw: 2,
                pad: [0, 1, 2, 0],
            },
            Conv {
                batch: 1,
                cin: 17,
                cout: 33,
                h: 12,
                w: 10,
                kh: 3,
                kw: 3,
                pad: [1, 1, 1, 1],
            },
        ];
        for (k, c) in cases.into_iter().enumerate() {
            let x = data(c.batch * c.cin * c.h * c.w, k as u32);
            let w = data(c.cout * c.cin * c.kh * c.kw, 7 + k as u32);
            let bias = data(c.cout, 99);
            for bias in [None, Some(&bias[..])] {
                let want = naive(c, &x, &w, bias);
                let mut routes = vec![Route::ShiftedGemm, Route::Im2col];
                if conv_avx512::available() && !(c.kh * c.kw == 1 && c.pad == [0; 4]) {
                    routes.push(Route::Avx512);
                }
                if c.kh == 3 && c.kw == 3 {
                    routes.push(Route::Winograd);
                }
                let chosen = route(&c, Winograd::WherePays);
                assert!(routes.contains(&chosen), "{c:?}: {chosen:?}");
                for r in routes {
                    let got = conv2d_by(r, c, &x, &w, bias);
                    assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 1e-4, "{c:?} by {r:?}: {g} vs {w}");
                    }
                }
            }
        }
    }
}
