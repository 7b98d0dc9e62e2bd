//! Generated VGG-style models with seeded random weights.
//!
//! [`vgg16`] is the real VGG16 topology (conv base and classifier, no
//! dropout) with the names a torchvision export uses: parameters
//! `features.0.weight` … `features.28.weight`, `classifier.0/3/6.weight`;
//! nodes `/features/features.0/Conv` with outputs
//! `/features/features.0/Conv_output_0`. [`tiny_vgg`] has the same blocks and
//! names with a few channels and a 32×32 input, so tests run in milliseconds.
//!
//! The weights are random (He-uniform, bit-identical on every platform),
//! never pretrained: every generated
//! model says so in its `metadata_props` ([`META_WEIGHTS`]) and doc string,
//! so nobody mistakes its features for ImageNet ones.

use crate::builder::{ConvOptions, GraphBuilder};
use crate::proto::ModelProto;
use crate::shape::Dim;
use train_kit::SplitMix64;

/// The graph input: `[N, 3, H, W]` f32, NCHW.
pub const INPUT_NAME: &str = "data";
/// The graph output: class logits `[N, classes]` (no softmax, as torchvision).
pub const OUTPUT_NAME: &str = "logits";
/// Where the conv base ends: the output of the fifth max pool.
pub const CONV_BASE_OUTPUT: &str = "/features/features.30/MaxPool_output_0";
/// Where block 4 ends; its output is what fine-tuning block 5 starts from.
pub const BLOCK4_OUTPUT: &str = "/features/features.23/MaxPool_output_0";

/// Metadata key saying where the weights came from; its value starts with
/// [`RANDOM_WEIGHTS`] for every generated model.
pub const META_WEIGHTS: &str = "weights";
pub const RANDOM_WEIGHTS: &str = "random";
pub const META_WEIGHTS_SEED: &str = "weights_seed";
pub const META_ARCHITECTURE: &str = "architecture";
pub const META_CONV_BASE_OUTPUT: &str = "conv_base_output";

/// Convolutions per block, as in VGG16.
pub const CONVS_PER_BLOCK: [usize; 5] = [2, 2, 3, 3, 3];

/// The shape of a VGG-style model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VggConfig {
    pub architecture: &'static str,
    /// Output channels of each block's convolutions.
    pub block_channels: [i64; 5],
    /// Height and width of the declared input.
    pub input_size: i64,
    /// Sizes of the two hidden layers and the number of classes.
    pub classifier: [i64; 3],
}

impl VggConfig {
    pub const VGG16: VggConfig = VggConfig {
        architecture: "vgg16",
        block_channels: [64, 128, 256, 512, 512],
        input_size: 224,
        classifier: [4096, 4096, 1000],
    };

    pub const TINY: VggConfig = VggConfig {
        architecture: "tiny-vgg",
        block_channels: [4, 8, 8, 16, 16],
        input_size: 32,
        classifier: [32, 32, 10],
    };

    /// Side of the conv base's output (five 2×2 pools).
    pub fn conv_base_size(&self) -> i64 {
        self.input_size / 32
    }

    /// Length of the flattened conv base output (25,088 for VGG16).
    pub fn feature_len(&self) -> i64 {
        self.block_channels[4] * self.conv_base_size().pow(2)
    }
}

/// VGG16 with random weights: 138 M parameters, about 550 MB encoded.
pub fn vgg16(seed: u64) -> ModelProto {
    generate(&VggConfig::VGG16, seed)
}

/// The tiny VGG-shaped model with random weights.
pub fn tiny_vgg(seed: u64) -> ModelProto {
    generate(&VggConfig::TINY, seed)
}

/// The `features.{i}` indices of the convolutions in each block (1-based
/// blocks: `conv_indices()[4]` is block 5, `[24, 26, 28]`).
pub fn conv_indices() -> [Vec<usize>; 5] {
    let mut index = 0;
    CONVS_PER_BLOCK.map(|convs| {
        let block: Vec<usize> = (0..convs).map(|i| index + 2 * i).collect();
        index += 2 * convs + 1; // each conv has a ReLU; one pool per block
        block
    })
}

/// The parameter (initializer) names of block `block` (1..=5).
pub fn block_parameters(block: usize) -> Vec<String> {
    assert!((1..=5).contains(&block), "VGG16 has blocks 1 to 5, not {block}");
    conv_indices()[block - 1]
        .iter()
        .flat_map(|i| [format!("features.{i}.weight"), format!("features.{i}.bias")])
        .collect()
}

/// Builds a VGG-style model for `config` with weights drawn from `seed`.
pub fn generate(config: &VggConfig, seed: u64) -> ModelProto {
    let mut graph = GraphBuilder::new(config.architecture);
    let batch = Dim::named("N");
    let mut x = graph.input(
        INPUT_NAME,
        &[batch.clone(), Dim::Fixed(3), Dim::Fixed(config.input_size), Dim::Fixed(config.input_size)],
    );

    let mut in_channels = 3i64;
    let mut index = 0usize;
    for (convs, &channels) in CONVS_PER_BLOCK.iter().zip(&config.block_channels) {
        for _ in 0..*convs {
            let prefix = format!("features.{index}");
            let fan_in = (in_channels * 9) as usize;
            let weight =
                he_uniform(&mut graph, seed, &format!("{prefix}.weight"), &[channels, in_channels, 3, 3], fan_in);
            let bias = small_bias(&mut graph, seed, &format!("{prefix}.bias"), channels);
            x = graph.conv(&format!("/features/{prefix}/Conv"), &x, &weight, Some(&bias), ConvOptions::SAME_3X3);
            x = graph.relu(&format!("/features/features.{}/Relu", index + 1), &x);
            in_channels = channels;
            index += 2;
        }
        x = graph.max_pool(&format!("/features/features.{index}/MaxPool"), &x, 2);
        index += 1;
    }

    x = graph.flatten("/Flatten", &x, 1);
    let mut in_features = config.feature_len();
    for (layer, &out_features) in [0, 3, 6].iter().zip(&config.classifier) {
        let prefix = format!("classifier.{layer}");
        let weight = he_uniform(
            &mut graph,
            seed,
            &format!("{prefix}.weight"),
            &[out_features, in_features],
            in_features as usize,
        );
        let bias = small_bias(&mut graph, seed, &format!("{prefix}.bias"), out_features);
        x = graph.linear(&format!("/classifier/{prefix}/Gemm"), &x, &weight, &bias);
        if *layer != 6 {
            x = graph.relu(&format!("/classifier/classifier.{}/Relu", layer + 1), &x);
        }
        in_features = out_features;
    }
    graph.rename(&x, OUTPUT_NAME);
    graph.output(OUTPUT_NAME, &[batch, Dim::Fixed(config.classifier[2])]);

    let mut model = graph.finish(
        "onnx-graph",
        &[
            (META_WEIGHTS, format!("{RANDOM_WEIGHTS}: seeded He-uniform init, not pretrained")),
            (META_WEIGHTS_SEED, seed.to_string()),
            (META_ARCHITECTURE, config.architecture.to_owned()),
            (META_CONV_BASE_OUTPUT, CONV_BASE_OUTPUT.to_owned()),
        ],
    );
    model.doc_string = format!(
        "{} topology with RANDOM weights (seed {seed}); not pretrained. \
         Generated by onnx-graph for tests and benchmarks.",
        config.architecture
    );
    model
}

fn he_uniform(graph: &mut GraphBuilder, seed: u64, name: &str, dims: &[i64], fan_in: usize) -> String {
    let count = dims.iter().product::<i64>() as usize;
    let values = SplitMix64::for_tensor(seed, name).he_uniform(fan_in, count);
    graph.initializer(name, dims, &values)
}

/// Biases are small but not zero, so that checks against a reference also
/// check that the bias is applied.
fn small_bias(graph: &mut GraphBuilder, seed: u64, name: &str, len: i64) -> String {
    let values = SplitMix64::for_tensor(seed, name).uniform_vec(-0.05, 0.05, len as usize);
    graph.initializer(name, &[len], &values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_indices_match_torchvision() {
        let indices = conv_indices();
        assert_eq!(indices[0], [0, 2]);
        assert_eq!(indices[1], [5, 7]);
        assert_eq!(indices[2], [10, 12, 14]);
        assert_eq!(indices[3], [17, 19, 21]);
        assert_eq!(indices[4], [24, 26, 28]);
        assert_eq!(
            block_parameters(5),
            [
                "features.24.weight",
                "features.24.bias",
                "features.26.weight",
                "features.26.bias",
                "features.28.weight",
                "features.28.bias"
            ]
        );
    }

    #[test]
    fn vgg16_config_sizes() {
        assert_eq!(VggConfig::VGG16.conv_base_size(), 7);
        assert_eq!(VggConfig::VGG16.feature_len(), 25_088);
        assert_eq!(VggConfig::TINY.feature_len(), 16);
    }
}
