//! One denoising run: which timesteps to visit, how to scale and noise samples, and the
//! single-step update rules (DDIM, Euler, Euler ancestral, LCM, flow Heun).

use burn::tensor::Tensor;

use super::multistep::{DpmSolver, Pndm};
use super::{NoiseSchedule, Prediction, SamplerKind, SchedulerConfig, noise_like};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// Why the DDPM-space rules never see a flow prediction.
pub(super) const FLOW_ONLY_EULER: &str =
    "flow-matching runs use the Euler, Heun and flow DPM-Solver++ rules only (Sampler::flow refuses the others)";

/// The running state a sampler's update rule keeps between steps.
enum State {
    None,
    Pndm(Box<Pndm>),
    Dpm(Box<DpmSolver>),
    Heun(Box<Heun>),
}

/// `FlowMatchHeunDiscreteScheduler` between its two calls of a step: the first call's
/// derivative, its σ gap and the sample it started from.
#[derive(Default)]
struct Heun {
    first: Option<(Tensor<4>, f32, Tensor<4>)>,
}

pub struct Sampler {
    kind: SamplerKind,
    pub(super) schedule: NoiseSchedule,
    pub(super) prediction: Prediction,
    /// UNet timesteps, one per UNet evaluation (PNDM repeats some).
    pub(super) timesteps: Vec<f64>,
    /// σ per timestep plus a final one (Euler family and DPM-Solver++).
    pub(super) sigmas: Vec<f64>,
    /// T / n, the gap DDIM and PNDM step over.
    pub(super) step_ratio: i64,
    pub(super) final_alpha: f64,
    clip_sample: Option<f64>,
    /// `leading` spacing changes the Euler family's initial noise scale.
    leading: bool,
    /// LCM's boundary-condition time scale.
    timestep_scaling: f64,
    /// Flow matching: re-noise each step instead of following the velocity.
    stochastic: bool,
    state: State,
}

impl Sampler {
    pub fn new(kind: SamplerKind, config: &SchedulerConfig, steps: usize) -> Result<Self> {
        if steps == 0 {
            return Err(Error::BadInput("steps must be at least 1".into()));
        }
        for (on, name) in [
            (config.use_exponential_sigmas, "use_exponential_sigmas"),
            (config.use_beta_sigmas, "use_beta_sigmas"),
            (config.use_lu_lambdas, "use_lu_lambdas"),
            (config.use_flow_sigmas, "use_flow_sigmas"),
            (
                config.lambda_min_clipped.is_some_and(f64::is_finite),
                "lambda_min_clipped",
            ),
            (
                config.use_karras_sigmas && kind.sigma_space(),
                "use_karras_sigmas with Euler samplers",
            ),
        ] {
            if on {
                return Err(Error::BadInput(format!(
                    "scheduler option {name} is not supported yet; pick another scheduler"
                )));
            }
        }
        let schedule = NoiseSchedule::from_config(config)?;
        let t = schedule.len();
        if steps > t {
            return Err(Error::BadInput(format!("steps must be at most {t}")));
        }
        let prediction = Prediction::parse(&config.prediction_type)?;
        let spacing = config.timestep_spacing.as_deref().unwrap_or(kind.default_spacing());
        let offset = config.steps_offset;
        let mut sigmas = Vec::new();
        let mut state = State::None;
        let timesteps = match kind {
            SamplerKind::Euler | SamplerKind::EulerAncestral => {
                let ts = schedule.timesteps(steps, spacing, offset)?;
                sigmas = interp_sigmas(&schedule.sigmas(), &ts);
                sigmas.push(0.0);
                ts
            }
            SamplerKind::Ddim => round_all(schedule.timesteps(steps, spacing, offset)?),
            SamplerKind::Pndm => {
                let (ts, pndm) = Pndm::new(
                    round_all(schedule.timesteps(steps, spacing, offset)?),
                    config.skip_prk_steps == Some(true),
                    t / steps,
                )?;
                state = State::Pndm(Box::new(pndm));
                ts
            }
            SamplerKind::DpmPP2M { karras } => {
                let (ts, sig, dpm) = DpmSolver::new(&schedule, config, steps, spacing, karras)?;
                sigmas = sig;
                state = State::Dpm(Box::new(dpm));
                ts
            }
            SamplerKind::Lcm => lcm_timesteps(t, config.original_inference_steps, steps)?,
            SamplerKind::Heun => {
                return Err(Error::BadInput(
                    "scheduler heun applies to flow-matching models (FLUX, SD3) only for now; pick another".into(),
                ));
            }
        };
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
            clip_sample: match kind {
                SamplerKind::Ddim => config.clip_sample.unwrap_or(true),
                SamplerKind::Lcm => config.clip_sample.unwrap_or(false),
                _ => false,
            }
            .then_some(config.clip_sample_range),
            schedule,
            leading: spacing == "leading",
            timestep_scaling: config.timestep_scaling,
            stochastic: false,
            state,
        })
    }

    /// A flow-matching run (FLUX, SD3). `euler`: σ from [`super::flow_sigmas`], timesteps σ·1000
    /// (f32, as diffusers' `timesteps`), the Euler rule on the velocity. `heun`: the same σ, each
    /// but the first visited twice (`FlowMatchHeunDiscreteScheduler`). `dpmpp_2m`:
    /// `DPMSolverMultistepScheduler` with `use_flow_sigmas`, `prediction_type="flow_prediction"`
    /// and `flow_shift` the model's `shift` (e^μ when shifting is dynamic). Samplers that do not
    /// apply to flow models are refused by name.
    pub fn flow(
        kind: SamplerKind,
        config: &SchedulerConfig,
        steps: usize,
        given: Option<Vec<f64>>,
        mu: Option<f64>,
    ) -> Result<Self> {
        if steps == 0 {
            return Err(Error::BadInput("steps must be at least 1".into()));
        }
        let t = config.num_train_timesteps as f32;
        let (timesteps, sigmas, state) = match kind {
            SamplerKind::Euler | SamplerKind::Heun => {
                let mut sigmas = super::flow_sigmas(config, steps, given, mu)?;
                let mut timesteps: Vec<f64> = sigmas.iter().map(|&s| (s as f32 * t) as f64).collect();
                sigmas.push(0.0);
                if kind == SamplerKind::Euler {
                    (timesteps, sigmas, State::None)
                } else {
                    // [t0, t1, t1, …, tn−1, tn−1] and [σ0, σ1, σ1, …, σn−1, σn−1, 0]
                    let twice = |v: &[f64]| -> Vec<f64> { v.iter().flat_map(|&x| [x, x]).collect() };
                    timesteps = [&timesteps[..1], &twice(&timesteps[1..])].concat();
                    let n = sigmas.len();
                    let sigmas = [&sigmas[..1], &twice(&sigmas[1..n - 1]), &sigmas[n - 1..]].concat();
                    (timesteps, sigmas, State::Heun(Box::default()))
                }
            }
            SamplerKind::DpmPP2M { karras: false } => {
                let (ts, sigmas, dpm) = DpmSolver::new_flow(config, steps, mu)?;
                (ts, sigmas, State::Dpm(Box::new(dpm)))
            }
            _ => {
                return Err(Error::BadInput(format!(
                    "scheduler {} does not apply to flow-matching models (FLUX, SD3); use euler, heun or dpmpp_2m",
                    kind.name()
                )));
            }
        };
        Ok(Sampler {
            kind,
            schedule: NoiseSchedule {
                alphas_cumprod: Vec::new(),
            },
            prediction: Prediction::Flow,
            timesteps,
            sigmas,
            step_ratio: 0,
            final_alpha: 1.0,
            clip_sample: None,
            leading: false,
            timestep_scaling: 0.0,
            stochastic: config.stochastic_sampling && kind == SamplerKind::Euler,
            state,
        })
    }

    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// Model calls per step (diffusers' `scheduler.order`): image-to-image starts at
    /// `first step × order` in [`timesteps`](Self::timesteps).
    pub fn order(&self) -> usize {
        if self.kind == SamplerKind::Heun { 2 } else { 1 }
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
        if !self.kind.sigma_space() || self.prediction == Prediction::Flow {
            return 1.0;
        }
        let max = self.sigmas.iter().copied().fold(0.0, f64::max);
        if self.leading { (max * max + 1.0).sqrt() } else { max }
    }

    /// `scale_model_input` for step `i`: x / √(σ² + 1) for σ-space samplers.
    pub fn scale_model_input(&self, x: Tensor<4>, i: usize) -> Tensor<4> {
        if self.kind.sigma_space() && self.prediction != Prediction::Flow {
            let s = self.sigmas[i];
            x / ((s * s + 1.0).sqrt() as f32)
        } else {
            x
        }
    }

    /// `add_noise` at step `i` (the first image-to-image step).
    pub fn add_noise(&self, x0: Tensor<4>, noise: Tensor<4>, i: usize) -> Tensor<4> {
        if self.prediction == Prediction::Flow {
            // `scale_noise`: σ·ε + (1 − σ)·x₀
            let s = self.sigmas[i] as f32;
            return noise * s + x0 * (1.0 - s);
        }
        match self.kind {
            SamplerKind::Euler | SamplerKind::EulerAncestral => x0 + noise * self.sigmas[i] as f32,
            // DPM-Solver++ noises at its own σ (Karras σ fall between training timesteps).
            SamplerKind::DpmPP2M { .. } => {
                let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
                x0 * alpha as f32 + noise * sigma as f32
            }
            _ => {
                let a = self.schedule.alphas_cumprod[self.timesteps[i] as usize] as f64;
                x0 * a.sqrt() as f32 + noise * (1.0 - a).sqrt() as f32
            }
        }
    }

    /// One update from the model output at step `i`; may draw noise (ancestral samplers, LCM).
    pub fn step(&mut self, model_out: Tensor<4>, i: usize, sample: Tensor<4>, rng: &mut dyn NoiseSource) -> Tensor<4> {
        let mut state = std::mem::replace(&mut self.state, State::None);
        let out = match (&mut state, self.kind) {
            (State::Pndm(p), _) => p.step(self, model_out, i, sample),
            (State::Dpm(d), _) => d.step(self, model_out, i, sample),
            (State::Heun(h), _) => h.step(self, model_out, i, sample),
            (_, SamplerKind::Ddim) => self.step_ddim(model_out, i, sample),
            (_, SamplerKind::Lcm) => self.step_lcm(model_out, i, sample, rng),
            _ => self.step_euler(model_out, i, sample, rng),
        };
        self.state = state;
        out
    }

    /// x̂₀ and ε̂ from a DDPM-space sample at ᾱ = `a`.
    pub(super) fn x0_eps(&self, out: Tensor<4>, sample: Tensor<4>, a: f64) -> (Tensor<4>, Tensor<4>) {
        let b = 1.0 - a;
        match self.prediction {
            Prediction::Epsilon => ((sample - out.clone() * b.sqrt() as f32) / a.sqrt() as f32, out),
            Prediction::V => (
                sample.clone() * a.sqrt() as f32 - out.clone() * b.sqrt() as f32,
                out * a.sqrt() as f32 + sample * b.sqrt() as f32,
            ),
            Prediction::Flow => unreachable!("{}", FLOW_ONLY_EULER),
        }
    }

    /// x̂₀ from a σ-space sample (Euler family).
    fn denoised_sigma(&self, out: Tensor<4>, sample: Tensor<4>, sigma: f64) -> Tensor<4> {
        match self.prediction {
            Prediction::Epsilon | Prediction::Flow => sample - out * sigma as f32,
            Prediction::V => {
                out * (-sigma / (sigma * sigma + 1.0).sqrt()) as f32 + sample / (sigma * sigma + 1.0) as f32
            }
        }
    }

    fn step_euler(&self, out: Tensor<4>, i: usize, sample: Tensor<4>, rng: &mut dyn NoiseSource) -> Tensor<4> {
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        if self.prediction == Prediction::Flow {
            // diffusers' dt is the difference of the f32 σ's
            if !self.stochastic {
                return sample + out * (next as f32 - sigma as f32);
            }
            let x0 = sample - out * sigma as f32;
            let (dims, device) = (x0.dims(), x0.device());
            return x0 * (1.0 - next as f32) + noise_like(rng, dims, &device) * next as f32;
        }
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

    fn step_ddim(&self, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let t = self.timesteps[i] as i64;
        let a = self.schedule.alpha_at(t, self.final_alpha);
        let a_prev = self.schedule.alpha_at(t - self.step_ratio, self.final_alpha);
        let (mut x0, eps) = self.x0_eps(out, sample, a);
        if let Some(r) = self.clip_sample {
            x0 = x0.clamp(-r as f32, r as f32);
        }
        x0 * a_prev.sqrt() as f32 + eps * (1.0 - a_prev).sqrt() as f32
    }

    /// LCM: consistency-model boundary condition, then fresh noise to the next timestep
    /// (except after the last).
    fn step_lcm(&self, out: Tensor<4>, i: usize, sample: Tensor<4>, rng: &mut dyn NoiseSource) -> Tensor<4> {
        let t = self.timesteps[i];
        let a = self.schedule.alpha_at(t as i64, self.final_alpha);
        let (mut x0, _) = self.x0_eps(out, sample.clone(), a);
        if let Some(r) = self.clip_sample {
            x0 = x0.clamp(-r as f32, r as f32);
        }
        let sigma_data2 = 0.25;
        let scaled = t * self.timestep_scaling;
        let c_skip = sigma_data2 / (scaled * scaled + sigma_data2);
        let c_out = scaled / (scaled * scaled + sigma_data2).sqrt();
        let denoised = x0 * c_out as f32 + sample * c_skip as f32;
        if i + 1 == self.timesteps.len() {
            return denoised;
        }
        let a_prev = self.schedule.alpha_at(self.timesteps[i + 1] as i64, self.final_alpha);
        let (dims, device) = (denoised.dims(), denoised.device());
        denoised * a_prev.sqrt() as f32 + noise_like(rng, dims, &device) * (1.0 - a_prev).sqrt() as f32
    }
}

impl Heun {
    /// diffusers' `step`, f32 scalars as its σ tensors: the first call takes an Euler step and
    /// remembers it; the second redoes it with the mean of both derivatives.
    fn step(&mut self, s: &Sampler, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        match self.first.take() {
            None => {
                let (sigma, next) = (s.sigmas[i] as f32, s.sigmas[i + 1] as f32);
                let denoised = sample.clone() - out * sigma;
                let derivative = (sample.clone() - denoised) / sigma;
                let dt = next - sigma;
                self.first = Some((derivative.clone(), dt, sample.clone()));
                sample + derivative * dt
            }
            Some((prev, dt, from)) => {
                let next = s.sigmas[i] as f32;
                let denoised = sample.clone() - out * next;
                let derivative = ((sample - denoised) / next + prev) * 0.5;
                from + derivative * dt
            }
        }
    }
}

/// (α_t, σ_t) of a DDPM-space sample at Karras noise level σ: α = 1/√(σ²+1), σ_t = σ·α.
pub(super) fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `np.interp` of the training σ at (possibly fractional) timesteps, kept in float32.
fn interp_sigmas(train: &[f64], ts: &[f64]) -> Vec<f64> {
    let t = train.len();
    ts.iter()
        .map(|&ts| {
            let lo = (ts.floor() as usize).min(t - 1);
            let hi = (lo + 1).min(t - 1);
            let f = ts - lo as f64;
            (train[lo] + f * (train[hi] - train[lo])) as f32 as f64
        })
        .collect()
}

/// Integer-timestep samplers round the spacing (numpy's round: half to even).
fn round_all(ts: Vec<f64>) -> Vec<f64> {
    ts.into_iter().map(f64::round_ties_even).collect()
}

/// LCM's timesteps: every `T / original_steps`-th training step, `steps` of them evenly picked
/// (`LCMScheduler.set_timesteps` with strength 1).
fn lcm_timesteps(t: usize, original_steps: usize, steps: usize) -> Result<Vec<f64>> {
    if original_steps == 0 || original_steps > t {
        return Err(Error::BadInput(format!(
            "original_inference_steps must be between 1 and {t}"
        )));
    }
    if steps > original_steps {
        return Err(Error::BadInput(format!(
            "LCM takes at most {original_steps} steps (the model's original_inference_steps)"
        )));
    }
    let k = t / original_steps;
    // [T/k·k − 1, …, 2k − 1, k − 1]
    let origin: Vec<usize> = (1..=original_steps).rev().map(|i| i * k - 1).collect();
    let stride = origin.len() as f64 / steps as f64;
    Ok((0..steps)
        .map(|i| origin[(i as f64 * stride).floor() as usize] as f64)
        .collect())
}
