//! Single-file checkpoints in the original LDM layout (A1111 / CivitAI `.safetensors`):
//! `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.*` (text
//! encoder). The tables turn a diffusers key (what our modules are named after) into its LDM
//! key; they follow diffusers' own conversion script, generalised to any block count.

use super::weights::Weights;
use crate::error::{Error, Result};
use crate::models::unet_2d::UNet2DConditionConfig;
use crate::models::vae::AutoencoderKLConfig;

/// What a single file holds, told from its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// CLIP ViT-L in Hugging Face layout under `cond_stage_model.transformer.`.
    Sd1,
    /// OpenCLIP ViT-H under `cond_stage_model.model.`.
    Sd2,
    /// Two encoders under `conditioner.embedders.{0,1}.`.
    Sdxl,
}

/// `model.diffusion_model.` when a file's denoiser sits under it (whole checkpoints), else ``
/// (denoiser-only files, as FLUX and GGUF transformers ship).
pub fn model_prefix(weights: &Weights) -> &'static str {
    if weights.keys().any(|k| k.starts_with("model.diffusion_model.")) {
        "model.diffusion_model."
    } else {
        ""
    }
}

/// A UNet alone under its LDM names without `model.diffusion_model.` (ComfyUI-GGUF's UNet files).
pub fn unet_only(weights: &Weights) -> bool {
    let has = |p: &str| weights.keys().any(|k| k.starts_with(p));
    has("input_blocks.") && has("out.") && !has("model.diffusion_model.")
}

/// How each network's weights are stored in a single file (by its key prefixes; a UNet-only
/// file: `unet` alone).
pub fn weight_formats(weights: &Weights) -> std::collections::BTreeMap<&'static str, Vec<String>> {
    if unet_only(weights) {
        return [("unet", weights.formats(""))].into_iter().collect();
    }
    let sdxl = weights.keys().any(|k| k.starts_with("conditioner.embedders.1."));
    [
        ("unet", "model.diffusion_model."),
        ("vae", "first_stage_model."),
        (
            "text_encoder",
            if sdxl {
                "conditioner.embedders.0."
            } else {
                "cond_stage_model."
            },
        ),
        ("text_encoder_2", "conditioner.embedders.1."),
    ]
    .into_iter()
    .map(|(c, prefix)| (c, weights.formats(prefix)))
    .filter(|(_, f)| !f.is_empty())
    .collect()
}

pub fn detect(weights: &Weights) -> Result<Arch> {
    let has = |p: &str| weights.keys().any(|k| k.starts_with(p));
    if !has("model.diffusion_model.") {
        return Err(Error::Folder(
            "not a single-file Stable Diffusion checkpoint (no model.diffusion_model.* tensors)".into(),
        ));
    }
    Ok(if has("conditioner.embedders.1.") {
        Arch::Sdxl
    } else if has("cond_stage_model.model.") {
        Arch::Sd2
    } else {
        Arch::Sd1
    })
}

/// ResNet parts: diffusers → LDM.
const RESNET: [(&str, &str); 6] = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
];

fn resnet(rest: &str) -> String {
    RESNET
        .iter()
        .find_map(|(hf, ldm)| rest.strip_prefix(hf).map(|r| format!("{ldm}{r}")))
        .unwrap_or_else(|| rest.to_owned())
}

/// `<prefix><j>.<rest>` → (j, rest).
fn indexed<'a>(key: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (j, rest) = key.strip_prefix(prefix)?.split_once('.')?;
    Some((j.parse().ok()?, rest))
}

/// `<name>.<i>.<kind>.<j>.<rest>` → (i, kind, j, rest).
fn block(key: &str, name: &str) -> Option<(usize, String, usize, String)> {
    let rest = key.strip_prefix(name)?.strip_prefix('.')?;
    let mut parts = rest.splitn(4, '.');
    let i = parts.next()?.parse().ok()?;
    let kind = parts.next()?.to_owned();
    let j = parts.next()?.parse().ok()?;
    Some((i, kind, j, parts.next().unwrap_or_default().to_owned()))
}

/// diffusers UNet key → LDM key (without `model.diffusion_model.`).
pub fn unet_key(key: &str, c: &UNet2DConditionConfig) -> String {
    let n = c.block_out_channels.len();
    let l = c.layers_per_block.per_block(n).first().copied().unwrap_or(2);
    for (hf, ldm) in [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
    ] {
        if let Some(rest) = key.strip_prefix(hf) {
            return format!("{ldm}{rest}");
        }
    }
    if let Some((j, rest)) = indexed(key, "mid_block.resnets.") {
        return format!("middle_block.{}.{}", 2 * j, resnet(rest));
    }
    if let Some((i, kind, j, rest)) = block(key, "down_blocks") {
        let at = (l + 1) * i + j + 1;
        return match kind.as_str() {
            "resnets" => format!("input_blocks.{at}.0.{}", resnet(&rest)),
            "attentions" => format!("input_blocks.{at}.1.{rest}"),
            // downsamplers.0.conv.<rest>
            _ => format!(
                "input_blocks.{}.0.op.{}",
                (l + 1) * (i + 1),
                rest.strip_prefix("conv.").unwrap_or(&rest)
            ),
        };
    }
    if let Some((i, kind, j, rest)) = block(key, "up_blocks") {
        let at = (l + 1) * i + j;
        let attn = c.up_block_types.get(i).is_some_and(|t| t.starts_with("CrossAttn"));
        return match kind.as_str() {
            "resnets" => format!("output_blocks.{at}.0.{}", resnet(&rest)),
            "attentions" => format!("output_blocks.{at}.1.{rest}"),
            _ => format!("output_blocks.{}.{}.{rest}", (l + 1) * i + l, if attn { 2 } else { 1 }),
        };
    }
    key.to_owned()
}

/// Hugging Face CLIP text-model path (without `text_model.`) → OpenCLIP text-tower key, with
/// the loader's views for the fused q/k/v (`#rows=k/3`) and `text_projection` (`#T`).
pub fn open_clip_key(key: &str) -> String {
    for (hf, oc) in [
        ("embeddings.token_embedding.weight", "token_embedding.weight"),
        ("embeddings.position_embedding.weight", "positional_embedding"),
        ("final_layer_norm.", "ln_final."),
        ("text_projection.weight", "text_projection#T"),
    ] {
        if let Some(rest) = key.strip_prefix(hf) {
            return format!("{oc}{rest}");
        }
    }
    let Some((i, rest)) = indexed(key, "encoder.layers.") else {
        return key.to_owned();
    };
    let block = format!("transformer.resblocks.{i}.");
    for (n, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        if let Some(kind) = rest.strip_prefix(&format!("self_attn.{p}.")) {
            return format!("{block}attn.in_proj_{kind}#rows={n}/3");
        }
    }
    for (hf, oc) in [
        ("self_attn.out_proj.", "attn.out_proj."),
        ("layer_norm1.", "ln_1."),
        ("layer_norm2.", "ln_2."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
    ] {
        if let Some(r) = rest.strip_prefix(hf) {
            return format!("{block}{oc}{r}");
        }
    }
    format!("{block}{rest}")
}

/// diffusers VAE key → LDM key (without `first_stage_model.`).
pub fn vae_key(key: &str, c: &AutoencoderKLConfig) -> String {
    let n = c.block_out_channels.len();
    let mut k = key.to_owned();
    for side in ["encoder", "decoder"] {
        if let Some((i, kind, j, rest)) =
            block(&k, &format!("{side}.down_blocks")).or_else(|| block(&k, &format!("{side}.up_blocks")))
        {
            let (dir, idx) = if k.contains(".down_blocks.") {
                ("down", i)
            } else {
                ("up", n - 1 - i)
            };
            k = match kind.as_str() {
                "resnets" => format!("{side}.{dir}.{idx}.block.{j}.{rest}"),
                "downsamplers" => format!("{side}.down.{idx}.downsample.{rest}"),
                _ => format!("{side}.up.{idx}.upsample.{rest}"),
            };
        }
        if let Some((j, rest)) = indexed(&k, &format!("{side}.mid_block.resnets.")) {
            k = format!("{side}.mid.block_{}.{rest}", j + 1);
        }
        if let Some(rest) = k.strip_prefix(&format!("{side}.mid_block.attentions.0.")) {
            let rest = [
                ("group_norm.", "norm."),
                ("to_q.", "q."),
                ("to_k.", "k."),
                ("to_v.", "v."),
                ("to_out.0.", "proj_out."),
            ]
            .iter()
            .find_map(|(hf, ldm)| rest.strip_prefix(hf).map(|r| format!("{ldm}{r}")))
            .unwrap_or_else(|| rest.to_owned());
            k = format!("{side}.mid.attn_1.{rest}");
        }
    }
    k.replace("conv_shortcut.", "nin_shortcut.")
        .replace("conv_norm_out.", "norm_out.")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries of diffusers' conversion table for SD 1.5 (4 blocks, 2 layers).
    #[test]
    fn tables_match_diffusers_conversion_script() {
        let u = UNet2DConditionConfig::sd15();
        for (hf, ldm) in [
            ("time_embedding.linear_1.weight", "time_embed.0.weight"),
            (
                "down_blocks.0.resnets.1.norm1.weight",
                "input_blocks.2.0.in_layers.0.weight",
            ),
            (
                "down_blocks.1.attentions.0.proj_in.weight",
                "input_blocks.4.1.proj_in.weight",
            ),
            ("down_blocks.2.downsamplers.0.conv.bias", "input_blocks.9.0.op.bias"),
            (
                "mid_block.resnets.1.time_emb_proj.weight",
                "middle_block.2.emb_layers.1.weight",
            ),
            ("mid_block.attentions.0.norm.bias", "middle_block.1.norm.bias"),
            (
                "up_blocks.0.resnets.2.conv_shortcut.weight",
                "output_blocks.2.0.skip_connection.weight",
            ),
            ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"),
            ("up_blocks.1.upsamplers.0.conv.weight", "output_blocks.5.2.conv.weight"),
            (
                "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight",
                "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            ("conv_out.bias", "out.2.bias"),
        ] {
            assert_eq!(unet_key(hf, &u), ldm, "{hf}");
        }
        assert_eq!(
            open_clip_key("encoder.layers.3.self_attn.k_proj.bias"),
            "transformer.resblocks.3.attn.in_proj_bias#rows=1/3"
        );
        assert_eq!(
            open_clip_key("encoder.layers.0.mlp.fc2.weight"),
            "transformer.resblocks.0.mlp.c_proj.weight"
        );
        assert_eq!(open_clip_key("text_projection.weight"), "text_projection#T");
        let v = AutoencoderKLConfig::sd();
        for (hf, ldm) in [
            (
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
                "encoder.down.1.block.0.nin_shortcut.weight",
            ),
            (
                "encoder.down_blocks.0.downsamplers.0.conv.weight",
                "encoder.down.0.downsample.conv.weight",
            ),
            (
                "decoder.up_blocks.0.resnets.2.norm1.bias",
                "decoder.up.3.block.2.norm1.bias",
            ),
            (
                "decoder.up_blocks.2.upsamplers.0.conv.bias",
                "decoder.up.1.upsample.conv.bias",
            ),
            (
                "decoder.mid_block.resnets.1.conv2.weight",
                "decoder.mid.block_2.conv2.weight",
            ),
            (
                "encoder.mid_block.attentions.0.to_out.0.weight",
                "encoder.mid.attn_1.proj_out.weight",
            ),
            (
                "encoder.mid_block.attentions.0.group_norm.weight",
                "encoder.mid.attn_1.norm.weight",
            ),
            ("decoder.conv_norm_out.weight", "decoder.norm_out.weight"),
        ] {
            assert_eq!(vae_key(hf, &v), ldm, "{hf}");
        }
    }
}
