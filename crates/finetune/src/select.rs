//! Which parameters train: the head always; of the conv base, the layers
//! named by an [`Unfreeze`] choice; everything else is frozen.
//!
//! Pure: reads the graph, returns names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use onnx_graph::proto::{data_type, ModelProto};
use serde::{Deserialize, Serialize};
use spec::BatchNormMode;

use crate::error::{Result, SelectionError};

/// What of the conv base to unfreeze (the head always trains).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unfreeze {
    /// Nothing: only the head trains.
    None,
    /// Named blocks of the model spec (`block5`): their `params`.
    Blocks(Vec<String>),
    /// The last `n` convolutions of the conv base, in graph order: their
    /// weights and biases.
    LastConvs(usize),
    /// Parameters (initializers) by name.
    Names(Vec<String>),
}

impl FromStr for Unfreeze {
    type Err = crate::FinetuneError;

    /// `none`; `block5` or `block4,block5`; `last:3` (the last 3 convs);
    /// `names:a,b` (explicit parameter names).
    fn from_str(text: &str) -> Result<Unfreeze> {
        let list = |s: &str| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        let text = text.trim();
        if text.is_empty() || text == "none" {
            Ok(Unfreeze::None)
        } else if let Some(n) = text.strip_prefix("last:") {
            let n = n.trim().parse().map_err(|_| SelectionError::LastN { text: text.to_owned() })?;
            Ok(Unfreeze::LastConvs(n))
        } else if let Some(names) = text.strip_prefix("names:") {
            Ok(Unfreeze::Names(list(names)))
        } else {
            Ok(Unfreeze::Blocks(list(text)))
        }
    }
}

/// The composed graph's parameters, split. Both lists are in the graph's
/// initializer order, so the same choice always gives the same lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterSplit {
    /// Parameters that get gradients and optimizer updates.
    pub trainable: Vec<String>,
    /// Every other f32 initializer (kept in the checkpoint, never updated).
    pub frozen: Vec<String>,
}

/// Splits the composed graph's f32 initializers into trainable (the head's
/// `head_params` and the unfrozen conv-base layers) and frozen.
/// `blocks` is the model spec's `blocks` table (for [`Unfreeze::Blocks`]).
pub fn select_parameters(
    model: &ModelProto,
    head_params: &[String],
    unfreeze: &Unfreeze,
    blocks: &BTreeMap<String, spec::Block>,
) -> Result<ParameterSplit> {
    let graph = onnx_graph::graph(model)?;
    let float_params: Vec<&str> =
        graph.initializer.iter().filter(|t| t.data_type == data_type::FLOAT).map(|t| t.name.as_str()).collect();
    let known: HashSet<&str> = float_params.iter().copied().collect();
    let check = |name: &str, what: &str| -> Result<()> {
        if known.contains(name) {
            Ok(())
        } else {
            Err(SelectionError::NoParameter { what: what.to_owned(), name: name.to_owned() }.into())
        }
    };

    let mut wanted: Vec<String> = Vec::new();
    match unfreeze {
        Unfreeze::None => {}
        Unfreeze::Blocks(names) => {
            for name in names {
                let block = blocks.get(name).ok_or_else(|| SelectionError::NoBlock {
                    name: name.clone(),
                    blocks: blocks.keys().cloned().collect(),
                })?;
                for param in &block.params {
                    check(param, &format!("block {name}"))?;
                }
                wanted.extend(block.params.iter().cloned());
            }
        }
        Unfreeze::LastConvs(n) => {
            let convs = conv_parameters(model)?;
            if *n > convs.len() {
                return Err(SelectionError::TooFewConvs { wanted: *n, convs: convs.len() }.into());
            }
            wanted.extend(convs[convs.len() - n..].iter().flatten().cloned());
        }
        Unfreeze::Names(names) => {
            for name in names {
                check(name, "unfreeze")?;
            }
            wanted.extend(names.iter().cloned());
        }
    }
    for name in head_params {
        check(name, "head")?;
    }
    wanted.extend(head_params.iter().cloned());

    let wanted: HashSet<&str> = wanted.iter().map(String::as_str).collect();
    let (trainable, frozen): (Vec<&str>, Vec<&str>) = float_params.iter().partition(|name| wanted.contains(*name));
    Ok(ParameterSplit {
        trainable: trainable.into_iter().map(str::to_owned).collect(),
        frozen: frozen.into_iter().map(str::to_owned).collect(),
    })
}

/// Applies the model spec's batch-norm mode to a selection. Running means
/// and variances are statistics, never learned by gradient: selecting one
/// is an error. [`BatchNormMode::Frozen`] also keeps every scale and bias
/// frozen, whatever selected them. Both lists stay in initializer order.
pub fn apply_batch_norm(model: &ModelProto, split: ParameterSplit, mode: BatchNormMode) -> Result<ParameterSplit> {
    let layers = onnx_graph::batch_norm::batch_norm_params(model)?;
    if layers.is_empty() {
        return Ok(split);
    }
    let mut trainable: HashSet<String> = split.trainable.into_iter().collect();
    for layer in &layers {
        for statistic in [&layer.mean, &layer.var] {
            if trainable.contains(statistic) {
                return Err(SelectionError::Statistic { name: statistic.clone(), node: layer.node.clone() }.into());
            }
        }
        if mode == BatchNormMode::Frozen {
            trainable.remove(&layer.scale);
            trainable.remove(&layer.bias);
        }
    }
    let graph = onnx_graph::graph(model)?;
    let (kept, frozen): (Vec<String>, Vec<String>) = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == data_type::FLOAT)
        .map(|t| t.name.clone())
        .partition(|name| trainable.contains(name));
    Ok(ParameterSplit { trainable: kept, frozen })
}

/// The parameters of each Conv node (weight, then bias if any), in graph
/// order. A weight reached through Identity/Cast/Transpose nodes (some
/// exporters put one in between) is traced back to its initializer.
pub fn conv_parameters(model: &ModelProto) -> Result<Vec<Vec<String>>> {
    let graph = onnx_graph::graph(model)?;
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut producers: HashMap<&str, &onnx_graph::proto::NodeProto> = HashMap::new();
    for node in &graph.node {
        for output in &node.output {
            producers.insert(output.as_str(), node);
        }
    }
    let mut convs = Vec::new();
    for node in graph.node.iter().filter(|n| n.op_type == "Conv") {
        let params: Vec<String> = node
            .input
            .iter()
            .skip(1)
            .filter(|s| !s.is_empty())
            .filter_map(|s| trace(s, &initializers, &producers))
            .collect();
        if params.is_empty() {
            return Err(SelectionError::UntracedConv { node: node.name.clone() }.into());
        }
        convs.push(params);
    }
    Ok(convs)
}

/// Follows `name` back through Identity/Cast/Transpose nodes to an initializer.
fn trace<'a>(
    mut name: &'a str,
    initializers: &HashSet<&str>,
    producers: &HashMap<&str, &'a onnx_graph::proto::NodeProto>,
) -> Option<String> {
    for _ in 0..8 {
        if initializers.contains(name) {
            return Some(name.to_owned());
        }
        let node = producers.get(name)?;
        if !matches!(node.op_type.as_str(), "Identity" | "Cast" | "Transpose") {
            return None;
        }
        name = node.input.first()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use compose::{compose, ComposeOptions, DenseLayer, HeadInit};
    use onnx_graph::vgg;

    fn composed() -> compose::Composed {
        let base = onnx_graph::cut_at(&vgg::tiny_vgg(3), vgg::CONV_BASE_OUTPUT).unwrap();
        let head = vec![DenseLayer::new(vec![0.01; 16 * 4], [16, 4], vec![0.0; 4])];
        compose(&base, &HeadInit::Trained(head), &ComposeOptions::default()).unwrap()
    }

    fn tiny_blocks() -> BTreeMap<String, spec::Block> {
        let text = include_str!("../../../data-specs/models/tiny-vgg.toml");
        spec::ModelSpec::from_toml(text).unwrap().blocks
    }

    #[test]
    fn block5_trains_with_the_head_and_the_rest_is_frozen() {
        let c = composed();
        let split = select_parameters(&c.training, &c.head_params, &"block5".parse().unwrap(), &tiny_blocks()).unwrap();
        let mut expected = vgg::block_parameters(5);
        expected.extend(["head.dense0.weight".into(), "head.dense0.bias".into()]);
        assert_eq!(split.trainable, expected);
        assert_eq!(split.frozen.len(), 26 - 6);
        assert!(split.frozen.iter().all(|p| p.starts_with("features.") && !expected.contains(p)));
    }

    #[test]
    fn last_convs_and_names_and_none() {
        let c = composed();
        let blocks = tiny_blocks();
        let last3 = select_parameters(&c.training, &c.head_params, &Unfreeze::LastConvs(3), &blocks).unwrap();
        let block5 = select_parameters(&c.training, &c.head_params, &Unfreeze::Blocks(vec!["block5".into()]), &blocks);
        assert_eq!(last3, block5.unwrap());

        let named: Unfreeze = "names:features.28.weight".parse().unwrap();
        let split = select_parameters(&c.training, &c.head_params, &named, &blocks).unwrap();
        assert_eq!(split.trainable, ["features.28.weight", "head.dense0.weight", "head.dense0.bias"]);

        let none = select_parameters(&c.training, &c.head_params, &"none".parse().unwrap(), &blocks).unwrap();
        assert_eq!(none.trainable, c.head_params);
    }

    #[test]
    fn bad_choices_are_reported() {
        let c = composed();
        let blocks = tiny_blocks();
        let err = select_parameters(&c.training, &c.head_params, &"block9".parse().unwrap(), &blocks).unwrap_err();
        assert!(err.to_string().contains("no block \"block9\""), "{err}");
        let err = select_parameters(&c.training, &c.head_params, &Unfreeze::LastConvs(14), &blocks).unwrap_err();
        assert!(err.to_string().contains("the conv base has 13"), "{err}");
        let err = select_parameters(&c.training, &c.head_params, &"names:nope".parse().unwrap(), &blocks).unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
        assert!("last:x".parse::<Unfreeze>().is_err());
    }
}
