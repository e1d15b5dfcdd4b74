//! The contrast transfer function, RELION's sign (`CTF(0) = +Q0`).

use serde::{Deserialize, Serialize};

/// CTF parameters of one particle, in the units of RELION's STAR files.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CtfParams {
    /// Defocus along the major axis, Å, positive = underfocus (`_rlnDefocusU`).
    pub defocus_u: f64,
    /// Defocus along the minor axis, Å (`_rlnDefocusV`).
    pub defocus_v: f64,
    /// Astigmatism angle φ_ast, degrees (`_rlnDefocusAngle`).
    pub defocus_angle: f64,
    /// Acceleration voltage, kV (`_rlnVoltage`).
    pub voltage: f64,
    /// Spherical aberration, mm (`_rlnSphericalAberration`).
    pub cs: f64,
    /// Amplitude contrast Q0, a fraction (`_rlnAmplitudeContrast`).
    pub amplitude_contrast: f64,
    /// Phase shift, degrees (`_rlnPhaseShift`); 0 when absent.
    pub phase_shift: f64,
    /// B-factor of the envelope `exp(−B k²/4)`, Å² (`_rlnCtfBfactor`); 0 when absent.
    pub bfactor: f64,
    /// Scale factor (`_rlnCtfScalefactor`); 1 when absent.
    pub scale: f64,
}

impl Default for CtfParams {
    /// 300 kV, Cs 2.7 mm, Q0 0.1, 1.5 µm defocus, no astigmatism, no phase shift or envelope.
    fn default() -> Self {
        Self {
            defocus_u: 15_000.0,
            defocus_v: 15_000.0,
            defocus_angle: 0.0,
            voltage: 300.0,
            cs: 2.7,
            amplitude_contrast: 0.1,
            phase_shift: 0.0,
            bfactor: 0.0,
            scale: 1.0,
        }
    }
}
