//! Renders fixture inputs into temporary folders and reads the files back.

use std::fs;
use std::path::Path;

use base64::Engine;
use report::{
    render, CurvePoint, DatasetSummary, ModelSummary, RejectRow, ReportError, ReportInput, SplitSummary, StageStatus,
    StageTiming,
};
use train_kit::metrics::{ClassReport, ClassScores, Evaluation, TopK};

const TRICKY: &str = "<b>&bird";

fn scores(precision: f64, recall: f64, f1: f64, support: u64) -> ClassScores {
    ClassScores { precision, recall, f1, support }
}

fn evaluation(accuracy: f64, top2: f64, macro_f1: f64, confusion: Vec<Vec<u64>>) -> Evaluation {
    let names = ["cat", "dog", TRICKY];
    let classes = names
        .iter()
        .zip(&confusion)
        .enumerate()
        .map(|(c, (name, row))| {
            let support: u64 = row.iter().sum();
            let predicted: u64 = confusion.iter().map(|r| r[c]).sum();
            let (p, r) = (row[c] as f64 / predicted as f64, row[c] as f64 / support as f64);
            ClassReport { name: name.to_string(), scores: scores(p, r, 2.0 * p * r / (p + r), support) }
        })
        .collect();
    Evaluation {
        samples: confusion.iter().flatten().sum(),
        accuracy,
        top_k: vec![TopK { k: 1, accuracy }, TopK { k: 2, accuracy: top2 }],
        classes,
        macro_avg: scores(0.8123, 0.8012, macro_f1, 16),
        weighted_avg: scores(0.8245, 0.8125, 0.8111, 16),
        confusion,
    }
}

fn curve(epochs: usize, offset: f64) -> Vec<CurvePoint> {
    (1..=epochs)
        .map(|e| {
            let t = e as f64;
            CurvePoint {
                epoch: e,
                train_loss: 1.5 / t + offset,
                val_loss: Some(1.8 / t + 0.2 + offset),
                train_accuracy: 1.0 - 0.6 / t,
                val_accuracy: Some(0.9 - 0.6 / t),
            }
        })
        .collect()
}

fn fixture() -> ReportInput {
    let split = |per_class: Vec<u64>| SplitSummary { rows: per_class.iter().sum(), per_class };
    ReportInput {
        title: "demo-20261128-041500".into(),
        created: "2026-11-28T04:15:00Z".into(),
        experiment: "[experiment]\nname = \"demo\"\n\n[head]\nepochs = 10\n".into(),
        dataset: DatasetSummary {
            name: "demo-shapes".into(),
            classes: vec!["cat".into(), "dog".into(), TRICKY.into()],
            train: split(vec![40, 38, 42]),
            validation: split(vec![6, 5, 5]),
            test: split(vec![6, 5, 5]),
            rejects: vec![RejectRow { path: "broken/<x>&.jpg".into(), reason: "truncated JPEG".into() }],
        },
        model: ModelSummary {
            name: "vgg16-keras".into(),
            pretrained: true,
            weights_note: "Keras ImageNet VGG16".into(),
            input_size: [240, 240],
            embedding_len: 25088,
        },
        stages: vec![
            StageTiming { name: "ingest".into(), status: StageStatus::Ran, seconds: 3.25, note: String::new() },
            StageTiming {
                name: "features".into(),
                status: StageStatus::Skipped,
                seconds: 0.5,
                note: "412 cache hits, 0 computed".into(),
            },
            StageTiming { name: "head".into(), status: StageStatus::Ran, seconds: 12.0, note: String::new() },
            StageTiming { name: "finetune".into(), status: StageStatus::Ran, seconds: 300.0, note: String::new() },
        ],
        head_curve: curve(10, 0.0),
        finetune_curve: curve(4, 0.1),
        head_test: Some(evaluation(0.8125, 0.9375, 0.8034, vec![vec![5, 1, 0], vec![1, 4, 0], vec![0, 1, 4]])),
        finetune_test: Some(evaluation(0.9375, 1.0, 0.9296, vec![vec![6, 0, 0], vec![0, 5, 0], vec![0, 1, 4]])),
        notes: vec!["validation set is small (16 images)".into()],
    }
}

fn without_finetuning() -> ReportInput {
    ReportInput { finetune_curve: vec![], finetune_test: None, ..fixture() }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

/// All base64 payloads of `data:image/png;base64,` URIs, in document order.
fn embedded_pngs(html: &str) -> Vec<Vec<u8>> {
    html.split("data:image/png;base64,")
        .skip(1)
        .map(|rest| {
            let payload = &rest[..rest.find('"').expect("closing quote")];
            base64::engine::general_purpose::STANDARD.decode(payload).expect("valid base64")
        })
        .collect()
}

/// Rows of the first Markdown table after the line `heading` (header and rule excluded).
fn table_after(markdown: &str, heading: &str) -> Vec<String> {
    let mut lines = markdown.lines().skip_while(|l| *l != heading).skip(1).skip_while(|l| !l.starts_with('|'));
    let header = lines.next().expect("table header");
    assert!(lines.next().expect("rule").starts_with("|---"), "{header}");
    lines.take_while(|l| l.starts_with('|')).map(String::from).collect()
}

#[test]
fn writes_every_file_and_plots_decode_as_real_images() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(&fixture(), dir.path()).unwrap();
    assert_eq!(rendered.markdown, dir.path().join("report.md"));
    assert_eq!(rendered.html, dir.path().join("report.html"));
    let names: Vec<_> = rendered.plots.iter().map(|p| p.strip_prefix(dir.path()).unwrap().to_owned()).collect();
    let expected = ["head-curves.png", "finetune-curves.png", "confusion-head.png", "confusion-finetune.png"];
    assert_eq!(names, expected.map(|n| Path::new("plots").join(n)));
    for path in &rendered.plots {
        let image = image::open(path).unwrap().to_rgb8();
        let name = path.file_name().unwrap().to_str().unwrap();
        if name.ends_with("curves.png") {
            assert_eq!(image.dimensions(), (1200, 480), "{name}");
        } else {
            let (w, h) = image.dimensions();
            assert!(w >= 300 && h >= 300, "{name}: {w}x{h}");
        }
        let first = image.get_pixel(0, 0);
        let differing = image.pixels().filter(|p| *p != first).count();
        assert!(differing > 1000, "{name} is (nearly) one flat colour: {differing} pixels differ");
    }
    for dir in [dir.path().to_owned(), dir.path().join("plots")] {
        for entry in fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(!name.ends_with(".partial"), "left behind: {name}");
        }
    }
}

#[test]
fn html_is_self_contained_and_embeds_the_exact_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(&fixture(), dir.path()).unwrap();
    let html = read(&rendered.html);
    for forbidden in ["http://", "https://", "src=\"plots", "href="] {
        assert!(!html.contains(forbidden), "HTML contains {forbidden}");
    }
    let embedded = embedded_pngs(&html);
    assert_eq!(embedded.len(), rendered.plots.len());
    for (bytes, path) in embedded.iter().zip(&rendered.plots) {
        assert!(bytes == &fs::read(path).unwrap(), "embedded image differs from {}", path.display());
    }
}

#[test]
fn markdown_links_the_plots_by_relative_path() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(&fixture(), dir.path()).unwrap();
    let markdown = read(&rendered.markdown);
    for path in &rendered.plots {
        let relative = path.strip_prefix(dir.path()).unwrap().to_str().unwrap();
        assert!(markdown.contains(&format!("]({relative})")), "no link to {relative}");
    }
    assert!(!markdown.contains("data:image"));
}

#[test]
fn user_text_is_escaped_in_html_and_markdown() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(&fixture(), dir.path()).unwrap();
    let html = read(&rendered.html);
    assert!(!html.contains(TRICKY) && !html.contains("<x>"), "raw user text in HTML");
    assert!(html.contains("&lt;b&gt;&amp;bird"));
    assert!(html.contains("broken/&lt;x&gt;&amp;.jpg"));
    let markdown = read(&rendered.markdown);
    assert!(!markdown.contains(TRICKY) && !markdown.contains("<x>"), "raw user text in Markdown");
    assert!(markdown.contains(r"| \<b\>\&bird |"));
    assert!(markdown.contains(r"broken/\<x\>\&.jpg"));
    assert!(!markdown.contains("&lt;") && !markdown.contains("&amp;"));
}

/// A class label with every kind of markup: table separators, CSV quotes,
/// HTML, a line break, emphasis.
const HOSTILE: &str = "a|b,\"c\"<x>\n*y*";

/// The fixture with its third class renamed to `label` everywhere.
fn with_label(label: &str) -> ReportInput {
    let mut input = fixture();
    input.dataset.classes[2] = label.into();
    for evaluation in [&mut input.head_test, &mut input.finetune_test].into_iter().flatten() {
        evaluation.classes[2].name = label.into();
    }
    input
}

#[test]
fn a_hostile_label_stays_one_literal_cell_in_markdown_and_html() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(&with_label(HOSTILE), dir.path()).unwrap();
    let markdown = read(&rendered.markdown);
    let escaped = r#"a\|b,"c"\<x\> \*y\*"#;
    assert!(!markdown.contains("<x>") && !markdown.contains("*y*"), "raw label in Markdown");
    // Every table that lists classes keeps its shape: the label's row has
    // as many cells as its table's header (escaped pipes are not separators).
    let lines: Vec<&str> = markdown.lines().collect();
    let cells = |line: &str| line.replace(r"\|", "").matches('|').count();
    let mut rows = 0;
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.contains(escaped) && l.starts_with('|')) {
        let header = (0..i).rev().take_while(|&j| lines[j].starts_with('|')).last().map_or(*line, |j| lines[j]);
        assert_eq!(cells(line), cells(header), "{line} under {header}");
        rows += 1;
    }
    // Split counts; per-class metrics and confusion rows and columns, before and after fine-tuning.
    assert_eq!(rows, 7, "{markdown}");
    assert!(markdown.contains(&format!("3 classes: cat, dog, {escaped}.")), "{markdown}");
    let html = read(&rendered.html);
    assert!(html.contains("a|b,&quot;c&quot;&lt;x&gt;\n*y*"), "the label, escaped, in HTML");
    assert!(!html.contains("<x>"));
}

#[test]
fn markdown_tables_have_one_row_per_class_and_the_input_figures() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture();
    let markdown = read(&render(&input, dir.path()).unwrap().markdown);
    let classes = input.dataset.classes.len();
    for heading in ["### Before fine-tuning (head only)", "### After fine-tuning"] {
        let per_class = table_after(markdown.split("## Per-class metrics").nth(1).unwrap(), heading);
        assert_eq!(per_class.len(), classes, "{heading}: {per_class:?}");
        let confusion = table_after(markdown.split("## Confusion matrices").nth(1).unwrap(), heading);
        assert_eq!(confusion.len(), classes, "{heading}: {confusion:?}");
    }
    let counts = table_after(&markdown, "## Dataset");
    assert_eq!(counts.len(), classes + 1, "one row per class plus the total: {counts:?}");
    assert_eq!(counts[0], "| cat | 40 | 6 | 6 | 52 |");
    assert_eq!(counts[classes], "| Total | 120 | 16 | 16 | 152 |");
    let metrics = table_after(&markdown, "## Test metrics");
    assert!(metrics.contains(&"| Accuracy | 0.8125 | 0.9375 |".to_string()), "{metrics:?}");
    assert!(metrics.contains(&"| Top-2 accuracy | 0.9375 | 1.0000 |".to_string()), "{metrics:?}");
    assert!(metrics.contains(&"| Macro F1 | 0.8034 | 0.9296 |".to_string()), "{metrics:?}");
    let stages = table_after(&markdown, "## Stages");
    assert_eq!(stages.len(), input.stages.len() + 1);
    assert_eq!(stages[1], "| features | skipped | 0.50 | 412 cache hits, 0 computed |");
}

#[test]
fn without_finetuning_the_report_says_so_and_has_no_finetune_plots() {
    let dir = tempfile::tempdir().unwrap();
    // A full render first: the second must remove the plots it no longer has data for.
    render(&fixture(), dir.path()).unwrap();
    let rendered = render(&without_finetuning(), dir.path()).unwrap();
    let names: Vec<_> = rendered.plots.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["head-curves.png", "confusion-head.png"]);
    assert!(!dir.path().join("plots/finetune-curves.png").exists());
    assert!(!dir.path().join("plots/confusion-finetune.png").exists());
    let markdown = read(&rendered.markdown);
    let html = read(&rendered.html);
    for text in [&markdown, &html] {
        assert!(text.contains("Fine-tuning did not run"));
        assert!(!text.contains("finetune-curves") && !text.contains("### After fine-tuning"));
    }
    assert_eq!(embedded_pngs(&html).len(), 2);
    let metrics = table_after(&markdown, "## Test metrics");
    assert!(metrics.contains(&"| Accuracy | 0.8125 | — |".to_string()), "{metrics:?}");
}

#[test]
fn a_model_that_is_not_pretrained_is_flagged_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = fixture();
    let pretrained = read(&render(&input, dir.path()).unwrap().markdown);
    assert!(pretrained.contains("Pretrained: yes") && !pretrained.contains("NOT pretrained"));
    input.model.pretrained = false;
    let rendered = render(&input, dir.path()).unwrap();
    let markdown = read(&rendered.markdown);
    assert!(markdown.contains("Pretrained: **NO, the weights are random, not pretrained**"));
    assert!(markdown.contains("> **Warning: The model vgg16-keras is NOT pretrained"));
    let html = read(&rendered.html);
    assert!(html.contains("<strong>NO, the weights are random, not pretrained</strong>"));
    assert!(html.contains("class=\"warning\""));
}

#[test]
fn rejects_show_the_count_and_the_first_twenty() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = fixture();
    input.dataset.rejects =
        (0..25).map(|i| RejectRow { path: format!("bad/{i:02}.png"), reason: "not an image".into() }).collect();
    let markdown = read(&render(&input, dir.path()).unwrap().markdown);
    assert!(markdown.contains("**25 files were rejected; the first 20:**"));
    let rows = table_after(&markdown, "**25 files were rejected; the first 20:**");
    assert_eq!(rows.len(), report::REJECTS_SHOWN);
    assert!(markdown.contains("bad/19.png") && !markdown.contains("bad/20.png"));
    input.dataset.rejects.truncate(1);
    let markdown = read(&render(&input, dir.path()).unwrap().markdown);
    assert!(markdown.contains("**1 file was rejected:**"));
    input.dataset.rejects.clear();
    let markdown = read(&render(&input, dir.path()).unwrap().markdown);
    assert!(markdown.contains("No files were rejected."));
}

#[test]
fn experiment_spec_is_a_code_block_and_a_collapsible_block() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(&fixture(), dir.path()).unwrap();
    assert!(read(&rendered.markdown).contains("```toml\n[experiment]\nname = \"demo\"\n"));
    let html = read(&rendered.html);
    assert!(html.contains("<details>") && html.contains("name = &quot;demo&quot;"));
}

#[test]
fn rendering_is_deterministic() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ra, rb) = (render(&fixture(), a.path()).unwrap(), render(&fixture(), b.path()).unwrap());
    assert_eq!(fs::read(&ra.html).unwrap(), fs::read(&rb.html).unwrap());
    assert_eq!(fs::read(&ra.markdown).unwrap(), fs::read(&rb.markdown).unwrap());
}

#[test]
fn inconsistent_input_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = fixture();
    input.dataset.validation.per_class.pop();
    let err = render(&input, dir.path()).unwrap_err();
    assert!(matches!(err, ReportError::Input { .. }));
    assert!(err.to_string().contains("validation"), "{err}");
    let mut input = fixture();
    input.finetune_test.as_mut().unwrap().confusion[1].push(0);
    let err = render(&input, dir.path()).unwrap_err().to_string();
    assert!(err.contains("finetune_test") && err.contains("row 1"), "{err}");
}

#[test]
fn unwritable_output_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    fs::write(&blocker, b"x").unwrap();
    let err = render(&fixture(), &blocker).unwrap_err();
    assert!(matches!(err, ReportError::Io { .. }));
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn input_round_trips_through_json() {
    let input = fixture();
    let json = serde_json::to_string_pretty(&input).unwrap();
    assert!(json.contains("\"status\": \"skipped\""), "{json}");
    let back: ReportInput = serde_json::from_str(&json).unwrap();
    assert_eq!(back, input);
}
