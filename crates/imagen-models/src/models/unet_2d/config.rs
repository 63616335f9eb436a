//! `UNet2DConditionModel`'s configuration: diffusers' `unet/config.json`, the presets of the
//! released models, and what imagen supports of it.

use serde::Deserialize;

use super::COMPONENT;
use crate::error::Result;
use crate::load::config::{OneOrMany, unsupported};

/// The fields of diffusers' `unet/config.json` that shape the network; defaults are diffusers'.
#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: OneOrMany<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: OneOrMany<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: OneOrMany<usize>,
    /// SDXL gives a per-block list; SD 1.x/2.x use 1.
    pub transformer_layers_per_block: OneOrMany<usize>,
    /// Despite its name, the number of heads unless `num_attention_heads` is set (diffusers quirk).
    pub attention_head_dim: OneOrMany<usize>,
    pub num_attention_heads: Option<OneOrMany<usize>>,
    pub use_linear_projection: bool,
    /// Only changes fp16 numerics (softmax in f32); our attention already accumulates in f32.
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub time_embedding_type: String,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub dual_cross_attention: bool,
    pub class_embed_type: Option<String>,
    /// SDXL: `"text_time"` (pooled text + size/crop ids). Extension point, not implemented yet.
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<usize>,
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// LCM: guidance embedding projected into the time embedding. Not implemented yet.
    pub time_cond_proj_dim: Option<usize>,
    pub encoder_hid_dim_type: Option<String>,
    pub time_embedding_dim: Option<usize>,
    pub timestep_post_act: Option<String>,
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
}

impl Default for UNet2DConditionConfig {
    /// diffusers' constructor defaults.
    fn default() -> Self {
        UNet2DConditionConfig {
            sample_size: 64,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            only_cross_attention: OneOrMany::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: OneOrMany::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: OneOrMany::One(1280),
            transformer_layers_per_block: OneOrMany::One(1),
            attention_head_dim: OneOrMany::One(8),
            num_attention_heads: None,
            use_linear_projection: false,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            dual_cross_attention: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
            time_cond_proj_dim: None,
            encoder_hid_dim_type: None,
            time_embedding_dim: None,
            timestep_post_act: None,
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
        }
    }
}

impl UNet2DConditionConfig {
    /// Stable Diffusion 1.x (CompVis / runwayml `unet/config.json`).
    pub fn sd15() -> Self {
        Self::default().with_cross_attention_dim(768)
    }

    /// Stable Diffusion 2.x (`stabilityai/stable-diffusion-2-1`).
    pub fn sd21() -> Self {
        Self::default()
            .with_cross_attention_dim(1024)
            .with_attention_head_dim(vec![5, 10, 20, 20])
            .with_linear_projection(true)
            .with_sample_size(96)
    }

    /// SDXL base (`stabilityai/stable-diffusion-xl-base-1.0`).
    pub fn sdxl() -> Self {
        let mut c = Self::default()
            .with_cross_attention_dim(2048)
            .with_attention_head_dim(vec![5, 10, 20])
            .with_linear_projection(true)
            .with_sample_size(128);
        c.upcast_attention = false;
        c.block_out_channels = vec![320, 640, 1280];
        c.down_block_types = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
            .map(String::from)
            .to_vec();
        c.up_block_types = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
            .map(String::from)
            .to_vec();
        c.transformer_layers_per_block = OneOrMany::Many(vec![1, 2, 10]);
        c.addition_embed_type = Some("text_time".into());
        c.addition_time_embed_dim = Some(256);
        c.projection_class_embeddings_input_dim = Some(2816);
        c
    }

    pub fn with_cross_attention_dim(mut self, dim: usize) -> Self {
        self.cross_attention_dim = OneOrMany::One(dim);
        self
    }

    pub fn with_attention_head_dim(mut self, heads: Vec<usize>) -> Self {
        self.attention_head_dim = OneOrMany::Many(heads);
        self
    }

    pub fn with_linear_projection(mut self, on: bool) -> Self {
        self.use_linear_projection = on;
        self.upcast_attention = on;
        self
    }

    pub fn with_sample_size(mut self, size: usize) -> Self {
        self.sample_size = size;
        self
    }

    /// Reject what this implementation does not compute, naming the field.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        let checks: [(bool, String); 12] = [
            (n == 0, "block_out_channels is empty".into()),
            (
                self.down_block_types.len() != n || self.up_block_types.len() != n,
                "down/up block type counts differ from block_out_channels".into(),
            ),
            (
                self.only_cross_attention.iter().any(|b| *b),
                "only_cross_attention".into(),
            ),
            (self.dual_cross_attention, "dual_cross_attention".into()),
            (self.class_embed_type.is_some(), "class_embed_type".into()),
            (
                !matches!(self.addition_embed_type.as_deref(), None | Some("text_time"))
                    || (self.addition_embed_type.is_some()
                        && (self.addition_time_embed_dim.is_none()
                            || self.projection_class_embeddings_input_dim.is_none())),
                format!("addition_embed_type {:?}", self.addition_embed_type),
            ),
            (self.time_cond_proj_dim == Some(0), "time_cond_proj_dim 0".into()),
            (self.encoder_hid_dim_type.is_some(), "encoder_hid_dim_type".into()),
            (self.act_fn != "silu", format!("act_fn {:?}", self.act_fn)),
            (
                self.resnet_time_scale_shift != "default",
                "resnet_time_scale_shift".into(),
            ),
            (self.time_embedding_type != "positional", "time_embedding_type".into()),
            (
                self.conv_in_kernel != 3 || self.conv_out_kernel != 3 || self.time_embedding_dim.is_some(),
                "conv_in/out_kernel or time_embedding_dim".into(),
            ),
        ];
        for (bad, what) in checks {
            if bad {
                return Err(unsupported(COMPONENT, what));
            }
        }
        for t in self.down_block_types.iter().chain(&self.up_block_types) {
            if !matches!(
                t.as_str(),
                "CrossAttnDownBlock2D" | "DownBlock2D" | "CrossAttnUpBlock2D" | "UpBlock2D"
            ) {
                return Err(unsupported(COMPONENT, format!("block type {t}")));
            }
        }
        if let Some(m) = &self.mid_block_type
            && m != "UNetMidBlock2DCrossAttn"
            && m != "UNetMidBlock2D"
        {
            return Err(unsupported(COMPONENT, format!("mid_block_type {m}")));
        }
        let heads = self.heads(n);
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if !c.is_multiple_of(self.norm_num_groups) || heads[i] == 0 || !c.is_multiple_of(heads[i]) {
                return Err(unsupported(
                    COMPONENT,
                    format!(
                        "block {i}: {c} channels vs {} groups / {} heads",
                        self.norm_num_groups, heads[i]
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn heads(&self, n: usize) -> Vec<usize> {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .per_block(n)
    }
}
