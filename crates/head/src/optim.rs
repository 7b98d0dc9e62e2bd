//! Optimisers: SGD (momentum, Nesterov), Adam and AdamW.
//!
//! Every optimiser here is element-wise, so an update can run on any slice of
//! a parameter with the matching slices of its state. Training uses that to
//! fuse each weight tile's gradient with its update while the tile is still
//! in cache, and the result does not depend on how the tensor was cut.
//!
//! Formulas follow PyTorch's (`torch.optim.SGD`, `Adam`, `AdamW`), which
//! differ slightly from Keras's in where ε and the learning rate enter; see
//! the README.

use rayon::prelude::*;

use crate::Scalar;

pub use contracts::head::{AdamConfig, AdamWConfig, OptimizerConfig, SgdConfig};

/// The optimiser's memory for one parameter tensor: SGD's velocity in
/// `first`, or Adam's first and second moments. Unused vectors are empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamState<T> {
    pub first: Vec<T>,
    pub second: Vec<T>,
}

/// An optimiser with its state for a fixed list of parameter tensors.
#[derive(Clone, Debug)]
pub struct Optimizer<T> {
    config: OptimizerConfig,
    steps: u64,
    states: Vec<ParamState<T>>,
}

/// The scalars of one step, fixed once per step (learning rate, bias
/// corrections), so the per-element work is a single fused pass.
#[derive(Clone, Copy, Debug)]
pub struct UpdateRule<T> {
    kind: RuleKind<T>,
}

#[derive(Clone, Copy, Debug)]
enum RuleKind<T> {
    Sgd {
        lr: T,
        momentum: T,
        nesterov: bool,
        l2: T,
    },
    Adam {
        beta1: T,
        beta2: T,
        one_minus_beta1: T,
        one_minus_beta2: T,
        /// lr / (1 − β1^t).
        step_size: T,
        /// 1 / sqrt(1 − β2^t).
        inv_sqrt_bc2: T,
        eps: T,
        /// Coupled L2 (Adam).
        l2: T,
        /// Decoupled multiplier `1 − lr·wd` (AdamW), or 1.
        shrink: T,
    },
}

/// Elements per parallel piece of the explicit-gradient `step`.
const UPDATE_CHUNK: usize = 1 << 15;

impl<T: Scalar> Optimizer<T> {
    /// State for parameters of the given lengths (in elements).
    pub fn new(config: OptimizerConfig, param_lens: &[usize]) -> Self {
        let states = param_lens
            .iter()
            .map(|&n| match &config {
                OptimizerConfig::Sgd(c) if c.momentum == 0.0 => ParamState::default(),
                OptimizerConfig::Sgd(_) => ParamState { first: vec![T::zero(); n], second: Vec::new() },
                OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => {
                    ParamState { first: vec![T::zero(); n], second: vec![T::zero(); n] }
                }
            })
            .collect();
        Optimizer { config, steps: 0, states }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Steps begun so far (Adam's `t` of the last step).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn state(&self, param: usize) -> &ParamState<T> {
        &self.states[param]
    }

    /// Mutable state of one parameter, for fused updates.
    pub fn state_mut(&mut self, param: usize) -> &mut ParamState<T> {
        &mut self.states[param]
    }

    /// Starts a step at learning rate `lr`: advances `t` and returns the
    /// rule to apply to every parameter (or every slice of one) this step.
    pub fn begin_step(&mut self, lr: f64) -> UpdateRule<T> {
        self.steps += 1;
        let t = self.steps as i32;
        let kind = match &self.config {
            OptimizerConfig::Sgd(c) => RuleKind::Sgd {
                lr: T::of(lr),
                momentum: T::of(c.momentum),
                nesterov: c.nesterov,
                l2: T::of(c.weight_decay),
            },
            OptimizerConfig::Adam(c) => adam_rule(lr, c.beta1, c.beta2, c.eps, t, c.weight_decay, 0.0),
            OptimizerConfig::AdamW(c) => adam_rule(lr, c.beta1, c.beta2, c.eps, t, 0.0, c.weight_decay),
        };
        UpdateRule { kind }
    }

    /// One step with explicit gradients: `params[i] −= …grads[i]…`. `decay[i]`
    /// says whether weight decay applies to parameter `i` (the head decays
    /// weights, not biases).
    pub fn step(&mut self, lr: f64, params: &mut [&mut [T]], grads: &[&[T]], decay: &[bool]) {
        assert_eq!(params.len(), self.states.len(), "one state per parameter");
        assert_eq!(grads.len(), params.len());
        assert_eq!(decay.len(), params.len());
        let rule = self.begin_step(lr);
        for (i, (param, grad)) in params.iter_mut().zip(grads).enumerate() {
            let state = &mut self.states[i];
            let pieces = split_state(state, param.len(), UPDATE_CHUNK);
            param
                .par_chunks_mut(UPDATE_CHUNK)
                .zip(grad.par_chunks(UPDATE_CHUNK))
                .zip(pieces)
                .for_each(|((w, g), (first, second))| rule.apply(w, g, first, second, decay[i]));
        }
    }
}

/// Cuts a parameter's state into pieces of `chunk` elements, matching
/// `par_chunks_mut(chunk)` of the parameter; unused state gives empty pieces.
pub(crate) fn split_state<T>(state: &mut ParamState<T>, len: usize, chunk: usize) -> Vec<(&mut [T], &mut [T])> {
    let pieces = len.div_ceil(chunk);
    let mut firsts: Vec<&mut [T]> = if state.first.is_empty() {
        (0..pieces).map(|_| <&mut [T]>::default()).collect()
    } else {
        state.first.chunks_mut(chunk).collect()
    };
    let mut seconds: Vec<&mut [T]> = if state.second.is_empty() {
        (0..pieces).map(|_| <&mut [T]>::default()).collect()
    } else {
        state.second.chunks_mut(chunk).collect()
    };
    firsts.drain(..).zip(seconds.drain(..)).collect()
}

fn adam_rule<T: Scalar>(lr: f64, b1: f64, b2: f64, eps: f64, t: i32, l2: f64, decoupled: f64) -> RuleKind<T> {
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    RuleKind::Adam {
        beta1: T::of(b1),
        beta2: T::of(b2),
        one_minus_beta1: T::of(1.0 - b1),
        one_minus_beta2: T::of(1.0 - b2),
        step_size: T::of(lr / bc1),
        inv_sqrt_bc2: T::of(1.0 / bc2.sqrt()),
        eps: T::of(eps),
        l2: T::of(l2),
        shrink: T::of(1.0 - lr * decoupled),
    }
}

impl<T: Scalar> UpdateRule<T> {
    /// Updates `w` from `g` in one pass over `w`, `g` and the state slices
    /// (`first`/`second` as in [`ParamState`], empty when unused).
    #[inline]
    pub fn apply(&self, w: &mut [T], g: &[T], first: &mut [T], second: &mut [T], decay: bool) {
        assert_eq!(w.len(), g.len());
        match self.kind {
            RuleKind::Sgd { lr, momentum, nesterov, l2 } => {
                let l2 = if decay { l2 } else { T::zero() };
                if first.is_empty() {
                    for (w, &g) in w.iter_mut().zip(g) {
                        *w -= lr * (g + l2 * *w);
                    }
                } else {
                    assert_eq!(first.len(), w.len());
                    for ((w, &g), v) in w.iter_mut().zip(g).zip(first.iter_mut()) {
                        let g = g + l2 * *w;
                        let vel = momentum * *v + g;
                        *v = vel;
                        let d = if nesterov { g + momentum * vel } else { vel };
                        *w -= lr * d;
                    }
                }
            }
            RuleKind::Adam {
                beta1,
                beta2,
                one_minus_beta1,
                one_minus_beta2,
                step_size,
                inv_sqrt_bc2,
                eps,
                l2,
                shrink,
            } => {
                assert!(first.len() == w.len() && second.len() == w.len());
                let (l2, shrink) = if decay { (l2, shrink) } else { (T::zero(), T::one()) };
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(first.iter_mut()).zip(second.iter_mut()) {
                    let g = g + l2 * *w;
                    let m_new = beta1 * *m + one_minus_beta1 * g;
                    let v_new = beta2 * *v + one_minus_beta2 * (g * g);
                    *m = m_new;
                    *v = v_new;
                    *w = *w * shrink - step_size * m_new / (v_new.sqrt() * inv_sqrt_bc2 + eps);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W0: [f64; 3] = [1.0, -2.0, 0.5];
    const G1: [f64; 3] = [0.1, -0.2, 0.3];
    const G2: [f64; 3] = [-0.4, 0.5, 0.0];

    /// Two steps with gradients G1 then G2 (fixed, not recomputed).
    fn run(config: OptimizerConfig, lrs: [f64; 2], decay: bool) -> (Vec<f64>, Vec<f64>) {
        let mut opt = Optimizer::<f64>::new(config, &[3]);
        let mut w = W0.to_vec();
        opt.step(lrs[0], &mut [&mut w], &[&G1], &[decay]);
        let after_one = w.clone();
        opt.step(lrs[1], &mut [&mut w], &[&G2], &[decay]);
        (after_one, w)
    }

    fn assert_vec(actual: &[f64], expected: &[f64]) {
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{actual:?} vs {expected:?}");
        }
    }

    #[test]
    fn plain_sgd() {
        let c = OptimizerConfig::Sgd(SgdConfig { lr: 0.1, ..Default::default() });
        let (one, two) = run(c, [0.1, 0.1], true);
        assert_vec(&one, &[0.99, -1.98, 0.47]);
        assert_vec(&two, &[1.03, -2.03, 0.47]);
    }

    #[test]
    fn sgd_momentum_and_nesterov() {
        let sgd = |nesterov| OptimizerConfig::Sgd(SgdConfig { lr: 0.1, momentum: 0.9, nesterov, weight_decay: 0.0 });
        // v1 = g1; v2 = 0.9·g1 + g2 = (-0.31, 0.32, 0.27).
        let (one, two) = run(sgd(false), [0.1, 0.1], true);
        assert_vec(&one, &[0.99, -1.98, 0.47]);
        assert_vec(&two, &[1.021, -2.012, 0.443]);
        // Nesterov: d1 = g1 + 0.9·v1 = 1.9·g1; d2 = g2 + 0.9·v2 = (-0.679, 0.788, 0.243).
        let (one, two) = run(sgd(true), [0.1, 0.1], true);
        assert_vec(&one, &[0.981, -1.962, 0.443]);
        assert_vec(&two, &[1.0489, -2.0408, 0.4187]);
    }

    #[test]
    fn sgd_weight_decay_is_l2_on_weights_only_when_asked() {
        let c = OptimizerConfig::Sgd(SgdConfig { lr: 0.1, weight_decay: 0.5, ..Default::default() });
        // g' = g + 0.5·w = (0.6, -1.2, 0.55).
        let (one, _) = run(c.clone(), [0.1, 0.1], true);
        assert_vec(&one, &[0.94, -1.88, 0.445]);
        let (one, _) = run(c, [0.1, 0.1], false);
        assert_vec(&one, &[0.99, -1.98, 0.47]);
    }

    #[test]
    fn adam_with_bias_correction() {
        let c = OptimizerConfig::Adam(AdamConfig { lr: 0.01, eps: 1e-8, ..Default::default() });
        let (one, two) = run(c, [0.01, 0.01], true);
        // Step 1: m̂ = g, v̂ = g², so each weight moves by lr·g/(|g| + ε).
        let e1 = [1.0 - 0.01 * 0.1 / (0.1 + 1e-8), -2.0 + 0.01 * 0.2 / (0.2 + 1e-8), 0.5 - 0.01 * 0.3 / (0.3 + 1e-8)];
        assert_vec(&one, &e1);
        // Step 2 by hand: m = 0.9·0.1·g1 + 0.1·g2, v = 0.999·0.001·g1² + 0.001·g2²,
        // m̂ = m / 0.19, v̂ = v / 0.001999.
        let expected_two: Vec<f64> = (0..3)
            .map(|i| {
                let m = 0.09 * G1[i] + 0.1 * G2[i];
                let v = 0.000999 * G1[i] * G1[i] + 0.001 * G2[i] * G2[i];
                let m_hat = m / (1.0 - 0.81);
                let v_hat = v / (1.0 - 0.998001);
                e1[i] - 0.01 * m_hat / (v_hat.sqrt() + 1e-8)
            })
            .collect();
        assert_vec(&two, &expected_two);
        // Pin the numbers too, so a change in the formula above cannot hide.
        assert_vec(&two, &[0.9955950357485128, -1.9944221530217234, 0.4832994181079154]);
    }

    #[test]
    fn adamw_decays_decoupled_and_adam_decays_through_the_gradient() {
        let adamw =
            OptimizerConfig::AdamW(AdamWConfig { lr: 0.01, eps: 1e-8, weight_decay: 0.1, ..Default::default() });
        let (one, _) = run(adamw, [0.01, 0.01], true);
        // w·(1 − lr·wd) then the Adam step (unchanged by decay: m, v see g only).
        let expected: Vec<f64> = (0..3).map(|i| W0[i] * (1.0 - 0.001) - 0.01 * G1[i] / (G1[i].abs() + 1e-8)).collect();
        assert_vec(&one, &expected);
        assert_vec(&one, &[0.9890000009999999, -1.9880000005, 0.4895000003333333]);

        let adam_l2 =
            OptimizerConfig::Adam(AdamConfig { lr: 0.01, eps: 1e-8, weight_decay: 0.1, ..Default::default() });
        let (one, _) = run(adam_l2, [0.01, 0.01], true);
        // g' = g + 0.1·w = (0.2, -0.4, 0.35): first Adam step is still ±lr.
        let g: Vec<f64> = (0..3).map(|i| G1[i] + 0.1 * W0[i]).collect();
        let expected: Vec<f64> = (0..3).map(|i| W0[i] - 0.01 * g[i] / (g[i].abs() + 1e-8)).collect();
        assert_vec(&one, &expected);
    }

    #[test]
    fn learning_rate_is_read_each_step() {
        let c = OptimizerConfig::Sgd(SgdConfig { lr: 1.0, ..Default::default() });
        let (_, two) = run(c, [0.1, 0.0], true);
        assert_vec(&two, &[0.99, -1.98, 0.47]);
    }

    #[test]
    fn slicing_does_not_change_the_update() {
        let c = OptimizerConfig::Adam(AdamConfig::default());
        let n = UPDATE_CHUNK + 17;
        let w0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut whole = Optimizer::<f32>::new(c.clone(), &[n]);
        let mut w_whole = w0.clone();
        whole.step(1e-3, &mut [&mut w_whole], &[&g], &[true]);

        let mut sliced = Optimizer::<f32>::new(c, &[n]);
        let rule = sliced.begin_step(1e-3);
        let mut w_sliced = w0;
        let state = sliced.state_mut(0);
        let moments = state.first.chunks_mut(7).zip(state.second.chunks_mut(7));
        for ((w, g), (m, v)) in w_sliced.chunks_mut(7).zip(g.chunks(7)).zip(moments) {
            rule.apply(w, g, m, v, true);
        }
        assert_eq!(w_whole, w_sliced);
    }

    #[test]
    fn validation_rejects_nonsense() {
        assert!(OptimizerConfig::default().validate().is_ok());
        let bad = OptimizerConfig::Sgd(SgdConfig { nesterov: true, ..Default::default() });
        assert!(bad.validate().is_err());
        let bad = OptimizerConfig::Adam(AdamConfig { lr: -1.0, ..Default::default() });
        assert!(bad.validate().is_err());
    }
}
