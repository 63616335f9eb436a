//! Group normalisation with an optional SiLU fused into the same pass.

use rayon::prelude::*;

use super::scratch;
use super::simd::{self, multiversion};

/// x: `[batch, channels, spatial]` → same shape; `(x − mean_g) / √(var_g + eps) · γ_c + β_c`
/// over each group of `channels / groups` channels, then `y · σ(y)` when `silu`: the two passes
/// ([`affine_params`], [`normalise`]) as one, the reference the tests hold the kernels to.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn group_norm(
    x: &[f32],
    batch: usize,
    channels: usize,
    spatial: usize,
    groups: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
    silu: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), batch * channels * spatial);
    assert_eq!(channels % groups, 0);
    let params = affine_params(x, batch, channels, spatial, groups, gamma, beta, eps);
    normalise(x, spatial, &params, silu)
}

/// Each channel of `x` (`spatial` values each) through [`affine`] with its `params` entry (from
/// [`affine_params`]): [`group_norm`]'s second pass.
pub(crate) fn normalise(x: &[f32], spatial: usize, params: &[(f32, f32)], silu: bool) -> Vec<f32> {
    assert_eq!(x.len(), spatial * params.len());
    let mut out = scratch::output(x.len());
    out.par_chunks_mut(spatial)
        .zip(x.par_chunks(spatial))
        .zip(params)
        .for_each(|((d, s), &p)| affine(d, s, p, silu));
    out
}

/// Per `(batch, channel)`, the `(scale, shift)` that [`group_norm`] applies to that channel
/// (`y = x·scale + shift`, then SiLU): a convolution that normalises its input as it reads it
/// ([`affine`] per row) computes exactly what `group_norm` then the convolution do.
#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_params(
    x: &[f32],
    batch: usize,
    channels: usize,
    spatial: usize,
    groups: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
) -> Vec<(f32, f32)> {
    assert_eq!(x.len(), batch * channels * spatial);
    assert_eq!(channels % groups, 0);
    let per = channels / groups;
    let group_len = per * spatial;
    let mut params = vec![(0f32, 0f32); batch * channels];
    params
        .par_chunks_mut(per)
        .zip(x.par_chunks(group_len))
        .enumerate()
        .for_each(|(bg, (dst, src))| {
            let g = bg % groups;
            let mean = sum(src) / group_len as f64;
            let var = sum_sq_dev(src, mean as f32) / group_len as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            for (c, d) in dst.iter_mut().enumerate() {
                let ch = g * per + c;
                let gm = gamma.map_or(1.0, |v| v[ch] as f64);
                let scale = rstd * gm;
                let shift = beta.map_or(0.0, |v| v[ch] as f64) - mean * scale;
                *d = (scale as f32, shift as f32);
            }
        });
    params
}

multiversion! {
    fn sum(xs: &[f32]) -> f64 { simd::sum(xs) }
}

multiversion! {
    fn sum_sq_dev(xs: &[f32], mean: f32) -> f64 { simd::sum_sq_dev(xs, mean) }
}

/// `dst = src·scale + shift`, then SiLU when `silu`: one channel's rows of [`group_norm`].
pub(crate) fn affine(dst: &mut [f32], src: &[f32], (scale, shift): (f32, f32), silu: bool) {
    affine_rows(dst, src, scale, shift, silu)
}

multiversion! {
    fn affine_rows(dst: &mut [f32], src: &[f32], scale: f32, shift: f32, silu: bool) {
        if silu {
            for (d, &s) in dst.iter_mut().zip(src) {
                let y = s * scale + shift;
                *d = y / (1.0 + simd::exp(-y));
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s * scale + shift;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_definition() {
        let (b, c, s, g) = (2, 6, 37, 3);
        let x: Vec<f32> = (0..b * c * s).map(|i| ((i * 7919) % 113) as f32 / 10.0 - 5.0).collect();
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 / 4.0).collect();
        let beta: Vec<f32> = (0..c).map(|i| i as f32 - 2.0).collect();
        for silu in [false, true] {
            let got = group_norm(&x, b, c, s, g, Some(&gamma), Some(&beta), 1e-5, silu);
            for bi in 0..b {
                for gi in 0..g {
                    let idx = |k: usize| bi * c * s + gi * (c / g) * s + k;
                    let n = (c / g) * s;
                    let mean: f64 = (0..n).map(|k| x[idx(k)] as f64).sum::<f64>() / n as f64;
                    let var: f64 = (0..n).map(|k| (x[idx(k)] as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                    for k in 0..n {
                        let ch = gi * (c / g) + k / s;
                        let mut y =
                            (x[idx(k)] as f64 - mean) / (var + 1e-5).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                        if silu {
                            y /= 1.0 + (-y).exp();
                        }
                        assert!((got[idx(k)] as f64 - y).abs() < 1e-5, "{} vs {y}", got[idx(k)]);
                    }
                }
            }
        }
    }
}
