//! Any bytes through decode and preprocess: an image or an error, never a panic or a crash.
//! Called without the per-image `catch_unwind` of the batch, so that a panic is a finding.
#![no_main]

use _core::decode::{decode_rgb8, DecodeOptions};
use _core::transform::{PreprocessSpec, Resize};
use fast_image_resize::Resizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the recipe, so that both resize modes and draft decoding are searched.
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let resize = if choice & 1 == 0 {
        Resize::ShorterSide(40)
    } else {
        Resize::Exact {
            height: 24,
            width: 40,
        }
    };
    let spec = PreprocessSpec::new(resize, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        .expect("a valid recipe");
    let options = DecodeOptions {
        // Small enough that a fuzzed header cannot make the fuzzer run out of memory.
        max_pixels: 1 << 22,
        min_size: (choice & 2 != 0).then(|| spec.min_source_size()),
    };
    if let Ok(image) = decode_rgb8(bytes, &options) {
        let mut out = vec![0.0f32; spec.image_len()];
        let _ = spec.write(&image, &mut out, &mut Resizer::new());
        assert!(out.iter().all(|x| x.is_finite()));
    }
});
