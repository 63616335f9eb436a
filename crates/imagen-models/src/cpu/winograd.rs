//! 3×3 stride-1 convolution by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray, 2015).
//!
//! A 4×4 output tile costs 36 multiplies per (input, output) channel pair instead of 144, so the
//! GEMM work is a quarter of the direct kernel's. The transforms around the GEMMs are
//! element-wise; they are written to vectorise across tiles:
//! - per image, the zero-padded input is stored *phase-split*: each row as 4 arrays holding
//!   every 4th column (`[rows, 4, g]`), so the 6 columns tile `tx` reads are `phase[p][tx]` and
//!   `phase[p][tx + 1]`: contiguous across tiles;
//! - tiles are processed in blocks of up to [`NT`] (a few tile rows, or part of one): input
//!   transform into `V [36, cin, NT]`, then 36 GEMMs `M_ξ = U_ξ · V_ξ` with the transformed
//!   weights `U [36, cout, cin]`, then the output transform straight into the output rows the
//!   block covers. A block's V and M stay in the core's L2.
//!
//! Rounding: the transforms' coefficients (up to 8, and 1/24 in G) cost some precision: against
//! an f64-accumulated direct convolution the largest error is 2–7e-6 of the output's largest
//! magnitude (unit tests; the model parity tests allow 1e-4 and pass with every 3×3 convolution
//! on this route).

use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

use super::conv::Conv;
use super::gemm::{Mat, MatMut, gemm};
use super::scratch;
use super::simd::{LANES, multiversion};

/// Tiles per block: the GEMMs' m dimension (64 and 128 measured alike; 64 keeps a block's
/// V and M in L2 up to 512 channels and gives more blocks to share between threads).
const NT: usize = 64;

/// 0 = not decided yet, 1 = where it pays, 2 = off, 3 = every 3×3 convolution.
static MODE: AtomicU8 = AtomicU8::new(0);

/// `IMAGEN_CPU_WINOGRAD`: unset or `1` = where it pays, `0` = off (to compare with the direct
/// kernel), `all` = every 3×3 convolution (to measure it where it is not chosen).
fn mode() -> u8 {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let m = match std::env::var("IMAGEN_CPU_WINOGRAD").as_deref() {
                Ok("0") => 2,
                Ok("all") => 3,
                _ => 1,
            };
            MODE.store(m, Ordering::Relaxed);
            m
        }
        m => m,
    }
}

/// Turns the Winograd route on (where it pays) or off for the whole process.
pub(crate) fn set_enabled(on: bool) {
    MODE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

thread_local! {
    /// Set by [`everywhere`]: every 3×3 convolution on this thread takes the route.
    static EVERYWHERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every 3×3 convolution called from this thread on the Winograd route,
/// whatever its size (the parity tests' tiny models are below the size where it pays).
pub(crate) fn everywhere<R>(f: impl FnOnce() -> R) -> R {
    let saved = EVERYWHERE.with(|e| e.replace(true));
    let r = f();
    EVERYWHERE.with(|e| e.set(saved));
    r
}

/// Whether `c` takes this route: 3×3 kernels with at least one block of tiles per thread
/// (blocks are the route's only parallelism). Measured on 2 threads with `imagen bench
/// --component conv` (BENCHMARKS.md): 1.6–2.5× the direct kernel from 128 tiles (2 blocks) up,
/// slower with one block (640 channels at 32², batch 1: 37.5 vs 25.4 ms; 1280 at 16², batch 2:
/// 109 vs 60 ms), where one thread does all the work and rebuilds the transformed weights, 4× the
/// size of the weights, for few tiles.
pub(crate) fn applies(c: &Conv) -> bool {
    if c.kh != 3 || c.kw != 3 {
        return false;
    }
    match mode() {
        2 => false,
        3 => true,
        _ => EVERYWHERE.with(|e| e.get()) || blocks(c) >= rayon::current_num_threads(),
    }
}

/// Blocks of tiles `conv2d` runs `c` in.
fn blocks(c: &Conv) -> usize {
    let (ho, wo) = c.out_hw();
    let (th, tw) = (ho.div_ceil(4), wo.div_ceil(4));
    let geo = Geometry::new(th, tw);
    (c.batch * th).div_ceil(geo.rb) * tw.div_ceil(geo.bw)
}

/// x: `[batch, cin, h, w]`, weight: `[cout, cin, 3, 3]`, bias: `[cout]` → `[batch, cout, ho, wo]`.
pub(crate) fn conv2d(c: Conv, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(c.kh == 3 && c.kw == 3);
    assert_eq!(x.len(), c.batch * c.cin * c.h * c.w);
    assert_eq!(weight.len(), c.cout * c.cin * 9);
    let (ho, wo) = c.out_hw();
    let (th, tw) = (ho.div_ceil(4), wo.div_ceil(4));
    let geo = Geometry::new(th, tw);
    let u = transform_weights(c.cout, c.cin, weight);
    let mut out = scratch::output(c.batch * c.cout * ho * wo);
    let mut xpad = scratch::take_at_least(5, c.batch * c.cin * geo.plane);
    pad_phase_split(&mut xpad, x, c, &geo);
    // Blocks run over the tile rows of all images, so small images still give every thread work.
    let rows = c.batch * th;
    let (row_blocks, col_blocks) = (rows.div_ceil(geo.rb), tw.div_ceil(geo.bw));
    let outp = MatMut::rows(&mut out, wo);
    let (xp, up) = (&xpad[..], &u[..]);
    (0..row_blocks * col_blocks).into_par_iter().for_each(|blk| {
        let (r0, tx0) = ((blk / col_blocks) * geo.rb, (blk % col_blocks) * geo.bw);
        let block = Block {
            r0,
            r1: (r0 + geo.rb).min(rows),
            tx0,
            tx1: (tx0 + geo.bw).min(tw),
        };
        let mut v = scratch::take_at_least(2, 36 * c.cin * NT);
        let mut m = scratch::take_at_least(3, 36 * c.cout * NT);
        let mut tmp = vec![0f32; 24 * (geo.bw + 1)];
        for ci in 0..c.cin {
            for r in block.r0..block.r1 {
                let (bi, ty) = (r / th, r % th);
                let rows6 = &xp[(bi * c.cin + ci) * geo.plane + 4 * ty * geo.rowlen..][..6 * geo.rowlen];
                let voff = ci * NT + geo.tile_offset(block, r);
                input_row(rows6, geo, [block.tx0, block.tx1], &mut tmp, &mut v, [voff, c.cin * NT]);
            }
        }
        for xi in 0..36 {
            let vx = &v[xi * c.cin * NT..][..c.cin * NT];
            let ux = &up[xi * c.cout * c.cin..][..c.cout * c.cin];
            let mx = &mut m[xi * c.cout * NT..][..c.cout * NT];
            block_gemm(c.cout, c.cin, ux, vx, mx);
        }
        // SAFETY: `out` is [batch, cout, ho, wo]; this block writes, in each output plane of
        // the images it covers, the rows of its tile rows and the columns of its tile columns:
        // disjoint from every other block.
        unsafe { output_block(&m, c.cout, bias, &geo, block, outp, [ho, wo]) };
        scratch::give(2, v);
        scratch::give(3, m);
    });
    scratch::give(5, xpad);
    scratch::give(4, u);
    out
}

/// Tile grid and phase-split plane layout of one image.
#[derive(Clone, Copy)]
struct Geometry {
    /// Tile rows and tiles per row of one image.
    th: usize,
    tw: usize,
    /// Column groups per phase: tile `tx` reads groups `tx` and `tx + 1`.
    g: usize,
    /// Floats per padded row (4 phases of `g`).
    rowlen: usize,
    /// Floats per padded channel plane (`4·th + 2` rows).
    plane: usize,
    /// A block is `rb` tile rows × `bw` tile columns, `rb·bw ≤ NT`.
    rb: usize,
    bw: usize,
}

impl Geometry {
    fn new(th: usize, tw: usize) -> Self {
        let g = tw + 1;
        let (rb, bw) = if tw >= NT { (1, NT) } else { (NT / tw, tw) };
        Geometry {
            th,
            tw,
            g,
            rowlen: 4 * g,
            plane: (4 * th + 2) * 4 * g,
            rb,
            bw,
        }
    }

    /// Index of tile row `r`'s first tile within block `b`.
    fn tile_offset(&self, b: Block, r: usize) -> usize {
        if self.rb > 1 { (r - b.r0) * self.tw } else { 0 }
    }
}

/// Tile rows `r0..r1` counted over all images (row `r` is row `r % th` of image `r / th`),
/// tile columns `tx0..tx1`.
#[derive(Clone, Copy)]
struct Block {
    r0: usize,
    r1: usize,
    tx0: usize,
    tx1: usize,
}

impl Block {
    /// Tiles per block row.
    fn n(&self) -> usize {
        self.tx1 - self.tx0
    }
}

/// Writes `x` (`[batch, cin, h, w]`) zero-padded by `c.pad` into `dst` as phase-split planes:
/// padded `(y, x)` at `y·rowlen + (x % 4)·g + x / 4`.
fn pad_phase_split(dst: &mut [f32], x: &[f32], c: Conv, geo: &Geometry) {
    let [t, l, _, _] = c.pad;
    let (h, w, g) = (c.h, c.w, geo.g);
    dst[..c.batch * c.cin * geo.plane]
        .par_chunks_mut(geo.plane)
        .zip(x.par_chunks(h * w))
        .for_each(|(plane, src)| {
            for (y, row) in plane.chunks_mut(geo.rowlen).enumerate() {
                let Some(sy) = y.checked_sub(t).filter(|&sy| sy < h) else {
                    row.fill(0.0);
                    continue;
                };
                let srow = &src[sy * w..][..w];
                for (p, phase) in row.chunks_mut(g).enumerate() {
                    // groups whose column 4·gi + p − l lies in [0, w)
                    let first = l.saturating_sub(p).div_ceil(4);
                    let end = (w + l).saturating_sub(p).div_ceil(4).min(g);
                    let first = first.min(end);
                    phase[..first].fill(0.0);
                    phase[end..].fill(0.0);
                    for (gi, d) in phase[first..end].iter_mut().enumerate() {
                        *d = srow[4 * (first + gi) + p - l];
                    }
                }
            }
        });
}

/// Row `I` of Bᵀ applied to `d`: `Bᵀ = [[4,0,−5,0,1,0], [0,−4,−4,1,1,0], [0,4,−4,−1,1,0],
/// [0,−2,−1,2,1,0], [0,2,−1,−2,1,0], [0,4,0,−5,0,1]]`.
#[inline(always)]
fn bt<const I: usize>(d: [f32; 6]) -> f32 {
    match I {
        0 => 4.0 * d[0] - 5.0 * d[2] + d[4],
        1 => -4.0 * (d[1] + d[2]) + d[3] + d[4],
        2 => 4.0 * (d[1] - d[2]) - d[3] + d[4],
        3 => 2.0 * (d[3] - d[1]) - d[2] + d[4],
        4 => 2.0 * (d[1] - d[3]) - d[2] + d[4],
        _ => 4.0 * d[1] - 5.0 * d[3] + d[5],
    }
}

/// Row `I` of Aᵀ applied to `m`: `Aᵀ = [[1,1,1,1,1,0], [0,1,−1,2,−2,0], [0,1,1,4,4,0],
/// [0,1,−1,8,−8,1]]`.
#[inline(always)]
fn at<const I: usize>(m: [f32; 6]) -> f32 {
    match I {
        0 => m[0] + (m[1] + m[2]) + (m[3] + m[4]),
        1 => (m[1] - m[2]) + 2.0 * (m[3] - m[4]),
        2 => (m[1] + m[2]) + 4.0 * (m[3] + m[4]),
        _ => (m[1] - m[2]) + 8.0 * (m[3] - m[4]) + m[5],
    }
}

/// `dst[x] = f(s[0][x], …, s[5][x])`, [`LANES`] at a time through local arrays: the loads all
/// happen before the stores, so LLVM vectorises without runtime alias checks (plain indexed
/// loops over these slices stayed scalar).
#[inline(always)]
fn apply(s: [&[f32]; 6], dst: &mut [f32], f: impl Fn([f32; 6]) -> f32) {
    let n = dst.len();
    let [s0, s1, s2, s3, s4, s5] = s;
    let (s0, s1, s2, s3, s4, s5) = (&s0[..n], &s1[..n], &s2[..n], &s3[..n], &s4[..n], &s5[..n]);
    let mut x = 0;
    while x + LANES <= n {
        let mut out = [0f32; LANES];
        let (c0, c1, c2) = (&s0[x..x + LANES], &s1[x..x + LANES], &s2[x..x + LANES]);
        let (c3, c4, c5) = (&s3[x..x + LANES], &s4[x..x + LANES], &s5[x..x + LANES]);
        for l in 0..LANES {
            out[l] = f([c0[l], c1[l], c2[l], c3[l], c4[l], c5[l]]);
        }
        dst[x..x + LANES].copy_from_slice(&out);
        x += LANES;
    }
    for x in x..n {
        dst[x] = f([s0[x], s1[x], s2[x], s3[x], s4[x], s5[x]]);
    }
}

/// `dst[x] = Bᵀ[I] · (s[0][x], …, s[5][x])`.
#[inline(always)]
fn apply_bt<const I: usize>(s: [&[f32]; 6], dst: &mut [f32]) {
    apply(s, dst, bt::<I>);
}

/// `dst[x] = Aᵀ[I] · (s[0][x], …, s[5][x])`.
#[inline(always)]
fn apply_at<const I: usize>(s: [&[f32]; 6], dst: &mut [f32]) {
    apply(s, dst, at::<I>);
}

/// All six rows of Bᵀ: `dst[i]` gets row `i`.
#[inline(always)]
fn apply_bt_all(s: [&[f32]; 6], dst: [&mut [f32]; 6]) {
    let [d0, d1, d2, d3, d4, d5] = dst;
    apply_bt::<0>(s, d0);
    apply_bt::<1>(s, d1);
    apply_bt::<2>(s, d2);
    apply_bt::<3>(s, d3);
    apply_bt::<4>(s, d4);
    apply_bt::<5>(s, d5);
}

/// Six disjoint rows `[off, off + len)` of `buf`, `stride` apart. (Written out: `array::from_fn`
/// was not inlined into the transforms and showed up in `perf`.)
#[inline(always)]
fn rows6(buf: &mut [f32], stride: usize, off: usize, len: usize) -> [&mut [f32]; 6] {
    let mut it = buf.chunks_mut(stride).map(|c| &mut c[off..][..len]);
    let mut next = || it.next().expect("buffer holds 6 rows");
    [next(), next(), next(), next(), next(), next()]
}

/// Four disjoint rows, as [`rows6`].
#[inline(always)]
fn rows4(buf: &mut [f32], stride: usize, off: usize, len: usize) -> [&mut [f32]; 4] {
    let mut it = buf.chunks_mut(stride).map(|c| &mut c[off..][..len]);
    let mut next = || it.next().expect("buffer holds 4 rows");
    [next(), next(), next(), next()]
}

/// Six rows `[off, off + len)` of `buf`, `stride` apart.
#[inline(always)]
fn rows6_ref(buf: &[f32], stride: usize, off: usize, len: usize) -> [&[f32]; 6] {
    let r = |k: usize| &buf[k * stride + off..][..len];
    [r(0), r(1), r(2), r(3), r(4), r(5)]
}

multiversion! {
    /// The input transform of one channel's tile row, tile columns `tx0..tx1`: `rows` are the
    /// tiles' 6 padded input rows; `V[ξ = 6i + j][tile]` goes to `v[ξ·vstride + voff + tile]`.
    /// `tmp`: scratch of `24·(tx1 − tx0 + 1)`.
    fn input_row(rows: &[f32], geo: Geometry, cols: [usize; 2], tmp: &mut [f32], v: &mut [f32], vpos: [usize; 2]) {
        let ([tx0, tx1], [voff, vstride]) = (cols, vpos);
        let (rowlen, g, n) = (geo.rowlen, geo.g, tx1 - tx0);
        let w = n + 1;
        // Column pass over the tiles' 6 rows, for the groups they read in each phase:
        // tmp[(i·4 + p)·w + x] = (Bᵀ·d)[i] at phase p, group tx0 + x.
        for p in 0..4 {
            apply_bt_all(rows6_ref(rows, rowlen, p * g + tx0, w), rows6(tmp, 4 * w, p * w, w));
        }
        // Row pass over each tile's 6 columns (phases 0–3 of group x, 0–1 of group x + 1),
        // straight into V.
        for i in 0..6 {
            let t = &tmp[i * 4 * w..][..4 * w];
            let s = [&t[..n], &t[w..w + n], &t[2 * w..2 * w + n], &t[3 * w..3 * w + n], &t[1..w], &t[w + 1..2 * w]];
            apply_bt_all(s, rows6(&mut v[6 * i * vstride..], vstride, voff, n));
        }
    }
}

/// `m[ξ] = u[ξ] · v[ξ]` for one ξ, `[cout, cin] · [cin, NT] → [cout, NT]`, on this thread (the
/// blocks are the parallelism). Computed transposed, `mᵀ = vᵀ · uᵀ` (`[NT, cin] · [cin, cout]`):
/// the `gemm` crate's microkernel vectorises along its m dimension, and with the tiles as m,
/// `v` and `m` are m-contiguous (read and written in place, no packing and no scatter of the
/// result) and `u` is read in place as a column-major `[cin, cout]`.
fn block_gemm(cout: usize, cin: usize, u: &[f32], v: &[f32], m: &mut [f32]) {
    let nt = NT as isize;
    let dst = MatMut {
        ptr: m.as_mut_ptr(),
        rs: 1,
        cs: nt,
    };
    let lhs = Mat {
        ptr: v.as_ptr(),
        rs: 1,
        cs: nt,
    };
    let rhs = Mat {
        ptr: u.as_ptr(),
        rs: 1,
        cs: cin as isize,
    };
    // SAFETY: v holds cin rows of NT, u cout rows of cin, m cout rows of NT; distinct buffers.
    unsafe { gemm(NT, cout, cin, dst, false, lhs, rhs, 1.0, false) };
}

multiversion! {
    /// One output channel's tiles in one tile row: `m[ξ·mstride + x]` for the `n` tiles → the
    /// tiles' 4 output rows, interleaved, bias added: `rows[a·4n + 4x + b]`.
    /// `tmp`: scratch of `28·n`.
    #[allow(clippy::needless_range_loop)]
    fn output_tiles_impl(m: &[f32], mstride: usize, n: usize, bias: f32, tmp: &mut [f32], rows: &mut [f32]) {
        let (t, y) = tmp.split_at_mut(24 * n);
        // Column pass: t[(a·6 + j)·n + x] = Σ_i Aᵀ[a][i] · M[6i + j][x].
        for j in 0..6 {
            let s = rows6_ref(m, 6 * mstride, j * mstride, n);
            let [t0, t1, t2, t3] = rows4(t, 6 * n, j * n, n);
            apply_at::<0>(s, t0);
            apply_at::<1>(s, t1);
            apply_at::<2>(s, t2);
            apply_at::<3>(s, t3);
        }
        // Row pass over each tile's 6 columns, then interleave the 4 columns per tile.
        for a in 0..4 {
            let ta = &t[a * 6 * n..][..6 * n];
            let s = rows6_ref(ta, n, 0, n);
            let [y0, y1, y2, y3] = rows4(y, n, 0, n);
            apply_at::<0>(s, y0);
            apply_at::<1>(s, y1);
            apply_at::<2>(s, y2);
            apply_at::<3>(s, y3);
            let row = &mut rows[a * 4 * n..][..4 * n];
            let (y0, y1, y2, y3) = (&y0[..n], &y1[..n], &y2[..n], &y3[..n]);
            let mut x = 0;
            while x + LANES <= n {
                let (c0, c1, c2, c3) = (&y0[x..x + LANES], &y1[x..x + LANES], &y2[x..x + LANES], &y3[x..x + LANES]);
                let mut out = [0f32; 4 * LANES];
                for l in 0..LANES {
                    out[4 * l] = c0[l] + bias;
                    out[4 * l + 1] = c1[l] + bias;
                    out[4 * l + 2] = c2[l] + bias;
                    out[4 * l + 3] = c3[l] + bias;
                }
                row[4 * x..4 * (x + LANES)].copy_from_slice(&out);
                x += LANES;
            }
            for x in x..n {
                row[4 * x] = y0[x] + bias;
                row[4 * x + 1] = y1[x] + bias;
                row[4 * x + 2] = y2[x] + bias;
                row[4 * x + 3] = y3[x] + bias;
            }
        }
    }
}

/// The output transform of a block, written into the output planes (`out`: `[batch, cout,
/// ho, wo]`, row stride `wo`).
///
/// # Safety
/// `out` must be valid for `batch·cout·ho·wo` elements, and no other thread may write the rows
/// and columns this block covers meanwhile.
unsafe fn output_block(
    m: &[f32],
    cout: usize,
    bias: Option<&[f32]>,
    geo: &Geometry,
    b: Block,
    out: MatMut,
    [ho, wo]: [usize; 2],
) {
    let n = b.n();
    let mut tmp = vec![0f32; 28 * n];
    let mut rows = vec![0f32; 16 * n];
    let x0 = 4 * b.tx0;
    let cols = (4 * b.tx1).min(wo) - x0;
    for co in 0..cout {
        let bv = bias.map_or(0.0, |b| b[co]);
        for r in b.r0..b.r1 {
            let (bi, ty) = (r / geo.th, r % geo.th);
            let t0 = geo.tile_offset(b, r);
            output_tiles_impl(&m[co * NT + t0..], cout * NT, n, bv, &mut tmp, &mut rows);
            for a in 0..4 {
                let y = 4 * ty + a;
                if y >= ho {
                    break;
                }
                // SAFETY: row y < ho, columns x0..x0 + cols ≤ wo of plane (bi, co); the
                // caller's contract.
                unsafe {
                    let dst = out.ptr.add(((bi * cout + co) * ho + y) * wo + x0);
                    std::ptr::copy_nonoverlapping(rows[a * 4 * n..].as_ptr(), dst, cols);
                }
            }
        }
    }
}

/// `U[ξ = 6i + j][co][ci] = (G · g · Gᵀ)[i][j]` for each 3×3 filter `g = w[co][ci]`, with
/// `G = [[1/4, 0, 0], [−1/6, −1/6, −1/6], [−1/6, 1/6, −1/6], [1/24, 1/12, 1/6],
/// [1/24, −1/12, 1/6], [0, 0, 1]]`.
fn transform_weights(cout: usize, cin: usize, w: &[f32]) -> Vec<f32> {
    const G: [[f64; 3]; 6] = [
        [0.25, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    // coef[ξ][3k + l] = G[i][k] · G[j][l]: U_ξ = Σ_kl coef · g[k][l].
    let coef: [[f32; 9]; 36] =
        std::array::from_fn(|xi| std::array::from_fn(|kl| (G[xi / 6][kl / 3] * G[xi % 6][kl % 3]) as f32));
    let filters = cout * cin;
    let mut u = scratch::take_at_least(4, 36 * filters);
    // Chunks of filters: transposed to tap-major in a small buffer, then 36 9-term sums that
    // vectorise over the filters.
    const CHUNK: usize = 512;
    let up = MatMut::rows(&mut u, filters);
    (0..filters.div_ceil(CHUNK)).into_par_iter().for_each(|ch| {
        let f0 = ch * CHUNK;
        let len = CHUNK.min(filters - f0);
        let mut taps = vec![0f32; 9 * len];
        for (f, g) in w[9 * f0..][..9 * len].chunks_exact(9).enumerate() {
            for kl in 0..9 {
                taps[kl * len + f] = g[kl];
            }
        }
        let mut row = vec![0f32; len];
        for (xi, c) in coef.iter().enumerate() {
            weight_row(c, &taps, &mut row);
            // SAFETY: row ξ, filters f0..f0 + len of u (36·filters long); chunks are disjoint.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), up.at(xi * filters + f0).ptr, len) };
        }
    });
    u
}

multiversion! {
    /// `row[f] = Σ_kl c[kl] · taps[kl·n + f]`.
    fn weight_row(c: &[f32; 9], taps: &[f32], row: &mut [f32]) {
        let n = row.len();
        let t: [&[f32]; 9] = std::array::from_fn(|kl| &taps[kl * n..][..n]);
        for f in 0..n {
            let mut acc = 0.0;
            for kl in 0..9 {
                acc += c[kl] * t[kl][f];
            }
            row[f] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::tests::{data, naive};
    use super::*;

    fn conv(batch: usize, cin: usize, cout: usize, h: usize, w: usize, pad: [usize; 4]) -> Conv {
        Conv {
            batch,
            cin,
            cout,
            h,
            w,
            kh: 3,
            kw: 3,
            pad,
        }
    }

    #[test]
    fn matches_naive_for_odd_geometries() {
        let cases = [
            // partial tiles at the bottom and right; rb = 64 / 3 tile rows per block
            conv(2, 7, 13, 13, 9, [1, 1, 1, 1]),
            // no padding, asymmetric padding
            conv(1, 3, 5, 10, 11, [0; 4]),
            conv(1, 4, 6, 9, 7, [0, 1, 2, 0]),
            // more than NT tiles per row: column blocks, the last one partial
            conv(1, 2, 3, 6, 4 * NT + 11, [1, 1, 1, 1]),
            // a block of several tile rows, channels past one register tile
            conv(2, 17, 33, 32, 32, [1, 1, 1, 1]),
            // blocks of 12 tile rows straddling images of 5
            conv(3, 5, 7, 20, 20, [1, 1, 1, 1]),
        ];
        for (k, c) in cases.into_iter().enumerate() {
            let x = data(c.batch * c.cin * c.h * c.w, k as u32);
            let w = data(c.cout * c.cin * 9, 11 + k as u32);
            let bias = data(c.cout, 5);
            for bias in [None, Some(&bias[..])] {
                let want = naive(c, &x, &w, bias);
                let got = conv2d(c, &x, &w, bias);
                assert_eq!(got.len(), want.len());
                // error relative to the output's magnitude, as the parity tests measure it
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
                assert!(err <= 2e-5 * scale, "{c:?}: max error {err} vs max |y| {scale}");
            }
        }
    }

    #[test]
    fn applies_to_3x3_with_enough_tiles() {
        let threads = rayon::current_num_threads();
        // 256 tiles per image in blocks of 64
        assert_eq!(blocks(&conv(1, 320, 320, 64, 64, [1; 4])), 4);
        assert_eq!(applies(&conv(1, 320, 320, 64, 64, [1; 4])), threads <= 4);
        // 64 tiles per image: one block per image
        assert_eq!(blocks(&conv(2, 640, 640, 32, 32, [1; 4])), 2);
        assert_eq!(applies(&conv(2, 640, 640, 32, 32, [1; 4])), threads <= 2);
        // 512² output: 128 × 128 tiles, rows of 2 blocks
        assert_eq!(blocks(&conv(1, 128, 128, 512, 512, [1; 4])), 256);
        assert!(applies(&conv(1, 128, 128, 512, 512, [1; 4])));
        let one_by_one = Conv {
            kh: 1,
            kw: 1,
            pad: [0; 4],
            ..conv(1, 320, 320, 64, 64, [0; 4])
        };
        assert!(!applies(&one_by_one));
    }
}
