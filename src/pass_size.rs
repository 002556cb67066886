//! How many images one forward pass on the CPU takes. Which size is fastest depends on the
//! machine's caches and on the model: on one 2-core AMD EPYC (L2 2 MiB a core) passes of 4 ran
//! EfficientNet-Lite0's package 1.5x and MobileNetV2 1.3x faster per image than passes of 8,
//! while on an earlier machine of the same kind 8 was the size measured best. So a classifier
//! left to choose times its first passes at each candidate size and keeps the fastest.

use std::sync::Mutex;
use std::time::Duration;

/// The sizes a classifier left to choose tries, in images per forward pass.
pub const CANDIDATES: [usize; 2] = [4, 8];

/// Passes of each candidate run first and not timed: a TorchScript model's first calls on a new
/// input shape are its profiling runs, slower than the rest.
pub const WARM_UP: usize = 2;

/// Timed passes of each candidate before the choice; the one of least median time per image is
/// kept.
pub const TRIALS: usize = 3;

/// The forward pass size: given, the whole batch, or chosen from the first passes.
#[derive(Debug)]
pub enum PassSize {
    /// Always at most this many images a pass.
    Fixed(usize),
    /// The whole batch in one pass (CUDA's default).
    Whole,
    /// Chosen among [`CANDIDATES`] from the first passes.
    Auto(Chooser),
}

impl PassSize {
    /// The size for the next pass of a batch of `remaining` images still to run.
    pub fn next(&self, remaining: usize) -> usize {
        match self {
            PassSize::Fixed(size) => *size,
            PassSize::Whole => remaining,
            PassSize::Auto(chooser) => chooser.next(),
        }
        .max(1)
    }

    /// Records a pass: `images` run with the size `size` asked for, in `elapsed`.
    pub fn record(&self, size: usize, images: usize, elapsed: Duration) {
        if let PassSize::Auto(chooser) = self {
            chooser.record(size, images, elapsed);
        }
    }

    /// The size every pass now takes at most: the one given, or the one chosen; `None` for the
    /// whole batch, or while the first passes are still being timed.
    pub fn current(&self) -> Option<usize> {
        match self {
            PassSize::Fixed(size) => Some(*size),
            PassSize::Whole => None,
            PassSize::Auto(chooser) => chooser.chosen(),
        }
    }
}

/// The choice among [`CANDIDATES`]: each is tried in turn, in the order A B B A so that each
/// runs as often early as late, [`WARM_UP`] passes untimed and then [`TRIALS`] timed.
#[derive(Debug, Default)]
pub struct Chooser {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    chosen: Option<usize>,
    /// Full passes run so far, per candidate.
    passes: [usize; CANDIDATES.len()],
    /// Seconds per image of each timed pass, per candidate.
    seconds: [Vec<f64>; CANDIDATES.len()],
}

impl Chooser {
    /// A chooser that has seen no pass yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The size chosen, or `None` while the first passes are still being timed.
    pub fn chosen(&self) -> Option<usize> {
        self.lock().chosen
    }

    /// The size for the next pass.
    pub fn next(&self) -> usize {
        let state = self.lock();
        if let Some(size) = state.chosen {
            return size;
        }
        let run: usize = state.passes.iter().sum();
        let (round, place) = (run / CANDIDATES.len(), run % CANDIDATES.len());
        let index = if round % 2 == 0 {
            place
        } else {
            CANDIDATES.len() - 1 - place
        };
        CANDIDATES[index]
    }

    /// Records a pass; only a full pass of a candidate size counts (the last pass of a batch may
    /// be smaller).
    pub fn record(&self, size: usize, images: usize, elapsed: Duration) {
        let mut state = self.lock();
        let Some(index) = CANDIDATES.iter().position(|&c| c == size) else {
            return;
        };
        if state.chosen.is_some() || images != size {
            return;
        }
        state.passes[index] += 1;
        if state.passes[index] > WARM_UP {
            let per_image = elapsed.as_secs_f64() / images as f64;
            state.seconds[index].push(per_image);
        }
        if state.seconds.iter().all(|times| times.len() >= TRIALS) {
            let medians = state.seconds.each_ref().map(|times| median(times));
            let fastest = (0..CANDIDATES.len())
                .min_by(|&a, &b| medians[a].total_cmp(&medians[b]))
                .expect("there are candidates");
            state.chosen = Some(CANDIDATES[fastest]);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few numbers, consistent after any panic: take it back.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}
