//! Bounded inputs: storing never enlarges, elongated and oversized images
//! are refused as too large before any pixel is allocated, and special
//! files are told apart from image files by their metadata.

use image::{DynamicImage, ImageFormat, RgbImage};
use imaging::{check_file, check_stored_size, decode, max_file_bytes, Failure};
use spec::{ResizeFilter, StoredSize, DEFAULT_MAX_PIXELS};

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
    demo::encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png)
}

#[test]
fn small_images_are_stored_at_their_own_size() {
    let decoded =
        decode(&png(28, 28), DEFAULT_MAX_PIXELS, StoredSize::ShorterSide(256), ResizeFilter::Lanczos3).unwrap();
    assert_eq!(decoded.original, (28, 28));
    assert_eq!(decoded.stored.dimensions(), (28, 28), "not enlarged to 256x256");
    let exact = decode(&png(30, 20), DEFAULT_MAX_PIXELS, StoredSize::Exact([24, 24]), ResizeFilter::Area).unwrap();
    assert_eq!(exact.stored.dimensions(), (24, 20));
}

#[test]
fn a_header_declaring_a_billion_pixels_is_too_large_without_decoding() {
    for (w, h) in [(100_000, 100_000), (40_000, 25_000), (u32::MAX, u32::MAX)] {
        let (failure, reason) =
            decode(&demo::png_bomb(w, h), DEFAULT_MAX_PIXELS, StoredSize::default(), ResizeFilter::Lanczos3)
                .err()
                .unwrap();
        assert_eq!(failure, Failure::TooLarge, "{w}x{h}: {reason}");
        // Refused by our check (naming the size) or, for sizes whose buffer
        // the decoder itself refuses to plan, by the decoder's memory limit.
        let named = reason.contains(&format!("{w}x{h}")) && reason.contains("max_pixels");
        assert!(named || reason.contains("exceed the memory limit"), "{reason}");
        assert!(reason.starts_with("image too large"), "{reason}");
    }
}

#[test]
fn a_strip_is_refused_when_readers_would_enlarge_it_past_the_limit() {
    let strip = png(100_000, 1);
    let (failure, reason) =
        decode(&strip, DEFAULT_MAX_PIXELS, StoredSize::ShorterSide(256), ResizeFilter::Lanczos3).err().unwrap();
    assert_eq!(failure, Failure::TooLarge);
    assert!(reason.contains("100000x1 is too elongated") && reason.contains("256x25600000"), "{reason}");
    // Under an exact size nothing is enlarged later: stored at most 100000x1.
    let exact = decode(&strip, DEFAULT_MAX_PIXELS, StoredSize::Exact([224, 224]), ResizeFilter::Area).unwrap();
    assert_eq!(exact.stored.dimensions(), (224, 1));
    // A mildly elongated image is fine.
    assert_eq!(check_stored_size((4000, 300), StoredSize::ShorterSide(256), DEFAULT_MAX_PIXELS), Ok((3413, 256)));
}

#[test]
fn stored_sizes_over_the_limit_are_too_large() {
    let err = check_stored_size((100, 100), StoredSize::ShorterSide(256), 9_999).unwrap_err();
    assert_eq!(err.0, Failure::TooLarge);
    assert!(err.1.contains("stored size 100x100 = 10000 pixels"), "{}", err.1);
    assert_eq!(check_stored_size((100, 100), StoredSize::ShorterSide(50), 9_999), Ok((50, 50)));
}

#[test]
fn only_regular_files_within_the_byte_limit_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.png");
    std::fs::write(&file, png(4, 4)).unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(check_file(&std::fs::metadata(&file).unwrap(), len).is_ok());
    let (failure, reason) = check_file(&std::fs::metadata(&file).unwrap(), len - 1).unwrap_err();
    assert_eq!(failure, Failure::TooLarge);
    assert!(reason.contains(&format!("{len} bytes")), "{reason}");

    let socket = dir.path().join("s.png");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let cases = [
        (dir.path().to_path_buf(), "a folder"),
        (std::path::PathBuf::from("/dev/zero"), "a character device"),
        (socket, "a socket"),
    ];
    for (path, what) in cases {
        let (failure, reason) = check_file(&std::fs::metadata(&path).unwrap(), u64::MAX).unwrap_err();
        assert_eq!(failure, Failure::NotAFile, "{}", path.display());
        assert!(reason.contains(what), "{reason}");
    }
    assert_eq!(max_file_bytes(1000), 8000 + (1 << 20));
    assert_eq!(max_file_bytes(u64::MAX), u64::MAX);
}

#[test]
fn shapes_are_not_judged_when_the_limit_is_below_a_square_at_the_side() {
    // A limit of 2000 pixels with a shorter side of 256: a 40x30 image is
    // stored as it is, not refused for its shape.
    assert_eq!(check_stored_size((40, 30), StoredSize::ShorterSide(256), 2_000), Ok((40, 30)));
    assert_eq!(check_stored_size((100_000, 1), StoredSize::ShorterSide(256), 2_000).unwrap_err().0, Failure::TooLarge);
}
