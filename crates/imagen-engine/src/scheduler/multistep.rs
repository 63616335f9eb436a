//! Multistep update rules, which keep earlier model outputs: PNDM (Runge–Kutta warm-up, then
//! linear multistep) and DPM-Solver++ 2M. Both follow diffusers' `step` line for line, including
//! its bookkeeping quirks, because the golden images depend on them.

use burn::tensor::Tensor;

use super::sampler::{Sampler, alpha_sigma};
use super::{NoiseSchedule, Prediction, SchedulerConfig};
use crate::error::{Error, Result};

/// `PNDMScheduler`'s state.
pub(super) struct Pndm {
    /// The first `prk_len` UNet evaluations are Runge–Kutta stages (0 with `skip_prk_steps`).
    prk_len: usize,
    /// T / n / 2: the RK midpoint offset.
    half_ratio: i64,
    ets: Vec<Tensor<4>>,
    counter: usize,
    cur_sample: Option<Tensor<4>>,
    /// Running RK sum (1/6, 1/3, 1/3, 1/6 of the four stages).
    cur_out: Option<Tensor<4>>,
}

impl Pndm {
    /// Timesteps to evaluate, from the `n` spaced ones (descending), and the initial state.
    pub(super) fn new(desc: Vec<f64>, skip_prk: bool, ratio: usize) -> Result<(Vec<f64>, Self)> {
        let asc: Vec<f64> = desc.into_iter().rev().collect();
        let n = asc.len();
        let (prk, plms) = if skip_prk {
            // plms = [t[:-1], t[-2:-1], t[-1:]][::-1]: the second timestep runs twice.
            let mut p = asc[..n - 1].to_vec();
            if n >= 2 {
                p.push(asc[n - 2]);
            }
            p.push(asc[n - 1]);
            p.reverse();
            (Vec::new(), p)
        } else {
            if n < 2 {
                return Err(Error::BadInput(
                    "PNDM with Runge-Kutta warm-up needs at least 2 steps".into(),
                ));
            }
            // The last four timesteps, each followed by its midpoint; every point but the ends
            // twice (`prk_timesteps[:-1].repeat(2)[1:-1]`), descending.
            let half = (ratio / 2) as f64;
            let mut pairs: Vec<f64> = asc[n.saturating_sub(4)..].iter().flat_map(|&t| [t, t + half]).collect();
            pairs.pop();
            let twice: Vec<f64> = pairs.iter().flat_map(|&t| [t, t]).collect();
            let prk: Vec<f64> = twice[1..twice.len() - 1].iter().rev().copied().collect();
            let plms: Vec<f64> = asc[..n.saturating_sub(3)].iter().rev().copied().collect();
            (prk, plms)
        };
        let state = Pndm {
            prk_len: prk.len(),
            half_ratio: (ratio / 2) as i64,
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
            cur_out: None,
        };
        Ok(([prk, plms].concat(), state))
    }

    pub(super) fn step(&mut self, s: &Sampler, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        if self.counter < self.prk_len {
            self.step_prk(s, out, i, sample)
        } else {
            self.step_plms(s, out, i, sample)
        }
    }

    /// Fourth-order Runge–Kutta: four UNet evaluations per step, each stage moving from the
    /// step's starting sample.
    fn step_prk(&mut self, s: &Sampler, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let diff = if self.counter % 2 == 1 { 0 } else { self.half_ratio };
        let prev_t = s.timesteps[i] as i64 - diff;
        let t = s.timesteps[self.counter / 4 * 4] as i64;
        let out = match self.counter % 4 {
            0 => {
                self.cur_out = Some(out.clone() * (1.0 / 6.0));
                self.ets.push(out.clone());
                self.cur_sample = Some(sample.clone());
                out
            }
            1 | 2 => {
                let third = out.clone() * (1.0 / 3.0);
                self.cur_out = Some(self.cur_out.take().map_or(third.clone(), |acc| acc + third));
                out
            }
            _ => {
                let sixth = out * (1.0 / 6.0);
                self.cur_out.take().map_or(sixth.clone(), |acc| acc + sixth)
            }
        };
        let from = self.cur_sample.clone().unwrap_or(sample);
        self.counter += 1;
        pndm_prev_sample(s, from, t, prev_t, out)
    }

    /// Linear multistep (PLMS) over the last four outputs.
    fn step_plms(&mut self, s: &Sampler, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let mut t = s.timesteps[i] as i64;
        let mut prev_t = t - s.step_ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(out.clone());
        } else {
            prev_t = t;
            t += s.step_ratio;
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
            (
                (e(1) * 55.0 - e(2) * 59.0 + e(3) * 37.0 - e(4) * 9.0) * (1.0 / 24.0),
                sample,
            )
        };
        self.counter += 1;
        pndm_prev_sample(s, sample, t, prev_t, out)
    }
}

/// PNDM's `_get_prev_sample`: from timestep `t` to `prev_t` (formula (9) of the PNDM paper).
fn pndm_prev_sample(s: &Sampler, sample: Tensor<4>, t: i64, prev_t: i64, out: Tensor<4>) -> Tensor<4> {
    let a = s.schedule.alpha_at(t, s.final_alpha);
    let a_prev = s.schedule.alpha_at(prev_t, s.final_alpha);
    let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
    let out = match s.prediction {
        Prediction::Epsilon => out,
        Prediction::V => out * a.sqrt() as f32 + sample.clone() * b.sqrt() as f32,
        Prediction::Flow => unreachable!("{}", super::sampler::FLOW_ONLY_EULER),
    };
    let sample_coeff = (a_prev / a).sqrt();
    let denom = a * b_prev.sqrt() + (a * b * a_prev).sqrt();
    sample * sample_coeff as f32 - out * ((a_prev - a) / denom) as f32
}

/// `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`, `solver_order=2`.
pub(super) struct DpmSolver {
    /// x̂₀ of the previous step (the multistep history).
    prev_x0: Option<Tensor<4>>,
    lower_order_nums: usize,
    heun: bool,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    /// Flow sigmas: α = 1 − σ, and the model predicts the velocity.
    flow: bool,
}

impl DpmSolver {
    /// (timesteps, σ per timestep plus the final σ, state).
    pub(super) fn new(
        schedule: &NoiseSchedule,
        config: &SchedulerConfig,
        steps: usize,
        spacing: &str,
        karras: bool,
    ) -> Result<(Vec<f64>, Vec<f64>, Self)> {
        let bad = |m: String| Err(Error::BadInput(m));
        let heun = match config.solver_type.as_str() {
            "midpoint" => false,
            "heun" => true,
            other => return bad(format!("solver_type {other:?} is not supported")),
        };
        let final_zero = match config.final_sigmas_type.as_str() {
            "zero" => true,
            "sigma_min" => false,
            other => return bad(format!("final_sigmas_type {other:?} is not supported")),
        };
        let t = schedule.len();
        let mut ts: Vec<f64> = match spacing {
            // np.linspace(0, T-1, n+1).round()[::-1][:-1]
            "linspace" => {
                let step = (t - 1) as f64 / steps as f64;
                (1..=steps).rev().map(|i| (i as f64 * step).round_ties_even()).collect()
            }
            "leading" => {
                let ratio = t / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio + config.steps_offset) as f64)
                    .collect()
            }
            other => schedule.timesteps(steps, other, config.steps_offset)?,
        };
        let train = schedule.sigmas();
        let mut sigmas: Vec<f64> = if karras {
            let k = karras_sigmas(train[0], train[t - 1], steps);
            let log_sigmas: Vec<f32> = train.iter().map(|&s| (s as f32).ln()).collect();
            // Timesteps back from σ; cast to int64 afterwards (cosine schedules skip the rounding).
            let cosine = config.beta_schedule == "squaredcos_cap_v2";
            ts = k
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas))
                .map(|x| if cosine { x.trunc() } else { x.round_ties_even() })
                .collect();
            k
        } else {
            if ts.iter().any(|&x| x < 0.0 || x >= t as f64) {
                return bad(format!(
                    "timestep spacing {spacing:?} with {steps} steps leaves the schedule"
                ));
            }
            ts.iter().map(|&x| train[x as usize]).collect()
        };
        sigmas.push(if final_zero { 0.0 } else { train[0] });
        let sigmas = sigmas.into_iter().map(|s| s as f32 as f64).collect();
        let state = DpmSolver {
            prev_x0: None,
            lower_order_nums: 0,
            heun,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_zero,
            flow: false,
        };
        Ok((ts, sigmas, state))
    }

    /// `use_flow_sigmas`: n σ from `linspace(1, 1/T, n+1)` shifted by the model's `shift` (e^μ
    /// with dynamic shifting), computed in f64 then stored f32; timesteps `int64(σ·T)`; final σ 0.
    pub(super) fn new_flow(
        config: &SchedulerConfig,
        steps: usize,
        mu: Option<f64>,
    ) -> Result<(Vec<f64>, Vec<f64>, Self)> {
        if config.solver_order != 2 || config.algorithm_type != "dpmsolver++" {
            return Err(Error::BadInput(
                "flow DPM-Solver++ runs as 2M (solver_order 2) only".into(),
            ));
        }
        let shift = match (config.use_dynamic_shifting, mu) {
            (true, Some(mu)) => mu.exp(),
            (true, None) => return Err(Error::BadInput("dynamic shifting needs the image size (mu)".into())),
            (false, _) => config.shift,
        };
        let t = config.num_train_timesteps as f64;
        let n = steps;
        // numpy's linspace: j·step + start, the last point exactly the stop
        let step = (1.0 / t - 1.0) / n as f64;
        let mut sigmas: Vec<f64> = (0..n)
            .map(|k| {
                // index n − k of 1 − linspace(1, 1/T, n+1), then shifted (the flip)
                let j = n - k;
                let alpha = j as f64 * step + 1.0;
                let s = 1.0 - if j == n { 1.0 / t } else { alpha };
                shift * s / (1.0 + (shift - 1.0) * s)
            })
            .collect();
        let ts = sigmas.iter().map(|&s| (s * t).trunc()).collect();
        sigmas.push(0.0);
        let sigmas = sigmas.into_iter().map(|s| s as f32 as f64).collect();
        let state = DpmSolver {
            prev_x0: None,
            lower_order_nums: 0,
            heun: false,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_zero: true,
            flow: true,
        };
        Ok((ts, sigmas, state))
    }

    /// (α_t, σ_t) at noise level σ.
    fn alpha_sigma(&self, sigma: f64) -> (f64, f64) {
        if self.flow {
            (1.0 - sigma, sigma)
        } else {
            alpha_sigma(sigma)
        }
    }

    pub(super) fn step(&mut self, s: &Sampler, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let n = s.timesteps.len();
        let (alpha_s0, sigma_s0) = self.alpha_sigma(s.sigmas[i]);
        let (alpha_t, sigma_t) = self.alpha_sigma(s.sigmas[i + 1]);
        // convert_model_output: DPM-Solver++ works on the data prediction x̂₀.
        let x0 = match s.prediction {
            Prediction::Epsilon => (sample.clone() - out * sigma_s0 as f32) / alpha_s0 as f32,
            Prediction::V => sample.clone() * alpha_s0 as f32 - out * sigma_s0 as f32,
            Prediction::Flow => sample.clone() - out * sigma_s0 as f32,
        };
        let lower_final = i + 1 == n && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_zero);
        let lambda = |a: f64, s: f64| a.ln() - s.ln();
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let em1 = (-h).exp() - 1.0;
        let first_order = sample * (sigma_t / sigma_s0) as f32 - x0.clone() * (alpha_t * em1) as f32;
        let prev = self.prev_x0.replace(x0.clone());
        let x_t = match prev {
            Some(m1) if self.lower_order_nums >= 1 && !lower_final => {
                let (alpha_s1, sigma_s1) = self.alpha_sigma(s.sigmas[i - 1]);
                let r0 = (lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1)) / h;
                let d1 = (x0 - m1) * (1.0 / r0) as f32;
                if self.heun {
                    first_order + d1 * (alpha_t * (em1 / h + 1.0)) as f32
                } else {
                    first_order - d1 * (0.5 * alpha_t * em1) as f32
                }
            }
            _ => first_order,
        };
        self.lower_order_nums = (self.lower_order_nums + 1).min(2);
        x_t
    }
}

/// Karras et al. (2022) σ spacing, ρ = 7, from σ_max down to σ_min.
fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    (0..n)
        .map(|i| {
            let ramp = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
            (hi + ramp * (lo - hi)).powf(rho)
        })
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log σ brackets `sigma`.
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of the cumulative count of log_sigmas ≤ log σ: the last such index (0 if none).
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l as f64 >= 0.0).count();
    let low = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let (l, h) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((l as f64 - log_sigma) / (l - h) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}
