//! Renders a pipeline run's report from plain data: `report.md`,
//! a self-contained `report.html` (plots embedded, inline CSS, no external
//! references) and the PNG plots under `plots/`.
//!
//! The crate reads no other stage's files: the caller fills [`ReportInput`].
//!
//! Modules: `input` (the data), `document` (the report as neutral blocks),
//! `markdown` and `html` (the two syntaxes), `plot` (PNG drawing), `fs`
//! (atomic writes, the only file access).

mod document;
mod error;
mod fs;
mod html;
mod input;
mod markdown;
mod plot;

use std::path::{Path, PathBuf};

pub use document::REJECTS_SHOWN;
pub use error::ReportError;
pub use input::{
    CurvePoint, DatasetSummary, ModelSummary, RejectRow, ReportInput, SplitSummary, StageStatus, StageTiming,
};
pub use train_kit::metrics::Evaluation;

/// The files [`render`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// `<out_dir>/report.md`
    pub markdown: PathBuf,
    /// `<out_dir>/report.html`
    pub html: PathBuf,
    /// The PNGs under `<out_dir>/plots/`, in report order.
    pub plots: Vec<PathBuf>,
}

/// Renders `input` into `out_dir` (created if missing): `report.md`,
/// `report.html` and the plots the data allows (`plots/head-curves.png`,
/// `plots/finetune-curves.png`, `plots/confusion-head.png`,
/// `plots/confusion-finetune.png`). Plots of an earlier render that this
/// one has no data for are removed. Every file is written to a `.partial`
/// sibling and renamed into place.
pub fn render(input: &ReportInput, out_dir: &Path) -> Result<Rendered, ReportError> {
    input.validate()?;
    let plots_dir = out_dir.join("plots");
    let plots = plot::draw_all(input, &plots_dir)?;
    fs::create_dir(&plots_dir)?;
    let mut plot_paths = Vec::with_capacity(plots.len());
    for kind in plot::PlotKind::ALL {
        let path = plots_dir.join(kind.file_name());
        match plots.iter().find(|p| p.kind == kind) {
            Some(plot) => {
                fs::write_atomic(&path, &plot.png)?;
                plot_paths.push(path);
            }
            None => fs::remove_stale(&path)?,
        }
    }
    let doc = document::build(input, &plots);
    let markdown = out_dir.join("report.md");
    fs::write_atomic(&markdown, markdown::render(&doc).as_bytes())?;
    let html = out_dir.join("report.html");
    fs::write_atomic(&html, html::render(&input.title, &doc).as_bytes())?;
    Ok(Rendered { markdown, html, plots: plot_paths })
}
