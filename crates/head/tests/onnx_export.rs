//! The exported head runs in stock ONNX Runtime and agrees with the Rust
//! forward pass. Needs the pinned ORT library (`cargo xtask setup`).

use head::{onnx_export, train_head, HeadConfig, InMemory};
use ndarray::Array2;
use runtime::{ort, ModelSource, SessionOptions};
use train_kit::Xoshiro256;

fn data(n: usize, dim: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = Xoshiro256::new(seed);
    let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let x = Array2::from_shape_fn((n, dim), |(i, j)| (labels[i] * 7 + j) as f32 * 0.05 + rng.normal() as f32);
    (x, labels)
}

#[test]
fn exported_head_matches_rust_forward_pass_in_onnx_runtime() {
    let (x, y) = data(60, 10, 1);
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    for hidden in [vec![], vec![8, 6]] {
        let config = HeadConfig { hidden: hidden.clone(), epochs: 3, batch_size: 16, ..Default::default() };
        let head = train_head(&config, &names, &mut InMemory::new(x.view(), &y), None, &mut |_| {}).unwrap();
        let model = onnx_export::to_onnx(&head);
        runtime::init_ort().unwrap_or_else(|e| panic!("ONNX Runtime is needed for this test: {e}"));
        let bytes = onnx_graph::encode_model(&model);
        let mut session = runtime::open_session(&SessionOptions::default(), ModelSource::Memory(&bytes))
            .unwrap_or_else(|e| panic!("ORT refused the exported head: {e}"));
        let (probe, _) = data(7, 10, 2);
        let input = ort::value::Tensor::from_array(([7i64, 10], probe.iter().copied().collect::<Vec<f32>>())).unwrap();
        let outputs = session.run(ort::inputs![onnx_export::INPUT => input]).unwrap();
        let (shape, probs) = outputs[onnx_export::PROBABILITIES].try_extract_tensor::<f32>().unwrap();
        assert_eq!(shape.iter().copied().collect::<Vec<i64>>(), vec![7, 3]);
        let expected = head.predict_proba(probe.view());
        let max_diff = probs.iter().zip(expected.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "hidden {hidden:?}: max |ORT - Rust| = {max_diff}");
        // The probabilities are not all alike: the check is not vacuous.
        assert!(expected.iter().any(|&p| p > 0.4) && expected.iter().any(|&p| p < 0.3));
        let (_, logits) = outputs[onnx_export::LOGITS].try_extract_tensor::<f32>().unwrap();
        let rust_logits = head.model.logits(probe.view());
        assert!(logits.iter().zip(rust_logits.iter()).all(|(a, b)| (a - b).abs() < 1e-4));
    }
}
