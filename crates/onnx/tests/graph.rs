//! Reading, writing, generating and cutting graphs.

use onnx_graph::proto::{attribute_type, data_type, tensor_shape_proto, type_proto, ModelProto};
use onnx_graph::reference::{self, Tensor};
use onnx_graph::shape::{self, Dim};
use onnx_graph::vgg::{self, VggConfig};
use onnx_graph::{
    cut_at, decode_model, encode_model, expose_output, free_input_dims, graph, initializer_f32, initializers, inputs,
    metadata, outputs, read_model, rename_tensor, set_initializer_f32, write_model, GraphError,
};

const SEED: u64 = 7;

fn op_count(model: &ModelProto, op_type: &str) -> usize {
    graph(model).unwrap().node.iter().filter(|n| n.op_type == op_type).count()
}

fn initializer_names(model: &ModelProto) -> Vec<String> {
    initializers(model).unwrap().into_iter().map(|t| t.name).collect()
}

// ---------------------------------------------------------------- round trips

#[test]
fn generated_model_round_trips_through_bytes_and_files() {
    let model = vgg::tiny_vgg(SEED);
    let bytes = encode_model(&model);
    let decoded = decode_model(&bytes).unwrap();
    assert_eq!(decoded, model);
    assert_eq!(encode_model(&decoded), bytes, "re-encoding gives the same bytes");

    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("tiny.onnx");
    write_model(&model, &path).unwrap();
    assert_eq!(read_model(&path).unwrap(), model);
    let files: Vec<_> = std::fs::read_dir(folder.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "no partial file left behind");
}

/// `tests/data/exporter_fields.onnx` was written by the official `onnx`
/// package with every field this crate declares set (see
/// `make_exporter_fields.py`). Reading the values back checks the field
/// numbers; the re-encoded size checks that nothing was dropped.
#[test]
fn every_exporter_field_survives_a_round_trip() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/exporter_fields.onnx")).unwrap();
    let model = decode_model(&bytes).unwrap();

    // The only bytes a round trip may lose: proto2 presence of three fields
    // set to their defaults (two opset domains "" and an attribute i = 0),
    // two bytes each; readers treat absent and default alike.
    let reencoded = encode_model(&model);
    assert_eq!(reencoded.len(), bytes.len() - 6, "a field was dropped or added");
    assert_eq!(decode_model(&reencoded).unwrap(), model);

    assert_eq!(model.ir_version, 10);
    assert_eq!((model.producer_name.as_str(), model.producer_version.as_str()), ("py", "1"));
    assert_eq!((model.domain.as_str(), model.model_version), ("dom", 3));
    assert_eq!(model.doc_string, "model doc");
    assert_eq!(metadata(&model, "mk"), Some("mv"));
    assert_eq!(model.opset_import[1].domain, "my.domain");
    assert_eq!(model.opset_import[0].version, 13);

    let training = &model.training_info[0];
    assert_eq!(training.initialization.as_ref().unwrap().name, "sub");
    assert_eq!(training.algorithm.as_ref().unwrap().node[0].op_type, "Identity");
    assert_eq!(training.initialization_binding[0].key, "w");
    assert_eq!(training.update_binding[0].value, "y");

    let function = &model.functions[0];
    assert_eq!(
        (function.name.as_str(), function.domain.as_str(), function.overload.as_str()),
        ("Fn", "my.domain", "o1")
    );
    assert_eq!((function.input.as_slice(), function.output.as_slice()), (&["x".to_owned()][..], &["y".to_owned()][..]));
    assert_eq!(function.attribute, ["alpha"]);
    assert_eq!(function.attribute_proto[0].i, 2);
    assert_eq!(function.node.len(), 1);
    assert_eq!(function.doc_string, "fn doc");
    assert_eq!(function.opset_import[0].version, 13);
    assert_eq!(function.value_info[0].name, "y");
    assert_eq!(function.metadata_props[0].key, "fk");

    let graph = model.graph.as_ref().unwrap();
    assert_eq!((graph.name.as_str(), graph.doc_string.as_str()), ("main", "graph doc"));
    assert_eq!(graph.metadata_props[0].value, "gv");
    assert_eq!(graph.quantization_annotation[0].tensor_name, "w");
    assert_eq!(graph.quantization_annotation[0].quant_parameter_tensor_names[0].key, "SCALE_TENSOR");
    assert_eq!(graph.sparse_initializer[0].dims, [3]);
    assert_eq!(graph.sparse_initializer[0].values.as_ref().unwrap().name, "spv");
    assert_eq!(graph.sparse_initializer[0].indices.as_ref().unwrap().name, "spi");

    let init = |name: &str| graph.initializer.iter().find(|t| t.name == name).unwrap();
    assert_eq!(onnx_graph::tensor::f32_values(init("w")).unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(init("w").dims, [2, 3]);
    assert_eq!(init("w").doc_string, "weight doc");
    assert_eq!(init("w").metadata_props[0].key, "a");
    let external = init("ext");
    assert_eq!(external.data_location, onnx_graph::proto::tensor_proto::DATA_LOCATION_EXTERNAL);
    assert_eq!(external.external_data[0].key, "location");
    assert_eq!(external.external_data[0].value, "w.bin");
    assert_eq!(init("i64").int64_data, [5, -1]);
    assert_eq!(init("i32").int32_data, [7, 8]);
    assert_eq!(init("dbl").double_data, [1.5, 2.5]);
    assert_eq!(init("u64").uint64_data, [(1u64 << 63) + 5]);
    assert_eq!(init("strs").string_data, [b"x".to_vec(), b"yz".to_vec()]);
    assert_eq!(init("strs").data_type, data_type::STRING);
    let segment = init("seg").segment.unwrap();
    assert_eq!((segment.begin, segment.end), (1, 2));

    let input = &graph.input[0];
    assert_eq!(input.doc_string, "in doc");
    assert_eq!(input.metadata_props[0].value, "vv");
    let input_type = input.r#type.as_ref().unwrap();
    assert_eq!(input_type.denotation, "TENSOR");
    let Some(type_proto::Value::TensorType(tensor)) = &input_type.value else { panic!("not a tensor type") };
    let dims = &tensor.shape.as_ref().unwrap().dim;
    assert_eq!(dims[0].denotation, "DATA_BATCH");
    assert_eq!(dims[0].value, Some(tensor_shape_proto::dimension::Value::DimParam("N".into())));
    assert_eq!(dims[1].value, Some(tensor_shape_proto::dimension::Value::DimValue(3)));
    assert_eq!(dims[2].value, None);
    assert_eq!(shape::tensor_info(input).unwrap().dims.unwrap(), [Dim::named("N"), Dim::Fixed(3), Dim::Unknown]);

    let value_type = |i: usize| graph.value_info[i].r#type.as_ref().unwrap().value.clone().unwrap();
    assert!(
        matches!(value_type(0), type_proto::Value::MapType(map) if map.key_type == data_type::INT64 && map.value_type.is_some())
    );
    assert!(matches!(value_type(1), type_proto::Value::OptionalType(o) if o.elem_type.is_some()));
    assert!(matches!(value_type(2), type_proto::Value::SparseTensorType(s) if s.elem_type == data_type::FLOAT));
    assert!(matches!(value_type(3), type_proto::Value::OpaqueType(o) if o.domain == "d" && o.name == "nm"));

    let node = &graph.node[0];
    assert_eq!((node.name.as_str(), node.op_type.as_str(), node.domain.as_str()), ("n1", "Custom", "my.domain"));
    assert_eq!((node.overload.as_str(), node.doc_string.as_str()), ("ov", "node doc"));
    assert_eq!(node.metadata_props[0].key, "nk");
    assert_eq!(node.output, ["out", ""]);
    let attribute = |name: &str| node.attribute.iter().find(|a| a.name == name).unwrap();
    assert_eq!((attribute("f").f, attribute("f").r#type), (1.5, attribute_type::FLOAT));
    assert_eq!(attribute("f").doc_string, "attr doc");
    assert_eq!((attribute("i").i, attribute("i").r#type), (0, attribute_type::INT));
    assert_eq!(attribute("s").s, b"str");
    assert_eq!(attribute("t").t.as_ref().unwrap().float_data, [1.0, 2.0, 3.0]);
    assert_eq!(attribute("g").g.as_ref().unwrap().name, "sub");
    assert_eq!(attribute("floats").floats, [1.0, 2.0]);
    assert_eq!(attribute("ints").ints, [1, -2, 3]);
    assert_eq!(attribute("strings").strings, [b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(attribute("tensors").tensors[0].name, "i64");
    assert_eq!(attribute("graphs").graphs[0].name, "sub");
    assert_eq!(attribute("sparse_tensor").sparse_tensor.as_ref().unwrap().dims, [3]);
    assert_eq!(attribute("sparse_tensors").sparse_tensors.len(), 1);
    assert!(attribute("tp").tp.is_some());
    assert!(matches!(&attribute("type_protos").type_protos[0].value, Some(type_proto::Value::SequenceType(_))));
    assert_eq!(attribute("r").ref_attr_name, "outer");
}

// ---------------------------------------------------------------- generated models

#[test]
fn tiny_vgg_has_the_vgg16_structure() {
    let model = vgg::tiny_vgg(SEED);
    assert_eq!(model.ir_version, onnx_graph::IR_VERSION);
    assert_eq!(model.opset_import[0].version, onnx_graph::OPSET_VERSION);
    assert!(metadata(&model, vgg::META_WEIGHTS).unwrap().starts_with(vgg::RANDOM_WEIGHTS));
    assert_eq!(metadata(&model, vgg::META_WEIGHTS_SEED), Some("7"));
    assert!(model.doc_string.contains("RANDOM weights"));

    assert_eq!(op_count(&model, "Conv"), 13);
    assert_eq!(op_count(&model, "MaxPool"), 5);
    assert_eq!(op_count(&model, "Relu"), 15);
    assert_eq!(op_count(&model, "Flatten"), 1);
    assert_eq!(op_count(&model, "Gemm"), 3);

    let names = initializer_names(&model);
    let mut expected: Vec<String> = vgg::conv_indices()
        .iter()
        .flatten()
        .flat_map(|i| [format!("features.{i}.weight"), format!("features.{i}.bias")])
        .collect();
    expected.extend([0, 3, 6].iter().flat_map(|i| [format!("classifier.{i}.weight"), format!("classifier.{i}.bias")]));
    assert_eq!(names, expected);

    let summaries = initializers(&model).unwrap();
    assert_eq!(summaries[0].dims.as_deref(), Some(&[Dim::Fixed(4), Dim::Fixed(3), Dim::Fixed(3), Dim::Fixed(3)][..]));
    let last_conv = summaries.iter().find(|s| s.name == "features.28.weight").unwrap();
    assert_eq!(last_conv.dims.as_deref(), Some(&[Dim::Fixed(16), Dim::Fixed(16), Dim::Fixed(3), Dim::Fixed(3)][..]));
    let first_linear = summaries.iter().find(|s| s.name == "classifier.0.weight").unwrap();
    assert_eq!(first_linear.dims.as_deref(), Some(&[Dim::Fixed(32), Dim::Fixed(16)][..]));

    let input = &inputs(&model).unwrap()[0];
    assert_eq!(input.name, vgg::INPUT_NAME);
    assert_eq!(input.dims.as_deref(), Some(&[Dim::named("N"), Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)][..]));
    let output = &outputs(&model).unwrap()[0];
    assert_eq!(output.name, vgg::OUTPUT_NAME);
    assert_eq!(output.dims.as_deref(), Some(&[Dim::named("N"), Dim::Fixed(10)][..]));
}

#[test]
fn weights_depend_on_the_seed_only() {
    assert_eq!(vgg::tiny_vgg(SEED), vgg::tiny_vgg(SEED));
    let a = initializer_f32(&vgg::tiny_vgg(1), "features.0.weight").unwrap();
    let b = initializer_f32(&vgg::tiny_vgg(2), "features.0.weight").unwrap();
    assert_ne!(a, b);
    // He-uniform for fan-in 27: |w| < sqrt(6 / 27).
    let limit = (6.0f32 / 27.0).sqrt();
    assert!(a.iter().all(|w| w.abs() < limit));
    assert!(a.iter().any(|w| w.abs() > limit / 2.0));
}

#[test]
fn the_reference_runs_the_tiny_model() {
    let model = vgg::tiny_vgg(SEED);
    let images = Tensor::new(vec![2, 3, 32, 32], (0..2 * 3 * 32 * 32).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect());
    let results =
        reference::evaluate(&model, &[(vgg::INPUT_NAME, images)], &[vgg::OUTPUT_NAME, vgg::BLOCK4_OUTPUT]).unwrap();
    assert_eq!(results[0].dims, [2, 10]);
    assert_eq!(results[1].dims, [2, 16, 2, 2]);
    assert!(results[0].max_abs() > 0.0);
}

// ---------------------------------------------------------------- cutting

#[test]
fn cutting_at_the_conv_base_keeps_only_what_it_needs() {
    let full = vgg::tiny_vgg(SEED);
    let base = cut_at(&full, vgg::CONV_BASE_OUTPUT).unwrap();

    assert_eq!(op_count(&base, "Conv"), 13);
    assert_eq!(op_count(&base, "MaxPool"), 5);
    assert_eq!(op_count(&base, "Relu"), 13);
    assert_eq!(op_count(&base, "Gemm") + op_count(&base, "Flatten"), 0);
    assert_eq!(graph(&base).unwrap().node.len(), 31);
    let names = initializer_names(&base);
    assert_eq!(names.len(), 26);
    assert!(names.iter().all(|n| n.starts_with("features.")));

    let output = &outputs(&base).unwrap()[0];
    assert_eq!(output.name, vgg::CONV_BASE_OUTPUT);
    assert_eq!(output.elem_type, data_type::FLOAT);
    assert_eq!(output.dims.as_deref(), Some(&[Dim::named("N"), Dim::Fixed(16), Dim::Fixed(1), Dim::Fixed(1)][..]));
    assert_eq!(inputs(&base).unwrap(), inputs(&full).unwrap());
    assert_eq!(metadata(&base, onnx_graph::edit::META_CUT_AT), Some(vgg::CONV_BASE_OUTPUT));
    assert!(metadata(&base, vgg::META_WEIGHTS).unwrap().starts_with(vgg::RANDOM_WEIGHTS), "provenance is kept");
}

#[test]
fn cutting_at_block_4_drops_block_5() {
    let prefix = cut_at(&vgg::tiny_vgg(SEED), vgg::BLOCK4_OUTPUT).unwrap();
    assert_eq!(op_count(&prefix, "Conv"), 10);
    let names = initializer_names(&prefix);
    for block5 in vgg::block_parameters(5) {
        assert!(!names.contains(&block5), "{block5} should be gone");
    }
    assert!(names.contains(&"features.21.weight".to_owned()));
    let side = VggConfig::TINY.input_size / 16;
    assert_eq!(
        outputs(&prefix).unwrap()[0].dims.as_deref(),
        Some(&[Dim::named("N"), Dim::Fixed(16), Dim::Fixed(side), Dim::Fixed(side)][..])
    );
}

#[test]
fn cutting_at_an_unknown_tensor_is_an_error() {
    let err = cut_at(&vgg::tiny_vgg(SEED), "no/such/tensor").unwrap_err();
    assert!(matches!(err, GraphError::UnknownTensor(ref name) if name == "no/such/tensor"), "{err}");
}

#[test]
fn the_cut_model_computes_what_the_full_model_computes_there() {
    let full = vgg::tiny_vgg(SEED);
    let base = cut_at(&full, vgg::CONV_BASE_OUTPUT).unwrap();
    let images =
        Tensor::new(vec![1, 3, 32, 32], (0..3 * 32 * 32).map(|i| ((i * 7 % 23) as f32 - 11.0) / 11.0).collect());
    let from_full = reference::evaluate(&full, &[(vgg::INPUT_NAME, images.clone())], &[vgg::CONV_BASE_OUTPUT]).unwrap();
    let from_base = reference::evaluate(&base, &[(vgg::INPUT_NAME, images)], &[vgg::CONV_BASE_OUTPUT]).unwrap();
    assert_eq!(from_full, from_base);
}

#[test]
fn exposing_an_intermediate_output_keeps_the_others() {
    let mut model = vgg::tiny_vgg(SEED);
    expose_output(&mut model, vgg::BLOCK4_OUTPUT).unwrap();
    expose_output(&mut model, vgg::BLOCK4_OUTPUT).unwrap();
    let names: Vec<String> = outputs(&model).unwrap().into_iter().map(|o| o.name).collect();
    assert_eq!(names, [vgg::OUTPUT_NAME, vgg::BLOCK4_OUTPUT]);
}

// ---------------------------------------------------------------- free dims, renames, weights

#[test]
fn freeing_spatial_dims_makes_dependent_dims_free() {
    let mut base = cut_at(&vgg::tiny_vgg(SEED), vgg::CONV_BASE_OUTPUT).unwrap();
    free_input_dims(&mut base, vgg::INPUT_NAME, &[(2, "height"), (3, "width")]).unwrap();
    assert_eq!(
        inputs(&base).unwrap()[0].dims.as_deref(),
        Some(&[Dim::named("N"), Dim::Fixed(3), Dim::named("height"), Dim::named("width")][..])
    );
    assert_eq!(
        outputs(&base).unwrap()[0].dims.as_deref(),
        Some(&[Dim::named("N"), Dim::Fixed(16), Dim::Unknown, Dim::Unknown][..])
    );

    // With the classifier on top the logits keep their shape.
    let mut full = vgg::tiny_vgg(SEED);
    free_input_dims(&mut full, vgg::INPUT_NAME, &[(2, "height"), (3, "width")]).unwrap();
    assert_eq!(outputs(&full).unwrap()[0].dims.as_deref(), Some(&[Dim::named("N"), Dim::Fixed(10)][..]));

    let err = free_input_dims(&mut full, vgg::INPUT_NAME, &[(4, "depth")]).unwrap_err();
    assert!(err.to_string().contains("no axis 4"), "{err}");
}

#[test]
fn renaming_a_tensor_renames_it_everywhere() {
    let mut model = vgg::tiny_vgg(SEED);
    rename_tensor(&mut model, vgg::INPUT_NAME, "images").unwrap();
    rename_tensor(&mut model, "features.0.weight", "stem.weight").unwrap();
    assert_eq!(inputs(&model).unwrap()[0].name, "images");
    let first = &graph(&model).unwrap().node[0];
    assert_eq!(first.input[..2], ["images", "stem.weight"]);
    assert!(initializer_names(&model).contains(&"stem.weight".to_owned()));

    let images = Tensor::new(vec![1, 3, 32, 32], vec![0.5; 3 * 32 * 32]);
    reference::evaluate(&model, &[("images", images)], &[vgg::OUTPUT_NAME]).unwrap();

    assert!(matches!(rename_tensor(&mut model, "images", "features.2.weight"), Err(GraphError::DuplicateName(_))));
    assert!(matches!(rename_tensor(&mut model, "data", "x"), Err(GraphError::UnknownTensor(_))));
}

#[test]
fn initializer_values_can_be_read_and_replaced() {
    let mut model = vgg::tiny_vgg(SEED);
    let bias = initializer_f32(&model, "classifier.6.bias").unwrap();
    assert_eq!(bias.len(), 10);
    let zeros = vec![0.0; 10];
    set_initializer_f32(&mut model, "classifier.6.bias", &zeros).unwrap();
    assert_eq!(initializer_f32(&model, "classifier.6.bias").unwrap(), zeros);
    assert!(set_initializer_f32(&mut model, "classifier.6.bias", &[1.0]).is_err());
    assert!(matches!(initializer_f32(&model, "nope"), Err(GraphError::UnknownInitializer(_))));
}

/// A Keras export takes NHWC and transposes; cutting and shape inference
/// must follow it through the Transpose.
#[test]
fn an_nhwc_graph_cuts_and_infers_through_its_transpose() {
    use onnx_graph::{ConvOptions, GraphBuilder};
    let mut b = GraphBuilder::new("keras-like");
    let x = b.input("input", &[Dim::named("N"), Dim::Fixed(40), Dim::Fixed(40), Dim::Fixed(3)]);
    let x = b.transpose("to_nchw", &x, &[0, 3, 1, 2]);
    let w = b.initializer("block1_conv1/kernel", &[2, 3, 3, 3], &[0.1; 54]);
    let bias = b.initializer("block1_conv1/bias", &[2], &[0.0, 0.5]);
    let x = b.conv("block1_conv1", &x, &w, Some(&bias), ConvOptions::SAME_3X3);
    let x = b.relu("block1_relu", &x);
    let pooled = b.max_pool("block1_pool", &x, 2);
    let flat = b.reshape("flatten", &pooled, &[0, -1]);
    let head_w = b.initializer("dense/kernel", &[5, 800], &[0.01; 4000]);
    let head_b = b.initializer("dense/bias", &[5], &[0.0; 5]);
    let logits = b.linear("dense", &flat, &head_w, &head_b);
    let probabilities = b.softmax("softmax", &logits, -1);
    b.output(&probabilities, &[Dim::named("N"), Dim::Fixed(5)]);
    let model = b.finish("test", &[]);

    let base = cut_at(&model, &pooled).unwrap();
    assert_eq!(initializer_names(&base), ["block1_conv1/kernel", "block1_conv1/bias"]);
    assert_eq!(
        outputs(&base).unwrap()[0].dims.as_deref(),
        Some(&[Dim::named("N"), Dim::Fixed(2), Dim::Fixed(20), Dim::Fixed(20)][..])
    );
    let image = Tensor::new(vec![1, 40, 40, 3], vec![1.0; 4800]);
    let outs = reference::evaluate(&model, &[("input", image)], &[&pooled, &probabilities]).unwrap();
    assert_eq!(outs[0].dims, [1, 2, 20, 20]);
    assert_eq!(outs[1].dims, [1, 5]);
    assert!((outs[1].data.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}
