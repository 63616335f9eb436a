//! diffusers-exact samplers, built from three separate axes:
//! the noise schedule (betas → ᾱ, timestep spacing), the prediction type (ε / v), and the
//! sampler's update rule. Configured from the model's `scheduler/scheduler_config.json`.

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

/// Axis 2: what the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
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
}

impl SamplerKind {
    pub const NAMES: [&'static str; 4] = ["pndm", "ddim", "euler", "euler_a"];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pndm" => SamplerKind::Pndm,
            "ddim" => SamplerKind::Ddim,
            "euler" => SamplerKind::Euler,
            "euler_a" => SamplerKind::EulerAncestral,
            other => {
                return Err(Error::BadInput(format!(
                    "unknown scheduler {other:?} (known: {})",
                    Self::NAMES.join(", ")
                )));
            }
        })
    }

    /// The sampler a model folder's `_class_name` names.
    pub fn from_class_name(class: &str) -> Option<Self> {
        Some(match class {
            "PNDMScheduler" => SamplerKind::Pndm,
            "DDIMScheduler" => SamplerKind::Ddim,
            "EulerDiscreteScheduler" => SamplerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
            _ => return None,
        })
    }

    /// diffusers' per-class default when the config has no `timestep_spacing`.
    fn default_spacing(self) -> &'static str {
        match self {
            SamplerKind::Pndm | SamplerKind::Ddim => "leading",
            SamplerKind::Euler | SamplerKind::EulerAncestral => "linspace",
        }
    }

    fn sigma_based(self) -> bool {
        matches!(self, SamplerKind::Euler | SamplerKind::EulerAncestral)
    }
}

/// One denoising run: the timesteps to visit and the sampler's running state.
pub struct Sampler {
    kind: SamplerKind,
    schedule: NoiseSchedule,
    prediction: Prediction,
    /// UNet timesteps, one per UNet evaluation (PNDM repeats one).
    timesteps: Vec<f64>,
    /// σ per timestep plus a final 0 (sigma-based samplers only).
    sigmas: Vec<f64>,
    /// T / n, the gap DDIM and PNDM step over.
    step_ratio: i64,
    final_alpha: f64,
    clip_sample: Option<f64>,
    /// `leading` spacing changes the Euler family's initial noise scale.
    leading: bool,
    // PNDM (PLMS) state.
    ets: Vec<Tensor<4>>,
    counter: usize,
    cur_sample: Option<Tensor<4>>,
}

impl Sampler {
    pub fn new(kind: SamplerKind, config: &SchedulerConfig, steps: usize) -> Result<Self> {
        if steps == 0 {
            return Err(Error::BadInput("steps must be at least 1".into()));
        }
        if kind == SamplerKind::Pndm && config.skip_prk_steps != Some(true) {
            return Err(Error::BadInput(
                "PNDM with Runge-Kutta warm-up steps (skip_prk_steps=false) is not supported yet; pick another --scheduler"
                    .into(),
            ));
        }
        let schedule = NoiseSchedule::from_config(config)?;
        let prediction = Prediction::parse(&config.prediction_type)?;
        let spacing = config.timestep_spacing.as_deref().unwrap_or(kind.default_spacing());
        let mut timesteps = schedule.timesteps(steps, spacing, config.steps_offset)?;
        let t = schedule.len();
        if steps > t {
            return Err(Error::BadInput(format!("steps must be at most {t}")));
        }
        let mut sigmas = Vec::new();
        if kind.sigma_based() {
            let train = schedule.sigmas();
            // np.interp over integer training timesteps
            sigmas = timesteps
                .iter()
                .map(|&ts| {
                    let lo = (ts.floor() as usize).min(t - 1);
                    let hi = (lo + 1).min(t - 1);
                    let f = ts - lo as f64;
                    (train[lo] + f * (train[hi] - train[lo])) as f32 as f64
                })
                .collect();
            sigmas.push(0.0);
        }
        if kind == SamplerKind::Pndm {
            // skip_prk_steps: PLMS from the start, repeating the second timestep
            // (`plms_timesteps = [t[:-1], t[-2:-1], t[-1:]][::-1]` in ascending order).
            let asc: Vec<f64> = timesteps.iter().rev().copied().collect();
            let n = asc.len();
            let mut plms: Vec<f64> = asc[..n - 1].to_vec();
            if n >= 2 {
                plms.push(asc[n - 2]);
            }
            plms.push(asc[n - 1]);
            plms.reverse();
            timesteps = plms;
        }
        Ok(Sampler {
            kind,
            prediction,
            timesteps,
            sigmas,
            step_ratio: (t / steps) as i64,
            final_alpha: if config.set_alpha_to_one {
                1.0
            } else {
                schedule.alphas_cumprod[0] as f64
            },
            clip_sample: (kind == SamplerKind::Ddim && config.clip_sample.unwrap_or(true))
                .then_some(config.clip_sample_range),
            schedule,
            leading: spacing == "leading",
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
        })
    }

    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// Every UNet timestep, in order.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Image-to-image: the index of the first step to run so that `floor(steps × strength)`
    /// remain (diffusers' `get_timesteps`).
    pub fn first_step_for_strength(steps: usize, strength: f64) -> usize {
        steps - ((steps as f64 * strength) as usize).min(steps)
    }

    /// Noise level the initial latents are scaled by (pure-noise start).
    pub fn init_noise_sigma(&self) -> f64 {
        if !self.kind.sigma_based() {
            return 1.0;
        }
        let max = self.sigmas.iter().copied().fold(0.0, f64::max);
        if self.leading { (max * max + 1.0).sqrt() } else { max }
    }

    /// `scale_model_input` for step `i`: x / √(σ² + 1) for sigma-based samplers.
    pub fn scale_model_input(&self, x: Tensor<4>, i: usize) -> Tensor<4> {
        if self.kind.sigma_based() {
            let s = self.sigmas[i];
            x / ((s * s + 1.0).sqrt() as f32)
        } else {
            x
        }
    }

    /// `add_noise` at step `i` (the first image-to-image step).
    pub fn add_noise(&self, x0: Tensor<4>, noise: Tensor<4>, i: usize) -> Tensor<4> {
        if self.kind.sigma_based() {
            x0 + noise * self.sigmas[i] as f32
        } else {
            let a = self.schedule.alphas_cumprod[self.timesteps[i] as usize] as f64;
            x0 * a.sqrt() as f32 + noise * (1.0 - a).sqrt() as f32
        }
    }

    /// One update from the model output at step `i`; may draw noise (ancestral samplers).
    pub fn step(&mut self, model_out: Tensor<4>, i: usize, sample: Tensor<4>, rng: &mut dyn NoiseSource) -> Tensor<4> {
        match self.kind {
            SamplerKind::Euler | SamplerKind::EulerAncestral => self.step_euler(model_out, i, sample, rng),
            SamplerKind::Ddim => self.step_ddim(model_out, i, sample),
            SamplerKind::Pndm => self.step_plms(model_out, i, sample),
        }
    }

    /// x̂₀ from a sigma-space sample (Euler family).
    fn denoised_sigma(&self, out: Tensor<4>, sample: Tensor<4>, sigma: f64) -> Tensor<4> {
        match self.prediction {
            Prediction::Epsilon => sample - out * sigma as f32,
            Prediction::V => {
                out * (-sigma / (sigma * sigma + 1.0).sqrt()) as f32 + sample / (sigma * sigma + 1.0) as f32
            }
        }
    }

    fn step_euler(&mut self, out: Tensor<4>, i: usize, sample: Tensor<4>, rng: &mut dyn NoiseSource) -> Tensor<4> {
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let x0 = self.denoised_sigma(out, sample.clone(), sigma);
        let derivative = (sample.clone() - x0) / sigma as f32;
        if self.kind == SamplerKind::Euler {
            return sample + derivative * (next - sigma) as f32;
        }
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
        let down = (next * next - up * up).sqrt();
        let prev = sample + derivative * (down - sigma) as f32;
        let (dims, device) = (prev.dims(), prev.device());
        prev + noise_like(rng, dims, &device) * up as f32
    }

    fn step_ddim(&mut self, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let t = self.timesteps[i] as i64;
        let a = self.schedule.alpha_at(t, self.final_alpha);
        let a_prev = self.schedule.alpha_at(t - self.step_ratio, self.final_alpha);
        let b = 1.0 - a;
        let (mut x0, eps) = match self.prediction {
            Prediction::Epsilon => ((sample.clone() - out.clone() * b.sqrt() as f32) / a.sqrt() as f32, out),
            Prediction::V => (
                sample.clone() * a.sqrt() as f32 - out.clone() * b.sqrt() as f32,
                out * a.sqrt() as f32 + sample * b.sqrt() as f32,
            ),
        };
        if let Some(r) = self.clip_sample {
            x0 = x0.clamp(-r as f32, r as f32);
        }
        x0 * a_prev.sqrt() as f32 + eps * (1.0 - a_prev).sqrt() as f32
    }

    /// PNDM with `skip_prk_steps`: linear multistep (PLMS) over the last four outputs.
    fn step_plms(&mut self, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let mut t = self.timesteps[i] as i64;
        let mut prev_t = t - self.step_ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(out.clone());
        } else {
            prev_t = t;
            t += self.step_ratio;
        }
        let n = self.ets.len();
        let e = |k: usize| self.ets[n - k].clone();
        let (out, sample) = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            (out, sample)
        } else if n == 1 && self.counter == 1 {
            let s = self.cur_sample.take().unwrap_or(sample);
            ((out + e(1)) / 2.0, s)
        } else if n == 2 {
            ((e(1) * 3.0 - e(2)) / 2.0, sample)
        } else if n == 3 {
            ((e(1) * 23.0 - e(2) * 16.0 + e(3) * 5.0) / 12.0, sample)
        } else {
            ((e(1) * 55.0 - e(2) * 59.0 + e(3) * 37.0 - e(4) * 9.0) / 24.0, sample)
        };
        self.counter += 1;

        let a = self.schedule.alpha_at(t, self.final_alpha);
        let a_prev = self.schedule.alpha_at(prev_t, self.final_alpha);
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let out = match self.prediction {
            Prediction::Epsilon => out,
            Prediction::V => out * a.sqrt() as f32 + sample.clone() * b.sqrt() as f32,
        };
        let sample_coeff = (a_prev / a).sqrt();
        let denom = a * b_prev.sqrt() + (a * b * a_prev).sqrt();
        sample * sample_coeff as f32 - out * ((a_prev - a) / denom) as f32
    }
}

/// Fresh noise shaped like `dims`, drawn as one `randn` call.
pub fn noise_like(rng: &mut dyn NoiseSource, dims: [usize; 4], device: &Device) -> Tensor<4> {
    let n = dims.iter().product();
    Tensor::from_data(TensorData::new(rng.randn(n), dims), device)
}
