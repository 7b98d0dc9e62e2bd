//! Learning-rate schedules, as pure functions of the step number.

use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// How the learning rate moves over training. In TOML:
/// `schedule = { kind = "cosine", warmup_epochs = 1 }`.
///
/// Steps are optimiser steps (mini-batches), counted from 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` every `every_epochs` epochs.
    Step { every_epochs: usize, gamma: f64 },
    /// Linear warm-up over `warmup_epochs` (step `s` gets `(s + 1) / W` of
    /// the base rate, so no step is wasted at rate 0), then cosine decay
    /// from the base rate towards `final_lr_ratio × base`.
    Cosine {
        #[serde(default)]
        warmup_epochs: f64,
        #[serde(default)]
        final_lr_ratio: f64,
    },
    /// Linear warm-up over `warmup_steps` steps from `base / warmup_steps`
    /// to `base`, then a half cosine from `base` down to `min_lr` at the
    /// last step: fine-tuning's schedule, counted in steps.
    CosineSteps { warmup_steps: usize, min_lr: f64 },
    /// Smith's one-cycle policy as in PyTorch's `OneCycleLR` (cosine
    /// annealing, learning rate only): from `base / div_factor` up to the
    /// base rate over the first `pct_start` of training, then down to
    /// `base / (div_factor · final_div_factor)`.
    OneCycle {
        #[serde(default = "default_pct_start")]
        pct_start: f64,
        #[serde(default = "default_div_factor")]
        div_factor: f64,
        #[serde(default = "default_final_div_factor")]
        final_div_factor: f64,
    },
}

fn default_pct_start() -> f64 {
    0.3
}
fn default_div_factor() -> f64 {
    25.0
}
fn default_final_div_factor() -> f64 {
    1e4
}

/// `end + (start − end)·(1 + cos(π·pct)) / 2`: from `start` at 0 to `end` at 1.
fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * (1.0 + (PI * pct).cos())
}

impl Schedule {
    /// The learning rate of step `step` (0-based) in a run of `total_steps`
    /// steps with `steps_per_epoch` steps an epoch.
    pub fn lr(&self, base: f64, step: u64, steps_per_epoch: u64, total_steps: u64) -> f64 {
        let s = step as f64;
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every_epochs, gamma } => {
                let period = (every_epochs as u64 * steps_per_epoch).max(1);
                base * gamma.powi((step / period) as i32)
            }
            Schedule::Cosine { warmup_epochs, final_lr_ratio } => {
                let warmup = (warmup_epochs * steps_per_epoch as f64).round() as u64;
                if step < warmup {
                    return base * (s + 1.0) / warmup as f64;
                }
                let span = total_steps.saturating_sub(warmup).max(1) as f64;
                let pct = ((s - warmup as f64) / span).clamp(0.0, 1.0);
                cos_anneal(base, base * final_lr_ratio, pct)
            }
            Schedule::CosineSteps { warmup_steps, min_lr } => {
                let (step, warmup) = (step as usize, warmup_steps);
                if step < warmup {
                    return base * (step + 1) as f64 / warmup as f64;
                }
                let span = (total_steps as usize).saturating_sub(warmup).saturating_sub(1).max(1);
                let progress = ((step - warmup) as f64 / span as f64).clamp(0.0, 1.0);
                min_lr + (base - min_lr) * 0.5 * (1.0 + (PI * progress).cos())
            }
            Schedule::OneCycle { pct_start, div_factor, final_div_factor } => {
                let initial = base / div_factor;
                let min = initial / final_div_factor;
                let up_end = pct_start * total_steps as f64 - 1.0;
                let down_end = total_steps as f64 - 1.0;
                if s <= up_end {
                    let pct = if up_end > 0.0 { s / up_end } else { 1.0 };
                    cos_anneal(initial, base, pct)
                } else {
                    let span = down_end - up_end;
                    let pct = if span > 0.0 { ((s - up_end) / span).min(1.0) } else { 1.0 };
                    cos_anneal(base, min, pct)
                }
            }
        }
    }

    /// Describes the first invalid setting, if any.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Schedule::Constant => Ok(()),
            Schedule::Step { every_epochs, gamma } => {
                if every_epochs == 0 || !(gamma.is_finite() && gamma > 0.0) {
                    Err(format!("step schedule needs every_epochs >= 1 and gamma > 0, got {every_epochs} and {gamma}"))
                } else {
                    Ok(())
                }
            }
            Schedule::Cosine { warmup_epochs, final_lr_ratio } => {
                if !(warmup_epochs >= 0.0 && (0.0..=1.0).contains(&final_lr_ratio)) {
                    Err(format!(
                        "cosine schedule needs warmup_epochs >= 0 and final_lr_ratio in [0, 1], got {warmup_epochs} and {final_lr_ratio}"
                    ))
                } else {
                    Ok(())
                }
            }
            Schedule::CosineSteps { min_lr, .. } => {
                if min_lr.is_finite() && min_lr >= 0.0 {
                    Ok(())
                } else {
                    Err(format!("cosine_steps needs min_lr >= 0, got {min_lr}"))
                }
            }
            Schedule::OneCycle { pct_start, div_factor, final_div_factor } => {
                if !((0.0..=1.0).contains(&pct_start) && div_factor > 0.0 && final_div_factor > 0.0) {
                    Err("one_cycle needs pct_start in [0, 1] and positive div factors".into())
                } else {
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn constant_and_step() {
        close(Schedule::Constant.lr(0.1, 57, 10, 100), 0.1);
        let s = Schedule::Step { every_epochs: 2, gamma: 0.5 };
        // 10 steps an epoch: the rate halves at steps 20, 40, ...
        close(s.lr(0.1, 0, 10, 100), 0.1);
        close(s.lr(0.1, 19, 10, 100), 0.1);
        close(s.lr(0.1, 20, 10, 100), 0.05);
        close(s.lr(0.1, 45, 10, 100), 0.025);
    }

    #[test]
    fn cosine_with_warmup() {
        let s = Schedule::Cosine { warmup_epochs: 0.5, final_lr_ratio: 0.1 };
        // 8 steps an epoch → 4 warm-up steps, then 16 cosine steps of 20.
        close(s.lr(1.0, 0, 8, 20), 0.25);
        close(s.lr(1.0, 3, 8, 20), 1.0);
        close(s.lr(1.0, 4, 8, 20), 1.0);
        // Half-way through the decay: 0.1 + 0.9·(1 + cos(π/2))/2 = 0.55.
        close(s.lr(1.0, 12, 8, 20), 0.55);
        // Step 16: pct 0.75 → 0.1 + 0.45·(1 − √½).
        close(s.lr(1.0, 16, 8, 20), 0.1 + 0.45 * (1.0 - 0.5f64.sqrt()));
        let plain = Schedule::Cosine { warmup_epochs: 0.0, final_lr_ratio: 0.0 };
        close(plain.lr(2.0, 0, 5, 10), 2.0);
        close(plain.lr(2.0, 5, 5, 10), 1.0);
    }

    #[test]
    fn one_cycle_matches_pytorch_formula() {
        let s = Schedule::OneCycle { pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 };
        // 11 steps: warm phase ends at step 0.3·11 − 1 = 2.3.
        let (base, total) = (1.0, 11);
        close(s.lr(base, 0, 11, total), 0.04);
        // Step 1: pct = 1/2.3.
        close(s.lr(base, 1, 11, total), 1.0 + (0.04 - 1.0) / 2.0 * (1.0 + (PI / 2.3).cos()));
        // Step 10 is the last: exactly the minimum, 0.04 / 1e4.
        close(s.lr(base, 10, 11, total), 4e-6);
        // Step 3: pct = 0.7 / 7.7 of the way down.
        let pct = 0.7 / 7.7;
        close(s.lr(base, 3, 11, total), 4e-6 + (1.0 - 4e-6) / 2.0 * (1.0 + (PI * pct).cos()));
    }

    #[test]
    fn parses_from_toml_shapes() {
        let s: Schedule = serde_json::from_str(r#"{"kind":"one_cycle"}"#).unwrap();
        assert_eq!(s, Schedule::OneCycle { pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 });
        assert!(serde_json::from_str::<Schedule>(r#"{"kind":"step","every_epochs":1}"#).is_err());
        assert!(Schedule::Step { every_epochs: 0, gamma: 0.5 }.validate().is_err());
    }

    #[test]
    fn cosine_steps_warms_up_then_decays_to_the_floor() {
        let s = Schedule::CosineSteps { warmup_steps: 4, min_lr: 0.1 };
        let rates: Vec<f64> = (0..14).map(|step| s.lr(1.0, step, 7, 14)).collect();
        assert_eq!(&rates[..4], [0.25, 0.5, 0.75, 1.0]);
        assert!((rates[4] - 1.0).abs() < 1e-12);
        assert!(rates[4..].windows(2).all(|w| w[1] <= w[0]));
        assert!((rates[13] - 0.1).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.3, 9, 5, 10), 0.3);
    }
}
