//! Helpers shared by the unit tests: seeded random matrices and central
//! finite differences in f64.

use ndarray::Array2;

use train_kit::Xoshiro256;

/// Uniform in (−scale, scale), fixed by `seed`.
pub fn random_matrix(rows: usize, cols: usize, seed: u64, scale: f64) -> Array2<f64> {
    let mut rng = Xoshiro256::new(seed);
    Array2::from_shape_simple_fn((rows, cols), || (2.0 * rng.uniform() - 1.0) * scale)
}

/// ∂f/∂p for every entry of `p` by central differences with step 1e-6.
pub fn central_difference(p: &Array2<f64>, mut f: impl FnMut(&Array2<f64>) -> f64) -> Array2<f64> {
    let h = 1e-6;
    let mut work = p.clone();
    let mut grad = Array2::zeros(p.dim());
    for idx in ndarray::indices(p.dim()) {
        let original = work[idx];
        work[idx] = original + h;
        let up = f(&work);
        work[idx] = original - h;
        let down = f(&work);
        work[idx] = original;
        grad[idx] = (up - down) / (2.0 * h);
    }
    grad
}

/// Element-wise `|a − b| <= tol · max(1, |a|, |b|)`.
pub fn assert_close(a: &Array2<f64>, b: &Array2<f64>, tol: f64) {
    assert_eq!(a.dim(), b.dim());
    for ((idx, &x), &y) in a.indexed_iter().zip(b.iter()) {
        let scale = 1f64.max(x.abs()).max(y.abs());
        assert!((x - y).abs() <= tol * scale, "at {idx:?}: analytic {x} vs numeric {y}");
    }
}
