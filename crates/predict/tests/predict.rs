//! `predict` against real ONNX Runtime and a model built here: a tiny VGG
//! (random weights) with a softmax appended and inference metadata, on demo
//! images. Reference values come from an independent path: the `image`
//! crate's decoder, geometry and normalisation computed by hand, and
//! `onnx_graph::reference::evaluate` (a naive evaluator).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{DynamicImage, ImageFormat, RgbImage};
use onnx_graph::proto::{data_type, NodeProto};
use onnx_graph::reference::{self, Tensor};
use onnx_graph::shape::{tensor_value_info, Dim};
use onnx_graph::vgg::{self, VggConfig};
use predict::{ImageError, PredictError, Prediction};
use spec::{
    ColorOrder, InferenceMetadata, InputSpec, Layout, Preprocess, Resize, ResizeFilter, StoredImage, StoredSize,
};

const CLASSES: usize = 5;
const PROBABILITIES: &str = "probabilities";
const TOLERANCE: f32 = 1e-4;
const STORED: StoredImage = StoredImage { size: StoredSize::ShorterSide(48), filter: ResizeFilter::Lanczos3 };

fn class_names() -> Vec<String> {
    demo::CLASSES.map(String::from).to_vec()
}

/// The tiny VGG's input and preprocessing, as in data-specs/models/tiny-vgg.toml.
fn metadata(stored: Option<StoredImage>) -> InferenceMetadata {
    let input = InputSpec { name: vgg::INPUT_NAME.into(), layout: Layout::Nchw, size: [32, 32] };
    let preprocess = Preprocess {
        color: ColorOrder::Rgb,
        scale: 1.0 / 255.0,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        resize: Resize { shorter_side: Some(36), center_crop: Some([32, 32]), exact: None },
    };
    InferenceMetadata {
        model: "tiny-vgg".into(),
        preprocess_fingerprint: spec::fingerprint("preprocess", &(&preprocess, &input)).0,
        input,
        preprocess,
        class_names: class_names(),
        weights_note: spec::WEIGHTS_RANDOM.into(),
        output: spec::OUTPUT_PROBABILITIES.into(),
        stored,
    }
}

/// A tiny VGG with `CLASSES` outputs and a softmax, carrying `props`.
fn model_proto(props: &[(String, String)]) -> onnx_graph::ModelProto {
    let config = VggConfig { classifier: [32, 32, CLASSES as i64], ..VggConfig::TINY };
    let mut model = vgg::generate(&config, 11);
    // Sharper logits than the random init gives, so that probabilities
    // differ between images and small input changes show.
    for name in ["classifier.6.weight", "classifier.6.bias"] {
        let scaled: Vec<f32> = onnx_graph::initializer_f32(&model, name).unwrap().iter().map(|v| v * 20.0).collect();
        onnx_graph::set_initializer_f32(&mut model, name, &scaled).unwrap();
    }
    let graph = onnx_graph::graph_mut(&mut model).unwrap();
    graph.node.push(NodeProto {
        name: "/head/Softmax".into(),
        op_type: "Softmax".into(),
        input: vec![vgg::OUTPUT_NAME.into()],
        output: vec![PROBABILITIES.into()],
        attribute: vec![onnx_graph::builder::int_attribute("axis", 1)],
        ..Default::default()
    });
    let dims = [Dim::named("N"), Dim::Fixed(CLASSES as i64)];
    graph.output = vec![tensor_value_info(PROBABILITIES, data_type::FLOAT, Some(&dims))];
    for (key, value) in props {
        onnx_graph::set_metadata(&mut model, key, value.as_str());
    }
    model
}

fn write_model(dir: &Path, props: &[(String, String)]) -> PathBuf {
    let path = dir.join("model.onnx");
    onnx_graph::write_model(&model_proto(props), &path).unwrap();
    path
}

fn demo_image(class: usize, (w, h): (u32, u32), seed: u64) -> RgbImage {
    demo::render(class, w, h, &mut train_kit::SplitMix64::new(seed))
}

fn png(img: &RgbImage) -> Vec<u8> {
    demo::encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Png)
}

/// The reference: stored size (never enlarged) and filter, then the model's shorter side,
/// centre crop and normalisation, all by hand (only the resampling kernel is
/// ingest's, at sizes computed here), then the naive evaluator.
fn reference_probabilities(model: &onnx_graph::ModelProto, upright: &RgbImage, meta: &InferenceMetadata) -> Vec<f32> {
    let (w, h) = upright.dimensions();
    let round_div = |a: u32, b: u32| ((a as u64 * 48 + b as u64 / 2) / b as u64) as u32;
    // Never enlarged: an image whose shorter side is at most 48 is kept.
    let stored_size = match (w.min(h) <= 48, w <= h) {
        (true, _) => (w, h),
        (false, true) => (48, round_div(h, w)),
        (false, false) => (round_div(w, h), 48),
    };
    let stored = imaging::resize(upright.clone(), stored_size, ResizeFilter::Lanczos3);
    let (sw, sh) = stored.dimensions();
    let model_size = if sw <= sh { (36, 36 * sh / sw) } else { (36 * sw / sh, 36) };
    let resized = imaging::resize(stored, model_size, ResizeFilter::Bilinear);
    let offset = |size: u32| (f64::from(size - 32) / 2.0).round_ties_even() as u32;
    let (ox, oy) = (offset(model_size.0), offset(model_size.1));
    let mut input = vec![0f32; 3 * 32 * 32];
    for y in 0..32 {
        for x in 0..32 {
            let pixel = resized.get_pixel(x + ox, y + oy).0;
            for c in 0..3 {
                let value = (f32::from(pixel[c]) / 255.0 - meta.preprocess.mean[c]) / meta.preprocess.std[c];
                input[c * 32 * 32 + (y * 32 + x) as usize] = value;
            }
        }
    }
    let feed = Tensor::new(vec![1, 3, 32, 32], input);
    let out = reference::evaluate(model, &[(vgg::INPUT_NAME, feed)], &[PROBABILITIES]).unwrap();
    out[0].data.clone()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn predict_bin(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_predict")).args(args.iter().map(|a| a.as_ref())).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn probabilities_match_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(Some(STORED));
    let model_path = write_model(dir.path(), &meta.to_props());
    let model = onnx_graph::read_model(&model_path).unwrap();
    // Landscape, portrait, already at the stored size, and tiny (kept at its
    // own size, never enlarged).
    let sizes = [(80, 60), (45, 70), (48, 64), (20, 30)];
    let mut images = Vec::new();
    let mut paths = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let img = demo_image(i % CLASSES, size, i as u64);
        let path = dir.path().join(format!("img{i}.png"));
        std::fs::write(&path, png(&img)).unwrap();
        // The reference decodes with the image crate, not ingest.
        images.push(image::load_from_memory(&std::fs::read(&path).unwrap()).unwrap().to_rgb8());
        paths.push(path);
    }

    let mut predictor = predict::load(dir.path(), 1).unwrap();
    assert_eq!(predictor.metadata(), &meta);
    // Batches of 3: one full batch and a partial one.
    let results = predictor.predict_images(&paths, 3);
    assert_eq!(results.len(), paths.len());
    let mut spread = 0f32;
    for ((result, path), upright) in results.into_iter().zip(&paths).zip(&images) {
        let prediction = result.unwrap();
        assert_eq!(&prediction.path, path);
        let expected = reference_probabilities(&model, upright, &meta);
        let diff = max_diff(&prediction.probabilities, &expected);
        assert!(diff <= TOLERANCE, "{}: {:?} vs {expected:?} ({diff})", path.display(), prediction.probabilities);
        let sum: f32 = prediction.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        let (lo, hi) = prediction.probabilities.iter().fold((1f32, 0f32), |(lo, hi), &p| (lo.min(p), hi.max(p)));
        spread = spread.max(hi - lo);
        eprintln!("{}: {:?} (max diff {diff:e})", path.display(), prediction.probabilities);
    }
    // The check means something only if the model does not answer uniformly.
    assert!(spread > 0.1, "probabilities are (nearly) uniform: spread {spread}");

    // preprocess_file is what the predictor feeds: batch of one = same row.
    let input = predict::preprocess_file(&paths[0], &meta).unwrap();
    let rows = predictor.run(&[&input]).unwrap();
    let again = predictor.predict_images(&paths[..1], 1).pop().unwrap().unwrap();
    assert!(max_diff(&rows[0], &again.probabilities) <= 1e-6);
}

#[test]
fn exif_rotated_jpeg_predicts_like_the_upright_image() {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(Some(STORED));
    write_model(dir.path(), &meta.to_props());
    let upright = demo_image(4, (60, 90), 3); // triangles: orientation shows
    let mut paths = Vec::new();
    // Orientation 6: the stored pixels turn 90° clockwise for display;
    // 8: counter-clockwise; 3: 180°.
    for (orientation, stored) in [
        (6u16, image::imageops::rotate270(&upright)),
        (8, image::imageops::rotate90(&upright)),
        (3, image::imageops::rotate180(&upright)),
    ] {
        let jpeg = demo::jpeg_with_orientation(&stored, orientation);
        // The upright reference: the same JPEG pixels (image crate decoder,
        // which ignores EXIF), turned by hand, saved losslessly.
        let decoded = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        let turned = match orientation {
            6 => image::imageops::rotate90(&decoded),
            8 => image::imageops::rotate270(&decoded),
            _ => image::imageops::rotate180(&decoded),
        };
        assert_eq!(turned.dimensions(), upright.dimensions());
        let rotated_path = dir.path().join(format!("rotated-{orientation}.jpg"));
        let upright_path = dir.path().join(format!("upright-{orientation}.png"));
        std::fs::write(&rotated_path, &jpeg).unwrap();
        std::fs::write(&upright_path, png(&turned)).unwrap();
        // The same stored pixels without the EXIF tag are a different input.
        let plain_path = dir.path().join(format!("plain-{orientation}.jpg"));
        std::fs::write(&plain_path, demo::jpeg_with_orientation(&stored, 1)).unwrap();
        let rotated = predict::preprocess_file(&rotated_path, &meta).unwrap();
        let plain = predict::preprocess_file(&plain_path, &meta).unwrap();
        assert!(max_diff(&rotated, &plain) > 0.5, "orientation {orientation} was ignored");
        paths.push((rotated_path, upright_path));
    }
    let mut predictor = predict::load(&dir.path().join("model.onnx"), 0).unwrap();
    for (rotated, upright) in paths {
        let results = predictor.predict_images(&[rotated.clone(), upright.clone()], 2);
        let [a, b] = [&results[0], &results[1]].map(|r| r.as_ref().unwrap().probabilities.clone());
        assert!(max_diff(&a, &b) <= 1e-5, "{}: {a:?} vs {b:?}", rotated.display());
    }
}

/// A folder with good images (nested, sorted by the walk), a corrupt JPEG,
/// a hidden file and a non-image file; returns the good paths in walk order.
fn mixed_folder(root: &Path) -> (Vec<PathBuf>, PathBuf) {
    let images = root.join("images");
    std::fs::create_dir_all(images.join("b")).unwrap();
    let mut good = Vec::new();
    for (i, rel) in ["a.png", "b/c.jpg", "b/d.PNG", "e.png"].iter().enumerate() {
        let img = demo_image(i % CLASSES, (40 + 7 * i as u32, 50), 100 + i as u64);
        let bytes = if rel.ends_with(".jpg") { demo::encode(&img.into(), ImageFormat::Jpeg) } else { png(&img) };
        std::fs::write(images.join(rel), bytes).unwrap();
        good.push(images.join(rel));
    }
    let jpeg = demo::encode(&demo_image(0, (64, 64), 9).into(), ImageFormat::Jpeg);
    let bad = images.join("b/broken.jpg");
    std::fs::write(&bad, &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(images.join(".hidden.png"), b"not even an image").unwrap();
    std::fs::write(images.join("notes.txt"), b"skipped: not an image extension").unwrap();
    (good, bad)
}

#[derive(Debug, PartialEq)]
struct Row {
    path: String,
    classes: Vec<(String, f32)>,
}

fn parse_csv(text: &str) -> Vec<Row> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.headers().unwrap(), vec!["path", "rank", "class", "probability"]);
    let mut rows: Vec<Row> = Vec::new();
    for record in reader.records() {
        let record = record.unwrap();
        let (path, rank, class) = (record[0].to_owned(), record[1].parse::<usize>().unwrap(), record[2].to_owned());
        let probability: f32 = record[3].parse().unwrap();
        if rows.last().is_none_or(|r| r.path != path) {
            rows.push(Row { path: path.clone(), classes: Vec::new() });
        }
        let row = rows.last_mut().unwrap();
        row.classes.push((class, probability));
        assert_eq!(rank, row.classes.len(), "ranks count from 1 per image");
    }
    rows
}

fn parse_json(text: &str) -> Vec<Row> {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|item| Row {
            path: item["path"].as_str().unwrap().to_owned(),
            classes: item["top_k"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c["class"].as_str().unwrap().to_owned(), c["probability"].as_f64().unwrap() as f32))
                .collect(),
        })
        .collect()
}

#[test]
fn a_corrupt_file_is_reported_and_skipped_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), &metadata(Some(STORED)).to_props());
    let (good, bad) = mixed_folder(dir.path());
    let csv_path = dir.path().join("out/predictions.csv");
    let out = predict_bin(&[
        &"--model",
        &model,
        &"--format",
        &"csv",
        &"--output",
        &csv_path,
        &"--batch-size",
        &"2",
        &dir.path().join("images"),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "--output writes the file, not stdout");
    let err = stderr(&out);
    assert!(err.contains(&format!("{}: ", bad.display())), "{err}");
    assert!(err.to_lowercase().contains("truncated"), "{err}");
    assert!(!err.contains("hidden") && !err.contains("notes.txt"), "{err}");
    let rows = parse_csv(&std::fs::read_to_string(&csv_path).unwrap());
    let paths: Vec<String> = rows.iter().map(|r| r.path.clone()).collect();
    let expected: Vec<String> = good.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(paths, expected, "the good images, in walk order");
    assert!(rows.iter().all(|r| r.classes.len() == 3));
    let leftovers: Vec<_> = std::fs::read_dir(csv_path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no partial file left behind");

    // All good: exit 0. A named non-image file: reported, exit 3.
    let ok = predict_bin(&[&"--model", &model, &"--format", &"csv", &good[0], &good[1]]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let notes = dir.path().join("images/notes.txt");
    let some = predict_bin(&[&"--model", &model, &good[0], &notes]);
    assert_eq!(some.status.code(), Some(3));
    assert!(stderr(&some).contains(&format!("{}: not an image", notes.display())), "{}", stderr(&some));
    assert!(String::from_utf8_lossy(&some.stdout).contains(&good[0].display().to_string()));

    // Nothing predictable: an error, exit 1, nothing written.
    let none_path = dir.path().join("none.csv");
    let none = predict_bin(&[&"--model", &model, &"--output", &none_path, &bad, &dir.path().join("missing.png")]);
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    assert!(stderr(&none).contains("missing.png"), "{}", stderr(&none));
    assert!(!none_path.exists());
}

#[test]
fn csv_and_json_agree_with_each_other_and_the_library() {
    let dir = tempfile::tempdir().unwrap();
    // The model in a run folder's finetune/ sub-folder; --model names the run folder.
    std::fs::create_dir_all(dir.path().join("run/finetune")).unwrap();
    write_model(&dir.path().join("run/finetune"), &metadata(Some(STORED)).to_props());
    let (good, _) = mixed_folder(dir.path());
    let run = dir.path().join("run");
    let images = dir.path().join("images");
    let mut texts = Vec::new();
    for format in ["csv", "json", "table"] {
        let out = predict_bin(&[&"--model", &run, &"--format", &format, &"--top-k", &"4", &"--threads", &"1", &images]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out)); // the broken JPEG
        texts.push(String::from_utf8(out.stdout).unwrap());
    }
    let csv_rows = parse_csv(&texts[0]);
    let json_rows = parse_json(&texts[1]);
    assert_eq!(csv_rows, json_rows);
    assert_eq!(csv_rows.len(), good.len());

    let mut predictor = predict::load(&run, 1).unwrap();
    let library: Vec<Prediction> = predictor.predict_images(&good, 16).into_iter().map(Result::unwrap).collect();
    for (row, prediction) in csv_rows.iter().zip(&library) {
        assert_eq!(row.path, prediction.path.display().to_string());
        assert_eq!(row.classes.len(), 4);
        for pair in row.classes.windows(2) {
            assert!(pair[0].1 >= pair[1].1, "top-k sorted descending: {:?}", row.classes);
        }
        let sum: f32 = row.classes.iter().map(|c| c.1).sum();
        assert!(sum <= 1.0 + 1e-5, "{sum}"); // four values, each rounded to 6 significant digits
        let names = class_names();
        for ((class, probability), (index, expected)) in row.classes.iter().zip(prediction.top_k(4)) {
            assert_eq!(class, &names[index]);
            let written = predict::output::probability_text(expected);
            assert_eq!(*probability, written.parse::<f32>().unwrap(), "CSV and JSON carry {written}");
            assert!((probability - expected).abs() <= expected * 5e-6, "{written} is {expected:e} to 6 digits");
        }
    }
    // The table names every image and its best class.
    for (row, prediction) in csv_rows.iter().zip(&library) {
        assert!(texts[2].contains(&row.path));
        assert!(texts[2].contains(&format!("{:.4}", prediction.top_k(1)[0].1)));
    }
}

#[test]
fn a_model_without_metadata_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.png");
    std::fs::write(&img, png(&demo_image(1, (40, 40), 1))).unwrap();

    let bare = write_model(dir.path(), &[]);
    match predict::load(&bare, 0) {
        Err(PredictError::Metadata { path, source }) => {
            assert_eq!(path, bare);
            assert_eq!(source.key(), spec::META_MODEL);
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a model without metadata loaded"),
    }
    let out = predict_bin(&[&"--model", &bare, &img]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&bare.display().to_string()) && err.contains("\"model\""), "{err}");

    // Only the class names missing.
    let props: Vec<_> =
        metadata(Some(STORED)).to_props().into_iter().filter(|(k, _)| k != spec::META_CLASS_NAMES).collect();
    let partial_dir = dir.path().join("partial");
    std::fs::create_dir_all(&partial_dir).unwrap();
    write_model(&partial_dir, &props);
    let out = predict_bin(&[&"--model", &partial_dir, &img]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("\"class_names\" is missing"), "{}", stderr(&out));

    // Class names that do not match the output.
    let mut wrong = metadata(Some(STORED));
    wrong.class_names.pop();
    let wrong_dir = dir.path().join("wrong");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    write_model(&wrong_dir, &wrong.to_props());
    match predict::load(&wrong_dir, 0) {
        Err(e @ PredictError::Mismatch { .. }) => assert!(e.to_string().contains("4"), "{e}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a model with the wrong class count loaded"),
    }

    // No model at all.
    let out = predict_bin(&[&"--model", &dir.path().join("nowhere"), &img]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
}

#[test]
fn without_stored_metadata_images_go_straight_to_model_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(None);
    let model_path = write_model(dir.path(), &meta.to_props());
    let img = demo_image(2, (36, 44), 5);
    let path = dir.path().join("s.png");
    std::fs::write(&path, png(&img)).unwrap();
    // 36x44 → shorter side 36: no resampling; crop offsets (2, 6).
    let input = predict::preprocess_file(&path, &meta).unwrap();
    let expected: Vec<f32> = (0..3)
        .flat_map(|c| (0..32u32).flat_map(move |y| (0..32u32).map(move |x| (c, x, y))))
        .map(|(c, x, y)| {
            (f32::from(img.get_pixel(x + 2, y + 6).0[c]) / 255.0 - meta.preprocess.mean[c]) / meta.preprocess.std[c]
        })
        .collect();
    assert!(max_diff(&input, &expected) <= 1e-6);

    let model = onnx_graph::read_model(&model_path).unwrap();
    let feed = Tensor::new(vec![1, 3, 32, 32], expected);
    let reference = reference::evaluate(&model, &[(vgg::INPUT_NAME, feed)], &[PROBABILITIES]).unwrap();
    let mut predictor = predict::load(&model_path, 0).unwrap();
    let prediction = predictor.predict_images(std::slice::from_ref(&path), 4).pop().unwrap().unwrap();
    assert!(max_diff(&prediction.probabilities, &reference[0].data) <= TOLERANCE);

    let out = predict_bin(&[&"--model", &model_path, &path]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("note:"), "the missing `stored` is mentioned");
}

#[test]
fn unreadable_inputs_are_image_errors() {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(Some(STORED));
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let err: ImageError = predict::preprocess_file(&empty, &meta).unwrap_err();
    assert_eq!(err.to_string(), format!("{}: empty file (0 bytes)", empty.display()));
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, demo::png_bomb(100_000, 100_000)).unwrap();
    assert!(predict::preprocess_file(&bomb, &meta).unwrap_err().reason.contains("too large"));
}

#[test]
fn special_files_are_refused_by_name_without_reading() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(Some(STORED));
    let zero = dir.path().join("zero.png");
    symlink("/dev/zero", &zero).unwrap();
    let fifo = dir.path().join("fifo.png");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let socket = dir.path().join("socket.png");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let dangling = dir.path().join("dangling.png");
    symlink(dir.path().join("missing.png"), &dangling).unwrap();
    for (path, words) in [
        (&zero, "not a regular file: a character device"),
        (&fifo, "not a regular file: a FIFO"),
        (&socket, "not a regular file: a socket"),
        (&dangling, "cannot read"),
    ] {
        let err = predict::preprocess_file(path, &meta).unwrap_err();
        assert_eq!(err.path, *path);
        assert!(err.reason.contains(words), "{}: {}", path.display(), err.reason);
    }
}

#[test]
fn new_images_are_bounded_like_training_images() {
    let dir = tempfile::tempdir().unwrap();
    // Smaller than the stored size (shorter side 48): not enlarged, so the
    // input is what the model's own preprocessing makes of the original.
    let small = dir.path().join("small.png");
    std::fs::write(&small, png(&demo_image(1, (36, 44), 2))).unwrap();
    let stored = predict::preprocess_file(&small, &metadata(Some(STORED))).unwrap();
    let direct = predict::preprocess_file(&small, &metadata(None)).unwrap();
    assert_eq!(stored, direct);
    // A strip readers would enlarge past the pixel limit is refused.
    let strip = dir.path().join("strip.png");
    std::fs::write(&strip, png(&RgbImage::new(100_000, 1))).unwrap();
    let err = predict::preprocess_file(&strip, &metadata(Some(STORED))).unwrap_err();
    assert!(err.reason.contains("too elongated"), "{}", err.reason);
}

/// A folder of `n` small PNGs (a few distinct images under distinct names).
fn image_folder(root: &Path, n: usize, pngs: &[Vec<u8>]) -> PathBuf {
    let folder = root.join(format!("images-{n}"));
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..n {
        std::fs::write(folder.join(format!("image-{i:05}.png")), &pngs[i % pngs.len()]).unwrap();
    }
    folder
}

/// The memory check: predicting ten times as many images must not
/// take more memory (results stream to the output file; only paths are held).
#[test]
fn memory_does_not_grow_with_the_number_of_images() {
    const TOP_K: usize = 3;
    // Measured: 0.4 to 0.8 MiB more for 2,000 (the 1,800 more paths, and
    // allocator noise). Holding the 1,800 more encoded files (about 5 KB
    // each) or their model inputs (12 KiB each) would pass it; holding only
    // their results (about 0.5 MiB here, 30 MiB at 100k images) would not
    // show at this size.
    const BOUND_BYTES: u64 = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), &metadata(Some(STORED)).to_props());
    let pngs: Vec<Vec<u8>> = (0..8).map(|i| png(&demo_image(i % CLASSES, (64, 48), i as u64))).collect();
    let mut peaks = Vec::new();
    for n in [200, 2000] {
        let folder = image_folder(dir.path(), n, &pngs);
        let csv_path = dir.path().join(format!("predictions-{n}.csv"));
        let output = Command::new(env!("CARGO_BIN_EXE_predict"))
            .args(["--format", "csv", "--threads", "1", "--top-k", &TOP_K.to_string(), "--model"])
            .arg(&model)
            .arg("--output")
            .arg(&csv_path)
            .arg(&folder)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{n} images: {}\n{stderr}", output.status);
        // The binary's own VmHWM: a parent's wait4 figure would start from
        // this test process's size (see progress::memory).
        let peak = progress::parse_peak(&stderr).unwrap_or_else(|| panic!("no peak memory line:\n{stderr}")) << 10;
        let rows = parse_csv(&std::fs::read_to_string(&csv_path).unwrap());
        assert_eq!(rows.len(), n);
        assert!(rows.iter().all(|r| r.classes.len() == TOP_K));
        eprintln!("{n} images: peak RSS {:.1} MiB", peak as f64 / (1 << 20) as f64);
        peaks.push(peak);
    }
    let growth = peaks[1].saturating_sub(peaks[0]);
    assert!(growth < BOUND_BYTES, "2000 images took {growth} bytes more than 200 (bound {BOUND_BYTES})");
}

#[test]
fn streamed_output_is_the_rendering_of_the_library_results() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), &metadata(Some(STORED)).to_props());
    let (_, bad) = mixed_folder(dir.path());
    let images = dir.path().join("images");
    let out_dir = dir.path().join("out");
    let (files, _) = predict::collect_images(std::slice::from_ref(&images));
    let mut predictor = predict::load(&model, 1).unwrap();
    let class_names = predictor.metadata().class_names.clone();
    let predictions: Vec<Prediction> = predictor.predict_images(&files, 3).into_iter().filter_map(Result::ok).collect();
    assert_eq!(predictions.len(), files.len() - 1, "all but {}", bad.display());
    for (format, name) in
        [(predict::Format::Table, "table"), (predict::Format::Csv, "csv"), (predict::Format::Json, "json")]
    {
        let expected = predict::output::render(format, &predictions, &class_names, 2);
        let file = out_dir.join(format!("predictions.{name}"));
        // Batches of 2 and 3: the broken file falls in different batches.
        for batch in ["2", "3"] {
            let args: [&dyn AsRef<std::ffi::OsStr>; 9] =
                [&"--model", &model, &"--format", &name, &"--top-k", &"2", &"--batch-size", &batch, &images];
            let to_stdout = predict_bin(&args);
            assert_eq!(to_stdout.status.code(), Some(3), "{}", stderr(&to_stdout));
            assert_eq!(String::from_utf8_lossy(&to_stdout.stdout), String::from_utf8_lossy(&expected), "{name}");
            let to_file = predict_bin(&[&args[..], &[&"--output", &file]].concat());
            assert_eq!(to_file.status.code(), Some(3), "{}", stderr(&to_file));
            assert!(to_file.stdout.is_empty());
            assert_eq!(std::fs::read(&file).unwrap(), expected, "{name}");
        }
    }
    let mut left: Vec<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["predictions.csv", "predictions.json", "predictions.table"], "no partial file left behind");

    // Nothing predictable: no output file and no partial one.
    let none = predict_bin(&[&"--model", &model, &"--output", &out_dir.join("none.csv"), &bad]);
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 3, "nothing added");
}

#[test]
fn predict_each_streams_in_order_and_stops_at_the_first_refusal() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &metadata(Some(STORED)).to_props());
    let pngs: Vec<Vec<u8>> = (0..3).map(|i| png(&demo_image(i, (50, 40), i as u64))).collect();
    let folder = image_folder(dir.path(), 20, &pngs);
    let (files, _) = predict::collect_images(&[folder]);
    let mut predictor = predict::load(dir.path(), 1).unwrap();
    let all = predictor.predict_images(&files, 3);
    assert_eq!(all.len(), 20);

    let mut seen = Vec::new();
    let stopped = predictor.predict_each(&files, 3, &progress_count::Counter::default(), |result| {
        if seen.len() == 7 {
            return Err("enough");
        }
        seen.push(result);
        Ok(())
    });
    assert_eq!(stopped, Err("enough"));
    assert_eq!(seen, all[..7], "the first results, in path order");

    let counter = progress_count::Counter::default();
    let mut count = 0;
    predictor
        .predict_each(&files, 4, &counter, |_| {
            count += 1;
            Ok::<_, ()>(())
        })
        .unwrap();
    assert_eq!(count, 20);
    assert_eq!(counter.done.load(std::sync::atomic::Ordering::Relaxed), 20, "progress advances once per image");
}

mod progress_count {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts the units a library call reports done.
    #[derive(Default)]
    pub struct Counter {
        pub done: AtomicU64,
    }

    impl progress::Progress for Counter {
        fn start(&self, _: &str, _: u64) {}
        fn advance(&self, n: u64) {
            self.done.fetch_add(n, Ordering::Relaxed);
        }
        fn finish(&self) {}
    }
}
