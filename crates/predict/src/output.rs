//! Writing predictions: a human-readable table, CSV (`path,rank,class,probability`)
//! or JSON (`[{path, top_k: [{class, probability}]}]`), streamed one
//! prediction at a time by [`Writer`] (the binary writes into a temporary
//! sibling renamed into place at the end), or rendered at once by [`render`].

use std::io::Write;
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
/// [`probability_text`]), to 4 decimals in the table. The same bytes as
/// [`Writer`] streams.
pub fn render(format: Format, predictions: &[Prediction], class_names: &[String], k: usize) -> Vec<u8> {
    let mut writer = Writer::new(format, Vec::new(), class_names, k);
    let written = predictions.iter().try_for_each(|p| writer.write(p)).and_then(|()| writer.finish());
    // Writing to memory cannot fail.
    written.unwrap_or_default()
}

/// Writes predictions one at a time, in `format`, to `out`, keeping none:
/// the bytes are those [`render`] gives for all of them. Nothing is
/// written before the first prediction (no CSV header, no `[`), so a run
/// that predicts nothing leaves `out` untouched until [`Writer::finish`].
pub struct Writer<'a, W: Write> {
    format: Format,
    out: W,
    class_names: &'a [String],
    k: usize,
    written: u64,
    class_width: usize,
}

impl<'a, W: Write> Writer<'a, W> {
    pub fn new(format: Format, out: W, class_names: &'a [String], k: usize) -> Writer<'a, W> {
        Writer {
            format,
            out,
            class_names,
            k,
            written: 0,
            class_width: class_names.iter().map(|c| c.chars().count()).max().unwrap_or(0),
        }
    }

    /// How many predictions were written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes one prediction.
    pub fn write(&mut self, prediction: &Prediction) -> std::io::Result<()> {
        let first = self.written == 0;
        self.written += 1;
        match self.format {
            Format::Table => {
                self.raw(render_table_entry(prediction, self.class_names, self.k, self.class_width).as_bytes())
            }
            Format::Csv => {
                // This prediction's rows, quoted by the csv crate.
                let mut rows = csv::WriterBuilder::new().buffer_capacity(256).from_writer(Vec::new());
                if first {
                    rows.write_record(CSV_HEADER)?;
                }
                let path = path_text(&prediction.path);
                for (rank, r) in ranked(prediction, self.class_names, self.k).iter().enumerate() {
                    let rank = (rank + 1).to_string();
                    let probability = probability_text(r.probability);
                    rows.write_record([path.as_str(), rank.as_str(), r.class, probability.as_str()])?;
                }
                let rows = rows.into_inner().map_err(|e| std::io::Error::other(e.error().to_string()))?;
                self.raw(&rows)
            }
            Format::Json => {
                let entry = JsonPrediction {
                    path: path_text(&prediction.path),
                    top_k: ranked(prediction, self.class_names, self.k),
                };
                let text = serde_json::to_string_pretty(&entry).map_err(std::io::Error::other)?;
                // An array element in serde_json's pretty output: one level
                // deeper (its strings hold no raw newlines: JSON escapes them).
                let mut element = String::with_capacity(text.len() + 64);
                element.push_str(if first { "[\n" } else { ",\n" });
                for (i, line) in text.split('\n').enumerate() {
                    if i > 0 {
                        element.push('\n');
                    }
                    element.push_str("  ");
                    element.push_str(line);
                }
                self.raw(element.as_bytes())
            }
        }
    }

    /// Ends the document (with no predictions: the CSV header alone, or
    /// `[]`), flushes, and gives back the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        match (self.format, self.written) {
            (Format::Table, _) => {}
            (Format::Csv, 0) => self.raw(format!("{}\n", CSV_HEADER.join(",")).as_bytes())?,
            (Format::Csv, _) => {}
            (Format::Json, 0) => self.raw(b"[]\n")?,
            (Format::Json, _) => self.raw(b"\n]\n")?,
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)
    }
}

const CSV_HEADER: [&str; 4] = ["path", "rank", "class", "probability"];

fn render_table_entry(prediction: &Prediction, class_names: &[String], k: usize, width: usize) -> String {
    let mut out = path_text(&prediction.path);
    out.push('\n');
    for (rank, r) in ranked(prediction, class_names, k).iter().enumerate() {
        out.push_str(&format!("  {:>2}. {:<width$}  {:.4}\n", rank + 1, r.class, r.probability));
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

    /// The whole-array rendering the streamed JSON must equal byte for byte.
    fn json_at_once(predictions: &[Prediction], class_names: &[String], k: usize) -> Vec<u8> {
        let rows: Vec<JsonPrediction> = predictions
            .iter()
            .map(|p| JsonPrediction { path: path_text(&p.path), top_k: ranked(p, class_names, k) })
            .collect();
        let mut out = serde_json::to_vec_pretty(&rows).unwrap();
        out.push(b'\n');
        out
    }

    #[test]
    fn streamed_json_equals_the_pretty_array() {
        let (mut predictions, classes) = sample();
        predictions
            .push(Prediction { path: "odd \"name\"\nwith newline.png".into(), probabilities: vec![0.1, 0.2, 0.7] });
        for n in 0..=predictions.len() {
            for k in [1, 3] {
                let streamed = render(Format::Json, &predictions[..n], &classes, k);
                assert_eq!(
                    String::from_utf8(streamed).unwrap(),
                    String::from_utf8(json_at_once(&predictions[..n], &classes, k)).unwrap(),
                    "{n} predictions, top {k}"
                );
            }
        }
    }

    #[test]
    fn the_writer_writes_nothing_before_the_first_prediction() {
        let (predictions, classes) = sample();
        for format in [Format::Table, Format::Csv, Format::Json] {
            let mut writer = Writer::new(format, Vec::new(), &classes, 2);
            assert_eq!(writer.out, b"", "{format:?}");
            writer.write(&predictions[0]).unwrap();
            assert_eq!(writer.written(), 1);
            let after_one = writer.out.len();
            assert!(after_one > 0, "{format:?} writes as it goes");
            writer.write(&predictions[1]).unwrap();
            assert!(writer.out.len() > after_one, "{format:?} writes as it goes");
            assert_eq!(writer.finish().unwrap(), render(format, &predictions, &classes, 2), "{format:?}");
        }
        assert_eq!(render(Format::Csv, &[], &classes, 2), b"path,rank,class,probability\n");
        assert_eq!(render(Format::Table, &[], &classes, 2), b"");
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
