//! Images streamed from the Parquet dataset per batch, so memory stays flat
//! whatever the split's size: a producer thread reads row groups, orders
//! the rows, prepares each batch (on all cores) and keeps up to
//! [`READ_AHEAD_BATCHES`] ready in a bounded channel, so the engine rarely
//! waits and never holds more than that.
//!
//! The order of a shuffled epoch, seeded by `(seed, epoch)`:
//! - a split of at most `buffer_rows` rows is read whole and shuffled
//!   exactly as an in-memory source would be ([`epoch_order`] over the
//!   stored order), so small datasets train on the same batches as before;
//! - a larger split visits its row groups in a seeded random order and
//!   passes the rows through a shuffle buffer of `buffer_rows` rows: once
//!   full, each incoming row replaces a random buffered one, which is
//!   emitted. Every row comes out exactly once, but a row can move only so
//!   far from its row group's place (see the README for what that does to
//!   randomness).
//!
//! Unshuffled passes (evaluation) read in stored order.

use std::ops::ControlFlow;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use dataset::{Dataset, RowGroup, Split};
use spec::ModelSpec;
use train_kit::SplitMix64;

use crate::augment::Augment;
use crate::data::{epoch_order, epoch_seed, shuffle_with, Batch, BatchSource, Batches, EpochOrder};
use crate::error::{DataError, FinetuneError, Result};
use crate::images::{ImageSource, StoredImage};

/// Rows the shuffle buffer holds by default: with images stored at 256 px
/// (196 KB each) about 200 MB, and larger than most row groups, so rows of
/// several row groups mix.
pub const SHUFFLE_BUFFER_ROWS: usize = 1024;

/// Prepared batches waiting for the engine, at most.
pub const READ_AHEAD_BATCHES: usize = 2;

/// Tells the group order apart from [`epoch_order`]'s generator.
const GROUP_ORDER_SALT: u64 = 0x5EED_0F6B_00F5;

/// Calls `emit` with every row of the row groups (`group_rows[g]` rows,
/// read by `read(g)`) once, in `order` (see the module doc), holding at
/// most `buffer_rows` rows (plus the group being read). Stops early when
/// `emit` breaks.
pub fn visit_rows<T, E>(
    group_rows: &[usize],
    order: EpochOrder,
    buffer_rows: usize,
    mut read: impl FnMut(usize) -> std::result::Result<Vec<T>, E>,
    mut emit: impl FnMut(T) -> ControlFlow<()>,
) -> std::result::Result<(), E> {
    let buffer_rows = buffer_rows.max(1);
    let total: usize = group_rows.iter().sum();
    if !order.shuffle {
        for group in 0..group_rows.len() {
            for row in read(group)? {
                if emit(row).is_break() {
                    return Ok(());
                }
            }
        }
        return Ok(());
    }
    if total <= buffer_rows {
        let mut rows: Vec<Option<T>> = Vec::with_capacity(total);
        for group in 0..group_rows.len() {
            rows.extend(read(group)?.into_iter().map(Some));
        }
        for i in epoch_order(rows.len(), order.seed, order.epoch, true) {
            if let Some(row) = rows[i].take() {
                if emit(row).is_break() {
                    return Ok(());
                }
            }
        }
        return Ok(());
    }
    let mut rng = SplitMix64::new(epoch_seed(order.seed, order.epoch) ^ GROUP_ORDER_SALT);
    let mut groups: Vec<usize> = (0..group_rows.len()).collect();
    shuffle_with(&mut groups, &mut rng);
    let mut buffer: Vec<T> = Vec::with_capacity(buffer_rows);
    for group in groups {
        for row in read(group)? {
            if buffer.len() < buffer_rows {
                buffer.push(row);
                continue;
            }
            let slot = (rng.next_u64() % buffer_rows as u64) as usize;
            if emit(std::mem::replace(&mut buffer[slot], row)).is_break() {
                return Ok(());
            }
        }
    }
    shuffle_with(&mut buffer, &mut rng);
    for row in buffer {
        if emit(row).is_break() {
            return Ok(());
        }
    }
    Ok(())
}

/// A split's images, read from the dataset a row group at a time.
#[derive(Clone, Debug)]
pub struct StreamedImages {
    groups: Arc<Vec<RowGroup>>,
    rows: usize,
    /// Holds no images: the preprocessing and augmentation.
    preparer: Arc<ImageSource>,
    buffer_rows: usize,
}

impl StreamedImages {
    /// `split` of `dataset` prepared for `model`; `augment` with its seed
    /// for training. Reads only the Parquet footers.
    pub fn open(
        dataset: &Dataset,
        split: Split,
        model: &ModelSpec,
        augment: Option<(Augment, u64)>,
    ) -> Result<StreamedImages> {
        let groups = dataset.row_groups(split)?;
        let rows = groups.iter().map(|g| g.rows).sum();
        let preparer = ImageSource::new(Vec::new(), model, augment)?;
        Ok(StreamedImages {
            groups: Arc::new(groups),
            rows,
            preparer: Arc::new(preparer),
            buffer_rows: SHUFFLE_BUFFER_ROWS,
        })
    }

    /// The shuffle buffer's size in rows (at least 1).
    pub fn with_buffer_rows(self, rows: usize) -> StreamedImages {
        StreamedImages { buffer_rows: rows.max(1), ..self }
    }

    pub fn buffer_rows(&self) -> usize {
        self.buffer_rows
    }

    /// The same images, without augmentation.
    pub fn without_augmentation(&self) -> StreamedImages {
        StreamedImages { preparer: Arc::new(self.preparer.without_augmentation()), ..self.clone() }
    }

    /// The content ids and labels of one pass, in its order (reads the
    /// pixel-free columns only): what [`StreamedImages::stream`] yields.
    pub fn order(&self, order: EpochOrder) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::with_capacity(self.rows);
        let sizes: Vec<usize> = self.groups.iter().map(|g| g.rows).collect();
        visit_rows(
            &sizes,
            order,
            self.buffer_rows,
            |g| self.groups[g].read(false),
            |r| {
                out.push((r.content_id, i64::from(r.label_index)));
                ControlFlow::Continue(())
            },
        )?;
        Ok(out)
    }

    /// One pass in batches of `batch_size`, prepared on a producer thread.
    pub fn stream(&self, order: EpochOrder, batch_size: usize) -> Stream {
        let (sender, receiver) = mpsc::sync_channel(READ_AHEAD_BATCHES);
        let (groups, preparer, buffer_rows) = (self.groups.clone(), self.preparer.clone(), self.buffer_rows);
        let producer = std::thread::Builder::new()
            .name("finetune-images".into())
            .spawn(move || produce(&groups, &preparer, order, buffer_rows, batch_size.max(1), &sender));
        match producer {
            Ok(producer) => Stream { receiver: Some(receiver), producer: Some(producer), failed: None },
            Err(source) => Stream {
                receiver: None,
                producer: None,
                failed: Some(FinetuneError::Io {
                    what: "cannot start the image reader thread",
                    path: std::path::PathBuf::new(),
                    source,
                }),
            },
        }
    }
}

/// The producer thread's work: rows in order, batched, prepared, sent.
fn produce(
    groups: &[RowGroup],
    preparer: &ImageSource,
    order: EpochOrder,
    buffer_rows: usize,
    batch_size: usize,
    sender: &SyncSender<Result<Batch>>,
) {
    let send = |pending: &mut Vec<StoredImage>| -> ControlFlow<()> {
        let images: Vec<&StoredImage> = pending.iter().collect();
        let batch = preparer.prepare_batch(&images, order.epoch);
        pending.clear();
        let failed = batch.is_err();
        // A closed channel: the pass was abandoned.
        if sender.send(batch).is_err() || failed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let sizes: Vec<usize> = groups.iter().map(|g| g.rows).collect();
    let mut pending = Vec::with_capacity(batch_size);
    let visited = visit_rows(
        &sizes,
        order,
        buffer_rows,
        |g| groups[g].read(true).map(|records| records.into_iter().map(StoredImage::from).collect()),
        |image| {
            pending.push(image);
            if pending.len() == batch_size {
                send(&mut pending)
            } else {
                ControlFlow::Continue(())
            }
        },
    );
    match visited {
        Err(e) => {
            let _ = sender.send(Err(e.into()));
        }
        Ok(()) if !pending.is_empty() => {
            let _ = send(&mut pending);
        }
        Ok(()) => {}
    }
}

/// The batches of one pass; dropping it stops the producer.
pub struct Stream {
    receiver: Option<Receiver<Result<Batch>>>,
    producer: Option<JoinHandle<()>>,
    failed: Option<FinetuneError>,
}

impl Iterator for Stream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        // Disconnected: the producer finished (or died; the caller counts
        // the batches it expected).
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Closing the channel first unblocks a producer waiting to send.
        drop(self.receiver.take());
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }
}

impl BatchSource for StreamedImages {
    fn len(&self) -> usize {
        self.rows
    }

    /// Random access reads every row group holding a wanted row: correct,
    /// but meant for a few rows; passes use [`BatchSource::batches`].
    fn batch(&mut self, indices: &[usize], epoch: usize) -> Result<Batch> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.rows) {
            return Err(DataError::Index { index: bad, len: self.rows }.into());
        }
        let mut wanted: Vec<Option<StoredImage>> = vec![None; indices.len()];
        let mut start = 0;
        for group in self.groups.iter() {
            let end = start + group.rows;
            if indices.iter().any(|i| (start..end).contains(i)) {
                let records = group.read(true)?;
                for (slot, &i) in wanted.iter_mut().zip(indices) {
                    if let Some(record) = i.checked_sub(start).and_then(|row| records.get(row)).filter(|_| i < end) {
                        *slot = Some(StoredImage::from(record.clone()));
                    }
                }
            }
            start = end;
        }
        let images: Vec<&StoredImage> = wanted.iter().flatten().collect();
        if images.len() != indices.len() {
            return Err(
                DataError::BatchSize { expected: indices.len(), shape: Vec::new(), labels: images.len() }.into()
            );
        }
        self.preparer.prepare_batch(&images, epoch)
    }

    fn batches(&mut self, order: EpochOrder, batch_size: usize) -> Batches<'_> {
        Box::new(self.stream(order, batch_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(group_rows: &[usize], seed: u64, epoch: usize, shuffle: bool, buffer: usize) -> Vec<usize> {
        let starts: Vec<usize> = group_rows.iter().scan(0, |s, &n| Some(std::mem::replace(s, *s + n))).collect();
        let mut out = Vec::new();
        let order = EpochOrder { seed, epoch, shuffle };
        visit_rows(
            group_rows,
            order,
            buffer,
            |g| Ok::<_, ()>((starts[g]..starts[g] + group_rows[g]).collect()),
            |r| {
                out.push(r);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        out
    }

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort_unstable();
        v
    }

    #[test]
    fn every_row_once_same_seed_same_order_another_seed_another() {
        let groups = [100, 100, 37, 100, 64];
        let all: Vec<usize> = (0..401).collect();
        for buffer in [1, 16, 128, 400] {
            let a = visit(&groups, 7, 1, true, buffer);
            assert_eq!(sorted(a.clone()), all, "buffer {buffer}");
            assert_eq!(a, visit(&groups, 7, 1, true, buffer));
            assert_ne!(a, visit(&groups, 8, 1, true, buffer));
            assert_ne!(a, visit(&groups, 7, 2, true, buffer));
            assert_ne!(a, all);
        }
        assert_eq!(visit(&groups, 7, 1, false, 16), all);
    }

    #[test]
    fn a_split_that_fits_the_buffer_is_shuffled_like_an_in_memory_one() {
        let groups = [10, 10, 11];
        assert_eq!(visit(&groups, 3, 2, true, 31), epoch_order(31, 3, 2, true));
        assert_eq!(visit(&groups, 3, 2, true, 1024), epoch_order(31, 3, 2, true));
    }

    #[test]
    fn rows_of_distant_row_groups_mix_through_the_buffer() {
        // 20 groups of 50: with a 200-row buffer the first 100 rows out
        // come from more than the first group visited.
        let groups = [50; 20];
        let out = visit(&groups, 1, 1, true, 200);
        let first_groups: std::collections::BTreeSet<usize> = out[..100].iter().map(|r| r / 50).collect();
        assert!(first_groups.len() >= 3, "{first_groups:?}");
    }

    #[test]
    fn breaking_stops_the_visit() {
        let mut seen = 0;
        visit_rows(
            &[5, 5],
            EpochOrder { seed: 1, epoch: 1, shuffle: true },
            2,
            |_| Ok::<_, ()>(vec![0; 5]),
            |_| {
                seen += 1;
                if seen == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .unwrap();
        assert_eq!(seen, 3);
    }
}
