//! The errors of reading a spec, a dataset spec or an experiment, and the
//! one message format they share: `<what> <file>: line L, column C: <why>`.
//!
//! Every message is whole and no error here has a source, so an error chain
//! (anyhow's `{:#}`) prints it once.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A spec that failed to parse or validate.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not TOML, or a value that does not fit its field: where (line and
    /// column, from 1, when the parser knows) and why.
    #[error("{}{message}", at.map(|(line, column)| format!("line {line}, column {column}: ")).unwrap_or_default())]
    Toml { at: Option<(usize, usize)>, message: String },
    /// Parsed, but its values do not go together.
    #[error("{0}")]
    Invalid(String),
}

impl SpecError {
    /// The error of parsing `text`: the parser's own message (without its
    /// multi-line excerpt) and the line and column of where it points.
    pub fn toml(text: &str, error: &toml::de::Error) -> SpecError {
        let at = error.span().map(|span| line_and_column(text, span.start));
        SpecError::Toml { at, message: error.message().trim_end().to_owned() }
    }

    /// This error in the file `path`; `what` says what the file is (`model
    /// spec`, `dataset spec`, `experiment`).
    pub fn in_file(self, what: &'static str, path: &Path) -> FileError {
        FileError { what, path: path.to_path_buf(), error: self }
    }
}

/// A spec file that failed to parse or validate: what it is, which file,
/// then [`SpecError`]'s message.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {error}", path.display())]
pub struct FileError {
    pub what: &'static str,
    pub path: PathBuf,
    pub error: SpecError,
}

/// Parses TOML `text` into `T`; an error says the line and column.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    toml::from_str(text).map_err(|e| SpecError::toml(text, &e))
}

/// Line and column (both from 1, the column in characters) of byte `offset`
/// in `text`; an offset past the end is the end.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DatasetSpec, ModelSpec};

    #[test]
    fn lines_and_columns_count_from_one_in_characters() {
        assert_eq!(line_and_column("abc", 0), (1, 1));
        assert_eq!(line_and_column("a\nbc", 3), (2, 2));
        assert_eq!(line_and_column("é = 1\nx", 4), (1, 4));
        assert_eq!(line_and_column("a\n", 99), (2, 1));
    }

    /// The message of `error` in `file`, checked for the parts every spec
    /// error must have; returns it for more checks.
    fn assert_located(error: SpecError, line: usize, column: usize) -> String {
        let message = error.in_file("model spec", Path::new("specs/m.toml")).to_string();
        let at = format!("model spec specs/m.toml: line {line}, column {column}: ");
        assert!(message.starts_with(&at), "{at:?} starts {message:?}");
        assert!(!message.contains('\n'), "one line: {message:?}");
        message
    }

    #[test]
    fn a_syntax_error_is_located_and_said_once() {
        let text = "name = \"m\"\n[input\nname = \"data\"\n";
        let message = assert_located(ModelSpec::from_toml(text).unwrap_err(), 2, 7);
        let why = &message[message.rfind(": ").unwrap() + 2..];
        assert!(!why.is_empty() && message.matches(why).count() == 1, "{message}");
        assert!(!message.contains("TOML parse error"), "the parser's excerpt is left out: {message}");
    }

    #[test]
    fn a_value_that_does_not_fit_is_located_at_the_value() {
        let spec = include_str!("../../../data-specs/models/tiny-vgg.toml");
        let line = spec.lines().position(|l| l.starts_with("shape = ")).unwrap() + 1;
        let bad = spec.replace("shape = [16, 1, 1]", "shape = [16, 1]");
        let message = assert_located(ModelSpec::from_toml(&bad).unwrap_err(), line, 9);
        assert_eq!(message.matches("conv_base.shape [16, 1] has 2 dimensions").count(), 1, "{message}");

        let message = assert_located(DatasetSpec::from_toml("root = \"x\"\nseed = \"one\"\n").unwrap_err(), 2, 8);
        assert!(message.contains("invalid type: string \"one\", expected u64"), "{message}");
    }
}
