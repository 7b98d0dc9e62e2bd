//! The training toolkit shared by the head and fine-tuning. Pure: no
//! files, no threads of its own.
//!
//! - [`rng`]: seeded generators ([`SplitMix64`], [`Xoshiro256`]).
//! - [`schedule`]: learning-rate schedules as functions of the step.
//! - [`early_stopping`]: the monitored metric, improvement and patience.
//! - [`record`]: [`EpochRecord`], one epoch of training history.
//! - [`metrics`]: accuracy, top-k, per-class precision/recall/F1, the
//!   confusion matrix ([`evaluate`] → [`Evaluation`]).

pub mod early_stopping;
pub mod metrics;
pub mod record;
pub mod rng;
pub mod schedule;

pub use early_stopping::{EarlyStopping, Monitor, Tracker};
pub use metrics::{argmax, argmax_rows, evaluate, ClassReport, ClassScores, Evaluation, TopK};
pub use record::EpochRecord;
pub use rng::{SplitMix64, Xoshiro256};
pub use schedule::Schedule;
