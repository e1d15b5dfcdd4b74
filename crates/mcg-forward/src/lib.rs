//! The device physics on libtorch (`tch`), shared by the GAN trainer (`mcg-train`) and the
//! classification (`mcg-classify`): the differentiable forward model that projects volumes and
//! forms images (`forward`, held to the physics crate's simulator by tests), what a particle set
//! gives it (`data`: CTFs, shifts, noise), the choice of device (`device`), and the one call
//! that prepares a particle set for them (`prepare`).
//!
//! One truth (`ARCHITECTURE.md`): what needs no gradient (poses, CTF, shifts, noise spectra) is
//! computed by `mcg-physics` and moved to the device; only projections are computed here.

pub mod data;
pub mod device;
pub mod forward;
pub mod prepare;

pub use device::{DeviceChoice, select};

/// Errors of the device physics.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A GPU was requested and none is usable.
    #[error("no usable GPU: {0}")]
    NoGpu(String),
}
