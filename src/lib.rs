//! beam-ml-flink's native core: encoded images in, a preprocessed NCHW batch and TorchScript
//! predictions out. The modules below do the work in plain Rust; [`python`] is the only one that
//! knows Python.

pub mod batch;
pub mod classify;
pub mod decode;
pub mod error;
pub mod model;
pub mod python;
pub mod resample;
pub mod torchscript;
pub mod transform;

pub use error::{Error, Result};
