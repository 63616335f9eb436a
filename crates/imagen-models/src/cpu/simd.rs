//! Element-wise loops written so LLVM vectorises them, compiled for AVX-512 and AVX2+FMA and
//! picked at run time (the crate itself is built for baseline x86-64).

/// Defines `fn $name(..)` whose body is compiled three times (AVX-512, AVX2+FMA, baseline);
/// the widest one the CPU supports runs. The body must be plain loops over slices.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn __mv_body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                fn v4($($a: $t),*) $(-> $r)? { __mv_body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($a: $t),*) $(-> $r)? { __mv_body($($a),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the features were just detected.
                    return unsafe { v4($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { v3($($a),*) };
                }
            }
            __mv_body($($a),*)
        }
    };
}
pub(crate) use multiversion;

/// Lanes for manual reductions: 16 independent accumulators vectorise as one AVX-512 register
/// (or two AVX2 ones) without needing fast-math reassociation.
pub(crate) const LANES: usize = 16;

/// `e^x` in f32, the Cephes polynomial (as in `avx_mathfun`): ~1 ulp. Inputs are clamped to
/// [−87.3, 88.3] (so `-inf` gives ~1e−38, not 0: callers mask explicitly). Branch-free and
/// without float→int casts (Rust's saturating cast does not vectorise).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer, which then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.3 { 88.3 } else { x };
    let t = x.mul_add(LOG2E, MAGIC);
    let fx = t - MAGIC; // round(x·log2 e) ∈ [−126, 127]
    // mul_add: one FMA each where the caller is compiled with FMA (the AVX2/AVX-512 versions
    // from `multiversion!`); libm's exact fmaf on the baseline fallback.
    let r = (-fx).mul_add(C2, (-fx).mul_add(C1, x));
    let z = r * r;
    let mut y = 1.987_569_1e-4_f32;
    y = y.mul_add(r, 1.398_199_9e-3);
    y = y.mul_add(r, 8.333_452e-3);
    y = y.mul_add(r, 4.166_579_6e-2);
    y = y.mul_add(r, 1.666_666_5e-1);
    y = y.mul_add(r, 0.5);
    let y = y.mul_add(z, r) + 1.0;
    // 2^fx: fx + 127 as the exponent field.
    let pow2 = f32::from_bits((t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127)) << 23);
    y * pow2
}

/// `max` over a slice (−inf when empty).
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            // a plain compare (not f32::max, whose NaN rules cost a blend per lane)
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for a in acc {
        m = m.max(a);
    }
    m
}

/// Sum over a slice with 16 partial sums, returned in f64.
#[inline(always)]
pub(crate) fn sum(xs: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64
}

/// Sum of squared deviations from `mean`, with 16 partial sums, in f64.
#[inline(always)]
pub(crate) fn sum_sq_dev(xs: &[f32], mean: f32) -> f64 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&x| (x - mean) * (x - mean)).sum();
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = x.exp();
            let rel = ((exp(x) - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn reductions() {
        let xs: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        assert_eq!(max(&xs), 50.0);
        let s: f64 = xs.iter().map(|&x| x as f64).sum();
        assert_eq!(sum(&xs), s);
        let m = (s / 1000.0) as f32;
        let v: f64 = xs.iter().map(|&x| ((x - m) as f64).powi(2)).sum();
        assert!((sum_sq_dev(&xs, m) - v).abs() < 1e-6 * v);
    }
}
