//! TorchScript models: load on a device, run a forward pass over a batch buffer without copying
//! it, return float32 logits on the CPU.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tch::{Kind, TchError, Tensor};

use crate::error::{Error, Result};
use crate::torchscript::{LoadError, ScriptModule};

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU, with libtorch's intra-op threads.
    Cpu,
    /// The CUDA device with this index.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let lower = text.trim().to_ascii_lowercase();
        let parsed = match lower.as_str() {
            "cpu" => Some(Device::Cpu),
            "cuda" | "gpu" => Some(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda),
        };
        parsed.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "device must be 'cpu', 'cuda' or 'cuda:N', got '{text}'"
            ))
        })
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Device {
    /// The tch device, or an error when CUDA is asked for and this machine has no such device.
    pub fn to_tch(self) -> Result<tch::Device> {
        match self {
            Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda(n) => {
                let available = if tch::Cuda::is_available() {
                    tch::Cuda::device_count() as usize
                } else {
                    0
                };
                if n < available {
                    Ok(tch::Device::Cuda(n))
                } else {
                    Err(Error::InvalidArgument(format!(
                        "device '{self}' was asked for, but this machine has {available} CUDA \
                         device(s) usable by the installed torch; use device='cpu', or install \
                         torch with CUDA support on a machine with a GPU"
                    )))
                }
            }
        }
    }
}

/// A TorchScript module in eval mode on its device.
#[derive(Debug)]
pub struct Model {
    module: ScriptModule,
    device: Device,
    path: PathBuf,
}

/// Float32 logits of a batch, row-major `[batch, classes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    /// `batch * classes` values.
    pub data: Vec<f32>,
    /// Columns per row.
    pub classes: usize,
}

impl Model {
    /// Loads a TorchScript file (saved by `torch.jit.save`) onto `device`; with `optimize`,
    /// frozen and optimized for inference as `torch.jit.optimize_for_inference` does.
    pub fn load(path: &Path, device: Device, optimize: bool) -> Result<Self> {
        if !path.exists() {
            return Err(Error::NotFound {
                what: "model file",
                path: path.to_path_buf(),
            });
        }
        if path.is_dir() {
            return Err(Error::ModelLoad {
                path: path.to_path_buf(),
                reason: "it is a directory; pass the TorchScript file itself".to_string(),
            });
        }
        let cuda = match device.to_tch()? {
            tch::Device::Cuda(n) => Some(n),
            _ => None,
        };
        let module = ScriptModule::load(path, cuda, optimize).map_err(|e| Error::ModelLoad {
            path: path.to_path_buf(),
            reason: match e {
                LoadError::Read(message) => format!(
                    "libtorch cannot read it as TorchScript ({}); save the model with \
                     torch.jit.save(torch.jit.trace(model, example)) or torch.jit.script",
                    trim_libtorch_message(&message)
                ),
                LoadError::Optimize(message) => format!(
                    "libtorch could not freeze and optimize it for inference ({}); load it \
                     with optimize=False (CLI: --no_optimize)",
                    trim_libtorch_message(&message)
                ),
            },
        })?;
        Ok(Self {
            module,
            device,
            path: path.to_path_buf(),
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the model on `batch` images of `3 x height x width` in `input`, with grad off.
    ///
    /// The input tensor is a view of `input` (no copy); it is mutable because a TorchScript model
    /// may legally write into its input.
    pub fn forward(
        &self,
        input: &mut [f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<Logits> {
        assert_eq!(input.len(), batch * 3 * height * width, "input length");
        let fail = |reason: String| Error::Inference {
            batch,
            height,
            width,
            reason,
        };
        let shape = [batch as i64, 3, height as i64, width as i64];
        // SAFETY: `input` holds exactly batch*3*height*width initialised f32 values, is borrowed
        // mutably for this whole call and outlives `tensor` and every tensor derived from it,
        // which are all dropped (or copied to `data`) before returning.
        let tensor = unsafe {
            Tensor::f_from_blob(
                input.as_mut_ptr() as *const u8,
                &shape,
                &[],
                Kind::Float,
                tch::Device::Cpu,
            )
        }
        .map_err(|e| fail(torch_reason(e)))?;
        let tensor = match self.device {
            Device::Cpu => tensor,
            Device::Cuda(_) => tensor
                .f_to_device(self.device.to_tch()?)
                .map_err(|e| fail(torch_reason(e)))?,
        };
        let output = self
            .module
            .forward(&tensor)
            .map_err(|e| fail(trim_libtorch_message(&e)))?;
        let size = output.size();
        if size.len() != 2 || size[0] != batch as i64 || size[1] < 1 {
            return Err(fail(format!(
                "the model returned a tensor of shape {size:?}; an image classifier must return \
                 logits of shape [{batch}, classes]"
            )));
        }
        let output = output
            .f_to_device(tch::Device::Cpu)
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_reshape([-1]))
            .map_err(|e| fail(torch_reason(e)))?;
        let data = Vec::<f32>::try_from(&output).map_err(|e| fail(torch_reason(e)))?;
        Ok(Logits {
            data,
            classes: size[1] as usize,
        })
    }
}

/// libtorch's message without the C++ backtrace it appends.
fn torch_reason(error: TchError) -> String {
    trim_libtorch_message(&error.to_string())
}

fn trim_libtorch_message(text: &str) -> String {
    let text = text
        .split("Exception raised from")
        .next()
        .unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("frame #"))
        .collect();
    // The TorchScript interpreter puts its own traceback of the model's code before the error
    // ("RuntimeError: ..."): the error is what a user can act on.
    let error = lines.iter().rposition(|l| {
        l.split_once(": ")
            .is_some_and(|(kind, _)| kind.ends_with("Error") && !kind.contains(' '))
    });
    let interpreter = lines
        .first()
        .is_some_and(|l| l.contains("TorchScript interpreter"));
    let start = if interpreter { error.unwrap_or(0) } else { 0 };
    lines[start..]
        .iter()
        .take(6)
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}
