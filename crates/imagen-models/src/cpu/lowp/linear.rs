//! Linear layers with bf16 (or kept-quantized) weights on AMX tiles: x is A as it is, the
//! weight B, its row pairs interleaved (and dequantised) per call.

use rayon::prelude::*;

use super::super::amx::Operands;
use super::super::amx::{self, BLOCK};
use super::super::quant::Q8;
use super::super::scratch;
use super::{Out, give_pairs, padded, run, take_pairs};

/// A linear layer's weight `[d_in, d_out]` as [`linear`] reads it.
#[derive(Clone, Copy)]
pub(crate) enum Weight<'a> {
    /// bf16 bits, row-major ([`pack_linear`])
    Bf16 { bits: &'a [u16], d_in: usize, d_out: usize },
    /// kept quantized; each value rounds to the bf16 its dequantised f32 rounds to
    Q8(Q8<'a>),
}

impl Weight<'_> {
    fn dims(&self) -> (usize, usize) {
        match *self {
            Weight::Bf16 { d_in, d_out, .. } => (d_in, d_out),
            Weight::Q8(w) => (w.d_in, w.d_out),
        }
    }

    /// Rows `2p` and `2p + 1` (zero past `d_in`) interleaved into VNNI pairs: `dst[n]` holds
    /// `(w[2p][n], w[2p+1][n])` as bf16, zero past `d_out`. `tmp` is `2·d_out` of scratch.
    fn pair_row(&self, p: usize, dst: &mut [u32], tmp: &mut [f32]) {
        let (d_in, d_out) = self.dims();
        match *self {
            Weight::Bf16 { bits, .. } => {
                let row = |k: usize| (k < d_in).then(|| &bits[k * d_out..][..d_out]);
                match (row(2 * p), row(2 * p + 1)) {
                    (Some(lo), hi) => {
                        for (n, d) in dst[..d_out].iter_mut().enumerate() {
                            *d = lo[n] as u32 | (hi.map_or(0, |h| h[n]) as u32) << 16;
                        }
                    }
                    (None, _) => dst[..d_out].fill(0),
                }
            }
            Weight::Q8(w) => {
                let (lo, hi) = tmp.split_at_mut(d_out);
                for (k, row) in [(2 * p, &mut *lo), (2 * p + 1, &mut *hi)] {
                    if k < d_in {
                        w.row_into(k, row);
                    } else {
                        row[..d_out].fill(0.0);
                    }
                }
                amx::pairs_into(&mut dst[..d_out], lo, &hi[..d_out]);
            }
        }
        dst[d_out..].fill(0);
    }
}

/// x: `[rows, d_in]`, weight `[d_in, d_out]`, bias `[d_out]` → `[rows, d_out]`. x (rounded to
/// bf16) is A, row-major as it is; the weight is B, its row pairs interleaved (and dequantised)
/// per call (O(d_in·d_out), against the GEMM's O(rows·d_in·d_out)).
pub(crate) fn linear(x: &[f32], rows: usize, weight: Weight, bias: Option<&[f32]>) -> Vec<f32> {
    let (d_in, d_out) = weight.dims();
    assert_eq!(x.len(), rows * d_in);
    if let Weight::Bf16 { bits, .. } = weight {
        assert_eq!(bits.len(), d_in * d_out);
    }
    let (m_pad, k_p) = padded(rows, d_in);
    let n_pad = d_out.next_multiple_of(BLOCK);
    let a: Vec<u16> = {
        let mut a = vec![0u16; m_pad * k_p];
        a.par_chunks_mut(k_p)
            .zip(x.par_chunks(d_in))
            .for_each(|(dst, src)| amx::round_into(&mut dst[..d_in], src));
        a
    };
    let mut b = take_pairs(k_p / 2 * n_pad);
    b.par_chunks_mut(n_pad)
        .enumerate()
        .for_each_init(|| vec![0f32; 2 * d_out], |tmp, (p, dst)| weight.pair_row(p, dst, tmp));
    let ops = Operands {
        a: &a,
        lda: k_p,
        m_pad,
        b: &b,
        plane: n_pad,
        n_block: BLOCK,
        seg_k: k_p,
        taps: &[(0, 0)],
    };
    let mut out = scratch::output(rows * d_out);
    let dst = Out(out.as_mut_ptr());
    run(&ops, n_pad, &|m0, n0, blk| {
        let cols = BLOCK.min(d_out.saturating_sub(n0));
        let bias = bias.map(|b| &b[n0..n0 + cols]);
        for i in 0..BLOCK.min(rows.saturating_sub(m0)) {
            // SAFETY: row m0 + i < rows, columns n0..n0 + cols < d_out; only this task writes them.
            let d = unsafe { std::slice::from_raw_parts_mut(dst.at((m0 + i) * d_out + n0), cols) };
            let src = &blk[i * BLOCK..][..cols];
            match bias {
                Some(bias) => d.iter_mut().zip(src).zip(bias).for_each(|((d, s), b)| *d = s + b),
                None => d.copy_from_slice(src),
            }
        }
    });
    give_pairs(b);
    out
}

#[cfg(test)]
mod tests {
    use super::super::super::conv::tests::data;
    use super::super::pack_linear;
    use super::*;

    /// [`linear`] with the f32 weight `w` packed as the loader packs it.
    fn packed_bf16(x: &[f32], rows: usize, w: &[f32], (d_in, d_out): (usize, usize), bias: &[f32]) -> Vec<f32> {
        let bits = pack_linear(w);
        let weight = Weight::Bf16 {
            bits: &bits,
            d_in,
            d_out,
        };
        linear(x, rows, weight, Some(bias))
    }

    fn round(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| f32::from_bits((amx::bf16(x) as u32) << 16)).collect()
    }

    #[test]
    fn linear_matches_definition() {
        if !amx::available() {
            eprintln!("no AMX-BF16 here: skipped");
            return;
        }
        for (rows, d_in, d_out) in [(77, 48, 40), (5, 320, 96), (130, 33, 33)] {
            let x = data(rows * d_in, 4);
            let w = data(d_in * d_out, 5);
            let bias = data(d_out, 6);
            let (xr, wr) = (round(&x), round(&w));
            let got = packed_bf16(&x, rows, &w, (d_in, d_out), &bias);
            for r in 0..rows {
                for o in 0..d_out {
                    let want = bias[o] + (0..d_in).map(|k| xr[r * d_in + k] * wr[k * d_out + o]).sum::<f32>();
                    let g = got[r * d_out + o];
                    assert!(
                        (g - want).abs() <= 1e-4 * (1.0 + want.abs()) * d_in as f32,
                        "{r},{o}: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// A weight kept quantized computes bit for bit what its dequantised f32, packed in bf16,
    /// computes (so a GGUF model gives the same image either way).
    #[test]
    fn quantized_linear_equals_dequantised() {
        if !amx::available() {
            eprintln!("no AMX-BF16 here: skipped");
            return;
        }
        for (rows, d_out, d_in, block) in [(77, 40, 64, 32), (130, 33, 96, 32), (4, 320, 32, 32), (9, 48, 80, 16)] {
            let q: Vec<i8> = (0..d_out * d_in).map(|i| ((i * 53 % 251) as i32 - 125) as i8).collect();
            let s: Vec<f32> = (0..d_out * d_in / block).map(|i| 1e-3 * (1 + i % 5) as f32).collect();
            let t = crate::cpu::quant::from_rows(&q, &s, d_out, d_in).expect("whole blocks");
            let stored = crate::cpu::quant::storage(&t).expect("quantized");
            let w = crate::cpu::quant::parts(&stored, [d_in, d_out]).expect("parts");
            let mut f = vec![0f32; d_in * d_out];
            for k in 0..d_in {
                w.row_into(k, &mut f[k * d_out..]);
            }
            let (x, bias) = (data(rows * d_in, 7), data(d_out, 8));
            let want = packed_bf16(&x, rows, &f, (d_in, d_out), &bias);
            let got = linear(&x, rows, Weight::Q8(w), Some(&bias));
            assert!(
                got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
                "{rows}x{d_in}x{d_out}"
            );
        }
    }
}
