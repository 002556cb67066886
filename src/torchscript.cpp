// The TorchScript calls that tch does not expose: load a module, cast it to a precision, freeze
// it and optimize it for inference (what torch.jit.freeze and torch.jit.optimize_for_inference do
// in Python), and run its forward; copy a batch to CUDA through pinned memory; and load
// libtorch's CUDA backend. A C ABI for
// src/torchscript.rs; every C++ exception becomes an error string.
#include <dlfcn.h>
#include <torch/script.h>

#include <string>

#include "shim.h"

using bmf::copy_message;

extern "C" {

// libtorch registers CUDA when libtorch_cuda.so is loaded, but nothing in this library calls it,
// so the linker drops it from the extension's needs (and a torch without CUDA has no such file):
// load it by name, found through the extension's run path beside libtorch_cpu.so. Returns
// nullptr, or dlerror's message.
const char* bmf_load_cuda_backend() {
  if (dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_GLOBAL) != nullptr) return nullptr;
  return dlerror();
}

// device: -1 for the CPU, else a CUDA index. precision: 0 keeps the parameters as saved, 1 casts
// them to float16, 2 to bfloat16. Returns nullptr and sets *error on failure, and
// *optimize_failed when the module loaded but could not be optimized.
void* bmf_module_load(const char* path, int device, int precision, int optimize,
                      int* optimize_failed, char** error) {
  try {
    c10::Device where = device < 0 ? c10::Device(c10::kCPU)
                                   : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
    auto module = torch::jit::load(std::string(path), where);
    module.eval();
    // Before freezing: freezing folds the parameters into the graph as constants.
    if (precision == 1) module.to(c10::kHalf);
    if (precision == 2) module.to(c10::kBFloat16);
    if (optimize) {
      try {
        module = torch::jit::optimize_for_inference(module);
      } catch (const std::exception& e) {
        *optimize_failed = 1;
        throw;
      }
    }
    return new torch::jit::Module(std::move(module));
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return nullptr;
}

// Runs forward(input) with inference mode on; the result must be a tensor.
at::Tensor* bmf_module_forward(void* module, const at::Tensor* input, char** error) {
  try {
    c10::InferenceMode guard;
    auto* m = static_cast<torch::jit::Module*>(module);
    auto output = m->forward({*input});
    if (!output.isTensor()) {
      *error = copy_message("the model returned " + output.tagKind() +
                            ", not a tensor; an image classifier must return a logits tensor");
      return nullptr;
    }
    return new at::Tensor(output.toTensor());
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return nullptr;
}

// The batch copied into pinned memory, then to the CUDA device without blocking the caller: the
// caching host allocator keeps the pinned block until the copy is done. (tch's pin_memory passes
// a device, which libtorch deprecates with a warning on every call.)
at::Tensor* bmf_to_cuda_pinned(const at::Tensor* input, int device, char** error) {
  try {
    c10::Device where(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
    return new at::Tensor(input->pin_memory().to(where, /*non_blocking=*/true));
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return nullptr;
}

void bmf_module_free(void* module) { delete static_cast<torch::jit::Module*>(module); }

void bmf_error_free(char* error) { std::free(error); }
}
