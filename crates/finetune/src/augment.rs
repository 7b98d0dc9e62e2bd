//! Training-time augmentation (pure): a random resized crop and a random
//! horizontal flip, seeded per example so that a batch's images do not
//! depend on the order of the epoch, the thread count or an interruption.
//!
//! The crop follows torchvision's `RandomResizedCrop`: up to ten draws of an
//! area fraction in `scale` and a log-uniform aspect ratio in `ratio`; the
//! first window that fits is cut out and resized to the network's input; if
//! none fits, the largest centred window within `ratio` is used.

use image::RgbImage;
use train_kit::SplitMix64;

pub use contracts::finetune::{Augment, CropRange};

/// A crop window: left, top, width, height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The generator for one example in one epoch: a function of the run's
/// seed, the epoch and the example's content id (hex SHA-256), nothing else.
pub fn example_rng(seed: u64, epoch: usize, content_id: &str) -> SplitMix64 {
    let id = content_id.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or_else(|| fnv1a(content_id));
    SplitMix64::new(seed ^ id.rotate_left(17) ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// torchvision's `RandomResizedCrop.get_params` on an image of `size`.
pub fn crop_window(rng: &mut SplitMix64, (width, height): (u32, u32), range: &CropRange) -> Window {
    let area = f64::from(width) * f64::from(height);
    let (log_r0, log_r1) = (range.ratio.0.ln(), range.ratio.1.ln());
    for _ in 0..10 {
        let target = area * uniform(rng, range.scale.0, range.scale.1);
        let aspect = uniform(rng, log_r0, log_r1).exp();
        let w = (target * aspect).sqrt().round() as i64;
        let h = (target / aspect).sqrt().round() as i64;
        if 0 < w && w <= i64::from(width) && 0 < h && h <= i64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let x = (rng.next_u64() % u64::from(width - w + 1)) as u32;
            let y = (rng.next_u64() % u64::from(height - h + 1)) as u32;
            return Window { x, y, width: w, height: h };
        }
    }
    // Fallback: the whole image, narrowed to the ratio range, centred.
    let in_ratio = f64::from(width) / f64::from(height);
    let (w, h) = if in_ratio < range.ratio.0 {
        (width, ((f64::from(width) / range.ratio.0).round() as u32).clamp(1, height))
    } else if in_ratio > range.ratio.1 {
        (((f64::from(height) * range.ratio.1).round() as u32).clamp(1, width), height)
    } else {
        (width, height)
    };
    Window { x: (width - w) / 2, y: (height - h) / 2, width: w, height: h }
}

fn uniform(rng: &mut SplitMix64, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.next_f64()
}

/// Crops `window` out of `img`.
pub fn crop(img: &RgbImage, window: Window) -> RgbImage {
    image::imageops::crop_imm(img, window.x, window.y, window.width, window.height).to_image()
}

/// Mirrors `img` left-right.
pub fn flip_horizontal(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// Draws this example's augmentation: the crop window (if cropping) and
/// whether to flip. Draw order is fixed: window first, then the flip.
pub fn draw(rng: &mut SplitMix64, size: (u32, u32), augment: &Augment) -> (Option<Window>, bool) {
    let window = augment.crop.as_ref().map(|range| crop_window(rng, size, range));
    let flip = augment.flip && rng.next_u64() & 1 == 1;
    (window, flip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_fit_and_respect_the_ranges() {
        let range = CropRange::default();
        let mut rng = SplitMix64::new(5);
        for _ in 0..500 {
            let w = crop_window(&mut rng, (64, 48), &range);
            assert!(w.x + w.width <= 64 && w.y + w.height <= 48, "{w:?}");
            let fraction = f64::from(w.width * w.height) / (64.0 * 48.0);
            // Rounding each side moves the area by at most a side's length.
            assert!(fraction > 0.5 - 0.05 && fraction <= 1.0, "{fraction}");
            let ratio = f64::from(w.width) / f64::from(w.height);
            assert!(ratio > 0.75 * 0.9 && ratio < 4.0 / 3.0 * 1.1, "{ratio}");
        }
    }

    #[test]
    fn an_impossible_range_falls_back_to_a_centred_window() {
        // A very wide image cannot hold a square of 90%+ of its area.
        let range = CropRange { scale: (0.9, 1.0), ratio: (1.0, 1.0) };
        let w = crop_window(&mut SplitMix64::new(1), (100, 10), &range);
        assert_eq!(w, Window { x: 45, y: 0, width: 10, height: 10 });
    }

    #[test]
    fn crop_and_flip_move_the_right_pixels() {
        let img = RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let cut = crop(&img, Window { x: 1, y: 1, width: 2, height: 2 });
        assert_eq!(cut.get_pixel(0, 0).0, [1, 1, 0]);
        assert_eq!(cut.get_pixel(1, 1).0, [2, 2, 0]);
        let flipped = flip_horizontal(&img);
        assert_eq!(flipped.get_pixel(0, 2).0, [3, 2, 0]);
        assert_eq!(flipped.get_pixel(3, 0).0, [0, 0, 0]);
    }

    #[test]
    fn draws_depend_on_seed_epoch_and_image_only() {
        let id = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let augment = Augment::default();
        let a = draw(&mut example_rng(3, 1, id), (64, 64), &augment);
        assert_eq!(a, draw(&mut example_rng(3, 1, id), (64, 64), &augment));
        let others = [example_rng(3, 2, id), example_rng(4, 1, id), example_rng(3, 1, "00ff")];
        let differing = others.into_iter().filter(|rng| draw(&mut rng.clone(), (64, 64), &augment) != a).count();
        assert!(differing >= 2, "the draws ignore their inputs");
        // Flips are about half.
        let flips = (0..400).filter(|e| draw(&mut example_rng(3, *e, id), (64, 64), &augment).1).count();
        assert!((150..250).contains(&flips), "{flips} flips of 400");
    }

    #[test]
    fn bad_ranges_are_refused() {
        let bad = Augment { flip: false, crop: Some(CropRange { scale: (0.0, 1.0), ratio: (0.75, 1.33) }) };
        assert!(bad.validate().is_err());
        let bad = Augment { flip: false, crop: Some(CropRange { scale: (0.5, 1.0), ratio: (2.0, 1.0) }) };
        assert!(bad.validate().is_err());
        assert!(Augment::default().validate().is_ok());
    }
}
