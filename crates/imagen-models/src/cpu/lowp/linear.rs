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
    /// bf16 bits laid out by [`pack_linear`](super::pack_linear): transposed, `[m_pad][k_p]`
    /// (output rows padded to whole blocks, inputs to whole K steps, zeros in the padding):
    /// the GEMM's A operand as it is
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
}

/// Rows `2p` and `2p + 1` (zero past `d_in`) of a kept-quantized weight, dequantised and
/// interleaved into VNNI pairs: `dst[n]` holds `(w[2p][n], w[2p+1][n])` as bf16, zero past
/// `d_out`. `tmp` is `2·d_out` of scratch.
fn q8_pair_row(w: &Q8, p: usize, dst: &mut [u32], tmp: &mut [f32]) {
    let (d_in, d_out) = (w.d_in, w.d_out);
    let (lo, hi) = tmp.split_at_mut(d_out);
    for (k, row) in [(2 * p, &mut *lo), (2 * p + 1, &mut *hi)] {
        if k < d_in {
            w.row_into(k, row);
        } else {
            row[..d_out].fill(0.0);
        }
    }
    amx::pairs_into(&mut dst[..d_out], lo, &hi[..d_out]);
    dst[d_out..].fill(0);
}

/// `src` `[rows][k_p]` bf16 bits (row-major, `k_p` even) → `dst` `[k_p/2][n_pad]` VNNI pairs,
/// `dst[p][n] = (src[n][2p], src[n][2p+1])`, zero for `n ≥ rows`: a transpose of 32-bit words,
/// in tasks of 16 pairs so that each reads 64-byte runs of every row.
fn pairs_of_rows(src: &[u16], rows: usize, k_p: usize, dst: &mut [u32], n_pad: usize) {
    const P: usize = 16;
    dst.par_chunks_mut(P * n_pad).enumerate().for_each(|(c, chunk)| {
        let (p0, np) = (c * P, chunk.len() / n_pad);
        for n in 0..rows {
            let s = &src[n * k_p + 2 * p0..][..2 * np];
            for j in 0..np {
                chunk[j * n_pad + n] = s[2 * j] as u32 | (s[2 * j + 1] as u32) << 16;
            }
        }
        for j in 0..np {
            chunk[j * n_pad + rows..(j + 1) * n_pad].fill(0);
        }
    });
}

/// x: `[rows, d_in]`, weight `[d_in, d_out]`, bias `[d_out]` → `[rows, d_out]`, x rounded to
/// bf16. With few rows (a text encoder's 2 × 77 tokens) the transposed product
/// `Cᵀ = W·xᵀ` is taken: the packed weight is A as stored and only x is interleaved into pairs
/// (O(rows·d_in) per call instead of O(d_in·d_out)); otherwise x is A and the weight's row
/// pairs are B, interleaved (or dequantised) per call. Both sum the same pair products in the
/// same order: the same bits.
pub(crate) fn linear(x: &[f32], rows: usize, weight: Weight, bias: Option<&[f32]>) -> Vec<f32> {
    let (d_in, d_out) = weight.dims();
    assert_eq!(x.len(), rows * d_in);
    let (m_pad, k_p) = padded(rows, d_in);
    if let Weight::Bf16 { bits, .. } = weight {
        assert_eq!(bits.len(), padded(d_out, d_in).0 * k_p);
    }
    let a: Vec<u16> = {
        let mut a = vec![0u16; m_pad * k_p];
        a.par_chunks_mut(k_p)
            .zip(x.par_chunks(d_in))
            .for_each(|(dst, src)| amx::round_into(&mut dst[..d_in], src));
        a
    };
    if let Weight::Bf16 { bits, .. } = weight
        && rows <= d_out
    {
        return transposed(&a, rows, bits, (d_in, d_out), bias);
    }
    let n_pad = d_out.next_multiple_of(BLOCK);
    let mut b = take_pairs(k_p / 2 * n_pad);
    match weight {
        Weight::Bf16 { bits, .. } => pairs_of_rows(bits, d_out, k_p, &mut b, n_pad),
        Weight::Q8(w) => b
            .par_chunks_mut(n_pad)
            .enumerate()
            .for_each_init(|| vec![0f32; 2 * d_out], |tmp, (p, dst)| q8_pair_row(&w, p, dst, tmp)),
    }
    let ops = plain_gemm(&a, m_pad, k_p, &b, n_pad);
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

/// A plain GEMM's operands: A `[m_pad][k_p]` row-major, B `[k_p/2][n_pad]` pairs, one tap.
fn plain_gemm<'a>(a: &'a [u16], m_pad: usize, k_p: usize, b: &'a [u32], n_pad: usize) -> Operands<'a> {
    Operands {
        a,
        lda: k_p,
        m_pad,
        b,
        plane: n_pad,
        n_block: BLOCK,
        seg_k: k_p,
        taps: &[(0, 0)],
    }
}

/// `Cᵀ = W·xᵀ`: the packed weight `[m_pad][k_p]` is A, x's bf16 rows `a` become the B pairs;
/// block `(m0, n0)` of Cᵀ lands transposed in `[rows, d_out]`.
fn transposed(a: &[u16], rows: usize, bits: &[u16], (d_in, d_out): (usize, usize), bias: Option<&[f32]>) -> Vec<f32> {
    let (m_pad, k_p) = padded(d_out, d_in);
    let n_pad = rows.next_multiple_of(BLOCK);
    let mut b = take_pairs(k_p / 2 * n_pad);
    pairs_of_rows(a, rows, k_p, &mut b, n_pad);
    let ops = plain_gemm(bits, m_pad, k_p, &b, n_pad);
    let mut out = scratch::output(rows * d_out);
    let dst = Out(out.as_mut_ptr());
    run(&ops, n_pad, &|m0, n0, blk| {
        for i in 0..BLOCK.min(d_out.saturating_sub(m0)) {
            let add = bias.map_or(0.0, |b| b[m0 + i]);
            for j in 0..BLOCK.min(rows.saturating_sub(n0)) {
                // SAFETY: row n0 + j < rows, column m0 + i < d_out; only this task writes them.
                unsafe { *dst.at((n0 + j) * d_out + m0 + i) = blk[i * BLOCK + j] + add };
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
        let bits = pack_linear(w, d_in, d_out);
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
