//! Floating-point operations of one forward pass, counted from the configs as PyTorch's
//! `FlopCounterMode` counts them: 2 per multiply-add in convolutions, linear layers and the two
//! attention matmuls; norms, activations and resampling are not counted. (Checked against
//! `FlopCounterMode` on the full-size SD 1.5 / SDXL configs in the tests.)

use crate::models::clip::ClipTextConfig;
use crate::models::unet_2d::UNet2DConditionConfig;
use crate::models::vae::AutoencoderKLConfig;

/// A k×k convolution producing `cout × h × w` from `cin` channels, batch `b`.
fn conv(b: u64, cin: usize, cout: usize, k: usize, h: usize, w: usize) -> u64 {
    2 * b * (cout * h * w * cin * k * k) as u64
}

/// `rows` vectors through a `din → dout` linear layer.
fn linear(rows: u64, din: usize, dout: usize) -> u64 {
    2 * rows * (din * dout) as u64
}

/// Q·Kᵀ and A·V for `n` queries over `m` keys of total width `c` (all heads), batch `b`.
fn attention(b: u64, n: usize, m: usize, c: usize) -> u64 {
    2 * 2 * b * (n * m * c) as u64
}

fn resnet(b: u64, cin: usize, cout: usize, h: usize, w: usize, temb: Option<usize>) -> u64 {
    conv(b, cin, cout, 3, h, w)
        + conv(b, cout, cout, 3, h, w)
        + temb.map_or(0, |t| linear(b, t, cout))
        + if cin != cout { conv(b, cin, cout, 1, h, w) } else { 0 }
}

/// `Transformer2DModel`: projections in/out, per layer self-attention, cross-attention over
/// `m` context tokens of width `ctx`, GEGLU feed-forward (4× inner).
fn transformer(b: u64, c: usize, h: usize, w: usize, layers: usize, ctx: usize, m: usize) -> u64 {
    let n = h * w;
    let rows = b * n as u64;
    let per_layer = 4 * linear(rows, c, c)
        + attention(b, n, n, c)
        + 2 * linear(rows, c, c)
        + 2 * linear(b * m as u64, ctx, c)
        + attention(b, n, m, c)
        + linear(rows, c, 8 * c)
        + linear(rows, 4 * c, c);
    2 * linear(rows, c, c) + layers as u64 * per_layer
}

/// One UNet evaluation on `[b, in, h, w]` latents with `m` context tokens.
pub fn unet(c: &UNet2DConditionConfig, b: usize, h: usize, w: usize, m: usize) -> u64 {
    let b = b as u64;
    let n = c.block_out_channels.len();
    let ch = &c.block_out_channels;
    let layers = c.layers_per_block.per_block(n);
    let ctx = c.cross_attention_dim.per_block(n);
    let tl = c.transformer_layers_per_block.per_block(n);
    let temb = ch[0] * 4;
    let mut total = linear(b, ch[0], temb) + linear(b, temb, temb);
    if let Some(dim) = c
        .projection_class_embeddings_input_dim
        .filter(|_| c.addition_embed_type.is_some())
    {
        total += linear(b, dim, temb) + linear(b, temb, temb);
    }
    if let Some(cond) = c.time_cond_proj_dim {
        total += linear(b, cond, ch[0]);
    }
    total += conv(b, c.in_channels, ch[0], 3, h, w);
    let (mut hh, mut ww) = (h, w);
    let mut sizes = vec![(hh, ww)];
    let mut out_c = ch[0];
    for (i, kind) in c.down_block_types.iter().enumerate() {
        let in_c = out_c;
        out_c = ch[i];
        for j in 0..layers[i] {
            total += resnet(b, if j == 0 { in_c } else { out_c }, out_c, hh, ww, Some(temb));
            if kind == "CrossAttnDownBlock2D" {
                total += transformer(b, out_c, hh, ww, tl[i], ctx[i], m);
            }
        }
        if i + 1 < n {
            let (h2, w2) = (hh.div_ceil(2), ww.div_ceil(2));
            total += conv(b, out_c, out_c, 3, h2, w2);
            hh = h2;
            ww = w2;
        }
        sizes.push((hh, ww));
    }
    let last = ch[n - 1];
    total += 2 * resnet(b, last, last, hh, ww, Some(temb));
    if c.mid_block_type.as_deref() != Some("UNetMidBlock2D") {
        total += transformer(b, last, hh, ww, tl[n - 1], ctx[n - 1], m);
    }
    let rev: Vec<usize> = ch.iter().rev().copied().collect();
    let mut out_c = rev[0];
    for (i, kind) in c.up_block_types.iter().enumerate() {
        let bi = n - 1 - i;
        let prev_c = out_c;
        out_c = rev[i];
        let in_c = rev[(i + 1).min(n - 1)];
        let num = layers[bi] + 1;
        for j in 0..num {
            let skip = if j == num - 1 { in_c } else { out_c };
            let res_in = if j == 0 { prev_c } else { out_c };
            total += resnet(b, res_in + skip, out_c, hh, ww, Some(temb));
            if kind == "CrossAttnUpBlock2D" {
                total += transformer(b, out_c, hh, ww, tl[bi], ctx[bi], m);
            }
        }
        if i + 1 < n {
            // Upsampled to the matching skip's size, then a 3×3 conv.
            let (h2, w2) = sizes[n - 2 - i];
            total += conv(b, out_c, out_c, 3, h2, w2);
            hh = h2;
            ww = w2;
        }
    }
    total + conv(b, ch[0], c.out_channels, 3, hh, ww)
}

/// The VAE decoder (with `post_quant_conv`) on `[b, latent, h, w]`.
pub fn vae_decode(c: &AutoencoderKLConfig, b: usize, h: usize, w: usize) -> u64 {
    let b = b as u64;
    let ch = &c.block_out_channels;
    let n = ch.len();
    let lc = c.latent_channels;
    let last = ch[n - 1];
    let mut total = if c.use_post_quant_conv {
        conv(b, lc, lc, 1, h, w)
    } else {
        0
    };
    total += conv(b, lc, last, 3, h, w);
    total += 2 * resnet(b, last, last, h, w, None);
    if c.mid_block_add_attention {
        let px = h * w;
        total += 4 * linear(b * px as u64, last, last) + attention(b, px, px, last);
    }
    let (mut hh, mut ww) = (h, w);
    let mut out_c = last;
    for i in 0..n {
        let prev_c = out_c;
        out_c = ch[n - 1 - i];
        for j in 0..=c.layers_per_block {
            total += resnet(b, if j == 0 { prev_c } else { out_c }, out_c, hh, ww, None);
        }
        if i + 1 < n {
            hh *= 2;
            ww *= 2;
            total += conv(b, out_c, out_c, 3, hh, ww);
        }
    }
    total + conv(b, ch[0], c.out_channels, 3, hh, ww)
}

/// The CLIP text encoder on `[b, n]` token ids, all layers (plus the projection if any).
pub fn clip(c: &ClipTextConfig, b: usize, n: usize) -> u64 {
    let (b, hd) = (b as u64, c.hidden_size);
    let rows = b * n as u64;
    let layer = 4 * linear(rows, hd, hd) + attention(b, n, n, hd) + linear(rows, hd, c.intermediate_size) * 2;
    c.num_hidden_layers as u64 * layer
        + if c.with_projection() {
            linear(b, hd, c.projection_dim)
        } else {
            0
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Totals printed by PyTorch 2.15's `FlopCounterMode` for the same architectures (diffusers
    /// 0.42.1 / transformers 5.23 modules on the meta device).
    #[test]
    fn counts_match_pytorch_flop_counter() {
        let sd15 = UNet2DConditionConfig::sd15();
        assert_eq!(unet(&sd15, 1, 64, 64, 77), 803_273_441_280);
        assert_eq!(unet(&sd15, 2, 64, 64, 77), 1_606_546_882_560);
        assert_eq!(unet(&UNet2DConditionConfig::sdxl(), 1, 128, 128, 77), 6_761_236_398_080);
        assert_eq!(vae_decode(&AutoencoderKLConfig::sd(), 1, 64, 64), 2_514_518_933_504);
        assert_eq!(clip(&ClipTextConfig::vit_l14(), 2, 77), 26_597_007_360);
    }
}
