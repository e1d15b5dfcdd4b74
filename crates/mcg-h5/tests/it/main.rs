//! Integration tests of the HDF5 particle container: round trips, layout, errors, atomic
//! writes and determinism.

mod atomic;
mod common;
mod determinism;
mod errors;
mod fuzz;
mod ground_truth;
mod layout;
mod round_trip;

/// Allocations are measured, so that the reader's property test can bound them by the file.
#[global_allocator]
static ALLOC: mcg_testdata::alloc::Counting = mcg_testdata::alloc::Counting;
