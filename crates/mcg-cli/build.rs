// The run path to libtorch for the `multicryogan` binary and its tests: the one build
// script, mcg-train's.
include!("../mcg-train/build.rs");
