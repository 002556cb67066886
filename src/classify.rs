//! The image classifier: a model, its preprocessing recipe and its labels; a batch of encoded
//! images in, per image either its top-k classes or the reason it failed.

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use crate::batch::{preprocess_batch, Batch};
use crate::decode::DecodeOptions;
use crate::error::{Error, Result};
use crate::model::{Device, Logits, Model, ModelOptions, Precision};
use crate::pass_size::{Chooser, PassSize};
use crate::transform::PreprocessSpec;

/// One class of a prediction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Class {
    /// Index in the model's output.
    pub index: usize,
    /// Softmax probability.
    pub probability: f32,
}

/// What became of one input image.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The top-k classes, most probable first.
    Classified(Vec<Class>),
    /// Why this image has no prediction.
    Failed(String),
}

/// A loaded model with the preprocessing and labels that belong to it.
#[derive(Debug)]
pub struct Classifier {
    model: Model,
    spec: PreprocessSpec,
    decode: DecodeOptions,
    labels: Option<Vec<String>>,
    num_classes: usize,
    pass_size: PassSize,
}

impl Classifier {
    /// Loads the model and checks it once on a blank image: that it accepts the preprocessed
    /// size, returns `[N, classes]`, and has as many classes as `labels` has names.
    ///
    /// `forward_batch` is the most images one forward pass takes (`None`: on the CPU the
    /// fastest of [`crate::pass_size::CANDIDATES`], timed on the first passes; on CUDA the
    /// whole batch).
    pub fn load(
        model_path: &Path,
        options: ModelOptions,
        spec: PreprocessSpec,
        decode: DecodeOptions,
        labels: Option<Vec<String>>,
        forward_batch: Option<usize>,
    ) -> Result<Self> {
        if forward_batch == Some(0) {
            return Err(Error::InvalidArgument(
                "forward_batch_size must be at least 1, or None for the default".to_string(),
            ));
        }
        let pass_size = match (forward_batch, options.device) {
            (Some(size), _) => PassSize::Fixed(size),
            (None, Device::Cpu) => PassSize::Auto(Chooser::new()),
            (None, Device::Cuda(_)) => PassSize::Whole,
        };
        let model = Model::load(model_path, options)?;
        let (height, width) = spec.output_size();
        let mut blank = vec![0.0f32; spec.image_len()];
        let precision_hint = match options.precision {
            Precision::Float32 => String::new(),
            other => format!(", and that {} can run the model in {other}", options.device),
        };
        let probe = model
            .forward(&mut blank, 1, height, width)
            .map_err(|e| Error::ModelLoad {
                path: model_path.to_path_buf(),
                reason: format!(
                    "a test forward on one 3x{height}x{width} image failed ({e}); check that \
                     resize and crop give the input size the model expects{precision_hint}"
                ),
            })?;
        let num_classes = probe.classes;
        if let Some(names) = &labels {
            if names.len() != num_classes {
                return Err(Error::ModelLoad {
                    path: model_path.to_path_buf(),
                    reason: format!(
                        "the model returns {num_classes} classes but the labels have {} names; \
                         pass the labels that belong to this model",
                        names.len()
                    ),
                });
            }
        }
        Ok(Self {
            model,
            spec,
            decode,
            labels,
            num_classes,
            pass_size,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The preprocessing recipe.
    pub fn spec(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// The decoding options.
    pub fn decode_options(&self) -> &DecodeOptions {
        &self.decode
    }

    /// Number of classes the model returns.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The most images a forward pass takes: the size given, or the one chosen on the CPU;
    /// `None` for the whole batch, or while the first passes are being timed.
    pub fn forward_batch_size(&self) -> Option<usize> {
        self.pass_size.current()
    }

    /// Class names, if given.
    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }

    /// The name of class `index`, if labels were given.
    pub fn label(&self, index: usize) -> Option<&str> {
        self.labels
            .as_ref()
            .and_then(|names| names.get(index))
            .map(String::as_str)
    }

    /// Decodes and preprocesses `images` in parallel.
    pub fn preprocess<B: AsRef<[u8]> + Sync>(&self, images: &[B]) -> Batch {
        preprocess_batch(images, &self.spec, &self.decode)
    }

    /// Logits of every image; the first bad image fails the call, naming its index.
    pub fn logits<B: AsRef<[u8]> + Sync>(&self, images: &[B]) -> Result<Logits> {
        let mut batch = self.preprocess(images).into_complete()?;
        let mut data = Vec::with_capacity(images.len() * self.num_classes);
        for (_, logits) in self.forward_in_parts(&mut batch) {
            data.extend_from_slice(&logits?.data);
        }
        Ok(Logits {
            data,
            classes: self.num_classes,
        })
    }

    /// Top-k classes of every image that decodes; a bad image, or a failed forward pass, is a
    /// [`Outcome::Failed`] for the images concerned and never fails the call.
    pub fn classify<B: AsRef<[u8]> + Sync>(&self, images: &[B], top_k: usize) -> Vec<Outcome> {
        let mut batch = self.preprocess(images);
        let mut outcomes = vec![Outcome::Failed(String::new()); images.len()];
        for (index, error) in batch.failures.drain(..) {
            outcomes[index] = Outcome::Failed(error.to_string());
        }
        for (part, logits) in self.forward_in_parts(&mut batch) {
            let indices = &batch.ok[part];
            match logits {
                Ok(logits) => {
                    for (row, &index) in logits.data.chunks_exact(logits.classes).zip(indices) {
                        outcomes[index] = Outcome::Classified(top_classes(row, top_k));
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    for &index in indices {
                        outcomes[index] = Outcome::Failed(reason.clone());
                    }
                }
            }
        }
        outcomes
    }

    /// The model's output vector of every image (its logits, or the features of a model that
    /// returns features), L2-normalised when `normalize` is set; a bad image, or a failed
    /// forward pass, gives a row of NaN and its reason in [`Embeddings::failures`], and never
    /// fails the call.
    pub fn embed<B: AsRef<[u8]> + Sync>(&self, images: &[B], normalize: bool) -> Embeddings {
        let dim = self.num_classes;
        let mut batch = self.preprocess(images);
        let mut data = vec![f32::NAN; images.len() * dim];
        let mut failures: Vec<(usize, String)> = batch
            .failures
            .drain(..)
            .map(|(index, error)| (index, error.to_string()))
            .collect();
        for (part, output) in self.forward_in_parts(&mut batch) {
            let indices = &batch.ok[part];
            match output {
                Ok(output) => {
                    for (row, &index) in output.data.chunks_exact(output.classes).zip(indices) {
                        let target = &mut data[index * dim..(index + 1) * dim];
                        target.copy_from_slice(row);
                        if normalize {
                            l2_normalize(target);
                        }
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    failures.extend(indices.iter().map(|&index| (index, reason.clone())));
                }
            }
        }
        failures.sort_by_key(|(index, _)| *index);
        Embeddings {
            data,
            dim,
            failures,
        }
    }

    /// Runs the preprocessed images through the model in passes of at most the pass size (see
    /// [`PassSize`]); each pass's positions in `batch.ok`, with its logits or its error.
    fn forward_in_parts(&self, batch: &mut Batch) -> Vec<(Range<usize>, Result<Logits>)> {
        let count = batch.ok.len();
        let image_len = 3 * batch.height * batch.width;
        let mut parts = Vec::new();
        let mut rest = &mut batch.data[..count * image_len];
        let mut start = 0;
        while start < count {
            let size = self.pass_size.next(count - start);
            let images = size.min(count - start);
            let (part, tail) = rest.split_at_mut(images * image_len);
            rest = tail;
            let began = Instant::now();
            let logits = self.model.forward(part, images, batch.height, batch.width);
            // The first of several passes runs while the decoding threads wind down, slower by
            // about the same time whatever its size (on 2 cores EfficientNet-Lite0's package
            // took 9 ms an image in the first pass of 4, 6.7 in the next): timing it would
            // favour the larger size. A call of one pass pays that time in full, so it counts.
            if logits.is_ok() && (start > 0 || images == count) {
                self.pass_size.record(size, images, began.elapsed());
            }
            parts.push((start..start + images, logits));
            start += images;
        }
        parts
    }
}

/// The output vectors of a batch of images, row-major `[images, dim]`, in the images' order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// `images * dim` values; the rows of failed images are NaN.
    pub data: Vec<f32>,
    /// Values per image.
    pub dim: usize,
    /// The failed images, by index in ascending order, with their reasons.
    pub failures: Vec<(usize, String)>,
}

/// Divides `row` by its Euclidean norm (at least 1e-12), as `torch.nn.functional.normalize`.
pub fn l2_normalize(row: &mut [f32]) {
    let norm = row.iter().map(|&x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in row.iter_mut() {
        *x /= norm;
    }
}

/// The `k` classes of highest logit (ties: lower index first), each with its softmax probability.
///
/// Ranked by logit rather than by probability: f32 probabilities of nearly equal logits round to
/// the same value, and the ranking must stay torch's `argmax`/`topk` of the logits.
pub fn top_classes(logits: &[f32], k: usize) -> Vec<Class> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let by_logit = |&a: &usize, &b: &usize| logits[b].total_cmp(&logits[a]).then(a.cmp(&b));
    let mut indices: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(indices.len());
    if k > 0 && k < indices.len() {
        indices.select_nth_unstable_by(k - 1, by_logit);
    }
    indices.truncate(k);
    indices.sort_by(by_logit);
    indices
        .into_iter()
        .map(|index| Class {
            index,
            probability: (f64::from(logits[index] - max).exp() / sum) as f32,
        })
        .collect()
}

/// Reads class names, one per line (a trailing newline and `\r` line ends are fine).
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                what: "labels file",
                path: path.to_path_buf(),
            }
        } else {
            Error::Io {
                what: "labels file",
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    Ok(text.lines().map(|l| l.trim_end().to_string()).collect())
}
