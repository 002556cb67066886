//! The Rust stages one by one (criterion): decode, resize + crop + normalize (with each of
//! Pillow's filters on the 640x427 photo), normalize alone, and a whole batch assembled in
//! parallel. `make bench-rust` runs them; needs `make init`'s
//! sample photos.

use std::io::Cursor;
use std::path::Path;

use _core::batch::preprocess_batch;
use _core::decode::{decode_rgb8, DecodeOptions};
use _core::resample::Filter;
use _core::transform::{PreprocessSpec, Resize};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, RgbImage};

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

fn photo(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/images")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `make init`", path.display()))
}

fn jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(image)
        .unwrap();
    out
}

fn png(image: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image.clone())
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// The 640x427 photo as JPEG (as shipped) and PNG, and upscaled to 4032x3024 as a camera JPEG.
fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let china = photo("china.jpg");
    let decoded = decode_rgb8(&china, &DecodeOptions::default()).unwrap();
    let camera = image::imageops::resize(&decoded, 4032, 3024, FilterType::Triangle);
    vec![
        ("640x427 JPEG", china),
        ("640x427 PNG", png(&decoded)),
        ("4032x3024 JPEG", jpeg(&camera, 90)),
    ]
}

fn spec() -> PreprocessSpec {
    PreprocessSpec::new(Resize::ShorterSide(256), 224, MEAN, STD).unwrap()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let draft = DecodeOptions {
        min_size: Some(spec().min_source_size()),
        ..DecodeOptions::default()
    };
    for (name, bytes) in inputs() {
        group.bench_with_input(BenchmarkId::new("full", name), &bytes, |b, bytes| {
            b.iter(|| decode_rgb8(bytes, &DecodeOptions::default()).unwrap())
        });
        if name.ends_with("JPEG") {
            group.bench_with_input(BenchmarkId::new("draft", name), &bytes, |b, bytes| {
                b.iter(|| decode_rgb8(bytes, &draft).unwrap())
            });
        }
    }
    group.finish();
}

fn resize_crop_normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("resize + crop + normalize");
    let spec = spec();
    for (name, bytes) in inputs().into_iter().filter(|(n, _)| n.ends_with("JPEG")) {
        let image = decode_rgb8(&bytes, &DecodeOptions::default()).unwrap();
        let mut out = vec![0.0f32; spec.image_len()];
        group.bench_function(name, |b| b.iter(|| spec.write(&image, &mut out).unwrap()));
        if name.starts_with("640x427") {
            for filter in Filter::ALL.into_iter().filter(|&f| f != Filter::Bilinear) {
                let spec = spec.clone().with_filter(filter);
                group.bench_function(format!("{name}, {filter}"), |b| {
                    b.iter(|| spec.write(&image, &mut out).unwrap())
                });
            }
        }
    }
    // Normalize alone: a 224x224 image written at 224x224, no resize to do.
    let exact = PreprocessSpec::new(
        Resize::Exact {
            height: 224,
            width: 224,
        },
        224,
        MEAN,
        STD,
    )
    .unwrap();
    let small = image::imageops::resize(
        &decode_rgb8(&photo("china.jpg"), &DecodeOptions::default()).unwrap(),
        224,
        224,
        FilterType::Triangle,
    );
    let mut out = vec![0.0f32; exact.image_len()];
    group.bench_function("normalize only, 224x224", |b| {
        b.iter(|| exact.write(&small, &mut out).unwrap())
    });
    group.finish();
}

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch of 32, all cores");
    group.sample_size(20);
    let names = ["china.jpg", "flower.jpg", "rocket.jpg", "grace_hopper.jpg"];
    let images: Vec<Vec<u8>> = (0..32).map(|i| photo(names[i % names.len()])).collect();
    group.throughput(Throughput::Elements(images.len() as u64));
    let spec = spec();
    group.bench_function("decode + preprocess into one NCHW buffer", |b| {
        b.iter(|| preprocess_batch(&images, &spec, &DecodeOptions::default()))
    });
    group.finish();
}

criterion_group!(benches, decode, resize_crop_normalize, batch);
criterion_main!(benches);
