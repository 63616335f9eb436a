//! Black Forest Labs' single-file FLUX.1 layout (`flux1-dev.safetensors`, and the same names in
//! the GGUF files ComfyUI-GGUF users download): q/k/v fused per stream, single blocks' q/k/v and
//! MLP input fused in `linear1`, the final norm's (shift, scale) in the opposite order to
//! diffusers'. The inverse of diffusers' `convert_flux_transformer_checkpoint_to_diffusers`, as one
//! table from diffusers' key to the file's key and view (see [`super::weights::View`]).

use crate::models::flux::FluxConfig;

/// Whether `keys` hold a BFL-layout transformer (bare or under `model.diffusion_model.`).
pub fn is_bfl<'a>(mut keys: impl Iterator<Item = &'a str>) -> bool {
    keys.any(|k| k.ends_with("double_blocks.0.img_attn.qkv.weight") || k.ends_with("single_blocks.0.linear1.weight"))
}

/// The file key (with its view suffix) holding diffusers' `key`, for a transformer of config `c`.
pub fn key(diffusers: &str, c: &FluxConfig) -> Option<String> {
    let dim = c.inner_dim();
    let mlp = 4 * dim;
    let (param, leaf) = diffusers.rsplit_once('.')?;
    const FLAT: [(&str, &str); 10] = [
        ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
        ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
        ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
        ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
        ("context_embedder", "txt_in"),
        ("x_embedder", "img_in"),
        ("proj_out", "final_layer.linear"),
        ("norm_out.linear", "final_layer.adaLN_modulation.1"),
    ];
    if let Some((_, theirs)) = FLAT.iter().find(|(ours, _)| *ours == param) {
        let swap = if param == "norm_out.linear" { "#swap" } else { "" };
        return Some(format!("{theirs}.{leaf}{swap}"));
    }
    let (block, rest) = split_block(param)?;
    if let Some(i) = block.strip_prefix("transformer_blocks.") {
        let d = format!("double_blocks.{i}");
        let qkv = |stream: &str, k: usize| format!("{d}.{stream}_attn.qkv.{leaf}#rows={k}/3");
        return Some(match rest {
            "norm1.linear" => format!("{d}.img_mod.lin.{leaf}"),
            "norm1_context.linear" => format!("{d}.txt_mod.lin.{leaf}"),
            "attn.to_q" => qkv("img", 0),
            "attn.to_k" => qkv("img", 1),
            "attn.to_v" => qkv("img", 2),
            "attn.add_q_proj" => qkv("txt", 0),
            "attn.add_k_proj" => qkv("txt", 1),
            "attn.add_v_proj" => qkv("txt", 2),
            "attn.norm_q" => format!("{d}.img_attn.norm.query_norm.scale"),
            "attn.norm_k" => format!("{d}.img_attn.norm.key_norm.scale"),
            "attn.norm_added_q" => format!("{d}.txt_attn.norm.query_norm.scale"),
            "attn.norm_added_k" => format!("{d}.txt_attn.norm.key_norm.scale"),
            "ff.net.0.proj" => format!("{d}.img_mlp.0.{leaf}"),
            "ff.net.2" => format!("{d}.img_mlp.2.{leaf}"),
            "ff_context.net.0.proj" => format!("{d}.txt_mlp.0.{leaf}"),
            "ff_context.net.2" => format!("{d}.txt_mlp.2.{leaf}"),
            "attn.to_out.0" => format!("{d}.img_attn.proj.{leaf}"),
            "attn.to_add_out" => format!("{d}.txt_attn.proj.{leaf}"),
            _ => return None,
        });
    }
    let i = block.strip_prefix("single_transformer_blocks.")?;
    let s = format!("single_blocks.{i}");
    let linear1 = |start: usize, len: usize| format!("{s}.linear1.{leaf}#rows={start}..{}", start + len);
    Some(match rest {
        "norm.linear" => format!("{s}.modulation.lin.{leaf}"),
        "attn.to_q" => linear1(0, dim),
        "attn.to_k" => linear1(dim, dim),
        "attn.to_v" => linear1(2 * dim, dim),
        "proj_mlp" => linear1(3 * dim, mlp),
        "attn.norm_q" => format!("{s}.norm.query_norm.scale"),
        "attn.norm_k" => format!("{s}.norm.key_norm.scale"),
        "proj_out" => format!("{s}.linear2.{leaf}"),
        _ => return None,
    })
}

/// `transformer_blocks.3.attn.to_q` → (`transformer_blocks.3`, `attn.to_q`).
fn split_block(param: &str) -> Option<(&str, &str)> {
    let (kind, after) = param.split_once('.')?;
    let (index, rest) = after.split_once('.')?;
    index.parse::<usize>().ok()?;
    Some((&param[..kind.len() + 1 + index.len()], rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_diffusers_converter() {
        let c = FluxConfig::default();
        let k = |d: &str| key(d, &c).unwrap_or_default();
        assert_eq!(
            k("transformer_blocks.3.attn.to_k.weight"),
            "double_blocks.3.img_attn.qkv.weight#rows=1/3"
        );
        assert_eq!(
            k("transformer_blocks.0.attn.add_v_proj.bias"),
            "double_blocks.0.txt_attn.qkv.bias#rows=2/3"
        );
        assert_eq!(
            k("single_transformer_blocks.7.proj_mlp.weight"),
            "single_blocks.7.linear1.weight#rows=9216..21504"
        );
        assert_eq!(
            k("single_transformer_blocks.7.attn.norm_k.weight"),
            "single_blocks.7.norm.key_norm.scale"
        );
        assert_eq!(k("norm_out.linear.bias"), "final_layer.adaLN_modulation.1.bias#swap");
        assert_eq!(
            k("time_text_embed.guidance_embedder.linear_2.weight"),
            "guidance_in.out_layer.weight"
        );
        assert!(key("transformer_blocks.0.unknown.weight", &c).is_none());
    }
}
