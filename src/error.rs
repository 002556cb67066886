//! The one error type of the crate. Every message says what failed, on which input, and what to do.

use std::path::PathBuf;

/// Everything that can go wrong while decoding, preprocessing or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input holds no bytes at all.
    #[error("the image is empty (0 bytes); check that the file was read completely")]
    EmptyImage,

    /// The first bytes match none of the supported formats.
    #[error(
        "unsupported or unrecognised image format (first bytes: {magic}); \
         supported formats are JPEG, PNG, WebP, GIF, BMP and TIFF"
    )]
    UnsupportedFormat {
        /// The first bytes of the input, in hex.
        magic: String,
    },

    /// The header announces more pixels than the configured limit.
    #[error(
        "the {format} image is {width}x{height} ({pixels} pixels), above the limit of {limit} pixels; \
         it was refused before decoding to protect memory (raise max_pixels if the image is trusted)"
    )]
    TooLarge {
        /// The format named by the header.
        format: &'static str,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// width * height.
        pixels: u64,
        /// The configured limit.
        limit: u64,
    },

    /// The decoder failed: a truncated or corrupt file.
    #[error(
        "cannot decode the {format} image: {reason}; the file is probably truncated or corrupt"
    )]
    Decode {
        /// The format the bytes claim to be.
        format: &'static str,
        /// The decoder's own words.
        reason: String,
    },

    /// A valid file that uses a feature the decoder lacks (e.g. a palette TIFF).
    #[error(
        "the {format} image uses a feature the decoder does not support ({reason}); \
         convert it to PNG or JPEG"
    )]
    UnsupportedFeature {
        /// The format of the file.
        format: &'static str,
        /// The decoder's own words.
        reason: String,
    },

    /// The image decoded but could not be resized to the model's input.
    #[error("cannot resize the decoded {width}x{height} image: {reason}")]
    Preprocess {
        /// Decoded width.
        width: u32,
        /// Decoded height.
        height: u32,
        /// The resizer's words.
        reason: String,
    },

    /// A failure that belongs to one image of a batch.
    #[error("image {index}: {source}")]
    Item {
        /// Position of the image in the batch.
        index: usize,
        /// What went wrong with it.
        source: Box<Error>,
    },

    /// A file the caller named does not exist.
    #[error("{what} not found: {path}; check the path")]
    NotFound {
        /// What the file was meant to be ("model file", "labels file").
        what: &'static str,
        /// The path as given.
        path: PathBuf,
    },

    /// Reading a file failed for a reason other than its absence.
    #[error("cannot read {what} {path}: {source}")]
    Io {
        /// What the file was meant to be.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// The file exists but libtorch cannot load it as TorchScript, or it is not a classifier.
    #[error("cannot use the model {path}: {reason}")]
    ModelLoad {
        /// The model file.
        path: PathBuf,
        /// Why, with what to do.
        reason: String,
    },

    /// The forward pass failed or returned something that is not `[N, classes]` logits.
    #[error("inference failed on a batch of {batch} image(s) of 3x{height}x{width}: {reason}")]
    Inference {
        /// Images in the batch.
        batch: usize,
        /// Input height.
        height: usize,
        /// Input width.
        width: usize,
        /// libtorch's words or the shape problem.
        reason: String,
    },

    /// An option the caller passed is out of range.
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    /// True for errors that concern one image's bytes rather than the model or the options.
    pub fn is_decode(&self) -> bool {
        match self {
            Error::EmptyImage
            | Error::UnsupportedFormat { .. }
            | Error::TooLarge { .. }
            | Error::Decode { .. }
            | Error::UnsupportedFeature { .. }
            | Error::Preprocess { .. } => true,
            Error::Item { source, .. } => source.is_decode(),
            _ => false,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// libtorch's message without the C++ backtrace it appends, nor the TorchScript interpreter's
/// traceback of the model's code: the error a user can act on, on one line.
pub(crate) fn trim_libtorch_message(text: &str) -> String {
    let text = text
        .split("Exception raised from")
        .next()
        .unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("frame #"))
        .collect();
    // The TorchScript interpreter puts its own traceback of the model's code before the error
    // ("RuntimeError: ..."): the error is what a user can act on.
    let error = lines.iter().rposition(|l| {
        l.split_once(": ")
            .is_some_and(|(kind, _)| kind.ends_with("Error") && !kind.contains(' '))
    });
    let interpreter = lines
        .first()
        .is_some_and(|l| l.contains("TorchScript interpreter"));
    let start = if interpreter { error.unwrap_or(0) } else { 0 };
    lines[start..]
        .iter()
        .take(6)
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}
