//! Fine-tuning through batch normalisation: the training build of ONNX
//! Runtime (1.19.2) must normalise with the file's running statistics, as
//! the exported model does in the stock ONNX Runtime (1.32), and leave them
//! untouched. Needs the training venv and the ONNX Runtime library
//! (`cargo xtask setup`).

mod common;

use std::ops::ControlFlow;

use common::{artifacts_for, max_abs_diff, ort, softmax_rows, ONE_THREAD};
use finetune::{
    apply_batch_norm, compose, select_parameters, ComposeOptions, Composed, DenseLayer, HeadInit, InMemory, Inference,
    ParameterSplit, RunOptions, Schedule, TrainConfig, Unfreeze,
};
use ndarray::{ArrayD, IxDyn};
use onnx_graph::{ConvOptions, Dim, GraphBuilder, ModelProto};
use spec::{BatchNormMode, Pooling};
use train_kit::SplitMix64;

const CLASSES: usize = 3;
/// conv1 → bn1 → Relu → conv2 → bn2 → Relu → MaxPool: `[N, 3, 8, 8]` →
/// `[N, 4, 4, 4]`, seeded; running statistics far from what a batch of
/// these images gives, so batch statistics would show.
fn conv_base() -> ModelProto {
    let mut rng = SplitMix64::new(21);
    let mut b = GraphBuilder::new("bn-base");
    let x = b.input("image", &[Dim::named("N"), Dim::Fixed(3), Dim::Fixed(8), Dim::Fixed(8)]);
    let conv = ConvOptions { kernel: [3, 3], pads: [1; 4], strides: [1, 1] };
    let mut layer = |b: &mut GraphBuilder, name: &str, input: &str, inputs: i64| -> String {
        let w = b.initializer(
            &format!("{name}.weight"),
            &[4, inputs, 3, 3],
            &rng.uniform_vec(-0.4, 0.4, 36 * inputs as usize),
        );
        let y = b.conv(name, input, &w, None, conv);
        let mut p = |suffix: &str, lo: f32, hi: f32| {
            b.initializer(&format!("{name}.bn.{suffix}"), &[4], &rng.uniform_vec(lo, hi, 4))
        };
        let params =
            [p("gamma", 0.5, 1.5), p("beta", -0.5, 0.5), p("running_mean", 0.5, 1.0), p("running_var", 2.0, 4.0)];
        let y = b.batch_norm(&format!("{name}.bn"), &y, [&params[0], &params[1], &params[2], &params[3]], 1e-5);
        b.relu(&format!("{name}.relu"), &y)
    };
    let y = layer(&mut b, "conv1", &x, 3);
    let y = layer(&mut b, "conv2", &y, 4);
    let y = b.max_pool("pool", &y, 2);
    let out = b.rename(&y, "features");
    b.output(&out, &[Dim::named("N"), Dim::Fixed(4), Dim::Fixed(4), Dim::Fixed(4)]);
    b.finish("test", &[])
}

fn composed() -> Composed {
    let mut rng = SplitMix64::new(22);
    let head = vec![DenseLayer::new(rng.uniform_vec(-0.5, 0.5, 64 * CLASSES), [64, CLASSES], vec![0.0; CLASSES])];
    let options = ComposeOptions { pooling: Pooling::Flatten, input_size: Some([8, 8]), ..Default::default() };
    compose(&conv_base(), &HeadInit::Trained(head), &options).unwrap()
}

/// conv2 and its batch norm's scale and bias, plus the head.
fn selection(composed: &Composed, mode: BatchNormMode) -> ParameterSplit {
    let names = "names:conv2.weight,conv2.bn.gamma,conv2.bn.beta".parse::<Unfreeze>().unwrap();
    let split = select_parameters(&composed.training, &composed.head_params, &names, &Default::default()).unwrap();
    apply_batch_norm(&composed.training, split, mode).unwrap()
}

fn images(n: usize, seed: u64) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(&[n, 3, 8, 8]), SplitMix64::new(seed).uniform_vec(-1.0, 1.0, n * 192)).unwrap()
}

/// The first training step's forward pass, as probabilities, against the
/// untouched graph (real BatchNormalization nodes) in ONNX Runtime 1.32.
fn training_forward_vs_inference(training: &ModelProto, split: &ParameterSplit, inference: &ModelProto) -> f32 {
    let root = tempfile::tempdir().unwrap();
    let artifacts = artifacts_for(root.path(), training, split);
    let mut session = ort().open(&artifacts.files(), &artifacts.checkpoint(), ONE_THREAD, true).unwrap();
    let batch = images(4, 5);
    let step = session.train_step(batch.clone(), vec![0, 1, 2, 0]).unwrap();
    let expected = Inference::from_model(inference, 1).unwrap().run(&batch).unwrap().into_dimensionality().unwrap();
    max_abs_diff(&softmax_rows(&step.logits), &expected)
}

#[test]
fn training_normalises_with_the_running_statistics() {
    let composed = composed();
    let split = selection(&composed, BatchNormMode::FrozenStatistics);
    let mut frozen = composed.training.clone();
    assert_eq!(onnx_graph::batch_norm::freeze_statistics(&mut frozen).unwrap(), 2);
    let diff = training_forward_vs_inference(&frozen, &split, &composed.inference);
    eprintln!("statistics frozen: training forward vs inference, max |diff| of probabilities {diff:e}");
    assert!(diff < 1e-5, "the training forward pass differs from inference by {diff}");

    // The control: left to itself, the training build normalises with the
    // batch's statistics, and the same comparison fails.
    let diff = training_forward_vs_inference(&composed.training, &split, &composed.inference);
    eprintln!("left to the training build: max |diff| {diff:e}");
    assert!(diff > 1e-2, "batch statistics should have shown (max |diff| {diff})");
}

#[test]
fn scale_and_bias_train_while_the_statistics_stay() {
    let composed = composed();
    let split = selection(&composed, BatchNormMode::FrozenStatistics);
    assert!(split.trainable.iter().any(|n| n == "conv2.bn.gamma"));
    let mut training = composed.training.clone();
    onnx_graph::batch_norm::freeze_statistics(&mut training).unwrap();
    let root = tempfile::tempdir().unwrap();
    let artifacts = artifacts_for(root.path(), &training, &split);
    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        learning_rate: 1e-2,
        schedule: Schedule::Constant,
        seed: 3,
        shuffle: true,
        patience: None,
        min_delta: 0.0,
        source: String::new(),
    };
    let run_dir = root.path().join("run");
    let options = RunOptions {
        artifacts: &artifacts,
        run_dir: &run_dir,
        config: &config,
        session: ONE_THREAD,
        progress: &progress::Silent,
    };
    let labels: Vec<i64> = (0..12).map(|i| (i % CLASSES) as i64).collect();
    let mut train = InMemory::new(images(12, 9), labels).unwrap();
    let outcome = finetune::train(ort(), &options, &mut train, None, &mut |_| ControlFlow::Continue(())).unwrap();

    // The trained weights into the untouched inference graph (as the
    // fine-tune stage exports it).
    let model_path = root.path().join("model.onnx");
    finetune::export_full_model(ort(), &artifacts, &outcome.latest_checkpoint, &composed.inference, &model_path, &[])
        .unwrap();
    let exported = onnx_graph::read_model(&model_path).unwrap();
    let value = |model: &ModelProto, name: &str| onnx_graph::initializer_f32(model, name).unwrap();
    for name in ["conv1.bn.running_mean", "conv1.bn.running_var", "conv2.bn.running_mean", "conv2.bn.running_var"] {
        assert_eq!(value(&exported, name), value(&composed.inference, name), "{name} changed");
    }
    for name in ["conv2.bn.gamma", "conv2.bn.beta", "conv2.weight"] {
        assert_ne!(value(&exported, name), value(&composed.inference, name), "{name} did not train");
    }
    for name in ["conv1.bn.gamma", "conv1.weight"] {
        assert_eq!(value(&exported, name), value(&composed.inference, name), "{name} is frozen");
    }
}

#[test]
fn frozen_mode_keeps_scale_and_bias_and_statistics_are_never_chosen() {
    let composed = composed();
    let frozen = selection(&composed, BatchNormMode::Frozen);
    assert!(frozen.trainable.iter().any(|n| n == "conv2.weight"));
    assert!(!frozen.trainable.iter().any(|n| n.contains(".bn.")), "{:?}", frozen.trainable);
    assert!(frozen.frozen.iter().any(|n| n == "conv2.bn.gamma"));

    let names = "names:conv2.bn.running_var".parse::<Unfreeze>().unwrap();
    let split = select_parameters(&composed.training, &composed.head_params, &names, &Default::default()).unwrap();
    let err = apply_batch_norm(&composed.training, split, BatchNormMode::FrozenStatistics).unwrap_err().to_string();
    assert!(err.contains("conv2.bn.running_var") && err.contains("running statistic"), "{err}");
}
