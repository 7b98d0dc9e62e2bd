//! Procedural demo data: an image folder with visually distinct classes and
//! a few deliberately broken files.
//!
//! It is the built-in dataset of `cargo xtask pipeline`, so the main job runs
//! offline on a fresh machine, and the fixture factory of the tests: every
//! supported encoding, EXIF orientation and the kinds of broken input that
//! ingestion must survive. Everything is seeded, so the same options always
//! give the same bytes.

use std::fs;
use std::io::{self, Cursor};
use std::path::Path;
use train_kit::SplitMix64;

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageEncoder, ImageFormat, Rgb, RgbImage};

/// The demo classes, in sorted order (the order ingestion assigns indices).
pub const CLASSES: [&str; 5] = ["checkers", "circles", "squares", "stripes", "triangles"];

/// What to generate.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub per_class: usize,
    /// Nominal image size; each image varies by up to ±25% around it.
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    /// Add broken files (empty, truncated, not an image, decompression bomb,
    /// duplicate, cross-class conflict) and files ingestion must ignore.
    pub broken_files: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { per_class: 40, width: 160, height: 120, seed: 7, broken_files: true }
    }
}

/// What was written, so tests can check ingestion's report against it.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    /// Good images written, per class (duplicates and conflicts not counted).
    pub images_per_class: Vec<(String, usize)>,
    /// Paths (relative to the root) of files ingestion must reject, with why.
    pub rejects: Vec<(String, &'static str)>,
    /// A byte-identical copy of an image in the same class.
    pub duplicates: Vec<String>,
    /// Paths whose bytes also appear under another class.
    pub conflicts: Vec<String>,
    /// Files ingestion must ignore silently (hidden, non-image extension).
    pub ignored: Vec<String>,
}

/// Writes the demo image folder under `root` (created if missing).
pub fn generate(root: &Path, opts: &DemoOptions) -> io::Result<DemoSummary> {
    let mut rng = SplitMix64::new(opts.seed);
    let mut summary = DemoSummary::default();
    for (class_index, class) in CLASSES.iter().enumerate() {
        let dir = root.join(class);
        fs::create_dir_all(&dir)?;
        for i in 0..opts.per_class {
            let w = vary(&mut rng, opts.width);
            let h = vary(&mut rng, opts.height);
            let img = render(class_index, w, h, &mut rng);
            // Mostly JPEG like real photo folders, every fifth a PNG.
            let (format, ext) = if i % 5 == 4 { (ImageFormat::Png, "png") } else { (ImageFormat::Jpeg, "jpg") };
            let bytes = encode(&DynamicImage::ImageRgb8(img), format);
            fs::write(dir.join(format!("{class}-{i:04}.{ext}")), bytes)?;
        }
        summary.images_per_class.push((class.to_string(), opts.per_class));
    }
    if opts.broken_files {
        add_broken_files(root, &mut rng, &mut summary)?;
    }
    Ok(summary)
}

fn add_broken_files(root: &Path, rng: &mut SplitMix64, summary: &mut DemoSummary) -> io::Result<()> {
    let rel = |class: &str, name: &str| format!("{class}/{name}");
    let write = |rel_path: &str, bytes: &[u8]| fs::write(root.join(rel_path), bytes);

    let empty = rel("circles", "empty.jpg");
    write(&empty, &[])?;
    summary.rejects.push((empty, "empty file"));

    let good = encode(&DynamicImage::ImageRgb8(render(2, 96, 96, rng)), ImageFormat::Jpeg);
    let truncated = rel("squares", "truncated.jpg");
    write(&truncated, &good[..good.len() / 2])?;
    summary.rejects.push((truncated, "truncated JPEG"));

    let text = rel("triangles", "not-an-image.png");
    write(&text, b"this file has an image extension but holds text\n")?;
    summary.rejects.push((text, "not an image"));

    let bomb = rel("checkers", "bomb.png");
    write(&bomb, &png_bomb(100_000, 100_000))?;
    summary.rejects.push((bomb, "decompression bomb"));

    // The same bytes twice in one class: stored once.
    let original = fs::read(root.join("stripes").join("stripes-0000.jpg"))?;
    let duplicate = rel("stripes", "stripes-copy-of-0000.jpg");
    write(&duplicate, &original)?;
    summary.duplicates.push(duplicate);

    // The same bytes under two classes: a labelling conflict, both excluded.
    let shared = encode(&DynamicImage::ImageRgb8(render(1, 100, 80, rng)), ImageFormat::Png);
    for class in ["circles", "squares"] {
        let path = rel(class, "ambiguous.png");
        write(&path, &shared)?;
        summary.conflicts.push(path);
    }

    for ignored in [rel("circles", "notes.txt"), rel("squares", ".DS_Store")] {
        write(&ignored, b"ignore me")?;
        summary.ignored.push(ignored);
    }
    Ok(())
}

fn vary(rng: &mut SplitMix64, nominal: u32) -> u32 {
    let delta = (nominal / 4).max(1);
    (nominal - delta + rng.below_u32(2 * delta + 1)).max(8)
}

/// Draws one image of class `class_index` (an index into [`CLASSES`]).
///
/// Colours, sizes and positions vary; the shape is what tells classes apart.
pub fn render(class_index: usize, w: u32, h: u32, rng: &mut SplitMix64) -> RgbImage {
    let background = colour(rng);
    let mut foreground = colour(rng);
    // Keep the shape visible: push the foreground away from the background.
    if colour_distance(background, foreground) < 120 {
        foreground = Rgb(background.0.map(|c| 255 - c));
    }
    let (wf, hf) = (w as f32, h as f32);
    let short = wf.min(hf);
    let shape: Box<dyn Fn(f32, f32) -> bool> = match CLASSES[class_index] {
        "circles" => {
            let r = short * rng.range(0.18, 0.4);
            let (cx, cy) = (rng.range(r, wf - r), rng.range(r, hf - r));
            Box::new(move |x, y| (x - cx).powi(2) + (y - cy).powi(2) <= r * r)
        }
        "squares" => {
            let half = short * rng.range(0.15, 0.35);
            let (cx, cy) = (rng.range(half, wf - half), rng.range(half, hf - half));
            Box::new(move |x, y| (x - cx).abs() <= half && (y - cy).abs() <= half)
        }
        "triangles" => {
            let size = short * rng.range(0.35, 0.8);
            let (cx, cy) = (rng.range(size / 2.0, wf - size / 2.0), rng.range(size / 2.0, hf - size / 2.0));
            let top = cy - size / 2.0;
            Box::new(move |x, y| {
                let t = (y - top) / size; // 0 at the apex, 1 at the base
                (0.0..=1.0).contains(&t) && (x - cx).abs() <= t * size / 2.0
            })
        }
        "stripes" => {
            let angle = rng.range(0.0, std::f32::consts::PI);
            let period = short * rng.range(0.1, 0.25);
            let (s, c) = angle.sin_cos();
            Box::new(move |x, y| ((x * c + y * s) / period).rem_euclid(1.0) < 0.5)
        }
        "checkers" => {
            let cell = short * rng.range(0.08, 0.2);
            let (ox, oy) = (rng.range(0.0, cell), rng.range(0.0, cell));
            Box::new(move |x, y| (((x + ox) / cell).floor() as i64 + ((y + oy) / cell).floor() as i64) % 2 == 0)
        }
        other => unreachable!("unknown demo class {other}"),
    };
    let mut img = RgbImage::new(w, h);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let base = if shape(x as f32 + 0.5, y as f32 + 0.5) { foreground } else { background };
        // Mild noise so JPEG and resizing see texture, as in photos.
        let noise = rng.below_u32(17) as i32 - 8;
        *px = Rgb(base.0.map(|c| (c as i32 + noise).clamp(0, 255) as u8));
    }
    img
}

fn colour_distance(a: Rgb<u8>, b: Rgb<u8>) -> u32 {
    a.0.iter().zip(b.0).map(|(&x, y)| (x as i32 - y as i32).unsigned_abs()).sum()
}

/// Encodes an image in the given format, in memory.
pub fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("in-memory encoding of a valid image");
    out.into_inner()
}

/// A JPEG whose EXIF data says how to rotate it for display (1..=8, as in
/// the TIFF Orientation tag: 6 means "rotate 90° clockwise to view").
pub fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    // A minimal big-endian TIFF structure with one IFD entry: Orientation.
    let mut exif = Vec::new();
    exif.extend_from_slice(b"MM\0*");
    exif.extend_from_slice(&8u32.to_be_bytes()); // offset of IFD0
    exif.extend_from_slice(&1u16.to_be_bytes()); // one entry
    exif.extend_from_slice(&0x0112u16.to_be_bytes()); // tag: Orientation
    exif.extend_from_slice(&3u16.to_be_bytes()); // type: SHORT
    exif.extend_from_slice(&1u32.to_be_bytes()); // count
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0]); // value padding
    exif.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut out = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut out, 95);
    encoder.set_exif_metadata(exif).expect("JPEG supports EXIF");
    encoder
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .expect("in-memory JPEG encoding");
    out
}

/// A small PNG whose header declares `width`×`height` pixels: a
/// decompression bomb's signature, which must be refused before decoding.
pub fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut png = encode(&DynamicImage::ImageRgb8(RgbImage::new(4, 4)), ImageFormat::Png);
    // Signature (8 bytes), then IHDR: length (4), "IHDR" (4), width, height, ...
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A random colour.
fn colour(rng: &mut SplitMix64) -> Rgb<u8> {
    Rgb([rng.below_u32(256) as u8, rng.below_u32(256) as u8, rng.below_u32(256) as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn same_seed_same_bytes_and_classes_differ() {
        let a = render(0, 40, 30, &mut SplitMix64::new(1));
        let b = render(0, 40, 30, &mut SplitMix64::new(1));
        assert_eq!(a, b);
        let c = render(1, 40, 30, &mut SplitMix64::new(1));
        assert_ne!(a, c);
    }

    #[test]
    fn bomb_declares_huge_size_with_valid_header_crc() {
        let bomb = png_bomb(100_000, 50_000);
        let mut reader = image::ImageReader::new(Cursor::new(&bomb)).with_guessed_format().unwrap();
        reader.limits(image::Limits::no_limits());
        let decoder = reader.into_decoder();
        // The header is valid, so the decoder reports the declared size.
        use image::ImageDecoder;
        assert_eq!(decoder.map(|d| d.dimensions()).ok(), Some((100_000, 50_000)));
    }
}
