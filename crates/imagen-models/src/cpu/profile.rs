//! Wall time spent inside each CPU kernel, for `imagen bench --profile`: what is left of a step
//! outside them is burn's own ops (residual adds, concatenations, copies, time embedding).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Copy)]
pub enum Op {
    Conv,
    Linear,
    Attention,
    GroupNorm,
    /// layer norm, GEGLU, GELU, 2× upsampling
    Other,
}

/// Report names, in [`Op`]'s order.
pub const NAMES: [&str; 5] = ["conv", "linear", "attention", "group-norm", "layer-norm+geglu+upsample"];
const N: usize = NAMES.len();

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static CALLS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

/// Starts (or stops) accounting; totals accumulate for the process.
pub fn set_enabled(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// `(name, seconds, calls)` per kernel since accounting started.
pub fn totals() -> Vec<(&'static str, f64, u64)> {
    (0..N)
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
