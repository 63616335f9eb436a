//! 3×3 stride-1 convolution by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray, 2015).
//!
//! A 4×4 output tile costs 36 multiplies per (input, output) channel pair instead of 144, so the
//! GEMM work is a quarter of the direct kernel's. The transforms around the GEMMs are
//! element-wise; they are written to vectorise across tiles:
//! - the zero-padded input (every image, every channel) is stored *phase-split*: each row as 4 arrays holding
//!   every 4th column (`[rows, 4, g]`), so the 6 columns tile `tx` reads are `phase[p][tx]` and
//!   `phase[p][tx + 1]`: contiguous across tiles;
//! - tiles are processed in blocks of up to [`NT`] (a few tile rows, which may span images, or
//!   part of one), one block per task: input
//!   transform into `V [cin, 36, NT]`, then 36 GEMMs `M_ξ = U_ξ · V_ξ` with the transformed
//!   weights `U [36, cout, cin]`, then the output transform straight into the output rows the
//!   block covers. A block's V and M stay in the core's L2.
//!
//! Rounding: the transforms' coefficients (up to 8, and 1/24 in G) cost some precision: against
//! an f64-accumulated direct convolution the largest error is 2–7e-6 of the output's largest
//! magnitude (unit tests; the model parity tests allow 1e-4 and pass with every 3×3 convolution
//! on this route).

use rayon::prelude::*;

use super::gemm::{Mat, MatMut, gemm};
use super::geometry::Conv;
use super::scratch;
use super::simd::{LANES, multiversion};
use crate::ops::types::Winograd;

/// Tiles per block: the GEMMs' m dimension (64 and 128 measured alike; 64 keeps a block's
/// V and M in L2 up to 512 channels and gives more blocks to share between threads).
const NT: usize = 64;

/// Whether `c` takes this route: 3×3 kernels with at least one block of tiles per thread
/// (blocks are the route's only parallelism). Measured on 2 threads with `imagen bench
/// --component conv` (BENCHMARKS.md): 1.6–2.5× the direct kernel from 128 tiles (2 blocks) up,
/// slower with one block (640 channels at 32², batch 1: 37.5 vs 25.4 ms; 1280 at 16², batch 2:
/// 109 vs 60 ms), where one thread does all the work and rebuilds the transformed weights, 4× the
/// size of the weights, for few tiles.
pub(crate) fn applies(c: &Conv, mode: Winograd) -> bool {
    if c.kh != 3 || c.kw != 3 {
        return false;
    }
    match mode {
        Winograd::Off => false,
        Winograd::Everywhere => true,
        Winograd::WherePays => blocks(c) >= rayon::current_num_threads(),
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
        for ci in 0..c.cin {
            for r in block.r0..block.r1 {
                let (bi, ty) = (r / th, r % th);
                let rows6 = &xp[(bi * c.cin + ci) * geo.plane + 4 * ty * geo.rowlen..][..6 * geo.rowlen];
                let voff = ci * 36 * NT + geo.tile_offset(block, r);
                input_row(rows6, geo, [block.tx0, block.tx1], &mut v, [voff, NT]);
            }
        }
        for xi in 0..36 {
            let ux = &up[xi * c.cout * c.cin..][..c.cout * c.cin];
            block_gemm(c.cout, c.cin, ux, &v[xi * NT..], &mut m[xi * NT..]);
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
    let (h, w) = (c.h, c.w);
    dst[..c.batch * c.cin * geo.plane]
        .par_chunks_mut(geo.plane)
        .zip(x.par_chunks(h * w))
        .for_each(|(plane, src)| {
            // one padded row, zero outside the image's columns
            let mut buf = vec![0f32; geo.rowlen];
            for (y, row) in plane.chunks_mut(geo.rowlen).enumerate() {
                let Some(sy) = y.checked_sub(t).filter(|&sy| sy < h) else {
                    row.fill(0.0);
                    continue;
                };
                buf[l..l + w].copy_from_slice(&src[sy * w..][..w]);
                deinterleave4(&buf, row);
            }
        });
}

multiversion! {
    /// `row[p·g + gi] = buf[4·gi + p]` (`buf` is `4·g` long): one padded row into its phases.
    fn deinterleave4(buf: &[f32], row: &mut [f32]) {
        let g = buf.len() / 4;
        let (p0, rest) = row.split_at_mut(g);
        let (p1, rest) = rest.split_at_mut(g);
        let (p2, p3) = rest.split_at_mut(g);
        for (gi, q) in buf.chunks_exact(4).enumerate() {
            p0[gi] = q[0];
            p1[gi] = q[1];
            p2[gi] = q[2];
            p3[gi] = q[3];
        }
    }
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

/// A chunk of [`LANES`] tiles' values, one per tile.
type Lanes = [f32; LANES];

/// `src[..len]` into a chunk (zeros after): whole chunks as one fixed-size copy, so LLVM emits
/// vector moves rather than a `memcpy` call. (Plain loops and `&mut` arrays throughout: arrays
/// built by `array::from_fn` were returned through memory, not registers.)
#[inline(always)]
fn load(dst: &mut Lanes, src: &[f32], len: usize) {
    if len == LANES {
        dst.copy_from_slice(&src[..LANES]);
    } else {
        dst.fill(0.0);
        dst[..len].copy_from_slice(&src[..len]);
    }
}

/// `dst[..len] = c[..len]`.
#[inline(always)]
fn store(dst: &mut [f32], c: &Lanes, len: usize) {
    if len == LANES {
        dst[..LANES].copy_from_slice(c);
    } else {
        dst[..len].copy_from_slice(&c[..len]);
    }
}

/// All six rows of Bᵀ applied lane-wise to `d`: `out[i] = (Bᵀ · d)[i]`.
#[inline(always)]
fn bt_all(d: [&Lanes; 6], out: &mut [Lanes; 6]) {
    for l in 0..LANES {
        let v = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        out[0][l] = bt::<0>(v);
        out[1][l] = bt::<1>(v);
        out[2][l] = bt::<2>(v);
        out[3][l] = bt::<3>(v);
        out[4][l] = bt::<4>(v);
        out[5][l] = bt::<5>(v);
    }
}

/// All four rows of Aᵀ applied lane-wise to `m`: `out[a] = (Aᵀ · m)[a]`.
#[inline(always)]
fn at_all(m: [&Lanes; 6], out: &mut [Lanes; 4]) {
    for l in 0..LANES {
        let v = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        out[0][l] = at::<0>(v);
        out[1][l] = at::<1>(v);
        out[2][l] = at::<2>(v);
        out[3][l] = at::<3>(v);
    }
}

multiversion! {
    /// The input transform of one channel's tile row, tile columns `tx0..tx1`: `rows` are the
    /// tiles' 6 padded input rows; `V[ξ = 6i + j][tile]` goes to `v[ξ·vstride + voff + tile]`.
    /// [`LANES`] tiles at a time, both passes on local arrays.
    fn input_row(rows: &[f32], geo: Geometry, cols: [usize; 2], v: &mut [f32], vpos: [usize; 2]) {
        let ([tx0, tx1], [voff, vstride]) = (cols, vpos);
        let (rowlen, g, n) = (geo.rowlen, geo.g, tx1 - tx0);
        let mut d = [[[0f32; LANES]; 6]; 6];
        let mut e = [[[0f32; LANES]; 6]; 6];
        let mut vi = [[0f32; LANES]; 6];
        for x in (0..n).step_by(LANES) {
            let len = LANES.min(n - x);
            // d[c][k]: row k, column c of the chunk's tiles. Column c is phase c of group
            // tx for c < 4, phase c − 4 of group tx + 1 after.
            for (c, dc) in d.iter_mut().enumerate() {
                let (p, dg) = if c < 4 { (c, 0) } else { (c - 4, 1) };
                for (k, dck) in dc.iter_mut().enumerate() {
                    load(dck, &rows[k * rowlen + p * g + tx0 + x + dg..], len);
                }
            }
            // Column pass: e[c] = Bᵀ · d[c].
            for (dc, ec) in d.iter().zip(e.iter_mut()) {
                bt_all([&dc[0], &dc[1], &dc[2], &dc[3], &dc[4], &dc[5]], ec);
            }
            // Row pass: V[6i + j] = (Bᵀ · e[·][i])[j].
            for i in 0..6 {
                bt_all([&e[0][i], &e[1][i], &e[2][i], &e[3][i], &e[4][i], &e[5][i]], &mut vi);
                for (j, c) in vi.iter().enumerate() {
                    store(&mut v[(6 * i + j) * vstride + voff + x..], c, len);
                }
            }
        }
    }
}

/// `m[ξ] = u[ξ] · v[ξ]` for one ξ, `[cout, cin] · [cin, NT] → [cout, NT]`, on this thread (the
/// blocks are the parallelism); `v` and `m` start at ξ's first row (their rows are
/// `[channel][ξ][tile]`, so one channel's 36 transformed rows are adjacent: written and read
/// as one 9 KB run instead of 36 rows a power of two apart, which thrashed L1 sets).
/// Computed transposed, `mᵀ = vᵀ · uᵀ` (`[NT, cin] · [cin, cout]`): the `gemm` crate's
/// microkernel vectorises along its m dimension, and with the tiles as m, `m` is m-contiguous
/// (written in place, no scatter of the result) and `u` is read in place as a column-major
/// `[cin, cout]`.
fn block_gemm(cout: usize, cin: usize, u: &[f32], v: &[f32], m: &mut [f32]) {
    let cs = (36 * NT) as isize;
    let dst = MatMut {
        ptr: m.as_mut_ptr(),
        rs: 1,
        cs,
    };
    let lhs = Mat {
        ptr: v.as_ptr(),
        rs: 1,
        cs,
    };
    let rhs = Mat {
        ptr: u.as_ptr(),
        rs: 1,
        cs: cin as isize,
    };
    assert!(v.len() > (cin - 1) * 36 * NT + NT - 1 && m.len() > (cout - 1) * 36 * NT + NT - 1);
    // SAFETY: v holds cin rows of NT 36·NT apart, m cout such rows (asserted), u cout rows
    // of cin; distinct buffers.
    unsafe { gemm(NT, cout, cin, dst, false, lhs, rhs, 1.0, false) };
}

multiversion! {
    /// One output channel's tiles in one tile row: `m[ξ·mstride + x]` for the `n` tiles → the
    /// tiles' 4 output rows, interleaved, bias added: `rows[a·4n + 4x + b]`. [`LANES`] tiles
    /// at a time, both passes on local arrays.
    fn output_tiles(m: &[f32], mstride: usize, n: usize, bias: f32, rows: &mut [f32]) {
        let mut mm = [[[0f32; LANES]; 6]; 6];
        let mut t = [[[0f32; LANES]; 4]; 6];
        let mut y = [[0f32; LANES]; 4];
        let mut out = [0f32; 4 * LANES];
        for x in (0..n).step_by(LANES) {
            let len = LANES.min(n - x);
            // mm[j][i] = M[6i + j] for the chunk's tiles.
            for (j, mj) in mm.iter_mut().enumerate() {
                for (i, mji) in mj.iter_mut().enumerate() {
                    load(mji, &m[(6 * i + j) * mstride + x..], len);
                }
            }
            // Column pass: t[j] = Aᵀ · mm[j].
            for (mj, tj) in mm.iter().zip(t.iter_mut()) {
                at_all([&mj[0], &mj[1], &mj[2], &mj[3], &mj[4], &mj[5]], tj);
            }
            for a in 0..4 {
                // Row pass: y = Aᵀ · t[·][a], then each tile's 4 columns interleaved.
                at_all([&t[0][a], &t[1][a], &t[2][a], &t[3][a], &t[4][a], &t[5][a]], &mut y);
                for l in 0..LANES {
                    out[4 * l] = y[0][l] + bias;
                    out[4 * l + 1] = y[1][l] + bias;
                    out[4 * l + 2] = y[2][l] + bias;
                    out[4 * l + 3] = y[3][l] + bias;
                }
                rows[a * 4 * n + 4 * x..][..4 * len].copy_from_slice(&out[..4 * len]);
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
    let mut rows = vec![0f32; 16 * n];
    let x0 = 4 * b.tx0;
    let cols = (4 * b.tx1).min(wo) - x0;
    for co in 0..cout {
        let bv = bias.map_or(0.0, |b| b[co]);
        for r in b.r0..b.r1 {
            let (bi, ty) = (r / geo.th, r % geo.th);
            let t0 = geo.tile_offset(b, r);
            output_tiles(&m[co * 36 * NT + t0..], NT, n, bv, &mut rows);
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
        assert_eq!(
            applies(&conv(1, 320, 320, 64, 64, [1; 4]), Winograd::WherePays),
            threads <= 4
        );
        // 64 tiles per image: one block per image
        assert_eq!(blocks(&conv(2, 640, 640, 32, 32, [1; 4])), 2);
        assert_eq!(
            applies(&conv(2, 640, 640, 32, 32, [1; 4]), Winograd::WherePays),
            threads <= 2
        );
        // 512² output: 128 × 128 tiles, rows of 2 blocks
        assert_eq!(blocks(&conv(1, 128, 128, 512, 512, [1; 4])), 256);
        assert!(applies(&conv(1, 128, 128, 512, 512, [1; 4]), Winograd::WherePays));
        assert!(applies(&conv(1, 8, 8, 4, 4, [1; 4]), Winograd::Everywhere));
        assert!(!applies(&conv(1, 128, 128, 512, 512, [1; 4]), Winograd::Off));
        let one_by_one = Conv {
            kh: 1,
            kw: 1,
            pad: [0; 4],
            ..conv(1, 320, 320, 64, 64, [0; 4])
        };
        assert!(!applies(&one_by_one, Winograd::Everywhere));
    }
}
