//! 3D classification with the poses marginalised: maximum likelihood over K class volumes by
//! expectation-maximisation, as RELION's 3D classification does, on libtorch (CPU, or CUDA
//! where present) through the device physics of `mcg-forward` (one projector, held to the
//! CPU simulator by its tests).
//!
//! - `images`: the particle images as the likelihood sees them (whitened, CTF-weighted
//!   spectra at the frequencies in use);
//! - `em`: the E-step (posteriors over class × rotation × offset as matrix products) and the
//!   M-step (back-projection by the projector's adjoint, Wiener division, half maps);
//! - `init`: where the classes start (the residuals' principal component, or random groups);
//! - `run`: a run folder (class maps, `particles.star`, `model.json`, the checkpoint) and
//!   [`run::classify`], the library call behind `multicryogan classify`;
//! - `score`: maps scored against a subset of the particles by the same likelihood (the
//!   reconstruction's judge of its landscape).

pub mod em;
pub mod images;
pub mod init;
pub mod run;
pub mod score;

pub use init::Init;
pub use run::{ClassifySettings, Model, Summary, classify};
