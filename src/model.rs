//! Models, TorchScript modules or AOTInductor packages told apart by their content: load on a
//! device in a precision, run a forward pass over a batch buffer (on the CPU without copying it;
//! to CUDA through pinned memory), return float32 logits on the CPU.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tch::{Kind, TchError, Tensor};

use crate::aoti::{archive_kind, ArchiveKind};
use crate::error::{trim_libtorch_message, Error, Result};
use crate::package::{BatchSizes, Package};
use crate::torchscript::{load_cuda_backend, to_cuda_pinned, LoadError, ScriptModule};

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
                let available = cuda_device_count();
                if n < available {
                    return Ok(tch::Device::Cuda(n));
                }
                let why = match load_cuda_backend() {
                    Ok(()) => format!("this machine has {available} CUDA device(s)"),
                    Err(reason) => format!("the installed torch has no CUDA support ({reason})"),
                };
                Err(Error::InvalidArgument(format!(
                    "device '{self}' was asked for, but {why}; use device='cpu', or install a \
                     torch with CUDA support (the default Linux wheels of PyPI's torch) on a \
                     machine with an NVIDIA GPU and its driver"
                )))
            }
        }
    }
}

/// Number of CUDA devices libtorch can use: 0 without a GPU, its driver, or a torch built with
/// CUDA.
pub fn cuda_device_count() -> usize {
    if load_cuda_backend().is_ok() && tch::Cuda::is_available() {
        tch::Cuda::device_count() as usize
    } else {
        0
    }
}

/// The floating-point type the model computes in; its input is cast to it and its logits come
/// back as float32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// float32, as saved (the usual case).
    #[default]
    Float32,
    /// float16: tensor cores on a GPU; on the CPU it runs, slowly, unless the CPU has fp16.
    Float16,
    /// bfloat16: float32's range with 8 bits of mantissa; a GPU from Ampere on, or a CPU with
    /// AVX-512 BF16 or AMX.
    BFloat16,
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(Precision::Float32),
            "fp16" | "float16" | "half" => Ok(Precision::Float16),
            "bf16" | "bfloat16" => Ok(Precision::BFloat16),
            _ => Err(Error::InvalidArgument(format!(
                "precision must be 'fp32', 'fp16' or 'bf16', got '{text}'"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Float32 => "fp32",
            Precision::Float16 => "fp16",
            Precision::BFloat16 => "bf16",
        })
    }
}

impl Precision {
    fn kind(self) -> Kind {
        match self {
            Precision::Float32 => Kind::Float,
            Precision::Float16 => Kind::Half,
            Precision::BFloat16 => Kind::BFloat16,
        }
    }
}

/// How a model is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelOptions {
    /// Where it runs.
    pub device: Device,
    /// What it computes in.
    pub precision: Precision,
    /// Frozen and optimized for inference, as `torch.jit.optimize_for_inference` does.
    pub optimize: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            precision: Precision::Float32,
            optimize: true,
        }
    }
}

/// The two kinds of model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// TorchScript (`torch.jit.save`).
    TorchScript,
    /// An AOTInductor package (`torch._inductor.aoti_compile_and_package`).
    Package,
}

impl std::fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelFormat::TorchScript => "torchscript",
            ModelFormat::Package => "aoti",
        })
    }
}

#[derive(Debug)]
enum Runtime {
    TorchScript(ScriptModule),
    Package(Package),
}

/// A model in eval mode on its device: a TorchScript module or an AOTInductor package.
#[derive(Debug)]
pub struct Model {
    runtime: Runtime,
    options: ModelOptions,
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
    /// Loads a TorchScript file (saved by `torch.jit.save`) or an AOTInductor package (made by
    /// `torch._inductor.aoti_compile_and_package`) as `options` say; which one it is, is read
    /// from the file's content. A package computes in the precision it was compiled in and is
    /// already optimized: `options.optimize` does not apply to it.
    pub fn load(path: &Path, options: ModelOptions) -> Result<Self> {
        if !path.exists() {
            return Err(Error::NotFound {
                what: "model file",
                path: path.to_path_buf(),
            });
        }
        if path.is_dir() {
            return Err(Error::ModelLoad {
                path: path.to_path_buf(),
                reason:
                    "it is a directory; pass the model file itself (TorchScript or a .pt2 package)"
                        .to_string(),
            });
        }
        let cuda = match options.device.to_tch()? {
            tch::Device::Cuda(n) => Some(n),
            _ => None,
        };
        let refuse = |reason: String| Error::ModelLoad {
            path: path.to_path_buf(),
            reason,
        };
        match archive_kind(path) {
            ArchiveKind::Package => {
                if options.precision != Precision::Float32 {
                    return Err(refuse(format!(
                        "it is an AOTInductor package, which computes in the precision it was \
                         compiled in, and precision '{}' was asked for; leave precision at fp32",
                        options.precision
                    )));
                }
                let package = Package::load(path, cuda).map_err(refuse)?;
                return Ok(Self {
                    runtime: Runtime::Package(package),
                    options,
                    path: path.to_path_buf(),
                });
            }
            ArchiveKind::ExportedProgram => {
                return Err(refuse(format!(
                    "it is an ExportedProgram saved by torch.export.save, not a compiled \
                     package; compile it with python -m beam_ml_flink.compile \
                     --exported_program {} --output model.pt2",
                    path.display()
                )))
            }
            ArchiveKind::OtherZip => {
                return Err(refuse(
                    "it is a torch.save archive (a state dict or a pickled module), not a \
                     model this runtime can run; save it with torch.jit.save(torch.jit.trace(\
                     model, example)), or compile a package with python -m \
                     beam_ml_flink.compile"
                        .to_string(),
                ))
            }
            ArchiveKind::TorchScript | ArchiveKind::NotZip(_) => {}
        }
        let cast = options.precision.kind();
        let module = ScriptModule::load(path, cuda, cast, options.optimize).map_err(|e| {
            Error::ModelLoad {
                path: path.to_path_buf(),
                reason: match e {
                    LoadError::Read(message) => format!(
                        "libtorch cannot read it as TorchScript, nor as an AOTInductor package \
                     ({}); save the model with torch.jit.save(torch.jit.trace(model, example)), \
                     or compile a package with python -m beam_ml_flink.compile",
                        trim_libtorch_message(&message)
                    ),
                    LoadError::Optimize(message) => format!(
                        "libtorch could not freeze and optimize it for inference ({}); load it \
                     with optimize=False (CLI: --no_optimize)",
                        trim_libtorch_message(&message)
                    ),
                },
            }
        })?;
        Ok(Self {
            runtime: Runtime::TorchScript(module),
            options,
            path: path.to_path_buf(),
        })
    }

    /// Whether it is a TorchScript module or a package.
    pub fn format(&self) -> ModelFormat {
        match self.runtime {
            Runtime::TorchScript(_) => ModelFormat::TorchScript,
            Runtime::Package(_) => ModelFormat::Package,
        }
    }

    /// The batch sizes a package has been seen to accept (`None` for TorchScript, which takes
    /// any).
    pub fn package_batch_sizes(&self) -> Option<BatchSizes> {
        match &self.runtime {
            Runtime::TorchScript(_) => None,
            Runtime::Package(package) => Some(package.batch_sizes()),
        }
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.options.device
    }

    /// The precision the model computes in.
    pub fn precision(&self) -> Precision {
        self.options.precision
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the model on `batch` images of `3 x height x width` in `input`, with grad off.
    ///
    /// On the CPU in float32 the input tensor is a view of `input` (no copy); it is mutable
    /// because a TorchScript model may legally write into its input. For CUDA the batch is
    /// copied into pinned (page-locked) memory, from which the copy to the GPU is a DMA transfer
    /// that does not block this thread; the forward queued behind it on the same stream.
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
        let tensor = match self.options.device {
            Device::Cpu => tensor,
            Device::Cuda(n) => {
                to_cuda_pinned(&tensor, n).map_err(|e| fail(trim_libtorch_message(&e)))?
            }
        };
        let tensor = match self.options.precision {
            Precision::Float32 => tensor,
            other => tensor
                .f_to_kind(other.kind())
                .map_err(|e| fail(torch_reason(e)))?,
        };
        let output = match &self.runtime {
            Runtime::TorchScript(module) => module.forward(&tensor),
            Runtime::Package(package) => package.forward(&tensor),
        }
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
