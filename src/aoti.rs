//! AOTInductor packages through src/aoti.cpp (libtorch's `AOTIModelPackageLoader`, which tch does
//! not expose), and what kind of torch archive a model file is.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;

use tch::Tensor;

use crate::torchscript::take_message;

extern "C" {
    fn bmf_archive_kind(path: *const c_char, error: *mut *mut c_char) -> c_int;
    fn bmf_package_metadata(path: *const c_char, error: *mut *mut c_char) -> *mut c_char;
    fn bmf_package_load(path: *const c_char, device: c_int, error: *mut *mut c_char)
        -> *mut c_void;
    fn bmf_package_run(
        package: *mut c_void,
        input: *const torch_sys::C_tensor,
        error: *mut *mut c_char,
    ) -> *mut torch_sys::C_tensor;
    fn bmf_package_free(package: *mut c_void);
}

/// What a torch zip archive holds, read from its record names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A TorchScript module (`torch.jit.save`).
    TorchScript,
    /// An AOTInductor package (`torch._inductor.aoti_compile_and_package`).
    Package,
    /// An `ExportedProgram` saved by `torch.export.save`, not compiled.
    ExportedProgram,
    /// Another zip archive, e.g. `torch.save` of a state dict or a whole module.
    OtherZip,
    /// Not a zip archive torch can read (the reason).
    NotZip(String),
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| "the path contains a NUL byte".to_string())
}

/// What kind of torch archive `path` is.
pub fn archive_kind(path: &Path) -> ArchiveKind {
    let path = match c_path(path) {
        Ok(path) => path,
        Err(reason) => return ArchiveKind::NotZip(reason),
    };
    let mut error = std::ptr::null_mut();
    // SAFETY: `path` is NUL-terminated and outlives the call; the out-parameter is valid.
    match unsafe { bmf_archive_kind(path.as_ptr(), &mut error) } {
        1 => ArchiveKind::TorchScript,
        2 => ArchiveKind::Package,
        3 => ArchiveKind::ExportedProgram,
        0 => ArchiveKind::OtherZip,
        _ => ArchiveKind::NotZip(take_message(error)),
    }
}

/// The metadata a package records when it is compiled (`AOTI_DEVICE_KEY`, `AOTI_CPU_ISA`,
/// `AOTI_MACHINE`, ...), read without loading its code.
pub fn package_metadata(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let path = c_path(path)?;
    let mut error = std::ptr::null_mut();
    // SAFETY: as in archive_kind.
    let text = unsafe { bmf_package_metadata(path.as_ptr(), &mut error) };
    if text.is_null() {
        return Err(take_message(error));
    }
    // The lines come back through the same malloc'd-string channel as errors.
    let text = take_message(text);
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect())
}

/// A loaded AOTInductor package. It checks its inputs' dtype, sizes and strides before running.
#[derive(Debug)]
pub struct LoadedPackage {
    package: *mut c_void,
}

// SAFETY: libtorch's package runner takes a free model from its pool under a lock, so it may be
// run from several threads at once; it is only freed in Drop.
unsafe impl Send for LoadedPackage {}
unsafe impl Sync for LoadedPackage {}

impl LoadedPackage {
    /// Loads the package's model onto the CPU (`cuda: None`) or a CUDA device.
    pub fn load(path: &Path, cuda: Option<usize>) -> Result<Self, String> {
        let path = c_path(path)?;
        let device = cuda.map_or(-1, |n| n as c_int);
        let mut error = std::ptr::null_mut();
        // SAFETY: as in archive_kind.
        let package = unsafe { bmf_package_load(path.as_ptr(), device, &mut error) };
        if package.is_null() {
            return Err(take_message(error));
        }
        Ok(Self { package })
    }

    /// The model on `input`, in inference mode; it must return one tensor.
    pub fn run(&self, input: &Tensor) -> Result<Tensor, String> {
        let mut error = std::ptr::null_mut();
        // SAFETY: `self.package` is live; `input` is a valid tensor for the call's duration.
        let output = unsafe { bmf_package_run(self.package, input.as_ptr(), &mut error) };
        if output.is_null() {
            return Err(take_message(error));
        }
        // SAFETY: the C++ side returned a new heap tensor that we now own.
        Ok(unsafe { Tensor::from_ptr(output) })
    }
}

impl Drop for LoadedPackage {
    fn drop(&mut self) {
        // SAFETY: `package` came from bmf_package_load and is freed once.
        unsafe { bmf_package_free(self.package) }
    }
}
