//! Decoding: formats, colour modes, orientation, limits and bad bytes, on images encoded here.

use std::io::Cursor;

use _core::decode::{decode_rgb8, sniff, DecodeOptions};
use _core::Error;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

fn gradient(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
    })
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn lossless_formats_round_trip_exactly() {
    let rgb = gradient(37, 21);
    for format in [ImageFormat::Png, ImageFormat::Bmp, ImageFormat::Tiff] {
        let bytes = encode(&DynamicImage::ImageRgb8(rgb.clone()), format);
        let decoded = decode_rgb8(&bytes, &DecodeOptions::default()).unwrap();
        assert_eq!(decoded, rgb, "{format:?}");
    }
}

#[test]
fn gray_alpha_and_16_bit_become_rgb8() {
    let rgb = gradient(16, 9);
    let gray = DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
    let decoded = decode_rgb8(
        &encode(&DynamicImage::ImageLuma8(gray.clone()), ImageFormat::Png),
        &DecodeOptions::default(),
    )
    .unwrap();
    for (g, p) in gray.pixels().zip(decoded.pixels()) {
        assert_eq!([g[0]; 3], p.0);
    }
    let rgba = DynamicImage::ImageRgb8(rgb.clone()).to_rgba8();
    let decoded = decode_rgb8(
        &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
        &DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(decoded, rgb);
    let wide = DynamicImage::ImageRgb8(rgb.clone()).to_rgb16();
    let decoded = decode_rgb8(
        &encode(&DynamicImage::ImageRgb16(wide), ImageFormat::Png),
        &DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(decoded, rgb);
}

#[test]
fn jpeg_decodes_close_to_the_source() {
    let rgb = gradient(64, 48);
    let bytes = encode(&DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Jpeg);
    let decoded = decode_rgb8(&bytes, &DecodeOptions::default()).unwrap();
    assert_eq!(decoded.dimensions(), (64, 48));
    let mean_error: f64 = rgb
        .as_raw()
        .iter()
        .zip(decoded.as_raw())
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .sum::<f64>()
        / rgb.as_raw().len() as f64;
    assert!(mean_error < 3.0, "mean error {mean_error}");
}

#[test]
fn reduced_jpeg_decode_keeps_at_least_the_minimum_size() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(gradient(1600, 1200)),
        ImageFormat::Jpeg,
    );
    let options = DecodeOptions {
        min_size: Some((256, 256)),
        ..DecodeOptions::default()
    };
    // 1200 / 4 = 300 >= 256 and 1200 / 8 = 150 < 256: a quarter scale, as PIL's draft() picks.
    assert_eq!(
        decode_rgb8(&bytes, &options).unwrap().dimensions(),
        (400, 300)
    );
    let full = decode_rgb8(&bytes, &DecodeOptions::default()).unwrap();
    assert_eq!(full.dimensions(), (1600, 1200));
}

#[test]
fn bad_bytes_are_clear_errors() {
    let options = DecodeOptions::default();
    assert!(matches!(decode_rgb8(b"", &options), Err(Error::EmptyImage)));
    let err = decode_rgb8(b"hello, this is text", &options).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
    assert!(err.to_string().contains("68 65 6c 6c 6f"), "{err}");
    let bytes = encode(
        &DynamicImage::ImageRgb8(gradient(200, 100)),
        ImageFormat::Png,
    );
    let err = decode_rgb8(&bytes[..bytes.len() / 2], &options).unwrap_err();
    assert!(matches!(err, Error::Decode { format: "PNG", .. }), "{err}");
    assert!(err.to_string().contains("truncated or corrupt"), "{err}");
}

#[test]
fn header_over_the_pixel_limit_is_refused() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(gradient(300, 200)),
        ImageFormat::Png,
    );
    let options = DecodeOptions {
        max_pixels: 50_000,
        ..DecodeOptions::default()
    };
    let err = decode_rgb8(&bytes, &options).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                width: 300,
                height: 200,
                pixels: 60_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(sniff(&bytes).unwrap(), ImageFormat::Png);
}

#[test]
fn truncated_jpeg_says_the_data_ends_early() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(gradient(320, 240)),
        ImageFormat::Jpeg,
    );
    for cut in [bytes.len() / 3, bytes.len() - 10] {
        let err = decode_rgb8(&bytes[..cut], &DecodeOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("data ends before the image is complete"),
            "{err}"
        );
    }
}
