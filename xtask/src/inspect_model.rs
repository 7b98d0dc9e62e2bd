//! `cargo xtask inspect-model FILE`: lists an ONNX file's inputs, outputs,
//! node outputs (op and inferred shape) and initializers, marking likely
//! conv-base cut points: what a model spec needs (docs/backbones.md).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use onnx_graph::inspect::{elem_type_name, format_dims, ModelSummary, NodeTensor};

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX file.
    file: PathBuf,
    /// Only names containing this text (plain substring, case-sensitive).
    #[arg(long, value_name = "PATTERN")]
    grep: Option<String>,
    /// List only the initializers (weights).
    #[arg(long, conflicts_with = "tensors_only")]
    initializers_only: bool,
    /// List only the graph inputs, outputs and node outputs.
    #[arg(long)]
    tensors_only: bool,
}

/// `invoked_from` is the folder the command was run in (xtask itself runs
/// in the workspace root), so a relative FILE means what the user meant.
pub fn run(args: &Args, invoked_from: &Path) -> Result<()> {
    let path = invoked_from.join(&args.file);
    let model = onnx_graph::read_model(&path).with_context(|| format!("cannot inspect {}", path.display()))?;
    let summary = onnx_graph::inspect(&model).with_context(|| format!("cannot inspect {}", path.display()))?;
    let sections = Sections { tensors: !args.initializers_only, initializers: !args.tensors_only };
    print!("{}", render(&path.display().to_string(), &summary, args.grep.as_deref(), sections));
    Ok(())
}

#[derive(Clone, Copy)]
struct Sections {
    tensors: bool,
    initializers: bool,
}

fn render(file: &str, full: &ModelSummary, grep: Option<&str>, sections: Sections) -> String {
    let shown = grep.map_or_else(|| full.clone(), |pattern| full.filtered(pattern));
    let mut out = String::new();
    let opsets: Vec<String> = full.opsets.iter().map(|(domain, version)| format!("{domain} {version}")).collect();
    let _ = writeln!(out, "{file}");
    let _ = writeln!(
        out,
        "  IR {}, opsets {}, producer {}",
        full.ir_version,
        opsets.join(", "),
        if full.producer.is_empty() { "?" } else { &full.producer }
    );
    let _ = writeln!(
        out,
        "  {} nodes, {} initializers, {} parameters",
        full.node_count,
        full.initializers.len(),
        thousands(full.parameter_count)
    );
    if let Some(pattern) = grep {
        let _ = writeln!(
            out,
            "  names containing {pattern:?}: {} of {} node outputs, {} of {} initializers",
            shown.tensors.len(),
            full.tensors.len(),
            shown.initializers.len(),
            full.initializers.len()
        );
    }

    if sections.tensors {
        for (title, list) in [("graph inputs", &shown.inputs), ("graph outputs", &shown.outputs)] {
            let title = format!("{title} ({})", list.len());
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| vec![elem_type_name(t.elem_type), format_dims(t.dims.as_deref()), t.name.clone()])
                .collect();
            if !(rows.is_empty() && grep.is_some()) {
                section(&mut out, &title, &["type", "shape", "name"], &rows);
            }
        }
        let rows: Vec<Vec<String>> = shown.tensors.iter().map(tensor_row).collect();
        section(
            &mut out,
            &format!("node outputs, in graph order ({}; shapes from inference, ? = unknown)", rows.len()),
            &["#", "op", "type", "shape", "name"],
            &rows,
        );
    }
    if sections.initializers {
        let rows: Vec<Vec<String>> = shown
            .initializers
            .iter()
            .map(|t| {
                let dims = format!("[{}]", t.dims.iter().map(i64::to_string).collect::<Vec<_>>().join(", "));
                let read_by = if t.consumers.is_empty() { "unused".to_owned() } else { t.consumers.join(", ") };
                vec![elem_type_name(t.elem_type), dims, thousands(t.elements), t.name.clone(), format!("({read_by})")]
            })
            .collect();
        let title = format!("initializers ({}; the ops reading each in brackets)", rows.len());
        section(&mut out, &title, &["type", "shape", "elements", "name", ""], &rows);
    }
    if sections.tensors {
        let hinted: Vec<&NodeTensor> = full.tensors.iter().filter(|t| t.cut_hint.is_some()).collect();
        let _ = writeln!(out, "\nlikely cut points (feature maps feeding a global pool, Flatten, Squeeze or Gemm):");
        if hinted.is_empty() {
            let _ = writeln!(out, "  none found: look for the last 4-D tensor before the classifier");
        }
        for t in hinted {
            let _ = writeln!(out, "  {} {}", t.name, format_dims(t.dims.as_deref()));
        }
    }
    out
}

fn tensor_row(t: &NodeTensor) -> Vec<String> {
    let mut name = t.name.clone();
    if let Some(op) = &t.cut_hint {
        name.push_str(&format!("   <- likely cut point (feeds {op})"));
    }
    vec![
        t.index.to_string(),
        t.op_type.clone(),
        t.elem_type.map_or_else(|| "?".to_owned(), elem_type_name),
        format_dims(t.dims.as_deref()),
        name,
    ]
}

/// A titled table with left-aligned columns; the last column is not padded.
fn section(out: &mut String, title: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "\n{title}:");
    if rows.is_empty() {
        return;
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().chain([&header]).map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in [&header].into_iter().chain(rows) {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(&format!(" {cell}"));
            } else {
                line.push_str(&format!(" {cell:<width$}", width = widths[c]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// 17590 → "17,590".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_graph::vgg;

    const ALL: Sections = Sections { tensors: true, initializers: true };

    fn tiny() -> ModelSummary {
        onnx_graph::inspect(&vgg::tiny_vgg(7)).unwrap()
    }

    fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
        text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    }

    #[test]
    fn the_listing_shows_shapes_ops_initializers_totals_and_the_cut_point() {
        let text = render("tiny.onnx", &tiny(), None, ALL);

        assert!(text.starts_with("tiny.onnx\n  IR 8, opsets ai.onnx 13, producer onnx-graph"), "{text}");
        assert!(text.contains("  37 nodes, 32 initializers, 17,590 parameters\n"), "{text}");
        let input = line_with(&text, " data");
        assert!(input.contains("float") && input.contains("[N, 3, 32, 32]"), "{input}");
        let conv = line_with(&text, "/features/features.0/Conv_output_0");
        assert_eq!(conv.split_whitespace().collect::<Vec<_>>()[..3], ["0", "Conv", "float"]);
        assert!(conv.contains("[N, 4, 32, 32]"), "{conv}");
        let cut = line_with(&text, &format!("{}   <- likely cut point (feeds Flatten)", vgg::CONV_BASE_OUTPUT));
        assert!(cut.contains("MaxPool") && cut.contains("[N, 16, 1, 1]"), "{cut}");
        let weight = line_with(&text, "features.28.weight");
        assert!(
            weight.contains("[16, 16, 3, 3]") && weight.contains("2,304") && weight.ends_with("(Conv)"),
            "{weight}"
        );
        let hints: Vec<&str> = text.split("likely cut points").nth(1).unwrap().lines().skip(1).collect();
        assert_eq!(hints, [format!("  {} [N, 16, 1, 1]", vgg::CONV_BASE_OUTPUT)]);
    }

    #[test]
    fn grep_and_the_only_flags_narrow_the_listing() {
        let text = render("tiny.onnx", &tiny(), Some("features.28"), ALL);
        assert!(
            text.contains("names containing \"features.28\": 1 of 37 node outputs, 2 of 32 initializers"),
            "{text}"
        );
        assert!(text.contains("features.28.bias") && text.contains("/features/features.28/Conv_output_0"));
        assert!(!text.contains("features.26.weight") && !text.contains(" data "), "{text}");
        assert!(!text.contains("graph inputs"), "empty sections are left out when filtering: {text}");

        let weights = render("tiny.onnx", &tiny(), None, Sections { tensors: false, initializers: true });
        assert!(weights.contains("features.0.weight") && !weights.contains("Conv_output_0"), "{weights}");
        let tensors = render("tiny.onnx", &tiny(), None, Sections { tensors: true, initializers: false });
        assert!(!tensors.contains("features.0.weight") && tensors.contains("Conv_output_0"), "{tensors}");
    }

    #[test]
    fn a_missing_or_broken_file_is_named_with_the_reason() {
        let folder = tempfile::tempdir().unwrap();
        let args = |file: &str| Args { file: file.into(), grep: None, initializers_only: false, tensors_only: false };
        let err = format!("{:#}", run(&args("missing.onnx"), folder.path()).unwrap_err());
        assert!(err.contains(&folder.path().join("missing.onnx").display().to_string()), "{err}");
        assert!(err.contains("No such file"), "{err}");

        std::fs::write(folder.path().join("broken.onnx"), b"\xff\xff\xff not protobuf").unwrap();
        let err = format!("{:#}", run(&args("broken.onnx"), folder.path()).unwrap_err());
        assert!(err.contains("broken.onnx") && err.contains("not an ONNX model"), "{err}");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(138_357_544), "138,357,544");
    }
}
