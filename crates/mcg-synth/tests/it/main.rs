//! Integration tests of mcg-synth: one binary, one module per topic.

mod atoms;
mod density;
mod hsp90;
mod landscape_fuzz;

/// Allocations are measured, so that the readers' property tests can bound them by the input.
#[global_allocator]
static ALLOC: mcg_testdata::alloc::Counting = mcg_testdata::alloc::Counting;
