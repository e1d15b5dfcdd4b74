// Gives a crate's binaries and test binaries a run path to libtorch, so they find it without
// `LD_LIBRARY_PATH` (torch-sys reports its folder as `DEP_TCH_LIBTORCH_LIB` to the crates that
// depend on it directly). The one build script of the crates that link libtorch: mcg-cli and
// mcg-report include it (`include!`), so it has no inner doc comment.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // The cache folder itself, not the repository's link to it, so that built binaries
        // keep working wherever the checkout goes.
        let lib = std::fs::canonicalize(&lib).map_or(lib, |p| p.display().to_string());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
