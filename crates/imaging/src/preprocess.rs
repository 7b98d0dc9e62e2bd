//! Stored RGB8 pixels → the network's input tensor, as the model spec says.
//! Pure: no I/O, no ONNX Runtime; everything here is a function of its
//! arguments.
//!
//! The steps, in order:
//! 1. **Resize.** Either *shorter side then centre crop* (torchvision's
//!    `Resize(side)` + `CenterCrop(size)`) or *exact* (Keras
//!    `load_img(target_size=…)`). The shorter side becomes `side` and the
//!    longer one `floor(side × long / short)`, as torchvision computes it.
//!    Resampling is [`crate::resize`] with [`RESIZE_FILTER`] (bilinear):
//!    a convolution resize that widens its kernel when shrinking, like PIL's
//!    bilinear (torchvision's default for PIL images and for tensors with
//!    `antialias=True`). Keras' `load_img` defaults to nearest-neighbour; we
//!    use bilinear for both styles, because nearest aliases badly on the
//!    large reductions that stored images go through. Images already at the
//!    target size are not resampled.
//! 2. **Centre crop** (shorter-side style only). The offsets are
//!    `round((resized - crop) / 2)` with ties to even, which is Python's
//!    `round` and so exactly torchvision's `CenterCrop`. A crop larger than
//!    the image is padded with zeros first, as torchvision does.
//! 3. **Channel order**: RGB, or BGR for Keras "caffe" models.
//! 4. **Normalise**: `(pixel × scale − mean[c]) / std[c]` in f32, with `c`
//!    in the model's channel order (so `mean` is BGR for a BGR model).
//! 5. **Layout**: NCHW (planar, torchvision) or NHWC (interleaved, Keras).
//!
//! Any change to what this module computes must bump [`IMPLEMENTATION`]:
//! it is part of the feature-cache key, so old vectors are not reused.

use image::RgbImage;
use spec::{ColorOrder, InputSpec, Layout, Preprocess, ResizeFilter};

/// The resampling filter used for the model's resize.
pub const RESIZE_FILTER: ResizeFilter = ResizeFilter::Bilinear;

/// Names this module's behaviour in cache keys; bump on any change to the
/// values it produces.
pub const IMPLEMENTATION: &str = "features-preprocess-1:bilinear,torchvision-size,round-half-even-crop";

/// Stored pixels whose length does not match their stated size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pixel buffer holds {actual} bytes, {width}x{height} RGB8 needs {expected}")]
pub struct PixelSizeError {
    pub width: u32,
    pub height: u32,
    pub expected: usize,
    pub actual: usize,
}

/// Number of f32 values one image takes in the network input.
pub fn input_len(input: &InputSpec) -> usize {
    3 * input.size[0] as usize * input.size[1] as usize
}

/// The network input's dims for `batch` images, in the spec's layout:
/// `[N, 3, H, W]` or `[N, H, W, 3]`.
pub fn batch_shape(input: &InputSpec, batch: usize) -> [usize; 4] {
    let [w, h] = input.size.map(|v| v as usize);
    match input.layout {
        Layout::Nchw => [batch, 3, h, w],
        Layout::Nhwc => [batch, h, w, 3],
    }
}

/// Size after torchvision's `Resize(side)`: the shorter side becomes `side`,
/// the longer one `floor(side × long / short)`.
pub fn shorter_side_size((width, height): (u32, u32), side: u32) -> (u32, u32) {
    let (w, h) = (u64::from(width.max(1)), u64::from(height.max(1)));
    // In u64, saturating at u32::MAX rather than wrapping.
    let long = |long: u64, short: u64| u32::try_from((u64::from(side) * long / short).max(1)).unwrap_or(u32::MAX);
    if w <= h {
        (side, long(h, w))
    } else {
        (long(w, h), side)
    }
}

/// Where a centre crop of `crop` starts in an image of `size`, per axis:
/// `round((size - crop) / 2)`, ties to even (Python's `round`, as
/// torchvision's `CenterCrop` uses). Only for `crop <= size`.
pub fn crop_offsets((width, height): (u32, u32), (crop_w, crop_h): (u32, u32)) -> (u32, u32) {
    let offset = |size: u32, crop: u32| (f64::from(size.saturating_sub(crop)) / 2.0).round_ties_even() as u32;
    (offset(width, crop_w), offset(height, crop_h))
}

/// Resizes (and centre-crops) a stored image to the network's input size.
pub fn resize_and_crop(img: RgbImage, pre: &Preprocess) -> RgbImage {
    let r = &pre.resize;
    match (r.shorter_side, r.center_crop, r.exact) {
        (_, _, Some([w, h])) => crate::resize(img, (w, h), RESIZE_FILTER),
        (Some(side), Some([cw, ch]), None) => {
            let size = shorter_side_size(img.dimensions(), side);
            let resized = crate::resize(img, size, RESIZE_FILTER);
            center_crop(&resized, (cw, ch))
        }
        // A validated spec has one of the two forms; anything else keeps the
        // image as it is (the caller's size check then reports it).
        _ => img,
    }
}

/// torchvision's `CenterCrop`: zero-pad to at least the crop size (padding
/// split as `(crop - size) // 2` before, the rest after), then crop at
/// [`crop_offsets`].
pub fn center_crop(img: &RgbImage, (crop_w, crop_h): (u32, u32)) -> RgbImage {
    let (w, h) = img.dimensions();
    let (pad_left, pad_top) = (crop_w.saturating_sub(w) / 2, crop_h.saturating_sub(h) / 2);
    let (padded_w, padded_h) = (w.max(crop_w), h.max(crop_h));
    let (off_x, off_y) = crop_offsets((padded_w, padded_h), (crop_w, crop_h));
    RgbImage::from_fn(crop_w, crop_h, |x, y| {
        let (px, py) = (x + off_x, y + off_y);
        match (px.checked_sub(pad_left), py.checked_sub(pad_top)) {
            (Some(sx), Some(sy)) if sx < w && sy < h => *img.get_pixel(sx, sy),
            _ => image::Rgb([0, 0, 0]),
        }
    })
}

/// Writes a network-sized image as normalised f32 values in the model's
/// channel order and layout. `out` holds exactly `3 × width × height` values.
pub fn normalise_into(img: &RgbImage, pre: &Preprocess, layout: Layout, out: &mut [f32]) {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    assert_eq!(out.len(), 3 * plane, "output holds {} values, the image needs {}", out.len(), 3 * plane);
    // Source channel (in RGB) for each network channel.
    let source: [usize; 3] = match pre.color {
        ColorOrder::Rgb => [0, 1, 2],
        ColorOrder::Bgr => [2, 1, 0],
    };
    for (i, pixel) in img.pixels().enumerate() {
        for (c, &from) in source.iter().enumerate() {
            let value = (f32::from(pixel.0[from]) * pre.scale - pre.mean[c]) / pre.std[c];
            let at = match layout {
                Layout::Nchw => c * plane + i,
                Layout::Nhwc => i * 3 + c,
            };
            out[at] = value;
        }
    }
}

/// Stored RGB8 pixels (`width × height`, row-major) → one image's input
/// values, written to `out` ([`input_len`] values).
pub fn preprocess_into(
    pixels: &[u8],
    (width, height): (u32, u32),
    pre: &Preprocess,
    input: &InputSpec,
    out: &mut [f32],
) -> Result<(), PixelSizeError> {
    let expected = width as usize * height as usize * 3;
    let img = RgbImage::from_raw(width, height, pixels.to_vec())
        .filter(|_| pixels.len() == expected)
        .ok_or(PixelSizeError { width, height, expected, actual: pixels.len() })?;
    let sized = resize_and_crop(img, pre);
    let [iw, ih] = input.size;
    let sized = if sized.dimensions() == (iw, ih) { sized } else { crate::resize(sized, (iw, ih), RESIZE_FILTER) };
    normalise_into(&sized, pre, input.layout, out);
    Ok(())
}

/// [`preprocess_into`] into a new vector.
pub fn preprocess(
    pixels: &[u8],
    size: (u32, u32),
    pre: &Preprocess,
    input: &InputSpec,
) -> Result<Vec<f32>, PixelSizeError> {
    let mut out = vec![0f32; input_len(input)];
    preprocess_into(pixels, size, pre, input, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_shape_follows_the_layout_and_input_len() {
        let mut input = InputSpec { name: "x".into(), layout: Layout::Nchw, size: [40, 30] };
        assert_eq!(batch_shape(&input, 2), [2, 3, 30, 40]);
        input.layout = Layout::Nhwc;
        assert_eq!(batch_shape(&input, 2), [2, 30, 40, 3]);
        assert_eq!(batch_shape(&input, 1).iter().product::<usize>(), input_len(&input));
    }

    #[test]
    fn shorter_side_truncates_the_long_side_like_torchvision() {
        // int(36 * 48 / 40) = int(43.2) = 43
        assert_eq!(shorter_side_size((48, 40), 36), (43, 36));
        assert_eq!(shorter_side_size((40, 48), 36), (36, 43));
        assert_eq!(shorter_side_size((50, 50), 7), (7, 7));
        // 256 * 500 / 333 = 384.38 -> 384
        assert_eq!(shorter_side_size((500, 333), 256), (384, 256));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        assert_eq!(crop_offsets((5, 3), (2, 2)), (2, 0)); // 1.5 -> 2, 0.5 -> 0
        assert_eq!(crop_offsets((7, 9), (2, 2)), (2, 4)); // 2.5 -> 2, 3.5 -> 4
        assert_eq!(crop_offsets((4, 4), (4, 4)), (0, 0));
    }

    #[test]
    fn crop_larger_than_the_image_pads_with_zeros() {
        let img = RgbImage::from_pixel(1, 1, image::Rgb([9, 9, 9]));
        let out = center_crop(&img, (4, 3));
        // pad_left = (4-1)//2 = 1, pad_top = (3-1)//2 = 1
        assert_eq!(out.get_pixel(1, 1).0, [9, 9, 9]);
        assert_eq!(out.pixels().filter(|p| p.0 == [9, 9, 9]).count(), 1);
    }
}
