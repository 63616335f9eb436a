//! ggml's block-quantized tensor types as plain data, one `dequantize` per type: the reference
//! every quantized kernel is tested against, itself tested bit for bit against the `gguf`
//! package's `gguf.quants` (`tools/reference/make_quant_fixtures.py`). Layouts as in ggml's
//! `ggml-common.h`; every scale is an f16, every product computed in f32 in ggml's order.

use half::f16;

use crate::error::{Error, Result};

/// A block-quantized type: `BLOCK` values stored in `BYTES` bytes.
pub trait BlockType: Sized {
    const NAME: &'static str;
    const BLOCK: usize;
    const BYTES: usize;
    /// The block at the start of `b` (`b.len() >= BYTES`).
    fn read(b: &[u8]) -> Self;
    /// Its `BLOCK` values into `out`.
    fn dequantize(&self, out: &mut [f32]);
    /// Values per scale in [`symmetric`](Self::symmetric).
    const SUB: usize = 32;
    /// The block as `y = s·q`, one scale `s` per [`SUB`](Self::SUB) values and whole `q` in
    /// `-128..=127`, appended to `scales` and `q`, for the types that are that (Q8_0, Q5_0, Q4_0;
    /// Q6_K with `s = d·sc` per 16): kept so in memory ([`symmetric_row`]), each product equals
    /// [`dequantize`](Self::dequantize)'s bit for bit. `false` for the other types.
    fn symmetric(&self, _scales: &mut Vec<f32>, _q: &mut Vec<i8>) -> bool {
        false
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// `block_q8_0`: `d`, 32 signed bytes; `y = d·q`.
pub struct Q8_0 {
    pub d: f32,
    pub qs: [i8; 32],
}

impl BlockType for Q8_0 {
    const NAME: &'static str = "Q8_0";
    const BLOCK: usize = 32;
    const BYTES: usize = 34;
    fn read(b: &[u8]) -> Self {
        Q8_0 {
            d: half(b, 0),
            qs: array::<32>(b, 2).map(|q| q as i8),
        }
    }
    fn dequantize(&self, out: &mut [f32]) {
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = q as f32 * self.d;
        }
    }
    fn symmetric(&self, scales: &mut Vec<f32>, q: &mut Vec<i8>) -> bool {
        scales.push(self.d);
        q.extend_from_slice(&self.qs);
        true
    }
}

/// `block_q4_0` / `block_q4_1` (`m` present): nibbles, low halves first; `y = d·(q − 8)` or
/// `y = d·q + m`.
pub struct Q4<const OFFSET: bool> {
    pub d: f32,
    pub m: f32,
    pub qs: [u8; 16],
}

pub type Q4_0 = Q4<false>;
pub type Q4_1 = Q4<true>;

impl<const M: bool> BlockType for Q4<M> {
    const NAME: &'static str = if M { "Q4_1" } else { "Q4_0" };
    const BLOCK: usize = 32;
    const BYTES: usize = if M { 20 } else { 18 };
    fn read(b: &[u8]) -> Self {
        let at = if M { 4 } else { 2 };
        Q4 {
            d: half(b, 0),
            m: if M { half(b, 2) } else { 0.0 },
            qs: array::<16>(b, at),
        }
    }
    fn dequantize(&self, out: &mut [f32]) {
        for (j, &q) in self.qs.iter().enumerate() {
            let (lo, hi) = ((q & 0xF) as i32, (q >> 4) as i32);
            if M {
                out[j] = lo as f32 * self.d + self.m;
                out[j + 16] = hi as f32 * self.d + self.m;
            } else {
                out[j] = (lo - 8) as f32 * self.d;
                out[j + 16] = (hi - 8) as f32 * self.d;
            }
        }
    }
    fn symmetric(&self, scales: &mut Vec<f32>, out: &mut Vec<i8>) -> bool {
        let mut q = [0i8; 32];
        for (j, &b) in self.qs.iter().enumerate() {
            q[j] = (b & 0xF) as i8 - 8;
            q[j + 16] = (b >> 4) as i8 - 8;
        }
        if !M {
            scales.push(self.d);
            out.extend_from_slice(&q);
        }
        !M
    }
}

/// `block_q5_0` / `block_q5_1`: nibbles plus a fifth bit per value in `qh`; `y = d·(q − 16)` or
/// `y = d·q + m`.
pub struct Q5<const OFFSET: bool> {
    pub d: f32,
    pub m: f32,
    pub qh: u32,
    pub qs: [u8; 16],
}

pub type Q5_0 = Q5<false>;
pub type Q5_1 = Q5<true>;

impl<const M: bool> BlockType for Q5<M> {
    const NAME: &'static str = if M { "Q5_1" } else { "Q5_0" };
    const BLOCK: usize = 32;
    const BYTES: usize = if M { 24 } else { 22 };
    fn read(b: &[u8]) -> Self {
        let at = if M { 4 } else { 2 };
        Q5 {
            d: half(b, 0),
            m: if M { half(b, 2) } else { 0.0 },
            qh: u32::from_le_bytes(array::<4>(b, at)),
            qs: array::<16>(b, at + 4),
        }
    }
    fn dequantize(&self, out: &mut [f32]) {
        for (j, &q) in self.qs.iter().enumerate() {
            let h0 = ((self.qh >> j) << 4) & 0x10;
            let h1 = (self.qh >> (j + 12)) & 0x10;
            let (lo, hi) = ((q as u32 & 0xF) | h0, (q as u32 >> 4) | h1);
            if M {
                out[j] = lo as f32 * self.d + self.m;
                out[j + 16] = hi as f32 * self.d + self.m;
            } else {
                out[j] = (lo as i32 - 16) as f32 * self.d;
                out[j + 16] = (hi as i32 - 16) as f32 * self.d;
            }
        }
    }
    fn symmetric(&self, scales: &mut Vec<f32>, out: &mut Vec<i8>) -> bool {
        let mut q = [0i8; 32];
        for (j, &b) in self.qs.iter().enumerate() {
            let h0 = ((self.qh >> j) << 4) & 0x10;
            let h1 = (self.qh >> (j + 12)) & 0x10;
            q[j] = ((b as u32 & 0xF) | h0) as i8 - 16;
            q[j + 16] = ((b as u32 >> 4) | h1) as i8 - 16;
        }
        if !M {
            scales.push(self.d);
            out.extend_from_slice(&q);
        }
        !M
    }
}

/// The 6-bit scale and min of sub-block `j` of a K-quant's packed `scales[12]`.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K` / `block_q5_K` (`HIGH`: a fifth bit per value in `qh`): 256 values in 8
/// sub-blocks of 32, each with a 6-bit scale and min; `y = d·sc·q − dmin·m`.
pub struct QK<const HIGH: bool> {
    pub d: f32,
    pub dmin: f32,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

pub type Q4K = QK<false>;
pub type Q5K = QK<true>;

impl<const H: bool> BlockType for QK<H> {
    const NAME: &'static str = if H { "Q5_K" } else { "Q4_K" };
    const BLOCK: usize = 256;
    const BYTES: usize = if H { 176 } else { 144 };
    fn read(b: &[u8]) -> Self {
        let at = if H { 48 } else { 16 };
        QK {
            d: half(b, 0),
            dmin: half(b, 2),
            scales: array::<12>(b, 4),
            qh: if H { array::<32>(b, 16) } else { [0; 32] },
            qs: array::<128>(b, at),
        }
    }
    fn dequantize(&self, out: &mut [f32]) {
        for (i, (q, y)) in self.qs.chunks(32).zip(out.chunks_mut(64)).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * i, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * i + 1, &self.scales);
            let (d1, min1) = (self.d * sc1 as f32, self.dmin * m1 as f32);
            let (d2, min2) = (self.d * sc2 as f32, self.dmin * m2 as f32);
            for l in 0..32 {
                let high = |bit: usize| if H && self.qh[l] >> bit & 1 == 1 { 16 } else { 0 };
                y[l] = d1 * ((q[l] & 0xF) + high(2 * i)) as f32 - min1;
                y[l + 32] = d2 * ((q[l] >> 4) + high(2 * i + 1)) as f32 - min2;
            }
        }
    }
}

/// `block_q6_K`: 256 values of 6 bits (low 4 in `ql`, high 2 in `qh`) in 16 sub-blocks with
/// signed 8-bit scales; `y = d·sc·(q − 32)`.
pub struct Q6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f32,
}

impl BlockType for Q6K {
    const NAME: &'static str = "Q6_K";
    const BLOCK: usize = 256;
    const BYTES: usize = 210;
    fn read(b: &[u8]) -> Self {
        Q6K {
            ql: array::<128>(b, 0),
            qh: array::<64>(b, 128),
            scales: array::<16>(b, 192).map(|s| s as i8),
            d: half(b, 208),
        }
    }
    fn dequantize(&self, out: &mut [f32]) {
        for (n, y) in out.chunks_mut(128).enumerate() {
            let (ql, qh, sc) = (&self.ql[64 * n..], &self.qh[32 * n..], &self.scales[8 * n..]);
            for l in 0..32 {
                let is = l / 16;
                let q = |low: u8, shift: u32| (low as i32 | (((qh[l] >> shift) & 3) as i32) << 4) - 32;
                let q1 = q(ql[l] & 0xF, 0);
                let q2 = q(ql[l + 32] & 0xF, 2);
                let q3 = q(ql[l] >> 4, 4);
                let q4 = q(ql[l + 32] >> 4, 6);
                y[l] = self.d * sc[is] as f32 * q1 as f32;
                y[l + 32] = self.d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = self.d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = self.d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
    // y = (d·sc)·q, evaluated in that order above: d·sc is exact in f32 (11 × 8 bits)
    const SUB: usize = 16;
    fn symmetric(&self, scales: &mut Vec<f32>, out: &mut Vec<i8>) -> bool {
        scales.extend(self.scales.iter().map(|&sc| self.d * sc as f32));
        let mut q = [0i8; 256];
        for (n, y) in q.chunks_mut(128).enumerate() {
            let (ql, qh) = (&self.ql[64 * n..], &self.qh[32 * n..]);
            for l in 0..32 {
                let v = |low: u8, shift: u32| ((low | ((qh[l] >> shift) & 3) << 4) as i8) - 32;
                y[l] = v(ql[l] & 0xF, 0);
                y[l + 32] = v(ql[l + 32] & 0xF, 2);
                y[l + 64] = v(ql[l] >> 4, 4);
                y[l + 96] = v(ql[l + 32] >> 4, 6);
            }
        }
        out.extend_from_slice(&q);
        true
    }
}

/// Every value of a row of `T` blocks. `bytes.len()` must be a whole number of blocks.
pub fn dequantize_row<T: BlockType>(bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(T::BYTES) {
        return Err(Error::Quantized {
            kind: T::NAME,
            message: format!(
                "{} bytes is not a whole number of {}-byte blocks",
                bytes.len(),
                T::BYTES
            ),
        });
    }
    let mut out = vec![0f32; bytes.len() / T::BYTES * T::BLOCK];
    for (b, y) in bytes.chunks(T::BYTES).zip(out.chunks_mut(T::BLOCK)) {
        T::read(b).dequantize(y);
    }
    Ok(out)
}

/// A row of `T` blocks as whole values, one scale per `T::SUB` (`y = scales[i / SUB]·q[i]`);
/// `None` for the types that are not [`symmetric`](BlockType::symmetric).
pub fn symmetric_row<T: BlockType>(bytes: &[u8]) -> Option<(Vec<i8>, Vec<f32>)> {
    if !bytes.len().is_multiple_of(T::BYTES) {
        return None;
    }
    let blocks = bytes.len() / T::BYTES;
    let mut q = Vec::with_capacity(blocks * T::BLOCK);
    let mut scales = Vec::with_capacity(blocks * T::BLOCK / T::SUB);
    for b in bytes.chunks(T::BYTES) {
        if !T::read(b).symmetric(&mut scales, &mut q) {
            return None;
        }
    }
    Some((q, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str, ext: &str) -> Vec<u8> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/golden/quants");
        std::fs::read(format!("{dir}/{name}.{ext}")).expect("quant fixture (make_quant_fixtures.py)")
    }

    /// Bit for bit what `gguf.quants.dequantize` gives for the same blocks.
    fn matches_gguf<T: BlockType>() {
        let name = T::NAME.to_lowercase();
        let got = dequantize_row::<T>(&fixture(&name, "blocks")).expect("whole blocks");
        let want: Vec<f32> = fixture(&name, "f32")
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} vs gguf {w}");
        }
    }

    #[test]
    fn every_block_type_matches_gguf_bit_for_bit() {
        matches_gguf::<Q8_0>();
        matches_gguf::<Q4_0>();
        matches_gguf::<Q4_1>();
        matches_gguf::<Q5_0>();
        matches_gguf::<Q5_1>();
        matches_gguf::<Q4K>();
        matches_gguf::<Q5K>();
        matches_gguf::<Q6K>();
    }

    /// `d·q` from [`symmetric_row`] is bit for bit the dequantised value (so weights kept as
    /// int8 + scale compute exactly what dequantised weights do).
    fn symmetric_matches<T: BlockType>() {
        let name = T::NAME.to_lowercase();
        let blocks = fixture(&name, "blocks");
        let want = dequantize_row::<T>(&blocks).expect("whole blocks");
        let (q, scales) = symmetric_row::<T>(&blocks).expect("symmetric type");
        for (i, w) in want.iter().enumerate() {
            let got = scales[i / T::SUB] * q[i] as f32;
            assert_eq!(got.to_bits(), w.to_bits(), "{name}[{i}]");
        }
    }

    #[test]
    fn symmetric_types_split_into_ints_and_scales() {
        symmetric_matches::<Q8_0>();
        symmetric_matches::<Q5_0>();
        symmetric_matches::<Q4_0>();
        symmetric_matches::<Q6K>();
        assert!(symmetric_row::<Q4_1>(&fixture("q4_1", "blocks")).is_none());
        assert!(symmetric_row::<Q4K>(&fixture("q4_k", "blocks")).is_none());
    }

    #[test]
    fn partial_blocks_are_refused() {
        let e = dequantize_row::<Q8_0>(&[0; 35]).expect_err("35 bytes").to_string();
        assert!(e.contains("Q8_0") && e.contains("34-byte"), "{e}");
    }
}
