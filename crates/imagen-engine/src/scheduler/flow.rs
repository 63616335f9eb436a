//! Flow matching as one more schedule and prediction (diffusers'
//! `FlowMatchEulerDiscreteScheduler`): samples are `x_σ = (1 − σ)·x₀ + σ·ε`, the model predicts
//! the velocity `ε − x₀`, and σ runs from 1 to 0 through a shifted schedule (static `shift`, or
//! resolution-dependent "dynamic" shifting by μ).

use super::SchedulerConfig;
use crate::error::{Error, Result};

/// FLUX's μ for an image of `image_seq_len` packed tokens (`calculate_shift`): linear in the
/// sequence length between (`base_image_seq_len`, `base_shift`) and (`max_image_seq_len`,
/// `max_shift`).
pub fn dynamic_shift_mu(c: &SchedulerConfig, image_seq_len: usize) -> f64 {
    let (b, m) = (c.base_image_seq_len as f64, c.max_image_seq_len as f64);
    let slope = (c.max_shift - c.base_shift) / (m - b);
    image_seq_len as f64 * slope + (c.base_shift - slope * b)
}

/// The σ each step visits (without the final 0), as diffusers' `set_timesteps` leaves them.
///
/// `given`: the pipeline's own σ (FLUX passes `linspace(1, 1/n, n)`): cast to f32 first and
/// shifted in f32, as numpy does with a float32 array. Without it (SD3), the schedule is spaced
/// between the shifted training σ's ends in f64. `mu` is required with dynamic shifting.
pub fn flow_sigmas(c: &SchedulerConfig, steps: usize, given: Option<Vec<f64>>, mu: Option<f64>) -> Result<Vec<f64>> {
    for (on, name) in [
        (c.use_karras_sigmas, "use_karras_sigmas"),
        (c.use_exponential_sigmas, "use_exponential_sigmas"),
        (c.use_beta_sigmas, "use_beta_sigmas"),
        (c.invert_sigmas, "invert_sigmas"),
    ] {
        if on {
            return Err(Error::BadInput(format!(
                "flow-matching scheduler option {name} is not supported yet"
            )));
        }
    }
    if !matches!(c.time_shift_type.as_str(), "exponential" | "linear") {
        return Err(Error::BadInput(format!(
            "time_shift_type {:?} is not supported",
            c.time_shift_type
        )));
    }
    let mu = match (c.use_dynamic_shifting, mu) {
        (true, None) => return Err(Error::BadInput("dynamic shifting needs the image size (mu)".into())),
        (_, mu) => mu,
    };
    let shifted: Vec<f64> = match given {
        Some(s) => {
            let s: Vec<f32> = s.iter().map(|&x| x as f32).collect();
            let shift32 = |t: f32| -> f32 {
                match mu.filter(|_| c.use_dynamic_shifting) {
                    Some(mu) => time_shift32(&c.time_shift_type, mu, t),
                    None => {
                        let k = c.shift as f32;
                        k * t / (1.0 + (k - 1.0) * t)
                    }
                }
            };
            s.into_iter().map(|t| shift32(t) as f64).collect()
        }
        None => {
            let t = c.num_train_timesteps as f64;
            // The training σ's ends, as the constructor leaves them (f32, statically shifted
            // unless shifting is dynamic).
            let end = |s: f32| -> f64 {
                if c.use_dynamic_shifting {
                    s as f64
                } else {
                    let k = c.shift as f32;
                    (k * s / (1.0 + (k - 1.0) * s)) as f64
                }
            };
            let (max, min) = (end(1.0), end((1.0 / t) as f32));
            let n = steps.max(1);
            (0..n)
                .map(|i| {
                    let ts = max * t + (min * t - max * t) * i as f64 / (n.max(2) - 1) as f64;
                    let s = ts / t;
                    match mu.filter(|_| c.use_dynamic_shifting) {
                        Some(mu) => time_shift64(&c.time_shift_type, mu, s),
                        None => c.shift * s / (1.0 + (c.shift - 1.0) * s),
                    }
                })
                .map(|s| s as f32 as f64)
                .collect()
        }
    };
    Ok(match c.shift_terminal {
        Some(term) => {
            // stretch so the last σ lands on `shift_terminal` (f32, as torch)
            let last = shifted.last().copied().unwrap_or(1.0) as f32;
            let scale = (1.0 - last) / (1.0 - term as f32);
            shifted
                .into_iter()
                .map(|s| (1.0 - (1.0 - s as f32) / scale) as f64)
                .collect()
        }
        None => shifted,
    })
}

/// `time_shift(mu, 1.0, t)` on a float32 array: e^μ (a weak Python float) joins in f32.
fn time_shift32(kind: &str, mu: f64, t: f32) -> f32 {
    let base = (1.0 / t) - 1.0;
    match kind {
        "linear" => mu as f32 / (mu as f32 + base),
        _ => {
            let e = mu.exp() as f32;
            e / (e + base)
        }
    }
}

fn time_shift64(kind: &str, mu: f64, t: f64) -> f64 {
    let base = (1.0 / t) - 1.0;
    match kind {
        "linear" => mu / (mu + base),
        _ => mu.exp() / (mu.exp() + base),
    }
}

/// Image-to-image on a flow schedule: the first step to run (`FluxImg2ImgPipeline.get_timesteps`:
/// `int(n − min(n·strength, n))`, which rounds differently from the SD pipelines').
pub fn first_step_for_strength(steps: usize, strength: f64) -> usize {
    let n = steps as f64;
    (n - (n * strength).min(n)).max(0.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> SchedulerConfig {
        serde_json::from_str(json).expect("config")
    }

    /// FLUX.1-dev's scheduler at 1024² (4096 tokens) and 512² (1024), 4 steps, and schnell's:
    /// the values diffusers 0.42.1 prints for `scheduler.sigmas` after the pipeline's
    /// `set_timesteps(sigmas=linspace(1, 1/n, n), mu=…)`.
    #[test]
    fn flux_sigmas_match_diffusers() {
        let dev = config(r#"{"shift": 3.0, "use_dynamic_shifting": true}"#);
        let linspace = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|i| 1.0 + (1.0 / n as f64 - 1.0) * i as f64 / (n - 1) as f64)
                .collect()
        };
        let got = flow_sigmas(&dev, 4, Some(linspace(4)), Some(dynamic_shift_mu(&dev, 4096))).expect("sigmas");
        let got32: Vec<f32> = got.iter().map(|&s| s as f32).collect();
        assert_eq!(got32, [1.0, 0.904_530_76, 0.759_510_93, 0.512_844_15]);
        let schnell = config(r#"{"shift": 1.0}"#);
        let got = flow_sigmas(&schnell, 4, Some(linspace(4)), None).expect("sigmas");
        assert_eq!(got, vec![1.0, 0.75, 0.5, 0.25]);
        assert!(flow_sigmas(&dev, 4, Some(linspace(4)), None).is_err());
    }

    /// SD3's path: no σ from the pipeline, static shift 3 (`set_timesteps(5)`).
    #[test]
    fn static_shift_sigmas_match_diffusers() {
        let sd3 = config(r#"{"shift": 3.0}"#);
        let got: Vec<f32> = flow_sigmas(&sd3, 5, None, None)
            .expect("sigmas")
            .iter()
            .map(|&s| s as f32)
            .collect();
        assert_eq!(got, [1.0, 0.900_359_1, 0.751_121_1, 0.502_985_06, 0.008_928_572]);
    }

    #[test]
    fn img2img_first_step_rounds_as_flux() {
        assert_eq!(first_step_for_strength(4, 0.3), 2);
        assert_eq!(first_step_for_strength(5, 0.6), 2);
        assert_eq!(first_step_for_strength(4, 1.0), 0);
        assert_eq!(first_step_for_strength(4, 0.0), 4);
    }
}
