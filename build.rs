//! Linker settings that let the extension and the test binaries find libtorch at run time.

fn main() {
    // The wheel does not ship libtorch: it loads the one inside the installed `torch` package,
    // which sits beside `beam_ml_flink/` in site-packages.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    // Test binaries run from target/, so they get the absolute folder torch-sys linked against.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
