// The run path to libtorch for this crate's test binaries: the one build script of the crates
// that link libtorch.
include!("../mcg-train/build.rs");
