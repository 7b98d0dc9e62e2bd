//! Dense layers, activations and dropout, with their backward passes: the
//! multilayer perceptron that forms the head.
//!
//! Weight layout: `weight` is `[out, in]` (PyTorch's `nn.Linear`, ONNX
//! `Gemm` with `transB = 1`), so a layer computes `z = x·Wᵀ + b` for a batch
//! `x` of shape `[batch, in]`. Each output unit's weights are contiguous,
//! which is what makes the forward product fast at small batches.

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;

use crate::linalg::{gemm_par_cols, weight_grad_block, BAND_ROWS, BLOCK_COLS};
use crate::Scalar;
use train_kit::Xoshiro256;

pub use contracts::head::{Activation, Init};

/// One fully connected layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense<T> {
    /// `[out, in]`.
    pub weight: Array2<T>,
    /// `[out]`.
    pub bias: Array1<T>,
}

impl<T: Scalar> Dense<T> {
    pub fn zeros(inputs: usize, outputs: usize) -> Self {
        Dense { weight: Array2::zeros((outputs, inputs)), bias: Array1::zeros(outputs) }
    }

    pub fn inputs(&self) -> usize {
        self.weight.ncols()
    }

    pub fn outputs(&self) -> usize {
        self.weight.nrows()
    }

    /// `z = x·Wᵀ + b`, written into `z` (`[batch, out]`).
    pub fn forward_into(&self, x: ArrayView2<T>, mut z: ArrayViewMut2<T>) {
        let shape = z.dim();
        z.assign(&self.bias.broadcast(shape).expect("bias matches outputs"));
        gemm_par_cols(x, self.weight.t(), z, true);
    }

    /// Gradient with respect to the layer's input: `dx = dz·W`.
    pub fn input_grad_into(&self, dz: ArrayView2<T>, dx: ArrayViewMut2<T>) {
        gemm_par_cols(dz, self.weight.view(), dx, false);
    }

    /// Gradients of the parameters: `dW = dzᵀ·x`, `db = Σ_batch dz`, in
    /// the same bands and blocks as the fused training update.
    pub fn param_grads(x: ArrayView2<T>, dz: ArrayView2<T>) -> Dense<T> {
        let mut grad = Dense::zeros(x.ncols(), dz.ncols());
        let inputs = x.ncols();
        let bands: Vec<_> = grad.weight.axis_chunks_iter_mut(Axis(0), BAND_ROWS).collect();
        bands.into_par_iter().enumerate().for_each(|(b, mut band)| {
            for input0 in (0..inputs).step_by(BLOCK_COLS) {
                let end = (input0 + BLOCK_COLS).min(inputs);
                let block = band.slice_mut(ndarray::s![.., input0..end]);
                weight_grad_block(x, dz, b * BAND_ROWS, input0, block);
            }
        });
        bias_grad_into(dz, &mut grad.bias);
        grad
    }
}

/// `db = Σ_batch dz`, summed in batch order.
pub(crate) fn bias_grad_into<T: Scalar>(dz: ArrayView2<T>, db: &mut Array1<T>) {
    db.fill(T::zero());
    for row in dz.rows() {
        Zip::from(&mut *db).and(&row).for_each(|d, &g| *d += g);
    }
}

/// `a = act(z)`.
pub fn activation_forward<T: Scalar>(act: Activation, z: ArrayView2<T>, a: ArrayViewMut2<T>) {
    match act {
        // Not `z.max(0)`: `max` maps NaN to 0 and would hide a diverged run.
        Activation::Relu => Zip::from(a).and(z).for_each(|a, &z| *a = if z < T::zero() { T::zero() } else { z }),
        Activation::Tanh => Zip::from(a).and(z).for_each(|a, &z| *a = z.tanh()),
    }
}

/// `dz = da ⊙ act'(z)`, in place on `grad` (which holds `da` on entry). The
/// ReLU derivative at exactly zero is taken as 0.
pub fn activation_backward<T: Scalar>(act: Activation, z: ArrayView2<T>, grad: ArrayViewMut2<T>) {
    match act {
        Activation::Relu => Zip::from(grad).and(z).for_each(|g, &z| {
            if z <= T::zero() {
                *g = T::zero();
            }
        }),
        Activation::Tanh => Zip::from(grad).and(z).for_each(|g, &z| {
            let t = z.tanh();
            *g *= T::one() - t * t;
        }),
    }
}

/// Fills `mask` for inverted dropout: each entry is 0 with probability
/// `rate`, else `1 / (1 - rate)`, so activations keep their expectation and
/// inference needs no rescaling.
pub fn dropout_mask<T: Scalar>(rng: &mut Xoshiro256, rate: f64, mut mask: ArrayViewMut2<T>) {
    let keep = T::of(1.0 / (1.0 - rate));
    mask.iter_mut().for_each(|m| *m = if rng.uniform() < rate { T::zero() } else { keep });
}

/// A stack of dense layers with `activation` between them. The last layer's
/// outputs are logits; softmax is part of the loss (and of `predict_proba`).
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp<T> {
    layers: Vec<Dense<T>>,
    activation: Activation,
}

/// What the training forward pass keeps for the backward pass.
#[derive(Clone, Debug, Default)]
pub struct ForwardCache<T> {
    /// Pre-activations `z_l` of every layer; the last one holds the logits.
    pub pre: Vec<Array2<T>>,
    /// Inputs of layers 1.. (after activation and dropout).
    pub post: Vec<Array2<T>>,
}

/// Per-layer `dL/dz_l`, computed before any weight changes.
#[derive(Clone, Debug, Default)]
pub struct Deltas<T> {
    pub dz: Vec<Array2<T>>,
}

/// Why a list of layers does not form a model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    #[error("a model needs at least one layer")]
    NoLayers,
    #[error("layer {layer} takes {got} inputs but the previous layer gives {expected}")]
    Mismatch { layer: usize, expected: usize, got: usize },
    #[error("layer {layer}: bias has {bias} entries, weight has {outputs} outputs")]
    Bias { layer: usize, bias: usize, outputs: usize },
}

/// Resizes `buf` to `shape` only when needed, so steps reuse their buffers.
fn ensure_shape<T: Scalar>(buf: &mut Array2<T>, shape: (usize, usize)) {
    if buf.dim() != shape {
        *buf = Array2::zeros(shape);
    }
}

impl<T: Scalar> Mlp<T> {
    /// A model from existing layers; checks that their shapes chain.
    pub fn from_layers(mut layers: Vec<Dense<T>>, activation: Activation) -> Result<Self, ShapeError> {
        // Training updates weights as flat slices, so keep them row-major.
        for layer in &mut layers {
            if !layer.weight.is_standard_layout() {
                layer.weight = layer.weight.as_standard_layout().into_owned();
            }
        }
        if layers.is_empty() {
            return Err(ShapeError::NoLayers);
        }
        for (i, layer) in layers.iter().enumerate() {
            if layer.bias.len() != layer.outputs() {
                return Err(ShapeError::Bias { layer: i, bias: layer.bias.len(), outputs: layer.outputs() });
            }
            if i > 0 && layers[i - 1].outputs() != layer.inputs() {
                return Err(ShapeError::Mismatch { layer: i, expected: layers[i - 1].outputs(), got: layer.inputs() });
            }
        }
        Ok(Mlp { layers, activation })
    }

    /// A freshly initialised model. `sizes` is `[input, hidden.., classes]`;
    /// layer `l` draws from its own seeded stream.
    pub fn init(sizes: &[usize], activation: Activation, init: Init, seed: u64) -> Self {
        assert!(sizes.len() >= 2, "sizes needs an input and an output");
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let (fan_in, fan_out) = (w[0], w[1]);
                let mut rng = Xoshiro256::stream(seed, &[0x1417, l as u64]);
                let weight = Array2::from_shape_simple_fn((fan_out, fan_in), || {
                    T::of(draw_init(&mut rng, init, fan_in, fan_out))
                });
                Dense { weight, bias: Array1::zeros(fan_out) }
            })
            .collect();
        Mlp { layers, activation }
    }

    pub fn layers(&self) -> &[Dense<T>] {
        &self.layers
    }

    pub fn layers_mut(&mut self) -> &mut [Dense<T>] {
        &mut self.layers
    }

    pub fn activation(&self) -> Activation {
        self.activation
    }

    pub fn input_dim(&self) -> usize {
        self.layers[0].inputs()
    }

    pub fn num_classes(&self) -> usize {
        self.layers.last().expect("non-empty").outputs()
    }

    /// `[input, hidden.., classes]`.
    pub fn sizes(&self) -> Vec<usize> {
        std::iter::once(self.input_dim()).chain(self.layers.iter().map(Dense::outputs)).collect()
    }

    pub fn num_parameters(&self) -> usize {
        self.layers.iter().map(|l| l.weight.len() + l.bias.len()).sum()
    }

    /// The same model in another float type (f32 ↔ f64).
    pub fn cast<U: Scalar>(&self) -> Mlp<U> {
        let conv = |x: &T| U::of(x.as_f64());
        Mlp {
            layers: self.layers.iter().map(|l| Dense { weight: l.weight.map(conv), bias: l.bias.map(conv) }).collect(),
            activation: self.activation,
        }
    }

    /// Inference logits (no dropout), `[batch, classes]`.
    pub fn logits(&self, x: ArrayView2<T>) -> Array2<T> {
        let mut cache = ForwardCache::default();
        self.forward_train(x, &[], &mut cache);
        cache.pre.pop().expect("non-empty")
    }

    /// Class probabilities (softmax of the logits), `[batch, classes]`.
    pub fn predict_proba(&self, x: ArrayView2<T>) -> Array2<T> {
        let mut p = self.logits(x);
        crate::loss::softmax_in_place(p.view_mut());
        p
    }

    /// Forward pass that records what backward needs. `masks` holds one
    /// dropout mask per hidden layer (`[batch, hidden_l]`), or is empty for
    /// no dropout.
    pub fn forward_train(&self, x: ArrayView2<T>, masks: &[Array2<T>], cache: &mut ForwardCache<T>) {
        assert_eq!(x.ncols(), self.input_dim(), "input width");
        let hidden = self.layers.len() - 1;
        assert!(masks.is_empty() || masks.len() == hidden, "one mask per hidden layer");
        let batch = x.nrows();
        cache.pre.resize_with(self.layers.len(), || Array2::zeros((0, 0)));
        cache.post.resize_with(hidden, || Array2::zeros((0, 0)));
        for (l, layer) in self.layers.iter().enumerate() {
            ensure_shape(&mut cache.pre[l], (batch, layer.outputs()));
            let (input, pre) =
                if l == 0 { (x, &mut cache.pre[0]) } else { (cache.post[l - 1].view(), &mut cache.pre[l]) };
            layer.forward_into(input, pre.view_mut());
            if l < hidden {
                ensure_shape(&mut cache.post[l], (batch, layer.outputs()));
                activation_forward(self.activation, cache.pre[l].view(), cache.post[l].view_mut());
                if let Some(mask) = masks.get(l) {
                    cache.post[l] *= mask;
                }
            }
        }
    }

    /// Back-propagates `dlogits` to every layer's `dz`, using the weights as
    /// they were in the forward pass (call this before updating them).
    pub fn backward_deltas(
        &self,
        cache: &ForwardCache<T>,
        masks: &[Array2<T>],
        dlogits: ArrayView2<T>,
        deltas: &mut Deltas<T>,
    ) {
        let n = self.layers.len();
        deltas.dz.resize_with(n, || Array2::zeros((0, 0)));
        ensure_shape(&mut deltas.dz[n - 1], dlogits.dim());
        deltas.dz[n - 1].assign(&dlogits);
        for l in (1..n).rev() {
            let (lower, upper) = deltas.dz.split_at_mut(l);
            let dz_below = &mut lower[l - 1];
            ensure_shape(dz_below, cache.pre[l - 1].dim());
            self.layers[l].input_grad_into(upper[0].view(), dz_below.view_mut());
            if let Some(mask) = masks.get(l - 1) {
                *dz_below *= mask;
            }
            activation_backward(self.activation, cache.pre[l - 1].view(), dz_below.view_mut());
        }
    }

    /// The input of layer `l` in the last forward pass.
    pub fn layer_input<'a>(x: ArrayView2<'a, T>, cache: &'a ForwardCache<T>, l: usize) -> ArrayView2<'a, T> {
        if l == 0 {
            x
        } else {
            cache.post[l - 1].view()
        }
    }

    /// Full parameter gradients, in the model's shape. Training does not call
    /// this (it fuses each weight tile's gradient with the optimiser update);
    /// it exists for checks and for callers that want the gradient itself.
    pub fn gradients(&self, x: ArrayView2<T>, cache: &ForwardCache<T>, deltas: &Deltas<T>) -> Vec<Dense<T>> {
        (0..self.layers.len())
            .map(|l| Dense::param_grads(Self::layer_input(x, cache, l), deltas.dz[l].view()))
            .collect()
    }
}

fn draw_init(rng: &mut Xoshiro256, init: Init, fan_in: usize, fan_out: usize) -> f64 {
    match init {
        Init::GlorotUniform => {
            let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
            (2.0 * rng.uniform() - 1.0) * limit
        }
        Init::HeUniform => {
            let limit = (6.0 / fan_in as f64).sqrt();
            (2.0 * rng.uniform() - 1.0) * limit
        }
        Init::HeNormal => {
            // Keras divides by the std of a unit normal truncated at ±2 so
            // that the truncated draw has the intended variance.
            let std = (2.0 / fan_in as f64).sqrt() / 0.879_625_661_034_239_8;
            loop {
                let z = rng.normal();
                if z.abs() <= 2.0 {
                    return z * std;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::{softmax_cross_entropy, LossOptions};
    use crate::testutil::{assert_close, central_difference, random_matrix};

    const TOL: f64 = 1e-7;

    fn row(v: &Array1<f64>) -> Array2<f64> {
        v.clone().insert_axis(Axis(0))
    }

    #[test]
    fn dense_backward_matches_finite_differences() {
        let x = random_matrix(4, 5, 1, 1.0);
        let layer = Dense { weight: random_matrix(3, 5, 2, 1.0), bias: random_matrix(1, 3, 3, 1.0).row(0).to_owned() };
        // L = Σ z ⊙ r, so dL/dz = r.
        let r = random_matrix(4, 3, 4, 1.0);
        let loss = |x: &Array2<f64>, layer: &Dense<f64>| {
            let mut z = Array2::zeros((x.nrows(), 3));
            layer.forward_into(x.view(), z.view_mut());
            (&z * &r).sum()
        };
        let grads = Dense::param_grads(x.view(), r.view());
        let mut dx = Array2::zeros(x.dim());
        layer.input_grad_into(r.view(), dx.view_mut());

        let numeric_w =
            central_difference(&layer.weight, |w| loss(&x, &Dense { weight: w.clone(), bias: layer.bias.clone() }));
        let numeric_b = central_difference(&row(&layer.bias), |b| {
            loss(&x, &Dense { weight: layer.weight.clone(), bias: b.row(0).to_owned() })
        });
        let numeric_x = central_difference(&x, |x| loss(x, &layer));
        assert_close(&grads.weight, &numeric_w, TOL);
        assert_close(&row(&grads.bias), &numeric_b, TOL);
        assert_close(&dx, &numeric_x, TOL);
    }

    #[test]
    fn activations_backward_match_finite_differences_away_from_the_kink() {
        // Push every entry at least 0.1 from zero so ±h never crosses ReLU's kink.
        let z = random_matrix(3, 4, 5, 2.0).mapv(|v| v.signum() * (v.abs() + 0.1));
        let r = random_matrix(3, 4, 6, 1.0);
        for act in [Activation::Relu, Activation::Tanh] {
            let loss = |z: &Array2<f64>| {
                let mut a = Array2::zeros(z.dim());
                activation_forward(act, z.view(), a.view_mut());
                (&a * &r).sum()
            };
            let mut analytic = r.clone();
            activation_backward(act, z.view(), analytic.view_mut());
            assert_close(&analytic, &central_difference(&z, loss), TOL);
        }
    }

    /// Weights and inputs for which no pre-activation is within 1e-3 of 0.
    fn model_away_from_kinks(sizes: &[usize], act: Activation, x: &Array2<f64>) -> Mlp<f64> {
        for seed in 0..200 {
            let mut model = Mlp::<f64>::init(sizes, act, Init::HeUniform, seed);
            for (l, layer) in model.layers_mut().iter_mut().enumerate() {
                layer.bias = random_matrix(1, layer.outputs(), seed * 10 + l as u64, 0.5).row(0).to_owned();
            }
            let mut cache = ForwardCache::default();
            model.forward_train(x.view(), &[], &mut cache);
            let hidden = &cache.pre[..cache.pre.len() - 1];
            if hidden.iter().flatten().all(|z| z.abs() > 1e-3) {
                return model;
            }
        }
        panic!("no seed kept every pre-activation away from 0");
    }

    #[test]
    fn whole_model_gradients_match_finite_differences() {
        let sizes = [6, 5, 4, 3];
        let x = random_matrix(7, 6, 7, 1.0);
        let labels = [0, 2, 1, 1, 0, 2, 2];
        let weights = [0.5, 2.0, 1.5];
        // Fixed dropout masks (rate 0.3), as the trainer would draw them.
        let mut rng = Xoshiro256::new(9);
        let masks: Vec<Array2<f64>> = [5, 4]
            .iter()
            .map(|&h| {
                let mut m = Array2::zeros((7, h));
                dropout_mask(&mut rng, 0.3, m.view_mut());
                m
            })
            .collect();
        assert!(masks.iter().flatten().any(|&m| m == 0.0), "the masks drop something");
        type Case<'a> = (Activation, &'a [Array2<f64>], LossOptions<'a, f64>);
        let cases: [Case; 3] = [
            (Activation::Relu, &[], LossOptions::default()),
            (Activation::Relu, &masks, LossOptions { label_smoothing: 0.1, class_weights: Some(&weights) }),
            (Activation::Tanh, &masks, LossOptions { label_smoothing: 0.05, class_weights: Some(&weights) }),
        ];
        for (act, masks, opts) in cases {
            let model = model_away_from_kinks(&sizes, act, &x);
            let loss_of = |m: &Mlp<f64>| {
                let mut cache = ForwardCache::default();
                m.forward_train(x.view(), masks, &mut cache);
                softmax_cross_entropy(cache.pre.last().unwrap().view(), &labels, &opts, None)
            };
            let mut cache = ForwardCache::default();
            model.forward_train(x.view(), masks, &mut cache);
            let mut dlogits = Array2::zeros((7, 3));
            softmax_cross_entropy(cache.pre[2].view(), &labels, &opts, Some(dlogits.view_mut()));
            let mut deltas = Deltas::default();
            model.backward_deltas(&cache, masks, dlogits.view(), &mut deltas);
            let grads = model.gradients(x.view(), &cache, &deltas);
            for (l, grad) in grads.iter().enumerate() {
                let numeric_w = central_difference(&model.layers()[l].weight, |w| {
                    let mut m = model.clone();
                    m.layers_mut()[l].weight.assign(w);
                    loss_of(&m)
                });
                assert_close(&grad.weight, &numeric_w, TOL);
                let numeric_b = central_difference(&row(&model.layers()[l].bias), |b| {
                    let mut m = model.clone();
                    m.layers_mut()[l].bias.assign(&b.row(0));
                    loss_of(&m)
                });
                assert_close(&row(&grad.bias), &numeric_b, TOL);
            }
        }
    }

    #[test]
    fn dropout_masks_have_the_right_rate_and_scale() {
        let mut m = Array2::<f32>::zeros((200, 100));
        dropout_mask(&mut Xoshiro256::new(1), 0.25, m.view_mut());
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.25).abs() < 0.02, "{dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    }

    #[test]
    fn initialisers_respect_their_bounds_and_seed() {
        let a = Mlp::<f32>::init(&[300, 200, 3], Activation::Relu, Init::GlorotUniform, 1);
        let b = Mlp::<f32>::init(&[300, 200, 3], Activation::Relu, Init::GlorotUniform, 1);
        assert_eq!(a, b);
        let limit = (6.0f32 / 500.0).sqrt();
        let w = &a.layers()[0].weight;
        assert_eq!(w.dim(), (200, 300), "[out, in]");
        assert!(w.iter().all(|v| v.abs() <= limit));
        assert!(w.iter().any(|v| v.abs() > 0.9 * limit));
        assert!(a.layers().iter().all(|l| l.bias.iter().all(|&b| b == 0.0)));
        let he = Mlp::<f64>::init(&[400, 300, 2], Activation::Relu, Init::HeNormal, 2);
        let w = &he.layers()[0].weight;
        let std = (w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64).sqrt();
        let target = (2.0f64 / 400.0).sqrt();
        assert!((std / target - 1.0).abs() < 0.03, "{std} vs {target}");
        let c = Mlp::<f32>::init(&[300, 200, 3], Activation::Relu, Init::GlorotUniform, 2);
        assert_ne!(a, c);
    }

    #[test]
    fn shapes_are_checked_and_logistic_regression_works() {
        let bad = vec![Dense::<f32>::zeros(4, 3), Dense::zeros(2, 2)];
        assert_eq!(bad[0].weight.dim(), (3, 4));
        assert_eq!(
            Mlp::from_layers(bad, Activation::Relu),
            Err(ShapeError::Mismatch { layer: 1, expected: 3, got: 2 })
        );
        assert_eq!(Mlp::<f32>::from_layers(vec![], Activation::Relu), Err(ShapeError::NoLayers));
        let lr = Mlp::<f64>::init(&[4, 3], Activation::Relu, Init::GlorotUniform, 0);
        let p = lr.predict_proba(random_matrix(2, 4, 1, 1.0).view());
        assert!(p.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-12));
        assert_eq!(lr.sizes(), vec![4, 3]);
        assert_eq!(lr.num_parameters(), 15);
    }

    #[test]
    fn relu_lets_nan_through_so_divergence_is_seen() {
        let z = ndarray::array![[f32::NAN, -1.0, 2.0]];
        let mut a = Array2::zeros((1, 3));
        activation_forward(Activation::Relu, z.view(), a.view_mut());
        assert!(a[[0, 0]].is_nan());
        assert_eq!((a[[0, 1]], a[[0, 2]]), (0.0, 2.0));
    }
}
