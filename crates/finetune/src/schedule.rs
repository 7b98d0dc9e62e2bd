//! Learning-rate schedules, evaluated per optimizer step.

use serde::{Deserialize, Serialize};

/// How the learning rate moves over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Linear warm-up from `base / warmup_steps` to `base` over
    /// `warmup_steps`, then a half cosine from `base` down to `min_lr` at
    /// the last step.
    Cosine { warmup_steps: usize, min_lr: f64 },
}

impl Schedule {
    /// The rate for `step` (0-based) of `total_steps`.
    pub fn learning_rate(&self, base: f64, step: usize, total_steps: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Cosine { warmup_steps, min_lr } => {
                if step < warmup_steps {
                    return base * (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).saturating_sub(1).max(1);
                let progress = ((step - warmup_steps) as f64 / span as f64).clamp(0.0, 1.0);
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warms_up_then_decays_to_the_floor() {
        let s = Schedule::Cosine { warmup_steps: 4, min_lr: 0.1 };
        let rates: Vec<f64> = (0..14).map(|step| s.learning_rate(1.0, step, 14)).collect();
        assert_eq!(&rates[..4], [0.25, 0.5, 0.75, 1.0]);
        assert!((rates[4] - 1.0).abs() < 1e-12);
        assert!(rates[4..].windows(2).all(|w| w[1] <= w[0]));
        assert!((rates[13] - 0.1).abs() < 1e-12);
        assert_eq!(Schedule::Constant.learning_rate(0.3, 9, 10), 0.3);
    }
}
