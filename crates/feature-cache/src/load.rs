//! Reading a split's vectors back, with labels and ids, in dataset order:
//! what the head trains on.

use dataset::{Dataset, Split};
use ndarray::Array2;

use crate::cache::{Index, Store};
use crate::CacheError;

/// A split's (or a batch's) vectors, one row per image, in dataset order.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitFeatures {
    /// `rows × embedding_len`, f32 whatever the storage dtype.
    pub features: Array2<f32>,
    /// Class index of each row (into the dataset's sorted class list).
    pub labels: Vec<u32>,
    /// Content id of each row.
    pub ids: Vec<String>,
}

/// Every vector of a split, in memory. Fails with
/// [`CacheError::Missing`] when any row is not cached (run extraction
/// first). Rows whose vectors the features stage rejected (see
/// [`Store::reject`]) are left out: `ids` and `labels` say which rows
/// there are. For splits that do not fit in memory, see [`stream_split`].
pub fn load_split(dataset: &Dataset, store: &Store, split: Split) -> Result<SplitFeatures, CacheError> {
    let index = store.scan()?;
    let records = usable_records(dataset, &index, split)?;
    let ids: Vec<&str> = records.iter().map(|r| r.content_id.as_str()).collect();
    let features = store.read(&index, &ids)?;
    Ok(SplitFeatures {
        features,
        labels: records.iter().map(|r| r.label_index).collect(),
        ids: records.into_iter().map(|r| r.content_id).collect(),
    })
}

/// A split's vectors in batches of `batch_size` rows (the last may be
/// smaller), in dataset order; memory holds one batch. Checks up front
/// that every row is cached.
pub fn stream_split<'s>(
    dataset: &Dataset,
    store: &'s Store,
    split: Split,
    batch_size: usize,
) -> Result<SplitStream<'s>, CacheError> {
    let index = store.scan()?;
    let records = usable_records(dataset, &index, split)?;
    let missing = records.iter().filter(|r| !index.contains(&r.content_id)).count();
    if missing > 0 {
        return Err(CacheError::Missing {
            store: store.dir().to_path_buf(),
            missing,
            wanted: records.len(),
            quarantined: index.quarantined().iter().map(|q| q.to_string()).collect(),
        });
    }
    Ok(SplitStream {
        store,
        index,
        ids: records.iter().map(|r| r.content_id.clone()).collect(),
        labels: records.iter().map(|r| r.label_index).collect(),
        next: 0,
        batch_size: batch_size.max(1),
        failed: false,
    })
}

/// The split's index rows, less those whose vectors were rejected.
pub fn usable_records(dataset: &Dataset, index: &Index, split: Split) -> Result<Vec<dataset::Record>, CacheError> {
    let mut records = dataset.index(split)?;
    records.retain(|r| index.rejection(&r.content_id).is_none());
    Ok(records)
}

/// Iterator returned by [`stream_split`].
pub struct SplitStream<'s> {
    store: &'s Store,
    index: Index,
    ids: Vec<String>,
    labels: Vec<u32>,
    next: usize,
    batch_size: usize,
    failed: bool,
}

impl SplitStream<'_> {
    /// Rows in the split.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }
}

impl Iterator for SplitStream<'_> {
    type Item = Result<SplitFeatures, CacheError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.ids.len() {
            return None;
        }
        let range = self.next..(self.next + self.batch_size).min(self.ids.len());
        self.next = range.end;
        let ids: Vec<&str> = self.ids[range.clone()].iter().map(String::as_str).collect();
        match self.store.read(&self.index, &ids) {
            Ok(features) => Some(Ok(SplitFeatures {
                features,
                labels: self.labels[range.clone()].to_vec(),
                ids: self.ids[range].to_vec(),
            })),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
