//! Sub-pixel image shifts, RELION's origin convention.

use serde::{Deserialize, Serialize};

/// A particle's origin offset in Å (`_rlnOriginXAngst`, `_rlnOriginYAngst`).
///
/// A simulated particle with origin `o` appears with its centre at `box centre − o`;
/// recentring an image means shifting it by `+o`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Shift {
    /// Origin along x, Å.
    pub x: f64,
    /// Origin along y, Å.
    pub y: f64,
}
