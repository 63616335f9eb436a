//! What a masked edit's repainted area starts from: AUTOMATIC1111's "masked content"
//! (`inpainting_fill` 0–3). `original` is diffusers' legacy inpainting (the input's own
//! latents, noised); `fill` first paints the area over with the blurred colours around it;
//! `latent_noise` and `latent_nothing` replace its clean latents by unit noise or by zeros
//! before the noising, so the content under the mask is not kept.

use burn::tensor::{Device, Tensor};
use image::{GrayImage, RgbImage};

use crate::rng::NoiseSource;
use crate::scheduler::noise_like;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskedContent {
    #[default]
    Original,
    Fill,
    LatentNoise,
    LatentNothing,
}

impl MaskedContent {
    pub const NAMES: [&str; 4] = ["original", "fill", "latent_noise", "latent_nothing"];

    pub fn parse(s: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| [Self::Original, Self::Fill, Self::LatentNoise, Self::LatentNothing][i])
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// A1111's `inpainting_fill`: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
    pub fn from_a1111(n: i64) -> Option<Self> {
        [Self::Fill, Self::Original, Self::LatentNoise, Self::LatentNothing]
            .get(usize::try_from(n).ok()?)
            .copied()
    }

    /// The image the VAE encodes (`fill` paints the masked area over first).
    pub fn image(self, image: &RgbImage, mask: &GrayImage) -> RgbImage {
        match self {
            Self::Fill => fill(image, mask),
            _ => image.clone(),
        }
    }

    /// The clean latents the noising starts from; `mask` at latent size, 1 = repaint. Noise is
    /// drawn (after every other draw of the start) only for `latent_noise`.
    pub fn latents(self, x0: Tensor<4>, mask: &Tensor<4>, rng: &mut dyn NoiseSource, device: &Device) -> Tensor<4> {
        let keep = mask.clone().neg() + 1.0;
        match self {
            Self::Original | Self::Fill => x0,
            Self::LatentNothing => x0 * keep,
            Self::LatentNoise => {
                let noise = noise_like(rng, x0.dims(), device);
                x0 * keep + noise * mask.clone()
            }
        }
    }
}

/// A1111's `masking.fill`: the kept pixels (premultiplied by alpha) blurred at radii
/// 256, 64, 16, 4, 2, 0 and composited one over the other, so the masked area takes the
/// colours around it, coarse to fine; kept pixels stay exactly as they were.
pub fn fill(image: &RgbImage, mask: &GrayImage) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    // premultiplied RGBA in 0..1: alpha 1 where kept (mask black), 0 where repainted
    let mut src = vec![[0f32; 4]; w * h];
    for (i, (p, m)) in image.pixels().zip(mask.pixels()).enumerate() {
        let a = 1.0 - m[0] as f32 / 255.0;
        src[i] = [
            p[0] as f32 / 255.0 * a,
            p[1] as f32 / 255.0 * a,
            p[2] as f32 / 255.0 * a,
            a,
        ];
    }
    let mut out = vec![[0f32; 4]; w * h]; // premultiplied, starts transparent
    for (radius, repeats) in [(256.0, 1), (64.0, 1), (16.0, 2), (4.0, 4), (2.0, 2), (0.0, 1)] {
        let blurred = gaussian(&src, w, h, radius);
        for _ in 0..repeats {
            for (o, s) in out.iter_mut().zip(&blurred) {
                // "over" on premultiplied colours
                for c in 0..4 {
                    o[c] = s[c] + o[c] * (1.0 - s[3]);
                }
            }
        }
    }
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = out[y as usize * w + x as usize];
        let un = |c: f32| {
            if p[3] > 0.0 {
                (c / p[3] * 255.0).round().clamp(0.0, 255.0) as u8
            } else {
                0
            }
        };
        image::Rgb([un(p[0]), un(p[1]), un(p[2])])
    })
}

/// A Gaussian blur of standard deviation `sigma` as three box blurs per axis (as PIL does),
/// edges extended.
fn gaussian(src: &[[f32; 4]], w: usize, h: usize, sigma: f32) -> Vec<[f32; 4]> {
    if sigma <= 0.0 {
        return src.to_vec();
    }
    // box radius whose three passes have variance sigma²
    let r = (((12.0 * sigma * sigma / 3.0 + 1.0).sqrt() - 1.0) / 2.0)
        .round()
        .max(1.0) as usize;
    let mut a = src.to_vec();
    let mut b = vec![[0f32; 4]; w * h];
    for _ in 0..3 {
        box_pass(&a, &mut b, w, h, r, true);
        box_pass(&b, &mut a, w, h, r, false);
    }
    a
}

/// One box blur of radius `r` along rows (`horizontal`) or columns, by a running sum.
fn box_pass(src: &[[f32; 4]], dst: &mut [[f32; 4]], w: usize, h: usize, r: usize, horizontal: bool) {
    let (len, lines) = if horizontal { (w, h) } else { (h, w) };
    let at = |line: usize, i: usize| if horizontal { line * w + i } else { i * w + line };
    let norm = 1.0 / (2 * r + 1) as f32;
    for line in 0..lines {
        let get = |i: isize| src[at(line, i.clamp(0, len as isize - 1) as usize)];
        let mut sum = [0f32; 4];
        for i in -(r as isize)..=(r as isize) {
            let p = get(i);
            for c in 0..4 {
                sum[c] += p[c];
            }
        }
        for i in 0..len {
            dst[at(line, i)] = sum.map(|s| s * norm);
            let (add, sub) = (get(i as isize + r as isize + 1), get(i as isize - r as isize));
            for c in 0..4 {
                sum[c] += add[c] - sub[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_keeps_kept_pixels_and_paints_the_hole_from_around_it() {
        // left half red, right half blue; the mask covers a square on the red side
        let image = RgbImage::from_fn(64, 64, |x, _| {
            if x < 32 {
                image::Rgb([200, 0, 0])
            } else {
                image::Rgb([0, 0, 200])
            }
        });
        let mask = GrayImage::from_fn(64, 64, |x, y| {
            image::Luma([if (8..20).contains(&x) && (24..40).contains(&y) {
                255
            } else {
                0
            }])
        });
        let mut holed = image.clone();
        for (p, m) in holed.pixels_mut().zip(mask.pixels()) {
            if m[0] == 255 {
                *p = image::Rgb([0, 255, 0]);
            }
        }
        let filled = fill(&holed, &mask);
        for (x, y, p) in filled.enumerate_pixels() {
            if mask.get_pixel(x, y)[0] == 0 {
                assert_eq!(p, holed.get_pixel(x, y), "kept pixel ({x}, {y}) changed");
            }
        }
        // the hole's centre is reddish (its surroundings), with no green left
        let c = filled.get_pixel(14, 32);
        assert!(c[0] > 120 && c[1] == 0 && c[2] < 80, "{c:?}");
    }

    #[test]
    fn names_and_a1111_numbers() {
        for n in MaskedContent::NAMES {
            assert_eq!(MaskedContent::parse(n).map(MaskedContent::name), Some(n));
        }
        assert_eq!(MaskedContent::from_a1111(0), Some(MaskedContent::Fill));
        assert_eq!(MaskedContent::from_a1111(1), Some(MaskedContent::Original));
        assert_eq!(MaskedContent::from_a1111(4), None);
        assert_eq!(MaskedContent::from_a1111(-1), None);
    }
}
