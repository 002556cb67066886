//! Pillow's `Image.resize` (what torchvision's `Resize` runs on PIL images), bit for bit, with
//! each of its filters. BOX, BILINEAR, HAMMING, BICUBIC and LANCZOS are one convolution with
//! another kernel (libImaging/Resample.c): the same filter taps, the same 22-bit fixed-point
//! weights, a horizontal pass rounded to 8 bits, then a vertical pass (the other way round for very
//! tall images, as Pillow 12's `Image.resize` does). NEAREST is no convolution: Pillow samples the
//! source at each output pixel's center (`ImagingScaleAffine`, libImaging/Geometry.c). A SIMD
//! resizer such as fast_image_resize rounds its 16-bit weights differently and lands one level
//! off on about one pixel in seven, which moves a model's logits by a tenth; here the pixels are
//! the recipe's, also where the horizontal pass runs in AVX2 (its sums are the same integers).

use std::cell::Cell;
use std::f64::consts::PI;
use std::ops::Range;
use std::str::FromStr;

use crate::error::Error;

/// A resampling filter: Pillow's `Image.Resampling`, named as torchvision's `InterpolationMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Filter {
    /// The source pixel under each output pixel's center.
    Nearest,
    /// Every source pixel under the output pixel, weighed equally.
    Box,
    /// A triangle over 1 source pixel each side (widened when shrinking); the recipe's default.
    #[default]
    Bilinear,
    /// A Hamming-windowed sinc over 1 source pixel each side.
    Hamming,
    /// Keys' cubic convolution with a = -0.5, over 2 source pixels each side.
    Bicubic,
    /// A Lanczos-windowed sinc over 3 source pixels each side.
    Lanczos,
}

impl Filter {
    /// Every filter, in the order the error message lists them.
    pub const ALL: [Filter; 6] = [
        Filter::Nearest,
        Filter::Box,
        Filter::Bilinear,
        Filter::Hamming,
        Filter::Bicubic,
        Filter::Lanczos,
    ];

    /// The name a user writes: `"bicubic"`.
    pub fn name(self) -> &'static str {
        match self {
            Filter::Nearest => "nearest",
            Filter::Box => "box",
            Filter::Bilinear => "bilinear",
            Filter::Hamming => "hamming",
            Filter::Bicubic => "bicubic",
            Filter::Lanczos => "lanczos",
        }
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Filter {
    type Err = Error;

    /// A filter by name, in any case (`"BICUBIC"` as torchvision spells its modes).
    fn from_str(text: &str) -> Result<Self, Error> {
        Filter::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                let names: Vec<String> = Filter::ALL.iter().map(|f| format!("'{f}'")).collect();
                let (last, rest) = names.split_last().expect("there are filters");
                Error::InvalidArgument(format!(
                    "interpolation must be {} or {last}, got '{text}'",
                    rest.join(", ")
                ))
            })
    }
}

// The kernels of Pillow's Resample.c, written as there: the same operations in the same order
// give the same doubles, hence the same fixed-point weights.

fn box_kernel(x: f64) -> f64 {
    if x > -0.5 && x <= 0.5 {
        1.0
    } else {
        0.0
    }
}

fn bilinear_kernel(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn hamming_kernel(x: f64) -> f64 {
    let x = x.abs();
    if x == 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let x = x * PI;
    // Pillow writes the window's constants as C floats (0.54f, 0.46f), widened to double.
    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
}

fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * PI;
    x.sin() / x
}

fn lanczos_kernel(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

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
    /// `out_size` with `filter`, computed for the outputs in `outputs` only (each output's taps
    /// depend on its index alone, so a crop of the output is the crop of the whole resize).
    fn new(filter: Filter, in_size: usize, out_size: usize, outputs: Range<usize>) -> Self {
        // One copy of the loop per kernel, each inlined: the kernel costs nothing per call.
        match filter {
            Filter::Box => Self::with_kernel(box_kernel, 0.5, in_size, out_size, outputs),
            Filter::Hamming => Self::with_kernel(hamming_kernel, 1.0, in_size, out_size, outputs),
            Filter::Bicubic => Self::with_kernel(bicubic_kernel, 2.0, in_size, out_size, outputs),
            Filter::Lanczos => Self::with_kernel(lanczos_kernel, 3.0, in_size, out_size, outputs),
            Filter::Bilinear => Self::with_kernel(bilinear_kernel, 1.0, in_size, out_size, outputs),
            // `resize_rgb8` samples for NEAREST before any convolution.
            Filter::Nearest => unreachable!("NEAREST is no convolution"),
        }
    }

    /// `precompute_coeffs` for a kernel whose support is `support` source pixels at scale 1.
    #[inline(always)]
    fn with_kernel(
        kernel: impl Fn(f64) -> f64,
        support: f64,
        in_size: usize,
        out_size: usize,
        outputs: Range<usize>,
    ) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        // The kernel's support is widened when downscaling.
        let support = support * filter_scale;
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
                *w = kernel(((x + first) as f64 - center + 0.5) * inverse);
                total += *w;
            }
            let fixed = &mut weights[slot * stride..slot * stride + count];
            for (w, f) in row.iter().zip(fixed) {
                let w = if total != 0.0 { w / total } else { *w };
                // normalize_coeffs_8bpc rounds half away from zero (bicubic and lanczos have
                // negative lobes).
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *f = if w < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
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

/// Resizes the packed RGB8 `src` (`width` x `height`) to `out_width` x `out_height` with
/// `filter` as Pillow does, and returns the pixels of `cols` x `rows` of that result (a crop),
/// packed RGB8.
pub fn resize_rgb8(
    src: &[u8],
    width_height: (usize, usize),
    out_size: (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
    filter: Filter,
) -> Vec<u8> {
    if filter == Filter::Nearest {
        return nearest(src, width_height, out_size, cols, rows);
    }
    // The passes multiply 32-bit integers, which x86-64's baseline (SSE2) cannot do in vector
    // registers; AVX2 can, where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    if SIMD.with(Cell::get) && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { resize_avx2(src, width_height, out_size, cols, rows, filter) };
    }
    resize(src, width_height, out_size, cols, rows, filter, false)
}

thread_local! {
    /// Whether [`resize_rgb8`] may use the CPU's SIMD passes on this thread.
    static SIMD: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with [`resize_rgb8`] in plain Rust on this thread whatever the CPU has: the same
/// pixels, which the tests check the SIMD passes against.
#[doc(hidden)]
pub fn without_simd<T>(f: impl FnOnce() -> T) -> T {
    let before = SIMD.with(|simd| simd.replace(false));
    let result = f();
    SIMD.with(|simd| simd.set(before));
    result
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn resize_avx2(
    src: &[u8],
    width_height: (usize, usize),
    out_size: (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
    filter: Filter,
) -> Vec<u8> {
    resize(src, width_height, out_size, cols, rows, filter, true)
}

/// Pillow 12's `Image.resize` shrinks an image more than 100 times taller than wide in height
/// first, then in width (two calls, each rounded to 8 bits); any other image width first.
/// `avx2`: the CPU has AVX2 (checked by the caller), and the horizontal pass uses it.
#[inline(always)]
fn resize(
    src: &[u8],
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
    filter: Filter,
    avx2: bool,
) -> Vec<u8> {
    if height > width * 100 && out_height < height {
        let kept = rows.len();
        let narrow = passes(
            src,
            (width, height),
            (width, out_height),
            0..width,
            rows,
            filter,
            avx2,
        );
        return passes(
            &narrow,
            (width, kept),
            (out_width, kept),
            cols,
            0..kept,
            filter,
            avx2,
        );
    }
    passes(
        src,
        (width, height),
        (out_width, out_height),
        cols,
        rows,
        filter,
        avx2,
    )
}

/// The source index of each output index in `outputs` along one axis, as Pillow's
/// `ImagingScaleAffine` finds it for a NEAREST resize: the output centers `(i + 0.5) * scale`,
/// accumulated by repeated addition as Pillow does (its rounding, not a product's), truncated;
/// `None` where that lands outside the source (Pillow leaves such pixels 0).
fn nearest_indices(in_size: usize, out_size: usize, outputs: Range<usize>) -> Vec<Option<usize>> {
    let scale = in_size as f64 / out_size as f64;
    let mut position = scale * 0.5;
    let mut indices = Vec::with_capacity(outputs.len());
    for out in 0..outputs.end {
        if out >= outputs.start {
            // Geometry.c's COORD: -1 below 0, else C's (int) cast.
            let index = if position < 0.0 {
                None
            } else {
                Some(position as usize)
            };
            indices.push(index.filter(|&i| i < in_size));
        }
        position += scale;
    }
    indices
}

/// Pillow's NEAREST resize (`_resize` in _imaging.c: an affine scale by `in / out` per axis,
/// sampled by `ImagingScaleAffine`). Shrinking a very tall image in two calls picks the same
/// pixels, each axis being sampled on its own, so there is one path.
fn nearest(
    src: &[u8],
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * height * 3);
    let xs = nearest_indices(width, out_width, cols);
    let ys = nearest_indices(height, out_height, rows);
    let mut out = vec![0u8; xs.len() * ys.len() * 3];
    for (out_row, y) in out.chunks_exact_mut(xs.len() * 3).zip(ys) {
        let Some(y) = y else { continue };
        let in_row = &src[y * width * 3..(y + 1) * width * 3];
        for (px, x) in out_row.chunks_exact_mut(3).zip(&xs) {
            if let Some(x) = x {
                px.copy_from_slice(&in_row[x * 3..x * 3 + 3]);
            }
        }
    }
    out
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
    filter: Filter,
    avx2: bool,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * height * 3);
    let vertical = Taps::new(filter, height, out_height, rows.clone());
    // The source rows the vertical pass reads.
    let first_row = vertical.bounds.first().map_or(0, |b| b.0);
    let end_row = vertical.bounds.last().map_or(0, |b| b.0 + b.1);

    // Horizontal pass over those rows, rounded to 8 bits (Pillow's intermediate image); skipped,
    // as in Pillow, when the width does not change.
    let out_cols = cols.len();
    let resized_band: Vec<u8>;
    let (band, band_width, col_offset) = if out_width != width {
        resized_band = horizontal_pass(
            src,
            width,
            out_width,
            cols,
            first_row..end_row,
            filter,
            avx2,
        );
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
/// `cols` are kept; four taps at a time where `avx2` says the CPU has AVX2.
#[inline(always)]
fn horizontal_pass(
    src: &[u8],
    width: usize,
    out_width: usize,
    cols: Range<usize>,
    src_rows: Range<usize>,
    filter: Filter,
    avx2: bool,
) -> Vec<u8> {
    let windows = Taps::new(filter, width, out_width, cols).fixed_windows(width);
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is set only after the CPU's AVX2 was detected (resize_rgb8).
        return unsafe { avx2::horizontal_band(src, width, src_rows, &windows) };
    }
    let _ = avx2;
    horizontal_band(src, width, src_rows, &windows)
}

/// The horizontal pass over `src_rows` with `n` taps per output at `firsts`, `weights`
/// ([`Taps::fixed_windows`]), in plain Rust.
#[inline(always)]
fn horizontal_band(
    src: &[u8],
    width: usize,
    src_rows: Range<usize>,
    (n, firsts, weights): &(usize, Vec<usize>, Vec<i32>),
) -> Vec<u8> {
    let mut band = vec![0u8; src_rows.len() * firsts.len() * 3];
    let lines = band
        .chunks_exact_mut(firsts.len() * 3)
        .zip(src_rows)
        .map(|(out_row, y)| {
            // The row with the byte after it where there is one: pixels are read four bytes at a time.
            (
                &src[y * width * 3..((y + 1) * width * 3 + 1).min(src.len())],
                out_row,
            )
        });
    // Constant tap counts for the common downscales (bilinear up to 4x, bicubic up to 3x, lanczos
    // up to 2x), which the compiler unrolls.
    match *n {
        3 => lines.for_each(|(i, o)| horizontal_row(i, firsts, weights, 3, o)),
        5 => lines.for_each(|(i, o)| horizontal_row(i, firsts, weights, 5, o)),
        7 => lines.for_each(|(i, o)| horizontal_row(i, firsts, weights, 7, o)),
        9 => lines.for_each(|(i, o)| horizontal_row(i, firsts, weights, 9, o)),
        11 => lines.for_each(|(i, o)| horizontal_row(i, firsts, weights, 11, o)),
        13 => lines.for_each(|(i, o)| horizontal_row(i, firsts, weights, 13, o)),
        n => lines.for_each(|(i, o)| horizontal_row(i, firsts, weights, n, o)),
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

/// The horizontal pass in AVX2, four taps of one output pixel per step, with the same integer
/// sums as [`weighted_sums`]. `_mm256_madd_epi16` multiplies 16-bit numbers, and a 22-bit weight
/// `w` is split as `hi * 4096 + lo` (`hi` signed, `lo` in `0..4096`): the sums of `pixel * hi` and
/// of `pixel * lo` are exact, and `(sum_hi << 12) + sum_lo` is the sum of `pixel * w` bit for bit.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{clip8, weighted_sums, HALF, PRECISION_BITS};

    const LOW_BITS: i32 = 12;

    /// Per output pixel and group of four taps, the `hi` and the `lo` weights laid out as the
    /// pixel vector of [`horizontal_row`]: in the lower 128 bits taps 0 and 1 of the group, once
    /// per channel (`w0 w1 w0 w1 w0 w1 0 0`), in the upper 128 bits taps 2 and 3.
    pub(super) struct Taps4 {
        groups: usize,
        lanes: Vec<[i16; 16]>,
    }

    impl Taps4 {
        /// From `n` weights per output (`weights`), zero beyond `n`.
        pub(super) fn new(n: usize, weights: &[i32]) -> Self {
            let groups = n.div_ceil(4);
            let outputs = weights.len() / n;
            let mut lanes = vec![[0i16; 16]; outputs * groups * 2];
            for (o, taps) in weights.chunks_exact(n).enumerate() {
                for g in 0..groups {
                    let [hi, lo] = &mut lanes[(o * groups + g) * 2..][..2] else {
                        unreachable!()
                    };
                    for half in 0..2 {
                        for pair in 0..2 {
                            let tap = g * 4 + half * 2 + pair;
                            let w = taps.get(tap).copied().unwrap_or(0);
                            for channel in 0..3 {
                                let lane = half * 8 + channel * 2 + pair;
                                hi[lane] = (w >> LOW_BITS) as i16;
                                lo[lane] = (w & ((1 << LOW_BITS) - 1)) as i16;
                            }
                        }
                    }
                }
            }
            Self { groups, lanes }
        }
    }

    /// [`super::horizontal_band`] in AVX2, two rows at a time.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn horizontal_band(
        src: &[u8],
        width: usize,
        src_rows: Range<usize>,
        (n, firsts, weights): &(usize, Vec<usize>, Vec<i32>),
    ) -> Vec<u8> {
        let taps = Taps4::new(*n, weights);
        let row_bytes = firsts.len() * 3;
        let mut band = vec![0u8; src_rows.len() * row_bytes];
        for (pair, out_rows) in band.chunks_mut(row_bytes * 2).enumerate() {
            let y = src_rows.start + pair * 2;
            horizontal_rows(
                &src[y * width * 3..],
                width * 3,
                firsts,
                weights,
                *n,
                &taps,
                out_rows,
            );
        }
        band
    }

    /// Two rows of the horizontal pass (`out_rows` holds one or two), which share their weights.
    /// `from_row` is the source from the first row's first byte to the image's last: a 16-byte
    /// read may run into the next row, whose bytes meet zero weights; an output whose last read
    /// would pass the image's end is summed as [`weighted_sums`] does.
    #[target_feature(enable = "avx2")]
    unsafe fn horizontal_rows(
        from_row: &[u8],
        row_len: usize,
        firsts: &[usize],
        weights: &[i32],
        n: usize,
        taps: &Taps4,
        out_rows: &mut [u8],
    ) {
        // Pixels 0 and 1 of a 16-byte read in the lower half, 2 and 3 in the upper, as 16-bit
        // lanes r0 r1 g0 g1 b0 b1 0 0 (-1 makes a zero byte).
        let order = _mm256_setr_epi8(
            0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1, //
            6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1,
        );
        let half = _mm256_set1_epi32(HALF);
        let groups = taps.groups;
        let out_len = firsts.len() * 3;
        let two = out_rows.len() == 2 * out_len;
        let (out_a, out_b) = out_rows.split_at_mut(out_len);
        for (o, &first) in firsts.iter().enumerate() {
            let start = first * 3;
            let last_read = start + (groups - 1) * 12 + 16;
            let px_a = &mut out_a[o * 3..o * 3 + 3];
            // The second row's window, or the first's again where there is one row.
            let b_start = if two { row_len + start } else { start };
            if b_start + last_read - start > from_row.len() {
                let w = &weights[o * n..][..n];
                let sums = weighted_sums::<3>(&from_row[start..start + n * 3], w);
                px_a.copy_from_slice(&[clip8(sums[0]), clip8(sums[1]), clip8(sums[2])]);
                if two {
                    let sums = weighted_sums::<3>(&from_row[b_start..b_start + n * 3], w);
                    let px_b = &mut out_b[o * 3..o * 3 + 3];
                    px_b.copy_from_slice(&[clip8(sums[0]), clip8(sums[1]), clip8(sums[2])]);
                }
                continue;
            }
            let lanes = taps.lanes.as_ptr().add(o * groups * 2);
            let (mut a_hi, mut a_lo) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let (mut b_hi, mut b_lo) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for g in 0..groups {
                // SAFETY: both windows' `last_read` bytes are inside `from_row` (checked above),
                // and `lanes` holds `groups * 2` vectors per output.
                let hi = _mm256_loadu_si256(lanes.add(g * 2).cast());
                let lo = _mm256_loadu_si256(lanes.add(g * 2 + 1).cast());
                let a = _mm_loadu_si128(from_row.as_ptr().add(start + g * 12).cast());
                let b = _mm_loadu_si128(from_row.as_ptr().add(b_start + g * 12).cast());
                let a = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(a), order);
                let b = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(b), order);
                a_hi = _mm256_add_epi32(a_hi, _mm256_madd_epi16(a, hi));
                a_lo = _mm256_add_epi32(a_lo, _mm256_madd_epi16(a, lo));
                b_hi = _mm256_add_epi32(b_hi, _mm256_madd_epi16(b, hi));
                b_lo = _mm256_add_epi32(b_lo, _mm256_madd_epi16(b, lo));
            }
            let a = _mm256_add_epi32(_mm256_slli_epi32::<LOW_BITS>(a_hi), a_lo);
            let b = _mm256_add_epi32(_mm256_slli_epi32::<LOW_BITS>(b_hi), b_lo);
            // Taps 0-1 and 2-3 added: row a's r g b 0 in the lower half, row b's in the upper.
            let sums = _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(a, b),
                _mm256_permute2x128_si256::<0x31>(a, b),
            );
            // clip8: an arithmetic shift, then saturation to 0..=255.
            let shifted =
                _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(_mm256_add_epi32(sums, half));
            let packed = _mm256_packs_epi32(shifted, shifted);
            let bytes = _mm256_packus_epi16(packed, packed);
            let rgb_a = (_mm256_cvtsi256_si32(bytes) as u32).to_le_bytes();
            px_a.copy_from_slice(&rgb_a[..3]);
            if two {
                let rgb_b = (_mm256_extract_epi32::<4>(bytes) as u32).to_le_bytes();
                out_b[o * 3..o * 3 + 3].copy_from_slice(&rgb_b[..3]);
            }
        }
    }
}
