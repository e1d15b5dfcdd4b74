//! CPU physics of cryo-EM image formation, following RELION's conventions
//! (`ARCHITECTURE.md`, "Conventions"): poses, projection, sub-pixel shifts, the CTF, noise and
//! per-image normalisation, and the fused simulator that chains them.
//!
//! Units: lengths in Å, angles in degrees at the API surface, frequencies in Å⁻¹ unless a name
//! says "per pixel". Arrays are `[z][y][x]` (volumes) and `[n][y][x]` (image stacks), x fastest.

pub mod ctf;
pub mod fft3;
pub mod fourier;
pub mod noise;
pub mod normalize;
pub mod pose;
pub mod project;
pub mod rng;
pub mod shift;
pub mod simulate;
pub mod volume;

pub use ctf::CtfParams;
pub use pose::{Mat3, Pose};
pub use shift::Shift;
pub use volume::{Blob, ImageStack, Volume};

/// Errors raised when physics inputs break a precondition.
#[derive(Debug, thiserror::Error)]
pub enum PhysicsError {
    /// A volume or image has a shape the physics cannot use.
    #[error("bad shape: {what}: got {got}, expected {expected}")]
    Shape {
        what: &'static str,
        got: String,
        expected: String,
    },
    /// A physical parameter is out of its valid range.
    #[error("bad parameter {name} = {value}: {expected}")]
    Parameter {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    /// A noise power spectrum table is malformed (`field` is its JSON field, such as
    /// `power[3]`).
    #[error("bad noise spectrum: {field}: {problem}")]
    Spectrum { field: String, problem: String },
}
