//! A TorchScript module through src/torchscript.cpp: tch's `CModule` cannot freeze a module or
//! optimize it for inference, which on the CPU makes convolutional models several times faster.
//! And the CUDA side: libtorch's CUDA backend, which nothing links, and a copy to a CUDA device
//! through pinned memory.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::OnceLock;

use tch::{Kind, Tensor};

extern "C" {
    fn bmf_load_cuda_backend() -> *const c_char;
    fn bmf_module_load(
        path: *const c_char,
        device: c_int,
        precision: c_int,
        optimize: c_int,
        optimize_failed: *mut c_int,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn bmf_module_forward(
        module: *mut c_void,
        input: *const torch_sys::C_tensor,
        error: *mut *mut c_char,
    ) -> *mut torch_sys::C_tensor;
    fn bmf_to_cuda_pinned(
        input: *const torch_sys::C_tensor,
        device: c_int,
        error: *mut *mut c_char,
    ) -> *mut torch_sys::C_tensor;
    fn bmf_module_free(module: *mut c_void);
    fn bmf_error_free(error: *mut c_char);
}

/// Loads libtorch_cuda.so once, so that libtorch sees CUDA devices; the error says why a torch
/// without CUDA support (the CPU wheels have no such library) cannot.
pub fn load_cuda_backend() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: the C side returns null or dlerror's NUL-terminated, thread-local message,
            // copied here at once.
            let error = unsafe { bmf_load_cuda_backend() };
            if error.is_null() {
                Ok(())
            } else {
                Err(unsafe { CStr::from_ptr(error) }
                    .to_string_lossy()
                    .into_owned())
            }
        })
        .clone()
}

/// `input` (on the CPU) on CUDA device `index`: copied into pinned memory, then to the device
/// with a non-blocking copy, ordered before any later work on the device's current stream.
pub fn to_cuda_pinned(input: &Tensor, index: usize) -> Result<Tensor, String> {
    let mut error = std::ptr::null_mut();
    // SAFETY: `input` is a valid tensor for the call's duration; the out-parameter is valid.
    let output = unsafe { bmf_to_cuda_pinned(input.as_ptr(), index as c_int, &mut error) };
    if output.is_null() {
        return Err(take_message(error));
    }
    // SAFETY: the C++ side returned a new heap tensor that we now own.
    Ok(unsafe { Tensor::from_ptr(output) })
}

/// Takes the message the C++ side allocated.
pub(crate) fn take_message(error: *mut c_char) -> String {
    if error.is_null() {
        return "libtorch failed without a message".to_string();
    }
    // SAFETY: a non-null error is a NUL-terminated string from malloc, owned by us from here.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { bmf_error_free(error) };
    message
}

/// Why a module could not be loaded, with libtorch's message.
#[derive(Debug)]
pub enum LoadError {
    /// The file is not TorchScript that this libtorch can read.
    Read(String),
    /// It loaded, but freezing or optimizing it failed.
    Optimize(String),
}

/// A loaded TorchScript module in eval mode, optimized for inference or as saved.
#[derive(Debug)]
pub struct ScriptModule {
    module: *mut c_void,
}

// SAFETY: a torch::jit::Module may be run from several threads at once (as CModule is), and it
// is only freed in Drop.
unsafe impl Send for ScriptModule {}
unsafe impl Sync for ScriptModule {}

impl ScriptModule {
    /// Loads `path` onto the CPU (`cuda: None`) or a CUDA device, its floating-point parameters
    /// cast to `Kind::Half` or `Kind::BFloat16` when `cast` says so (any other kind keeps them as
    /// saved); with `optimize`, freezes the module and applies libtorch's inference
    /// optimizations (conv-bn folding, oneDNN on the CPU).
    pub fn load(
        path: &Path,
        cuda: Option<usize>,
        cast: Kind,
        optimize: bool,
    ) -> Result<Self, LoadError> {
        let path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| LoadError::Read("the path contains a NUL byte".to_string()))?;
        let device = cuda.map_or(-1, |n| n as c_int);
        let precision = match cast {
            Kind::Half => 1,
            Kind::BFloat16 => 2,
            _ => 0,
        };
        let mut optimize_failed: c_int = 0;
        let mut error = std::ptr::null_mut();
        // SAFETY: `path` is NUL-terminated and outlives the call; the out-parameters are valid
        // and written only on failure.
        let module = unsafe {
            bmf_module_load(
                path.as_ptr(),
                device,
                precision,
                c_int::from(optimize),
                &mut optimize_failed,
                &mut error,
            )
        };
        if module.is_null() {
            let message = take_message(error);
            return Err(if optimize_failed != 0 {
                LoadError::Optimize(message)
            } else {
                LoadError::Read(message)
            });
        }
        Ok(Self { module })
    }

    /// `forward(input)`, in inference mode; the model must return one tensor.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor, String> {
        let mut error = std::ptr::null_mut();
        // SAFETY: `self.module` is live; `input` is a valid tensor for the call's duration.
        let output = unsafe { bmf_module_forward(self.module, input.as_ptr(), &mut error) };
        if output.is_null() {
            return Err(take_message(error));
        }
        // SAFETY: the C++ side returned a new heap tensor that we now own.
        Ok(unsafe { Tensor::from_ptr(output) })
    }
}

impl Drop for ScriptModule {
    fn drop(&mut self) {
        // SAFETY: `module` came from bmf_module_load and is freed once.
        unsafe { bmf_module_free(self.module) }
    }
}
