//! Writing predictions: a human-readable table, CSV (`path,rank,class,probability`)
//! or JSON (`[{path, top_k: [{class, probability}]}]`), rendered as text;
//! the binary prints it or writes it with `atomic_file::write`.

use std::path::Path;

use serde::Serialize;

use crate::Prediction;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// One block per image: the path, then `rank. class probability` lines.
    #[default]
    Table,
    /// `path,rank,class,probability`, one row per (image, rank); rank from 1.
    Csv,
    /// An array of `{"path", "top_k": [{"class", "probability"}]}`.
    Json,
}

/// One ranked class of a prediction, as written out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedClass<'a> {
    pub class: &'a str,
    pub probability: f32,
}

#[derive(Serialize)]
struct JsonPrediction<'a> {
    path: String,
    top_k: Vec<RankedClass<'a>>,
}

fn ranked<'a>(prediction: &Prediction, class_names: &'a [String], k: usize) -> Vec<RankedClass<'a>> {
    prediction
        .top_k(k)
        .into_iter()
        .map(|(index, probability)| RankedClass {
            class: class_names.get(index).map(String::as_str).unwrap_or("?"),
            probability,
        })
        .collect()
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Renders the top `k` classes of each prediction (`class_names` indexed
/// by class) in `format`. Probabilities are written in full (the shortest
/// text that reads back as the same f32) in CSV and JSON, to 4 decimals in
/// the table.
pub fn render(format: Format, predictions: &[Prediction], class_names: &[String], k: usize) -> Vec<u8> {
    match format {
        Format::Table => render_table(predictions, class_names, k).into_bytes(),
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(["path", "rank", "class", "probability"]).expect("writing to memory");
            for prediction in predictions {
                let path = path_text(&prediction.path);
                for (rank, r) in ranked(prediction, class_names, k).iter().enumerate() {
                    let record = [path.clone(), (rank + 1).to_string(), r.class.to_owned(), r.probability.to_string()];
                    writer.write_record(&record).expect("writing to memory");
                }
            }
            writer.into_inner().expect("writing to memory")
        }
        Format::Json => {
            let rows: Vec<JsonPrediction> = predictions
                .iter()
                .map(|p| JsonPrediction { path: path_text(&p.path), top_k: ranked(p, class_names, k) })
                .collect();
            let mut out = serde_json::to_vec_pretty(&rows).expect("predictions serialise");
            out.push(b'\n');
            out
        }
    }
}

fn render_table(predictions: &[Prediction], class_names: &[String], k: usize) -> String {
    let width = class_names.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for prediction in predictions {
        out.push_str(&path_text(&prediction.path));
        out.push('\n');
        for (rank, r) in ranked(prediction, class_names, k).iter().enumerate() {
            out.push_str(&format!("  {:>2}. {:<width$}  {:.4}\n", rank + 1, r.class, r.probability));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<Prediction>, Vec<String>) {
        let predictions = vec![
            Prediction { path: "a/x.png".into(), probabilities: vec![0.25, 0.5, 0.25] },
            Prediction { path: "b, y.jpg".into(), probabilities: vec![0.7, 0.1, 0.2] },
        ];
        (predictions, ["cats", "dogs", "owls"].map(String::from).to_vec())
    }

    #[test]
    fn csv_has_one_row_per_rank() {
        let (predictions, classes) = sample();
        let text = String::from_utf8(render(Format::Csv, &predictions, &classes, 2)).unwrap();
        assert_eq!(text, "path,rank,class,probability\na/x.png,1,dogs,0.5\na/x.png,2,cats,0.25\n\"b, y.jpg\",1,cats,0.7\n\"b, y.jpg\",2,owls,0.2\n");
    }

    #[test]
    fn json_and_table_list_top_k() {
        let (predictions, classes) = sample();
        let json: serde_json::Value = serde_json::from_slice(&render(Format::Json, &predictions, &classes, 1)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"path": "a/x.png", "top_k": [{"class": "dogs", "probability": 0.5}]},
                {"path": "b, y.jpg", "top_k": [{"class": "cats", "probability": 0.7}]},
            ])
        );
        let table = String::from_utf8(render(Format::Table, &predictions, &classes, 3)).unwrap();
        assert!(table.starts_with("a/x.png\n   1. dogs  0.5000\n   2. cats  0.2500\n   3. owls  0.2500\n"), "{table}");
    }
}
