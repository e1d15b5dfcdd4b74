// The run path to libtorch for this crate's tests: the one build script, mcg-train's.
include!("../mcg-train/build.rs");
