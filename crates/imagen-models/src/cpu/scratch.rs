//! Per-thread scratch buffers reused across calls: the padded conv input and the wide conv
//! output are tens of MB, and a fresh allocation of that size is a fresh `mmap` whose pages the
//! kernel zeroes on first touch (that showed up as ~10% of a UNet step in `perf`).

use std::cell::RefCell;

const SLOTS: usize = 2;

thread_local! {
    static BUFFERS: RefCell<[Vec<f32>; SLOTS]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// A buffer of exactly `len` elements (contents unspecified: callers overwrite what they read).
pub(crate) fn take(slot: usize, len: usize) -> Vec<f32> {
    let mut v = BUFFERS.with(|b| std::mem::take(&mut b.borrow_mut()[slot]));
    v.resize(len, 0.0);
    v
}

/// Kept between calls only up to this size (64 MiB): a server must not hold the few hundred
/// MB a 512² VAE layer needs for the rest of its life, and at that size the page faults are
/// small next to the convolution anyway.
const KEEP_MAX: usize = 16 << 20;

/// Returns a buffer to its slot for the next call on this thread.
pub(crate) fn give(slot: usize, v: Vec<f32>) {
    if v.capacity() <= KEEP_MAX {
        BUFFERS.with(|b| b.borrow_mut()[slot] = v);
    }
}

/// A zeroed output buffer. Large ones are marked for transparent huge pages first (Linux, where
/// THP is usually in `madvise` mode): an 84 MB GEGLU output is then ~40 page faults instead of
/// ~20 000, which `perf` showed as ~15% of a linear layer.
pub(crate) fn output(len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    if len * 4 >= 4 << 20 {
        let start = (v.as_ptr() as usize).next_multiple_of(4096);
        let end = (v.as_ptr() as usize + len * 4) & !4095;
        if end > start {
            // SAFETY: advice only, on pages inside this allocation; failure is harmless.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v.resize(len, 0.0);
    v
}
