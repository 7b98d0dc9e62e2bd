//! Fine-tuning the tiny generated VGG end to end: ONNX Runtime's training
//! API (1.19.2, through Python) for the training, the stock ONNX Runtime
//! (1.32, through `ort`) for the exported model.
//!
//! These tests need the training venv (`runtime::ensure_training_venv`
//! makes it if Python 3.11 is there) and the ONNX Runtime library
//! (`cargo xtask setup`); without them they fail and say so, rather than pass
//! having checked nothing.

mod common;

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use common::{artifacts_for, max_abs_diff, ort, softmax_rows, ONE_THREAD};
use finetune::artifacts::Artifacts;
use finetune::{
    compose, select_parameters, BatchSource, ComposeOptions, Composed, DenseLayer, FinetuneError, HeadInit, InMemory,
    RunOptions, Schedule, StopReason, TrainConfig, Unfreeze,
};
use ndarray::{ArrayD, Axis, IxDyn};
use onnx_graph::vgg;
use train_kit::SplitMix64;

const SEED: u64 = 11;
const CLASSES: usize = 4;
fn model_spec() -> spec::ModelSpec {
    spec::ModelSpec::from_toml(include_str!("../../../data-specs/models/tiny-vgg.toml")).unwrap()
}

/// A stand-in for a trained head: seeded values, 16 -> 8 -> 4.
fn head() -> Vec<DenseLayer> {
    let mut rng = SplitMix64::new(SEED + 1);
    vec![
        DenseLayer::new(rng.uniform_vec(-0.5, 0.5, 16 * 8), [16, 8], rng.uniform_vec(-0.1, 0.1, 8)),
        DenseLayer::new(rng.uniform_vec(-0.5, 0.5, 8 * CLASSES), [8, CLASSES], rng.uniform_vec(-0.1, 0.1, CLASSES)),
    ]
}

fn composed() -> Composed {
    let base = onnx_graph::cut_at(&vgg::tiny_vgg(SEED), vgg::CONV_BASE_OUTPUT).unwrap();
    let options = ComposeOptions { feature_len: Some(model_spec().embedding_len()), ..Default::default() };
    compose(&base, &HeadInit::Trained(head()), &options).unwrap()
}

/// Run options with one thread and no progress output.
fn one_thread<'a>(artifacts: &'a Artifacts, run_dir: &'a Path, config: &'a TrainConfig) -> RunOptions<'a> {
    RunOptions { artifacts, run_dir, config, session: ONE_THREAD, progress: &progress::Silent }
}

fn block5_artifacts(root: &Path) -> (Composed, Artifacts) {
    let composed = composed();
    let split = select_parameters(
        &composed.training,
        &composed.head_params,
        &Unfreeze::Blocks(vec!["block5".into()]),
        &model_spec().blocks,
    )
    .unwrap();
    let artifacts = artifacts_for(root, &composed.training, &split);
    (composed, artifacts)
}

fn images(n: usize, seed: u64) -> ArrayD<f32> {
    let mut rng = SplitMix64::new(seed);
    ArrayD::from_shape_vec(IxDyn(&[n, 3, 32, 32]), rng.uniform_vec(-2.0, 2.0, n * 3 * 32 * 32)).unwrap()
}

fn labels(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| (rng.next_u64() % CLASSES as u64) as i64).collect()
}

fn data(n: usize, seed: u64) -> InMemory {
    InMemory::new(images(n, seed), labels(n, seed + 1000)).unwrap()
}

fn quick_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 4,
        learning_rate: 3e-3,
        schedule: Schedule::CosineSteps { warmup_steps: 2, min_lr: 1e-4 },
        seed: 5,
        shuffle: true,
        patience: None,
        min_delta: 0.0,
        source: String::new(),
    }
}

#[test]
fn artifacts_are_generated_once_and_reused() {
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (composed, first) = block5_artifacts(root.path());
    let elapsed = started.elapsed();
    assert!(first.generated);
    eprintln!(
        "artifact generation for the tiny model: {:.3} s (generate_artifacts alone {:.3} s)",
        elapsed.as_secs_f64(),
        first.manifest.generation_seconds
    );
    for file in ["training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint", "artifacts.json"] {
        assert!(first.dir.join(file).is_file(), "{file} is missing");
    }
    assert_eq!(first.manifest.trainable.len(), 6 + 4);

    let (_, again) = block5_artifacts(root.path());
    assert!(!again.generated);
    assert_eq!(again.dir, first.dir);

    // Another choice of trainable parameters is another folder.
    let split =
        select_parameters(&composed.training, &composed.head_params, &Unfreeze::None, &model_spec().blocks).unwrap();
    let other = artifacts_for(root.path(), &composed.training, &split);
    assert!(other.generated);
    assert_ne!(other.dir, first.dir);
}

#[test]
fn loss_decreases_on_a_fixed_batch() {
    let root = tempfile::tempdir().unwrap();
    let (_, artifacts) = block5_artifacts(root.path());
    let mut session = ort().open(&artifacts.files(), &artifacts.checkpoint(), ONE_THREAD, true).unwrap();
    let batch_images = images(8, 1);
    let batch_labels = labels(8, 2);
    let mut losses = Vec::new();
    let started = Instant::now();
    for _ in 0..15 {
        session.set_learning_rate(1e-2).unwrap();
        let output = session.train_step(batch_images.clone(), batch_labels.clone()).unwrap();
        assert_eq!(output.logits.shape(), [8, CLASSES]);
        losses.push(output.loss);
        session.optimizer_step().unwrap();
        session.lazy_reset_grad().unwrap();
    }
    eprintln!("15 steps on 8 images: {:.3} s; losses {losses:.4?}", started.elapsed().as_secs_f64());
    assert!((session.learning_rate().unwrap() - 1e-2).abs() < 1e-9);
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.7 * first, "the loss did not go down: {losses:?}");
}

#[test]
fn training_freezes_what_is_frozen_and_the_export_matches_eval_in_ort_1_32() {
    let root = tempfile::tempdir().unwrap();
    let (composed, artifacts) = block5_artifacts(root.path());
    let run_dir = root.path().join("run");
    let config = TrainConfig { patience: Some(5), ..quick_config(3) };
    let run = one_thread(&artifacts, &run_dir, &config);
    let mut train = data(24, 10);
    let mut validation = data(8, 20);
    let mut seen = Vec::new();
    let outcome = finetune::train(ort(), &run, &mut train, Some(&mut validation), &mut |record| {
        seen.push(record.epoch);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Completed);
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(outcome.state.global_step, 3 * 6);

    // metrics.jsonl: one line per epoch, read back.
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let records: Vec<finetune::EpochRecord> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records, outcome.state.history);
    assert!(records.iter().all(|r| r.val_loss.is_some() && r.train_loss.is_finite()));
    let best = outcome.state.best.clone().unwrap();
    assert!(records.iter().all(|r| r.monitor >= best.monitor));

    // Export the best epoch; read its weights back with onnx_graph.
    let model_path = run_dir.join("model.onnx");
    let metadata =
        finetune::preprocessing_metadata(&model_spec(), &["a".into(), "b".into(), "c".into(), "d".into()], None);
    finetune::export_inference_model(ort(), &artifacts, &outcome.best_checkpoint, &model_path, &metadata).unwrap();
    let exported = onnx_graph::read_model(&model_path).unwrap();
    assert!(onnx_graph::metadata(&exported, "preprocess").unwrap().contains("\"mean\""));
    assert_eq!(onnx_graph::metadata(&exported, "class_names").unwrap(), r#"["a","b","c","d"]"#);
    let split = &artifacts.manifest;
    for name in &split.frozen {
        let before = onnx_graph::initializer_f32(&composed.training, name).unwrap();
        let after = onnx_graph::initializer_f32(&exported, name).unwrap();
        let same_bits = before.iter().zip(&after).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same_bits && before.len() == after.len(), "frozen {name} changed");
    }
    for name in &split.trainable {
        let before = onnx_graph::initializer_f32(&composed.training, name).unwrap();
        let after = onnx_graph::initializer_f32(&exported, name).unwrap();
        assert_eq!(before.len(), after.len());
        assert!(before != after, "trainable {name} did not change");
    }
    assert_eq!(split.frozen.len(), 20);

    // The exported model in ONNX Runtime 1.32 against the eval model (1.19,
    // Python) with the same checkpoint, on the same inputs.
    let inputs = images(5, 30);
    let from_ort = finetune::verify_inference_model(&model_path, inputs.clone()).unwrap();
    let mut session = ort().open(&artifacts.files(), &outcome.best_checkpoint, ONE_THREAD, false).unwrap();
    let eval = session.eval_step(inputs, vec![0; 5]).unwrap();
    let expected = softmax_rows(&eval.logits);
    let diff = max_abs_diff(&from_ort, &expected);
    eprintln!("exported model (ORT 1.32) vs eval model (ORT 1.19): max |diff| of probabilities {diff:e}");
    assert!(diff <= 1e-5, "probabilities differ by {diff}");
}

#[test]
fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let root = tempfile::tempdir().unwrap();
    let (_, artifacts) = block5_artifacts(root.path());
    let config = quick_config(3);
    let run = |dir: &Path, stop_after: Option<usize>| {
        let options = one_thread(&artifacts, dir, &config);
        let mut train = data(20, 40);
        let mut validation = data(6, 50);
        finetune::train(ort(), &options, &mut train, Some(&mut validation), &mut |record| {
            if Some(record.epoch) == stop_after {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap()
    };

    let straight = run(&root.path().join("straight"), None);
    let interrupted_dir = root.path().join("interrupted");
    let first = run(&interrupted_dir, Some(1));
    assert_eq!(first.stop, StopReason::Interrupted);
    assert_eq!(first.state.completed_epochs, 1);
    let resumed = run(&interrupted_dir, None);
    assert_eq!(resumed.resumed_after_epoch, 1);
    assert_eq!(resumed.stop, StopReason::Completed);

    let weights = |checkpoint: &Path| {
        let session = ort().open(&artifacts.files(), checkpoint, ONE_THREAD, false).unwrap();
        let names = session.parameters().unwrap();
        names.into_iter().map(|(name, _)| (session.parameter(&name).unwrap(), name)).collect::<Vec<_>>()
    };
    let a = weights(&straight.latest_checkpoint);
    let b = weights(&resumed.latest_checkpoint);
    assert_eq!(a.len(), b.len());
    for ((wa, name), (wb, _)) in a.iter().zip(&b) {
        assert!(wa.iter().zip(wb).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs after resuming");
    }
    let losses =
        |o: &finetune::TrainOutcome| o.state.history.iter().map(|r| (r.train_loss, r.val_loss)).collect::<Vec<_>>();
    assert_eq!(losses(&straight), losses(&resumed));
    assert_eq!(straight.state.best.as_ref().map(|b| b.epoch), resumed.state.best.as_ref().map(|b| b.epoch));

    // A finished run is not trained again; another configuration is refused.
    let again = run(&interrupted_dir, None);
    assert_eq!(again.resumed_after_epoch, 3);
    let other = TrainConfig { learning_rate: 1e-3, ..config.clone() };
    let options = one_thread(&artifacts, &interrupted_dir, &other);
    let err =
        finetune::train(ort(), &options, &mut data(20, 40), None, &mut |_| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("holds another run"), "{err}");
}

#[test]
fn a_nan_loss_stops_the_run_naming_epoch_and_step() {
    let root = tempfile::tempdir().unwrap();
    let (_, artifacts) = block5_artifacts(root.path());
    let mut inputs = images(12, 60);
    inputs.index_axis_mut(Axis(0), 5).fill(f32::NAN);
    let mut train = InMemory::new(inputs, labels(12, 61)).unwrap();
    let config = TrainConfig { shuffle: false, ..quick_config(2) };
    let run_dir = root.path().join("run");
    let options = one_thread(&artifacts, &run_dir, &config);
    let err = finetune::train(ort(), &options, &mut train, None, &mut |_| ControlFlow::Continue(())).unwrap_err();
    match &err {
        FinetuneError::NonFiniteLoss { epoch: 1, step: 2, global_step: 2, .. } => {}
        other => panic!("expected a non-finite loss at epoch 1, step 2; got {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("epoch 1, step 2"), "{message}");
}

#[test]
fn training_on_cached_block4_outputs_gives_the_full_graphs_loss() {
    let root = tempfile::tempdir().unwrap();
    let composed = composed();
    let spec = model_spec();
    let unfreeze = Unfreeze::Blocks(vec!["block5".into()]);
    let split = select_parameters(&composed.training, &composed.head_params, &unfreeze, &spec.blocks).unwrap();
    let graphs = finetune::split_at(&composed.training, &spec.blocks["block5"].input).unwrap();
    let suffix_split = finetune::suffix_parameters(&graphs, &split).unwrap();
    assert_eq!(suffix_split.trainable, split.trainable);
    assert_eq!(suffix_split.frozen, Vec::<String>::new(), "block 5 + head: nothing frozen in the suffix");

    let full = artifacts_for(root.path(), &composed.training, &split);
    let suffix = artifacts_for(root.path(), &graphs.suffix, &suffix_split);

    // The frozen prefix as plain inference in ONNX Runtime 1.32.
    let mut source = data(6, 70);
    let mut cached = finetune::precompute(&graphs.prefix, &mut source, 4, 1).unwrap();
    assert_eq!(cached.inputs().shape(), [6, 16, 2, 2]);

    let mut full_session = ort().open(&full.files(), &full.checkpoint(), ONE_THREAD, true).unwrap();
    let mut suffix_session = ort().open(&suffix.files(), &suffix.checkpoint(), ONE_THREAD, true).unwrap();
    let all: Vec<usize> = (0..6).collect();
    let image_batch = source.batch(&all, 0).unwrap();
    let cached_batch = cached.batch(&all, 0).unwrap();
    for step in 0..3 {
        let a = full_session.train_step(image_batch.inputs.clone(), image_batch.labels.clone()).unwrap();
        let b = suffix_session.train_step(cached_batch.inputs.clone(), cached_batch.labels.clone()).unwrap();
        let tolerance = 1e-5 * a.loss.abs().max(1.0);
        assert!((a.loss - b.loss).abs() <= tolerance, "step {step}: full {} vs cached prefix {}", a.loss, b.loss);
        assert!(max_abs_diff(&a.logits, &b.logits) <= 1e-4, "step {step}: logits differ");
        for session in [&mut full_session, &mut suffix_session] {
            session.set_learning_rate(1e-2).unwrap();
            session.optimizer_step().unwrap();
            session.lazy_reset_grad().unwrap();
        }
    }
    let full_eval = full_session.eval_step(image_batch.inputs, image_batch.labels).unwrap();
    let suffix_eval = suffix_session.eval_step(cached_batch.inputs, cached_batch.labels).unwrap();
    eprintln!("after 3 steps: eval loss full {} vs cached prefix {}", full_eval.loss, suffix_eval.loss);
    assert!((full_eval.loss - suffix_eval.loss).abs() <= 1e-5 * full_eval.loss.abs().max(1.0));
}
