//! The report as a list of neutral blocks (headings, paragraphs, tables,
//! images, code). Both text renderers walk the same blocks, so Markdown and
//! HTML always say the same thing; only their syntax and escaping differ.

use train_kit::metrics::{ClassScores, Evaluation};

use crate::input::{CurvePoint, ReportInput, StageTiming};
use crate::plot::{Plot, PlotKind};

/// How many rejected files the report lists.
pub const REJECTS_SHOWN: usize = 20;

/// Cell text for a figure that does not exist (e.g. no fine-tuning).
pub(crate) const MISSING: &str = "—";

pub(crate) enum Block<'a> {
    Heading(u8, String),
    Paragraph(Vec<Inline>),
    /// A prominent warning (not-pretrained weights).
    Warning(String),
    List(Vec<Vec<Inline>>),
    Table(Table),
    Image {
        plot: &'a Plot,
        alt: String,
    },
    /// Preformatted text; HTML folds it under `title`.
    Code {
        title: String,
        language: &'static str,
        text: String,
    },
}

pub(crate) enum Inline {
    Text(String),
    Strong(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

pub(crate) struct Table {
    pub header: Vec<String>,
    pub align: Vec<Align>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first column is text and the others are numbers.
    fn numeric(header: Vec<String>) -> Self {
        let align = (0..header.len()).map(|i| if i == 0 { Align::Left } else { Align::Right }).collect();
        Table { header, align, rows: Vec::new() }
    }
}

fn text(s: impl Into<String>) -> Inline {
    Inline::Text(s.into())
}

fn strong(s: impl Into<String>) -> Inline {
    Inline::Strong(s.into())
}

fn paragraph(s: impl Into<String>) -> Block<'static> {
    Block::Paragraph(vec![text(s)])
}

/// A metric (accuracy, precision, …) with four decimals.
pub(crate) fn metric(x: f64) -> String {
    format!("{x:.4}")
}

fn seconds(x: f64) -> String {
    format!("{x:.2}")
}

/// The whole report, in order.
pub(crate) fn build<'a>(input: &ReportInput, plots: &'a [Plot]) -> Vec<Block<'a>> {
    let mut doc = header(input);
    doc.extend(dataset(input));
    doc.extend(model(input));
    doc.extend(stages(&input.stages));
    doc.extend(curves(input, plots));
    doc.extend(test_metrics(input));
    doc.extend(per_class(input));
    doc.extend(confusion(input, plots));
    doc.extend(notes(&input.notes));
    doc.extend(experiment(&input.experiment));
    doc
}

fn header(input: &ReportInput) -> Vec<Block<'static>> {
    let mut doc = vec![
        Block::Heading(1, format!("Report: {}", input.title)),
        Block::Paragraph(vec![text("Created "), text(input.created.clone()), text(".")]),
    ];
    if !input.model.pretrained {
        doc.push(Block::Warning(not_pretrained_warning(&input.model.name)));
    }
    doc
}

fn not_pretrained_warning(model: &str) -> String {
    format!("The model {model} is NOT pretrained: its weights are random, so these figures say nothing about transfer learning.")
}

fn dataset(input: &ReportInput) -> Vec<Block<'static>> {
    let d = &input.dataset;
    let mut doc = vec![
        Block::Heading(2, "Dataset".into()),
        Block::Paragraph(vec![
            text("Dataset "),
            strong(d.name.clone()),
            text(format!(", {} classes: {}.", d.classes.len(), d.classes.join(", "))),
        ]),
        Block::Table(split_table(input)),
    ];
    doc.extend(rejects(input));
    doc
}

fn split_table(input: &ReportInput) -> Table {
    let mut table = Table::numeric(["Class", "Train", "Validation", "Test", "Total"].map(String::from).to_vec());
    let splits = input.splits();
    for (c, class) in input.dataset.classes.iter().enumerate() {
        let counts: Vec<u64> = splits.iter().map(|(_, s)| s.per_class[c]).collect();
        table.rows.push(count_row(class, &counts));
    }
    let rows: Vec<u64> = splits.iter().map(|(_, s)| s.rows).collect();
    table.rows.push(count_row("Total", &rows));
    table
}

fn count_row(label: &str, counts: &[u64]) -> Vec<String> {
    let total: u64 = counts.iter().sum();
    std::iter::once(label.to_string()).chain(counts.iter().chain([&total]).map(u64::to_string)).collect()
}

fn rejects(input: &ReportInput) -> Vec<Block<'static>> {
    let rejects = &input.dataset.rejects;
    if rejects.is_empty() {
        return vec![paragraph("No files were rejected.")];
    }
    let shown = rejects.len().min(REJECTS_SHOWN);
    let files = if rejects.len() == 1 { "1 file was".to_string() } else { format!("{} files were", rejects.len()) };
    let summary = if shown < rejects.len() {
        format!("{files} rejected; the first {shown}:")
    } else {
        format!("{files} rejected:")
    };
    let mut table = Table { header: vec!["Path".into(), "Reason".into()], align: vec![Align::Left; 2], rows: vec![] };
    table.rows = rejects[..shown].iter().map(|r| vec![r.path.clone(), r.reason.clone()]).collect();
    vec![Block::Paragraph(vec![strong(summary)]), Block::Table(table)]
}

fn model(input: &ReportInput) -> Vec<Block<'static>> {
    let m = &input.model;
    let pretrained = if m.pretrained {
        vec![text("Pretrained: yes")]
    } else {
        vec![text("Pretrained: "), strong("NO, the weights are random, not pretrained")]
    };
    let items = vec![
        vec![text("Name: "), text(m.name.clone())],
        pretrained,
        vec![text("Weights: "), text(m.weights_note.clone())],
        vec![text(format!("Input size: {} × {} (width × height)", m.input_size[0], m.input_size[1]))],
        vec![text(format!("Embedding length: {}", m.embedding_len))],
    ];
    vec![Block::Heading(2, "Model".into()), Block::List(items)]
}

fn stages(stages: &[StageTiming]) -> Vec<Block<'static>> {
    let mut doc = vec![Block::Heading(2, "Stages".into())];
    if stages.is_empty() {
        doc.push(paragraph("No stage timings were recorded."));
        return doc;
    }
    let header = ["Stage", "Status", "Seconds", "Note"].map(String::from).to_vec();
    let align = vec![Align::Left, Align::Left, Align::Right, Align::Left];
    let mut rows: Vec<Vec<String>> = stages
        .iter()
        .map(|s| vec![s.name.clone(), s.status.as_str().into(), seconds(s.seconds), s.note.clone()])
        .collect();
    let total: f64 = stages.iter().map(|s| s.seconds).sum();
    rows.push(vec!["Total".into(), String::new(), seconds(total), String::new()]);
    doc.push(Block::Table(Table { header, align, rows }));
    doc
}

fn find(plots: &[Plot], kind: PlotKind) -> Option<&Plot> {
    plots.iter().find(|p| p.kind == kind)
}

fn curves<'a>(input: &ReportInput, plots: &'a [Plot]) -> Vec<Block<'a>> {
    let mut doc = vec![Block::Heading(2, "Learning curves".into())];
    doc.push(Block::Heading(3, "Head on frozen features".into()));
    doc.extend(curve(&input.head_curve, find(plots, PlotKind::HeadCurves), "Head learning curves"));
    doc.push(Block::Heading(3, "Fine-tuning".into()));
    if input.finetune_curve.is_empty() {
        doc.push(paragraph(if input.finetune_ran() {
            "No fine-tuning curve was recorded."
        } else {
            "Fine-tuning did not run."
        }));
    } else {
        doc.extend(curve(&input.finetune_curve, find(plots, PlotKind::FinetuneCurves), "Fine-tuning learning curves"));
    }
    doc
}

fn curve<'a>(points: &[CurvePoint], plot: Option<&'a Plot>, alt: &str) -> Vec<Block<'a>> {
    let (Some(last), Some(plot)) = (points.last(), plot) else {
        return vec![paragraph("No learning curve was recorded.")];
    };
    let optional = |x: Option<f64>| x.map_or(MISSING.to_string(), metric);
    let summary = format!(
        "{} epochs. Last epoch ({}): train loss {}, validation loss {}, train accuracy {}, validation accuracy {}.",
        points.len(),
        last.epoch,
        metric(last.train_loss),
        optional(last.val_loss),
        metric(last.train_accuracy),
        optional(last.val_accuracy),
    );
    vec![Block::Image { plot, alt: alt.into() }, paragraph(summary)]
}

fn test_metrics(input: &ReportInput) -> Vec<Block<'static>> {
    let mut doc = vec![Block::Heading(2, "Test metrics".into())];
    let (head, finetune) = (input.head_test.as_ref(), input.finetune_test.as_ref());
    if head.is_none() && finetune.is_none() {
        doc.push(paragraph("No test evaluation was recorded."));
        return doc;
    }
    if !input.finetune_ran() {
        doc.push(paragraph("Fine-tuning did not run: there are no figures after fine-tuning."));
    }
    doc.push(Block::Table(comparison_table(head, finetune)));
    doc
}

/// Picks one of an evaluation's averages.
type Average = fn(&Evaluation) -> &ClassScores;

/// Before vs after fine-tuning, one row per figure.
fn comparison_table(head: Option<&Evaluation>, finetune: Option<&Evaluation>) -> Table {
    let header = ["Metric", "Before fine-tuning (head only)", "After fine-tuning"].map(String::from).to_vec();
    let mut table = Table::numeric(header);
    let both = [head, finetune];
    let mut row = |label: String, f: &dyn Fn(&Evaluation) -> Option<String>| {
        let cells = both.iter().map(|e| e.and_then(f).unwrap_or_else(|| MISSING.to_string()));
        table.rows.push(std::iter::once(label).chain(cells).collect());
    };
    row("Samples".into(), &|e| Some(e.samples.to_string()));
    row("Accuracy".into(), &|e| Some(metric(e.accuracy)));
    for k in top_ks(&both) {
        row(format!("Top-{k} accuracy"), &|e| e.top_k.iter().find(|t| t.k == k).map(|t| metric(t.accuracy)));
    }
    let averages: [(&str, Average); 2] = [("Macro", |e| &e.macro_avg), ("Weighted", |e| &e.weighted_avg)];
    for (name, avg) in averages {
        row(format!("{name} precision"), &|e| Some(metric(avg(e).precision)));
        row(format!("{name} recall"), &|e| Some(metric(avg(e).recall)));
        row(format!("{name} F1"), &|e| Some(metric(avg(e).f1)));
    }
    table
}

/// Every k either evaluation reports, ascending, once.
fn top_ks(evaluations: &[Option<&Evaluation>]) -> Vec<usize> {
    let mut ks: Vec<usize> = evaluations.iter().flatten().flat_map(|e| e.top_k.iter().map(|t| t.k)).collect();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// The evaluations that exist, with headings and plot kinds.
fn evaluations(input: &ReportInput) -> Vec<(&'static str, &Evaluation, PlotKind)> {
    let head = input.head_test.as_ref().map(|e| ("Before fine-tuning (head only)", e, PlotKind::ConfusionHead));
    let finetune = input.finetune_test.as_ref().map(|e| ("After fine-tuning", e, PlotKind::ConfusionFinetune));
    head.into_iter().chain(finetune).collect()
}

fn per_class(input: &ReportInput) -> Vec<Block<'static>> {
    let evaluations = evaluations(input);
    if evaluations.is_empty() {
        return vec![];
    }
    let mut doc = vec![Block::Heading(2, "Per-class metrics".into())];
    for (title, evaluation, _) in evaluations {
        doc.push(Block::Heading(3, title.into()));
        doc.push(Block::Table(class_table(evaluation)));
    }
    doc
}

fn class_table(evaluation: &Evaluation) -> Table {
    let mut table = Table::numeric(["Class", "Precision", "Recall", "F1", "Support"].map(String::from).to_vec());
    let row = |name: &str, s: &ClassScores| {
        vec![name.to_string(), metric(s.precision), metric(s.recall), metric(s.f1), s.support.to_string()]
    };
    table.rows = evaluation.classes.iter().map(|c| row(&c.name, &c.scores)).collect();
    table
}

fn confusion<'a>(input: &ReportInput, plots: &'a [Plot]) -> Vec<Block<'a>> {
    let evaluations = evaluations(input);
    if evaluations.is_empty() {
        return vec![];
    }
    let mut doc = vec![
        Block::Heading(2, "Confusion matrices".into()),
        paragraph("Rows are true classes, columns predicted classes. Plot colour: share of the true class."),
    ];
    for (title, evaluation, kind) in evaluations {
        doc.push(Block::Heading(3, title.into()));
        if let Some(plot) = find(plots, kind) {
            doc.push(Block::Image { plot, alt: format!("Confusion matrix, {}", title.to_lowercase()) });
        }
        doc.push(Block::Table(confusion_table(evaluation)));
    }
    doc
}

fn confusion_table(evaluation: &Evaluation) -> Table {
    let names = evaluation.classes.iter().map(|c| c.name.clone());
    let mut table = Table::numeric(std::iter::once("True \\ predicted".to_string()).chain(names).collect());
    table.rows = evaluation
        .classes
        .iter()
        .zip(&evaluation.confusion)
        .map(|(class, row)| std::iter::once(class.name.clone()).chain(row.iter().map(u64::to_string)).collect())
        .collect();
    table
}

fn notes(notes: &[String]) -> Vec<Block<'static>> {
    let mut doc = vec![Block::Heading(2, "Notes".into())];
    if notes.is_empty() {
        doc.push(paragraph("None."));
    } else {
        doc.push(Block::List(notes.iter().map(|n| vec![text(n.clone())]).collect()));
    }
    doc
}

fn experiment(spec: &str) -> Vec<Block<'static>> {
    vec![
        Block::Heading(2, "Experiment".into()),
        Block::Code { title: "Resolved experiment spec (TOML)".into(), language: "toml", text: spec.to_string() },
    ]
}
