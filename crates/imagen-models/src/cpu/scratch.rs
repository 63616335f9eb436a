//! Per-thread scratch buffers reused across calls: the padded conv input and the wide conv
//! output are tens of MB, and a fresh allocation of that size is a fresh `mmap` whose pages the
//! kernel zeroes on first touch (that showed up as ~10% of a UNet step in `perf`).

use std::cell::RefCell;

/// 0: padded conv input; 1: wide conv output (calling thread); 2, 3: a Winograd block's
/// transformed input and products (rayon's threads); 4, 5: Winograd's transformed weights and
/// padded input (calling thread); [`DEQUANTISED`].
const SLOTS: usize = 7;

/// A quantized linear weight dequantised to f32 for one call (calling thread).
pub(crate) const DEQUANTISED: usize = 6;

thread_local! {
    static BUFFERS: RefCell<[Vec<f32>; SLOTS]> = const { RefCell::new([const { Vec::new() }; SLOTS]) };
}

/// A buffer of exactly `len` elements (contents unspecified: callers overwrite what they read).
pub(crate) fn take(slot: usize, len: usize) -> Vec<f32> {
    let mut v = take_at_least(slot, len);
    v.truncate(len);
    v
}

/// A buffer of at least `len` elements (contents unspecified). Unlike [`take`] it never
/// shortens the buffer, so a slot whose callers want different sizes is zero-filled only up to
/// the largest size once, not again on every growth after a smaller call (Winograd's transformed
/// weights range from 14 to 236 MB over a UNet step).
pub(crate) fn take_at_least(slot: usize, len: usize) -> Vec<f32> {
    let mut v = BUFFERS.with(|b| std::mem::take(&mut b.borrow_mut()[slot]));
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v
}

/// Returns a buffer to its slot for the next call on this thread. (Dropping large ones instead
/// made a VAE decode 23% slower: re-zeroing and re-faulting ~270 MB per 512² layer.)
pub(crate) fn give(slot: usize, v: Vec<f32>) {
    BUFFERS.with(|b| b.borrow_mut()[slot] = v);
}

/// Frees this thread's buffers (the engine calls it after each job).
pub(crate) fn release() {
    BUFFERS.with(|b| *b.borrow_mut() = [const { Vec::new() }; SLOTS]);
}

/// A zeroed output buffer. Large ones are marked for transparent huge pages before their first
/// write (Linux, where THP is usually in `madvise` mode): an 84 MB GEGLU output is then ~40 page
/// faults instead of ~20 000, which `perf` showed as ~15% of a linear layer. `vec![0; n]` is a
/// `calloc`, which for sizes like these maps fresh zero pages without touching them, so nothing
/// is zeroed twice.
pub(crate) fn output(len: usize) -> Vec<f32> {
    let v = vec![0f32; len];
    #[cfg(target_os = "linux")]
    if len * 4 >= 4 << 20 {
        let start = (v.as_ptr() as usize).next_multiple_of(4096);
        let end = (v.as_ptr() as usize + len * 4) & !4095;
        if end > start {
            // SAFETY: advice only, on pages inside this allocation; failure is harmless.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v
}
