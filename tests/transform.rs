//! Resize, crop and normalize arithmetic: torchvision's size rules, and the cropped resize
//! against a plain full resize followed by a crop. (Pillow itself is the reference of the
//! Python parity tests.)

use _core::resample::resize_rgb8;
use _core::transform::{center_offset, resized_size, PreprocessSpec, Resize};
use image::{Rgb, RgbImage};

fn photo_like(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let v = (x * 7 + y * 13) ^ (x * y);
        Rgb([
            (v % 251) as u8,
            ((v / 3) % 253) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

#[test]
fn center_offset_rounds_half_to_even_like_python() {
    // Python: round(0.5) == 0, round(1.5) == 2, round(2.5) == 2, round(16.0) == 16.
    assert_eq!(center_offset(225, 224), 0);
    assert_eq!(center_offset(227, 224), 2);
    assert_eq!(center_offset(229, 224), 2);
    assert_eq!(center_offset(256, 224), 16);
}

#[test]
fn resized_size_keeps_aspect_with_truncation() {
    // int(256 * 640 / 427) == 383
    assert_eq!(resized_size(640, 427, 256), (383, 256));
    assert_eq!(resized_size(427, 640, 256), (256, 383));
    assert_eq!(resized_size(10, 10000, 256), (256, 256000));
}

#[test]
fn rejects_crop_larger_than_resize_and_zero_std() {
    let ok = PreprocessSpec::new(Resize::ShorterSide(256), 224, [0.5; 3], [0.5; 3]);
    assert!(ok.is_ok());
    let e = PreprocessSpec::new(Resize::ShorterSide(200), 224, [0.5; 3], [0.5; 3]);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("crop must be between 1 and resize (200)"));
    let e = PreprocessSpec::new(Resize::ShorterSide(256), 224, [0.5; 3], [0.5, 0.0, 0.5]);
    assert!(e.unwrap_err().to_string().contains("non-zero"));
}

/// Resize the whole image, crop the center, normalize: the recipe step by step.
fn full_resize_then_crop(image: &RgbImage, side: u32, crop: u32, mean: f32, std: f32) -> Vec<f32> {
    let (width, height) = image.dimensions();
    let (rw, rh) = resized_size(width, height, side);
    let (w, h) = (rw as usize, rh as usize);
    let dst = resize_rgb8(
        image.as_raw(),
        (width as usize, height as usize),
        (w, h),
        0..w,
        0..h,
    );
    let (top, left) = (center_offset(rh, crop), center_offset(rw, crop));
    let mut out = vec![0.0; 3 * (crop * crop) as usize];
    for c in 0..3 {
        for y in 0..crop {
            for x in 0..crop {
                let i = (((top + y) * rw + left + x) * 3 + c) as usize;
                let v = f32::from(dst[i]);
                out[(c * crop * crop + y * crop + x) as usize] = (v / 255.0 - mean) / std;
            }
        }
    }
    out
}

#[test]
fn cropped_resize_equals_full_resize_then_crop() {
    for (width, height) in [(640, 427), (427, 640), (300, 300), (1000, 257), (257, 1000)] {
        let image = photo_like(width, height);
        for side in [256, 300] {
            let spec =
                PreprocessSpec::new(Resize::ShorterSide(side), 224, [0.5; 3], [0.25; 3]).unwrap();
            let mut ours = vec![0.0; spec.image_len()];
            spec.write(&image, &mut ours).unwrap();
            let expected = full_resize_then_crop(&image, side, 224, 0.5, 0.25);
            assert!(ours == expected, "{width}x{height} at Resize({side})");
        }
    }
}

#[test]
fn the_resize_keeps_a_flat_image_flat_and_an_unchanged_size_unchanged() {
    let flat = vec![77u8; 50 * 30 * 3];
    for out in [(7, 5), (50, 30), (120, 31), (3, 90)] {
        let pixels = resize_rgb8(&flat, (50, 30), out, 0..out.0, 0..out.1);
        assert!(pixels.iter().all(|&v| v == 77), "{out:?}");
    }
    let image = photo_like(40, 20);
    let same = resize_rgb8(image.as_raw(), (40, 20), (40, 20), 0..40, 0..20);
    assert_eq!(&same[..], &image.as_raw()[..]);
    let crop = resize_rgb8(image.as_raw(), (40, 20), (40, 20), 5..15, 2..4);
    assert_eq!(
        &crop[..30],
        &image.as_raw()[(2 * 40 + 5) * 3..(2 * 40 + 15) * 3]
    );
}

#[test]
fn exact_resize_writes_planes_of_the_requested_size() {
    let spec = PreprocessSpec::new(
        Resize::Exact {
            height: 100,
            width: 60,
        },
        224,
        [0.0; 3],
        [1.0; 3],
    )
    .unwrap();
    assert_eq!(spec.output_size(), (100, 60));
    let image = RgbImage::from_pixel(300, 200, Rgb([255, 0, 51]));
    let mut out = vec![f32::NAN; spec.image_len()];
    spec.write(&image, &mut out).unwrap();
    let plane = 100 * 60;
    assert!(out[..plane].iter().all(|&v| v == 1.0));
    assert!(out[plane..2 * plane].iter().all(|&v| v == 0.0));
    assert!(out[2 * plane..].iter().all(|&v| (v - 0.2).abs() < 1e-6));
}

#[test]
fn crop_box_stays_inside_the_image_whatever_the_rounding() {
    // Found by hypothesis: a 31x31 image with Resize(59) + CenterCrop(59) once put the source box
    // at 31 * (31/59) * ... = 31.000000000000004 wide, past the edge. Every small size and side.
    for (width, height) in [(31, 31), (1, 1), (7, 3), (3, 64), (63, 17)] {
        let image = photo_like(width, height);
        for side in 1..=80 {
            for crop in [1, side / 2 + 1, side] {
                let spec = PreprocessSpec::new(Resize::ShorterSide(side), crop, [0.5; 3], [0.5; 3])
                    .unwrap();
                let mut out = vec![0.0f32; spec.image_len()];
                spec.write(&image, &mut out)
                    .unwrap_or_else(|e| panic!("{width}x{height}, side {side}, crop {crop}: {e}"));
            }
        }
    }
}
