//! The `multicryogan` binary, driven as a user drives it. Files written by other programs are
//! read in place from `../shared/data` (see [`shared`]).

mod classify;
mod commands;
mod errors;
mod eval;
mod probe;
mod reconstruct;
mod recovery;
mod report;
mod synth;
mod train;
mod validate;

use std::path::Path;
use std::process::Output;

use mcg_testdata::cli;

/// Runs the binary with `args`, returning its output.
pub fn run(args: &[&str]) -> Output {
    cli::run(env!("CARGO_BIN_EXE_multicryogan"), args)
}

/// Runs the binary and fails the test, showing stderr, unless it succeeds.
pub fn ok(args: &[&str]) -> String {
    cli::ok(env!("CARGO_BIN_EXE_multicryogan"), args)
}

/// Runs the binary expecting failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    cli::fails(env!("CARGO_BIN_EXE_multicryogan"), args)
}

pub use mcg_testdata::cli::s;

/// The pixels of an MRC stack, through the formats crate.
pub fn pixels(path: &Path) -> ndarray::Array3<f32> {
    mcg_formats::mrc::read(path).expect("readable MRC").data
}

pub use mcg_testdata::shared;
