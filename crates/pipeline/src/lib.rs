//! The conductor: runs an [`Experiment`]'s stages ([`Stage`]: ingest →
//! features → head → finetune) as their crates' binaries, with files between
//! them, then writes the report. It decides, spawns and records; the work
//! is the stages' (the demo images and the image digest are ingest's,
//! choosing the model is models').
//!
//! - Every stage output lives in the stage store (see [`store`]) under a
//!   fingerprint of everything it depends on: its settings, the
//!   fingerprints of the stages before it, and the content of its inputs.
//!   A stage whose output is complete for its fingerprint is skipped and
//!   says so; `force` reruns one.
//! - Each run gets `runs/<name>-<timestamp>/`: `experiment.toml` (resolved),
//!   `run.json`, `logs/<stage>.log`, `logs/<stage>.toml` (the settings given
//!   to `head` and `finetune` with `--config`), hard-linked copies of each
//!   stage's output (`dataset/`, `features/`, `head/`, `finetune/`), and the
//!   report. Nothing in it is written by a later run.
//! - A failing stage stops the run with its error and log path; the next run
//!   skips what completed and resumes fine-tuning from its last epoch.
//! - Several conductors may share one store: each entry is produced under
//!   its lock and published whole, and a skip trusts an entry only after
//!   checking its files against its marker (see [`store`]). [`gc`] removes
//!   what no run refers to.

mod conductor;
pub mod experiment;
pub mod gc;
mod process;
mod report_input;
pub mod stage;
pub mod store;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use conductor::{Conductor, Product};
pub use contracts::run::{RunRecord, StageMarker, StageRecord, StageStatus, RUN_FILE};
pub use experiment::Experiment;
pub use gc::{gc, GcOptions, GcReport};
pub use process::{stop_stages_on_signal, Failure};
pub use stage::{Stage, StageArgs, UnknownStage};

/// Bumped when a stage's command line, settings or output layout changes,
/// so old store entries are not mistaken for new ones. 2: the settings
/// tables (`--config`) and typed fingerprints. 3: ingest's stratified
/// split and stored sizes that never enlarge (old datasets would keep the
/// old split), features' rejected vectors.
const STAGE_FORMAT: u32 = 3;

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub experiment: Experiment,
    /// Holds the run folders and `.store/`.
    pub runs_root: PathBuf,
    /// Where the stage binaries (`ingest`, `features`, `head`, `finetune`) are.
    pub bin_dir: PathBuf,
    /// Stages to rerun even if up to date, by name ([`Stage`]'s `FromStr`:
    /// an unknown name is an error listing the stages).
    pub force: Vec<String>,
    /// The feature cache (embeddings and prefix activations); default: the stages' default.
    pub features_cache: Option<PathBuf>,
    /// Copy the stages' output to standard error as they run.
    pub echo: bool,
}

/// What a finished run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub record: RunRecord,
    pub report: report::Rendered,
    pub head_test_accuracy: Option<f64>,
    pub finetune_test_accuracy: Option<f64>,
}

/// A stage failed: its name, why, and the log to read.
#[derive(Debug)]
pub struct StageFailed {
    /// The stage's name ([`Stage::name`]).
    pub stage: String,
    pub reason: Failure,
    pub log: PathBuf,
    pub run_dir: PathBuf,
    /// The log's last lines.
    pub tail: String,
}

impl std::fmt::Display for StageFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (stage, reason, log, tail) = (&self.stage, &self.reason, self.log.display(), &self.tail);
        write!(f, "stage {stage} failed ({reason}); its log: {log}\n{tail}")
    }
}

/// The message says the reason; its cause (an I/O error) is the source.
impl std::error::Error for StageFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.reason)
    }
}

pub fn run(options: &Options) -> Result<Outcome> {
    let clock = Instant::now();
    let force = options.force.iter().map(|name| name.parse::<Stage>()).collect::<Result<Vec<_>, _>>()?;
    let experiment = &options.experiment;
    let model = choose_model(experiment)?;
    let mut conductor = Conductor::open(options, force, &model.choice)?;
    let dataset = ingest_images(&mut conductor, experiment)?;
    let features = extract_features(&mut conductor, experiment, &dataset, &model)?;
    let head = train_head(&mut conductor, experiment, &features)?;
    if experiment.finetune.enabled {
        finetune_model(&mut conductor, experiment, &dataset, &head, &model)?;
    }
    finish(conductor, experiment, &model.choice.spec, clock)
}

/// The model spec the stages get, and a digest of its bytes.
struct ChosenModel {
    choice: models::ModelChoice,
    digest: String,
}

fn choose_model(experiment: &Experiment) -> Result<ChosenModel> {
    let cache = contracts::cache_dir()?;
    let (primary, fallback) = (&experiment.model.spec, experiment.model.fallback.as_deref());
    let choice = models::choose_model(primary, fallback, &cache, &progress::Terminal::new())?;
    if let Some(note) = &choice.note {
        eprintln!("{note}");
    }
    // The spec's bytes, and a `path` source's file content (an edited file re-runs features).
    let digest = models::source_digest(&choice.spec, &cache)?;
    Ok(ChosenModel { digest, choice })
}

fn ingest_images(conductor: &mut Conductor, experiment: &Experiment) -> Result<Product> {
    let images = image_source(experiment, conductor.store())?;
    let data = &experiment.data;
    let args = images
        .args
        .opt_some("--shorter-side", data.shorter_side.map(|side| side.to_string()))
        .opt_some("--seed", data.seed.map(|seed| seed.to_string()));
    let fingerprint = fingerprint(Stage::Ingest, &(&images.digest, &args));
    conductor.stage(Stage::Ingest, fingerprint, |out| args.clone().opt("--out", out))
}

fn extract_features(
    conductor: &mut Conductor,
    experiment: &Experiment,
    dataset: &Product,
    model: &ChosenModel,
) -> Result<Product> {
    let settings = &experiment.features;
    // The batch size changes nothing in the output, so it is not in the fingerprint.
    let fingerprint = fingerprint(Stage::Features, &(&dataset.fingerprint, &model.digest, &settings.dtype));
    let cache = conductor.features_cache();
    conductor.stage(Stage::Features, fingerprint, |out| {
        StageArgs::new()
            .opt("--dataset", &dataset.dir)
            .opt("--model", &model.choice.spec)
            .opt("--out", out)
            .opt("--batch", settings.batch.to_string())
            .opt("--dtype", &settings.dtype)
            .opt_some("--cache", cache)
    })
}

fn train_head(conductor: &mut Conductor, experiment: &Experiment, features: &Product) -> Result<Product> {
    let settings = &experiment.head;
    let config = conductor.write_settings(Stage::Head, settings)?;
    let fingerprint = fingerprint(Stage::Head, &(&features.fingerprint, settings));
    conductor.stage(Stage::Head, fingerprint, |out| {
        StageArgs::new().word("train").opt("--features", &features.dir).opt("--out", out).opt("--config", &config)
    })
}

fn finetune_model(
    conductor: &mut Conductor,
    experiment: &Experiment,
    dataset: &Product,
    head: &Product,
    model: &ChosenModel,
) -> Result<Product> {
    let settings = &experiment.finetune.settings;
    let config = conductor.write_settings(Stage::Finetune, settings)?;
    let fingerprint = fingerprint(Stage::Finetune, &(&head.fingerprint, &dataset.fingerprint, &model.digest, settings));
    let cache = conductor.features_cache();
    conductor.stage(Stage::Finetune, fingerprint, |out| {
        StageArgs::new()
            .word("train")
            .opt("--dataset", &dataset.dir)
            .opt("--head", &head.dir)
            .opt("--model", &model.choice.spec)
            .opt("--out", out)
            .opt("--config", &config)
            .opt_some("--features-cache", cache)
    })
}

/// Renders the report and completes the run record.
fn finish(conductor: Conductor, experiment: &Experiment, model_spec: &Path, clock: Instant) -> Result<Outcome> {
    let (run_dir, mut record, _entries_in_use) = conductor.into_parts();
    let input = report_input::build(&run_dir, &record, experiment, model_spec)?;
    atomic_file::write(&run_dir.join("report.json"), &serde_json::to_vec_pretty(&input)?)?;
    let rendered = report::render(&input, &run_dir)?;
    record.seconds = clock.elapsed().as_secs_f64();
    record.report = Some(rendered.html.clone());
    conductor::write_run(&run_dir, &record)?;
    Ok(Outcome {
        run_dir,
        record,
        report: rendered,
        head_test_accuracy: input.head_test.as_ref().map(|e| e.accuracy),
        finetune_test_accuracy: input.finetune_test.as_ref().map(|e| e.accuracy),
    })
}

/// The images ingest reads: its arguments naming them, and a digest of
/// their content (for the fingerprint).
struct ImageSource {
    args: StageArgs,
    digest: String,
}

fn image_source(experiment: &Experiment, store: &Path) -> Result<ImageSource> {
    let data = &experiment.data;
    if let Some(demo) = &data.demo {
        let dir = ingest::source::demo_images(store, demo).context("generating the demo images")?;
        // The images are a function of their settings: no need to hash them.
        return Ok(ImageSource { args: StageArgs::new().opt("--root", dir), digest: demo.fingerprint() });
    }
    if let Some(root) = &data.root {
        let text = root
            .to_str()
            .with_context(|| format!("data.root {}: ingest reads folders whose path is valid UTF-8", root.display()))?;
        let digest = ingest::source::content_digest(&spec::DatasetSpec::for_root(text))
            .with_context(|| format!("listing the images of data.root {}", root.display()))?;
        return Ok(ImageSource { args: StageArgs::new().opt("--root", root), digest });
    }
    let path = data.spec.as_ref().expect("validated: one source");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Relative paths in the spec are relative to its file, as ingest reads them.
    let dataset_spec = ingest::source::read_spec(path)?;
    let content = ingest::source::content_digest(&dataset_spec)
        .with_context(|| format!("listing the images of {}", path.display()))?;
    let digest = spec::fingerprint("pipeline-dataset-spec", &(&text, content)).0;
    Ok(ImageSource { args: StageArgs::new().opt("--spec", path), digest })
}

fn fingerprint<T: Serialize>(stage: Stage, inputs: &T) -> String {
    spec::fingerprint(&format!("pipeline-stage-{stage}"), &(STAGE_FORMAT, env!("CARGO_PKG_VERSION"), inputs)).0
}
