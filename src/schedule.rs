//! How a batch's decoding and its forward passes share the cores: one after the other (every
//! image decoded on every core, then the passes), or overlapped (the next pass's images decoded
//! while the model runs the current pass). Which is faster depends on the model: on 2 cores
//! (`make bench-overlap`) overlapping paid on EfficientNet-Lite0's package, whose depthwise
//! convolutions leave cores idle, and lost on MobileNetV2's packages. So a classifier left to
//! choose times its first calls both ways and keeps the faster.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::Error;

/// One way to run a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Decode every image, then run the passes.
    InTurn,
    /// Decode the next pass's images while the model runs the current pass.
    Overlapped,
}

impl Schedule {
    /// The name the binding and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::InTurn => "in turn",
            Schedule::Overlapped => "overlapped",
        }
    }
}

/// Calls of more than one pass timed each way before a classifier left to choose decides.
pub const TRIALS: usize = 3;

/// How much faster (as a fraction) overlapping must be to be kept: the two ways contend for the
/// same cores, so a tie goes to the simpler one.
pub const MARGIN: f64 = 0.03;

/// A schedule given, or the choice between the two made from the first calls.
#[derive(Debug)]
pub struct Scheduler {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    chosen: Option<Schedule>,
    warmed_up: bool,
    in_turn: Vec<f64>,
    overlapped: Vec<f64>,
}

impl Scheduler {
    /// Always `schedule`.
    pub fn fixed(schedule: Schedule) -> Self {
        Self {
            state: Mutex::new(State {
                chosen: Some(schedule),
                ..State::default()
            }),
        }
    }

    /// Chooses from the calls: the first (warm-up) in turn and not timed, then [`TRIALS`]
    /// each way, alternating; overlapped is kept if its median rate beats in turn's by
    /// [`MARGIN`].
    pub fn auto() -> Self {
        Self {
            state: Mutex::new(State::default()),
        }
    }

    /// The schedule chosen, or `None` while the first calls are still being timed.
    pub fn chosen(&self) -> Option<Schedule> {
        self.lock().chosen
    }

    /// The schedule for the next call of more than one pass.
    pub fn next(&self) -> Schedule {
        let state = self.lock();
        match state.chosen {
            Some(schedule) => schedule,
            None if !state.warmed_up || state.in_turn.len() <= state.overlapped.len() => {
                Schedule::InTurn
            }
            None => Schedule::Overlapped,
        }
    }

    /// Records a call of more than one pass: `images` run with `schedule` in `elapsed`.
    pub fn record(&self, schedule: Schedule, images: usize, elapsed: Duration) {
        let mut state = self.lock();
        if state.chosen.is_some() {
            return;
        }
        if !state.warmed_up {
            state.warmed_up = true;
            return;
        }
        let rate = images as f64 / elapsed.as_secs_f64().max(1e-9);
        match schedule {
            Schedule::InTurn => state.in_turn.push(rate),
            Schedule::Overlapped => state.overlapped.push(rate),
        }
        if state.in_turn.len() >= TRIALS && state.overlapped.len() >= TRIALS {
            let faster = median(&state.overlapped) > median(&state.in_turn) * (1.0 + MARGIN);
            state.chosen = Some(if faster {
                Schedule::Overlapped
            } else {
                Schedule::InTurn
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few numbers, consistent after any panic: take it back.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FromStr for Scheduler {
    type Err = Error;

    /// `auto`, `in_turn` or `overlapped`.
    fn from_str(name: &str) -> Result<Self, Error> {
        match name {
            "auto" => Ok(Self::auto()),
            "in_turn" => Ok(Self::fixed(Schedule::InTurn)),
            "overlapped" => Ok(Self::fixed(Schedule::Overlapped)),
            other => Err(Error::InvalidArgument(format!(
                "schedule must be 'auto', 'in_turn' or 'overlapped', got {other:?}"
            ))),
        }
    }
}

fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}
