//! Rigid motions of bodies of atoms: the hinge opening of the Hsp90 benchmark.

use mcg_physics::pose::matrix_from_rotation_vector;

use crate::SynthError;

/// Axis of the Hsp90 benchmark's hinge (unit vector, PDB frame): `(0, −1, 0)`.
pub const HSP90_HINGE_AXIS: [f64; 3] = [0.0, -1.0, 0.0];

/// Point on the Hsp90 benchmark's hinge axis, Å in the PDB frame of entry 2cg9.
pub const HSP90_HINGE_PIVOT: [f64; 3] = [-55.888, -44.9415, 39.8865];

/// The chain that moves in the Hsp90 benchmark (residues [`HSP90_BODY_RESIDUES`]).
pub const HSP90_MOVING_CHAIN: &str = "A";

/// The chain that stays fixed in the Hsp90 benchmark (residues [`HSP90_BODY_RESIDUES`]).
pub const HSP90_FIXED_CHAIN: &str = "B";

/// Residues of each Hsp90 chain that form the benchmark's bodies (both ends included).
pub const HSP90_BODY_RESIDUES: std::ops::RangeInclusive<i32> = 12..=677;

/// Rotates points rigidly by `beta_deg` degrees about the line through `pivot` (Å) along `axis`:
/// x′ = R_β (x − p) + p, with R_β the right-handed rotation about `axis` (normalised here).
///
/// With `axis = (0, −1, 0)` this is the conventions' R_β =
/// `[[cos β, 0, −sin β], [0, 1, 0], [sin β, 0, cos β]]`: see [`HSP90_HINGE_AXIS`] and
/// [`HSP90_HINGE_PIVOT`]. Fails, moving nothing, when the axis is zero or not finite, or the
/// angle or pivot is not finite.
pub fn hinge_rotate<'a>(
    positions: impl IntoIterator<Item = &'a mut [f64; 3]>,
    axis: [f64; 3],
    pivot: [f64; 3],
    beta_deg: f64,
) -> Result<(), SynthError> {
    let r = rotation_matrix(axis, beta_deg)?;
    check_finite_point("hinge pivot (Å)", pivot)?;
    for x in positions {
        let d = [x[0] - pivot[0], x[1] - pivot[1], x[2] - pivot[2]];
        for i in 0..3 {
            x[i] = r[i][0] * d[0] + r[i][1] * d[1] + r[i][2] * d[2] + pivot[i];
        }
    }
    Ok(())
}

/// The right-handed rotation by `angle_deg` about `axis` (Rodrigues' formula, through
/// [`matrix_from_rotation_vector`]).
fn rotation_matrix(axis: [f64; 3], angle_deg: f64) -> Result<[[f64; 3]; 3], SynthError> {
    let unit = unit_axis(axis)?;
    if !angle_deg.is_finite() {
        return Err(SynthError::Parameter {
            name: "hinge angle (degrees)",
            value: angle_deg,
            expected: "a finite angle",
        });
    }
    Ok(matrix_from_rotation_vector(
        unit.map(|u| u * angle_deg.to_radians()),
    ))
}

/// The unit vector along a hinge axis; fails when the axis is zero or not finite.
pub(crate) fn unit_axis(axis: [f64; 3]) -> Result<[f64; 3], SynthError> {
    let norm = axis.iter().map(|a| a * a).sum::<f64>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return Err(SynthError::Parameter {
            name: "hinge axis length",
            value: norm,
            expected: "a finite, non-zero axis",
        });
    }
    Ok(axis.map(|a| a / norm))
}

/// Fails with a [`SynthError::Parameter`] naming `name` unless every coordinate of `point` is
/// finite.
pub(crate) fn check_finite_point(name: &'static str, point: [f64; 3]) -> Result<(), SynthError> {
    match point.iter().copied().find(|c| !c.is_finite()) {
        None => Ok(()),
        Some(bad) => Err(SynthError::Parameter {
            name,
            value: bad,
            expected: "finite coordinates",
        }),
    }
}
