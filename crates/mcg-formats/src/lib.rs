//! Cryo-EM file formats: MRC2014 maps and stacks, RELION STAR particle tables (3.0, 3.1, 5),
//! cryoSPARC `.cs` particle files (read), and the particle-set model they all map to.
//!
//! Every reader names the file and the field in its errors and never panics on bad input.

// `deny`, not `forbid`: ndarray's `s!` macro expands to an `allow(unsafe_code)`.
#![deny(unsafe_code)]

pub mod cs;
pub mod error;
pub mod finite;
mod half;
pub mod mrc;
pub mod particles;
pub mod stack_source;
pub mod star;

pub use error::{FormatError, Result};

/// In this crate's unit tests, allocations are measured so that the readers' property tests can
/// assert that no input makes a reader allocate beyond what it holds.
#[cfg(test)]
#[global_allocator]
static ALLOC: mcg_testdata::alloc::Counting = mcg_testdata::alloc::Counting;
pub use particles::{ImageRef, ImageSource, OpticsGroup, Particle, ParticleSet};

#[cfg(test)]
mod tests {
    /// The measuring allocator is installed: without it the readers' allocation bounds would
    /// hold vacuously.
    #[test]
    fn allocations_are_measured() {
        let (v, largest) = mcg_testdata::alloc::measured(|| vec![1u8; 10_000_000]);
        assert_eq!(v.len(), 10_000_000);
        assert!(largest >= 10_000_000, "{largest}");
        let ((), none) = mcg_testdata::alloc::measured(|| ());
        assert_eq!(none, 0);
    }
}
