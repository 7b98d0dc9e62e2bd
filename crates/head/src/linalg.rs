//! Matrix products on the `gemm` crate, split into fixed-size pieces so that
//! results are bit-identical for any number of threads.
//!
//! The rule: a piece always spans the whole K (reduction) dimension, and the
//! piece boundaries are constants, not functions of the thread count. Each
//! output element is then computed by exactly the same sequence of
//! floating-point operations whichever thread runs its piece.

use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::Scalar;

/// Output columns per parallel piece of `x·Wᵀ` and `dz·W`.
pub(crate) const COL_CHUNK: usize = 256;
/// Weight rows (output units) per parallel band of the weight gradient and
/// of the fused update. A band is a contiguous slice of the weights.
pub(crate) const BAND_ROWS: usize = 32;
/// Weight columns (inputs) per gradient block inside a band: 32 × 512 × 4
/// bytes = 64 KiB, so a block is updated while it is still in L2.
pub(crate) const BLOCK_COLS: usize = 512;

/// `c = a·b`, or `c += a·b` when `accumulate`, on the calling thread. Views
/// may have any strides.
pub(crate) fn gemm_serial<T: Scalar>(a: ArrayView2<T>, b: ArrayView2<T>, mut c: ArrayViewMut2<T>, accumulate: bool) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "output shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(T::zero());
        }
        return;
    }
    let (sa, sb, sc) = (a.strides(), b.strides(), c.strides());
    let (rsa, csa, rsb, csb, rsc, csc) = (sa[0], sa[1], sb[0], sb[1], sc[0], sc[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose
    // shapes were checked above; `c` is borrowed mutably, so it aliases
    // neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            csc,
            rsc,
            accumulate,
            a.as_ptr(),
            csa,
            rsa,
            b.as_ptr(),
            csb,
            rsb,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `c = a·b` (or `c += a·b`), in parallel over fixed chunks of output
/// columns. Each chunk reduces over all of K itself.
pub(crate) fn gemm_par_cols<T: Scalar>(a: ArrayView2<T>, b: ArrayView2<T>, mut c: ArrayViewMut2<T>, accumulate: bool) {
    assert_eq!(b.ncols(), c.ncols(), "output columns");
    if c.ncols() <= COL_CHUNK {
        gemm_serial(a, b, c, accumulate);
        return;
    }
    let pieces: Vec<_> =
        b.axis_chunks_iter(Axis(1), COL_CHUNK).zip(c.axis_chunks_iter_mut(Axis(1), COL_CHUNK)).collect();
    pieces.into_par_iter().for_each(|(b_piece, c_piece)| gemm_serial(a, b_piece, c_piece, accumulate));
}

/// One block of a `[out, in]` weight gradient: `block = dz[:, units]ᵀ ·
/// x[:, inputs]`, where `units` starts at `unit0` and `inputs` at `input0`,
/// sized by `block`. K is the batch.
pub(crate) fn weight_grad_block<T: Scalar>(
    x: ArrayView2<T>,
    dz: ArrayView2<T>,
    unit0: usize,
    input0: usize,
    block: ArrayViewMut2<T>,
) {
    let (units, inputs) = block.dim();
    let dz_cols = dz.slice(ndarray::s![.., unit0..unit0 + units]);
    let x_cols = x.slice(ndarray::s![.., input0..input0 + inputs]);
    gemm_serial(dz_cols.t(), x_cols, block, false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn naive(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
        let mut c = Array2::zeros((a.nrows(), b.ncols()));
        for i in 0..a.nrows() {
            for j in 0..b.ncols() {
                c[[i, j]] = (0..a.ncols()).map(|k| a[[i, k]] * b[[k, j]]).sum();
            }
        }
        c
    }

    fn filled(r: usize, c: usize, salt: f64) -> Array2<f64> {
        Array2::from_shape_fn((r, c), |(i, j)| ((i * 31 + j * 7) as f64 * 0.37 + salt).sin())
    }

    #[test]
    fn products_match_naive_including_transposed_views_and_wide_outputs() {
        let a = filled(5, 7, 0.1);
        let b = filled(7, COL_CHUNK + 9, 0.2);
        let mut c = Array2::zeros((5, COL_CHUNK + 9));
        gemm_par_cols(a.view(), b.view(), c.view_mut(), false);
        let expected = naive(&a, &b);
        assert!(c.iter().zip(&expected).all(|(x, y)| (x - y).abs() < 1e-12));

        // Accumulate, with a transposed operand.
        let at = a.t().to_owned();
        gemm_par_cols(at.t(), b.view(), c.view_mut(), true);
        assert!(c.iter().zip(&expected).all(|(x, y)| (x - 2.0 * y).abs() < 1e-12));

        // A gradient block: dz = at is [7, 5] (batch 7), x = b is [7, COL_CHUNK + 9].
        let mut block = Array2::zeros((3, 4));
        weight_grad_block(b.view(), at.view(), 2, 6, block.view_mut());
        let dz_part = at.slice(ndarray::s![.., 2..5]).t().to_owned();
        let expected = naive(&dz_part, &b.slice(ndarray::s![.., 6..10]).to_owned());
        assert!(block.iter().zip(&expected).all(|(x, y)| (x - y).abs() < 1e-12));
    }

    #[test]
    fn empty_reduction_gives_zeros() {
        let a = Array2::<f32>::zeros((3, 0));
        let b = Array2::<f32>::zeros((0, 4));
        let mut c = Array2::<f32>::from_elem((3, 4), 5.0);
        gemm_serial(a.view(), b.view(), c.view_mut(), false);
        assert!(c.iter().all(|&x| x == 0.0));
    }
}
