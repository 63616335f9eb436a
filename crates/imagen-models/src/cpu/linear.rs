//! Fully connected layer: one GEMM over every row, the bias as the GEMM's starting value.

use rayon::prelude::*;

use super::gemm::{Mat, MatMut, gemm};
use super::scratch;

/// x: `[rows, d_in]`, weight: `[d_in, d_out]` (burn's layout), bias: `[d_out]` → `[rows, d_out]`.
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), rows * d_in);
    assert_eq!(weight.len(), d_in * d_out);
    let mut out = scratch::output(rows * d_out);
    if let Some(bias) = bias {
        out.par_chunks_mut(d_out).for_each(|row| row.copy_from_slice(bias));
    }
    let dst = MatMut {
        ptr: out.as_mut_ptr(),
        rs: d_out as isize,
        cs: 1,
    };
    let lhs = Mat {
        ptr: x.as_ptr(),
        rs: d_in as isize,
        cs: 1,
    };
    let rhs = Mat {
        ptr: weight.as_ptr(),
        rs: d_out as isize,
        cs: 1,
    };
    // SAFETY: three distinct row-major buffers of exactly these sizes.
    unsafe { gemm(rows, d_out, d_in, dst, bias.is_some(), lhs, rhs, 1.0, true) };
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_definition() {
        let (rows, di, dout) = (37, 19, 23);
        let x: Vec<f32> = (0..rows * di).map(|i| (i % 13) as f32 / 7.0 - 1.0).collect();
        let w: Vec<f32> = (0..di * dout).map(|i| (i % 11) as f32 / 5.0 - 1.0).collect();
        let b: Vec<f32> = (0..dout).map(|i| i as f32 / 3.0).collect();
        for bias in [None, Some(&b[..])] {
            let got = super::linear(&x, rows, di, dout, &w, bias);
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
