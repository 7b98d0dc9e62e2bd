//! Where batches come from: the [`BatchSource`] trait the training loop
//! reads, an in-memory source, and the seeded order of each epoch.

use ndarray::{ArrayD, Axis};

use crate::error::{DataError, Result};

/// One batch: inputs `[n, ...]` (f32, standard layout; NCHW images, or
/// cached activations) and integer class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub inputs: ArrayD<f32>,
    pub labels: Vec<i64>,
}

/// How one pass visits a source's examples: shuffled by `(seed, epoch)`,
/// or in index (stored) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochOrder {
    pub seed: u64,
    /// 1-based for training epochs; evaluation passes use any.
    pub epoch: usize,
    pub shuffle: bool,
}

/// The batches of one pass, in order.
pub type Batches<'s> = Box<dyn Iterator<Item = Result<Batch>> + 's>;

/// Examples addressed by index. The training loop decides the order (see
/// [`epoch_order`]), so a run is reproducible and resumable whatever the
/// source; a source that augments should seed from `epoch` and the indices.
pub trait BatchSource {
    /// How many examples there are.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`, in that order.
    fn batch(&mut self, indices: &[usize], epoch: usize) -> Result<Batch>;

    /// One pass in batches of `batch_size` (the last may be smaller): what
    /// training and evaluation read. By default [`epoch_order`] gathered
    /// with [`BatchSource::batch`]; a streaming source overrides it.
    fn batches(&mut self, order: EpochOrder, batch_size: usize) -> Batches<'_> {
        let indices = epoch_order(self.len(), order.seed, order.epoch, order.shuffle);
        let chunks: Vec<Vec<usize>> = indices.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
        Box::new(chunks.into_iter().map(move |chunk| self.batch(&chunk, order.epoch)))
    }
}

/// Examples held in memory: inputs `[N, ...]` and `N` labels.
#[derive(Clone, Debug, PartialEq)]
pub struct InMemory {
    inputs: ArrayD<f32>,
    labels: Vec<i64>,
}

impl InMemory {
    pub fn new(inputs: ArrayD<f32>, labels: Vec<i64>) -> Result<InMemory> {
        let rows = inputs.shape().first().copied().unwrap_or(0);
        if inputs.ndim() < 2 || rows != labels.len() {
            return Err(DataError::InputsLabels { shape: inputs.shape().to_vec(), labels: labels.len() }.into());
        }
        if let Some(label) = labels.iter().find(|&&l| l < 0) {
            return Err(DataError::NegativeLabel { label: *label }.into());
        }
        Ok(InMemory { inputs, labels })
    }

    pub fn inputs(&self) -> &ArrayD<f32> {
        &self.inputs
    }

    pub fn labels(&self) -> &[i64] {
        &self.labels
    }
}

impl BatchSource for InMemory {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn batch(&mut self, indices: &[usize], _epoch: usize) -> Result<Batch> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.labels.len()) {
            return Err(DataError::Index { index: bad, len: self.labels.len() }.into());
        }
        let inputs = self.inputs.select(Axis(0), indices);
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Batch { inputs, labels })
    }
}

/// The order of the examples in `epoch` (1-based): a Fisher-Yates shuffle
/// seeded by `(seed, epoch)` when `shuffle`, else `0..len`. The same
/// arguments give the same order on every machine, so a resumed run sees
/// the batches an uninterrupted one would.
pub fn epoch_order(len: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        shuffle_with(&mut order, &mut train_kit::SplitMix64::new(epoch_seed(seed, epoch)));
    }
    order
}

/// The generator seed of `epoch` of a run seeded with `seed`.
pub(crate) fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Fisher-Yates over `items`, drawing from `rng`: [`epoch_order`]'s shuffle.
pub(crate) fn shuffle_with<T>(items: &mut [T], rng: &mut train_kit::SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, 7, 1, true);
        assert_eq!(a, epoch_order(50, 7, 1, true));
        assert_ne!(a, epoch_order(50, 7, 2, true));
        assert_ne!(a, epoch_order(50, 8, 1, true));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, 7, 1, false), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn in_memory_gathers_rows() {
        let inputs = ArrayD::from_shape_vec(vec![3, 2], vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0]).unwrap();
        let mut source = InMemory::new(inputs, vec![0, 1, 2]).unwrap();
        let batch = source.batch(&[2, 0], 1).unwrap();
        assert_eq!(batch.inputs.as_slice().unwrap(), [20.0, 21.0, 0.0, 1.0]);
        assert_eq!(batch.labels, [2, 0]);
        assert!(source.batch(&[3], 1).is_err());
        assert!(InMemory::new(ArrayD::zeros(vec![2, 2]), vec![0]).is_err());
    }
}
