//! The operands of the bf16 GEMM, shared by its two kernels (`amx.rs` on tiles, `dot_bf16.rs`
//! on dot products): C = A·B with A bf16 row-major and B in VNNI pairs, K in segments.

/// Rows and columns of C one microkernel call computes.
pub(crate) const BLOCK: usize = 32;
/// k per tile step.
pub(crate) const KSTEP: usize = 32;

/// One GEMM's operands (see `amx.rs`' module doc for the layouts).
#[derive(Clone, Copy)]
pub(crate) struct Operands<'a> {
    /// bf16 bits, `m_pad` rows (a multiple of [`BLOCK`], zeros past the real rows) `lda` apart.
    pub a: &'a [u16],
    pub lda: usize,
    pub m_pad: usize,
    /// VNNI pairs; column `n` of pair-row `p` of segment `s` is at
    /// `taps[s].1 + (n / 32) · n_block + n % 32 + p · plane`: with `n_block` = 32 a plain
    /// row-major `[pairs][plane]`, with `n_block` = pairs · 32 and `plane` = 32 blocked by 32
    /// columns (each tile's 16 rows contiguous).
    pub b: &'a [u32],
    pub plane: usize,
    pub n_block: usize,
    /// k per segment, a multiple of [`KSTEP`].
    pub seg_k: usize,
    /// per segment: (first column of A, first element of B)
    pub taps: &'a [(usize, usize)],
}

impl Operands<'_> {
    /// Every address the microkernel reads for column blocks up to `n_end` is in bounds.
    pub(crate) fn check(&self, n_end: usize) {
        assert!(self.m_pad.is_multiple_of(BLOCK) && self.seg_k.is_multiple_of(KSTEP));
        for &(ac, b0) in self.taps {
            assert!(ac + self.seg_k <= self.lda);
            assert!(self.a.len() >= (self.m_pad - 1) * self.lda + ac + self.seg_k);
            if self.seg_k > 0 && n_end > 0 {
                let last_block = (n_end / BLOCK - 1) * self.n_block;
                assert!(self.b.len() >= b0 + last_block + (self.seg_k / 2 - 1) * self.plane + BLOCK);
            }
        }
    }
}
