//! Builds the C++ shims (src/torchscript.cpp, src/aoti.cpp) against the headers of the libtorch that torch-sys links, and sets
//! the linker options that let the extension and the test binaries find libtorch at run time.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    for file in ["src/torchscript.cpp", "src/aoti.cpp", "src/shim.h"] {
        println!("cargo:rerun-if-changed={file}");
    }
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports libtorch's lib folder"),
    );
    // torch/lib and torch/include sit side by side, in a libtorch download and in the torch wheel.
    let include = lib.parent().expect("libtorch's root").join("include");
    // The torch wheels this crate builds against (2.7 on) use the C++11 ABI, as torch-sys assumes.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .file("src/torchscript.cpp")
        .file("src/aoti.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("bmf_torchscript");

    // The wheel does not ship libtorch: it loads the one inside the installed `torch` package,
    // which sits beside `beam_ml_flink/` in site-packages.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    // Test and bench binaries run from target/, so they get the absolute folder torch-sys linked
    // against.
    println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg-benches=-Wl,-rpath,{}", lib.display());
}
