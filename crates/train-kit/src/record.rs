//! The record of one training epoch: a line of `metrics.jsonl`, the
//! history in `head.json` and fine-tuning's `state.json`.

use serde::{Deserialize, Serialize};

/// One line of training history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    pub steps: usize,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss in training mode (dropout on), as Keras reports it.
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Validation loss (label smoothing included, class weights not).
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// This epoch is the best so far on the monitored metric.
    pub best: bool,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
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
        line += &format!("  lr {:.2e}  {:.1}s", self.lr, self.seconds);
        if self.best {
            line += "  *";
        }
        line
    }
}
