//! Convolutions and linear layers with bf16 weights, on AMX tiles (`amx.rs`): activations are
//! rounded to bf16 as they are packed, products accumulate in f32, bias and output stay f32.
//!
//! Weights are laid out once, at load ([`pack_conv`], [`pack_linear`]): `[m_pad][taps][cin_p]`
//! bf16, the output channels (m) padded with zero rows to a multiple of 32 and the input
//! channels of each tap to a multiple of 32. burn sees the same storage as an ordinary strided
//! `[cout, cin, kh, kw]` (or `[d_in, d_out]`) tensor, so its own ops still read it.
//!
//! A convolution is the shifted GEMM of `conv.rs` in bf16: the input is padded once into
//! channel-pair planes (`[cin_p/2][plane]` of VNNI pairs), tap `(i, j)` reads them shifted by
//! `i·wp + j`, and the output is computed on the padded width, the extra columns discarded.

use rayon::prelude::*;

use super::amx::{self, BLOCK, KSTEP, Operands};
use super::geometry::Conv;
use super::norm;
use super::scratch;

mod linear;
pub(crate) use linear::{Weight, linear};

/// The padded sizes of a packed weight: `(m_pad, cin_p)`.
pub(crate) fn padded(m: usize, cin: usize) -> (usize, usize) {
    (m.next_multiple_of(BLOCK), cin.next_multiple_of(KSTEP))
}

/// `[cout, cin, kh, kw]` f32 → `[m_pad][kh·kw][cin_p]` bf16 bits.
pub(crate) fn pack_conv(w: &[f32], cout: usize, cin: usize, kh: usize, kw: usize) -> Vec<u16> {
    let (m_pad, cin_p) = padded(cout, cin);
    let taps = kh * kw;
    let mut out = vec![0u16; m_pad * taps * cin_p];
    out.par_chunks_mut(taps * cin_p)
        .take(cout)
        .enumerate()
        .for_each(|(o, row)| {
            for t in 0..taps {
                for c in 0..cin {
                    row[t * cin_p + c] = amx::bf16(w[(o * cin + c) * taps + t]);
                }
            }
        });
    out
}

/// `[d_in, d_out]` f32 (burn's linear weight) → `[m_pad][k_p]` bf16 bits, transposed (one row
/// per output, padded with zeros: [`padded`]`(d_out, d_in)`): the GEMM's A operand, which burn
/// sees as a strided `[d_in, d_out]` view. Tiles of 64 × 64 keep the transpose in cache.
pub(crate) fn pack_linear(w: &[f32], d_in: usize, d_out: usize) -> Vec<u16> {
    const T: usize = 64;
    assert_eq!(w.len(), d_in * d_out);
    let (m_pad, k_p) = padded(d_out, d_in);
    let mut out = vec![0u16; m_pad * k_p];
    out.par_chunks_mut(T * k_p).enumerate().for_each(|(c, rows)| {
        let n0 = c * T;
        let nt = (rows.len() / k_p).min(d_out.saturating_sub(n0));
        for k0 in (0..d_in).step_by(T) {
            for k in k0..(k0 + T).min(d_in) {
                let src = &w[k * d_out + n0..][..nt];
                for (j, &v) in src.iter().enumerate() {
                    rows[j * k_p + k] = amx::bf16(v);
                }
            }
        }
    });
    out
}

/// Output columns (of C) per parallel task: 8 blocks, a 256-wide panel of B that stays in L2
/// while every row block of A streams past it.
const N_TASK: usize = 8 * BLOCK;
/// Row blocks of A per pass over a task's panel: 128 rows × k of the weights (≤ 0.7 MB at
/// k = 2880) stay in L2 across the panel's 8 column blocks.
const M_CHUNK: usize = 4;

/// A raw output pointer shared by tasks that write disjoint elements (here and in
/// `attention_amx.rs`).
#[derive(Clone, Copy)]
pub(super) struct Out(pub(super) *mut f32);
// SAFETY: every user has each task write a disjoint set of elements.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// # Safety
    /// `i` must be inside the allocation (as `pointer::add`).
    pub(super) unsafe fn at(&self, i: usize) -> *mut f32 {
        // SAFETY: forwarded to the caller.
        unsafe { self.0.add(i) }
    }
}

/// Runs `ops` over C's columns `0..n_end` in parallel tasks, one per (column chunk, row
/// chunk); `emit(m0, n0, block)` must only write elements that belong to that block.
fn run(ops: &Operands, n_end: usize, emit: &(dyn Fn(usize, usize, &[f32; BLOCK * BLOCK]) + Sync)) {
    let m_blocks = ops.m_pad / BLOCK;
    let m_chunks = m_blocks.div_ceil(M_CHUNK);
    (0..n_end.div_ceil(N_TASK) * m_chunks).into_par_iter().for_each(|t| {
        let (nc, mc) = (t / m_chunks, t % m_chunks);
        let cols = nc * N_TASK..((nc + 1) * N_TASK).min(n_end);
        let rows = mc * M_CHUNK..((mc + 1) * M_CHUNK).min(m_blocks);
        amx::gemm(ops, rows, cols, &mut |m, n, blk| emit(m, n, blk));
    });
}

/// The output size of `c` with `stride`.
pub(crate) fn strided_hw(c: &Conv, stride: usize) -> (usize, usize) {
    let (ho, wo) = c.out_hw();
    ((ho - 1) / stride + 1, (wo - 1) / stride + 1)
}

/// A convolution's input and what is done to it as it is read (so that the normalised or
/// upsampled tensor is never built: at a 512² VAE layer each is 134–268 MB).
#[derive(Clone, Copy)]
pub(crate) struct Input<'a> {
    /// `[batch, cin, h / up, w / up]` for a conv whose input is `c.h × c.w`
    pub x: &'a [f32],
    /// per `(batch, channel)`: `x·scale + shift` ([`norm::affine`], the group norm's), then SiLU
    /// when `silu`
    pub affine: Option<&'a [(f32, f32)]>,
    pub silu: bool,
    /// nearest-neighbour upsampling factor (1 or 2)
    pub up: usize,
}

impl<'a> Input<'a> {
    pub(crate) fn plain(x: &'a [f32]) -> Self {
        Input {
            x,
            affine: None,
            silu: false,
            up: 1,
        }
    }
}

/// x: `[batch, cin, h, w]` (as `input` says), weight packed by [`pack_conv`], bias `[cout]` →
/// `[batch, cout, ho, wo]` ([`strided_hw`]). A stride above 1 (the downsamplers: three per UNet)
/// computes the stride-1 output and keeps every `stride`-th row and column.
pub(crate) fn conv2d(c: Conv, stride: usize, input: Input, weight: &[u16], bias: Option<&[f32]>) -> Vec<f32> {
    let (m_pad, cin_p) = padded(c.cout, c.cin);
    let taps = c.kh * c.kw;
    let up = input.up;
    assert!(up >= 1 && c.h.is_multiple_of(up) && c.w.is_multiple_of(up));
    let (hs, ws) = (c.h / up, c.w / up);
    let x = input.x;
    assert_eq!(x.len(), c.batch * c.cin * hs * ws);
    let plain = input.affine.is_none() && up == 1;
    assert_eq!(weight.len(), m_pad * taps * cin_p);
    assert!(stride >= 1);
    let (hp, wp) = c.padded_hw();
    let (ho1, wo1) = c.out_hw();
    let (ho, wo) = strided_hw(&c, stride);
    let n_end = (ho1 * wp).next_multiple_of(BLOCK);
    // the last block's last tap reads (kh − 1)·wp + kw − 1 past its column
    let plane = (n_end + (c.kh - 1) * wp + c.kw - 1).max(hp * wp).next_multiple_of(16);
    let pairs = cin_p / 2;
    let tap_offsets: Vec<(usize, usize)> = (0..taps).map(|t| (t * cin_p, (t / c.kw) * wp + t % c.kw)).collect();
    let mut out = scratch::output(c.batch * c.cout * ho * wo);
    let mut xp = take_pairs(pairs * plane);
    let [pt, pl, _, _] = c.pad;
    for bi in 0..c.batch {
        let xb = &x[bi * c.cin * hs * ws..][..c.cin * hs * ws];
        let affine = input.affine.map(|a| &a[bi * c.cin..][..c.cin]);
        // every element written (borders and tail zero): the buffer is reused uncleared
        xp.par_chunks_mut(plane).enumerate().for_each(|(p, dst)| {
            let zeros = vec![0f32; c.w];
            let chan = |ch: usize, y: usize| {
                if ch < c.cin {
                    &xb[(ch * hs + y / up) * ws..][..ws]
                } else {
                    &zeros[..ws]
                }
            };
            // row y of channel ch as the conv sees it: normalised, then upsampled
            let (mut lo, mut hi, mut t) = (vec![0f32; c.w], vec![0f32; c.w], vec![0f32; ws]);
            let mut seen = |ch: usize, y: usize, out: &mut [f32]| {
                let src = match affine {
                    Some(a) if ch < c.cin => {
                        norm::affine(&mut t, chan(ch, y), a[ch], input.silu);
                        &t[..]
                    }
                    _ => chan(ch, y),
                };
                if up == 1 {
                    out.copy_from_slice(src);
                } else {
                    for (o, v) in out.chunks_exact_mut(up).zip(src) {
                        o.fill(*v);
                    }
                }
            };
            dst[..pt * wp + pl].fill(0);
            for y in 0..c.h {
                let row = &mut dst[(y + pt) * wp + pl..][..wp];
                if plain {
                    amx::pairs_into(&mut row[..c.w], chan(2 * p, y), chan(2 * p + 1, y));
                } else {
                    seen(2 * p, y, &mut lo);
                    seen(2 * p + 1, y, &mut hi);
                    amx::pairs_into(&mut row[..c.w], &lo, &hi);
                }
                row[c.w..].fill(0); // right border, then the next row's left border
            }
            dst[(c.h + pt) * wp + pl..].fill(0);
        });
        let ops = Operands {
            a: weight,
            lda: taps * cin_p,
            m_pad,
            b: &xp,
            plane,
            n_block: BLOCK,
            seg_k: cin_p,
            taps: &tap_offsets,
        };
        let dst = Out(out[bi * c.cout * ho * wo..].as_mut_ptr());
        run(&ops, n_end, &|m0, n0, blk| {
            // the block's columns as runs of one output row: (first column, output offset, length)
            let mut runs = [(0usize, 0usize, 0usize); BLOCK];
            let mut count = 0;
            let mut j = 0;
            while j < BLOCK {
                let n = n0 + j;
                let (y, x) = (n / wp, n % wp);
                if stride > 1 {
                    // single columns: every stride-th of every stride-th row
                    if y % stride == 0 && x % stride == 0 && y < ho1 && x < wo1 {
                        runs[count] = (j, (y / stride) * wo + x / stride, 1);
                        count += 1;
                    }
                    j += 1;
                    continue;
                }
                let len = (wp - x).min(BLOCK - j);
                if y < ho && x < wo {
                    runs[count] = (j, y * wo + x, len.min(wo - x));
                    count += 1;
                }
                j += len;
            }
            for i in 0..BLOCK.min(c.cout.saturating_sub(m0)) {
                let b = bias.map_or(0.0, |b| b[m0 + i]);
                let src = &blk[i * BLOCK..][..BLOCK];
                for &(j, off, len) in &runs[..count] {
                    // SAFETY: (m0 + i, oy, ox..ox + len) is inside this image's output (len stops
                    // at wo), and only the task that owns these columns writes them.
                    let d = unsafe { std::slice::from_raw_parts_mut(dst.at((m0 + i) * ho * wo + off), len) };
                    for (d, s) in d.iter_mut().zip(&src[j..j + len]) {
                        *d = s + b;
                    }
                }
            }
        });
    }
    give_pairs(xp);
    out
}

thread_local! {
    static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The calling thread's packed-input buffer, at least `len` long (contents unspecified). Reused:
/// a fresh one per call is megabytes of page faults.
fn take_pairs(len: usize) -> Vec<u32> {
    let mut v = PAIRS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if v.len() < len {
        v.resize(len, 0);
    }
    v.truncate(len);
    v
}

fn give_pairs(v: Vec<u32>) {
    PAIRS.with(|b| *b.borrow_mut() = v);
}

/// Frees the calling thread's packed-input buffer (with the other scratch buffers).
pub(crate) fn release() {
    PAIRS.with(|b| *b.borrow_mut() = Vec::new());
}

#[cfg(test)]
mod tests {
    use super::super::conv::tests::{data, naive};
    use super::*;

    fn round(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| f32::from_bits((amx::bf16(x) as u32) << 16)).collect()
    }

    /// Against the f32 definition on bf16-rounded operands (what the tiles multiply).
    #[test]
    fn conv_matches_definition() {
        if !amx::available() {
            eprintln!("no AMX-BF16 here: skipped");
            return;
        }
        for (batch, cin, cout, h, w, k, pad) in [
            (2, 4, 40, 9, 7, 3, [1, 1, 1, 1]),
            (1, 64, 32, 8, 8, 3, [1, 1, 1, 1]),
            (2, 33, 3, 5, 11, 1, [0; 4]),
            (1, 8, 70, 6, 6, 3, [0, 1, 2, 0]),
        ] {
            let c = Conv {
                batch,
                cin,
                cout,
                h,
                w,
                kh: k,
                kw: k,
                pad,
            };
            let x = data(batch * cin * h * w, 1);
            let wt = data(cout * cin * k * k, 2);
            let bias = data(cout, 3);
            let want = naive(c, &round(&x), &round(&wt), Some(&bias));
            let packed = pack_conv(&wt, cout, cin, k, k);
            let got = conv2d(c, 1, Input::plain(&x), &packed, Some(&bias));
            // stride 2: every other row and column of the stride-1 result
            let (ho1, wo1) = c.out_hw();
            let (ho, wo) = strided_hw(&c, 2);
            let got2 = conv2d(c, 2, Input::plain(&x), &packed, Some(&bias));
            for (i, g) in got2.iter().enumerate() {
                let (bo, y, xx) = (i / (ho * wo), i / wo % ho, i % wo);
                assert_eq!(*g, got[(bo * ho1 + 2 * y) * wo1 + 2 * xx], "{c:?} stride 2 [{i}]");
            }
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()) * cin as f32,
                    "{c:?} [{i}] {g} vs {w}"
                );
            }
        }
    }

    /// Normalising and upsampling as the input is read gives bit for bit what the conv gives
    /// on the group norm's output, upsampled.
    #[test]
    fn fused_input_equals_separate_ops() {
        if !amx::available() {
            eprintln!("no AMX-BF16 here: skipped");
            return;
        }
        let (batch, cin, cout, hs, ws, groups) = (2, 12, 20, 5, 7, 3);
        let x = data(batch * cin * hs * ws, 9);
        let (gamma, beta) = (data(cin, 10), data(cin, 11));
        let params = norm::affine_params(&x, batch, cin, hs * ws, groups, Some(&gamma), Some(&beta), 1e-6);
        let normed = norm::group_norm(&x, batch, cin, hs * ws, groups, Some(&gamma), Some(&beta), 1e-6, true);
        let mut upsampled = vec![0f32; normed.len() * 4];
        for (i, v) in upsampled.iter_mut().enumerate() {
            let (bc, y, xx) = (i / (4 * hs * ws), i / (2 * ws) % (2 * hs), i % (2 * ws));
            *v = normed[(bc * hs + y / 2) * ws + xx / 2];
        }
        let wt = data(cout * cin * 9, 12);
        let packed = pack_conv(&wt, cout, cin, 3, 3);
        for up in [1, 2] {
            let c = Conv {
                batch,
                cin,
                cout,
                h: hs * up,
                w: ws * up,
                kh: 3,
                kw: 3,
                pad: [1; 4],
            };
            let separate = if up == 1 { &normed } else { &upsampled };
            let want = conv2d(c, 1, Input::plain(separate), &packed, None);
            let input = Input {
                x: &x,
                affine: Some(&params),
                silu: true,
                up,
            };
            let got = conv2d(c, 1, input, &packed, None);
            assert!(
                got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
                "up {up}"
            );
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Not a test: `cargo test --release --workspace --lib -- --ignored lowp_timing --nocapture`.
    #[test]
    #[ignore]
    fn lowp_timing() {
        if !amx::available() {
            return;
        }
        let (cin, cout, hw) = (320usize, 320usize, 64usize);
        let c = Conv {
            batch: 1,
            cin,
            cout,
            h: hw,
            w: hw,
            kh: 3,
            kw: 3,
            pad: [1; 4],
        };
        let x: Vec<f32> = (0..cin * hw * hw).map(|i| (i % 7) as f32).collect();
        let w = pack_conv(&vec![0.5; cout * cin * 9], cout, cin, 3, 3);
        let (_, cin_p) = padded(cout, cin);
        let wp = hw + 2;
        let n_end = (hw * wp).next_multiple_of(BLOCK);
        let plane = (n_end + 2 * wp + 2).next_multiple_of(16);
        let xp = vec![0u32; cin_p / 2 * plane];
        let taps: Vec<(usize, usize)> = (0..9).map(|t| (t * cin_p, (t / 3) * wp + t % 3)).collect();
        let ops = Operands {
            a: &w,
            lda: 9 * cin_p,
            m_pad: 320,
            b: &xp,
            plane,
            n_block: BLOCK,
            seg_k: cin_p,
            taps: &taps,
        };
        let flop = 2.0 * (cout * cin * 9 * hw * hw) as f64;
        let (mut full, mut g, mut one) = (1f64, 1f64, 1f64);
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let _ = conv2d(c, 1, Input::plain(&x), &w, None);
            full = full.min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            run(&ops, n_end, &|_, _, _| {});
            g = g.min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            let mut blk = 0;
            amx::gemm(&ops, 0..4, 0..8 * BLOCK, &mut |_, _, _| blk += 1);
            one = one.min(t.elapsed().as_secs_f64() * (10.0 / 4.0) * (n_end as f64 / 256.0));
        }
        {
            eprintln!(
                "full {:.2} ms ({:.0} GF/s), gemm only {:.2} ms ({:.0} GF/s), one thread {:.2} ms ({:.0} GF/s)",
                full * 1e3,
                flop / full / 1e9,
                g * 1e3,
                flop / g / 1e9,
                one * 1e3,
                flop / one / 1e9
            );
        }
    }
}
