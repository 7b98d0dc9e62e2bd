//! The stages the conductor runs, and their command lines.

use std::ffi::{OsStr, OsString};
use std::fmt;

use serde::Serialize;

/// One batch step, run as its binary (named like the stage, found in
/// `Options::bin_dir`). In run order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Ingest,
    Features,
    Head,
    Finetune,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Ingest, Stage::Features, Stage::Head, Stage::Finetune];

    /// As in `run.json`, `--force` and the log names.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Features => "features",
            Stage::Head => "head",
            Stage::Finetune => "finetune",
        }
    }

    /// The stage's program (the `head-cli` crate's binary is `head`).
    pub fn binary(self) -> &'static str {
        self.name()
    }

    /// The folder of its output inside a run folder.
    pub fn output_dir(self) -> &'static str {
        match self {
            Stage::Ingest => "dataset",
            other => other.name(),
        }
    }

    /// The file whose presence says the stage wrote its output.
    pub fn product(self) -> &'static str {
        match self {
            Stage::Ingest => contracts::dataset::INFO_FILE,
            Stage::Features => contracts::features::FEATURES_FILE,
            Stage::Head => contracts::head::WEIGHTS_FILE,
            Stage::Finetune => contracts::finetune::SUMMARY_FILE,
        }
    }

    /// Whether a failed or killed run of the stage continues from what it
    /// left (fine-tuning resumes from its last completed epoch).
    pub fn resumes(self) -> bool {
        self == Stage::Finetune
    }

    /// `<stage>.log` in the run folder's `logs/`.
    pub fn log_file(self) -> String {
        format!("{}.log", self.name())
    }

    /// `<stage>.toml` in the run folder's `logs/`: the settings table the
    /// stage was given with `--config`.
    pub fn settings_file(self) -> String {
        format!("{}.toml", self.name())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Not a stage name; says which are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no stage is called {given:?}; the stages are {}", Stage::ALL.map(Stage::name).join(", "))]
pub struct UnknownStage {
    pub given: String,
}

impl std::str::FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL.into_iter().find(|stage| stage.name() == s).ok_or_else(|| UnknownStage { given: s.to_owned() })
    }
}

/// A stage's command line: flags are text, values (paths above all) stay
/// `OsString`, passed to the program as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StageArgs(Vec<OsString>);

impl StageArgs {
    pub fn new() -> StageArgs {
        StageArgs::default()
    }

    /// A bare word: a subcommand (`train`) or a switch (`--no-augment`).
    pub fn word(mut self, word: &str) -> StageArgs {
        self.0.push(word.into());
        self
    }

    /// `flag value`.
    pub fn opt(mut self, flag: &str, value: impl AsRef<OsStr>) -> StageArgs {
        self.0.extend([OsString::from(flag), value.as_ref().to_owned()]);
        self
    }

    /// `flag value` when there is a value.
    pub fn opt_some(self, flag: &str, value: Option<impl AsRef<OsStr>>) -> StageArgs {
        match value {
            Some(value) => self.opt(flag, value),
            None => self,
        }
    }

    pub fn as_slice(&self) -> &[OsString] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_from_their_names_and_say_which_exist() {
        for stage in Stage::ALL {
            assert_eq!(stage.name().parse::<Stage>(), Ok(stage));
        }
        let err = "heads".parse::<Stage>().unwrap_err().to_string();
        assert_eq!(err, "no stage is called \"heads\"; the stages are ingest, features, head, finetune");
        assert_eq!(Stage::Ingest.output_dir(), "dataset");
        assert_eq!(Stage::Finetune.product(), "finetune.json");
    }

    #[test]
    fn arguments_keep_paths_as_they_are() {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::path::Path::new(OsStr::from_bytes(b"/data/caf\xe9"));
        let args = StageArgs::new()
            .word("train")
            .opt("--out", odd)
            .opt_some("--seed", Some("3"))
            .opt_some("--cache", None::<&str>);
        let expected: Vec<OsString> = vec!["train".into(), "--out".into(), odd.into(), "--seed".into(), "3".into()];
        assert_eq!(args.as_slice(), expected.as_slice());
    }
}
