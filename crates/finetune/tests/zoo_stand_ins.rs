//! The shipped ONNX-zoo specs with blocks (ResNet-50, MobileNetV2) fine-tune
//! their top block through the stage's library entry, on generated
//! stand-ins with the real files' tensor and parameter names and their
//! opset-7 style BatchNormalization (the real files cannot be downloaded
//! here; `crates/models/tests/zoo_specs.rs` checks download and cut).
//! Needs the training venv and the ONNX Runtime library (`cargo xtask setup`).

use std::ops::ControlFlow;
use std::path::Path;

#[path = "../../models/tests/common/stand_in.rs"]
#[allow(dead_code)]
mod stand_in;

use contracts::finetune::{FinetuneConfig, Optimizer, PrefixMode};
use finetune::{DataSource, HeadSource, Hooks, Job};
use onnx_graph::Dim;
use spec::{ModelSource, ModelSpec};
use stand_in::RealFile;

/// Fine-tunes the last block of `file`'s spec on its stand-in; returns the
/// stage's log lines, the spec and the exported model.
fn fine_tune_top_block(file: &str, real: RealFile) -> (Vec<String>, ModelSpec, onnx_graph::ModelProto) {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-specs/models").join(file))
            .unwrap();
    let mut spec = ModelSpec::from_toml(&text).unwrap();
    let top = stand_in::blocks_in_file_order(&spec, &text).last().unwrap().0.clone();
    let model = stand_in::stand_in(&spec, &text, &real);
    let model_path = dir.path().join("stand-in.onnx");
    onnx_graph::write_model(&model, &model_path).unwrap();
    spec.source = ModelSource::Path { path: model_path.to_string_lossy().into_owned(), sha256: None };
    let spec_path = dir.path().join(file);
    std::fs::write(&spec_path, toml::to_string(&spec).unwrap()).unwrap();

    let config = FinetuneConfig {
        unfreeze: top,
        epochs: 1,
        batch_size: 2,
        learning_rate: 1e-2,
        warmup_steps: 0,
        optimizer: Optimizer::Adamw,
        patience: 0,
        augment: false,
        prefix: PrefixMode::Full,
        seed: 0,
    };
    let job = Job {
        data: DataSource::Random { examples: 4, classes: 3 },
        head: HeadSource::Random { hidden: vec![8], seed: 1 },
        model: spec_path,
        out: dir.path().join("out"),
        config,
        threads: 1,
        cache: Some(dir.path().join("cache")),
        features_cache: None,
        allow_random_head: true,
        restart: false,
        shuffle_buffer_rows: finetune::SHUFFLE_BUFFER_ROWS,
    };
    let lines = std::cell::RefCell::new(Vec::new());
    let log = |line: &str| lines.borrow_mut().push(line.to_owned());
    let mut on_epoch = |_: &finetune::EpochRecord| ControlFlow::Continue(());
    let mut hooks = Hooks { progress: &progress::Silent, log: &log, on_epoch: &mut on_epoch };
    let plan = finetune::plan(job, &mut hooks).unwrap_or_else(|e| panic!("{file}: {e}"));
    let summary = plan.run(&mut hooks).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(summary.completed_epochs, 1);
    let exported = onnx_graph::read_model(&summary.model_onnx).unwrap();
    (lines.into_inner(), spec, exported)
}

/// The top block's parameters changed; every running statistic did not.
fn check(file: &str, real: RealFile) {
    let (lines, spec, exported) = fine_tune_top_block(file, real.clone());
    assert!(lines.iter().any(|l| l.contains("keep their running statistics")), "{lines:?}");
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-specs/models").join(file))
            .unwrap();
    let original = stand_in::stand_in(&spec, &text, &real);
    let value = |model: &onnx_graph::ModelProto, name: &str| onnx_graph::initializer_f32(model, name).unwrap();
    let (_, top) = *stand_in::blocks_in_file_order(&spec, &text).last().unwrap();
    for name in &top.params {
        assert_ne!(value(&exported, name), value(&original, name), "{file}: {name} did not train");
    }
    let statistics: Vec<String> = onnx_graph::batch_norm::batch_norm_params(&original)
        .unwrap()
        .into_iter()
        .flat_map(|p| [p.mean, p.var])
        .collect();
    assert!(!statistics.is_empty(), "{file}: the stand-in has no batch norm");
    for name in &statistics {
        assert_eq!(value(&exported, name), value(&original, name), "{file}: {name} changed");
    }
}

#[test]
fn resnet50_stage4_unit3_fine_tunes_on_a_stand_in() {
    check(
        "resnet50-onnx-zoo.toml",
        RealFile { batch: Dim::named("N"), output: "resnetv17_dense0_fwd", softmax: false },
    );
}

#[test]
fn mobilenetv2_last_conv_fine_tunes_on_a_stand_in() {
    let real = RealFile { batch: Dim::Fixed(1), output: "mobilenetv20_output_flatten0_reshape0", softmax: false };
    check("mobilenetv2-onnx-zoo.toml", real);
}
