use serde::{Deserialize, Serialize};

use crate::SpecError;

/// How to build a dataset from images: where they are, how they are split,
/// and at what size the pixels are stored.
///
/// ```toml
/// name = "flowers"
/// root = "/data/flowers"          # one sub-folder per class; or:
/// # manifest = "/data/labels.csv" # CSV with `path,label` (paths relative to the CSV)
/// seed = 42
/// split = { train = 0.8, validation = 0.1, test = 0.1 }
/// size = { shorter_side = 256 }   # or size = { exact = [224, 224] }
/// filter = "lanczos3"
/// max_pixels = 89478485
/// include_hidden = false
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(flatten)]
    pub source: DatasetSource,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub split: SplitRatios,
    #[serde(default)]
    pub size: StoredSize,
    #[serde(default)]
    pub filter: ResizeFilter,
    /// Images whose header declares more pixels than this are rejected
    /// before decoding (decompression bombs).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Hidden files and folders (names starting with '.') are skipped unless set.
    #[serde(default)]
    pub include_hidden: bool,
}

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetSource {
    /// A folder with one sub-folder per class (Keras / torchvision convention).
    Root(String),
    /// A CSV file with a `path,label` header; paths relative to the CSV's folder.
    Manifest(String),
}

/// Fractions of each class that go to each split. They must sum to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRatios {
    pub train: f64,
    pub validation: f64,
    pub test: f64,
}

impl Default for SplitRatios {
    fn default() -> Self {
        SplitRatios { train: 0.8, validation: 0.1, test: 0.1 }
    }
}

/// The size at which decoded pixels are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredSize {
    /// Resize so the shorter side has this length, keeping the aspect ratio.
    /// Large enough that any backbone's resize-and-crop still applies later.
    ShorterSide(u32),
    /// Resize to exactly `[width, height]`, ignoring the aspect ratio.
    Exact([u32; 2]),
}

impl Default for StoredSize {
    fn default() -> Self {
        StoredSize::ShorterSide(256)
    }
}

impl StoredSize {
    /// The stored `(width, height)` of an image of the given original size:
    /// never larger than the spec's size, and never larger than the original
    /// in either dimension (storing never enlarges: a 28x28 image stays
    /// 28x28 under `ShorterSide(256)`, a 1x100000 strip stays 1x100000).
    /// Never zero. `ShorterSide` keeps the aspect ratio (the longer side is
    /// rounded to nearest); an image whose shorter side is at most `side` is
    /// kept as it is. `Exact([w, h])` gives `(min(w, width), min(h, height))`:
    /// readers resize stored pixels to the network's input at read time
    /// (`imaging::preprocess::resize_and_crop`, an exact resize for the
    /// models that store `Exact`), so a smaller stored image reaches the
    /// network at the same geometry without the bytes of an enlarged copy.
    /// The arithmetic is in u64; the result is at most the original size, so
    /// it always fits in u32.
    pub fn target(self, width: u32, height: u32) -> (u32, u32) {
        let (width, height) = (width.max(1), height.max(1));
        match self {
            StoredSize::Exact([w, h]) => (w.clamp(1, width), h.clamp(1, height)),
            StoredSize::ShorterSide(side) => {
                let short = width.min(height);
                if side >= short {
                    return (width, height);
                }
                // side < short <= long, so long * side / short < long: fits u32.
                let scaled = |long: u32| {
                    let (long, short, side) = (u64::from(long), u64::from(short), u64::from(side.max(1)));
                    let value = ((long * side + short / 2) / short).clamp(1, long);
                    u32::try_from(value).unwrap_or(u32::MAX)
                };
                if width <= height {
                    (side.max(1), scaled(height))
                } else {
                    (scaled(width), side.max(1))
                }
            }
        }
    }
}

/// The resampling filter used when storing pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    #[default]
    Lanczos3,
    CatmullRom,
    Bilinear,
    /// Box filter: the average of the covered pixels.
    Area,
}

/// The name of a dataset whose spec gives none (an image folder given with
/// `--root`): readers that can tell a better one (the folder's) use it.
pub const DEFAULT_DATASET_NAME: &str = "dataset";

fn default_name() -> String {
    DEFAULT_DATASET_NAME.into()
}
fn default_seed() -> u64 {
    42
}
/// The default [`DatasetSpec::max_pixels`]: the `image` crate's own default
/// for PNG, a 9459x9459 image.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}

impl DatasetSpec {
    /// How this spec stored its images: what an exported model's metadata
    /// tells `predict` to do to a new image before its own preprocessing.
    pub fn stored_image(&self) -> crate::StoredImage {
        crate::StoredImage { size: self.size, filter: self.filter }
    }

    /// A spec with defaults for an image folder.
    pub fn for_root(root: impl Into<String>) -> Self {
        DatasetSpec {
            name: default_name(),
            source: DatasetSource::Root(root.into()),
            seed: default_seed(),
            split: SplitRatios::default(),
            size: StoredSize::default(),
            filter: ResizeFilter::default(),
            max_pixels: default_max_pixels(),
            include_hidden: false,
        }
    }

    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: DatasetSpec = crate::parse_toml(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("dataset specs serialise to TOML")
    }

    /// Checks what the types cannot: ratios, sizes, limits.
    pub fn validate(&self) -> Result<(), SpecError> {
        crate::names::check_name("name", &self.name).map_err(SpecError::Invalid)?;
        let SplitRatios { train, validation, test } = self.split;
        if [train, validation, test].iter().any(|r| !(0.0..=1.0).contains(r)) {
            return Err(SpecError::Invalid(format!(
                "split ratios must each lie in [0, 1], got train={train} validation={validation} test={test}"
            )));
        }
        if ((train + validation + test) - 1.0).abs() > 1e-6 {
            return Err(SpecError::Invalid(format!(
                "split ratios must sum to 1, got {train} + {validation} + {test} = {}",
                train + validation + test
            )));
        }
        let zero = match self.size {
            StoredSize::ShorterSide(s) => s == 0,
            StoredSize::Exact([w, h]) => w == 0 || h == 0,
        };
        if zero {
            return Err(SpecError::Invalid("stored size must be at least 1 pixel".into()));
        }
        if self.max_pixels == 0 {
            return Err(SpecError::Invalid("max_pixels must be positive".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_spec_and_round_trips() {
        let text = r#"
            name = "flowers"
            root = "/data/flowers"
            seed = 7
            split = { train = 0.7, validation = 0.2, test = 0.1 }
            size = { exact = [224, 200] }
            filter = "area"
        "#;
        let spec = DatasetSpec::from_toml(text).unwrap();
        assert_eq!(spec.source, DatasetSource::Root("/data/flowers".into()));
        assert_eq!(spec.size, StoredSize::Exact([224, 200]));
        assert_eq!(spec.filter, ResizeFilter::Area);
        assert_eq!(spec.seed, 7);
        assert_eq!(DatasetSpec::from_toml(&spec.to_toml()).unwrap(), spec);
    }

    #[test]
    fn defaults_apply_and_manifest_is_a_source() {
        let spec = DatasetSpec::from_toml(r#"manifest = "labels.csv""#).unwrap();
        assert_eq!(spec.source, DatasetSource::Manifest("labels.csv".into()));
        assert_eq!(spec.size, StoredSize::ShorterSide(256));
        assert_eq!(spec.split, SplitRatios::default());
    }

    #[test]
    fn rejects_bad_ratios_unknown_fields_and_zero_size() {
        let bad_sum = r#"root = "x"
            split = { train = 0.8, validation = 0.1, test = 0.2 }"#;
        assert!(DatasetSpec::from_toml(bad_sum).unwrap_err().to_string().contains("sum to 1"));
        assert!(DatasetSpec::from_toml("root = \"x\"\ncolour = 1").is_err());
        assert!(DatasetSpec::from_toml("root = \"x\"\nsize = { shorter_side = 0 }").is_err());
    }

    #[test]
    fn dataset_names_are_safe_names() {
        for name in ["../../x", "/abs", ".hidden", "a/b"] {
            let err = DatasetSpec::from_toml(&format!("name = {name:?}\nroot = \"x\"")).unwrap_err().to_string();
            assert!(err.starts_with(&format!("name {name:?} is not a safe name")), "{err}");
        }
        assert_eq!(DatasetSpec::from_toml("name = \"my-flowers_2.0\"\nroot = \"x\"").unwrap().name, "my-flowers_2.0");
    }

    #[test]
    fn shorter_side_keeps_aspect_ratio() {
        let s = StoredSize::ShorterSide(256);
        assert_eq!(s.target(640, 480), (341, 256));
        assert_eq!(s.target(480, 640), (256, 341));
        assert_eq!(s.target(300, 300), (256, 256));
        assert_eq!(s.target(5000, 257), (4981, 256));
        assert_eq!(StoredSize::Exact([10, 20]).target(640, 480), (10, 20));
    }

    #[test]
    fn storing_never_enlarges() {
        let s = StoredSize::ShorterSide(256);
        assert_eq!(s.target(28, 28), (28, 28));
        assert_eq!(s.target(256, 256), (256, 256));
        assert_eq!(s.target(1, 100_000), (1, 100_000), "a strip is not upscaled to 256x25,600,000");
        assert_eq!(s.target(100_000, 1), (100_000, 1));
        assert_eq!(s.target(5000, 1), (5000, 1));
        assert_eq!(s.target(0, 0), (1, 1), "never zero");
        // Exact: at most the spec's size, at most the original, per dimension.
        assert_eq!(StoredSize::Exact([224, 224]).target(28, 28), (28, 28));
        assert_eq!(StoredSize::Exact([224, 224]).target(640, 100), (224, 100));
    }

    #[test]
    fn large_sizes_do_not_overflow_or_truncate() {
        let s = StoredSize::ShorterSide(u32::MAX - 1);
        assert_eq!(s.target(u32::MAX, u32::MAX), (u32::MAX - 1, u32::MAX - 1));
        let s = StoredSize::ShorterSide(3);
        // 3 * (2^32 - 1) / 7 rounded, computed in u64.
        assert_eq!(s.target(u32::MAX, 7), (1_840_700_269, 3));
        for (w, h) in [(u32::MAX, 1), (1, u32::MAX), (u32::MAX, u32::MAX), (7, u32::MAX)] {
            for size in [StoredSize::ShorterSide(1), StoredSize::ShorterSide(256), StoredSize::Exact([u32::MAX, 1])] {
                let (tw, th) = size.target(w, h);
                assert!(tw >= 1 && th >= 1 && tw <= w && th <= h, "{size:?} of {w}x{h} gave {tw}x{th}");
            }
        }
    }
}
