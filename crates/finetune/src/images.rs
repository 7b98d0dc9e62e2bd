//! Images from an ingested dataset as a [`BatchSource`]: stored RGB8 pixels
//! held in memory (3 bytes a pixel, a quarter of the f32 input they become),
//! prepared per batch on all cores with the features stage's preprocessing,
//! plus seeded augmentation for training.
//!
//! Without augmentation an image becomes exactly the input the features
//! stage fed the conv base (`imaging::preprocess::preprocess_into`), so the
//! head's training data and fine-tuning's agree. With augmentation, a random
//! resized crop of the stored image is resized to the input size instead of
//! the resize-and-centre-crop, then maybe mirrored, then normalised.

use dataset::{Dataset, Split};
use image::RgbImage;
use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;
use spec::{InputSpec, ModelSpec, Preprocess};

use crate::augment::{self, Augment};
use crate::data::{Batch, BatchSource};
use crate::error::{DataError, FinetuneError, Result};

/// One stored image.
#[derive(Clone, Debug)]
pub struct StoredImage {
    pub content_id: String,
    pub label: i64,
    pub width: u32,
    pub height: u32,
    /// RGB8, row-major.
    pub pixels: Vec<u8>,
}

impl From<dataset::Record> for StoredImage {
    fn from(record: dataset::Record) -> StoredImage {
        StoredImage {
            content_id: record.content_id,
            label: i64::from(record.label_index),
            width: record.stored_width,
            height: record.stored_height,
            pixels: record.pixels,
        }
    }
}

/// A split's images, ready to batch.
#[derive(Clone, Debug)]
pub struct ImageSource {
    images: Vec<StoredImage>,
    preprocess: Preprocess,
    input: InputSpec,
    augment: Option<(Augment, u64)>,
}

impl ImageSource {
    /// `images` prepared for `model`; `augment` with its seed for training.
    pub fn new(images: Vec<StoredImage>, model: &ModelSpec, augment: Option<(Augment, u64)>) -> Result<ImageSource> {
        if let Some((augment, _)) = &augment {
            augment.validate().map_err(FinetuneError::settings("augmentation"))?;
        }
        for image in &images {
            if image.pixels.len() != image.width as usize * image.height as usize * 3 {
                return Err(image_bytes(image).into());
            }
        }
        Ok(ImageSource { images, preprocess: model.preprocess.clone(), input: model.input.clone(), augment })
    }

    /// Reads `split` of `dataset` (pixels included) into memory.
    pub fn from_dataset(
        dataset: &Dataset,
        split: Split,
        model: &ModelSpec,
        augment: Option<(Augment, u64)>,
    ) -> Result<ImageSource> {
        let mut images = Vec::with_capacity(dataset.rows(split));
        for batch in dataset.batches(split, 256, true) {
            let batch = batch?;
            images.extend(batch.into_iter().map(StoredImage::from));
        }
        ImageSource::new(images, model, augment)
    }

    pub fn images(&self) -> &[StoredImage] {
        &self.images
    }

    pub fn augments(&self) -> bool {
        self.augment.is_some()
    }

    /// The same images, without augmentation (for evaluation or caching).
    pub fn without_augmentation(&self) -> ImageSource {
        ImageSource { augment: None, ..self.clone() }
    }

    /// The shape of one prepared image.
    pub fn item_shape(&self) -> [usize; 3] {
        let [_, a, b, c] = imaging::preprocess::batch_shape(&self.input, 1);
        [a, b, c]
    }

    /// `images` prepared (on all cores) as one batch, in that order; the
    /// source's own images play no part, so a streaming reader uses an
    /// empty source as its preparer.
    pub fn prepare_batch(&self, images: &[&StoredImage], epoch: usize) -> Result<Batch> {
        let item = self.item_shape();
        let per_image: usize = item.iter().product();
        let mut values = vec![0f32; images.len() * per_image];
        values.par_chunks_mut(per_image).zip(images.par_iter()).try_for_each(|(out, image)| {
            if image.pixels.len() != image.width as usize * image.height as usize * 3 {
                return Err(image_bytes(image).into());
            }
            self.prepare(image, epoch, out)
        })?;
        let mut dims = vec![images.len()];
        dims.extend(item);
        let inputs = ArrayD::from_shape_vec(IxDyn(&dims), values)
            .map_err(|source| DataError::Shape { what: "an image batch", source })?;
        Ok(Batch { inputs, labels: images.iter().map(|image| image.label).collect() })
    }

    fn prepare(&self, image: &StoredImage, epoch: usize, out: &mut [f32]) -> Result<()> {
        let Some((augment, seed)) = &self.augment else {
            return imaging::preprocess::preprocess_into(
                &image.pixels,
                (image.width, image.height),
                &self.preprocess,
                &self.input,
                out,
            )
            .map_err(|source| DataError::Image { content_id: image.content_id.clone(), source }.into());
        };
        let stored =
            RgbImage::from_raw(image.width, image.height, image.pixels.clone()).ok_or_else(|| image_bytes(image))?;
        let mut rng = augment::example_rng(*seed, epoch, &image.content_id);
        let (window, flip) = augment::draw(&mut rng, stored.dimensions(), augment);
        let [iw, ih] = self.input.size;
        let mut sized = match window {
            Some(window) => {
                imaging::resize(augment::crop(&stored, window), (iw, ih), imaging::preprocess::RESIZE_FILTER)
            }
            None => imaging::preprocess::resize_and_crop(stored, &self.preprocess),
        };
        if sized.dimensions() != (iw, ih) {
            sized = imaging::resize(sized, (iw, ih), imaging::preprocess::RESIZE_FILTER);
        }
        if flip {
            sized = augment::flip_horizontal(&sized);
        }
        imaging::preprocess::normalise_into(&sized, &self.preprocess, self.input.layout, out);
        Ok(())
    }
}

/// An image whose pixel buffer does not hold its stated size.
fn image_bytes(image: &StoredImage) -> DataError {
    DataError::ImageBytes {
        content_id: image.content_id.clone(),
        bytes: image.pixels.len(),
        width: image.width,
        height: image.height,
    }
}

impl BatchSource for ImageSource {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn batch(&mut self, indices: &[usize], epoch: usize) -> Result<Batch> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.images.len()) {
            return Err(DataError::Index { index: bad, len: self.images.len() }.into());
        }
        let images: Vec<&StoredImage> = indices.iter().map(|&i| &self.images[i]).collect();
        self.prepare_batch(&images, epoch)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec::from_toml(include_str!("../../../data-specs/models/tiny-vgg.toml")).unwrap()
    }

    fn image(seed: u8, width: u32, height: u32) -> StoredImage {
        let pixels = (0..width * height * 3).map(|i| (i as u8).wrapping_mul(seed)).collect();
        StoredImage {
            content_id: format!("{seed:02x}{}", "0".repeat(62)),
            label: i64::from(seed % 2),
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn without_augmentation_it_is_the_features_preprocessing() {
        let images = vec![image(3, 40, 36), image(7, 36, 50)];
        let mut source = ImageSource::new(images.clone(), &spec(), None).unwrap();
        let batch = source.batch(&[1, 0], 1).unwrap();
        assert_eq!(batch.inputs.shape(), [2, 3, 32, 32]);
        assert_eq!(batch.labels, [1, 1]);
        let model = spec();
        let expected =
            imaging::preprocess::preprocess(&images[0].pixels, (40, 36), &model.preprocess, &model.input).unwrap();
        assert_eq!(batch.inputs.index_axis(ndarray::Axis(0), 1).iter().copied().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn augmentation_is_seeded_per_image_and_epoch() {
        let images = vec![image(3, 40, 36), image(7, 36, 50), image(9, 64, 40)];
        let mut source = ImageSource::new(images, &spec(), Some((Augment::default(), 5))).unwrap();
        let a = source.batch(&[0, 1, 2], 1).unwrap();
        // Same image, same epoch, whatever its place in the batch.
        let b = source.batch(&[2, 0], 1).unwrap();
        assert_eq!(a.inputs.index_axis(ndarray::Axis(0), 2), b.inputs.index_axis(ndarray::Axis(0), 0));
        assert_eq!(a.inputs.index_axis(ndarray::Axis(0), 0), b.inputs.index_axis(ndarray::Axis(0), 1));
        // Another epoch draws other crops.
        assert_ne!(a.inputs, source.batch(&[0, 1, 2], 2).unwrap().inputs);
        // And it differs from the plain preprocessing.
        let plain = source.without_augmentation().batch(&[0, 1, 2], 1).unwrap();
        assert_ne!(a.inputs, plain.inputs);
        assert!(a.inputs.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn a_flip_only_augmentation_mirrors_the_plain_input() {
        let flip_only = Augment { flip: true, crop: None };
        let images: Vec<_> = (1..=16).map(|s| image(s, 40, 36)).collect();
        let mut augmented = ImageSource::new(images.clone(), &spec(), Some((flip_only, 1))).unwrap();
        let mut plain = ImageSource::new(images, &spec(), None).unwrap();
        let indices: Vec<usize> = (0..16).collect();
        let (a, p) = (augmented.batch(&indices, 1).unwrap(), plain.batch(&indices, 1).unwrap());
        let mut flipped = 0;
        for i in 0..16 {
            let (a, p) = (a.inputs.index_axis(ndarray::Axis(0), i), p.inputs.index_axis(ndarray::Axis(0), i));
            let mirrored = p.slice(ndarray::s![.., .., ..;-1]).into_dyn();
            if a == mirrored {
                flipped += 1;
            } else {
                assert_eq!(a, p, "image {i} is neither the plain input nor its mirror");
            }
        }
        assert!((2..15).contains(&flipped), "{flipped} of 16 flipped");
    }
}
