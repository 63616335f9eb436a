//! The shape of one convolution, shared by the conv routes (`conv.rs`, `winograd.rs`).

/// Geometry of one stride-1 convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    /// (top, left, bottom, right)
    pub pad: [usize; 4],
}

impl Conv {
    /// From burn's `[b, cin, h, w]` input and `[cout, cin, kh, kw]` weight dims.
    pub fn of(x: [usize; 4], weight: [usize; 4], pad: [usize; 4]) -> Conv {
        let ([batch, cin, h, w], [cout, _, kh, kw]) = (x, weight);
        Conv {
            batch,
            cin,
            cout,
            h,
            w,
            kh,
            kw,
            pad,
        }
    }

    /// Padded input size `(hp, wp)`.
    pub fn padded_hw(&self) -> (usize, usize) {
        let [t, l, b, r] = self.pad;
        (self.h + t + b, self.w + l + r)
    }

    pub fn out_hw(&self) -> (usize, usize) {
        let (hp, wp) = self.padded_hw();
        (hp + 1 - self.kh, wp + 1 - self.kw)
    }

    /// Channel stride of the padded input: the last tap reads kw − 1 elements past hp·wp.
    pub fn cstride(&self) -> usize {
        let (hp, wp) = self.padded_hw();
        hp * wp + self.kw - 1
    }
}
