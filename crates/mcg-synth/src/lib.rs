//! Synthetic cryo-EM data from atomic models (`ARCHITECTURE.md`, conventions "Density from
//! atoms" and "Hsp90 benchmark").
//!
//! - [`atoms`]: atomic models read from PDB and mmCIF files (first model only), with elements
//!   inferred from atom names where a file leaves them blank.
//! - [`density`]: density maps ρ(r) = Σⱼ Zⱼ·g_σ(r − rⱼ) evaluated without aliasing from the
//!   analytic Fourier transform of the Gaussians, and the shared frame origin.
//! - [`motion`]: rigid hinge motions of a body (the Hsp90 benchmark's opening angle β).
//! - [`bodies`]: projections of rigid-body conformations without one volume per image.
//! - [`landscape`]: conformational-landscape descriptions and their distributions.
//! - [`molecule`]: a landscape with its atoms: conformations, ground-truth maps, projectors.
//! - [`phantom`]: the built-in Hsp90-like phantom used when the structures are not at hand.
//!
//! Units: lengths in Å, angles in degrees at the API surface, densities in Z per Å³.
//! Never panics on file input: every error names the file, the line and the field.

// `deny`, not `forbid`: ndarray's `s!` macro expands to an `allow(unsafe_code)`.
#![deny(unsafe_code)]

pub mod atoms;
pub mod bodies;
pub mod density;
pub mod landscape;
pub mod molecule;
pub mod motion;
pub mod phantom;
pub mod presets;

use std::path::PathBuf;

pub use atoms::{Atom, AtomicModel, Element};
pub use density::{DensityConfig, density_map, frame_origin};
pub use molecule::{Conformation, ConformationProjector, Molecule, StructureSource};
pub use motion::hinge_rotate;

/// Errors of reading atomic models and building maps from them.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A field of a structure file could not be parsed.
    #[error("{path}:{line}: bad {field}: {message}")]
    Parse {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        field: &'static str,
        message: String,
    },
    /// The file's extension names no structure format this crate reads.
    #[error("{path}: unknown structure format; expected a .pdb, .ent, .cif or .mmcif file")]
    UnknownFormat { path: PathBuf },
    /// A model has no heavy (non-hydrogen, known-element) atom to centre on.
    #[error("the model has no heavy atom to centre on")]
    NoHeavyAtoms,
    /// An atom's element is unknown, so it has no atomic number for the density.
    #[error(
        "atom {serial} ({name} {residue_name} {chain}{residue_number}): unknown element, \
         so no atomic number for the density"
    )]
    UnknownElement {
        serial: u32,
        name: String,
        residue_name: String,
        chain: String,
        residue_number: i32,
    },
    /// An input atom of a density map has a non-finite position or weight.
    #[error("density input atom {index}: position {position:?} Å, weight {weight}: not finite")]
    BadAtom {
        index: usize,
        position: [f64; 3],
        weight: f64,
    },
    /// A parameter is out of its valid range.
    #[error("bad parameter {name} = {value}: {expected}")]
    Parameter {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    /// A landscape cannot be built on the atoms given (a body selecting nothing, two bodies
    /// sharing atoms, two motions on one body).
    #[error("landscape {field}: {message}")]
    Landscape { field: String, message: String },
    /// The physics crate rejected a volume.
    #[error(transparent)]
    Physics(#[from] mcg_physics::PhysicsError),
}
