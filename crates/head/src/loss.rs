//! Softmax fused with categorical cross-entropy, computed through
//! log-sum-exp so that large logits neither overflow nor lose the gradient.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::Scalar;

/// Options of the loss. The defaults give plain cross-entropy.
#[derive(Clone, Copy, Debug)]
pub struct LossOptions<'a, T> {
    /// ε in the smoothed target `(1 − ε)·onehot + ε / classes`.
    pub label_smoothing: T,
    /// Per-class weight applied to each sample's loss by its true class.
    pub class_weights: Option<&'a [T]>,
}

impl<T: Scalar> Default for LossOptions<'_, T> {
    fn default() -> Self {
        LossOptions { label_smoothing: T::zero(), class_weights: None }
    }
}

/// Mean loss over the batch, and `dL/dlogits` into `dlogits` when given.
///
/// With class weights the loss is `Σ_i w(y_i)·ℓ_i / batch` (Keras's
/// convention: divided by the batch size, not by the sum of weights), so
/// "balanced" weights, which average to one over the training set, keep the
/// loss on the scale of the unweighted one. The value is accumulated in f64.
pub fn softmax_cross_entropy<T: Scalar>(
    logits: ArrayView2<T>,
    labels: &[usize],
    options: &LossOptions<T>,
    mut dlogits: Option<ArrayViewMut2<T>>,
) -> f64 {
    let (batch, classes) = logits.dim();
    assert_eq!(labels.len(), batch, "one label per row");
    if let Some(d) = &dlogits {
        assert_eq!(d.dim(), logits.dim(), "dlogits shape");
    }
    if batch == 0 {
        return 0.0;
    }
    let eps = options.label_smoothing;
    let off_target = eps / T::of(classes as f64);
    let on_target = T::one() - eps + off_target;
    let inv_batch = T::one() / T::of(batch as f64);
    let mut total = 0.0f64;
    for (i, row) in logits.rows().into_iter().enumerate() {
        let y = labels[i];
        assert!(y < classes, "label {y} out of range for {classes} classes");
        let weight = options.class_weights.map_or(T::one(), |w| w[y]);
        let max = row.iter().fold(T::neg_infinity(), |m, &z| m.max(z));
        let sum_exp: T = row.iter().map(|&z| (z - max).exp()).sum();
        let log_sum = sum_exp.ln();
        // ℓ = Σ_c q_c·(lse − z_c), and lse − z_c = (max − z_c) + ln Σ ≥ 0.
        let mut sample = T::zero();
        for (c, &z) in row.iter().enumerate() {
            let q = if c == y { on_target } else { off_target };
            if q != T::zero() {
                sample += q * (max - z + log_sum);
            }
        }
        total += (weight * sample).as_f64();
        if let Some(d) = dlogits.as_mut() {
            let scale = weight * inv_batch;
            for (c, (g, &z)) in d.row_mut(i).iter_mut().zip(row.iter()).enumerate() {
                let p = (z - max).exp() / sum_exp;
                let q = if c == y { on_target } else { off_target };
                *g = (p - q) * scale;
            }
        }
    }
    total / batch as f64
}

/// Row-wise softmax, in place.
pub fn softmax_in_place<T: Scalar>(mut scores: ArrayViewMut2<T>) {
    for mut row in scores.rows_mut() {
        let max = row.iter().fold(T::neg_infinity(), |m, &z| m.max(z));
        row.mapv_inplace(|z| (z - max).exp());
        let sum: T = row.iter().copied().sum();
        row.mapv_inplace(|e| e / sum);
    }
}

/// "Balanced" class weights, `n / (classes · count_c)` (scikit-learn's
/// formula). A class absent from `labels` gets weight 0: it never occurs in
/// training, and 0 keeps the weights finite.
pub fn balanced_class_weights(labels: &[usize], classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; classes];
    for &y in labels {
        counts[y] += 1;
    }
    let n = labels.len() as f64;
    counts.iter().map(|&c| if c == 0 { 0.0 } else { n / (classes as f64 * c as f64) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{central_difference, random_matrix};
    use ndarray::{array, Array2};

    #[test]
    fn matches_textbook_values_and_survives_huge_logits() {
        let logits = array![[1.0f64, 2.0, 3.0]];
        let loss = softmax_cross_entropy(logits.view(), &[2], &LossOptions::default(), None);
        let expected = -(3f64.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp())).ln();
        assert!((loss - expected).abs() < 1e-15);

        let big = array![[1000.0f32, 0.0, -1000.0]];
        let mut d = Array2::zeros((1, 3));
        let loss = softmax_cross_entropy(big.view(), &[1], &LossOptions::default(), Some(d.view_mut()));
        assert!((loss - 1000.0).abs() < 1e-3, "{loss}");
        assert!(d.iter().all(|g| g.is_finite()));
        assert!((d[[0, 0]] - 1.0).abs() < 1e-6 && (d[[0, 1]] + 1.0).abs() < 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences_with_weights_and_smoothing() {
        let logits = random_matrix(5, 4, 11, 3.0);
        let labels = [0, 3, 1, 1, 2];
        let weights = [0.5, 2.0, 1.0, 3.0];
        for (smoothing, class_weights) in [(0.0, None), (0.1, None), (0.2, Some(&weights[..]))] {
            let opts = LossOptions { label_smoothing: smoothing, class_weights };
            let mut analytic = Array2::zeros(logits.dim());
            softmax_cross_entropy(logits.view(), &labels, &opts, Some(analytic.view_mut()));
            let numeric = central_difference(&logits, |z| softmax_cross_entropy(z.view(), &labels, &opts, None));
            crate::testutil::assert_close(&analytic, &numeric, 1e-7);
        }
    }

    #[test]
    fn smoothing_and_weights_change_the_value_as_defined() {
        let logits = array![[0.0f64, 0.0]];
        let smooth = LossOptions { label_smoothing: 0.2, class_weights: None };
        // Uniform prediction: ℓ = ln 2 whatever the target.
        let l = softmax_cross_entropy(logits.view(), &[0], &smooth, None);
        assert!((l - 2f64.ln()).abs() < 1e-15);
        let w = [3.0, 1.0];
        let weighted = LossOptions { label_smoothing: 0.0, class_weights: Some(&w[..]) };
        let l = softmax_cross_entropy(array![[0.0, 0.0], [0.0, 0.0]].view(), &[0, 1], &weighted, None);
        assert!((l - 2.0 * 2f64.ln()).abs() < 1e-15, "mean of 3·ln2 and 1·ln2");
    }

    #[test]
    fn balanced_weights_follow_inverse_frequency() {
        let w = balanced_class_weights(&[0, 0, 0, 1, 2, 2], 4);
        assert_eq!(w, vec![6.0 / 12.0, 6.0 / 4.0, 6.0 / 8.0, 0.0]);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut s = array![[1.0f64, 2.0, 3.0], [-800.0, 0.0, 800.0]];
        softmax_in_place(s.view_mut());
        for row in s.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-12);
        }
    }
}
