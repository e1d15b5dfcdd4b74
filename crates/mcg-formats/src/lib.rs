//! Cryo-EM file formats: MRC2014 maps and stacks, RELION STAR particle tables (3.0, 3.1, 5),
//! cryoSPARC `.cs` particle files (read), and the particle-set model they all map to.
//!
//! Every reader names the file and the field in its errors and never panics on bad input.

pub mod cs;
pub mod error;
pub mod finite;
pub mod mrc;
pub mod particles;
pub mod stack_source;
pub mod star;

pub use error::{FormatError, Result};
pub use particles::{ImageRef, ImageSource, OpticsGroup, Particle, ParticleSet};
