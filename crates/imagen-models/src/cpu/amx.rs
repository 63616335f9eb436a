//! bf16 GEMM on AMX tiles (Sapphire Rapids and later), through stable `asm!`.
//!
//! `C[m×n] = A[m×k] · B[k×n]` in f32, A and B in bf16. A is row-major (the weights, laid out once
//! at load); B is VNNI-packed: row `p` of B's storage holds the pairs `(B[2p][j], B[2p+1][j])`
//! for every column `j`, as one `u32` each. The caller describes B as pair-rows `plane` apart,
//! and K as `taps` segments of `seg_k` each, every segment reading A's columns at its own offset
//! and B from its own start (a convolution's kernel taps over a shifted input: no im2col).
//!
//! The microkernel holds a 32×32 block of C in four tiles (tmm0–3), two A tiles (tmm4–5, 16
//! rows × 32 k) and two B tiles (tmm6–7, 16 pair-rows × 16 columns), four `tdpbf16ps` per 32 k.

use std::arch::asm;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::dot_bf16;
pub(crate) use super::operands::{BLOCK, KSTEP, Operands};

/// Whether this CPU runs the bf16 GEMM: on AMX tiles ([`tiles`]), or else on AVX512-BF16 dot
/// products (`dot_bf16.rs`, same operands and results).
pub(crate) fn available() -> bool {
    tiles() || dot_bf16::available()
}

/// Whether this CPU has AMX-BF16 and the OS let this process use the tile registers. Asked once.
pub(crate) fn tiles() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| cpu_has_amx_bf16() && request_tile_permission())
}

/// Which instructions [`gemm_into`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Tiles,
    DotProducts,
}

/// Tiles where the CPU has them, unless [`prefer_tiles`] said not to.
static USE_TILES: AtomicBool = AtomicBool::new(true);

/// Whether the GEMM may use AMX tiles (`false`: AVX512-BF16 dot products even where tiles
/// exist, to measure or test what CPUs without AMX run). Process-wide.
pub(crate) fn prefer_tiles(on: bool) {
    USE_TILES.store(on, Ordering::Relaxed);
}

impl Kernel {
    /// The kernel [`gemm_into`] uses on this CPU.
    pub(crate) fn chosen() -> Kernel {
        if tiles() && USE_TILES.load(Ordering::Relaxed) {
            Kernel::Tiles
        } else {
            Kernel::DotProducts
        }
    }
}

fn cpu_has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `is_x86_feature_detected!("amx-bf16")` is unstable (rust #126622): CPUID leaf 7,
        // sub-leaf 0, EDX bit 22 (AMX-BF16) and 24 (AMX-TILE).
        let max = std::arch::x86_64::__cpuid(0).eax;
        if max < 7 {
            return false;
        }
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Linux hands out the tile data state only on request (ARCH_REQ_XCOMP_PERM for
/// XFEATURE_XTILEDATA), once per process.
fn request_tile_permission() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a syscall with integer arguments; failure is reported by its return value.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// f32 → bf16 bits, rounding to nearest even (as PyTorch's and AMX's conversions do); NaN stays NaN.
#[inline(always)]
pub(crate) fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    // branch-free so that packing loops vectorise
    if x.is_nan() { ((b >> 16) | 0x40) as u16 } else { rounded }
}

/// Whether the CPU rounds f32 to bf16 itself (`vcvtneps2bf16`, AVX512-BF16; every AMX CPU has it).
pub(crate) fn native_bf16() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    return *OK.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    });
    #[cfg(not(target_arch = "x86_64"))]
    return *OK.get_or_init(|| false);
}

/// 16 values rounded to bf16 by the CPU (to nearest even, as [`bf16`]; NaN stays NaN, but
/// subnormal inputs become zero: below 1.2e-38, where no weight or activation lives).
///
/// # Safety
/// AVX512-BF16 must be present ([`native_bf16`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
pub(crate) unsafe fn round16(src: &[f32; 16]) -> [u16; 16] {
    use std::arch::x86_64::*;
    // SAFETY: 16 f32 in, 16 u16 out; the features are the caller's promise.
    unsafe {
        let b = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr()));
        std::mem::transmute::<__m256bh, [u16; 16]>(b)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn round_native(dst: &mut [u16], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (d, s) in (&mut d).zip(&mut s) {
        // SAFETY: the features are enabled on this function.
        d.copy_from_slice(&unsafe { round16(s.try_into().expect("16")) });
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = bf16(*s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn pairs_native(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
    let mut d = dst.chunks_exact_mut(16);
    let (mut l, mut h) = (lo.chunks_exact(16), hi.chunks_exact(16));
    for ((d, l), h) in (&mut d).zip(&mut l).zip(&mut h) {
        // SAFETY: the features are enabled on this function.
        let (a, b) = unsafe { (round16(l.try_into().expect("16")), round16(h.try_into().expect("16"))) };
        for i in 0..16 {
            d[i] = a[i] as u32 | (b[i] as u32) << 16;
        }
    }
    for ((d, l), h) in d.into_remainder().iter_mut().zip(l.remainder()).zip(h.remainder()) {
        *d = pair(*l, *h);
    }
}

/// `dst[i] = bf16(src[i])`: the CPU's conversion where it has one, else vectorised bit arithmetic.
pub(crate) fn round_into(dst: &mut [u16], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if native_bf16() {
        // SAFETY: the features were detected.
        return unsafe { round_native(dst, src) };
    }
    round_soft(dst, src)
}

/// `dst[i] = pair(lo[i], hi[i])`, as [`round_into`].
pub(crate) fn pairs_into(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if native_bf16() {
        // SAFETY: the features were detected.
        return unsafe { pairs_native(dst, lo, hi) };
    }
    pairs_soft(dst, lo, hi)
}

super::simd::multiversion! {
    fn round_soft(dst: &mut [u16], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16(*s);
        }
    }
}

super::simd::multiversion! {
    fn pairs_soft(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
        for ((d, l), h) in dst.iter_mut().zip(lo).zip(hi) {
            *d = pair(*l, *h);
        }
    }
}

/// A pair of bf16 values as one VNNI element (`lo` first in memory).
#[inline(always)]
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    bf16(lo) as u32 | (bf16(hi) as u32) << 16
}

#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Every tile 16 rows × 64 bytes.
const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// k per pass over a task's column blocks: a 32-row block of A this deep (24 KB) stays in L1
/// while the passes read B from L2; the C blocks go to memory and back between passes.
const KC: usize = 384;

/// Computes the 32×32 blocks of C with rows `m_blocks` and columns `n_range` (multiples of
/// [`BLOCK`]), handing each to `emit(m0, n0, block)`, block row-major 32×32.
///
/// Panics if AMX is not [`available`] or an operand is too short for the range.
pub(crate) fn gemm(
    ops: &Operands,
    m_blocks: std::ops::Range<usize>,
    n_range: std::ops::Range<usize>,
    emit: &mut dyn FnMut(usize, usize, &[f32; BLOCK * BLOCK]),
) {
    thread_local! {
        // reused: a fresh 128 KB buffer per call is an mmap and its page faults every time
        static ACC: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let (mb_count, nb_count) = (m_blocks.len(), n_range.len() / BLOCK);
    let mut acc = ACC.with(|a| std::mem::take(&mut *a.borrow_mut()));
    acc.resize(mb_count * nb_count * BLOCK * BLOCK, 0.0);
    // block (mi, ni) of the sums at (mi · nb_count + ni) · 1024: row stride 32, block-major
    gemm_into(ops, m_blocks.clone(), n_range.clone(), &mut acc, Layout::Blocks);
    let mut blk = [0f32; BLOCK * BLOCK];
    for (mi, mb) in m_blocks.enumerate() {
        for ni in 0..nb_count {
            blk.copy_from_slice(&acc[(mi * nb_count + ni) * BLOCK * BLOCK..][..BLOCK * BLOCK]);
            emit(mb * BLOCK, n_range.start + ni * BLOCK, &blk);
        }
    }
    ACC.with(|a| *a.borrow_mut() = acc);
}

/// Where [`gemm_into`] keeps the sums.
#[derive(Clone, Copy)]
pub(crate) enum Layout {
    /// one 32×32 row-major block after another, column blocks innermost
    Blocks,
    /// a row-major `[m_blocks·32, n_range.len()]` matrix with this row stride (≥ the width)
    Rows(usize),
}

/// C for rows `m_blocks` and columns `n_range` straight into `c` (its first element is
/// `(m_blocks.start·32, n_range.start)`), laid out as `layout` says.
///
/// Loop order: per segment and per `KC` of it, every (row block, column block) pair, so one A
/// block is reused from L1 across the column blocks; the partial sums go to `c` and back
/// between passes (keep it within L2).
///
/// Panics if the bf16 GEMM is not [`available`], an operand is too short for the range or `c`
/// too small.
pub(crate) fn gemm_into(
    ops: &Operands,
    m_blocks: std::ops::Range<usize>,
    n_range: std::ops::Range<usize>,
    c: &mut [f32],
    layout: Layout,
) {
    gemm_into_with(Kernel::chosen(), ops, m_blocks, n_range, c, layout)
}

/// [`gemm_into`] with a given kernel.
fn gemm_into_with(
    kernel: Kernel,
    ops: &Operands,
    m_blocks: std::ops::Range<usize>,
    n_range: std::ops::Range<usize>,
    c: &mut [f32],
    layout: Layout,
) {
    assert!(n_range.start.is_multiple_of(BLOCK) && n_range.end.is_multiple_of(BLOCK));
    assert!(m_blocks.end * BLOCK <= ops.m_pad);
    ops.check(n_range.end);
    let (mb_count, nb_count) = (m_blocks.len(), n_range.len() / BLOCK);
    // (offset of block (mi, ni), row stride) in elements
    let (ldc, at): (usize, Box<dyn Fn(usize, usize) -> usize>) = match layout {
        Layout::Blocks => (BLOCK, Box::new(move |mi, ni| (mi * nb_count + ni) * BLOCK * BLOCK)),
        Layout::Rows(ld) => {
            assert!(ld >= n_range.len());
            (ld, Box::new(move |mi, ni| mi * BLOCK * ld + ni * BLOCK))
        }
    };
    if mb_count > 0 && nb_count > 0 {
        assert!(c.len() >= at(mb_count - 1, nb_count - 1) + (BLOCK - 1) * ldc + BLOCK);
    }
    if kernel == Kernel::DotProducts {
        return dot_bf16::gemm_blocks(ops, m_blocks, n_range, c, &*at, ldc);
    }
    assert!(tiles(), "AMX-BF16 is not available");
    let cfg = CONFIG;
    // SAFETY: AMX is available and this process may use it; the config is 64 bytes, aligned.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack)) };
    let lda_b = ops.lda * 2;
    let ldb_b = ops.plane * 4;
    let ldc_b = ldc * 4;
    let mut first = true;
    for &(ac, b0) in ops.taps {
        for k0 in (0..ops.seg_k).step_by(KC) {
            let k1 = (k0 + KC).min(ops.seg_k);
            for (mi, mb) in m_blocks.clone().enumerate() {
                let a0 = ops.a[mb * BLOCK * ops.lda + ac..].as_ptr();
                let a1 = a0.wrapping_add(16 * ops.lda);
                for ni in 0..nb_count {
                    let n0 = n_range.start + ni * BLOCK;
                    let cp = c[at(mi, ni)..].as_mut_ptr();
                    let (c0, c1, c2, c3) = (
                        cp,
                        cp.wrapping_add(16),
                        cp.wrapping_add(16 * ldc),
                        cp.wrapping_add(16 * ldc + 16),
                    );
                    // SAFETY: four 16×16 f32 quadrants of this block of `c` (bounded above).
                    unsafe {
                        if first {
                            asm!(
                                "tilezero tmm0",
                                "tilezero tmm1",
                                "tilezero tmm2",
                                "tilezero tmm3",
                                options(nostack, nomem)
                            );
                        } else {
                            asm!(
                                "tileloadd tmm0, [{c0} + {s}*1]",
                                "tileloadd tmm1, [{c1} + {s}*1]",
                                "tileloadd tmm2, [{c2} + {s}*1]",
                                "tileloadd tmm3, [{c3} + {s}*1]",
                                c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
                                s = in(reg) ldc_b,
                                options(nostack, readonly)
                            );
                        }
                    }
                    let bb = ops.b[b0 + n0 / BLOCK * ops.n_block..].as_ptr();
                    for kk in (k0..k1).step_by(KSTEP) {
                        let (pa0, pa1) = (a0.wrapping_add(kk), a1.wrapping_add(kk));
                        let pb0 = bb.wrapping_add(kk / 2 * ops.plane);
                        let pb1 = pb0.wrapping_add(16);
                        // SAFETY: `check` bounds every row these tiles read (16 rows of 64 bytes
                        // from each pointer with its stride).
                        unsafe {
                            asm!(
                                "tileloadd tmm4, [{a0} + {sa}*1]",
                                "tileloadd tmm6, [{b0} + {sb}*1]",
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tileloadd tmm7, [{b1} + {sb}*1]",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                "tileloadd tmm5, [{a1} + {sa}*1]",
                                "tdpbf16ps tmm2, tmm5, tmm6",
                                "tdpbf16ps tmm3, tmm5, tmm7",
                                a0 = in(reg) pa0,
                                a1 = in(reg) pa1,
                                b0 = in(reg) pb0,
                                b1 = in(reg) pb1,
                                sa = in(reg) lda_b,
                                sb = in(reg) ldb_b,
                                options(nostack, readonly)
                            )
                        };
                    }
                    // SAFETY: as for the loads above.
                    unsafe {
                        asm!(
                            "tilestored [{c0} + {s}*1], tmm0",
                            "tilestored [{c1} + {s}*1], tmm1",
                            "tilestored [{c2} + {s}*1], tmm2",
                            "tilestored [{c3} + {s}*1], tmm3",
                            c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
                            s = in(reg) ldc_b,
                            options(nostack)
                        )
                    };
                }
            }
            first = false;
        }
    }
    // SAFETY: ends this thread's tile use (cheaper context switches).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_f32(b: u16) -> f32 {
        f32::from_bits((b as u32) << 16)
    }

    #[test]
    fn rounding_matches_half() {
        for x in [
            0.0f32,
            1.0,
            -1.5,
            2.5,
            1e-30,
            65504.0,
            f32::MAX,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
        ] {
            assert_eq!(bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(to_f32(bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn native_rounding_matches_soft_rounding() {
        let src: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 2003) as f32 * 0.37 - 300.0 + i as f32 / 7.0)
            .collect();
        let (mut a, mut b) = (vec![0u16; src.len()], vec![0u16; src.len()]);
        round_into(&mut a, &src);
        round_soft(&mut b, &src);
        assert_eq!(a, b);
        let (mut p, mut q) = (vec![0u32; 500], vec![0u32; 500]);
        pairs_into(&mut p, &src[..500], &src[500..]);
        pairs_soft(&mut q, &src[..500], &src[500..]);
        assert_eq!(p, q);
    }

    /// Two segments with their own A columns and B starts, against the f64 definition on the
    /// bf16-rounded operands.
    #[test]
    fn matches_definition() {
        let (m, m_pad, k, n) = (40, 64, 64, 96);
        let lda = 2 * k + 8;
        let av: Vec<f32> = (0..m_pad * lda)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let a: Vec<u16> = av.iter().map(|&v| bf16(v)).collect();
        let plane = n + 40;
        let bv: Vec<f32> = (0..(2 * k) * plane + 64)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 13.0)
            .collect();
        // VNNI: pair-row p holds rows 2p, 2p+1 of the logical [pairs·2 × plane] matrix
        let rows = bv.len() / plane;
        let b: Vec<u32> = (0..rows / 2 * plane)
            .map(|i| {
                pair(
                    bv[(i / plane * 2) * plane + i % plane],
                    bv[(i / plane * 2 + 1) * plane + i % plane],
                )
            })
            .collect();
        let taps = [(8usize, 0usize), (8 + k, (k / 2) * plane + 3)];
        let ops = Operands {
            a: &a,
            lda,
            m_pad,
            b: &b,
            plane,
            n_block: BLOCK,
            seg_k: k,
            taps: &taps,
        };
        let bf = |i: usize| to_f32(bf16(bv[i]));
        let check = |got: &[f32], kernel: Kernel| {
            for i in 0..m {
                for j in 0..n {
                    let mut want = 0f64;
                    for (s, &(ac, b0)) in taps.iter().enumerate() {
                        for kk in 0..k {
                            let (pr, hi) = (kk / 2, kk % 2);
                            let idx = b0 + pr * plane + j; // VNNI element index
                            let (row, col) = (idx / plane * 2 + hi, idx % plane);
                            let _ = s;
                            want += to_f32(a[i * lda + ac + kk]) as f64 * bf(row * plane + col) as f64;
                        }
                    }
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - want).abs() <= 1e-3 * (1.0 + want.abs()),
                        "{kernel:?} ({i},{j}) {g} vs {want}"
                    );
                }
            }
        };
        for kernel in [Kernel::Tiles, Kernel::DotProducts] {
            if kernel == Kernel::Tiles && !tiles() || kernel == Kernel::DotProducts && !dot_bf16::available() {
                eprintln!("{kernel:?}: not on this CPU, skipped");
                continue;
            }
            let mut got = vec![f32::NAN; m_pad * n];
            gemm_into_with(kernel, &ops, 0..m_pad / BLOCK, 0..n, &mut got, Layout::Rows(n));
            check(&got, kernel);
        }
    }
}
