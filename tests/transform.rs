//! Resize, crop and normalize arithmetic: torchvision's size rules and timm's crop_pct, the
//! filters' names, properties of each filter that follow from its definition, and the cropped
//! resize against a plain full resize followed by a crop. (Pillow itself is the reference of
//! the Python parity tests.)

use _core::resample::{resize_rgb8, without_simd, Filter};
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
    assert_eq!(ok.unwrap().filter(), Filter::Bilinear);
    let e = PreprocessSpec::new(Resize::ShorterSide(200), 224, [0.5; 3], [0.5; 3]);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("crop must be between 1 and resize (200)"));
    let e = PreprocessSpec::new(Resize::ShorterSide(256), 224, [0.5; 3], [0.5, 0.0, 0.5]);
    assert!(e.unwrap_err().to_string().contains("non-zero"));
}

/// Resize the whole image, crop the center, normalize: the recipe step by step.
fn full_resize_then_crop(
    image: &RgbImage,
    side: u32,
    crop: u32,
    (mean, std): (f32, f32),
    filter: Filter,
) -> Vec<f32> {
    let (width, height) = image.dimensions();
    let (rw, rh) = resized_size(width, height, side);
    let (w, h) = (rw as usize, rh as usize);
    let dst = resize_rgb8(
        image.as_raw(),
        (width as usize, height as usize),
        (w, h),
        0..w,
        0..h,
        filter,
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
    for filter in Filter::ALL {
        for (width, height) in [(640, 427), (427, 640), (300, 300), (1000, 257), (257, 1000)] {
            let image = photo_like(width, height);
            for side in [256, 300] {
                let spec = PreprocessSpec::new(Resize::ShorterSide(side), 224, [0.5; 3], [0.25; 3])
                    .unwrap()
                    .with_filter(filter);
                let mut ours = vec![0.0; spec.image_len()];
                spec.write(&image, &mut ours).unwrap();
                let expected = full_resize_then_crop(&image, side, 224, (0.5, 0.25), filter);
                assert!(
                    ours == expected,
                    "{filter}: {width}x{height} at Resize({side})"
                );
            }
        }
    }
}

#[test]
fn every_filter_keeps_a_flat_image_flat_and_an_unchanged_size_unchanged() {
    let flat = vec![77u8; 50 * 30 * 3];
    let image = photo_like(40, 20);
    for filter in Filter::ALL {
        for out in [(7, 5), (50, 30), (120, 31), (3, 90), (1, 1)] {
            let pixels = resize_rgb8(&flat, (50, 30), out, 0..out.0, 0..out.1, filter);
            assert!(pixels.iter().all(|&v| v == 77), "{filter} to {out:?}");
        }
        let same = resize_rgb8(image.as_raw(), (40, 20), (40, 20), 0..40, 0..20, filter);
        assert_eq!(&same[..], &image.as_raw()[..], "{filter}");
        let crop = resize_rgb8(image.as_raw(), (40, 20), (40, 20), 5..15, 2..4, filter);
        assert_eq!(
            &crop[..30],
            &image.as_raw()[(2 * 40 + 5) * 3..(2 * 40 + 15) * 3],
            "{filter}"
        );
    }
}

#[test]
fn filters_parse_from_their_names_in_any_case_and_refuse_others_with_the_choices() {
    for filter in Filter::ALL {
        assert_eq!(filter.name().parse::<Filter>().unwrap(), filter);
        assert_eq!(
            filter.name().to_uppercase().parse::<Filter>().unwrap(),
            filter
        );
    }
    assert_eq!(Filter::default(), Filter::Bilinear);
    let e = "cubic".parse::<Filter>().unwrap_err().to_string();
    assert_eq!(
        e,
        "interpolation must be 'nearest', 'box', 'bilinear', 'hamming', 'bicubic' or 'lanczos', \
         got 'cubic'"
    );
}

#[test]
fn crop_pct_resizes_the_shorter_side_to_floor_crop_over_crop_pct() {
    // timm: scale_size = math.floor(img_size / crop_pct); 224 / 0.9 = 248.88..., 224 / 0.95 =
    // 235.78..., 0.875 and 1.0 divide exactly.
    for (crop, pct, side) in [
        (224, 0.875, 256),
        (224, 0.9, 248),
        (224, 0.95, 235),
        (224, 1.0, 224),
        (288, 0.95, 303),
    ] {
        assert_eq!(
            Resize::for_crop_pct(crop, pct).unwrap(),
            Resize::ShorterSide(side)
        );
    }
    for pct in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
        let e = Resize::for_crop_pct(224, pct).unwrap_err().to_string();
        assert!(
            e.starts_with("crop_pct must be above 0 and at most 1"),
            "{e}"
        );
    }
    assert!(Resize::for_crop_pct(224, 1e-300)
        .unwrap_err()
        .to_string()
        .contains("too large"));
}

#[test]
fn nearest_takes_the_source_pixel_under_each_output_center() {
    // A row 0, 10, 20, ... 90. Output pixel i's center is (i + 0.5) * in / out in the source.
    let row: Vec<u8> = (0..10u8).flat_map(|v| [v * 10; 3]).collect();
    let at = |out: usize| -> Vec<u8> {
        resize_rgb8(&row, (10, 1), (out, 1), 0..out, 0..1, Filter::Nearest)
            .chunks(3)
            .map(|p| p[0])
            .collect()
    };
    // Halving: centers 1, 3, 5, 7, 9.
    assert_eq!(at(5), [10, 30, 50, 70, 90]);
    // Doubling: centers 0.25, 0.75, 1.25, ... each source pixel twice.
    assert_eq!(
        at(20),
        (0..10u8).flat_map(|v| [v * 10; 2]).collect::<Vec<_>>()
    );
    // 10 to 4: centers 1.25, 3.75, 6.25, 8.75.
    assert_eq!(at(4), [10, 30, 60, 80]);
    // A crop of the output is the crop of the whole.
    let part = resize_rgb8(&row, (10, 1), (4, 1), 1..3, 0..1, Filter::Nearest);
    assert_eq!(part, [30, 30, 30, 60, 60, 60]);
}

#[test]
fn box_halving_is_the_rounded_mean_of_each_pair_per_axis() {
    // Halving with BOX weighs each pair 1/2 exactly: the horizontal pass gives
    // ceil((a + b) / 2) per row, the vertical pass the same of two of those.
    let image = photo_like(64, 48);
    let out = resize_rgb8(
        image.as_raw(),
        (64, 48),
        (32, 24),
        0..32,
        0..24,
        Filter::Box,
    );
    let half = |a: u8, b: u8| (u16::from(a) + u16::from(b)).div_ceil(2) as u8;
    for y in 0..24u32 {
        for x in 0..32u32 {
            for c in 0..3 {
                let p = |dx, dy| image.get_pixel(2 * x + dx, 2 * y + dy)[c];
                let expected = half(half(p(0, 0), p(1, 0)), half(p(0, 1), p(1, 1)));
                assert_eq!(out[((y * 32 + x) * 3) as usize + c], expected, "({x}, {y})");
            }
        }
    }
}

#[test]
fn bicubic_and_lanczos_ring_at_an_edge_and_clip_where_bilinear_does_not() {
    // A step upscaled: the negative lobes ring, reaching past both levels of the step, where
    // bilinear stays monotonic between them; from black to white the ringing is clipped to 0
    // and 255, never wrapped round.
    let step = |low: u8, high: u8| -> Vec<u8> {
        (0..8)
            .flat_map(|x| [if x < 4 { low } else { high }; 3])
            .collect()
    };
    let values = |row: &[u8], filter| -> Vec<u8> {
        resize_rgb8(row, (8, 1), (32, 1), 0..32, 0..1, filter)
            .chunks(3)
            .map(|p| p[0])
            .collect()
    };
    let bilinear = values(&step(40, 215), Filter::Bilinear);
    assert!(bilinear.windows(2).all(|w| w[0] <= w[1]), "{bilinear:?}");
    assert!(bilinear.iter().all(|&v| (40..=215).contains(&v)));
    for filter in [Filter::Bicubic, Filter::Lanczos] {
        let v = values(&step(40, 215), filter);
        assert!(
            v.iter().any(|&v| v < 40) && v.iter().any(|&v| v > 215),
            "{filter}: {v:?}"
        );
        let v = values(&step(0, 255), filter);
        assert!(
            v[..14].iter().all(|&v| v < 64) && v[18..].iter().all(|&v| v > 191),
            "{filter}: {v:?}"
        );
    }
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
    for filter in Filter::ALL {
        for (width, height) in [(31, 31), (1, 1), (7, 3), (3, 64), (63, 17)] {
            let image = photo_like(width, height);
            for side in 1..=80 {
                for crop in [1, side / 2 + 1, side] {
                    let spec =
                        PreprocessSpec::new(Resize::ShorterSide(side), crop, [0.5; 3], [0.5; 3])
                            .unwrap()
                            .with_filter(filter);
                    let mut out = vec![0.0f32; spec.image_len()];
                    spec.write(&image, &mut out).unwrap_or_else(|e| {
                        panic!("{filter}: {width}x{height}, side {side}, crop {crop}: {e}")
                    });
                }
            }
        }
    }
}

/// A deterministic image with every byte value, flat runs and noise.
fn noisy(width: usize, height: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..width * height * 3)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if (i / 3 / width).is_multiple_of(7) {
                (i % 256) as u8
            } else {
                (state >> 24) as u8
            }
        })
        .collect()
}

/// The resize with its SIMD passes (where this CPU has them) is the plain one, byte for byte:
/// every filter, shrinking and enlarging, tap counts from 2 to over 100, crops, one row and odd
/// row counts (the last row's windows end at the image's end), and very tall images.
#[test]
fn the_simd_resize_is_the_plain_one() {
    let cases = [
        ((640, 427), (224, 224)),
        ((640, 427), (341, 256)),
        ((427, 640), (224, 224)),
        ((4000, 7), (256, 3)),
        ((224, 9), (640, 13)),
        ((5, 3), (3, 2)),
        ((3, 5), (7, 5)),
        ((97, 1), (13, 1)),
        ((3, 400), (2, 3)),
    ];
    for filter in Filter::ALL {
        for ((width, height), (out_width, out_height)) in cases {
            let src = noisy(width, height);
            let crops = [
                (0..out_width, 0..out_height),
                (
                    out_width / 3..out_width - out_width / 4,
                    out_height / 2..out_height,
                ),
            ];
            for (cols, rows) in crops
                .into_iter()
                .filter(|(c, r)| !c.is_empty() && !r.is_empty())
            {
                let size = ((width, height), (out_width, out_height));
                let simd = resize_rgb8(&src, size.0, size.1, cols.clone(), rows.clone(), filter);
                let plain = without_simd(|| resize_rgb8(&src, size.0, size.1, cols, rows, filter));
                assert!(simd == plain, "{filter}: {size:?}");
            }
        }
    }
}
