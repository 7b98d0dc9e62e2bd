//! The file contract: a trained head saved as safetensors + JSON, read back
//! by this crate and by the safetensors reader alone, plus the metrics log.

use head::io::{self, MetricsLog, META_FILE, WEIGHTS_FILE};
use head::{train_head, HeadConfig, InMemory, TrainedHead};
use ndarray::Array2;
use train_kit::Xoshiro256;
use train_kit::{EarlyStopping, Evaluation};

/// Samples (drawn by `seed`) around three fixed cluster centres.
fn clusters(n: usize, dim: usize, classes: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut centre_rng = Xoshiro256::new(1000);
    let centres = Array2::from_shape_simple_fn((classes, dim), || (centre_rng.normal() * 2.0) as f32);
    let mut rng = Xoshiro256::new(seed);
    let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let x = Array2::from_shape_fn((n, dim), |(i, j)| centres[[labels[i], j]] + rng.normal() as f32);
    (x, labels)
}

fn names() -> Vec<String> {
    ["daisy", "dandelion", "rose"].map(String::from).to_vec()
}

fn trained(dir: &std::path::Path) -> (TrainedHead, Vec<train_kit::EpochRecord>) {
    let (x, y) = clusters(90, 12, 3, 1);
    let (vx, vy) = clusters(30, 12, 3, 2);
    let config = HeadConfig {
        hidden: vec![16, 8],
        dropout: 0.1,
        epochs: 6,
        batch_size: 16,
        optimizer: head::OptimizerConfig::Adam(head::AdamConfig { lr: 1e-2, ..Default::default() }),
        early_stopping: EarlyStopping { patience: 10, ..Default::default() },
        ..Default::default()
    };
    let mut log = MetricsLog::create(&dir.join("metrics.jsonl")).unwrap();
    let mut val = InMemory::new(vx.view(), &vy);
    let head = train_head(&config, &names(), &mut InMemory::new(x.view(), &y), Some(&mut val), &mut |r| {
        log.append(r).unwrap()
    })
    .unwrap();
    let history = io::read_metrics_log(&dir.join("metrics.jsonl")).unwrap();
    (head, history)
}

#[test]
fn saved_head_loads_back_and_predicts_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (head, logged) = trained(dir.path());
    assert_eq!(logged, head.meta.history, "the JSON-lines log holds every epoch");

    let out = dir.path().join("head");
    io::save(&out, &head).unwrap();
    let loaded = io::load(&out).unwrap();
    assert_eq!(loaded, head);
    let (x, y) = clusters(40, 12, 3, 3);
    let before = head.predict_proba(x.view());
    let after = loaded.predict_proba(x.view());
    assert!(before.iter().zip(&after).all(|(a, b)| a.to_bits() == b.to_bits()));

    let report: Evaluation = loaded.evaluate(x.view(), &y, &[1, 2]);
    assert!(report.accuracy > 0.9, "{report}");
    io::write_report(&dir.path().join("eval.json"), &report).unwrap();
    let text = std::fs::read_to_string(dir.path().join("eval.json")).unwrap();
    assert_eq!(serde_json::from_str::<Evaluation>(&text).unwrap(), report);
    assert!(!dir.path().join("eval.json.partial").exists());
}

#[test]
fn files_follow_the_documented_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = trained(dir.path());
    io::save(dir.path(), &head).unwrap();

    let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = tensors.names();
    names.sort();
    assert_eq!(
        names,
        ["dense_0.bias", "dense_0.weight", "dense_1.bias", "dense_1.weight", "dense_2.bias", "dense_2.weight"]
    );
    let w0 = tensors.tensor("dense_0.weight").unwrap();
    assert_eq!(w0.dtype(), safetensors::Dtype::F32);
    assert_eq!(w0.shape(), [16, 12], "weights are [out, in]");
    // Element [1, 0] (unit 1, input 0) is the 13th float, little-endian.
    let v = f32::from_le_bytes(w0.data()[12 * 4..12 * 4 + 4].try_into().unwrap());
    assert_eq!(v, head.model.layers()[0].weight[[1, 0]]);
    assert_eq!(tensors.tensor("dense_2.bias").unwrap().shape(), [3]);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta["format"], "head/1");
    assert_eq!(meta["weight_layout"], "out_in");
    assert_eq!(meta["activation"], "relu");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(META_FILE)).unwrap()).unwrap();
    assert_eq!(json["class_names"], serde_json::json!(["daisy", "dandelion", "rose"]));
    assert_eq!(json["layer_sizes"], serde_json::json!([12, 16, 8, 3]));
    assert_eq!(json["config"]["optimizer"]["kind"], "adam");
    assert_eq!(json["config"]["batch_size"], 16);
    assert_eq!(json["history"].as_array().unwrap().len(), 6);
    assert!(json["history"][0]["val_loss"].is_f64());
    assert_eq!(json["config_fingerprint"].as_str().unwrap().len(), 64);
}

#[test]
fn inconsistent_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = trained(dir.path());
    io::save(dir.path(), &head).unwrap();
    let meta_path = dir.path().join(META_FILE);
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    json["layer_sizes"] = serde_json::json!([12, 16, 9, 3]);
    std::fs::write(&meta_path, json.to_string()).unwrap();
    let err = io::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("layer sizes"), "{err}");
    let err = io::load(&dir.path().join("missing")).unwrap_err().to_string();
    assert!(err.contains("head.json"), "{err}");
}
