//! beam-ml-flink's native core: encoded images in, a preprocessed NCHW batch and the predictions
//! of a TorchScript model or an AOTInductor package out. The modules below do the work in plain
//! Rust; [`python`] is the only one that knows Python.

pub mod aoti;
pub mod batch;
pub mod classify;
pub mod decode;
pub mod error;
pub mod model;
pub mod package;
pub mod pass_size;
pub mod python;
pub mod resample;
pub mod torchscript;
pub mod transform;

pub use error::{Error, Result};
