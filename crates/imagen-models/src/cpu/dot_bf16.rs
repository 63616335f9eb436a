//! The bf16 GEMM of `amx.rs` on AVX512-BF16 dot products (`vdpbf16ps`), for CPUs that have
//! those but no AMX tiles (Cooper Lake, AMD Zen 4 and 5): the same operands, the same sums laid
//! out the same way, so every bf16 kernel runs on either.
//!
//! One pass keeps 8 rows × 32 columns of C in 16 zmm registers; per pair of k it loads two
//! vectors of B's VNNI pairs and broadcasts each row's A pair against them.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::operands::{BLOCK, Operands};

/// Whether this CPU has AVX512-BF16 (and AVX-512F). Asked once.
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Rows of C per register pass.
const ROWS: usize = 8;

/// [`super::amx::gemm_into`]'s loop on dot products: C blocks `(mi, ni)` at `at(mi, ni)` with
/// row stride `ldc`; sums over every segment and all of k, `c` overwritten.
///
/// Panics if AVX512-BF16 is not [`available`]. The caller has checked the operands' bounds
/// (`Operands::check`) and `c`'s size.
pub(crate) fn gemm_blocks(
    ops: &Operands,
    m_blocks: std::ops::Range<usize>,
    n_range: std::ops::Range<usize>,
    c: &mut [f32],
    at: &dyn Fn(usize, usize) -> usize,
    ldc: usize,
) {
    assert!(available(), "AVX512-BF16 is not available");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features were detected.
    unsafe {
        blocks(ops, m_blocks, n_range, c, at, ldc)
    }
}

/// k per pass: a column block's B panel this deep (24 KB of pairs) is copied contiguous once and
/// then read from L1 by every row of the pass. Read in place, B's pair-rows are `plane` apart
/// (17 KB at a 64² conv), a stride the prefetchers do not follow: the kernel waited on L2.
const KC: usize = 384;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn blocks(
    ops: &Operands,
    m_blocks: std::ops::Range<usize>,
    n_range: std::ops::Range<usize>,
    c: &mut [f32],
    at: &dyn Fn(usize, usize) -> usize,
    ldc: usize,
) {
    let nb_count = n_range.len() / BLOCK;
    if ops.seg_k == 0 {
        return; // as the tile loop: nothing to sum
    }
    let mut panel = vec![0u32; KC / 2 * BLOCK];
    for (s, &(ac, b0)) in ops.taps.iter().enumerate() {
        for k0 in (0..ops.seg_k).step_by(KC) {
            let pairs = (k0 + KC).min(ops.seg_k) / 2 - k0 / 2;
            let first = s == 0 && k0 == 0;
            for ni in 0..nb_count {
                let n0 = n_range.start + ni * BLOCK;
                let b = &ops.b[b0 + n0 / BLOCK * ops.n_block..];
                for (p, dst) in panel.chunks_exact_mut(BLOCK).take(pairs).enumerate() {
                    dst.copy_from_slice(&b[(k0 / 2 + p) * ops.plane..][..BLOCK]);
                }
                for (mi, mb) in m_blocks.clone().enumerate() {
                    for r0 in (0..BLOCK).step_by(ROWS) {
                        let c0 = at(mi, ni) + r0 * ldc;
                        let rows: [&[u16]; ROWS] =
                            std::array::from_fn(|i| &ops.a[(mb * BLOCK + r0 + i) * ops.lda + ac + k0..][..2 * pairs]);
                        let sums = &mut c[c0..][..(ROWS - 1) * ldc + BLOCK];
                        pass(&panel[..pairs * BLOCK], rows, sums, ldc, first);
                    }
                }
            }
        }
    }
}

/// `ROWS` rows of A (their `2·pairs` columns of this pass) times the panel's 32 columns, added to
/// `c` (rows `ldc` apart), or written over it when `first`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn pass(panel: &[u32], rows: [&[u16]; ROWS], c: &mut [f32], ldc: usize, first: bool) {
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    if !first {
        for (i, a) in acc.iter_mut().enumerate() {
            let row = &c[i * ldc..][..BLOCK];
            // SAFETY: 32 f32 in `row`.
            unsafe { *a = [_mm512_loadu_ps(row.as_ptr()), _mm512_loadu_ps(row.as_ptr().add(16))] };
        }
    }
    let a_rows: [*const u16; ROWS] = rows.map(<[u16]>::as_ptr);
    for (p, q) in panel.chunks_exact(BLOCK).enumerate() {
        // SAFETY: `q` is 32 pairs; every row holds 2·pairs values (pair p at 2p); a vector of
        // pairs is a vector of bf16.
        unsafe {
            let lo: __m512bh = std::mem::transmute(_mm512_loadu_si512(q.as_ptr().cast()));
            let hi: __m512bh = std::mem::transmute(_mm512_loadu_si512(q.as_ptr().add(16).cast()));
            for (a, row) in acc.iter_mut().zip(&a_rows) {
                let pair = row.add(2 * p).cast::<i32>().read_unaligned();
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                a[0] = _mm512_dpbf16_ps(a[0], x, lo);
                a[1] = _mm512_dpbf16_ps(a[1], x, hi);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        let row = &mut c[i * ldc..][..BLOCK];
        // SAFETY: 32 f32 in `row`.
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), a[1]);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod timing {
    use super::*;

    /// Not a test: this CPU's `vdpbf16ps` and f32 FMA peaks, one thread, 16 independent sums.
    /// `cargo test --release -p imagen-models --lib -- --ignored dot_peak --nocapture`
    #[test]
    #[ignore]
    fn dot_peak() {
        if !available() {
            return;
        }
        #[target_feature(enable = "avx512f,avx512bf16")]
        fn dots(n: usize) -> f32 {
            let mut acc = [_mm512_setzero_ps(); 16];
            // SAFETY: plain bit patterns reinterpreted as bf16 vectors.
            let (a, b): (__m512bh, __m512bh) = unsafe {
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f80_3f80)),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3c00_3c00)),
                )
            };
            for _ in 0..n {
                for x in acc.iter_mut() {
                    *x = _mm512_dpbf16_ps(*x, a, b);
                }
            }
            acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
        }
        #[target_feature(enable = "avx512f")]
        fn fmas(n: usize) -> f32 {
            let mut acc = [_mm512_setzero_ps(); 16];
            let (a, b) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1e-4));
            for _ in 0..n {
                for x in acc.iter_mut() {
                    *x = _mm512_fmadd_ps(*x, a, b);
                }
            }
            acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
        }
        let n = 20_000_000;
        let t = std::time::Instant::now();
        // SAFETY: the features were detected.
        let r = unsafe { dots(n) };
        let dots_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        // SAFETY: as above.
        let r2 = unsafe { fmas(n) };
        let fma_s = t.elapsed().as_secs_f64();
        // a vdpbf16ps is 16 lanes × 2 products + 2 sums, an f32 FMA 16 × 2
        println!(
            "vdpbf16ps {:.1} GFLOP/s, f32 FMA {:.1} GFLOP/s ({r} {r2})",
            (n * 16 * 64) as f64 / dots_s / 1e9,
            (n * 16 * 32) as f64 / fma_s / 1e9
        );
    }
}
