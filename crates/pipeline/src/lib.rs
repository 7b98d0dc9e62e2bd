//! The conductor: runs an [`Experiment`]'s stages (ingest → features →
//! head → finetune) as their crates' binaries, with files between them, then
//! writes the report.
//!
//! - Every stage output lives in the stage store (see [`store`]) under a
//!   fingerprint of everything it depends on: its settings, the
//!   fingerprints of the stages before it, and the content of its inputs.
//!   A stage whose output is complete for its fingerprint is skipped and
//!   says so; `force` reruns one.
//! - Each run gets `runs/<name>-<timestamp>/`: `experiment.toml` (resolved),
//!   `run.json`, `logs/<stage>.log`, hard-linked copies of each stage's
//!   output (`dataset/`, `features/`, `head/`, `finetune/`), and the report.
//!   Nothing in it is written by a later run.
//! - A failing stage stops the run with its error and log path; the next run
//!   skips what completed and resumes fine-tuning from its last epoch.

pub mod experiment;
mod report_input;
pub mod store;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use experiment::Experiment;
pub use report::StageStatus;

/// Bumped when a stage's command line or output layout changes, so old
/// store entries are not mistaken for new ones.
const STAGE_FORMAT: u32 = 1;
pub const RUN_FILE: &str = "run.json";
pub const STAGES: [&str; 4] = ["ingest", "features", "head", "finetune"];

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub experiment: Experiment,
    /// Holds the run folders and `.store/`.
    pub runs_root: PathBuf,
    /// Where the stage binaries (`ingest`, `features`, `head`, `finetune`) are.
    pub bin_dir: PathBuf,
    /// Stages to rerun even if up to date.
    pub force: Vec<String>,
    /// The feature cache (embeddings and prefix activations); default: the stages' default.
    pub features_cache: Option<PathBuf>,
    /// Copy the stages' output to standard error as they run.
    pub echo: bool,
}

/// One stage in `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub status: StageStatus,
    pub seconds: f64,
    pub fingerprint: String,
    /// The stage's output in the store.
    pub output: PathBuf,
    pub log: PathBuf,
    pub note: String,
}

/// `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub name: String,
    pub started_at: String,
    pub model_spec: PathBuf,
    pub model_note: Option<String>,
    pub stages: Vec<StageRecord>,
    pub seconds: f64,
    pub report: Option<PathBuf>,
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
#[derive(Debug, thiserror::Error)]
#[error("stage {stage} failed ({reason}); its log: {}\n{tail}", log.display())]
pub struct StageFailed {
    pub stage: String,
    pub reason: String,
    pub log: PathBuf,
    pub run_dir: PathBuf,
    /// The log's last lines.
    pub tail: String,
}

pub fn run(options: &Options) -> Result<Outcome> {
    let clock = Instant::now();
    let experiment = &options.experiment;
    for stage in &options.force {
        if !STAGES.contains(&stage.as_str()) {
            bail!("--force {stage:?}: the stages are {}", STAGES.join(", "));
        }
    }
    let store = options.runs_root.join(".store");
    let started_at = chrono::Utc::now();
    let run_dir = new_run_dir(&options.runs_root, &experiment.name, &started_at)?;
    std::fs::create_dir_all(run_dir.join("logs"))?;
    atomic_file::write(&run_dir.join("experiment.toml"), experiment.to_toml().as_bytes())?;
    eprintln!("run folder: {}", run_dir.display());

    let (model_spec, model_note) = choose_model(experiment)?;
    let model_digest = spec::sha256_hex(&std::fs::read(&model_spec)?);
    let mut record = RunRecord {
        name: experiment.name.clone(),
        started_at: started_at.to_rfc3339(),
        model_spec: model_spec.clone(),
        model_note: model_note.clone(),
        stages: Vec::new(),
        seconds: 0.0,
        report: None,
    };
    let mut conductor = Conductor { options, store: &store, run_dir: &run_dir, record: &mut record };

    // ingest
    let (data_args, data_digest) = data_source(experiment, &store)?;
    let mut ingest_args = data_args;
    if let Some(side) = experiment.data.shorter_side {
        ingest_args.extend(["--shorter-side".into(), side.to_string()]);
    }
    if let Some(seed) = experiment.data.seed {
        ingest_args.extend(["--seed".into(), seed.to_string()]);
    }
    let ingest_fp = fingerprint("ingest", &(&data_digest, &ingest_args));
    let dataset = conductor.stage("ingest", &ingest_fp, "dataset.json", |out| {
        let mut args = ingest_args.clone();
        args.extend(["--out".into(), path_arg(out)]);
        args
    })?;

    // features
    let features_fp = fingerprint("features", &(&ingest_fp, &model_digest, &experiment.features.dtype));
    let features_cache: Vec<String> =
        options.features_cache.iter().flat_map(|c| ["--cache".to_owned(), path_arg(c)]).collect();
    let features = conductor.stage("features", &features_fp, "features.json", |out| {
        let mut args = vec!["--dataset".into(), path_arg(&dataset), "--model".into(), path_arg(&model_spec)];
        args.extend(["--out".into(), path_arg(out), "--batch".into(), experiment.features.batch.to_string()]);
        args.extend(["--dtype".into(), experiment.features.dtype.clone()]);
        args.extend(features_cache.iter().cloned());
        args
    })?;

    // head
    let head_settings = &experiment.head;
    let head_fp = fingerprint("head", &(&features_fp, head_settings));
    let head = conductor.stage("head", &head_fp, "head.safetensors", |out| {
        let hidden: Vec<String> = head_settings.hidden.iter().map(|h| h.to_string()).collect();
        vec![
            "train".into(),
            "--features".into(),
            path_arg(&features),
            "--out".into(),
            path_arg(out),
            "--epochs".into(),
            head_settings.epochs.to_string(),
            "--batch-size".into(),
            head_settings.batch_size.to_string(),
            format!("--hidden={}", hidden.join(",")),
            "--seed".into(),
            head_settings.seed.to_string(),
        ]
    })?;

    // finetune
    let ft = &experiment.finetune;
    if ft.enabled {
        let finetune_fp = fingerprint("finetune", &(&head_fp, &ingest_fp, &model_digest, ft));
        conductor.stage("finetune", &finetune_fp, "finetune.json", |out| {
            let mut args = vec!["train".into(), "--dataset".into(), path_arg(&dataset), "--head".into()];
            args.extend([path_arg(&head), "--model".into(), path_arg(&model_spec), "--out".into(), path_arg(out)]);
            args.extend(["--unfreeze".into(), ft.unfreeze.clone(), "--epochs".into(), ft.epochs.to_string()]);
            args.extend(["--batch-size".into(), ft.batch_size.to_string()]);
            args.extend(["--learning-rate".into(), ft.learning_rate.to_string()]);
            args.extend(["--warmup-steps".into(), ft.warmup_steps.to_string()]);
            args.extend(["--patience".into(), ft.patience.to_string(), "--seed".into(), ft.seed.to_string()]);
            args.extend(["--prefix".into(), ft.prefix.clone()]);
            if !ft.augment {
                args.push("--no-augment".into());
            }
            if let Some(cache) = &options.features_cache {
                args.extend(["--features-cache".into(), path_arg(cache)]);
            }
            args
        })?;
    }

    // report
    let input = report_input::build(&run_dir, &record, experiment, &model_spec)?;
    atomic_file::write(&run_dir.join("report.json"), &serde_json::to_vec_pretty(&input)?)?;
    let rendered = report::render(&input, &run_dir)?;
    record.seconds = clock.elapsed().as_secs_f64();
    record.report = Some(rendered.html.clone());
    write_run(&run_dir, &record)?;
    Ok(Outcome {
        run_dir,
        record,
        report: rendered,
        head_test_accuracy: input.head_test.as_ref().map(|e| e.accuracy),
        finetune_test_accuracy: input.finetune_test.as_ref().map(|e| e.accuracy),
    })
}

struct Conductor<'a> {
    options: &'a Options,
    store: &'a Path,
    run_dir: &'a Path,
    record: &'a mut RunRecord,
}

impl Conductor<'_> {
    /// Runs (or skips) one stage; returns its output folder in the store,
    /// which later stages read (stable, unlike a run folder a user may
    /// delete).
    fn stage(
        &mut self,
        name: &str,
        fingerprint: &str,
        product: &str,
        args: impl FnOnce(&Path) -> Vec<String>,
    ) -> Result<PathBuf> {
        let out = store::stage_dir(self.store, name, fingerprint);
        let log = self.run_dir.join("logs").join(format!("{name}.log"));
        let forced = self.options.force.iter().any(|f| f == name);
        let started = Instant::now();
        let (status, note) = match store::complete(&out, fingerprint).filter(|_| !forced) {
            Some(marker) => {
                let note = format!(
                    "up to date (fingerprint {}, made {} in {:.1} s)",
                    &fingerprint[..16],
                    marker.finished_at,
                    marker.seconds
                );
                std::fs::write(&log, format!("skipped: {note}\noutput: {}\n", out.display()))?;
                eprintln!("[{name}] skipped: {note}");
                (StageStatus::Skipped, note)
            }
            None => {
                if forced && out.exists() {
                    std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
                }
                std::fs::create_dir_all(&out)?;
                let args = args(&out);
                eprintln!("[{name}] running");
                let result = run_logged(&self.options.bin_dir.join(name), &args, &log, name, self.options.echo);
                let failure = match result {
                    Ok(()) if out.join(product).exists() => None,
                    Ok(()) => Some(format!("it exited successfully but wrote no {product}")),
                    Err(reason) => Some(reason),
                };
                if let Some(reason) = failure {
                    self.push(name, StageStatus::Failed, started, fingerprint, &out, &log, reason.clone());
                    write_run(self.run_dir, self.record)?;
                    return Err(StageFailed {
                        stage: name.to_owned(),
                        reason,
                        tail: tail(&log, 15),
                        log,
                        run_dir: self.run_dir.to_owned(),
                    }
                    .into());
                }
                let seconds = started.elapsed().as_secs_f64();
                let marker = store::Marker {
                    stage: name.to_owned(),
                    fingerprint: fingerprint.to_owned(),
                    seconds,
                    finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                };
                store::mark_complete(&out, &marker)?;
                eprintln!("[{name}] done in {seconds:.1} s");
                (StageStatus::Ran, String::new())
            }
        };
        let linked = self.run_dir.join(output_name(name));
        store::link_tree(&out, &linked)?;
        let note = report_input::stage_note(name, &linked).map_or(note.clone(), |n| {
            if note.is_empty() {
                n
            } else {
                format!("{n}; {note}")
            }
        });
        self.push(name, status, started, fingerprint, &out, &log, note);
        write_run(self.run_dir, self.record)?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        name: &str,
        status: StageStatus,
        started: Instant,
        fingerprint: &str,
        out: &Path,
        log: &Path,
        note: String,
    ) {
        self.record.stages.push(StageRecord {
            name: name.to_owned(),
            status,
            seconds: started.elapsed().as_secs_f64(),
            fingerprint: fingerprint.to_owned(),
            output: out.to_owned(),
            log: log.to_owned(),
            note,
        });
    }
}

/// The folder name of a stage's output inside a run folder.
pub fn output_name(stage: &str) -> &str {
    match stage {
        "ingest" => "dataset",
        other => other,
    }
}

fn fingerprint<T: Serialize>(stage: &str, inputs: &T) -> String {
    spec::fingerprint(&format!("pipeline-stage-{stage}"), &(STAGE_FORMAT, env!("CARGO_PKG_VERSION"), inputs)).0
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `runs/<name>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`... if taken.
fn new_run_dir(root: &Path, name: &str, at: &chrono::DateTime<chrono::Utc>) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let base = format!("{name}-{}", at.format("%Y%m%d-%H%M%S"));
    for n in 1.. {
        let dir = root.join(if n == 1 { base.clone() } else { format!("{base}-{n}") });
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    unreachable!()
}

/// The ingest arguments naming the images, and a digest of their content.
fn data_source(experiment: &Experiment, store: &Path) -> Result<(Vec<String>, String)> {
    let data = &experiment.data;
    if let Some(demo) = &data.demo {
        let digest = spec::fingerprint("pipeline-demo-images", demo).0;
        let dir = store.join(format!("demo-images-{}", &digest[..16]));
        if !dir.join(store::MARKER).exists() {
            let partial = store.join(format!(".demo-images-{}-partial-{}", &digest[..16], std::process::id()));
            let _ = std::fs::remove_dir_all(&partial);
            let options = demo::DemoOptions {
                per_class: demo.per_class,
                width: demo.width,
                height: demo.height,
                seed: demo.seed,
                broken_files: demo.broken_files,
            };
            demo::generate(&partial, &options)
                .with_context(|| format!("generating demo images in {}", partial.display()))?;
            let marker = store::Marker {
                stage: "demo-images".into(),
                fingerprint: digest.clone(),
                seconds: 0.0,
                finished_at: chrono::Utc::now().to_rfc3339(),
            };
            store::mark_complete(&partial, &marker)?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&partial, &dir)?;
        }
        return Ok((vec!["--root".into(), path_arg(&dir)], digest));
    }
    if let Some(root) = &data.root {
        if !root.is_dir() {
            bail!("data.root {}: no such folder", root.display());
        }
        return Ok((vec!["--root".into(), path_arg(root)], store::digest_folder(root)?));
    }
    let spec_path = data.spec.as_ref().expect("validated: one source");
    let text = std::fs::read_to_string(spec_path).with_context(|| format!("reading {}", spec_path.display()))?;
    let dataset_spec = spec::DatasetSpec::from_toml(&text).with_context(|| format!("{}", spec_path.display()))?;
    let images = match &dataset_spec.source {
        spec::DatasetSource::Root(root) => PathBuf::from(root),
        spec::DatasetSource::Manifest(manifest) => {
            Path::new(manifest).parent().map(Path::to_path_buf).unwrap_or_default()
        }
    };
    let digest = spec::fingerprint("pipeline-dataset-spec", &(&text, store::digest_folder(&images)?)).0;
    Ok((vec!["--spec".into(), path_arg(spec_path)], digest))
}

/// The experiment's model spec, or its fallback (with a note saying so)
/// when the first's weights cannot be obtained.
fn choose_model(experiment: &Experiment) -> Result<(PathBuf, Option<String>)> {
    let primary = &experiment.model.spec;
    let Some(fallback) = &experiment.model.fallback else {
        return Ok((primary.clone(), None));
    };
    let text = std::fs::read_to_string(primary).with_context(|| format!("reading {}", primary.display()))?;
    let spec = spec::ModelSpec::from_toml(&text).with_context(|| format!("{}", primary.display()))?;
    match models::resolve_with_progress(&spec, &runtime::cache_dir()?, &progress::Terminal::new()) {
        Ok(_) => Ok((primary.clone(), None)),
        Err(e) => {
            let note = format!(
                "could not get {} ({e}); fell back to {}: its weights may be RANDOM, not pretrained",
                primary.display(),
                fallback.display()
            );
            eprintln!("{note}");
            Ok((fallback.clone(), Some(note)))
        }
    }
}

/// Runs `program args`, its stdout and stderr into `log` (and echoed).
/// `Err` says how it ended.
fn run_logged(program: &Path, args: &[String], log: &Path, name: &str, echo: bool) -> Result<(), String> {
    let mut file = std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let _ = writeln!(file, "$ {} {}", program.display(), args.join(" "));
    let file = Arc::new(Mutex::new(file));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e} (build the stage binaries first)", program.display()))?;
    let pipes: Vec<Box<dyn std::io::Read + Send>> =
        vec![Box::new(child.stdout.take().expect("piped")), Box::new(child.stderr.take().expect("piped"))];
    let copiers: Vec<_> = pipes
        .into_iter()
        .map(|pipe| {
            let file = Arc::clone(&file);
            let prefix = format!("[{name}] ");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                    let text = String::from_utf8_lossy(&line);
                    let _ = writeln!(file.lock().expect("log lock"), "{text}");
                    if echo {
                        eprintln!("{prefix}{text}");
                    }
                }
            })
        })
        .collect();
    let status = child.wait().map_err(|e| format!("waiting for {}: {e}", program.display()))?;
    for copier in copiers {
        let _ = copier.join();
    }
    if status.success() {
        Ok(())
    } else {
        Err(match status.code() {
            Some(code) => format!("exit code {code}"),
            None => format!("killed by {status}"),
        })
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn write_run(run_dir: &Path, record: &RunRecord) -> Result<()> {
    Ok(atomic_file::write(&run_dir.join(RUN_FILE), &serde_json::to_vec_pretty(record)?)?)
}
