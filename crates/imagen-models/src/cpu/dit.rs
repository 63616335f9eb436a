//! The diffusion transformers' elementwise work in one pass each (burn composes each from 5–10
//! passes over the activations): GELU's tanh form, adaLN's modulated layer norm, the q/k RMS
//! norm with the rotary embedding after it, and gated residual adds.

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::simd::{self, multiversion};
use super::{host, profile, scratch, slice, tensor};

/// `gelu(x, approximate="tanh")`. x: any shape → same shape
pub fn gelu_tanh<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    let xs = host(x)?;
    let _t = profile::Timer::new(profile::Op::Other);
    let src = slice(&xs);
    let mut out = scratch::output(src.len());
    out.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| gelu_tanh_chunk(d, s));
    Some(tensor(out, x.dims()))
}

multiversion! {
    fn gelu_tanh_chunk(dst: &mut [f32], src: &[f32]) {
        const K: f32 = 0.797_884_6; // √(2/π)
        for (d, &x) in dst.iter_mut().zip(src) {
            let u = K * (x + 0.044715 * x * x * x);
            // tanh(u) = 1 − 2/(e^{2u} + 1), saturating correctly at ±∞
            let t = 1.0 - 2.0 / (simd::exp(2.0 * u) + 1.0);
            *d = 0.5 * x * (1.0 + t);
        }
    }
}

/// Layer norm without affine parameters, then `· (1 + scale) + shift` per sample.
/// x: `[b, n, dim]`, shift/scale: `[b, dim]` → `[b, n, dim]`
pub fn modulated_layer_norm(x: &Tensor<3>, shift: &Tensor<2>, scale: &Tensor<2>, eps: f64) -> Option<Tensor<3>> {
    let (xs, sh, sc) = (host(x)?, host(shift)?, host(scale)?);
    let [b, n, dim] = x.dims();
    let _t = profile::Timer::new(profile::Op::Other);
    let (src, sh, sc) = (slice(&xs), slice(&sh), slice(&sc));
    let mut out = scratch::output(src.len());
    out.par_chunks_mut(dim * 16)
        .zip(src.par_chunks(dim * 16))
        .enumerate()
        .for_each(|(chunk, (d, s))| {
            let first_row = chunk * 16;
            for (r, (d, s)) in d.chunks_mut(dim).zip(s.chunks(dim)).enumerate() {
                let sample = ((first_row + r) / n).min(b - 1);
                let row = sample * dim..(sample + 1) * dim;
                modulated_row(d, s, &sh[row.clone()], &sc[row], eps);
            }
        });
    Some(tensor(out, [b, n, dim]))
}

multiversion! {
    fn modulated_row(dst: &mut [f32], src: &[f32], shift: &[f32], scale: &[f32], eps: f64) {
        let dim = src.len();
        let mean = simd::sum(src) / dim as f64;
        let var = simd::sum_sq_dev(src, mean as f32) / dim as f64;
        let rstd = (1.0 / (var + eps).sqrt()) as f32;
        let mean = mean as f32;
        for i in 0..dim {
            dst[i] = (src[i] - mean) * rstd * (1.0 + scale[i]) + shift[i];
        }
    }
}

/// Per head: RMS norm with γ, then the rotary embedding of its position (`offset + row` in the
/// tables: a stream placed after `offset` tokens of the joint sequence).
/// x: `[b, n, h, d]`, gamma: `[d]`, cos/sin: `[≥ offset + n, d]` → `[b, n, h, d]`
pub fn rms_norm_rope(
    x: &Tensor<4>,
    gamma: &Tensor<1>,
    eps: f64,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    offset: usize,
) -> Option<Tensor<4>> {
    let (xs, gs, cs, ss) = (host(x)?, host(gamma)?, host(cos)?, host(sin)?);
    let [b, n, h, d] = x.dims();
    if cos.dims()[0] < offset + n || cos.dims()[1] != d || !d.is_multiple_of(2) {
        return None;
    }
    let _t = profile::Timer::new(profile::Op::Other);
    let (src, g, c, s) = (slice(&xs), slice(&gs), slice(&cs), slice(&ss));
    let mut out = scratch::output(src.len());
    // one chunk per (sample, token): its h heads share the position
    out.par_chunks_mut(h * d)
        .zip(src.par_chunks(h * d))
        .enumerate()
        .for_each(|(i, (dst, x))| {
            let pos = offset + i % n;
            let (c, s) = (&c[pos * d..(pos + 1) * d], &s[pos * d..(pos + 1) * d]);
            for (dst, x) in dst.chunks_mut(d).zip(x.chunks(d)) {
                norm_rope_head(dst, x, g, eps, c, s);
            }
        });
    Some(tensor(out, [b, n, h, d]))
}

multiversion! {
    fn norm_rope_head(dst: &mut [f32], x: &[f32], gamma: &[f32], eps: f64, cos: &[f32], sin: &[f32]) {
        let d = x.len();
        let ms = simd::sum_sq_dev(x, 0.0) / d as f64;
        let r = (1.0 / (ms + eps).sqrt()) as f32;
        for p in 0..d / 2 {
            let (i, j) = (2 * p, 2 * p + 1);
            let (re, im) = (x[i] * r * gamma[i], x[j] * r * gamma[j]);
            dst[i] = re * cos[i] - im * sin[i];
            dst[j] = im * cos[j] + re * sin[j];
        }
    }
}

/// `x + gate · y`, the gate per sample. x/y: `[b, n, dim]`, gate: `[b, dim]` → `[b, n, dim]`
pub fn gated_add(x: &Tensor<3>, gate: &Tensor<2>, y: &Tensor<3>) -> Option<Tensor<3>> {
    let (xs, gs, ys) = (host(x)?, host(gate)?, host(y)?);
    let [b, n, dim] = x.dims();
    if y.dims() != [b, n, dim] {
        return None;
    }
    let _t = profile::Timer::new(profile::Op::Other);
    let (xv, g, yv) = (slice(&xs), slice(&gs), slice(&ys));
    let mut out = scratch::output(xv.len());
    out.par_chunks_mut(dim)
        .zip(xv.par_chunks(dim).zip(yv.par_chunks(dim)))
        .enumerate()
        .for_each(|(row, (d, (x, y)))| {
            let g = &g[(row / n) * dim..(row / n + 1) * dim];
            for i in 0..dim {
                d[i] = x[i] + g[i] * y[i];
            }
        });
    Some(tensor(out, [b, n, dim]))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32")
    }

    fn close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, w| m.max(w.abs())).max(1e-12);
        let err = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()))
            / scale;
        assert!(err < tol, "relative error {err:e}");
    }

    fn randn<const D: usize>(dims: [usize; D]) -> Tensor<D> {
        Tensor::random(dims, Distribution::Normal(0.0, 2.0), &Device::flex())
    }

    #[test]
    fn gelu_tanh_matches_definition() {
        let x = randn([3, 1000]);
        let xs = values(x.clone());
        let want: Vec<f64> = xs
            .iter()
            .map(|&x| {
                let x = x as f64;
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
            })
            .collect();
        close(&values(super::gelu_tanh(&x).expect("kernel")), &want, 1e-6);
    }

    #[test]
    fn modulated_norm_rope_and_gate_match_definitions() {
        let (b, n, h, d) = (2, 5, 3, 8);
        let x = randn([b, n, h * d]);
        let (shift, scale) = (randn([b, h * d]), randn([b, h * d]));
        let (xs, sh, sc) = (values(x.clone()), values(shift.clone()), values(scale.clone()));
        let dim = h * d;
        let mut want = Vec::new();
        for row in 0..b * n {
            let r = &xs[row * dim..(row + 1) * dim];
            let mean = r.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            let s = row / n;
            for i in 0..dim {
                let y = (r[i] as f64 - mean) / (var + 1e-6).sqrt();
                want.push(y * (1.0 + sc[s * dim + i] as f64) + sh[s * dim + i] as f64);
            }
        }
        close(
            &values(super::modulated_layer_norm(&x, &shift, &scale, 1e-6).expect("kernel")),
            &want,
            1e-5,
        );

        // RMS norm per head, then the rotation of position offset + token
        let q = x.clone().reshape([b, n, h, d]);
        let gamma = randn([d]);
        let (cos, sin) = (randn([n + 2, d]), randn([n + 2, d]));
        let (g, c, s) = (values(gamma.clone()), values(cos.clone()), values(sin.clone()));
        let mut want = Vec::new();
        for (row, head) in xs.chunks(d).enumerate() {
            let pos = 2 + (row / h) % n;
            let ms = head.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let y: Vec<f64> = head
                .iter()
                .zip(&g)
                .map(|(&v, &g)| v as f64 / (ms + 1e-6).sqrt() * g as f64)
                .collect();
            for p in 0..d / 2 {
                let (i, j) = (2 * p, 2 * p + 1);
                want.push(y[i] * c[pos * d + i] as f64 - y[j] * s[pos * d + i] as f64);
                want.push(y[j] * c[pos * d + j] as f64 + y[i] * s[pos * d + j] as f64);
            }
        }
        let got = super::rms_norm_rope(&q, &gamma, 1e-6, &cos, &sin, 2).expect("kernel");
        close(&values(got), &want, 1e-5);

        let y = randn([b, n, dim]);
        let ys = values(y.clone());
        let want: Vec<f64> = (0..b * n * dim)
            .map(|i| xs[i] as f64 + sc[(i / (n * dim)) * dim + i % dim] as f64 * ys[i] as f64)
            .collect();
        close(&values(super::gated_add(&x, &scale, &y).expect("kernel")), &want, 1e-6);
    }
}
