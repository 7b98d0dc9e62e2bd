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
    #[serde(serialize_with = "serialize_probability")]
    pub probability: f32,
}

/// Significant digits of a probability in CSV and JSON: more than a
/// softmax's f32 means, and short enough to read.
pub const SIGNIFICANT_DIGITS: usize = 6;

/// Below `1e-4` (exponent under -4) a probability is written `1.40832e-40`:
/// in plain decimals it would be mostly zeros.
const SMALLEST_PLAIN_EXPONENT: i32 = -4;

/// `p` to [`SIGNIFICANT_DIGITS`] significant digits, trailing zeros dropped:
/// `0.5`, `0.123457`, `1`, `0.00012345`, `1.40832e-40`.
pub fn probability_text(p: f32) -> String {
    if !p.is_finite() {
        return p.to_string();
    }
    if p == 0.0 {
        return "0".to_owned();
    }
    // Rounded first, so the exponent is the rounded value's (0.99999994 is 1).
    let scientific = format!("{:.*e}", SIGNIFICANT_DIGITS - 1, f64::from(p));
    let (mantissa, exponent) = scientific.split_once('e').expect("`{:e}` writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    if !(SMALLEST_PLAIN_EXPONENT..SIGNIFICANT_DIGITS as i32).contains(&exponent) {
        return format!("{}e{exponent}", without_trailing_zeros(mantissa));
    }
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let plain = match usize::try_from(exponent) {
        Ok(integer_digits) => format!("{}.{}", &digits[..=integer_digits], &digits[integer_digits + 1..]),
        Err(_) => format!("0.{}{digits}", "0".repeat((-exponent - 1) as usize)),
    };
    let sign = if p < 0.0 { "-" } else { "" };
    format!("{sign}{}", without_trailing_zeros(&plain))
}

fn without_trailing_zeros(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

/// JSON numbers with [`probability_text`]'s digits: the nearest f64 to that
/// decimal, which serde_json writes back as it (a valid JSON number).
fn serialize_probability<S: serde::Serializer>(p: &f32, serializer: S) -> Result<S::Ok, S::Error> {
    match probability_text(*p).parse::<f64>() {
        Ok(rounded) if rounded.is_finite() => serializer.serialize_f64(rounded),
        // NaN and infinities have no JSON number; serde_json writes null.
        _ => serializer.serialize_f32(*p),
    }
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
/// by class) in `format`. Probabilities are written to
/// [`SIGNIFICANT_DIGITS`] significant digits in CSV and JSON (see
/// [`probability_text`]), to 4 decimals in the table.
pub fn render(format: Format, predictions: &[Prediction], class_names: &[String], k: usize) -> Vec<u8> {
    match format {
        Format::Table => render_table(predictions, class_names, k).into_bytes(),
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(["path", "rank", "class", "probability"]).expect("writing to memory");
            for prediction in predictions {
                let path = path_text(&prediction.path);
                for (rank, r) in ranked(prediction, class_names, k).iter().enumerate() {
                    let record =
                        [path.clone(), (rank + 1).to_string(), r.class.to_owned(), probability_text(r.probability)];
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

    #[test]
    fn probabilities_have_six_significant_digits_and_tiny_ones_an_exponent() {
        for (p, text) in [
            (1.0, "1"),
            (0.999_999_94, "1"),
            (0.5, "0.5"),
            (0.7, "0.7"),
            (0.123_456_79, "0.123457"),
            (0.012_345_678, "0.0123457"),
            (1.5e-4, "0.00015"),
            (1.0e-4, "0.0001"),
            (9.999_9e-5, "9.9999e-5"),
            (1.234_567_8e-7, "1.23457e-7"),
            (1.408_32e-40, "1.40832e-40"),
            (0.0, "0"),
        ] {
            assert_eq!(probability_text(p), text, "{p:e}");
            let back: f32 = text.parse().unwrap();
            assert!((back - p).abs() <= p * 5e-6, "{text} reads back near {p:e}");
        }
    }

    #[test]
    fn tiny_normal_and_certain_probabilities_in_csv_and_json() {
        let predictions =
            vec![Prediction { path: "t.png".into(), probabilities: vec![1.408_32e-40, 0.123_456_79, 1.0] }];
        let classes = ["a", "b", "c"].map(String::from).to_vec();
        let csv = String::from_utf8(render(Format::Csv, &predictions, &classes, 3)).unwrap();
        assert_eq!(csv, "path,rank,class,probability\nt.png,1,c,1\nt.png,2,b,0.123457\nt.png,3,a,1.40832e-40\n");

        let json = String::from_utf8(render(Format::Json, &predictions, &classes, 3)).unwrap();
        assert!(
            json.contains("\"probability\": 0.123457\n") && json.contains("\"probability\": 1.40832e-40\n"),
            "{json}"
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let probabilities: Vec<f64> =
            value[0]["top_k"].as_array().unwrap().iter().map(|c| c["probability"].as_f64().unwrap()).collect();
        assert_eq!(probabilities, [1.0, 0.123457, 1.40832e-40]);
    }
}
