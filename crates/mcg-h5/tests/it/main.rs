//! Integration tests of the HDF5 particle container: round trips, layout, errors, atomic
//! writes and determinism.

mod atomic;
mod common;
mod determinism;
mod errors;
mod ground_truth;
mod layout;
mod round_trip;
