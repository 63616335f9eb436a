//! diffusers-exact samplers, built from three separate axes:
//! the noise schedule (betas → ᾱ, timestep spacing), the prediction type (ε / v), and the
//! sampler's update rule. Configured from the model's `scheduler/scheduler_config.json`.
//!
//! [`Sampler`] holds one run; the multistep rules (PNDM, DPM-Solver++) live in `multistep.rs`.

mod flow;
mod multistep;
mod sampler;

pub use flow::{dynamic_shift_mu, first_step_for_strength as flow_first_step, flow_sigmas};
pub use sampler::Sampler;

use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// The fields of `scheduler_config.json` every sampler reads. Missing fields take each sampler's
/// own diffusers default (see [`SamplerKind::default_spacing`]).
#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: String,
    pub timestep_spacing: Option<String>,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    /// DDIM's default is `true`, the others' `false`.
    pub clip_sample: Option<bool>,
    /// PNDM: `false` (its default) warms up with Runge–Kutta steps.
    pub skip_prk_steps: Option<bool>,
    pub clip_sample_range: f64,
    pub thresholding: bool,
    pub rescale_betas_zero_snr: bool,
    // DPMSolverMultistepScheduler
    pub use_karras_sigmas: bool,
    pub solver_order: usize,
    pub algorithm_type: String,
    pub solver_type: String,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub final_sigmas_type: String,
    pub lambda_min_clipped: Option<f64>,
    /// Alternative sigma spacings (several schedulers): refused by name when set.
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_lu_lambdas: bool,
    pub use_flow_sigmas: bool,
    // LCMScheduler
    pub original_inference_steps: usize,
    pub timestep_scaling: f64,
    // FlowMatchEulerDiscreteScheduler
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub time_shift_type: String,
    pub shift_terminal: Option<f64>,
    pub invert_sigmas: bool,
    pub stochastic_sampling: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            class_name: None,
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            trained_betas: None,
            prediction_type: "epsilon".into(),
            timestep_spacing: None,
            steps_offset: 0,
            set_alpha_to_one: false,
            clip_sample: None,
            skip_prk_steps: None,
            clip_sample_range: 1.0,
            thresholding: false,
            rescale_betas_zero_snr: false,
            use_karras_sigmas: false,
            solver_order: 2,
            algorithm_type: "dpmsolver++".into(),
            solver_type: "midpoint".into(),
            lower_order_final: true,
            euler_at_final: false,
            final_sigmas_type: "zero".into(),
            lambda_min_clipped: None,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            original_inference_steps: 50,
            timestep_scaling: 10.0,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            time_shift_type: "exponential".into(),
            shift_terminal: None,
            invert_sigmas: false,
            stochastic_sampling: false,
        }
    }
}

/// Axis 1: the training noise schedule, ᾱ_t for t in 0..T (float32, as torch computes it).
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    pub fn from_config(c: &SchedulerConfig) -> Result<Self> {
        let t = c.num_train_timesteps;
        let linspace =
            |a: f64, b: f64| -> Vec<f64> { (0..t).map(|i| a + (b - a) * i as f64 / (t.max(2) - 1) as f64).collect() };
        let betas: Vec<f32> = match (&c.trained_betas, c.beta_schedule.as_str()) {
            (Some(b), _) => b.iter().map(|&x| x as f32).collect(),
            (None, "linear") => linspace(c.beta_start, c.beta_end).iter().map(|&x| x as f32).collect(),
            (None, "scaled_linear") => linspace(c.beta_start.sqrt(), c.beta_end.sqrt())
                .iter()
                .map(|&x| {
                    let x = x as f32;
                    x * x
                })
                .collect(),
            (None, "squaredcos_cap_v2") => {
                let alpha_bar = |x: f64| ((x + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
                (0..t)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
            (None, other) => return Err(Error::BadInput(format!("beta_schedule {other:?} is not supported"))),
        };
        if c.rescale_betas_zero_snr || c.thresholding {
            return Err(Error::BadInput(
                "rescale_betas_zero_snr / thresholding schedulers are not supported yet".into(),
            ));
        }
        let mut acc = 1.0f32;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Ok(NoiseSchedule { alphas_cumprod })
    }

    fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// ᾱ at an integer timestep; `None` (a step past t = 0) gives `final_alpha`.
    fn alpha_at(&self, t: i64, final_alpha: f64) -> f64 {
        if t >= 0 {
            self.alphas_cumprod[t as usize] as f64
        } else {
            final_alpha
        }
    }

    /// σ_t = √((1 − ᾱ_t) / ᾱ_t), the Karras-style noise level of each training timestep.
    fn sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt() as f64)
            .collect()
    }

    /// Inference timesteps, descending, as diffusers' `set_timesteps` spaces them.
    fn timesteps(&self, n: usize, spacing: &str, steps_offset: usize) -> Result<Vec<f64>> {
        let t = self.len();
        Ok(match spacing {
            "linspace" => (0..n)
                .rev()
                .map(|i| ((t - 1) as f64 * i as f64 / (n.max(2) - 1) as f64) as f32 as f64)
                .collect(),
            "leading" => {
                let ratio = t / n;
                (0..n).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
            }
            "trailing" => {
                let ratio = t as f64 / n as f64;
                (0..n).map(|i| (t as f64 - i as f64 * ratio).round() - 1.0).collect()
            }
            other => return Err(Error::BadInput(format!("timestep_spacing {other:?} is not supported"))),
        })
    }
}

/// Axis 2: what the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
    /// Flow matching's velocity `ε − x₀` (FLUX, SD3), on a σ schedule from 1 to 0.
    Flow,
}

impl Prediction {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::V),
            other => Err(Error::BadInput(format!("prediction_type {other:?} is not supported"))),
        }
    }
}

/// Axis 3: the update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    Pndm,
    Ddim,
    Euler,
    EulerAncestral,
    /// DPM-Solver++ (2M), multistep second order; `karras` spaces the sigmas as Karras et al.
    DpmPP2M {
        karras: bool,
    },
    Lcm,
    /// Heun's second-order method (`FlowMatchHeunDiscreteScheduler`): two model calls per step
    /// but the last; flow-matching models only.
    Heun,
}

impl SamplerKind {
    pub const NAMES: [&'static str; 8] = [
        "pndm",
        "ddim",
        "euler",
        "euler_a",
        "dpmpp_2m",
        "dpmpp_2m_karras",
        "lcm",
        "heun",
    ];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pndm" => SamplerKind::Pndm,
            "ddim" => SamplerKind::Ddim,
            "euler" => SamplerKind::Euler,
            "euler_a" => SamplerKind::EulerAncestral,
            "dpmpp_2m" => SamplerKind::DpmPP2M { karras: false },
            "dpmpp_2m_karras" => SamplerKind::DpmPP2M { karras: true },
            "lcm" => SamplerKind::Lcm,
            "heun" => SamplerKind::Heun,
            other => {
                return Err(Error::BadInput(format!(
                    "unknown scheduler {other:?} (known: {})",
                    Self::NAMES.join(", ")
                )));
            }
        })
    }

    /// The name [`parse`](Self::parse) takes.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Pndm => "pndm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_a",
            SamplerKind::DpmPP2M { karras: false } => "dpmpp_2m",
            SamplerKind::DpmPP2M { karras: true } => "dpmpp_2m_karras",
            SamplerKind::Lcm => "lcm",
            SamplerKind::Heun => "heun",
        }
    }

    /// The sampler a model folder's scheduler config names (`_class_name` plus its options).
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let class = config.class_name.as_deref().unwrap_or("");
        Ok(match class {
            "PNDMScheduler" => SamplerKind::Pndm,
            "DDIMScheduler" => SamplerKind::Ddim,
            "EulerDiscreteScheduler" => SamplerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
            "DPMSolverMultistepScheduler" => {
                if config.solver_order != 2 || config.algorithm_type != "dpmsolver++" {
                    return Err(Error::BadInput(format!(
                        "the model's DPMSolverMultistepScheduler (order {}, {}) is not supported yet; \
                         pick a scheduler explicitly",
                        config.solver_order, config.algorithm_type
                    )));
                }
                SamplerKind::DpmPP2M {
                    karras: config.use_karras_sigmas,
                }
            }
            "LCMScheduler" => SamplerKind::Lcm,
            _ => {
                return Err(Error::BadInput(format!(
                    "the model's scheduler {class:?} is not supported yet; pick one of {}",
                    Self::NAMES.join(", ")
                )));
            }
        })
    }

    /// diffusers' per-class default when the config has no `timestep_spacing`.
    fn default_spacing(self) -> &'static str {
        match self {
            SamplerKind::Pndm | SamplerKind::Ddim | SamplerKind::Lcm => "leading",
            SamplerKind::Euler | SamplerKind::EulerAncestral | SamplerKind::DpmPP2M { .. } | SamplerKind::Heun => {
                "linspace"
            }
        }
    }

    /// Samples live in σ-space (x = x₀ + σε) rather than the DDPM space (x = √ᾱ x₀ + √(1−ᾱ) ε).
    fn sigma_space(self) -> bool {
        matches!(self, SamplerKind::Euler | SamplerKind::EulerAncestral)
    }
}

/// Fresh noise shaped like `dims`, drawn as one `randn` call.
pub fn noise_like(rng: &mut dyn NoiseSource, dims: [usize; 4], device: &Device) -> Tensor<4> {
    let n = dims.iter().product();
    Tensor::from_data(TensorData::new(rng.randn(n), dims), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD 1.5's scheduler config (scaled_linear, leading, steps_offset 1), switched to `spacing`.
    fn sd15(spacing: &str) -> SchedulerConfig {
        SchedulerConfig {
            timestep_spacing: Some(spacing.into()),
            steps_offset: 1,
            ..SchedulerConfig::default()
        }
    }

    fn ts(kind: &str, config: &SchedulerConfig, steps: usize) -> Vec<i64> {
        let s = Sampler::new(SamplerKind::parse(kind).expect("kind"), config, steps).expect("sampler");
        s.timesteps().iter().map(|&t| t as i64).collect()
    }

    // Expected values printed by diffusers 0.42.1 (`set_timesteps` then `.timesteps`).
    #[test]
    fn dpm_karras_timesteps_match_diffusers() {
        let c = sd15("leading");
        assert_eq!(ts("dpmpp_2m_karras", &c, 5), [999, 786, 427, 59, 0]);
        assert_eq!(
            ts("dpmpp_2m_karras", &c, 20),
            [
                999, 962, 921, 876, 827, 772, 710, 640, 561, 474, 380, 285, 197, 123, 69, 35, 15, 6, 2, 0
            ]
        );
        assert_eq!(ts("dpmpp_2m", &c, 5), [831, 665, 499, 333, 167]);
    }

    #[test]
    fn dpm_linspace_timesteps_match_diffusers() {
        let c = sd15("linspace");
        assert_eq!(ts("dpmpp_2m", &c, 5), [999, 799, 599, 400, 200]);
        assert_eq!(
            ts("dpmpp_2m", &c, 30),
            [
                999, 966, 932, 899, 866, 832, 799, 766, 733, 699, 666, 633, 599, 566, 533, 499, 466, 433, 400, 366,
                333, 300, 266, 233, 200, 166, 133, 100, 67, 33
            ]
        );
    }

    #[test]
    fn lcm_and_prk_timesteps_match_diffusers() {
        let c = sd15("leading");
        assert_eq!(ts("lcm", &c, 4), [999, 759, 499, 259]);
        let prk = SchedulerConfig {
            skip_prk_steps: Some(false),
            ..sd15("leading")
        };
        assert_eq!(
            ts("pndm", &prk, 5),
            [801, 701, 701, 601, 601, 501, 501, 401, 401, 301, 301, 201, 201, 1]
        );
        let plms = SchedulerConfig {
            skip_prk_steps: Some(true),
            ..sd15("leading")
        };
        assert_eq!(ts("pndm", &plms, 5), [801, 601, 601, 401, 201, 1]);
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        let c = SchedulerConfig {
            use_exponential_sigmas: true,
            ..sd15("leading")
        };
        let Err(Error::BadInput(m)) = Sampler::new(SamplerKind::DpmPP2M { karras: false }, &c, 5) else {
            panic!("accepted");
        };
        assert!(m.contains("use_exponential_sigmas"), "{m}");
        assert!(SamplerKind::parse("heun_2m").is_err());
        let Err(Error::BadInput(m)) = Sampler::new(SamplerKind::Heun, &sd15("leading"), 5) else {
            panic!("heun accepted on a DDPM schedule");
        };
        assert!(m.contains("flow-matching"), "{m}");
        for name in SamplerKind::NAMES {
            assert_eq!(SamplerKind::parse(name).expect("name").name(), name);
        }
    }
}
