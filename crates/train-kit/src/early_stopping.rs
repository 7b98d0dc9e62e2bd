//! Early stopping: which metric to watch, when an epoch counts as an
//! improvement, and when patience runs out. One rule for the head and for
//! fine-tuning (Keras's: stop once `patience` epochs in a row failed to
//! improve by more than `min_delta`).

use serde::{Deserialize, Serialize};

/// Which epoch metric early stopping and "best weights" follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    ValLoss,
    ValAccuracy,
    /// Used in place of `val_loss` when there is no validation set.
    TrainLoss,
    /// Used in place of `val_accuracy` when there is no validation set.
    TrainAccuracy,
}

impl Monitor {
    /// Whether larger values are better.
    pub fn maximise(self) -> bool {
        matches!(self, Monitor::ValAccuracy | Monitor::TrainAccuracy)
    }

    /// The training-set counterpart, for runs without validation data.
    pub fn without_validation(self) -> Monitor {
        match self {
            Monitor::ValLoss | Monitor::TrainLoss => Monitor::TrainLoss,
            Monitor::ValAccuracy | Monitor::TrainAccuracy => Monitor::TrainAccuracy,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
            Monitor::TrainLoss => "train_loss",
            Monitor::TrainAccuracy => "train_accuracy",
        }
    }
}

/// Stop when the monitored metric has not improved by more than
/// `min_delta` for `patience` epochs; restore the best epoch's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyStopping {
    /// When false, training runs all epochs (best weights are still
    /// restored if `restore_best`).
    pub enabled: bool,
    pub monitor: Monitor,
    pub patience: usize,
    pub min_delta: f64,
    pub restore_best: bool,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping { enabled: true, monitor: Monitor::ValLoss, patience: 3, min_delta: 0.0, restore_best: true }
    }
}

/// The best monitored value so far and its epoch, and the verdict on each
/// new epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    /// `(value, 1-based epoch)` of the best epoch so far.
    pub best: Option<(f64, usize)>,
    /// Epochs since the best one.
    pub epochs_since_best: usize,
}

impl Tracker {
    /// Records `value` for 1-based `epoch`; true when it improves on the
    /// best by more than `min_delta` (the first epoch always does).
    pub fn observe(&mut self, value: f64, epoch: usize, maximise: bool, min_delta: f64) -> bool {
        let improved = improves(value, self.best.map(|(b, _)| b), maximise, min_delta);
        if improved {
            self.best = Some((value, epoch));
            self.epochs_since_best = 0;
        } else {
            self.epochs_since_best += 1;
        }
        improved
    }

    /// Whether `patience` epochs in a row have now failed to improve.
    pub fn out_of_patience(&self, patience: usize) -> bool {
        self.best.is_some() && self.epochs_since_best >= patience && self.epochs_since_best > 0
    }

    /// The best epoch (1-based), if any.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best.map(|(_, e)| e)
    }
}

/// Whether `value` beats `best` by more than `min_delta` (any value beats none).
pub fn improves(value: f64, best: Option<f64>, maximise: bool, min_delta: f64) -> bool {
    match best {
        None => true,
        Some(b) if maximise => value > b + min_delta,
        Some(b) => value < b - min_delta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn improvement_needs_more_than_min_delta_in_the_right_direction() {
        assert!(improves(5.0, None, false, 0.0));
        assert!(improves(0.9, Some(1.0), false, 0.05));
        assert!(!improves(0.96, Some(1.0), false, 0.05));
        assert!(improves(0.8, Some(0.7), true, 0.0));
        assert!(!improves(0.7, Some(0.7), true, 0.0));
    }

    #[test]
    fn patience_counts_epochs_without_improvement() {
        let mut t = Tracker::default();
        assert!(t.observe(1.0, 1, false, 0.0));
        assert!(!t.observe(1.1, 2, false, 0.0));
        assert!(!t.out_of_patience(2));
        assert!(!t.observe(1.0, 3, false, 0.0));
        assert!(t.out_of_patience(2));
        assert!(t.observe(0.5, 4, false, 0.0));
        assert_eq!((t.best_epoch(), t.epochs_since_best), (Some(4), 0));
        assert!(!t.out_of_patience(1));
    }
}
