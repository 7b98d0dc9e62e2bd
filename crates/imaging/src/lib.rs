//! Images, from bytes to the network's input: decode with EXIF
//! orientation, resize to the stored size ([`decode`]), and prepare stored
//! pixels as the model spec says ([`preprocess`]). Pure: no files, no ONNX
//! Runtime. The ingest, features, finetune and predict stages all prepare
//! images through this one crate, so an image predicted on is prepared
//! exactly as the images trained on.

pub mod decode;
pub mod preprocess;

pub use decode::{
    check_file, check_stored_size, decode, decode_upright, max_file_bytes, resize, resize_to_stored, DecodeError,
    Decoded, Failure,
};

/// File extensions treated as images; everything else is ignored (counted).
pub const IMAGE_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff", "jfif"];
