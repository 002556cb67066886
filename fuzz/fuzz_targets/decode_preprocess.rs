//! Any bytes through decode and preprocess, as the product runs them: an image or a failure,
//! never a crash (an abort, a memory error) and never a non-finite value.
//!
//! A panic inside a decoder is that image's failure in the product (the batch catches it per
//! image), so here too: the default panic hook replaces libFuzzer's aborting one. The panics
//! found that way are kept as regression tests (tests/model.rs).
#![no_main]

use std::sync::Once;

use _core::batch::preprocess_batch;
use _core::decode::DecodeOptions;
use _core::transform::{PreprocessSpec, Resize};
use libfuzzer_sys::fuzz_target;

static PANICS_UNWIND: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    PANICS_UNWIND.call_once(|| {
        let _ = std::panic::take_hook();
    });
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
    let batch = preprocess_batch(&[bytes], &spec, &options);
    assert_eq!(batch.ok.len() + batch.failures.len(), 1);
    assert!(batch.data.iter().all(|x| x.is_finite()));
});
