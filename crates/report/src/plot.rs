//! PNG plots: learning curves (loss and accuracy panels) and confusion-matrix
//! heat maps. Drawn with plotters into an RGB buffer and encoded with
//! `image`, all in memory; writing the files is the caller's job.

use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use train_kit::metrics::Evaluation;

use crate::input::{CurvePoint, ReportInput};
use crate::ReportError;

/// Training series colour (matplotlib's tab:blue).
pub(crate) const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
/// Validation series colour (matplotlib's tab:orange).
pub(crate) const VALIDATION_COLOUR: RGBColor = RGBColor(255, 127, 14);
/// Heat-map colour of a cell holding the whole row (a fully recalled class).
const HEAT_COLOUR: RGBColor = RGBColor(8, 48, 107);

const FONT: &str = "sans-serif";
const CURVE_SIZE: (u32, u32) = (1200, 480);
/// Class names longer than this are cut in plots (tables keep them whole).
const MAX_LABEL_CHARS: usize = 24;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Which plot; fixes its file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlotKind {
    HeadCurves,
    FinetuneCurves,
    ConfusionHead,
    ConfusionFinetune,
}

impl PlotKind {
    pub(crate) const ALL: [PlotKind; 4] =
        [PlotKind::HeadCurves, PlotKind::FinetuneCurves, PlotKind::ConfusionHead, PlotKind::ConfusionFinetune];

    pub(crate) fn file_name(self) -> &'static str {
        match self {
            PlotKind::HeadCurves => "head-curves.png",
            PlotKind::FinetuneCurves => "finetune-curves.png",
            PlotKind::ConfusionHead => "confusion-head.png",
            PlotKind::ConfusionFinetune => "confusion-finetune.png",
        }
    }
}

/// One encoded plot.
pub(crate) struct Plot {
    pub kind: PlotKind,
    pub png: Vec<u8>,
}

impl Plot {
    /// Path relative to the report folder, as the Markdown links it.
    pub(crate) fn relative_path(&self) -> String {
        format!("plots/{}", self.kind.file_name())
    }
}

/// Every plot the input has data for. `plots_dir` only names files in errors.
pub(crate) fn draw_all(input: &ReportInput, plots_dir: &Path) -> Result<Vec<Plot>, ReportError> {
    let mut jobs: Vec<(PlotKind, Result<Vec<u8>, String>)> = Vec::new();
    if !input.head_curve.is_empty() {
        jobs.push((PlotKind::HeadCurves, curves_png(&input.head_curve, "Head")));
    }
    if !input.finetune_curve.is_empty() {
        jobs.push((PlotKind::FinetuneCurves, curves_png(&input.finetune_curve, "Fine-tuning")));
    }
    if let Some(e) = &input.head_test {
        jobs.push((PlotKind::ConfusionHead, confusion_png(e, "Confusion matrix, before fine-tuning (head only)")));
    }
    if let Some(e) = &input.finetune_test {
        jobs.push((PlotKind::ConfusionFinetune, confusion_png(e, "Confusion matrix, after fine-tuning")));
    }
    jobs.into_iter()
        .map(|(kind, png)| {
            let path = plots_dir.join(kind.file_name());
            png.map(|png| Plot { kind, png }).map_err(|reason| ReportError::Plot { path, reason })
        })
        .collect()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Draws on a white canvas of `size` and returns the PNG bytes.
fn render_png(size: (u32, u32), draw: impl FnOnce(&Area) -> Result<(), String>) -> Result<Vec<u8>, String> {
    let mut buffer = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    encode_png(buffer, size)
}

fn encode_png(rgb: Vec<u8>, (width, height): (u32, u32)) -> Result<Vec<u8>, String> {
    let image = image::RgbImage::from_raw(width, height, rgb).ok_or("pixel buffer has the wrong size")?;
    let mut png = Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).map_err(err)?;
    Ok(png.into_inner())
}

// ---------------------------------------------------------------- curves

/// A line on a curve panel: finite points only (a diverged NaN loss is skipped).
struct Series {
    label: &'static str,
    colour: RGBColor,
    points: Vec<(usize, f64)>,
}

impl Series {
    fn new(label: &'static str, colour: RGBColor, points: impl Iterator<Item = (usize, Option<f64>)>) -> Self {
        let points = points.filter_map(|(x, y)| y.filter(|y| y.is_finite()).map(|y| (x, y))).collect();
        Series { label, colour, points }
    }
}

/// Loss and accuracy side by side, train vs validation.
fn curves_png(points: &[CurvePoint], title: &str) -> Result<Vec<u8>, String> {
    let loss = [
        Series::new("train", TRAIN_COLOUR, points.iter().map(|p| (p.epoch, Some(p.train_loss)))),
        Series::new("validation", VALIDATION_COLOUR, points.iter().map(|p| (p.epoch, p.val_loss))),
    ];
    let accuracy = [
        Series::new("train", TRAIN_COLOUR, points.iter().map(|p| (p.epoch, Some(p.train_accuracy)))),
        Series::new("validation", VALIDATION_COLOUR, points.iter().map(|p| (p.epoch, p.val_accuracy))),
    ];
    render_png(CURVE_SIZE, |root| {
        let (left, right) = root.split_horizontally(CURVE_SIZE.0 / 2);
        let loss_panel = Panel { caption: format!("{title}: loss"), y_desc: "loss", y_min_top: 0.0 };
        loss_panel.draw(&left, &loss, SeriesLabelPosition::UpperRight)?;
        let accuracy_panel = Panel { caption: format!("{title}: accuracy"), y_desc: "accuracy", y_min_top: 1.0 };
        accuracy_panel.draw(&right, &accuracy, SeriesLabelPosition::LowerRight)
    })
}

struct Panel {
    caption: String,
    y_desc: &'static str,
    /// The y axis reaches at least this high (1.0 keeps accuracy on a full scale).
    y_min_top: f64,
}

impl Panel {
    fn draw(&self, area: &Area, series: &[Series], legend: SeriesLabelPosition) -> Result<(), String> {
        let all = || series.iter().flat_map(|s| s.points.iter().copied());
        let mut chart = ChartBuilder::on(area)
            .caption(&self.caption, (FONT, 22))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(epoch_range(all().map(|p| p.0)), value_range(all().map(|p| p.1), self.y_min_top))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(self.y_desc)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .bold_line_style(RGBColor(215, 215, 215))
            .light_line_style(RGBColor(246, 246, 246))
            .draw()
            .map_err(err)?;
        for s in series.iter().filter(|s| !s.points.is_empty()) {
            let colour = s.colour;
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))
                .map_err(err)?
                .label(s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(legend)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)
    }
}

/// The epochs on the x axis; a single epoch gets a neighbour on each side.
fn epoch_range(epochs: impl Iterator<Item = usize>) -> Range<usize> {
    let (lo, hi) = epochs.fold((usize::MAX, 0), |(lo, hi), e| (lo.min(e), hi.max(e)));
    match (lo, hi) {
        (usize::MAX, _) => 0..1,
        (lo, hi) if lo == hi => lo.saturating_sub(1)..hi + 1,
        (lo, hi) => lo..hi,
    }
}

/// The y axis: from 0 (or below, for negative values) to a little over the
/// largest value, and at least up to `min_top`.
fn value_range(values: impl Iterator<Item = f64>, min_top: f64) -> Range<f64> {
    let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !min.is_finite() {
        return 0.0..min_top.max(1.0);
    }
    let lo = min.min(0.0);
    let hi = max.max(min_top);
    let span = if hi - lo > 1e-12 { hi - lo } else { 1.0 };
    let pad = 0.05 * span;
    (if lo < 0.0 { lo - pad } else { lo })..hi + pad
}

// ------------------------------------------------------------- confusion

/// Pixel layout of a confusion heat map.
struct Grid {
    classes: usize,
    cell: i32,
    left: i32,
    top: i32,
    label_len: i32,
    size: (u32, u32),
}

const MARGIN: i32 = 20;
const TITLE_HEIGHT: i32 = 44;
const AXIS_TITLE: i32 = 28;
const LABEL_GAP: i32 = 8;

impl Grid {
    fn new(classes: usize, label_len: i32, title_len: i32) -> Self {
        let cell = (560 / classes.max(1) as i32).clamp(28, 90);
        let left = MARGIN + AXIS_TITLE + label_len + LABEL_GAP;
        let top = MARGIN + TITLE_HEIGHT;
        let side = cell * classes as i32;
        let width = (left + side + MARGIN).max(title_len + 2 * MARGIN);
        let height = top + side + LABEL_GAP + label_len + AXIS_TITLE + MARGIN;
        Grid { classes, cell, left, top, label_len, size: (width as u32, height as u32) }
    }

    fn side(&self) -> i32 {
        self.cell * self.classes as i32
    }

    fn cell_rect(&self, row: usize, col: usize) -> [(i32, i32); 2] {
        let (x, y) = (self.left + col as i32 * self.cell, self.top + row as i32 * self.cell);
        [(x, y), (x + self.cell, y + self.cell)]
    }

    fn cell_centre(&self, row: usize, col: usize) -> (i32, i32) {
        let [(x, y), _] = self.cell_rect(row, col);
        (x + self.cell / 2, y + self.cell / 2)
    }
}

fn short_label(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL_CHARS {
        name.to_string()
    } else {
        name.chars().take(MAX_LABEL_CHARS - 1).chain(['…']).collect()
    }
}

fn text_width(text: &str, size: f64) -> Result<i32, String> {
    let (width, _) = FontDesc::new(FontFamily::Name(FONT), size, FontStyle::Normal).box_size(text).map_err(err)?;
    Ok(width as i32)
}

const LABEL_FONT: f64 = 15.0;
const TITLE_FONT: f64 = 20.0;

/// Heat map of `confusion[true][predicted]`: colour is the share of the true
/// class, the count is written in each cell, class names on both axes.
fn confusion_png(evaluation: &Evaluation, title: &str) -> Result<Vec<u8>, String> {
    let labels: Vec<String> = evaluation.classes.iter().map(|c| short_label(&c.name)).collect();
    let mut label_len = 0;
    for label in &labels {
        label_len = label_len.max(text_width(label, LABEL_FONT)?);
    }
    let grid = Grid::new(labels.len(), label_len, text_width(title, TITLE_FONT)?);
    render_png(grid.size, |root| {
        draw_title(root, &grid, title)?;
        draw_cells(root, &grid, &evaluation.confusion)?;
        draw_labels(root, &grid, &labels)
    })
}

fn draw_title(root: &Area, grid: &Grid, title: &str) -> Result<(), String> {
    let centre = grid.size.0 as i32 / 2;
    let style = (FONT, TITLE_FONT).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
    root.draw(&Text::new(title.to_string(), (centre, MARGIN), style)).map_err(err)
}

fn draw_cells(root: &Area, grid: &Grid, confusion: &[Vec<u64>]) -> Result<(), String> {
    let count_font = f64::from(grid.cell / 3).clamp(10.0, 18.0);
    for (r, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (c, &count) in row.iter().enumerate() {
            let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
            let rect = grid.cell_rect(r, c);
            root.draw(&Rectangle::new(rect, heat(share).filled())).map_err(err)?;
            root.draw(&Rectangle::new(rect, RGBColor(200, 200, 200).stroke_width(1))).map_err(err)?;
            let ink = if share > 0.5 { WHITE } else { BLACK };
            let style = (FONT, count_font).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
            root.draw(&Text::new(count.to_string(), grid.cell_centre(r, c), style)).map_err(err)?;
        }
    }
    Ok(())
}

/// White for 0, [`HEAT_COLOUR`] for 1.
fn heat(share: f64) -> RGBColor {
    let share = share.clamp(0.0, 1.0);
    let mix = |to: u8| (255.0 + (f64::from(to) - 255.0) * share).round() as u8;
    RGBColor(mix(HEAT_COLOUR.0), mix(HEAT_COLOUR.1), mix(HEAT_COLOUR.2))
}

/// Class names left of the rows and (rotated) under the columns, plus the
/// axis titles.
fn draw_labels(root: &Area, grid: &Grid, labels: &[String]) -> Result<(), String> {
    let font = || (FONT, LABEL_FONT).into_font().color(&BLACK);
    let below = grid.top + grid.side() + LABEL_GAP;
    for (i, label) in labels.iter().enumerate() {
        let (x, y) = grid.cell_centre(i, i);
        let row_style = font().pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(label.clone(), (grid.left - LABEL_GAP, y), row_style)).map_err(err)?;
        // Rotated to read bottom-up, ending just under the grid.
        let col_style = font().transform(FontTransform::Rotate270).pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(label.clone(), (x, below), col_style)).map_err(err)?;
    }
    let axis = |text: &str, at: (i32, i32), rotate: bool| {
        let style = (FONT, 16).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
        let style = if rotate { style.transform(FontTransform::Rotate270) } else { style };
        root.draw(&Text::new(text.to_string(), at, style)).map_err(err)
    };
    let middle = grid.side() / 2;
    axis("predicted class", (grid.left + middle, below + grid.label_len + AXIS_TITLE / 2), false)?;
    axis("true class", (MARGIN + AXIS_TITLE / 2, grid.top + middle), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(epochs: usize, validated: bool) -> Vec<CurvePoint> {
        (1..=epochs)
            .map(|e| {
                let t = e as f64;
                CurvePoint {
                    epoch: e,
                    train_loss: 2.0 / t,
                    val_loss: validated.then_some(2.5 / t + 0.3),
                    train_accuracy: 1.0 - 0.7 / t,
                    val_accuracy: validated.then_some(0.85 - 0.7 / t),
                }
            })
            .collect()
    }

    /// Leftmost and rightmost column of `columns` holding a pixel of exactly `colour`.
    fn colour_span(image: &image::RgbImage, colour: RGBColor, columns: Range<u32>) -> Option<(u32, u32)> {
        let wanted = image::Rgb([colour.0, colour.1, colour.2]);
        let hits = columns.filter(|&x| (0..image.height()).any(|y| *image.get_pixel(x, y) == wanted));
        hits.fold(None, |span, x| Some(span.map_or((x, x), |(lo, _)| (lo, x))))
    }

    #[test]
    fn curves_draw_train_and_validation_in_their_own_colours() {
        assert_ne!(TRAIN_COLOUR, VALIDATION_COLOUR);
        let png = curves_png(&points(8, true), "Head").unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        let half = image.width() / 2;
        for panel in [0..half, half..image.width()] {
            for colour in [TRAIN_COLOUR, VALIDATION_COLOUR] {
                // A line across the panel, not just a legend swatch.
                let (lo, hi) = colour_span(&image, colour, panel.clone()).expect("series colour drawn");
                assert!(hi - lo > half / 2, "{colour:?} spans only columns {lo}..{hi} of {panel:?}");
            }
        }
        // Without validation figures there is no validation line (nor legend entry).
        let png = curves_png(&points(8, false), "Head").unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        assert!(colour_span(&image, TRAIN_COLOUR, 0..image.width()).is_some());
        assert_eq!(colour_span(&image, VALIDATION_COLOUR, 0..image.width()), None);
    }

    #[test]
    fn non_finite_values_and_single_epochs_still_plot() {
        let mut curve = points(1, true);
        curve[0].train_loss = f64::NAN;
        curve[0].val_loss = Some(f64::INFINITY);
        let image = image::load_from_memory(&curves_png(&curve, "x").unwrap()).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), CURVE_SIZE);
    }

    #[test]
    fn ranges_cover_the_data() {
        assert_eq!(epoch_range([3].into_iter()), 2..4);
        assert_eq!(epoch_range([1, 5, 2].into_iter()), 1..5);
        let r = value_range([0.2, 0.9].into_iter(), 1.0);
        assert!(r.start == 0.0 && r.end > 1.0);
        let r = value_range([2.5, 0.4].into_iter(), 0.0);
        assert!(r.start == 0.0 && r.end > 2.5);
        let r = value_range([-1.0, 1.0].into_iter(), 0.0);
        assert!(r.start < -1.0 && r.end > 1.0);
    }

    #[test]
    fn heat_runs_from_white_to_the_heat_colour() {
        assert_eq!(heat(0.0), WHITE);
        assert_eq!(heat(1.0), HEAT_COLOUR);
    }

    #[test]
    fn long_labels_are_cut() {
        assert_eq!(short_label("cat"), "cat");
        let long = "x".repeat(40);
        assert_eq!(short_label(&long).chars().count(), MAX_LABEL_CHARS);
    }
}
