//! Wall time spent inside each CPU kernel, for `imagen bench --profile`: what is left of a step
//! outside them is burn's own ops (layer norm, GELU, element-wise, copies).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Copy)]
pub enum Op {
    Conv,
    Linear,
    Attention,
    GroupNorm,
    /// layer norm, GEGLU, 2× upsampling
    Other,
}

pub const NAMES: [&str; 5] = ["conv", "linear", "attention", "group-norm", "layer-norm+geglu+upsample"];

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static CALLS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Starts (or stops) accounting; totals are kept until [`reset`].
pub fn set_enabled(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

pub fn reset() {
    for i in 0..5 {
        NANOS[i].store(0, Ordering::Relaxed);
        CALLS[i].store(0, Ordering::Relaxed);
    }
}

/// `(name, seconds, calls)` per kernel since the last reset.
pub fn totals() -> Vec<(&'static str, f64, u64)> {
    (0..5)
        .map(|i| {
            (
                NAMES[i],
                NANOS[i].load(Ordering::Relaxed) as f64 / 1e9,
                CALLS[i].load(Ordering::Relaxed),
            )
        })
        .collect()
}

pub(crate) struct Timer(Option<(Op, Instant)>);

impl Timer {
    pub(crate) fn new(op: Op) -> Self {
        Timer(ON.load(Ordering::Relaxed).then(|| (op, Instant::now())))
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((op, t)) = self.0 {
            NANOS[op as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            CALLS[op as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}
