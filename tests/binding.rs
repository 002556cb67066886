//! The binding layer, through an embedded interpreter: conversions and the exception family.

use std::io::Cursor;

use _core::python::{core_module, DecodeError, ModelLoadError};
use image::{DynamicImage, ImageFormat, RgbImage};
use pyo3::exceptions::{PyFileNotFoundError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use pyo3_testing::{pyo3test, with_py_raises};

fn png() -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 30, image::Rgb([10, 20, 30])))
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[pyo3test]
#[pyo3import(core_module: from _core import preprocess)]
fn preprocess_returns_a_float32_nchw_array() {
    let images = PyList::new(py, [PyBytes::new(py, &png())]).unwrap();
    let kwargs = PyDict::new(py);
    kwargs.set_item("resize", (20, 30)).unwrap();
    let array = preprocess.call((images,), Some(&kwargs)).unwrap();
    let shape: Vec<usize> = array.getattr("shape").unwrap().extract().unwrap();
    assert_eq!(shape, vec![1, 3, 20, 30]);
    let dtype: String = array
        .getattr("dtype")
        .unwrap()
        .str()
        .unwrap()
        .extract()
        .unwrap();
    assert_eq!(dtype, "float32");
}

#[pyo3test]
#[allow(unused_macros)]
#[pyo3import(core_module: from _core import preprocess)]
fn undecodable_bytes_raise_decode_error() {
    let images = PyList::new(py, [PyBytes::new(py, b"not an image")]).unwrap();
    with_py_raises!(DecodeError, { preprocess.call1((images,)) });
}

#[pyo3test]
#[allow(unused_macros)]
#[pyo3import(core_module: from _core import preprocess)]
fn a_single_bytes_object_is_a_type_error() {
    let image = PyBytes::new(py, &png());
    with_py_raises!(PyTypeError, { preprocess.call1((image,)) });
}

#[pyo3test]
#[allow(unused_macros)]
#[pyo3import(core_module: from _core import preprocess)]
fn bad_options_are_value_errors() {
    let images = PyList::new(py, [PyBytes::new(py, &png())]).unwrap();
    let kwargs = PyDict::new(py);
    kwargs.set_item("crop", 300).unwrap();
    with_py_raises!(PyValueError, { preprocess.call((images,), Some(&kwargs)) });
}

#[pyo3test]
#[allow(unused_macros)]
#[pyo3import(core_module: from _core import ImageClassifier)]
fn missing_model_is_file_not_found() {
    with_py_raises!(PyFileNotFoundError, {
        ImageClassifier.call1(("/nonexistent/model.pt",))
    });
}

#[pyo3test]
#[allow(unused_macros)]
#[pyo3import(core_module: from _core import ImageClassifier)]
fn a_file_that_is_not_torchscript_is_model_load_error() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    with_py_raises!(ModelLoadError, { ImageClassifier.call1((path,)) });
}
