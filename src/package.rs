//! AOTInductor packages as models: checked against this machine before their code is loaded (the
//! device and the CPU vector instructions they were compiled for), and run in passes of the batch
//! sizes they accept. A package compiled with a dynamic batch dimension takes any batch (our
//! compile command makes those); one with a static batch size, or with export's default lower
//! bound of 2, gets its batch padded with blank images and split to fit, learned from the input
//! check the package itself makes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use tch::Tensor;

use crate::aoti::{package_metadata, LoadedPackage};
use crate::error::trim_libtorch_message;

/// Why a package cannot be used here, as a sentence with what to do.
pub type Refusal = String;

const RECOMPILE: &str = "compile the package again on this machine kind (python -m \
                         beam_ml_flink.compile) with the torch installed here";

/// A loaded package and the batch sizes it has been seen to accept.
#[derive(Debug)]
pub struct Package {
    loaded: LoadedPackage,
    batch: Mutex<BatchSizes>,
    metadata: BTreeMap<String, String>,
}

impl Package {
    /// Reads the package's metadata, refuses it if it was compiled for another device or for
    /// CPU instructions this machine lacks (its code would crash the process), then loads it.
    pub fn load(path: &Path, cuda: Option<usize>) -> Result<Self, Refusal> {
        let metadata = package_metadata(path).map_err(|e| {
            let e = trim_libtorch_message(&e);
            format!("libtorch cannot read its AOTInductor metadata ({e}); {RECOMPILE}")
        })?;
        check_machine(&metadata, cuda)?;
        let loaded = LoadedPackage::load(path, cuda).map_err(|e| {
            let e = trim_libtorch_message(&e);
            format!(
                "libtorch cannot load the compiled model in it ({e}); a package runs only with \
                 the torch version that compiled it: {RECOMPILE}"
            )
        })?;
        Ok(Self {
            loaded,
            batch: Mutex::new(BatchSizes::default()),
            metadata,
        })
    }

    /// The metadata recorded when the package was compiled.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The batch sizes learned so far.
    pub fn batch_sizes(&self) -> BatchSizes {
        *self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the package over `input` (`[batch, ...]`), in passes of sizes it accepts, and returns
    /// one output row per input row.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor, String> {
        let batch = input.size().first().copied().unwrap_or(0) as usize;
        // Each failed pass can teach one bound (minimum, maximum or exact size); then it must run.
        for _ in 0..3 {
            let sizes = self.batch_sizes();
            match self.forward_in_passes(input, batch, sizes) {
                Ok(output) => return Ok(output),
                Err(message) => {
                    let mut learned = self.batch.lock().unwrap_or_else(|e| e.into_inner());
                    if !learned.learn(&message) {
                        return Err(message);
                    }
                }
            }
        }
        Err(format!(
            "the package refuses every batch size tried for {batch} image(s); check the \
             dynamic batch dimension it was exported with"
        ))
    }

    fn forward_in_passes(
        &self,
        input: &Tensor,
        batch: usize,
        sizes: BatchSizes,
    ) -> Result<Tensor, String> {
        let mut outputs = Vec::new();
        for (start, len, padded) in sizes.passes(batch) {
            let part = input
                .f_narrow(0, start as i64, len as i64)
                .map_err(|e| e.to_string())?;
            let output = if padded == len {
                self.loaded.run(&part)?
            } else {
                let mut shape = part.size();
                shape[0] = (padded - len) as i64;
                let blank = Tensor::f_zeros(&shape, (part.kind(), part.device()))
                    .map_err(|e| e.to_string())?;
                let full = Tensor::f_cat(&[part, blank], 0).map_err(|e| e.to_string())?;
                self.loaded
                    .run(&full)?
                    .f_narrow(0, 0, len as i64)
                    .map_err(|e| e.to_string())?
            };
            outputs.push(output);
        }
        if outputs.len() == 1 {
            return Ok(outputs.remove(0));
        }
        Tensor::f_cat(&outputs, 0).map_err(|e| e.to_string())
    }
}

/// The batch sizes a package accepts: from `min` to `max`; `min == max` for a static batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSizes {
    /// The smallest batch it takes.
    pub min: usize,
    /// The largest, if it has a limit.
    pub max: Option<usize>,
}

impl Default for BatchSizes {
    fn default() -> Self {
        Self { min: 1, max: None }
    }
}

impl BatchSizes {
    /// `(start, len, padded)` of each pass over `batch` rows: at most `max` rows each, padded
    /// up to `min`.
    pub fn passes(&self, batch: usize) -> Vec<(usize, usize, usize)> {
        let step = self.max.unwrap_or(batch).max(1);
        (0..batch)
            .step_by(step)
            .map(|start| {
                let len = step.min(batch - start);
                (start, len, len.max(self.min))
            })
            .collect()
    }

    /// Learns a bound of the batch dimension from the message of the package's input check
    /// (what AOTInductor's generated code says of input 0, dimension 0). False when the message
    /// says nothing new about it.
    pub fn learn(&mut self, message: &str) -> bool {
        let number_after = |marker: &str| -> Option<usize> {
            let rest = &message[message.find(marker)? + marker.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let before = *self;
        if message.contains("input_handles[0]: unmatched dim value at 0,") {
            if let Some(exact) = number_after("expected: ") {
                *self = Self {
                    min: exact,
                    max: Some(exact),
                };
            }
        } else if message.contains("input_handles[0]: dim value is too small at 0,") {
            if let Some(min) = number_after("expected it to be >= ") {
                self.min = min;
            }
        } else if message.contains("input_handles[0]: dim value is too large at 0,") {
            if let Some(max) = number_after("expected to be <= ") {
                self.max = Some(max);
            }
        }
        let consistent = self.min >= 1 && self.max.is_none_or(|max| max >= self.min);
        if !consistent {
            *self = before;
        }
        *self != before
    }
}

/// Refuses a package compiled for another device, machine or CPU instructions than this one's.
fn check_machine(metadata: &BTreeMap<String, String>, cuda: Option<usize>) -> Result<(), Refusal> {
    let get = |key: &str| metadata.get(key).map(String::as_str).unwrap_or("");
    let device = get("AOTI_DEVICE_KEY");
    let asked = if cuda.is_some() { "cuda" } else { "cpu" };
    if !device.is_empty() && device != asked {
        return Err(format!(
            "it was compiled for the {device}, and the model was asked to run on the {asked}; \
             run it with device='{device}', or compile a package for the {asked} (--device {asked})"
        ));
    }
    let machine = get("AOTI_MACHINE");
    if !machine.is_empty() && machine != std::env::consts::ARCH {
        return Err(format!(
            "it was compiled for {machine} processors and this one is {}; {RECOMPILE}",
            std::env::consts::ARCH
        ));
    }
    if asked == "cpu" {
        let missing: Vec<&str> = get("AOTI_CPU_ISA")
            .split_whitespace()
            .filter(|isa| !cpu_has(isa))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "it was compiled for CPU instructions this CPU lacks ({}), which would crash \
                 the process; {RECOMPILE}",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

/// Whether this CPU runs the vector instruction set inductor names `isa` (`AVX2`, `AVX512`,
/// `AVX512_VNNI`, `AMX_TILE`; `INVALID_VEC_ISA` means none is needed). False for names it does
/// not know.
pub fn cpu_has(isa: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match isa.to_ascii_uppercase().as_str() {
            "INVALID_VEC_ISA" => true,
            "AVX2" => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            "AVX512" => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
            }
            "AVX512_VNNI" => is_x86_feature_detected!("avx512vnni"),
            // std cannot detect AMX on stable Rust yet; the kernel lists it.
            "AMX_TILE" => std::fs::read_to_string("/proc/cpuinfo")
                .is_ok_and(|info| info.split_whitespace().any(|flag| flag == "amx_tile")),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        isa.eq_ignore_ascii_case("INVALID_VEC_ISA")
    }
}
