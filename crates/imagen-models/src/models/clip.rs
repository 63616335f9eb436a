//! The CLIP text encoder (`transformers.CLIPTextModel`): SD 1.x's ViT-L/14 (quick_gelu) and
//! SD 2.x's OpenCLIP ViT-H (gelu, 23 layers kept), configured from `text_encoder/config.json`.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Int, Tensor};
use serde::Deserialize;

use super::resnet::linear;
use crate::error::Result;
use crate::load::config::unsupported;
use crate::ops::{self, Act, Stream};

const COMPONENT: &str = "text_encoder";

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub eos_token_id: u32,
    pub projection_dim: usize,
    /// `["CLIPTextModelWithProjection"]` adds `text_projection` (SDXL's second encoder).
    pub architectures: Vec<String>,
}

impl Default for ClipTextConfig {
    /// transformers' defaults, which are CLIP ViT-B/32's text tower.
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: 512,
            architectures: Vec::new(),
        }
    }
}

impl ClipTextConfig {
    /// SD 1.x: OpenAI CLIP ViT-L/14.
    pub fn vit_l14() -> Self {
        ClipTextConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            projection_dim: 768,
            ..Self::default()
        }
    }

    /// SDXL's second encoder: OpenCLIP ViT-bigG/14 with its projection.
    pub fn open_clip_big_g() -> Self {
        ClipTextConfig {
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            hidden_act: "gelu".into(),
            projection_dim: 1280,
            architectures: vec!["CLIPTextModelWithProjection".into()],
            ..Self::default()
        }
    }

    /// SD 2.x: OpenCLIP ViT-H/14 with its last layer dropped (diffusers ships 23 layers).
    pub fn open_clip_h14_sd2() -> Self {
        ClipTextConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            hidden_act: "gelu".into(),
            projection_dim: 512,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(unsupported(COMPONENT, format!("hidden_act {:?}", self.hidden_act)));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(unsupported(
                COMPONENT,
                "hidden_size is not a multiple of num_attention_heads",
            ));
        }
        Ok(())
    }

    pub fn with_projection(&self) -> bool {
        self.architectures.iter().any(|a| a == "CLIPTextModelWithProjection")
    }

    pub fn init(&self, d: &Device) -> ClipTextModel {
        let h = self.hidden_size;
        let ln = || LayerNormConfig::new(h).with_epsilon(self.layer_norm_eps).init(d);
        ClipTextModel {
            embeddings: ClipEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, h).init(d),
                position_embedding: EmbeddingConfig::new(self.max_position_embeddings, h).init(d),
            },
            encoder: ClipEncoder {
                layers: (0..self.num_hidden_layers)
                    .map(|_| ClipEncoderLayer {
                        self_attn: ClipAttention {
                            q_proj: linear(h, h, true, d),
                            k_proj: linear(h, h, true, d),
                            v_proj: linear(h, h, true, d),
                            out_proj: linear(h, h, true, d),
                        },
                        layer_norm1: ln(),
                        mlp: ClipMlp {
                            fc1: linear(h, self.intermediate_size, true, d),
                            fc2: linear(self.intermediate_size, h, true, d),
                        },
                        layer_norm2: ln(),
                    })
                    .collect(),
            },
            final_layer_norm: ln(),
            text_projection: self.with_projection().then(|| linear(h, self.projection_dim, false, d)),
            heads: self.num_attention_heads,
            quick_gelu: self.hidden_act == "quick_gelu",
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

#[derive(Module, Debug)]
pub struct ClipEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
}

#[derive(Module, Debug)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    /// `CLIPEncoderLayer`: pre-norm causal self-attention and MLP, each with a residual.
    /// x: `[b, n, hidden]` → `[b, n, hidden]`
    fn forward(&self, x: Stream<3>, heads: usize, act: Act, eps: f64) -> Stream<3> {
        let a = &self.self_attn;
        let (x, h) = x.layer_norm(&self.layer_norm1, eps);
        let h = ops::qkv_attention([&a.q_proj, &a.k_proj, &a.v_proj], h, None, heads, true);
        let (x, h) = ops::linear_residual(&a.out_proj, h, x).layer_norm(&self.layer_norm2, eps);
        ops::linear_residual(&self.mlp.fc2, ops::linear_act(&self.mlp.fc1, h, act), x)
    }
}

#[derive(Module, Debug)]
pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

#[derive(Module, Debug)]
pub struct ClipTextModel {
    pub embeddings: ClipEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection` only: pooled output → `text_embeds`.
    pub text_projection: Option<Linear>,
    pub heads: usize,
    pub quick_gelu: bool,
    /// the layer norms' epsilon (burn keeps `LayerNorm`'s own private)
    pub layer_norm_eps: f64,
}

impl ClipTextModel {
    pub fn num_layers(&self) -> usize {
        self.encoder.layers.len()
    }

    /// The hidden state after the first `layers` encoder layers, before the final layer norm.
    ///
    /// ids: `[b, n]` → `[b, n, hidden]`
    pub fn hidden_state(&self, ids: Tensor<2, Int>, layers: usize) -> Tensor<3> {
        let [_, n] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..n as i64, &device).reshape([1, n]);
        let x = self.embeddings.token_embedding.forward(ids) + self.embeddings.position_embedding.forward(positions);
        self.run_layers(x, 0, layers)
    }

    /// The encoder layers from `start` to the end, on a hidden state.
    fn layers_from(&self, x: Tensor<3>, start: usize) -> Tensor<3> {
        self.run_layers(x, start, self.num_layers())
    }

    /// Layers `start..end` on `x`: `[b, n, hidden]` → `[b, n, hidden]`. Each residual add is
    /// finished by the layer norm after it (one launch on GPU backends).
    fn run_layers(&self, x: Tensor<3>, start: usize, end: usize) -> Tensor<3> {
        let end = end.min(self.encoder.layers.len());
        let act = if self.quick_gelu { Act::QuickGelu } else { Act::Gelu };
        let layers = &self.encoder.layers[start.min(end)..end];
        let x = layers.iter().fold(Stream::from(x), |x, layer| {
            layer.forward(x, self.heads, act, self.layer_norm_eps)
        });
        x.tensor()
    }

    /// What Stable Diffusion pipelines condition on: with `clip_skip` = k (diffusers' meaning),
    /// the output of layer `L − k`, then the final layer norm. ids: `[b, n]` → `[b, n, hidden]`
    pub fn forward(&self, ids: Tensor<2, Int>, clip_skip: usize) -> Tensor<3> {
        let layers = self.num_layers().saturating_sub(clip_skip);
        self.final_norm(self.hidden_state(ids, layers))
    }

    /// SDXL's conditioning from one encoder: the penultimate hidden state (no final norm) and,
    /// for an encoder with projection, `text_embeds` (the projected pooled output).
    ///
    /// ids: `[b, n]` → (`[b, n, hidden]`, `[b, projection_dim]`)
    pub fn penultimate_and_projected(
        &self,
        ids: Tensor<2, Int>,
        eos_positions: &[usize],
    ) -> (Tensor<3>, Option<Tensor<2>>) {
        let l = self.num_layers();
        let penultimate = self.hidden_state(ids, l.saturating_sub(1));
        let projected = self.text_projection.as_ref().map(|proj| {
            // The last layer on top of the penultimate state, then the final norm and pooling.
            let last = self.layers_from(penultimate.clone(), l.saturating_sub(1));
            ops::linear_plain(proj, Self::pooled(self.final_norm(last), eos_positions))
        });
        (penultimate, projected)
    }

    /// `final_layer_norm`: one kernel on GPU backends (burn's layer norm is a dozen launches);
    /// elsewhere burn's, as before, so CPU results stay bit-identical.
    fn final_norm(&self, x: Tensor<3>) -> Tensor<3> {
        ops::layer_norm_gpu_only(&self.final_layer_norm, x, self.layer_norm_eps)
    }

    /// `pooler_output`: the final hidden state at each sequence's first `eos` token.
    ///
    /// last_hidden: `[b, n, hidden]`, eos_positions: `b` indices → `[b, hidden]`
    pub fn pooled(last_hidden: Tensor<3>, eos_positions: &[usize]) -> Tensor<2> {
        let [b, _, h] = last_hidden.dims();
        let rows = (0..b)
            .map(|i| {
                let p = eos_positions.get(i).copied().unwrap_or(0);
                last_hidden.clone().slice([i..i + 1, p..p + 1, 0..h]).reshape([1, h])
            })
            .collect();
        Tensor::cat(rows, 0)
    }
}

/// Module path → checkpoint keys. Real checkpoints prefix `text_model.`; transformers 5.x
/// writes `CLIPTextModel` without it. Both load.
pub fn checkpoint_keys(path: &str) -> Vec<String> {
    vec![format!("text_model.{path}"), path.to_owned()]
}
