//! Evaluation of reconstructed maps against each other and against a ground truth, following
//! the conventions' "FSC and the landscape metrics" section: the Fourier shell correlation
//! ([`fsc`]) with its resolution crossings and AreaFSC, the FSCCC matrix of a series of maps
//! ([`fsc::fsccc`]), and the rigid alignment of a map to a reference over rotations, both hands
//! and translations ([`align`]).
//!
//! Units: lengths in Å unless a name says voxels, frequencies in Å⁻¹ unless a name says
//! "fraction of Nyquist", angles in degrees at the API surface. Volumes are
//! [`mcg_physics::Volume`]s (`[z][y][x]`, centre at voxel `N/2`); vectors are `[x, y, z]`.
//! No I/O: reading and writing maps is the caller's job.

// `deny`, not `forbid`: ndarray's `s!` macro expands to an `allow(unsafe_code)`.
#![deny(unsafe_code)]

pub mod align;
pub mod fsc;
pub mod landscape;

pub use align::{AlignConfig, Alignment, Transform, align};
pub use fsc::{Binning, FscConfig, FscCurve, Mask, Resolution, fsc, fsccc};

/// What went wrong: always names the input at fault and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Two maps (or a map and its mask) cannot be compared: `what` names them, `detail` says
    /// how they differ.
    #[error("{what}: {detail}")]
    Mismatch { what: String, detail: String },
    /// An input breaks a precondition: `what` names it, `problem` says what was found and what
    /// was expected.
    #[error("{what}: {problem}")]
    Input { what: String, problem: String },
    /// The FSC's mask keeps too few voxels for a shell-wise correlation
    /// ([`fsc::MIN_MASK_VOXELS_PER_SHELL`]): `kept` is its effective voxel count
    /// ([`fsc::effective_voxels`]), `needed` the least the box allows. Callers that took the
    /// mask from an option name it (`--mask-radius`, `--mask`).
    #[error(
        "the mask keeps {} voxel(s) of the {box_size}³ box; an FSC over its {shells} shells \
         needs at least {needed} ({} per shell), expected a larger mask",
        kept.round(),
        fsc::MIN_MASK_VOXELS_PER_SHELL
    )]
    MaskTooSmall {
        /// The mask's effective voxel count.
        kept: f64,
        /// The least accepted.
        needed: usize,
        /// Box edge N of the maps.
        box_size: usize,
        /// Shells out to Nyquist, N/2.
        shells: usize,
    },
}
