//! Bytes to upright RGB8 pixels at the stored size. Pure: no file access.
//! Ingest stores images this way; predict prepares new ones the same way.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use spec::{ResizeFilter, StoredSize};

/// Why bytes did not give an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The bytes could not be read as any format.
    Unreadable,
    /// Not an image, or a format we do not take.
    NotAnImage,
    /// An image format, but broken or cut off.
    Corrupt,
    /// Declares more pixels (or holds more bytes) than allowed.
    TooLarge,
    /// Not a regular file: a folder, FIFO, socket or device (also through a
    /// symlink), which reading could block on or never finish.
    NotAFile,
}

/// A decoded image, upright, at its stored size.
pub struct Decoded {
    /// Width and height after EXIF orientation, before resizing.
    pub original: (u32, u32),
    pub stored: RgbImage,
}

/// Why an image could not be used: a reject kind and a human reason.
pub type DecodeError = (Failure, String);

const SUPPORTED: [ImageFormat; 6] =
    [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Bmp, ImageFormat::Gif, ImageFormat::WebP, ImageFormat::Tiff];

/// Decodes `bytes`, applies EXIF orientation, converts to RGB8 and resizes
/// ([`resize_to_stored`]).
pub fn decode(bytes: &[u8], max_pixels: u64, size: StoredSize, filter: ResizeFilter) -> Result<Decoded, DecodeError> {
    let img = decode_upright(bytes, max_pixels)?;
    let original = (img.width(), img.height());
    let stored = resize_to_stored(img, size, filter, max_pixels)?;
    Ok(Decoded { original, stored })
}

/// Resizes an upright image to the size ingestion stores it at
/// ([`StoredSize::target`] of its size: never enlarged) with `filter`: the
/// step between [`decode_upright`] and the stored pixels. Readers of an
/// exported model apply it to new images so that they match the training
/// images. Refuses (as [`Failure::TooLarge`]) what [`check_stored_size`]
/// refuses.
pub fn resize_to_stored(
    img: RgbImage,
    size: StoredSize,
    filter: ResizeFilter,
    max_pixels: u64,
) -> Result<RgbImage, DecodeError> {
    let target = check_stored_size(img.dimensions(), size, max_pixels)?;
    Ok(resize(img, target, filter))
}

/// The stored size of an upright `width`x`height` image, or why it is
/// refused: more than `max_pixels` stored pixels, or, under
/// `ShorterSide(side)`, an aspect ratio so extreme that the image at the
/// spec's shorter side would exceed `max_pixels` (a 1x100000 strip under
/// `ShorterSide(256)` would be 256x25,600,000), that is a ratio long/short
/// over `max_pixels / side²`. Storing never enlarges, but readers resize
/// stored pixels to a network's shorter side, so such a strip would become
/// that large later. (When `side²` alone exceeds `max_pixels`, shapes are
/// not judged.) Arithmetic in saturating u64.
pub fn check_stored_size(
    (width, height): (u32, u32),
    size: StoredSize,
    max_pixels: u64,
) -> Result<(u32, u32), DecodeError> {
    let (w, h) = size.target(width, height);
    let stored = u64::from(w) * u64::from(h);
    if stored > max_pixels {
        return Err((
            Failure::TooLarge,
            format!(
                "image too large: stored size {w}x{h} = {stored} pixels is over the limit of {max_pixels} (max_pixels)"
            ),
        ));
    }
    if let StoredSize::ShorterSide(side) = size {
        let (short, long) = (u64::from(width.min(height).max(1)), u64::from(width.max(height)));
        let side = u64::from(side);
        let long_at_side = side.saturating_mul(long) / short;
        let pixels = side.saturating_mul(long_at_side);
        // Only the shape is judged here: when even a square at the spec's
        // side is over the limit, the limit is about originals, not shapes.
        if side.saturating_mul(side) <= max_pixels && pixels > max_pixels {
            return Err((
                Failure::TooLarge,
                format!(
                    "image too large: {width}x{height} is too elongated: at the shorter side of {side} it would be \
                     {side}x{long_at_side} = {pixels} pixels, over the limit of {max_pixels} (max_pixels)"
                ),
            ));
        }
    }
    Ok((w, h))
}

/// Bytes a pixel in the widest layout the formats here decode to (16-bit
/// RGBA): what both the decoder's allocation limit and [`max_file_bytes`]
/// allow a pixel.
const BYTES_PER_PIXEL: u64 = 8;

/// The largest image file read for a pixel limit: 8 bytes a pixel (16-bit
/// RGBA, the widest uncompressed layout the formats here store) plus 1 MiB
/// of headers and metadata. A larger file cannot be a valid image within
/// the limit, and reading it would cost memory for nothing.
pub fn max_file_bytes(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(BYTES_PER_PIXEL).saturating_add(1 << 20)
}

/// Whether a file, as described by its metadata after following symlinks
/// (`std::fs::metadata`), may be read as an image: a regular file of at
/// most `max_bytes` bytes. Checked before opening: opening a FIFO blocks,
/// and a device such as `/dev/zero` never ends. Pure: the caller stats.
pub fn check_file(meta: &std::fs::Metadata, max_bytes: u64) -> Result<(), DecodeError> {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a folder")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else {
        Some("a special file")
    };
    if let Some(what) = what {
        return Err((Failure::NotAFile, format!("not a regular file: {what}; not read")));
    }
    if meta.len() > max_bytes {
        return Err((
            Failure::TooLarge,
            format!(
                "file too large: {} bytes, over the limit of {max_bytes} bytes for max_pixels; not read",
                meta.len()
            ),
        ));
    }
    Ok(())
}

/// Decodes to upright RGB8 at the original size.
pub fn decode_upright(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let mut reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| (Failure::Unreadable, e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err((Failure::NotAnImage, "not an image: unrecognised file signature".into()));
    };
    let name = format_name(format);
    if !SUPPORTED.contains(&format) {
        return Err((Failure::NotAnImage, format!("unsupported image format {name}")));
    }
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // zune-jpeg fills a cut-off scan with grey instead of failing.
        return Err((Failure::Corrupt, "truncated JPEG: no end-of-image marker after the last scan".into()));
    }
    // We check the declared size ourselves, against the configured limit, and
    // let allocation follow from it.
    let mut limits = image::Limits::no_limits();
    limits.max_alloc = Some(max_pixels.saturating_mul(BYTES_PER_PIXEL).max(64 << 20));
    reader.limits(limits);
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(limit) => {
            (Failure::TooLarge, format!("image too large: decoding {name} would exceed the memory limit: {limit}"))
        }
        e => (Failure::Corrupt, format!("corrupt or truncated {name}: {e}")),
    };
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err((
            Failure::TooLarge,
            format!("image too large: declares {w}x{h} = {pixels} pixels, over the limit of {max_pixels} (max_pixels)"),
        ));
    }
    if pixels == 0 {
        return Err((Failure::Corrupt, format!("corrupt {name}: declares a size of {w}x{h}")));
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    // Alpha is dropped, not composited: what Pillow's convert("RGB") and so
    // Keras's load_img do.
    Ok(img.into_rgb8())
}

fn format_name(format: ImageFormat) -> &'static str {
    format.extensions_str().first().copied().unwrap_or("image")
}

/// True when an end-of-image marker (FF D9) follows the last start-of-scan
/// (FF DA). Entropy-coded data stuffs every FF byte, so neither marker can
/// appear inside a scan, and an EXIF thumbnail's own EOI comes before the
/// main image's scans.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let last_eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    matches!((last_sos, last_eoi), (Some(s), Some(e)) if e > s)
}

/// Resizes to exactly `(width, height)` with the chosen filter.
pub fn resize(img: RgbImage, (width, height): (u32, u32), filter: ResizeFilter) -> RgbImage {
    if img.dimensions() == (width, height) {
        return img;
    }
    let (w, h) = img.dimensions();
    let src = Image::from_vec_u8(w, h, img.into_raw(), PixelType::U8x3).expect("buffer matches dimensions");
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let filter = match filter {
        ResizeFilter::Lanczos3 => FilterType::Lanczos3,
        ResizeFilter::CatmullRom => FilterType::CatmullRom,
        ResizeFilter::Bilinear => FilterType::Bilinear,
        ResizeFilter::Area => FilterType::Box,
    };
    Resizer::new()
        .resize(&src, &mut dst, &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)))
        .expect("same pixel type on both sides");
    RgbImage::from_raw(width, height, dst.into_vec()).expect("buffer matches dimensions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_marker_check_tells_whole_from_cut_jpeg() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 7, y as u8 * 9, 50])));
        let jpeg = demo::encode(&img, ImageFormat::Jpeg);
        assert!(jpeg_has_end_marker(&jpeg));
        assert!(!jpeg_has_end_marker(&jpeg[..jpeg.len() - 2]));
        assert!(!jpeg_has_end_marker(&jpeg[..jpeg.len() / 2]));
    }

    #[test]
    fn resize_of_flat_colour_stays_flat() {
        let img = RgbImage::from_pixel(64, 48, image::Rgb([10, 200, 30]));
        for filter in [ResizeFilter::Lanczos3, ResizeFilter::Area, ResizeFilter::Bilinear, ResizeFilter::CatmullRom] {
            let out = resize(img.clone(), (21, 16), filter);
            assert_eq!(out.dimensions(), (21, 16));
            assert!(out.pixels().all(|p| p.0 == [10, 200, 30]), "{filter:?}");
        }
    }

    #[test]
    fn area_resize_averages_blocks() {
        // A 4x2 image of two 2x2 blocks: area-halving gives the block means.
        let img = RgbImage::from_fn(4, 2, |x, y| {
            let v = if x < 2 { [0, 100, 200][(x + y) as usize % 3] } else { 40 };
            image::Rgb([v, v, v])
        });
        let out = resize(img.clone(), (2, 1), ResizeFilter::Area);
        let mean = |x0: u32| {
            (0..2)
                .flat_map(|y| (x0..x0 + 2).map(move |x| (x, y)))
                .map(|(x, y)| img.get_pixel(x, y).0[0] as f32)
                .sum::<f32>()
                / 4.0
        };
        assert!((out.get_pixel(0, 0).0[0] as f32 - mean(0)).abs() <= 1.0);
        assert!((out.get_pixel(1, 0).0[0] as f32 - mean(2)).abs() <= 1.0);
    }
}
