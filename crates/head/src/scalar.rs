//! The float types the math is generic over: `f32` for training, `f64` so the
//! same code can be checked against finite differences.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// `f32` or `f64`. Every layer, loss, optimiser and metric is written once
/// against this trait.
pub trait Scalar:
    num_traits::Float
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
{
    /// The safetensors dtype name, for error messages.
    const NAME: &'static str;
    /// Converts from `f64` (configuration values are `f64`).
    fn of(x: f64) -> Self;
    /// Widens (or passes through) to `f64` for reporting.
    fn as_f64(self) -> f64;
}

impl Scalar for f32 {
    const NAME: &'static str = "F32";
    fn of(x: f64) -> Self {
        x as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Scalar for f64 {
    const NAME: &'static str = "F64";
    fn of(x: f64) -> Self {
        x
    }
    fn as_f64(self) -> f64 {
        self
    }
}
