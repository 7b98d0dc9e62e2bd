//! The record of one training epoch: a line of `metrics.jsonl`, the
//! history in `head.json` and fine-tuning's `state.json`. One type for the
//! head and fine-tuning, so reports read both the same way.

use serde::{Deserialize, Serialize};

/// One line of training history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Epochs the run was configured for.
    pub epochs: usize,
    /// Optimiser steps in this epoch.
    pub steps: usize,
    /// Optimiser steps since the start of the run, after this epoch.
    pub global_step: usize,
    /// Learning rate of the epoch's last step.
    #[serde(alias = "lr")]
    pub learning_rate: f64,
    /// Mean training loss over the epoch's examples, in training mode
    /// (dropout on, augmentation on), as Keras reports it.
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Validation loss (label smoothing included, class weights not).
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// The value early stopping and "best" look at (see
    /// [`crate::Monitor`]).
    pub monitor: f64,
    /// This epoch is the best so far on the monitored metric.
    pub best: bool,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
    /// Training examples per second of the epoch's training part.
    pub train_examples_per_second: f64,
    /// Of the epoch's training time, the part spent getting batches (data
    /// preparation, augmentation, a frozen prefix run as inference); 0 when
    /// the batches were in memory.
    #[serde(default)]
    pub input_seconds: f64,
}

impl EpochRecord {
    /// The terminal line: `epoch 3/10  loss 0.4123  acc 0.8750  val_loss …`.
    pub fn summary_line(&self) -> String {
        let mut line = format!(
            "epoch {}/{}  loss {:.4}  acc {:.4}",
            self.epoch, self.epochs, self.train_loss, self.train_accuracy
        );
        if let (Some(l), Some(a)) = (self.val_loss, self.val_accuracy) {
            line += &format!("  val_loss {l:.4}  val_acc {a:.4}");
        }
        line += &format!("  lr {:.2e}  {:.1}s", self.learning_rate, self.seconds);
        if self.input_seconds > 0.0 {
            line += &format!(
                "  {:.1} examples/s ({:.0}% of it getting batches)",
                self.train_examples_per_second,
                100.0 * self.input_seconds / self.seconds.max(1e-9)
            );
        }
        if self.best {
            line += "  *";
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_head_s_older_lr_field() {
        let line = r#"{"epoch":1,"epochs":2,"steps":3,"global_step":3,"lr":0.001,"train_loss":1.0,
            "train_accuracy":0.5,"val_loss":null,"val_accuracy":null,"monitor":1.0,"best":true,"seconds":0.1,
            "train_examples_per_second":10.0}"#;
        let record: EpochRecord = serde_json::from_str(line).unwrap();
        assert_eq!((record.learning_rate, record.input_seconds), (0.001, 0.0));
        assert!(record.summary_line().starts_with("epoch 1/2  loss 1.0000  acc 0.5000  lr 1.00e-3"));
    }
}
