//! Preprocessing against values computed by hand, for both conventions:
//! torchvision (RGB, /255, ImageNet mean/std, NCHW, shorter side + centre
//! crop) and Keras "caffe" (BGR, minus the BGR means, no scaling, NHWC,
//! exact size).

use imaging::preprocess::{crop_offsets, input_len, preprocess};
use spec::{ColorOrder, InputSpec, Layout, Preprocess, Resize};

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const CAFFE_MEAN_BGR: [f32; 3] = [103.939, 116.779, 123.68];

/// RGB8 image of `w`x`h` whose pixel (x, y) is `f(x, y)`.
fn image(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let f = &f;
    (0..h).flat_map(|y| (0..w).flat_map(move |x| f(x, y))).collect::<Vec<u8>>()
}

fn close(actual: f32, expected: f64, what: &str) {
    assert!(
        (f64::from(actual) - expected).abs() <= 2e-6 * expected.abs().max(1.0),
        "{what}: got {actual}, expected {expected}"
    );
}

fn torchvision(side: u32, crop: [u32; 2]) -> (Preprocess, InputSpec) {
    (
        Preprocess {
            color: ColorOrder::Rgb,
            scale: 1.0 / 255.0,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            resize: Resize { shorter_side: Some(side), center_crop: Some(crop), exact: None },
        },
        InputSpec { name: "data".into(), layout: Layout::Nchw, size: crop },
    )
}

fn keras_caffe(size: [u32; 2]) -> (Preprocess, InputSpec) {
    (
        Preprocess {
            color: ColorOrder::Bgr,
            scale: 1.0,
            mean: CAFFE_MEAN_BGR,
            std: [1.0; 3],
            resize: Resize { shorter_side: None, center_crop: None, exact: Some(size) },
        },
        InputSpec { name: "input".into(), layout: Layout::Nhwc, size },
    )
}

#[test]
fn torchvision_style_crops_scales_normalises_and_lays_out_nchw() {
    // 5x3 image, shorter side already 3: no resampling, so only the crop
    // decides which pixels are used. Crop 2x2 at (round(1.5), round(0.5)) =
    // (2, 0): Python rounds half to even, as torchvision's CenterCrop does.
    let pixel = |x: u32, y: u32| [(10 * x + y) as u8, (100 + 10 * x + y) as u8, (200 + x + 10 * y) as u8];
    let pixels = image(5, 3, pixel);
    let (pre, input) = torchvision(3, [2, 2]);
    assert_eq!(crop_offsets((5, 3), (2, 2)), (2, 0));

    let out = preprocess(&pixels, (5, 3), &pre, &input).unwrap();
    assert_eq!(out.len(), 12);
    assert_eq!(out.len(), input_len(&input));

    // By hand: R at stored (2, 0) is 20: (20/255 - 0.485) / 0.229.
    close(out[0], -1.775_408_853_497_730_8, "R(0,0)");
    // G plane starts at 4; crop (1, 1) is stored (3, 1): G = 131.
    close(out[4 + 3], 0.257_703_081_232_492_7, "G(1,1)");
    // B plane starts at 8; crop (0, 1) is stored (2, 1): B = 212.
    close(out[8 + 2], 1.890_544_662_309_368_2, "B(0,1)");
    // Every value, NCHW: index c*4 + y*2 + x.
    for c in 0..3 {
        for y in 0..2u32 {
            for x in 0..2u32 {
                let p = f64::from(pixel(2 + x, y)[c]);
                let expected = (p / 255.0 - f64::from(IMAGENET_MEAN[c])) / f64::from(IMAGENET_STD[c]);
                close(out[c * 4 + (y * 2 + x) as usize], expected, &format!("c{c} y{y} x{x}"));
            }
        }
    }
}

#[test]
fn torchvision_style_crop_offset_on_the_other_axis() {
    // 3x7 (portrait): crop 2x2 at (round(0.5), round(2.5)) = (0, 2).
    let pixel = |x: u32, y: u32| [(x * 40 + y) as u8, 7, 9];
    let pixels = image(3, 7, pixel);
    let (pre, input) = torchvision(3, [2, 2]);
    let out = preprocess(&pixels, (3, 7), &pre, &input).unwrap();
    for y in 0..2u32 {
        for x in 0..2u32 {
            let p = f64::from(pixel(x, 2 + y)[0]);
            close(out[(y * 2 + x) as usize], (p / 255.0 - 0.485) / 0.229, &format!("R y{y} x{x}"));
        }
    }
}

#[test]
fn keras_caffe_style_swaps_to_bgr_subtracts_means_and_lays_out_nhwc() {
    let pixel =
        |x: u32, y: u32| [(10 + 100 * x + 20 * y) as u8, (20 + 100 * x + 20 * y) as u8, (30 + 100 * x + 20 * y) as u8];
    let pixels = image(2, 2, pixel);
    let (pre, input) = keras_caffe([2, 2]);
    let out = preprocess(&pixels, (2, 2), &pre, &input).unwrap();
    assert_eq!(out.len(), 12);
    // By hand, pixel (0, 0) = RGB (10, 20, 30): B - 103.939, G - 116.779, R - 123.68.
    close(out[0], 30.0 - 103.939, "B(0,0)");
    close(out[1], 20.0 - 116.779, "G(0,0)");
    close(out[2], 10.0 - 123.68, "R(0,0)");
    // Pixel (1, 0) is the next triple (NHWC): RGB (110, 120, 130).
    close(out[3], 130.0 - 103.939, "B(1,0)");
    close(out[5], 110.0 - 123.68, "R(1,0)");
    // Pixel (0, 1): RGB (30, 40, 50), at index (1*2 + 0) * 3.
    close(out[6], 50.0 - 103.939, "B(0,1)");
    for y in 0..2u32 {
        for x in 0..2u32 {
            let rgb = pixel(x, y);
            for c in 0..3 {
                let expected = f64::from(rgb[2 - c]) - f64::from(CAFFE_MEAN_BGR[c]);
                close(out[((y * 2 + x) * 3) as usize + c], expected, &format!("c{c} y{y} x{x}"));
            }
        }
    }
}

#[test]
fn both_styles_resize_to_the_input_size() {
    // A flat colour stays flat through any resize, so the values are known
    // exactly while the sizes are exercised: 48x40 -> shorter side 36
    // (43x36) -> crop 32x32, and 48x40 -> exactly 24x20.
    let pixels = image(48, 40, |_, _| [51, 102, 204]);
    let (pre, input) = torchvision(36, [32, 32]);
    let out = preprocess(&pixels, (48, 40), &pre, &input).unwrap();
    assert_eq!(out.len(), 3 * 32 * 32);
    for (c, value) in [51.0, 102.0, 204.0].into_iter().enumerate() {
        let expected = (value / 255.0 - f64::from(IMAGENET_MEAN[c])) / f64::from(IMAGENET_STD[c]);
        assert!(out[c * 1024..(c + 1) * 1024].iter().all(|&v| (f64::from(v) - expected).abs() < 1e-5), "plane {c}");
    }

    let (pre, input) = keras_caffe([24, 20]);
    let out = preprocess(&pixels, (48, 40), &pre, &input).unwrap();
    assert_eq!(out.len(), 3 * 24 * 20);
    let expected = [204.0 - 103.939, 102.0 - 116.779, 51.0 - 123.68];
    for (i, &v) in out.iter().enumerate() {
        assert!((f64::from(v) - expected[i % 3]).abs() < 1e-4, "value {i}: {v}");
    }
}

#[test]
fn a_pixel_buffer_of_the_wrong_size_is_an_error() {
    let (pre, input) = torchvision(3, [2, 2]);
    let err = preprocess(&[0u8; 10], (5, 3), &pre, &input).unwrap_err();
    assert_eq!(err.expected, 45);
    assert!(err.to_string().contains("10 bytes"), "{err}");
}
