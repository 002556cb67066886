//! The binding layer: converts Python arguments at the edge, releases the GIL once per call, and
//! maps the crate's errors onto a small exception family. No work is done here.

use std::path::PathBuf;

use numpy::ndarray::{Array2, Array4};
use numpy::{IntoPyArray, PyArray2, PyArray4};
use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::batch::preprocess_batch;
use crate::classify::{read_labels, Classifier, Outcome};
use crate::decode::{DecodeOptions, DEFAULT_MAX_PIXELS};
use crate::error::Error as CoreError;
use crate::model::{self, ModelOptions};
use crate::resample::Filter;
use crate::transform::{PreprocessSpec, Resize};

create_exception!(
    beam_ml_flink,
    Error,
    PyException,
    "Base class of beam-ml-flink's errors."
);
create_exception!(
    beam_ml_flink,
    DecodeError,
    Error,
    "An image could not be decoded or preprocessed."
);
create_exception!(
    beam_ml_flink,
    ModelLoadError,
    Error,
    "A model file could not be loaded as a TorchScript image classifier."
);
create_exception!(
    beam_ml_flink,
    InferenceError,
    Error,
    "The model's forward pass failed."
);

impl From<CoreError> for PyErr {
    fn from(error: CoreError) -> PyErr {
        let message = error.to_string();
        match &error {
            CoreError::NotFound { .. } => PyFileNotFoundError::new_err(message),
            CoreError::Io { .. } => PyOSError::new_err(message),
            CoreError::InvalidArgument(_) => PyValueError::new_err(message),
            CoreError::ModelLoad { .. } => ModelLoadError::new_err(message),
            CoreError::Inference { .. } => InferenceError::new_err(message),
            e if e.is_decode() => DecodeError::new_err(message),
            _ => Error::new_err(message),
        }
    }
}

/// Runs the work of one call with the GIL released, so other Python threads go on meanwhile.
/// What `ImageClassifier.embed` returns: the `[N, dim]` vectors, and per image None or its error.
type EmbedResult<'py> = (Bound<'py, PyArray2<f32>>, Vec<Option<String>>);

fn detached<T: Send>(py: Python<'_>, work: impl FnOnce() -> T + Send) -> T {
    py.detach(work)
}

/// One encoded image: `bytes` are shared with Python (immutable, no copy); a `bytearray` or a
/// buffer could change under a released GIL, so it is copied.
enum ImageBytes {
    Shared(PyBackedBytes),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for ImageBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            ImageBytes::Shared(b) => b.as_ref(),
            ImageBytes::Owned(v) => v,
        }
    }
}

fn image_list(images: &Bound<'_, PyAny>) -> PyResult<Vec<ImageBytes>> {
    if images.is_instance_of::<PyBytes>() || images.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "images must be a sequence of encoded images (a list of bytes), not a single \
             bytes or str object; wrap one image in a list",
        ));
    }
    let mut out = Vec::new();
    for (index, item) in images.try_iter()?.enumerate() {
        let item = item?;
        if let Ok(bytes) = item.extract::<PyBackedBytes>() {
            out.push(ImageBytes::Shared(bytes));
        } else if let Ok(buffer) = PyBuffer::<u8>::get(&item) {
            out.push(ImageBytes::Owned(buffer.to_vec(images.py())?));
        } else {
            return Err(PyTypeError::new_err(format!(
                "images[{index}] must be bytes, bytearray or memoryview of an encoded image, got {}",
                item.get_type().name()?
            )));
        }
    }
    Ok(out)
}

/// `resize=256` (shorter side, then crop) or `resize=(height, width)` (exact, no crop).
#[derive(FromPyObject)]
enum ResizeArg {
    Side(u32),
    Exact((u32, u32)),
}

/// `labels=` a path to a text file, one name per line, or the names themselves.
#[derive(FromPyObject)]
enum LabelsArg {
    Path(PathBuf),
    Names(Vec<String>),
}

/// The recipe of `preprocess` and `ImageClassifier`: `resize` or `crop_pct` (not both; neither
/// is `Resize(256)`), the crop, the normalization and the resize's filter.
fn spec(
    resize: Option<ResizeArg>,
    crop: u32,
    crop_pct: Option<f64>,
    mean: [f32; 3],
    std: [f32; 3],
    interpolation: &str,
) -> PyResult<PreprocessSpec> {
    let filter: Filter = interpolation.parse()?;
    let resize = match (resize, crop_pct) {
        (Some(_), Some(_)) => {
            return Err(PyValueError::new_err(
                "give resize or crop_pct, not both: crop_pct sets the resized shorter side to \
                 floor(crop / crop_pct)",
            ))
        }
        (None, Some(crop_pct)) => Resize::for_crop_pct(crop, crop_pct)?,
        (None, None) => Resize::ShorterSide(256),
        (Some(ResizeArg::Side(side)), None) => Resize::ShorterSide(side),
        (Some(ResizeArg::Exact((height, width))), None) => Resize::Exact { height, width },
    };
    Ok(PreprocessSpec::new(resize, crop, mean, std)?.with_filter(filter))
}

/// torchvision's ImageNet normalization, the recipe's default.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The preprocessing arguments of `ImageClassifier` as given (None where not given).
struct Recipe<'py> {
    resize: Option<Bound<'py, PyAny>>,
    crop: Option<Bound<'py, PyAny>>,
    crop_pct: Option<Bound<'py, PyAny>>,
    interpolation: Option<Bound<'py, PyAny>>,
    mean: Option<Bound<'py, PyAny>>,
    std: Option<Bound<'py, PyAny>>,
}

impl<'py> Recipe<'py> {
    /// The recipe of a timm or Hugging Face config (`beam_ml_flink.recipes`, which names the
    /// file and field it cannot honour) with the arguments given in their place.
    fn over_config(self, config: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = config.py();
        let recipes = py.import("beam_ml_flink.recipes")?;
        let recipe = recipes.call_method1("read_preprocess_config", (config,))?;
        let given = PyDict::new(py);
        for (name, value) in [
            ("resize", &self.resize),
            ("crop", &self.crop),
            ("crop_pct", &self.crop_pct),
            ("interpolation", &self.interpolation),
            ("mean", &self.mean),
            ("std", &self.std),
        ] {
            given.set_item(name, value)?;
        }
        let merged = recipes.call_method("with_explicit", (recipe,), Some(&given))?;
        let field = |name: &str| -> PyResult<Option<Bound<'py, PyAny>>> {
            let value = merged.get_item(name)?;
            Ok((!value.is_none()).then_some(value))
        };
        Ok(Self {
            resize: field("resize")?,
            crop: field("crop")?,
            crop_pct: field("crop_pct")?,
            interpolation: field("interpolation")?,
            mean: field("mean")?,
            std: field("std")?,
        })
    }

    /// The spec, with `preprocess`'s defaults for what is not given.
    fn spec(&self) -> PyResult<PreprocessSpec> {
        fn or<'py, T>(value: &Option<Bound<'py, PyAny>>, default: T) -> PyResult<T>
        where
            T: for<'a> FromPyObject<'a, 'py>,
        {
            value
                .as_ref()
                .map_or(Ok(default), |v| v.extract().map_err(Into::into))
        }
        let interpolation: String = or(&self.interpolation, "bilinear".to_owned())?;
        spec(
            self.resize.as_ref().map(|r| r.extract()).transpose()?,
            or(&self.crop, 224)?,
            self.crop_pct.as_ref().map(|c| c.extract()).transpose()?,
            or(&self.mean, IMAGENET_MEAN)?,
            or(&self.std, IMAGENET_STD)?,
            &interpolation,
        )
    }
}

fn decode_options(spec: &PreprocessSpec, max_pixels: u64, draft: bool) -> DecodeOptions {
    DecodeOptions {
        max_pixels,
        min_size: draft.then(|| spec.min_source_size()),
    }
}

/// Decodes and preprocesses images into one float32 array `[N, 3, H, W]`.
#[pyfunction]
#[pyo3(signature = (
    images, *, resize = None, crop = 224, mean = [0.485, 0.456, 0.406],
    std = [0.229, 0.224, 0.225], max_pixels = DEFAULT_MAX_PIXELS, draft = false,
    interpolation = "bilinear", crop_pct = None
), text_signature = "(images, *, resize=None, crop=224, mean=(0.485, 0.456, 0.406), \
    std=(0.229, 0.224, 0.225), max_pixels=178956970, draft=False, interpolation='bilinear', \
    crop_pct=None)")]
#[allow(clippy::too_many_arguments)]
fn preprocess<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    resize: Option<ResizeArg>,
    crop: u32,
    mean: [f32; 3],
    std: [f32; 3],
    max_pixels: u64,
    draft: bool,
    interpolation: &str,
    crop_pct: Option<f64>,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    let images = image_list(images)?;
    let spec = spec(resize, crop, crop_pct, mean, std, interpolation)?;
    let decode = decode_options(&spec, max_pixels, draft);
    let batch = detached(py, || {
        preprocess_batch(&images, &spec, &decode).into_complete()
    })?;
    let shape = (batch.ok.len(), 3, batch.height, batch.width);
    let array =
        Array4::from_shape_vec(shape, batch.data).expect("a batch holds exactly N*3*H*W values");
    Ok(array.into_pyarray(py))
}

/// The result for one image of `ImageClassifier.classify`.
#[pyclass(frozen, eq, module = "beam_ml_flink._core")]
#[derive(PartialEq)]
pub struct Classification {
    /// True when the image was classified.
    #[pyo3(get)]
    ok: bool,
    /// (index, label or None, probability), most probable first; empty on failure.
    #[pyo3(get)]
    top_k: Vec<(usize, Option<String>, f32)>,
    /// Why the image failed, or None.
    #[pyo3(get)]
    error: Option<String>,
}

#[pymethods]
impl Classification {
    /// Built by `classify`; public so that results can be pickled between Beam workers.
    #[new]
    #[pyo3(signature = (top_k = Vec::new(), error = None))]
    fn new(top_k: Vec<(usize, Option<String>, f32)>, error: Option<String>) -> PyResult<Self> {
        if error.is_some() && !top_k.is_empty() {
            return Err(PyValueError::new_err(
                "a Classification has either top_k or an error, not both",
            ));
        }
        Ok(Self {
            ok: error.is_none(),
            top_k,
            error,
        })
    }

    #[allow(clippy::type_complexity)]
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> (
        Bound<'py, pyo3::types::PyType>,
        (Vec<(usize, Option<String>, f32)>, Option<String>),
    ) {
        let this = slf.get();
        (slf.get_type(), (this.top_k.clone(), this.error.clone()))
    }

    /// As Python writes the fields: `(967, 'espresso', 0.9568646)`, `None` without labels;
    /// probabilities as the float32 they are.
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        if let Some(error) = &self.error {
            let error = error.into_pyobject(py)?.repr()?;
            return Ok(format!("Classification(ok=False, error={error})"));
        }
        let mut entries = Vec::with_capacity(self.top_k.len());
        for (index, label, probability) in &self.top_k {
            let label = match label {
                Some(label) => label.into_pyobject(py)?.repr()?.to_string(),
                None => "None".to_string(),
            };
            entries.push(format!("({index}, {label}, {probability})"));
        }
        Ok(format!(
            "Classification(ok=True, top_k=[{}])",
            entries.join(", ")
        ))
    }
}

/// An image classifier (a TorchScript model or an AOTInductor package) with its preprocessing;
/// immutable, safe to share by threads.
/// Weak-referenceable because Beam's `shared.Shared` keeps the loaded model by weak reference.
#[pyclass(
    frozen,
    weakref,
    module = "beam_ml_flink._core",
    name = "ImageClassifier"
)]
pub struct ImageClassifier {
    inner: Classifier,
}

#[pymethods]
impl ImageClassifier {
    #[new]
    #[pyo3(signature = (
        model_path, *, device = "cpu", resize = None, crop = None, mean = None, std = None,
        labels = None, max_pixels = DEFAULT_MAX_PIXELS, draft = false, optimize = true,
        forward_batch_size = None, precision = "fp32", interpolation = None, crop_pct = None,
        preprocess_config = None
    ), text_signature = "(model_path, *, device='cpu', resize=None, crop=224, \
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), labels=None, \
        max_pixels=178956970, draft=False, optimize=True, forward_batch_size=None, \
        precision='fp32', interpolation='bilinear', crop_pct=None, preprocess_config=None)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_path: PathBuf,
        device: &str,
        resize: Option<Bound<'_, PyAny>>,
        crop: Option<Bound<'_, PyAny>>,
        mean: Option<Bound<'_, PyAny>>,
        std: Option<Bound<'_, PyAny>>,
        labels: Option<LabelsArg>,
        max_pixels: u64,
        draft: bool,
        optimize: bool,
        forward_batch_size: Option<usize>,
        precision: &str,
        interpolation: Option<Bound<'_, PyAny>>,
        crop_pct: Option<Bound<'_, PyAny>>,
        preprocess_config: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let options = ModelOptions {
            device: device.parse()?,
            precision: precision.parse()?,
            optimize,
        };
        let given = Recipe {
            resize,
            crop,
            crop_pct,
            interpolation,
            mean,
            std,
        };
        let spec = match preprocess_config {
            None => given.spec()?,
            Some(config) => given.over_config(&config)?.spec()?,
        };
        let decode = decode_options(&spec, max_pixels, draft);
        let labels = match labels {
            None => None,
            Some(LabelsArg::Names(names)) => Some(names),
            Some(LabelsArg::Path(path)) => Some(read_labels(&path)?),
        };
        let inner = detached(py, || {
            Classifier::load(
                &model_path,
                options,
                spec,
                decode,
                labels,
                forward_batch_size,
            )
        })?;
        Ok(Self { inner })
    }

    /// Logits `[N, num_classes]` of every image; a bad image raises DecodeError.
    fn logits<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let images = image_list(images)?;
        let logits = detached(py, || self.inner.logits(&images))?;
        let rows = logits.data.len() / logits.classes;
        let array = Array2::from_shape_vec((rows, logits.classes), logits.data)
            .expect("logits hold exactly N*classes values");
        Ok(array.into_pyarray(py))
    }

    /// The model's output vector per image as one `[N, dim]` float32 array (L2-normalised
    /// with `normalize`), and per image None or the reason it failed (its row is NaN).
    #[pyo3(signature = (images, normalize = false))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        normalize: bool,
    ) -> PyResult<EmbedResult<'py>> {
        let images = image_list(images)?;
        let count = images.len();
        let embeddings = detached(py, || self.inner.embed(&images, normalize));
        let mut errors = vec![None; count];
        for (index, reason) in embeddings.failures {
            errors[index] = Some(reason);
        }
        let array = Array2::from_shape_vec((count, embeddings.dim), embeddings.data)
            .expect("embeddings hold exactly N*dim values");
        Ok((array.into_pyarray(py), errors))
    }

    /// One Classification per image, in order; bad images are failures, never exceptions.
    #[pyo3(signature = (images, top_k = 5))]
    fn classify(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        top_k: usize,
    ) -> PyResult<Vec<Classification>> {
        if top_k == 0 {
            return Err(PyValueError::new_err("top_k must be at least 1, got 0"));
        }
        let images = image_list(images)?;
        let outcomes = detached(py, || self.inner.classify(&images, top_k));
        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Classified(classes) => Classification {
                    ok: true,
                    top_k: classes
                        .iter()
                        .map(|c| {
                            (
                                c.index,
                                self.inner.label(c.index).map(str::to_owned),
                                c.probability,
                            )
                        })
                        .collect(),
                    error: None,
                },
                Outcome::Failed(reason) => Classification {
                    ok: false,
                    top_k: Vec::new(),
                    error: Some(reason),
                },
            })
            .collect())
    }

    /// The device the model runs on, as 'cpu' or 'cuda:N'.
    #[getter]
    fn device(&self) -> String {
        self.inner.model().device().to_string()
    }

    /// What the model computes in: 'fp32', 'fp16' or 'bf16'.
    #[getter]
    fn precision(&self) -> String {
        self.inner.model().precision().to_string()
    }

    /// What the model file is: 'torchscript' or 'aoti' (an AOTInductor package).
    #[getter]
    fn model_format(&self) -> String {
        self.inner.model().format().to_string()
    }

    /// The model file.
    #[getter]
    fn model_path(&self) -> PathBuf {
        self.inner.model().path().to_path_buf()
    }

    /// The most images one forward pass takes: the size given, or on the CPU the one chosen
    /// from the first passes; None for the whole batch (CUDA's default), or while the first
    /// passes are still being timed.
    #[getter]
    fn forward_batch_size(&self) -> Option<usize> {
        self.inner.forward_batch_size()
    }

    /// Number of classes the model returns.
    #[getter]
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    /// Class names, or None.
    #[getter]
    fn labels(&self) -> Option<Vec<String>> {
        self.inner.labels().map(<[String]>::to_vec)
    }

    /// (height, width) of the model input.
    #[getter]
    fn input_size(&self) -> (usize, usize) {
        self.inner.spec().output_size()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let (h, w) = self.inner.spec().output_size();
        let path = self.inner.model().path().into_pyobject(py)?.str()?.repr()?;
        Ok(format!(
            "ImageClassifier(model_path={path}, model_format='{}', device='{}', precision='{}', \
             num_classes={}, input_size=({h}, {w}))",
            self.inner.model().format(),
            self.inner.model().device(),
            self.inner.model().precision(),
            self.inner.num_classes()
        ))
    }
}

/// Number of CUDA devices the installed libtorch can use (0 without a GPU or CUDA build).
#[pyfunction]
fn cuda_device_count(py: Python<'_>) -> usize {
    detached(py, model::cuda_device_count)
}

/// The native module `beam_ml_flink._core`.
#[pymodule]
#[pyo3(name = "_core")]
pub fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_device_count, m)?)?;
    m.add_class::<ImageClassifier>()?;
    m.add_class::<Classification>()?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("ModelLoadError", py.get_type::<ModelLoadError>())?;
    m.add("InferenceError", py.get_type::<InferenceError>())?;
    m.add("DEFAULT_MAX_PIXELS", DEFAULT_MAX_PIXELS)?;
    m.add(
        "INTERPOLATIONS",
        PyTuple::new(py, Filter::ALL.map(Filter::name))?,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
