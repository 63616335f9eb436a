//! Stability AI's single-file SD3 / 3.5 layout (`sd3.5_medium.safetensors`): the MMDiT under
//! `model.diffusion_model.` in its original names (q/k/v fused per stream, `ln_q`/`ln_k`,
//! `adaLN_modulation.1`; the last context block's and the final layer's modulation in (shift,
//! scale) order), text encoders under `text_encoders.{clip_l,clip_g,t5xxl}.transformer.`. The
//! inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`, as one table from
//! diffusers' key to the file's key and view.

use crate::models::sd3::Sd3Config;

/// Whether `keys` hold an SD3 MMDiT in the original layout.
pub fn is_mmdit<'a>(mut keys: impl Iterator<Item = &'a str>) -> bool {
    keys.any(|k| k.ends_with("joint_blocks.0.x_block.attn.qkv.weight"))
}

/// The file key (with its view suffix, without `model.diffusion_model.`) holding diffusers' `key`.
pub fn key(diffusers: &str, c: &Sd3Config) -> Option<String> {
    let (param, leaf) = diffusers.rsplit_once('.')?;
    const FLAT: [(&str, &str); 8] = [
        ("pos_embed.proj", "x_embedder.proj"),
        ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
        ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
        ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
        ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
        ("context_embedder", "context_embedder"),
        ("proj_out", "final_layer.linear"),
        ("norm_out.linear", "final_layer.adaLN_modulation.1"),
    ];
    if diffusers == "pos_embed.pos_embed" {
        return Some("pos_embed".into());
    }
    if let Some((_, theirs)) = FLAT.iter().find(|(ours, _)| *ours == param) {
        let swap = if param == "norm_out.linear" { "#swap" } else { "" };
        return Some(format!("{theirs}.{leaf}{swap}"));
    }
    let rest = param.strip_prefix("transformer_blocks.")?;
    let (i, rest) = rest.split_once('.')?;
    let last = i.parse::<usize>().ok()? + 1 == c.num_layers;
    let (x, ctx) = (
        format!("joint_blocks.{i}.x_block"),
        format!("joint_blocks.{i}.context_block"),
    );
    let qkv = |block: &str, attn: &str, k: usize| format!("{block}.{attn}.qkv.{leaf}#rows={k}/3");
    Some(match rest {
        "attn.to_q" => qkv(&x, "attn", 0),
        "attn.to_k" => qkv(&x, "attn", 1),
        "attn.to_v" => qkv(&x, "attn", 2),
        "attn.add_q_proj" => qkv(&ctx, "attn", 0),
        "attn.add_k_proj" => qkv(&ctx, "attn", 1),
        "attn.add_v_proj" => qkv(&ctx, "attn", 2),
        "attn2.to_q" => qkv(&x, "attn2", 0),
        "attn2.to_k" => qkv(&x, "attn2", 1),
        "attn2.to_v" => qkv(&x, "attn2", 2),
        "attn.norm_q" => format!("{x}.attn.ln_q.{leaf}"),
        "attn.norm_k" => format!("{x}.attn.ln_k.{leaf}"),
        "attn.norm_added_q" => format!("{ctx}.attn.ln_q.{leaf}"),
        "attn.norm_added_k" => format!("{ctx}.attn.ln_k.{leaf}"),
        "attn2.norm_q" => format!("{x}.attn2.ln_q.{leaf}"),
        "attn2.norm_k" => format!("{x}.attn2.ln_k.{leaf}"),
        "attn.to_out.0" => format!("{x}.attn.proj.{leaf}"),
        "attn2.to_out.0" => format!("{x}.attn2.proj.{leaf}"),
        "attn.to_add_out" => format!("{ctx}.attn.proj.{leaf}"),
        "norm1.linear" => format!("{x}.adaLN_modulation.1.{leaf}"),
        "norm1_context.linear" if last => format!("{ctx}.adaLN_modulation.1.{leaf}#swap"),
        "norm1_context.linear" => format!("{ctx}.adaLN_modulation.1.{leaf}"),
        "ff.net.0.proj" => format!("{x}.mlp.fc1.{leaf}"),
        "ff.net.2" => format!("{x}.mlp.fc2.{leaf}"),
        "ff_context.net.0.proj" => format!("{ctx}.mlp.fc1.{leaf}"),
        "ff_context.net.2" => format!("{ctx}.mlp.fc2.{leaf}"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_diffusers_converter() {
        let c = Sd3Config::default();
        let k = |d: &str| key(d, &c).unwrap_or_default();
        assert_eq!(
            k("transformer_blocks.2.attn.add_k_proj.weight"),
            "joint_blocks.2.context_block.attn.qkv.weight#rows=1/3"
        );
        assert_eq!(
            k("transformer_blocks.23.norm1_context.linear.bias"),
            "joint_blocks.23.context_block.adaLN_modulation.1.bias#swap"
        );
        assert_eq!(
            k("transformer_blocks.22.norm1_context.linear.bias"),
            "joint_blocks.22.context_block.adaLN_modulation.1.bias"
        );
        assert_eq!(
            k("transformer_blocks.0.attn2.norm_q.weight"),
            "joint_blocks.0.x_block.attn2.ln_q.weight"
        );
        assert_eq!(k("pos_embed.pos_embed"), "pos_embed");
        assert_eq!(
            k("norm_out.linear.weight"),
            "final_layer.adaLN_modulation.1.weight#swap"
        );
    }
}
