// AOTInductor packages (.pt2 files made by torch._inductor.aoti_compile_and_package) through
// libtorch's package loader, and what kind of torch archive a file is. A C ABI for src/aoti.rs;
// every C++ exception becomes an error string.
#include <caffe2/serialize/inline_container.h>
#include <dlfcn.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>

#include "shim.h"

using bmf::copy_message;

namespace {
// The model inside a package, as aoti_compile_and_package names it.
const char* kModelName = "model";
}  // namespace

extern "C" {

// What kind of torch zip archive `path` is: 1 TorchScript (torch.jit.save), 2 an AOTInductor
// package, 3 an ExportedProgram (torch.export.save) not compiled, 0 another zip archive.
// Returns -1 and sets *error when the file is not a zip archive torch can read.
int bmf_archive_kind(const char* path, char** error) {
  try {
    caffe2::serialize::PyTorchStreamReader reader{std::string(path)};
    bool compiled = false;
    for (const auto& name : reader.getAllRecords()) {
      if (name.rfind("data/aotinductor/", 0) == 0) compiled = true;
    }
    if (compiled) return 2;
    if (reader.hasRecord("archive_format")) return 3;
    if (reader.hasRecord("data.pkl") && reader.hasRecord("constants.pkl")) return 1;
    return 0;
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return -1;
}

// The package's metadata (the device and CPU vector ISA it was compiled for, among others) as
// "key=value" lines, read without loading its code. Returns nullptr and sets *error on failure.
char* bmf_package_metadata(const char* path, char** error) {
  try {
    auto metadata = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(
        std::string(path), kModelName);
    std::ostringstream out;
    for (const auto& [key, value] : metadata) out << key << '=' << value << '\n';
    return copy_message(out.str());
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return nullptr;
}

// Loads the package's compiled model; device: -1 for the CPU, else the CUDA index it runs on.
// Every package checks the dtype, sizes and strides of its inputs before it runs (instead of
// reading out of bounds, which is what a package with a static batch size does when given another
// one) when AOTI_RUNTIME_CHECK_INPUTS is set: it is set here, before any package has run.
void* bmf_package_load(const char* path, int device, char** error) {
  static std::once_flag checks;
  std::call_once(checks, [] { setenv("AOTI_RUNTIME_CHECK_INPUTS", "1", 1); });
  // A package's code links libtorch.so by name, with no path: unless torch was imported (which
  // loads it), it is not found. Load it globally first, through this library's run path, as
  // for libtorch_cuda.so.
  if (dlopen("libtorch.so", RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    *error = copy_message(std::string("cannot load libtorch.so beside libtorch_cpu.so: ") +
                          dlerror());
    return nullptr;
  }
  try {
    return new torch::inductor::AOTIModelPackageLoader(
        std::string(path), kModelName, /*run_single_threaded=*/false, /*num_runners=*/1,
        static_cast<c10::DeviceIndex>(device));
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return nullptr;
}

// Runs the package on one input in inference mode; it must return exactly one tensor.
at::Tensor* bmf_package_run(void* package, const at::Tensor* input, char** error) {
  try {
    c10::InferenceMode guard;
    auto* loader = static_cast<torch::inductor::AOTIModelPackageLoader*>(package);
    auto outputs = loader->run({*input});
    if (outputs.size() != 1) {
      *error = copy_message("the package returned " + std::to_string(outputs.size()) +
                            " tensors; an image classifier must return one logits tensor");
      return nullptr;
    }
    return new at::Tensor(std::move(outputs[0]));
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return nullptr;
}

void bmf_package_free(void* package) {
  delete static_cast<torch::inductor::AOTIModelPackageLoader*>(package);
}
}
