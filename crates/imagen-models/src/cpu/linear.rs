//! Fully connected layer: one GEMM over every row, the bias as the GEMM's starting value.

use rayon::prelude::*;

use super::gemm::{Mat, MatMut, gemm};
use super::scratch;

/// Below this many rows the columns are split across threads by hand.
const SMALL_ROWS: usize = 1024;

/// x: `[rows, d_in]`, weight: `[d_in, d_out]` (burn's layout) with rows `w_rs ≥ d_out` apart,
/// bias: `[d_out]` → `[rows, d_out]`.
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
    (weight, w_rs): (&[f32], usize),
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), rows * d_in);
    assert!(w_rs >= d_out && weight.len() >= d_in.saturating_sub(1) * w_rs + d_out);
    let mut out = scratch::output(rows * d_out);
    if let Some(bias) = bias {
        out.par_chunks_mut(d_out).for_each(|row| row.copy_from_slice(bias));
    }
    let (dst, lhs, rhs) = (
        MatMut::rows(&mut out, d_out),
        Mat::rows(x, d_in),
        Mat::rows(weight, w_rs),
    );
    if rows >= SMALL_ROWS {
        // SAFETY: three distinct row-major buffers of exactly these sizes.
        unsafe { gemm(rows, d_out, d_in, dst, bias.is_some(), lhs, rhs, 1.0, true) };
        return out;
    }
    // Few rows (CLIP's 77 per prompt): split the output columns between the threads ourselves,
    // each a single-threaded GEMM; gemm's own split is poor for this shape.
    let block = d_out
        .div_ceil(rayon::current_num_threads())
        .next_multiple_of(64)
        .min(d_out);
    (0..d_out.div_ceil(block)).into_par_iter().for_each(|j| {
        let (c0, cols) = (j * block, block.min(d_out - j * block));
        // SAFETY: columns c0..c0 + cols of W and of the output; tasks write disjoint columns.
        unsafe {
            gemm(
                rows,
                cols,
                d_in,
                dst.at(c0),
                bias.is_some(),
                lhs,
                rhs.at(c0),
                1.0,
                false,
            )
        };
    });
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_definition() {
        // d_out 300: several column blocks on the few-rows path
        // w_rs > d_out: weights with padded rows
        for (rows, di, dout, w_rs) in [(37, 19, 23, 23), (37, 19, 300, 300), (1030, 7, 9, 9), (37, 19, 64, 80)] {
            check(rows, di, dout, w_rs);
        }
    }

    fn check(rows: usize, di: usize, dout: usize, w_rs: usize) {
        let x: Vec<f32> = (0..rows * di).map(|i| (i % 13) as f32 / 7.0 - 1.0).collect();
        let w: Vec<f32> = (0..di * dout).map(|i| (i % 11) as f32 / 5.0 - 1.0).collect();
        let b: Vec<f32> = (0..dout).map(|i| i as f32 / 3.0).collect();
        // the same weights with rows w_rs apart, NaN in the padding (never read)
        let mut wp = vec![f32::NAN; di * w_rs];
        for (d, s) in wp.chunks_mut(w_rs).zip(w.chunks(dout)) {
            d[..dout].copy_from_slice(s);
        }
        for bias in [None, Some(&b[..])] {
            let got = super::linear(&x, rows, di, dout, (&wp, w_rs), bias);
            for r in 0..rows {
                for o in 0..dout {
                    let want: f64 = bias.map_or(0.0, |b| b[o] as f64)
                        + (0..di)
                            .map(|k| x[r * di + k] as f64 * w[k * dout + o] as f64)
                            .sum::<f64>();
                    assert!((got[r * dout + o] as f64 - want).abs() < 1e-4);
                }
            }
        }
    }
}
