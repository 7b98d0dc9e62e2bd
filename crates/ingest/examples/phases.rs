//! Times ingestion's per-image phases on a folder of images, one thread:
//! `cargo run --release -p ingest --example phases -- DIR [N]`.
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).expect("DIR");
    let n: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(200);
    let mut files: Vec<_> = walkdir::WalkDir::new(&dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path().to_path_buf())
        .collect();
    files.sort();
    files.truncate(n);
    let (mut read, mut hash, mut decode, mut resize) = (0.0, 0.0, 0.0, 0.0);
    for f in &files {
        let t = Instant::now();
        let bytes = std::fs::read(f).unwrap();
        read += t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(spec::sha256_hex(&bytes));
        hash += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let img = imaging::decode_upright(&bytes, u64::MAX).unwrap();
        decode += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let size = spec::StoredSize::ShorterSide(256).target(img.width(), img.height());
        std::hint::black_box(imaging::resize(img, size, spec::ResizeFilter::Lanczos3));
        resize += t.elapsed().as_secs_f64();
    }
    let per = |s: f64| s * 1000.0 / files.len() as f64;
    println!(
        "{} files: read {:.2} ms, sha256 {:.2} ms, decode {:.2} ms, resize {:.2} ms per image",
        files.len(),
        per(read),
        per(hash),
        per(decode),
        per(resize)
    );
}
