//! Pillow's bilinear resize (`Image.resize(size, Image.BILINEAR)`, what torchvision's `Resize`
//! runs on PIL images), bit for bit: the same filter taps, the same 22-bit fixed-point weights,
//! a horizontal pass rounded to 8 bits, then a vertical pass (the other way round for very tall
//! images, as Pillow 12's `Image.resize` does). A SIMD resizer such as
//! fast_image_resize rounds its 16-bit weights differently and lands one level off on about one
//! pixel in seven, which moves a model's logits by a tenth; here the pixels are the recipe's.

use std::ops::Range;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The taps of each output pixel along one axis, for the output indices asked for.
struct Taps {
    /// First input index and number of taps, per output index.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point weights, `stride` per output index.
    weights: Vec<i32>,
    stride: usize,
}

impl Taps {
    /// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for resizing `in_size` to
    /// `out_size`, computed for the outputs in `outputs` only (each output's taps depend on its
    /// index alone, so a crop of the output is the crop of the whole resize).
    fn new(in_size: usize, out_size: usize, outputs: Range<usize>) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        // The bilinear filter's support is 1 input pixel, widened when downscaling.
        let support = filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        // Pillow multiplies by the reciprocal: a division would round differently now and then.
        let inverse = 1.0 / filter_scale;
        let mut bounds = Vec::with_capacity(outputs.len());
        let mut weights = vec![0i32; outputs.len() * stride];
        let mut row = vec![0f64; stride];
        for (slot, out) in outputs.enumerate() {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) cast: toward zero.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = end - first;
            let mut total = 0.0;
            for (x, w) in row.iter_mut().take(count).enumerate() {
                let t = ((x + first) as f64 - center + 0.5) * inverse;
                *w = (1.0 - t.abs()).max(0.0);
                total += *w;
            }
            let fixed = &mut weights[slot * stride..slot * stride + count];
            for (w, f) in row.iter().zip(fixed) {
                let w = if total != 0.0 { w / total } else { *w };
                // Weights are never negative for bilinear: Pillow's rounding for w >= 0.
                *f = (0.5 + w * f64::from(1u32 << PRECISION_BITS)) as i32;
            }
            bounds.push((first, count));
        }
        Self {
            bounds,
            weights,
            stride,
        }
    }

    /// Every output's window moved inside `0..in_size` and widened to one tap count `n` (the
    /// extra taps weigh 0), so that the horizontal pass runs one fixed-length loop: `n`, each
    /// window's first index, and `n` weights per output.
    fn fixed_windows(&self, in_size: usize) -> (usize, Vec<usize>, Vec<i32>) {
        // No window holds more than the whole input.
        let n = self.stride.min(in_size);
        let mut firsts = Vec::with_capacity(self.bounds.len());
        let mut weights = vec![0i32; self.bounds.len() * n];
        for (slot, &(first, count)) in self.bounds.iter().enumerate() {
            let start = first.min(in_size - n);
            let shift = first - start;
            let from = slot * self.stride;
            weights[slot * n + shift..slot * n + shift + count]
                .copy_from_slice(&self.weights[from..from + count]);
            firsts.push(start);
        }
        (n, firsts, weights)
    }

    fn of(&self, slot: usize) -> (usize, &[i32]) {
        let (first, count) = self.bounds[slot];
        let start = slot * self.stride;
        (first, &self.weights[start..start + count])
    }
}

#[inline(always)]
fn clip8(sum: i32) -> u8 {
    if sum >= 255 << PRECISION_BITS {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes the packed RGB8 `src` (`width` x `height`) to `out_width` x `out_height` as Pillow
/// does, and returns the pixels of `cols` x `rows` of that result (a crop), packed RGB8.
pub fn resize_rgb8(
    src: &[u8],
    width_height: (usize, usize),
    out_size: (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    // The passes multiply 32-bit integers, which x86-64's baseline (SSE2) cannot do in vector
    // registers; AVX2 can, where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { resize_avx2(src, width_height, out_size, cols, rows) };
    }
    resize(src, width_height, out_size, cols, rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn resize_avx2(
    src: &[u8],
    width_height: (usize, usize),
    out_size: (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    resize(src, width_height, out_size, cols, rows)
}

/// Pillow 12's `Image.resize` shrinks an image more than 100 times taller than wide in height
/// first, then in width (two calls, each rounded to 8 bits); any other image width first.
#[inline(always)]
fn resize(
    src: &[u8],
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    if height > width * 100 && out_height < height {
        let kept = rows.len();
        let narrow = passes(src, (width, height), (width, out_height), 0..width, rows);
        return passes(&narrow, (width, kept), (out_width, kept), cols, 0..kept);
    }
    passes(src, (width, height), (out_width, out_height), cols, rows)
}

/// Pillow's resample: a horizontal pass where the width changes, then a vertical pass where the
/// height does.
#[inline(always)]
fn passes(
    src: &[u8],
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * height * 3);
    let vertical = Taps::new(height, out_height, rows.clone());
    // The source rows the vertical pass reads.
    let first_row = vertical.bounds.first().map_or(0, |b| b.0);
    let end_row = vertical.bounds.last().map_or(0, |b| b.0 + b.1);

    // Horizontal pass over those rows, rounded to 8 bits (Pillow's intermediate image); skipped,
    // as in Pillow, when the width does not change.
    let out_cols = cols.len();
    let resized_band: Vec<u8>;
    let (band, band_width, col_offset) = if out_width != width {
        resized_band = horizontal_pass(src, width, out_width, cols, first_row..end_row);
        (&resized_band[..], out_cols, 0)
    } else {
        let band = &src[first_row * width * 3..end_row * width * 3];
        (band, width, cols.start)
    };

    let mut out = vec![0u8; rows.len() * out_cols * 3];
    if out_height == height {
        for (y, out_row) in out.chunks_exact_mut(out_cols * 3).enumerate() {
            let start = ((rows.start + y - first_row) * band_width + col_offset) * 3;
            out_row.copy_from_slice(&band[start..start + out_cols * 3]);
        }
        return out;
    }
    // Vertical pass: each output row is a weighted sum of whole band rows, which the compiler
    // vectorizes along the row.
    let mut sums = vec![0i32; out_cols * 3];
    for (slot, out_row) in out.chunks_exact_mut(out_cols * 3).enumerate() {
        let (first, weights) = vertical.of(slot);
        sums.fill(HALF);
        for (k, &w) in weights.iter().enumerate() {
            let start = ((first + k - first_row) * band_width + col_offset) * 3;
            let band_row = &band[start..start + out_cols * 3];
            for (s, &v) in sums.iter_mut().zip(band_row) {
                *s += i32::from(v) * w;
            }
        }
        for (o, &s) in out_row.iter_mut().zip(&sums) {
            *o = clip8(s);
        }
    }
    out
}

/// The horizontal pass: `src_rows` of `src` resized from `width` to `out_width` columns, of which
/// `cols` are kept.
#[inline(always)]
fn horizontal_pass(
    src: &[u8],
    width: usize,
    out_width: usize,
    cols: Range<usize>,
    src_rows: Range<usize>,
) -> Vec<u8> {
    let (n, firsts, weights) = Taps::new(width, out_width, cols.clone()).fixed_windows(width);
    let mut band = vec![0u8; src_rows.len() * cols.len() * 3];
    let lines = band
        .chunks_exact_mut(cols.len() * 3)
        .zip(src_rows)
        .map(|(out_row, y)| {
            // The row with the byte after it where there is one: pixels are read four bytes at a time.
            (
                &src[y * width * 3..((y + 1) * width * 3 + 1).min(src.len())],
                out_row,
            )
        });
    // Constant tap counts for the common downscales (up to 4x), which the compiler unrolls.
    match n {
        3 => lines.for_each(|(i, o)| horizontal_row(i, &firsts, &weights, 3, o)),
        5 => lines.for_each(|(i, o)| horizontal_row(i, &firsts, &weights, 5, o)),
        7 => lines.for_each(|(i, o)| horizontal_row(i, &firsts, &weights, 7, o)),
        9 => lines.for_each(|(i, o)| horizontal_row(i, &firsts, &weights, 9, o)),
        n => lines.for_each(|(i, o)| horizontal_row(i, &firsts, &weights, n, o)),
    }
    band
}

/// One row of the horizontal pass, `n` taps per output.
#[inline(always)]
fn horizontal_row(in_row: &[u8], firsts: &[usize], weights: &[i32], n: usize, out_row: &mut [u8]) {
    for ((px, &first), w) in out_row
        .chunks_exact_mut(3)
        .zip(firsts)
        .zip(weights.chunks_exact(n))
    {
        let start = first * 3;
        let sums = match in_row.get(start..start + n * 3 + 1) {
            Some(window) => weighted_sums::<4>(window, w),
            None => weighted_sums::<3>(&in_row[start..start + n * 3], w),
        };
        px[0] = clip8(sums[0]);
        px[1] = clip8(sums[1]);
        px[2] = clip8(sums[2]);
    }
}

/// `HALF + sum of pixel * weight` per channel over consecutive RGB pixels, each read as `LANES`
/// bytes: four (the pixel and the next byte, a lane that is ignored) make one vector
/// multiply-add per tap; three where the row has no byte after the window.
#[inline(always)]
fn weighted_sums<const LANES: usize>(window: &[u8], weights: &[i32]) -> [i32; 4] {
    let mut sums = [HALF; 4];
    for (px, &w) in window.windows(LANES).step_by(3).zip(weights) {
        for (s, &v) in sums.iter_mut().zip(px) {
            *s += i32::from(v) * w;
        }
    }
    sums
}
