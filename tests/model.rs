//! The model and the batch, with the tiny TorchScript model that `make init` traces: our forward
//! against tch's own, failures packed out of the batch, and load errors.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use _core::batch::preprocess_batch;
use _core::classify::{Classifier, Outcome};
use _core::decode::DecodeOptions;
use _core::model::{cuda_device_count, Device, Model, ModelOptions, Precision};
use _core::torchscript::to_cuda_pinned;
use _core::transform::{PreprocessSpec, Resize};
use _core::Error;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

fn tiny_model() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models/tiny.pt");
    assert!(
        path.exists(),
        "{} is missing; run `make init`",
        path.display()
    );
    path
}

fn png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            ((x * seed) % 256) as u8,
            ((y * 3 + seed) % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image)
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn spec() -> PreprocessSpec {
    PreprocessSpec::new(
        Resize::ShorterSide(64),
        56,
        [0.485, 0.456, 0.406],
        [0.229, 0.224, 0.225],
    )
    .unwrap()
}

#[test]
fn forward_matches_tch_on_a_copied_tensor() {
    let images = [png(90, 70, 3), png(64, 120, 7), png(200, 64, 11)];
    let batch = preprocess_batch(&images, &spec(), &DecodeOptions::default());
    assert_eq!(batch.ok, vec![0, 1, 2]);
    let input = tch::Tensor::from_slice(&batch.data).view([3, 3, 56, 56]);
    let module = tch::CModule::load(tiny_model()).unwrap();
    let expected = tch::no_grad(|| module.forward_ts(&[input]).unwrap());
    let expected = Vec::<f32>::try_from(expected.reshape([-1])).unwrap();

    // As saved, and frozen + optimized for inference: the same logits up to float rounding.
    for optimize in [false, true] {
        let model = Model::load(
            &tiny_model(),
            ModelOptions {
                optimize,
                ..ModelOptions::default()
            },
        )
        .unwrap();
        let mut data = batch.data.clone();
        let logits = model.forward(&mut data, 3, 56, 56).unwrap();
        assert_eq!(logits.classes, 10);
        assert_eq!(logits.data.len(), 30);
        for (a, b) in logits.data.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4, "optimize={optimize}: {a} vs {b}");
        }
    }
}

#[test]
fn failures_are_packed_out_in_input_order() {
    let good = [png(80, 60, 5), png(60, 80, 9)];
    let images: Vec<&[u8]> = vec![b"", &good[0], b"garbage", &good[1]];
    let spec = spec();
    let batch = preprocess_batch(&images, &spec, &DecodeOptions::default());
    assert_eq!(batch.ok, vec![1, 3]);
    assert_eq!(batch.failures.len(), 2);
    assert_eq!(batch.failures[0].0, 0);
    assert!(matches!(batch.failures[0].1, Error::EmptyImage));
    assert_eq!(batch.failures[1].0, 2);
    let alone = preprocess_batch(&good, &spec, &DecodeOptions::default());
    assert_eq!(batch.data, alone.data);

    let err = preprocess_batch(&images, &spec, &DecodeOptions::default())
        .into_complete()
        .unwrap_err();
    assert!(
        err.to_string().starts_with("image 0: the image is empty"),
        "{err}"
    );
}

#[test]
fn classify_keeps_one_outcome_per_input() {
    let classifier = Classifier::load(
        &tiny_model(),
        ModelOptions::default(),
        spec(),
        DecodeOptions::default(),
        Some((0..10).map(|i| format!("class {i}")).collect()),
        None,
    )
    .unwrap();
    assert_eq!(classifier.num_classes(), 10);
    let good = png(100, 100, 13);
    let images: Vec<&[u8]> = vec![&good, b"\xff\xd8\xff", &good];
    let outcomes = classifier.classify(&images, 3);
    assert_eq!(outcomes.len(), 3);
    let Outcome::Classified(first) = &outcomes[0] else {
        panic!("{:?}", outcomes[0])
    };
    assert_eq!(first.len(), 3);
    assert_eq!(outcomes[0], outcomes[2]);
    assert!(matches!(&outcomes[1], Outcome::Failed(reason) if reason.contains("JPEG")));
    assert_eq!(
        classifier.label(first[0].index),
        Some(format!("class {}", first[0].index).as_str())
    );
}

#[test]
fn forward_in_parts_answers_as_one_forward() {
    let load = |forward_batch| {
        Classifier::load(
            &tiny_model(),
            ModelOptions::default(),
            spec(),
            DecodeOptions::default(),
            None,
            Some(forward_batch),
        )
        .unwrap()
    };
    let whole = load(64);
    let images: Vec<Vec<u8>> = (0..11)
        .map(|i| {
            if i % 4 == 1 {
                b"not an image".to_vec()
            } else {
                png(60 + i, 50 + 2 * i, i + 1)
            }
        })
        .collect();
    let expected = whole.classify(&images, 10);
    for forward_batch in [1, 3, 4, 11] {
        let outcomes = load(forward_batch).classify(&images, 10);
        assert_eq!(outcomes.len(), images.len());
        for (i, (got, want)) in outcomes.iter().zip(&expected).enumerate() {
            match (got, want) {
                (Outcome::Classified(got), Outcome::Classified(want)) => {
                    for (g, w) in got.iter().zip(want) {
                        assert_eq!(g.index, w.index, "image {i}, parts of {forward_batch}");
                        assert!((g.probability - w.probability).abs() < 1e-5);
                    }
                }
                (Outcome::Failed(got), Outcome::Failed(want)) => assert_eq!(got, want),
                _ => panic!("image {i}, parts of {forward_batch}: {got:?} != {want:?}"),
            }
        }
    }
    // logits: the first bad image is named by its index in the whole input.
    let err = load(3).logits(&images).unwrap_err();
    assert!(err.to_string().starts_with("image 1:"), "{err}");
    let good: Vec<&Vec<u8>> = images.iter().filter(|b| b.len() > 20).collect();
    let (a, b) = (load(3).logits(&good).unwrap(), whole.logits(&good).unwrap());
    assert_eq!(a.data.len(), good.len() * 10);
    for (x, y) in a.data.iter().zip(&b.data) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    let zero = Classifier::load(
        &tiny_model(),
        ModelOptions::default(),
        spec(),
        DecodeOptions::default(),
        None,
        Some(0),
    )
    .unwrap_err();
    assert!(zero.to_string().contains("at least 1"), "{zero}");
}

#[test]
fn load_errors_say_what_to_do() {
    let missing =
        Model::load(Path::new("/nonexistent/model.pt"), ModelOptions::default()).unwrap_err();
    assert!(
        matches!(
            missing,
            Error::NotFound {
                what: "model file",
                ..
            }
        ),
        "{missing}"
    );
    let not_torchscript = Model::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("Cargo.toml")
            .as_path(),
        ModelOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(not_torchscript, Error::ModelLoad { .. }));
    assert!(
        not_torchscript.to_string().contains("torch.jit.save"),
        "{not_torchscript}"
    );
    let labels = Classifier::load(
        &tiny_model(),
        ModelOptions::default(),
        spec(),
        DecodeOptions::default(),
        Some(vec!["only one".into()]),
        None,
    )
    .unwrap_err();
    assert!(
        labels
            .to_string()
            .contains("returns 10 classes but the labels have 1 names"),
        "{labels}"
    );
}

#[test]
fn device_names_parse_once_with_one_message() {
    assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
    assert_eq!("CUDA".parse::<Device>().unwrap(), Device::Cuda(0));
    assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
    let err = "tpu".parse::<Device>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"
    );
}

#[test]
fn precisions_parse_once_with_one_message() {
    assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Float32);
    assert_eq!("FP16".parse::<Precision>().unwrap(), Precision::Float16);
    assert_eq!(
        "bfloat16".parse::<Precision>().unwrap(),
        Precision::BFloat16
    );
    let err = "int8".parse::<Precision>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "precision must be 'fp32', 'fp16' or 'bf16', got 'int8'"
    );
}

#[test]
fn half_precisions_compute_what_torch_computes_in_them() {
    let images: Vec<Vec<u8>> = (0..4).map(|i| png(70 + 9 * i, 64, i + 2)).collect();
    let batch = preprocess_batch(&images, &spec(), &DecodeOptions::default());
    let input = tch::Tensor::from_slice(&batch.data).view([4, 3, 56, 56]);
    for (precision, kind) in [
        (Precision::Float16, tch::Kind::Half),
        (Precision::BFloat16, tch::Kind::BFloat16),
    ] {
        // torch's own answer: the module as saved, cast to the precision, on the cast input.
        let mut module = tch::CModule::load(tiny_model()).unwrap();
        module.to(tch::Device::Cpu, kind, false);
        let expected = tch::no_grad(|| module.forward_ts(&[input.to_kind(kind)]).unwrap());
        let expected =
            Vec::<f32>::try_from(expected.to_kind(tch::Kind::Float).reshape([-1])).unwrap();
        let full = tch::CModule::load(tiny_model()).unwrap();
        let float32 = tch::no_grad(|| full.forward_ts(&[input.shallow_clone()]).unwrap());
        let float32 = Vec::<f32>::try_from(float32.reshape([-1])).unwrap();
        assert_ne!(
            expected, float32,
            "{precision}: the cast must change the arithmetic"
        );

        let model = Model::load(
            &tiny_model(),
            ModelOptions {
                precision,
                ..ModelOptions::default()
            },
        )
        .unwrap();
        assert_eq!(model.precision(), precision);
        let mut data = batch.data.clone();
        let logits = model.forward(&mut data, 4, 56, 56).unwrap();
        // Freezing folds batch norms into the convolutions, which rounds differently in 16 bits:
        // within a few units of the precision's last place.
        let scale = float32.iter().fold(0f32, |m, x| m.max(x.abs()));
        let tolerance = scale * if kind == tch::Kind::Half { 4e-3 } else { 3e-2 };
        for (got, want) in logits.data.iter().zip(&expected) {
            assert!(
                (got - want).abs() <= tolerance,
                "{precision}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn cuda_needs_a_device_and_says_so() {
    if cuda_device_count() > 0 {
        return;
    }
    let err = Model::load(
        &tiny_model(),
        ModelOptions {
            device: Device::Cuda(0),
            ..ModelOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("device 'cuda:0' was asked for"),
        "{err}"
    );
    // A torch built with CUDA has its CUDA backend loaded by the check, so that a GPU, where
    // there is one, is seen without importing torch.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let torch_cpu = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .expect("libtorch_cpu.so is mapped");
    if Path::new(torch_cpu)
        .with_file_name("libtorch_cuda.so")
        .exists()
    {
        assert!(
            maps.contains("/libtorch_cuda.so"),
            "libtorch_cuda.so is not loaded"
        );
    }
}

#[test]
fn the_pinned_copy_to_cuda_keeps_the_values_or_fails_cleanly() {
    let values: Vec<f32> = (0..3 * 8 * 8).map(|i| i as f32 / 7.0).collect();
    let input = tch::Tensor::from_slice(&values).view([1, 3, 8, 8]);
    match to_cuda_pinned(&input, 0) {
        Ok(on_gpu) => {
            assert!(cuda_device_count() > 0);
            assert_eq!(on_gpu.device(), tch::Device::Cuda(0));
            let back = Vec::<f32>::try_from(on_gpu.to_device(tch::Device::Cpu).reshape([-1]));
            assert_eq!(back.unwrap(), values);
        }
        Err(reason) => {
            assert_eq!(cuda_device_count(), 0, "{reason}");
            assert!(!reason.is_empty());
        }
    }
}

#[test]
fn a_decoder_panic_is_a_failure_for_that_image() {
    // Found by `make fuzz`: png 0.18.1 panics ("range end index 3 out of range") on a PLTE chunk
    // whose length is not a multiple of 3. The batch turns it into this image's failure.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/png-palette-length-panic.png");
    let bad = std::fs::read(path).unwrap();
    let good = png(40, 30, 5);
    let batch = preprocess_batch(&[&bad[..], &good[..]], &spec(), &DecodeOptions::default());
    assert_eq!(batch.ok, vec![1]);
    let (index, error) = &batch.failures[0];
    assert_eq!(*index, 0);
    assert!(error.to_string().contains("internal error"), "{error}");
}
