//! A batch of encoded images, in parallel, into one contiguous NCHW float32 buffer; a bad image
//! becomes a failure for its index and the good ones are packed together in input order.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rayon::prelude::*;

use crate::decode::{decode_rgb8, DecodeOptions};
use crate::error::{Error, Result};
use crate::transform::PreprocessSpec;

/// Preprocessed images ready for the model, and the inputs that could not be preprocessed.
#[derive(Debug)]
pub struct Batch {
    /// `ok.len()` images of `3 * height * width` floats each, in input order.
    pub data: Vec<f32>,
    /// Height of each image.
    pub height: usize,
    /// Width of each image.
    pub width: usize,
    /// Input index of each image in `data`.
    pub ok: Vec<usize>,
    /// Input index and reason of each image that failed.
    pub failures: Vec<(usize, Error)>,
}

impl Batch {
    /// The first failure as an error naming its index, for callers that want all or nothing.
    pub fn into_complete(mut self) -> Result<Self> {
        if self.failures.is_empty() {
            Ok(self)
        } else {
            let (index, source) = self.failures.swap_remove(0);
            Err(Error::Item {
                index,
                source: Box::new(source),
            })
        }
    }
}

/// Decodes and preprocesses every image on rayon's pool, each straight into its slot.
pub fn preprocess_batch<B: AsRef<[u8]> + Sync>(
    images: &[B],
    spec: &PreprocessSpec,
    decode: &DecodeOptions,
) -> Batch {
    let len = spec.image_len();
    let (height, width) = spec.output_size();
    let mut data = vec![0.0f32; images.len() * len];
    let results: Vec<Result<()>> = data
        .par_chunks_mut(len)
        .zip(images.par_iter())
        .map(|(slot, bytes)| preprocess_one(bytes.as_ref(), spec, decode, slot))
        .collect();

    let mut ok = Vec::with_capacity(images.len());
    let mut failures = Vec::new();
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok(()) => {
                let to = ok.len();
                if to != index {
                    data.copy_within(index * len..(index + 1) * len, to * len);
                }
                ok.push(index);
            }
            Err(error) => failures.push((index, error)),
        }
    }
    data.truncate(ok.len() * len);
    Batch {
        data,
        height,
        width,
        ok,
        failures,
    }
}

fn preprocess_one(
    bytes: &[u8],
    spec: &PreprocessSpec,
    decode: &DecodeOptions,
    slot: &mut [f32],
) -> Result<()> {
    // A decoder bug on a hostile file must cost one image, not the worker.
    catch_unwind(AssertUnwindSafe(|| {
        let image = decode_rgb8(bytes, decode)?;
        spec.write(&image, slot)
    }))
    .unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(Error::Decode {
            format: "image",
            reason: format!("the decoder stopped on an internal error ({reason})"),
        })
    })
}
