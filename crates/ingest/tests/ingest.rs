//! Ingestion end to end on generated fixtures: every test builds its images
//! on the fly, runs the real ingestion and reads the Parquet back.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use arrow_schema::DataType;
use dataset::{Dataset, Split};
use demo::DemoOptions;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use ingest::{IngestOptions, IngestSummary, RejectKind};
use parquet::file::reader::{FileReader, SerializedFileReader};
use sha2::{Digest, Sha256};
use spec::{DatasetSpec, StoredSize};
use train_kit::SplitMix64;

fn small_demo(root: &Path, per_class: usize) -> demo::DemoSummary {
    let opts = DemoOptions { per_class, width: 48, height: 36, seed: 11, broken_files: true };
    demo::generate(root, &opts).unwrap()
}

fn run(spec: &DatasetSpec, out: &Path) -> IngestSummary {
    ingest::ingest(spec, out, &IngestOptions::default(), &progress::Silent).unwrap()
}

fn spec_for(root: &Path, side: u32) -> DatasetSpec {
    let mut spec = DatasetSpec::for_root(root.to_string_lossy());
    spec.size = StoredSize::ShorterSide(side);
    spec
}

fn all_records(ds: &Dataset, with_pixels: bool) -> Vec<dataset::Record> {
    Split::ALL
        .iter()
        .flat_map(|&s| ds.batches(s, 7, with_pixels).flat_map(Result::unwrap).collect::<Vec<_>>())
        .collect()
}

/// A square demo image of class `class_index`, PNG-encoded.
fn demo_png(class_index: usize, side: u32, rng: &mut SplitMix64) -> Vec<u8> {
    let img = demo::render(class_index, side, side, rng);
    demo::encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png)
}

/// Bytes of every file in a folder, by name.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap()))
        .collect()
}

#[test]
fn schema_metadata_and_values_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("images"), tmp.path().join("dataset"));
    let made = small_demo(&root, 12);
    let summary = run(&spec_for(&root, 24), &out);
    let info = &summary.info;

    assert_eq!(info.classes, demo::CLASSES.map(String::from).to_vec());
    assert_eq!(info.total_rows(), 5 * 12, "every good image once, duplicates and conflicts out");
    assert_eq!(info.duplicates, made.duplicates.len());
    assert_eq!(info.conflicts, made.conflicts.len());
    assert_eq!(info.rejected, made.rejects.len());
    assert_eq!(info.ignored, 1, "notes.txt (hidden files are skipped without counting)");

    // Raw Parquet: the schema, the key-value metadata, the row groups.
    let shard = out.join(&info.split(Split::Train).shards[0]);
    let reader = SerializedFileReader::new(fs::File::open(&shard).unwrap()).unwrap();
    let kv: HashMap<String, String> = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect();
    let classes: Vec<String> = serde_json::from_str(&kv["tl.classes"]).unwrap();
    assert_eq!(classes, info.classes);
    assert_eq!(kv["tl.split"], "train");
    assert_eq!(kv["tl.schema_version"], "1");
    let recorded: DatasetSpec = serde_json::from_str(&kv["tl.spec"]).unwrap();
    assert_eq!(recorded.size, StoredSize::ShorterSide(24));
    let arrow = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&shard).unwrap())
        .unwrap();
    let schema = arrow.schema();
    assert_eq!(schema.field_with_name("pixels").unwrap().data_type(), &DataType::Binary);
    assert_eq!(schema.field_with_name("label_index").unwrap().data_type(), &DataType::Int32);
    assert_eq!(schema.field_with_name("content_id").unwrap().data_type(), &DataType::Utf8);

    // Values, checked against the source files independently of ingest.
    let ds = Dataset::open(&out).unwrap();
    let records = all_records(&ds, true);
    assert_eq!(records.len(), 60);
    for r in &records {
        let bytes = fs::read(root.join(&r.path)).unwrap();
        assert_eq!(r.content_id, hex::encode(Sha256::digest(&bytes)), "{}", r.path);
        assert_eq!(r.label, info.classes[r.label_index as usize]);
        assert_eq!(r.path.split('/').next().unwrap(), r.label, "label is the class folder");
        let original = image::load_from_memory(&bytes).unwrap();
        assert_eq!((r.width, r.height), (original.width(), original.height()));
        assert_eq!(r.stored_width.min(r.stored_height), 24);
        let aspect = |w: u32, h: u32| w as f64 / h as f64;
        assert!((aspect(r.stored_width, r.stored_height) - aspect(r.width, r.height)).abs() < 0.06);
        assert_eq!(r.pixels.len(), (r.stored_width * r.stored_height * 3) as usize);
        // Resizing keeps the mean colour.
        let mean = |px: &[u8]| {
            let mut m = [0f64; 3];
            px.chunks(3).for_each(|p| (0..3).for_each(|c| m[c] += p[c] as f64));
            m.map(|v| v / (px.len() / 3) as f64)
        };
        let (a, b) = (mean(&r.pixels), mean(original.to_rgb8().as_raw()));
        assert!((0..3).all(|c| (a[c] - b[c]).abs() < 6.0), "{}: {a:?} vs {b:?}", r.path);
    }
    // The summary file agrees with the rows.
    let per_class: Vec<usize> = (0..5).map(|c| records.iter().filter(|r| r.label_index == c).count()).collect();
    assert_eq!(per_class, vec![12; 5]);
}

#[test]
fn rejects_are_reported_with_reasons_and_run_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("images"), tmp.path().join("dataset"));
    let made = small_demo(&root, 3);
    #[cfg(unix)]
    std::os::unix::fs::symlink("..", root.join("circles").join("loop")).unwrap();
    let summary = run(&spec_for(&root, 16), &out);

    let kind_of: HashMap<&str, RejectKind> = summary.rejects.iter().map(|r| (r.path.as_str(), r.kind)).collect();
    assert_eq!(kind_of["circles/empty.jpg"], RejectKind::EmptyFile);
    assert_eq!(kind_of["squares/truncated.jpg"], RejectKind::Corrupt);
    assert_eq!(kind_of["triangles/not-an-image.png"], RejectKind::NotAnImage);
    assert_eq!(kind_of["checkers/bomb.png"], RejectKind::TooLarge);
    assert_eq!(kind_of["stripes/stripes-copy-of-0000.jpg"], RejectKind::Duplicate);
    for path in &made.conflicts {
        assert_eq!(kind_of[path.as_str()], RejectKind::LabelConflict, "{path}");
    }
    #[cfg(unix)]
    assert_eq!(kind_of["circles/loop"], RejectKind::SymlinkLoop);

    let csv = fs::read_to_string(out.join("rejects.csv")).unwrap();
    assert!(csv.starts_with("path,kind,reason\n"));
    assert!(csv.contains("checkers/bomb.png,too-large,\"image too large: declares 100000x100000"), "{csv}");
    assert!(csv.contains("squares/truncated.jpg,corrupt,truncated JPEG"), "{csv}");
    assert!(
        csv.contains(
            "circles/ambiguous.png,label-conflict,label conflict: same bytes as squares/ambiguous.png (class squares)"
        ),
        "{csv}"
    );
    assert_eq!(summary.info.total_rows(), 15);
    assert_eq!(summary.losses(), summary.rejects.len() - 1, "only the duplicate is not a loss");
}

#[test]
fn every_format_and_colour_type_becomes_rgb8() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let colour = [200u8, 60, 30];
    let rgb = RgbImage::from_pixel(20, 10, Rgb(colour));
    let gray_value = 90u8;
    let cases: Vec<(&str, DynamicImage, ImageFormat)> = vec![
        ("rgb.jpg", DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Jpeg),
        ("rgb.png", DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Png),
        ("rgba.png", DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()), ImageFormat::Png),
        ("rgb16.png", DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(rgb.clone()).to_rgb16()), ImageFormat::Png),
        ("rgb.bmp", DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Bmp),
        ("rgba.gif", DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()), ImageFormat::Gif),
        ("rgb.webp", DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::WebP),
        ("rgb.tiff", DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Tiff),
    ];
    let gray_cases: Vec<(&str, DynamicImage, ImageFormat)> = vec![
        (
            "l8.jpg",
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(20, 10, image::Luma([gray_value]))),
            ImageFormat::Jpeg,
        ),
        (
            "l8.png",
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(20, 10, image::Luma([gray_value]))),
            ImageFormat::Png,
        ),
        (
            "la8.png",
            DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_pixel(20, 10, image::LumaA([gray_value, 128]))),
            ImageFormat::Png,
        ),
        (
            "l16.png",
            DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(20, 10, image::Luma([gray_value as u16 * 257]))),
            ImageFormat::Png,
        ),
    ];
    for (dir, list) in [("colour", &cases), ("gray", &gray_cases)] {
        fs::create_dir_all(root.join(dir)).unwrap();
        for (name, img, format) in list {
            fs::write(root.join(dir).join(name), demo::encode(img, *format)).unwrap();
        }
    }
    fs::write(root.join("colour").join("palette.png"), palette_png(colour)).unwrap();

    let mut spec = spec_for(&root, 10);
    spec.split = spec::SplitRatios { train: 1.0, validation: 0.0, test: 0.0 };
    let summary = run(&spec, &tmp.path().join("out"));
    assert!(summary.rejects.is_empty(), "{:?}", summary.rejects);
    let ds = Dataset::open(&tmp.path().join("out")).unwrap();
    let records = all_records(&ds, true);
    assert_eq!(records.len(), cases.len() + gray_cases.len() + 1);
    for r in records {
        let expected = if r.label == "gray" { [gray_value; 3] } else { colour };
        let tolerance = if r.path.ends_with(".jpg") { 4 } else { 1 };
        assert_eq!((r.stored_width, r.stored_height), (20, 10), "{}", r.path);
        for p in r.pixels.chunks(3) {
            for c in 0..3 {
                assert!((p[c] as i32 - expected[c] as i32).abs() <= tolerance, "{}: {p:?} vs {expected:?}", r.path);
            }
        }
    }
}

/// A 20x10 indexed-colour PNG whose palette holds `colour`.
fn palette_png(colour: [u8; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 20, 10);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(vec![0, 0, 0, colour[0], colour[1], colour[2]]);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[1u8; 200]).unwrap();
    writer.finish().unwrap();
    out
}

#[test]
fn exif_orientation_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    // Left half red, right half blue, 40x20 as stored in the file.
    let img = RgbImage::from_fn(40, 20, |x, _| if x < 20 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
    for class in ["a", "b"] {
        fs::create_dir_all(root.join(class)).unwrap();
    }
    // 6: rotate 90° clockwise to display: the left half ends up on top.
    fs::write(root.join("a/rotated.jpg"), demo::jpeg_with_orientation(&img, 6)).unwrap();
    // 3: rotate 180°: the left half ends up on the right.
    fs::write(root.join("b/upside-down.jpg"), demo::jpeg_with_orientation(&img, 3)).unwrap();
    let summary = run(&spec_for(&root, 20), &tmp.path().join("out"));
    assert!(summary.rejects.is_empty(), "{:?}", summary.rejects);
    let ds = Dataset::open(&tmp.path().join("out")).unwrap();
    let records = all_records(&ds, true);
    let pixel = |r: &dataset::Record, x: u32, y: u32| {
        let i = ((y * r.stored_width + x) * 3) as usize;
        [r.pixels[i], r.pixels[i + 1], r.pixels[i + 2]]
    };
    let red = |p: [u8; 3]| p[0] > 200 && p[2] < 60;
    let blue = |p: [u8; 3]| p[2] > 200 && p[0] < 60;
    let rotated = records.iter().find(|r| r.path == "a/rotated.jpg").unwrap();
    assert_eq!((rotated.width, rotated.height), (20, 40));
    assert!(red(pixel(rotated, 10, 5)) && blue(pixel(rotated, 10, 35)));
    let flipped = records.iter().find(|r| r.path == "b/upside-down.jpg").unwrap();
    assert_eq!((flipped.width, flipped.height), (40, 20));
    assert!(blue(pixel(flipped, 5, 10)) && red(pixel(flipped, 35, 10)));
}

#[test]
fn splits_are_stratified_and_stable_when_images_are_added() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let opts = DemoOptions { per_class: 120, width: 12, height: 12, seed: 3, broken_files: false };
    demo::generate(&root, &opts).unwrap();
    let spec = spec_for(&root, 8);
    let before = run(&spec, &tmp.path().join("v1"));
    // Exactly the stated sizes in every class: 96 / 12 / 12 of 120.
    for c in 0..demo::CLASSES.len() {
        let got: Vec<usize> = Split::ALL.iter().map(|&s| before.info.split(s).per_class[c]).collect();
        assert_eq!(got, [96, 12, 12], "class {c}");
    }
    let splits_of = |dir: &Path| -> HashMap<String, (u32, Split)> {
        let ds = Dataset::open(dir).unwrap();
        all_records(&ds, false).into_iter().map(|r| (r.content_id, (r.label_index, r.split))).collect()
    };
    let old = splits_of(&tmp.path().join("v1"));

    // Add 15 images with other content and names to each class: each class
    // moves at most the stated bound, and stays exactly stratified.
    let mut rng = SplitMix64::new(99);
    for (ci, class) in demo::CLASSES.iter().enumerate() {
        for i in 0..15 {
            fs::write(root.join(class).join(format!("new-{i}.png")), demo_png(ci, 12, &mut rng)).unwrap();
        }
    }
    let after = run(&spec, &tmp.path().join("v2"));
    let new = splits_of(&tmp.path().join("v2"));
    assert_eq!(new.len(), old.len() + 75);
    let expected = ingest::class_split_sizes(135, &spec.split);
    for c in 0..demo::CLASSES.len() {
        let got: Vec<usize> = Split::ALL.iter().map(|&s| after.info.split(s).per_class[c]).collect();
        assert_eq!(got, expected, "class {c}");
        let moved = old.iter().filter(|(id, (label, split))| *label == c as u32 && new[*id].1 != *split).count();
        let bound = ingest::moved_when_adding(15, &spec.split);
        assert!(moved <= bound, "class {c}: {moved} existing images moved, bound {bound}");
    }
}

#[test]
fn splits_do_not_depend_on_file_names_listing_order_or_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let opts = DemoOptions { per_class: 40, width: 12, height: 12, seed: 5, broken_files: false };
    demo::generate(&root, &opts).unwrap();
    // The same bytes under reversed names: discovery lists them in another order.
    let renamed = tmp.path().join("renamed");
    for class in demo::CLASSES {
        fs::create_dir_all(renamed.join(class)).unwrap();
        for entry in fs::read_dir(root.join(class)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap();
            let (stem, ext) = name.rsplit_once('.').unwrap();
            let reversed: String = stem.chars().rev().collect();
            fs::copy(&path, renamed.join(class).join(format!("r-{reversed}.{ext}"))).unwrap();
        }
    }
    let splits_with = |root: &Path, threads: usize, out: &str| -> BTreeMap<String, Split> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let out = tmp.path().join(out);
        pool.install(|| run(&spec_for(root, 8), &out));
        let ds = Dataset::open(&out).unwrap();
        all_records(&ds, false).into_iter().map(|r| (r.content_id, r.split)).collect()
    };
    let reference = splits_with(&root, 1, "one");
    assert_eq!(reference.len(), 200);
    assert_eq!(splits_with(&root, 4, "four"), reference);
    assert_eq!(splits_with(&renamed, 1, "renamed-one"), reference);
    assert_eq!(splits_with(&renamed, 4, "renamed-four"), reference);
}

#[test]
fn files_that_fail_to_decode_after_the_split_is_assigned_are_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let mut rng = SplitMix64::new(23);
    for (ci, class) in ["a", "b"].into_iter().enumerate() {
        fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..10 {
            fs::write(root.join(class).join(format!("{i}.png")), demo_png(ci, 10, &mut rng)).unwrap();
        }
    }
    // Reads and hashes fine (so it gets a split), fails only when decoded.
    fs::write(root.join("a/garbage.png"), b"not a png at all").unwrap();
    let summary = run(&spec_for(&root, 8), &tmp.path().join("out"));
    let rows_of_a: usize = Split::ALL.iter().map(|&s| summary.info.split(s).per_class[0]).sum();
    assert_eq!(rows_of_a, 10);
    let warning = summary.info.warnings.iter().find(|w| w.contains("class 'a'")).unwrap();
    assert!(warning.contains("1 file(s) failed to decode after the split was assigned"), "{warning}");
    assert!(!summary.info.warnings.iter().any(|w| w.contains("class 'b'")), "{:?}", summary.info.warnings);
}

#[test]
fn output_is_byte_identical_across_reruns_and_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    small_demo(&root, 10);
    let spec = spec_for(&root, 20);
    // Small shards and groups so the rotation logic is part of the comparison.
    let opts = IngestOptions { chunk_size: 5, rows_per_group: 4, rows_per_shard: 12 };
    let with_threads = |n: usize, out: &Path| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        pool.install(|| ingest::ingest(&spec, out, &opts, &progress::Silent).unwrap());
        snapshot(out)
    };
    let one = with_threads(1, &tmp.path().join("one"));
    let two = with_threads(2, &tmp.path().join("two"));
    let again = with_threads(2, &tmp.path().join("one"));
    assert!(one.keys().filter(|k| k.starts_with("train-")).count() >= 3, "{:?}", one.keys());
    assert_eq!(one, two);
    assert_eq!(one, again);
}

#[test]
fn batches_by_split_cover_every_row_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    small_demo(&root, 10);
    let out = tmp.path().join("out");
    let opts = IngestOptions { chunk_size: 8, rows_per_group: 3, rows_per_shard: 10 };
    ingest::ingest(&spec_for(&root, 16), &out, &opts, &progress::Silent).unwrap();
    let ds = Dataset::open(&out).unwrap();
    let mut seen = std::collections::HashSet::new();
    for split in Split::ALL {
        let batches: Vec<Vec<dataset::Record>> = ds.batches(split, 4, false).map(Result::unwrap).collect();
        let n: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(n, ds.rows(split));
        // Full batches across shard boundaries; only the last may be short.
        assert!(batches.iter().rev().skip(1).all(|b| b.len() == 4));
        for r in batches.into_iter().flatten() {
            assert_eq!(r.split, split);
            assert!(r.pixels.is_empty(), "pixels not requested");
            assert!(seen.insert(r.content_id));
        }
    }
    assert_eq!(seen.len(), 50);
}

#[test]
fn manifest_input_reports_missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    small_demo(&root, 4);
    let mut csv = String::from("path,label\n");
    for class in ["circles", "squares"] {
        for i in 0..4 {
            csv += &format!("images/{class}/{class}-{i:04}.{},{class}-label\n", if i % 5 == 4 { "png" } else { "jpg" });
        }
    }
    csv += "images/circles/missing.jpg,circles-label\n";
    let manifest = tmp.path().join("labels.csv");
    fs::write(&manifest, csv).unwrap();
    let mut spec = DatasetSpec::for_root("");
    spec.source = spec::DatasetSource::Manifest(manifest.to_string_lossy().into_owned());
    let summary = run(&spec, &tmp.path().join("out"));
    assert_eq!(summary.info.classes, vec!["circles-label", "squares-label"]);
    assert_eq!(summary.info.total_rows(), 8);
    assert_eq!(summary.rejects.len(), 1);
    assert_eq!(summary.rejects[0].path, "images/circles/missing.jpg");
    assert_eq!(summary.rejects[0].kind, RejectKind::Unreadable);
}

#[test]
fn unusable_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |spec: &DatasetSpec| {
        ingest::ingest(spec, &tmp.path().join("out"), &IngestOptions::default(), &progress::Silent)
            .unwrap_err()
            .to_string()
    };
    let missing = tmp.path().join("nope");
    assert!(err(&spec_for(&missing, 8)).contains("does not exist"));

    let one = tmp.path().join("one");
    fs::create_dir_all(one.join("only")).unwrap();
    fs::write(one.join("only/a.png"), demo::encode(&DynamicImage::new_rgb8(4, 4), ImageFormat::Png)).unwrap();
    assert!(err(&spec_for(&one, 8)).contains("need at least two classes, found 1"));

    fs::create_dir_all(one.join("zempty")).unwrap();
    let message = err(&spec_for(&one, 8));
    assert!(message.contains("zempty") && message.contains("holds no images"), "{message}");
    assert!(!tmp.path().join("out").exists(), "a failed run writes nothing");
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ingest"))
}

#[test]
fn binary_strict_mode_fails_on_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    small_demo(&root, 3);
    let ingest = |extra: &[&str]| {
        std::process::Command::new(bin())
            .args([
                "--root",
                root.to_str().unwrap(),
                "--out",
                tmp.path().join("out").to_str().unwrap(),
                "--shorter-side",
                "16",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let relaxed = ingest(&[]);
    assert!(relaxed.status.success(), "{}", String::from_utf8_lossy(&relaxed.stderr));
    let stdout = String::from_utf8_lossy(&relaxed.stdout);
    assert!(stdout.contains("ingested 15 images in 5 classes"), "{stdout}");
    assert!(stdout.contains("rejected 4, duplicates 1, label conflicts 2"), "{stdout}");
    let strict = ingest(&["--strict"]);
    assert_eq!(strict.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("--strict: 6 file(s)"));
}

#[test]
fn binary_prints_per_class_counts_and_says_what_it_did_with_small_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let mut rng = SplitMix64::new(17);
    // 40 (the seen 30/1/9 case), 3, 2 and 1 images.
    for (ci, (class, n)) in [("big", 40), ("three", 3), ("two", 2), ("one", 1)].into_iter().enumerate() {
        fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..n {
            let bytes = demo_png(ci % demo::CLASSES.len(), 10, &mut rng);
            fs::write(root.join(class).join(format!("{i:02}.png")), bytes).unwrap();
        }
    }
    let out = tmp.path().join("out");
    let output = std::process::Command::new(bin())
        .args(["--root", root.to_str().unwrap(), "--out", out.to_str().unwrap(), "--shorter-side", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for line in [
        "class big: train 32, validation 4, test 4",
        "class three: train 1, validation 1, test 1",
        "class two: train 1, validation 0, test 1",
        "class one: train 1, validation 0, test 0",
    ] {
        assert!(stdout.contains(line), "missing '{line}' in:\n{stdout}");
    }
    let info: contracts::dataset::DatasetInfo = contracts::read(&out.join("dataset.json")).unwrap();
    let warned = |class: &str| info.warnings.iter().find(|w| w.contains(&format!("class '{class}'"))).cloned();
    let two = warned("two").unwrap();
    assert!(two.contains("1 in train, 1 in test, none in validation") && two.contains("under 3 images"), "{two}");
    let one = warned("one").unwrap();
    assert!(one.contains("1 in train, none in validation or test"), "{one}");
    assert!(warned("big").is_none() && warned("three").is_none(), "{:?}", info.warnings);
    assert!(stderr.contains(&format!("warning: {two}")), "{stderr}");
}

#[test]
fn killed_run_leaves_the_previous_dataset_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("images"), tmp.path().join("out"));
    small_demo(&root, 4);
    let first = run(&spec_for(&root, 16), &out);
    // A bigger second run, killed part-way.
    let opts = DemoOptions { per_class: 150, width: 400, height: 300, seed: 5, broken_files: false };
    demo::generate(&tmp.path().join("big"), &opts).unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["--root", tmp.path().join("big").to_str().unwrap(), "--out", out.to_str().unwrap(), "--threads", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let finished_early = child.try_wait().unwrap().is_some();
    child.kill().ok();
    child.wait().unwrap();
    let ds = Dataset::open(&out).unwrap();
    if !finished_early {
        assert_eq!(ds.info().fingerprint, first.info.fingerprint, "the old dataset must survive a killed run");
    }
    assert_eq!(all_records(&ds, true).len(), ds.info().total_rows(), "whatever is there reads completely");
    // A rerun after the kill completes and replaces it.
    let second = run(&spec_for(&tmp.path().join("big"), 16), &out);
    assert_eq!(second.info.total_rows(), 750);
    assert_eq!(Dataset::open(&out).unwrap().info().fingerprint, second.info.fingerprint);
}
