//! One safe-looking door to the `gemm` crate (AVX-512 / AVX2 microkernels, picked at run time).

use gemm::Parallelism;

/// A strided matrix view: element `(i, j)` is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// A strided mutable matrix view.
#[derive(Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

impl Mat {
    /// A row-major view (`cs = 1`) with row stride `rs`.
    pub fn rows(data: &[f32], rs: usize) -> Mat {
        Mat {
            ptr: data.as_ptr(),
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The same view starting `offset` elements further.
    pub fn at(self, offset: usize) -> Mat {
        Mat {
            ptr: self.ptr.wrapping_add(offset),
            ..self
        }
    }
}

impl MatMut {
    /// A row-major view (`cs = 1`) with row stride `rs`.
    pub fn rows(data: &mut [f32], rs: usize) -> MatMut {
        MatMut {
            ptr: data.as_mut_ptr(),
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The same view starting `offset` elements further.
    pub fn at(self, offset: usize) -> MatMut {
        MatMut {
            ptr: self.ptr.wrapping_add(offset),
            ..self
        }
    }
}

// SAFETY: the views are raw pointers handed between rayon tasks that write disjoint regions;
// every user upholds that (see the callers).
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

/// `dst[m×n] = (accumulate ? dst : 0) + scale · lhs[m×k] · rhs[k×n]`.
///
/// # Safety
/// Every element the views address for these sizes must be in bounds, `dst` must not alias
/// `lhs`/`rhs`, and no other thread may touch `dst`'s elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    threads: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let par = if threads {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m, n, k, dst.ptr, dst.cs, dst.rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs, 1.0f32,
            scale, false, false, false, par,
        )
    }
}
