//! Classification metrics on a labelled set: accuracy, top-k accuracy,
//! per-class precision/recall/F1, macro and weighted averages, and the
//! confusion matrix.

use std::fmt;

use ndarray::{ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of one class, or an average of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Samples whose true class this is (for averages: all samples).
    pub support: u64,
}

/// Metrics of one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    pub name: String,
    #[serde(flatten)]
    pub scores: ClassScores,
}

/// Top-k accuracy for one k.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    pub k: usize,
    pub accuracy: f64,
}

/// Everything [`evaluate`] measures. Serialises to JSON as is; `Display`
/// renders the text table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub samples: u64,
    pub accuracy: f64,
    pub top_k: Vec<TopK>,
    pub classes: Vec<ClassReport>,
    /// Unweighted mean over classes.
    pub macro_avg: ClassScores,
    /// Mean over classes weighted by support.
    pub weighted_avg: ClassScores,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Index of the largest score; ties go to the lower index.
pub fn argmax<T: PartialOrd + Copy>(row: ArrayView1<T>) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// [`argmax`] of every row.
pub fn argmax_rows<T: PartialOrd + Copy>(scores: ArrayView2<T>) -> Vec<usize> {
    scores.rows().into_iter().map(|row| argmax(row)).collect()
}

/// Rank of the true class among the scores: how many classes beat it. Ties
/// go to the lower index, the same rule as the argmax prediction.
fn rank_of<T: PartialOrd + Copy>(row: ArrayView1<T>, label: usize) -> usize {
    let s = row[label];
    row.iter().enumerate().filter(|&(c, &v)| v > s || (v == s && c < label)).count()
}

fn ratio(num: u64, den: u64) -> f64 {
    // scikit-learn's zero_division=0: an undefined ratio counts as 0.
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Evaluates `scores` (`[samples, classes]`: logits or probabilities, only
/// their order matters) against `labels`. Predictions are the row argmax,
/// ties to the lowest index. `top_k` lists the k values to report; k larger
/// than the class count reports 1.0.
pub fn evaluate<T: PartialOrd + Copy>(
    scores: ArrayView2<T>,
    labels: &[usize],
    class_names: &[String],
    top_k: &[usize],
) -> Evaluation {
    let classes = class_names.len();
    assert_eq!(scores.ncols(), classes, "one score column per class");
    assert_eq!(scores.nrows(), labels.len(), "one label per row");
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut ranks = Vec::with_capacity(labels.len());
    for (row, &y) in scores.rows().into_iter().zip(labels) {
        assert!(y < classes, "label {y} out of range for {classes} classes");
        let predicted = argmax(row);
        confusion[y][predicted] += 1;
        ranks.push(rank_of(row, y));
    }
    let samples = labels.len() as u64;
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    let top_k = top_k
        .iter()
        .map(|&k| TopK { k, accuracy: ratio(ranks.iter().filter(|&&r| r < k).count() as u64, samples) })
        .collect();
    let class_reports: Vec<ClassReport> = (0..classes)
        .map(|c| {
            let tp = confusion[c][c];
            let predicted: u64 = (0..classes).map(|t| confusion[t][c]).sum();
            let support: u64 = confusion[c].iter().sum();
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, support);
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassReport { name: class_names[c].clone(), scores: ClassScores { precision, recall, f1, support } }
        })
        .collect();
    let average = |weight: &dyn Fn(&ClassScores) -> f64| {
        let total: f64 = class_reports.iter().map(|r| weight(&r.scores)).sum();
        let mean = |f: &dyn Fn(&ClassScores) -> f64| {
            if total == 0.0 {
                0.0
            } else {
                class_reports.iter().map(|r| weight(&r.scores) * f(&r.scores)).sum::<f64>() / total
            }
        };
        ClassScores {
            precision: mean(&|s| s.precision),
            recall: mean(&|s| s.recall),
            f1: mean(&|s| s.f1),
            support: samples,
        }
    };
    let macro_avg = average(&|_| 1.0);
    let weighted_avg = average(&|s| s.support as f64);
    Evaluation {
        samples,
        accuracy: ratio(correct, samples),
        top_k,
        classes: class_reports,
        macro_avg,
        weighted_avg,
        confusion,
    }
}

impl fmt::Display for Evaluation {
    /// A scikit-learn-style report followed by the confusion matrix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_width = self.classes.iter().map(|c| c.name.chars().count()).chain([12]).max().unwrap_or(12);
        writeln!(f, "{:>name_width$}  precision     recall   f1-score    support", "")?;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, s: &ClassScores| {
            writeln!(f, "{name:>name_width$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>9}", s.precision, s.recall, s.f1, s.support)
        };
        for c in &self.classes {
            line(f, &c.name, &c.scores)?;
        }
        writeln!(f)?;
        writeln!(f, "{:>name_width$}  {:>9}  {:>9}  {:>9.4}  {:>9}", "accuracy", "", "", self.accuracy, self.samples)?;
        for t in &self.top_k {
            let label = format!("top-{} acc", t.k);
            writeln!(f, "{label:>name_width$}  {:>9}  {:>9}  {:>9.4}  {:>9}", "", "", t.accuracy, self.samples)?;
        }
        line(f, "macro avg", &self.macro_avg)?;
        line(f, "weighted avg", &self.weighted_avg)?;
        writeln!(f)?;
        writeln!(f, "confusion matrix (rows: true class, columns: predicted)")?;
        let cell = self.confusion.iter().flatten().map(|v| v.to_string().len()).chain([3]).max().unwrap_or(3);
        let row_labels: Vec<String> =
            self.classes.iter().enumerate().map(|(c, class)| format!("[{c}] {}", class.name)).collect();
        let label_width = row_labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        write!(f, "{:>label_width$}", "")?;
        for c in 0..self.classes.len() {
            write!(f, " {:>cell$}", format!("[{c}]"))?;
        }
        writeln!(f)?;
        for (label, row) in row_labels.iter().zip(&self.confusion) {
            write!(f, "{label:>label_width$}")?;
            for v in row {
                write!(f, " {v:>cell$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn argmax_takes_the_first_of_ties() {
        let s = ndarray::array![[1.0f32, 3.0, 3.0], [2.0, 2.0, 2.0]];
        assert_eq!(argmax_rows(s.view()), vec![1, 0]);
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("class_{i}")).collect()
    }

    #[test]
    fn hand_computed_report() {
        // True:      0  0  0  1  1  2
        // Predicted: 0  0  1  1  2  2
        let scores = array![
            [0.9f64, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.3, 0.6, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.4, 0.5],
            [0.2, 0.2, 0.6],
        ];
        let e = evaluate(scores.view(), &[0, 0, 0, 1, 1, 2], &names(3), &[1, 2]);
        assert_eq!(e.confusion, vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]);
        assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-15);
        assert_eq!(e.top_k[0].accuracy, e.accuracy);
        // Top-2: the two misses (rows 2 and 4) have their true class second.
        assert_eq!(e.top_k[1].accuracy, 1.0);
        let c0 = &e.classes[0].scores;
        assert_eq!((c0.precision, c0.recall, c0.support), (1.0, 2.0 / 3.0, 3));
        assert!((c0.f1 - 0.8).abs() < 1e-15);
        let c1 = &e.classes[1].scores;
        assert_eq!((c1.precision, c1.recall), (0.5, 0.5));
        let c2 = &e.classes[2].scores;
        assert_eq!((c2.precision, c2.recall), (0.5, 1.0));
        let f1_2 = 2.0 * 0.5 / 1.5;
        assert!((e.macro_avg.f1 - (0.8 + 0.5 + f1_2) / 3.0).abs() < 1e-15);
        assert!((e.weighted_avg.recall - (3.0 * 2.0 / 3.0 + 2.0 * 0.5 + 1.0) / 6.0).abs() < 1e-15);
        assert!((e.macro_avg.precision - (1.0 + 0.5 + 0.5) / 3.0).abs() < 1e-15);
    }

    #[test]
    fn ties_and_absent_classes() {
        // All-equal scores predict class 0; top-k counts ties against later classes.
        let scores = array![[1.0f32, 1.0, 1.0], [1.0, 1.0, 1.0]];
        let e = evaluate(scores.view(), &[0, 2], &names(3), &[1, 2, 3, 5]);
        assert_eq!(e.accuracy, 0.5);
        let accs: Vec<f64> = e.top_k.iter().map(|t| t.accuracy).collect();
        assert_eq!(accs, vec![0.5, 0.5, 1.0, 1.0]);
        // Class 1 never occurs and is never predicted: zeros, not NaN.
        let c1 = &e.classes[1].scores;
        assert_eq!((c1.precision, c1.recall, c1.f1, c1.support), (0.0, 0.0, 0.0, 0));
    }

    #[test]
    fn table_and_json_render() {
        let scores = array![[2.0f64, 1.0], [0.0, 3.0]];
        let e = evaluate(scores.view(), &[0, 1], &["cat".into(), "dog".into()], &[1]);
        let table = e.to_string();
        assert!(table.contains("precision") && table.contains("weighted avg"));
        assert!(table.contains("[1] dog"), "{table}");
        // The confusion matrix's rows line up, however long the class names.
        let long = evaluate(scores.view(), &[0, 1], &["c".into(), "a-much-longer-name".into()], &[1]).to_string();
        let matrix: Vec<&str> = long.lines().skip_while(|l| !l.starts_with("confusion matrix")).skip(1).collect();
        assert_eq!(matrix.len(), 3, "{long}");
        assert!(matrix.iter().all(|l| l.chars().count() == matrix[0].chars().count()), "{long}");
        let json = serde_json::to_string(&e).unwrap();
        let back: Evaluation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
