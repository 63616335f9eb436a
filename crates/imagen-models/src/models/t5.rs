//! The T5 v1.1 encoder (`transformers.T5EncoderModel`): FLUX.1's and SD3's long-prompt text
//! encoder. Pre-norm blocks with T5's RMS layer norm, no biases anywhere, unscaled attention
//! with a learned relative-position bias (computed by the first block, shared by all), and a
//! gated-GELU feed-forward. Configured from `text_encoder_2/config.json` (`text_encoder_3` in SD3).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;

use super::resnet::linear;
use crate::error::Result;
use crate::load::config::unsupported;
use crate::ops::{self, Act};

const COMPONENT: &str = "text_encoder_2";

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
    pub dense_act_fn: Option<String>,
}

impl Default for T5Config {
    /// T5 v1.1 XXL as FLUX.1 and SD3 ship it.
    fn default() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            dense_act_fn: None,
        }
    }
}

impl T5Config {
    pub fn validate(&self) -> Result<()> {
        // v1.1's gated-gelu (`gelu_new`, the tanh approximation); v1.0's relu is not used by
        // any diffusion pipeline.
        if self.feed_forward_proj != "gated-gelu" {
            return Err(unsupported(
                COMPONENT,
                format!("feed_forward_proj {:?}", self.feed_forward_proj),
            ));
        }
        if let Some(act) = self
            .dense_act_fn
            .as_deref()
            .filter(|a| !matches!(*a, "gelu_new" | "gelu_pytorch_tanh"))
        {
            return Err(unsupported(COMPONENT, format!("dense_act_fn {act:?}")));
        }
        if self.num_heads == 0 || self.relative_attention_num_buckets < 4 {
            return Err(unsupported(COMPONENT, "num_heads or relative_attention_num_buckets"));
        }
        Ok(())
    }

    pub fn init(&self, d: &Device) -> T5EncoderModel {
        let (dm, inner) = (self.d_model, self.num_heads * self.d_kv);
        let norm = || RmsNormConfig::new(dm).with_epsilon(self.layer_norm_epsilon).init(d);
        T5EncoderModel {
            shared: EmbeddingConfig::new(self.vocab_size, dm).init(d),
            encoder: T5Stack {
                block: (0..self.num_layers)
                    .map(|i| T5Block {
                        attention_norm: norm(),
                        attention: T5Attention {
                            q: linear(dm, inner, false, d),
                            k: linear(dm, inner, false, d),
                            v: linear(dm, inner, false, d),
                            o: linear(inner, dm, false, d),
                            relative_attention_bias: (i == 0).then(|| {
                                EmbeddingConfig::new(self.relative_attention_num_buckets, self.num_heads).init(d)
                            }),
                        },
                        ff_norm: norm(),
                        ff: T5DenseGatedAct {
                            wi_0: linear(dm, self.d_ff, false, d),
                            wi_1: linear(dm, self.d_ff, false, d),
                            wo: linear(self.d_ff, dm, false, d),
                        },
                    })
                    .collect(),
                final_layer_norm: norm(),
            },
            heads: self.num_heads,
            num_buckets: self.relative_attention_num_buckets,
            max_distance: self.relative_attention_max_distance,
        }
    }
}

#[derive(Module, Debug)]
pub struct T5Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// The first block's only: `[num_buckets, heads]`.
    pub relative_attention_bias: Option<Embedding>,
}

#[derive(Module, Debug)]
pub struct T5DenseGatedAct {
    pub wi_0: Linear,
    pub wi_1: Linear,
    pub wo: Linear,
}

/// One `T5Block` (`layer.0` self-attention, `layer.1` feed-forward; see [`checkpoint_keys`]).
#[derive(Module, Debug)]
pub struct T5Block {
    pub attention_norm: RmsNorm,
    pub attention: T5Attention,
    pub ff_norm: RmsNorm,
    pub ff: T5DenseGatedAct,
}

#[derive(Module, Debug)]
pub struct T5Stack {
    pub block: Vec<T5Block>,
    pub final_layer_norm: RmsNorm,
}

#[derive(Module, Debug)]
pub struct T5EncoderModel {
    pub shared: Embedding,
    pub encoder: T5Stack,
    pub heads: usize,
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl T5Block {
    /// x: `[b, n, d_model]`, bias: `[1, heads, n, n]` → `[b, n, d_model]`
    fn forward(&self, x: Tensor<3>, bias: &Tensor<4>, heads: usize) -> Tensor<3> {
        let a = &self.attention;
        let h = ops::rms_norm(&self.attention_norm, x.clone());
        let (q, k, v) = (
            ops::linear(&a.q, h.clone()),
            ops::linear(&a.k, h.clone()),
            ops::linear(&a.v, h),
        );
        // T5 folds 1/√d into its initialisation: the scores are not scaled.
        let h = ops::attention_biased(q, k, v, bias.clone(), heads, 1.0);
        let x = x + ops::linear(&a.o, h);
        let h = ops::rms_norm(&self.ff_norm, x.clone());
        let gate = ops::linear_act(&self.ff.wi_0, h.clone(), Act::GeluTanh);
        x + ops::linear(&self.ff.wo, gate * ops::linear(&self.ff.wi_1, h))
    }
}

impl T5EncoderModel {
    /// `last_hidden_state`, every position attending to every other (the diffusion pipelines
    /// pass no attention mask, so padding is attended to as well).
    ///
    /// ids: `[b, n]` → `[b, n, d_model]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let n = ids.dims()[1];
        let device = ids.device();
        let mut x = self.shared.forward(ids);
        let bias = self.position_bias(n, &device);
        for block in &self.encoder.block {
            x = block.forward(x, &bias, self.heads);
        }
        ops::rms_norm(&self.encoder.final_layer_norm, x)
    }

    /// The first block's relative-position bias for `n` positions: `[1, heads, n, n]`.
    fn position_bias(&self, n: usize, device: &Device) -> Tensor<4> {
        let buckets: Vec<i64> = (0..n)
            .flat_map(|q| (0..n).map(move |k| k as i64 - q as i64))
            .map(|rel| relative_position_bucket(rel, self.num_buckets, self.max_distance) as i64)
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(buckets, [n, n]), device);
        let table = self.encoder.block[0]
            .attention
            .relative_attention_bias
            .as_ref()
            .map(|e| e.forward(ids));
        match table {
            // [n, n, heads] -> [1, heads, n, n]
            Some(t) => t.permute([2, 0, 1]).unsqueeze_dim(0),
            None => Tensor::zeros([1, self.heads, n, n], device),
        }
    }
}

/// T5's bidirectional bucket of a relative position (key − query): half the buckets per
/// direction, exact below `num_buckets / 4`, logarithmic up to `max_distance`.
pub fn relative_position_bucket(rel: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let mut bucket = if rel > 0 { half } else { 0 };
    let rel = rel.unsigned_abs() as usize;
    let max_exact = half / 2;
    if rel < max_exact {
        return bucket + rel;
    }
    // As transformers computes it: a float32 log over a float64 constant, truncated.
    let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
    let ratio = ((rel as f32 / max_exact as f32).ln() / denom * (half - max_exact) as f32) as usize;
    bucket += (max_exact + ratio).min(half - 1);
    bucket
}

/// Module path → checkpoint keys: a block's two sub-layers are `layer.0` (attention) and
/// `layer.1` (feed-forward) in the checkpoint; the embedding may be stored as `shared` or as
/// the encoder's (tied) `embed_tokens`.
pub fn checkpoint_keys(path: &str) -> Vec<String> {
    const RENAMES: [(&str, &str); 4] = [
        (".attention_norm.", ".layer.0.layer_norm."),
        (".attention.", ".layer.0.SelfAttention."),
        (".ff_norm.", ".layer.1.layer_norm."),
        (".ff.", ".layer.1.DenseReluDense."),
    ];
    if path == "shared.weight" {
        return vec![path.into(), "encoder.embed_tokens.weight".into()];
    }
    let mut key = path.to_owned();
    for (ours, theirs) in RENAMES {
        key = key.replace(ours, theirs);
    }
    vec![key]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets transformers' `_relative_position_bucket` gives (32 buckets, max distance 128,
    /// bidirectional), printed from transformers 5.24.
    #[test]
    fn buckets_match_transformers() {
        let got: Vec<usize> = [-200, -128, -50, -9, -8, -7, -1, 0, 1, 7, 8, 9, 50, 127, 128, 500]
            .iter()
            .map(|&r| relative_position_bucket(r, 32, 128))
            .collect();
        assert_eq!(got, EXPECTED);
    }

    const EXPECTED: [usize; 16] = [15, 15, 13, 8, 8, 7, 1, 0, 17, 23, 24, 24, 29, 31, 31, 31];
}
