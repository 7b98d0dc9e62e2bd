//! The metadata contract of an exported inference model (`model.onnx`):
//! which keys its `metadata_props` hold and how each value is encoded, so
//! that the exporter (`finetune`) and the readers (`predict`) share one
//! definition.
//!
//! | key | value |
//! |---|---|
//! | [`META_MODEL`] | the model spec's name (plain string) |
//! | [`META_INPUT`] | JSON of the spec's [`InputSpec`] |
//! | [`META_PREPROCESS`] | JSON of the spec's [`Preprocess`] |
//! | [`META_PREPROCESS_FINGERPRINT`] | [`ModelSpec::preprocess_fingerprint`] (plain string) |
//! | [`META_CLASS_NAMES`] | JSON array of strings, index = class |
//! | [`META_WEIGHTS_NOTE`] | whether the conv base was pretrained (plain string) |
//! | [`META_OUTPUT`] | what the output is, e.g. [`OUTPUT_PROBABILITIES`] (plain string) |
//! | [`META_STORED`] | JSON of [`StoredImage`]; absent when unknown |
//!
//! JSON values are compact `serde_json`. Pure: no I/O.

use serde::{Deserialize, Serialize};

use crate::model::{check_preprocess, preprocess_fingerprint};
use crate::{Fingerprint, InputSpec, ModelSpec, Preprocess, ResizeFilter, StoredSize};

/// Key of the model spec's name.
pub const META_MODEL: &str = "model";
/// Key of the JSON [`InputSpec`].
pub const META_INPUT: &str = "input";
/// Key of the JSON [`Preprocess`].
pub const META_PREPROCESS: &str = "preprocess";
/// Key of the preprocessing fingerprint (the features stage's cache key).
pub const META_PREPROCESS_FINGERPRINT: &str = "preprocess_fingerprint";
/// Key of the JSON array of class names, in label order.
pub const META_CLASS_NAMES: &str = "class_names";
/// Key of the note on where the weights came from.
pub const META_WEIGHTS_NOTE: &str = "weights_note";
/// Key of the description of the model's output.
pub const META_OUTPUT: &str = "output";
/// Key of the JSON [`StoredImage`]: how the training images were stored.
pub const META_STORED: &str = "stored";

/// Every key [`InferenceMetadata::to_props`] writes, in that order
/// ([`META_STORED`] only when known).
pub const META_KEYS: [&str; 8] = [
    META_MODEL,
    META_INPUT,
    META_PREPROCESS,
    META_PREPROCESS_FINGERPRINT,
    META_CLASS_NAMES,
    META_WEIGHTS_NOTE,
    META_OUTPUT,
    META_STORED,
];

/// The [`META_OUTPUT`] value of a model whose output is `probabilities`.
pub const OUTPUT_PROBABILITIES: &str = "probabilities: softmax over the classes";

/// The weights note of a fine-tuned model on a pretrained conv base.
pub const WEIGHTS_PRETRAINED: &str = "conv base: pretrained weights, fine-tuned";
/// The weights note of a fine-tuned model on a generated (random) conv base.
pub const WEIGHTS_RANDOM: &str = "conv base: RANDOM generated weights (not pretrained), fine-tuned";

/// How ingestion stored the training images before the model's own
/// preprocessing: decoded upright, then resized to `size.target(w, h)`
/// with `filter`. A reader applies the same step to new images so that
/// they reach the model as the training images did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredImage {
    pub size: StoredSize,
    pub filter: ResizeFilter,
}

impl StoredImage {
    /// The stored `(width, height)` of an upright image of the given size
    /// ([`StoredSize::target`]).
    pub fn target(&self, width: u32, height: u32) -> (u32, u32) {
        self.size.target(width, height)
    }
}

/// Everything a reader needs to run an exported model on new images.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceMetadata {
    /// The model spec's name.
    pub model: String,
    pub input: InputSpec,
    pub preprocess: Preprocess,
    pub preprocess_fingerprint: String,
    /// Index = class.
    pub class_names: Vec<String>,
    pub weights_note: String,
    /// What the output holds, e.g. [`OUTPUT_PROBABILITIES`].
    pub output: String,
    /// How ingest stored the training images before model preprocessing;
    /// `None` when the exporter did not say (older models).
    pub stored: Option<StoredImage>,
}

/// Metadata that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata key {key:?} is missing")]
    Missing { key: &'static str },
    #[error("metadata key {key:?} is invalid: {message}")]
    Invalid { key: &'static str, message: String },
}

impl MetadataError {
    /// The key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            MetadataError::Missing { key } | MetadataError::Invalid { key, .. } => key,
        }
    }
}

impl InferenceMetadata {
    /// Metadata for a model exported from `spec`, classifying into
    /// `class_names`, with a probabilities output; the weights note follows
    /// from the spec's source.
    pub fn for_model(spec: &ModelSpec, class_names: &[String], stored: Option<StoredImage>) -> InferenceMetadata {
        InferenceMetadata {
            model: spec.name.clone(),
            input: spec.input.clone(),
            preprocess: spec.preprocess.clone(),
            preprocess_fingerprint: spec.preprocess_fingerprint().0,
            class_names: class_names.to_vec(),
            weights_note: if spec.source.is_pretrained() { WEIGHTS_PRETRAINED } else { WEIGHTS_RANDOM }.to_owned(),
            output: OUTPUT_PROBABILITIES.to_owned(),
            stored,
        }
    }

    /// The fingerprint [`ModelSpec::preprocess_fingerprint`] gives for this
    /// metadata's input and preprocessing.
    pub fn computed_preprocess_fingerprint(&self) -> Fingerprint {
        preprocess_fingerprint(&self.preprocess, &self.input)
    }

    /// The `metadata_props` entries, keys in [`META_KEYS`] order;
    /// [`META_STORED`] only when `stored` is known.
    pub fn to_props(&self) -> Vec<(String, String)> {
        let mut props = vec![
            (META_MODEL.to_owned(), self.model.clone()),
            (META_INPUT.to_owned(), json(&self.input)),
            (META_PREPROCESS.to_owned(), json(&self.preprocess)),
            (META_PREPROCESS_FINGERPRINT.to_owned(), self.preprocess_fingerprint.clone()),
            (META_CLASS_NAMES.to_owned(), json(&self.class_names)),
            (META_WEIGHTS_NOTE.to_owned(), self.weights_note.clone()),
            (META_OUTPUT.to_owned(), self.output.clone()),
        ];
        if let Some(stored) = &self.stored {
            props.push((META_STORED.to_owned(), json(stored)));
        }
        props
    }

    /// Reads the metadata back from `metadata_props` entries (other keys are
    /// ignored; of repeated keys the last wins). A missing key, a value that
    /// does not parse, no classes, or an inconsistent preprocessing spec is
    /// an error naming the key.
    pub fn from_props(props: &[(String, String)]) -> Result<InferenceMetadata, MetadataError> {
        Self::from_lookup(|key| props.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str()))
    }

    /// [`from_props`](Self::from_props) over any key → value lookup (e.g.
    /// straight over a model's `metadata_props`).
    pub fn from_lookup<'a>(lookup: impl Fn(&str) -> Option<&'a str>) -> Result<InferenceMetadata, MetadataError> {
        let text = |key: &'static str| lookup(key).ok_or(MetadataError::Missing { key });
        let parse = |key: &'static str| -> Result<_, MetadataError> { Ok((key, text(key)?)) };
        let model = text(META_MODEL)?.to_owned();
        let input: InputSpec = from_json(parse(META_INPUT)?)?;
        let preprocess: Preprocess = from_json(parse(META_PREPROCESS)?)?;
        check_preprocess(&model, &preprocess, &input)
            .map_err(|message| MetadataError::Invalid { key: META_PREPROCESS, message })?;
        let preprocess_fingerprint = text(META_PREPROCESS_FINGERPRINT)?.to_owned();
        let class_names: Vec<String> = from_json(parse(META_CLASS_NAMES)?)?;
        if class_names.is_empty() {
            return Err(MetadataError::Invalid { key: META_CLASS_NAMES, message: "no classes".into() });
        }
        let weights_note = text(META_WEIGHTS_NOTE)?.to_owned();
        let output = text(META_OUTPUT)?.to_owned();
        let stored: Option<StoredImage> = match lookup(META_STORED) {
            None => None,
            Some(value) => {
                let stored: StoredImage = from_json((META_STORED, value))?;
                let zero = match stored.size {
                    StoredSize::ShorterSide(s) => s == 0,
                    StoredSize::Exact([w, h]) => w == 0 || h == 0,
                };
                if zero {
                    return Err(MetadataError::Invalid {
                        key: META_STORED,
                        message: "stored size must be at least 1 pixel".into(),
                    });
                }
                Some(stored)
            }
        };
        Ok(InferenceMetadata {
            model,
            input,
            preprocess,
            preprocess_fingerprint,
            class_names,
            weights_note,
            output,
            stored,
        })
    }
}

fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("specs serialise to JSON")
}

fn from_json<T: serde::de::DeserializeOwned>((key, value): (&'static str, &str)) -> Result<T, MetadataError> {
    serde_json::from_str(value).map_err(|e| MetadataError::Invalid { key, message: format!("{e} in {value:?}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The project's tiny generated model, as the other stages' tests use it.
    const TINY_VGG: &str = include_str!("../../../data-specs/models/tiny-vgg.toml");

    fn spec() -> ModelSpec {
        ModelSpec::from_toml(TINY_VGG).unwrap()
    }

    fn classes() -> Vec<String> {
        ["circles", "squares", "stripes"].map(String::from).to_vec()
    }

    fn metadata() -> InferenceMetadata {
        let stored = StoredImage { size: StoredSize::ShorterSide(64), filter: ResizeFilter::Lanczos3 };
        InferenceMetadata::for_model(&spec(), &classes(), Some(stored))
    }

    /// What `finetune::export` writes today (`preprocessing_metadata` plus
    /// the `output` key), built the same way, by hand.
    fn finetune_props(spec: &ModelSpec, class_names: &[String]) -> Vec<(String, String)> {
        fn j<T: Serialize + ?Sized>(value: &T) -> String {
            serde_json::to_string(value).unwrap()
        }
        vec![
            ("output".to_owned(), format!("{}: softmax over the classes", "probabilities")),
            ("model".to_owned(), spec.name.clone()),
            ("input".to_owned(), j(&spec.input)),
            ("preprocess".to_owned(), j(&spec.preprocess)),
            ("preprocess_fingerprint".to_owned(), spec.preprocess_fingerprint().0),
            ("class_names".to_owned(), j(class_names)),
            ("weights_note".to_owned(), "conv base: RANDOM generated weights (not pretrained), fine-tuned".to_owned()),
            // Other keys the exported model carries.
            ("weights".to_owned(), "random: seeded He-uniform init, not pretrained".to_owned()),
            ("finetune.pooling".to_owned(), "flatten".to_owned()),
        ]
    }

    #[test]
    fn round_trips_through_props() {
        let meta = metadata();
        let props = meta.to_props();
        let keys: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, META_KEYS);
        assert_eq!(InferenceMetadata::from_props(&props).unwrap(), meta);

        let without_stored = InferenceMetadata { stored: None, ..meta };
        let props = without_stored.to_props();
        assert!(props.iter().all(|(k, _)| k != META_STORED));
        assert_eq!(InferenceMetadata::from_props(&props).unwrap(), without_stored);
    }

    #[test]
    fn encodings_are_compact_json_and_plain_strings() {
        let props = metadata().to_props();
        let get = |key: &str| props.iter().find(|(k, _)| k == key).unwrap().1.as_str();
        assert_eq!(get(META_MODEL), "tiny-vgg");
        assert_eq!(get(META_INPUT), r#"{"name":"data","layout":"nchw","size":[32,32]}"#);
        assert_eq!(get(META_CLASS_NAMES), r#"["circles","squares","stripes"]"#);
        assert_eq!(get(META_STORED), r#"{"size":{"shorter_side":64},"filter":"lanczos3"}"#);
        assert_eq!(get(META_OUTPUT), OUTPUT_PROBABILITIES);
        assert_eq!(get(META_WEIGHTS_NOTE), WEIGHTS_RANDOM);
        assert_eq!(get(META_PREPROCESS_FINGERPRINT), spec().preprocess_fingerprint().0);
    }

    #[test]
    fn a_missing_key_is_named() {
        let props = metadata().to_props();
        for key in META_KEYS.into_iter().filter(|&k| k != META_STORED) {
            let without: Vec<_> = props.iter().filter(|(k, _)| k != key).cloned().collect();
            let err = InferenceMetadata::from_props(&without).unwrap_err();
            assert_eq!(err, MetadataError::Missing { key });
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let props = metadata().to_props();
        let replaced = |key: &str, value: &str| -> Vec<(String, String)> {
            props.iter().map(|(k, v)| (k.clone(), if k == key { value.to_owned() } else { v.clone() })).collect()
        };
        for (key, value) in [
            (META_INPUT, "{not json"),
            (META_PREPROCESS, r#"{"color":"rgb"}"#),
            (META_CLASS_NAMES, "[]"),
            (META_CLASS_NAMES, r#""circles""#),
            (META_STORED, r#"{"size":{"shorter_side":0},"filter":"lanczos3"}"#),
            (META_STORED, r#"{"size":"big","filter":"lanczos3"}"#),
        ] {
            let err = InferenceMetadata::from_props(&replaced(key, value)).unwrap_err();
            assert_eq!(err.key(), key, "{value}: {err}");
            assert!(err.to_string().contains(key), "{err}");
        }
        // A preprocessing spec that does not end at the input size.
        let mut meta = metadata();
        meta.preprocess.resize.center_crop = Some([30, 30]);
        let err = InferenceMetadata::from_props(&meta.to_props()).unwrap_err();
        assert_eq!(err.key(), META_PREPROCESS, "{err}");
    }

    #[test]
    fn parses_what_the_finetune_exporter_writes() {
        let spec = spec();
        let props = finetune_props(&spec, &classes());
        let meta = InferenceMetadata::from_props(&props).unwrap();
        assert_eq!(meta, InferenceMetadata::for_model(&spec, &classes(), None));
        assert_eq!(meta.preprocess_fingerprint, meta.computed_preprocess_fingerprint().0);
        // And what we write is what it writes, for its keys.
        let ours = meta.to_props();
        for (key, value) in &ours {
            assert_eq!(props.iter().find(|(k, _)| k == key).map(|(_, v)| v), Some(value), "{key}");
        }
    }

    #[test]
    fn stored_image_gives_the_ingest_size() {
        let stored = StoredImage { size: StoredSize::ShorterSide(256), filter: ResizeFilter::Area };
        assert_eq!(stored.target(640, 480), (341, 256));
        assert_eq!(StoredImage { size: StoredSize::Exact([10, 20]), ..stored }.target(640, 480), (10, 20));
    }
}
