//! cryoSPARC `.cs` particle files (read only).
//!
//! A `.cs` file is a NumPy `.npy` file (format 1.0, 2.0 or 3.0) holding a one-dimensional
//! structured array, one record per particle, with fields named like `blob/path` or
//! `ctf/df1_A`. This module reads the `.npy` container itself (no Python needed) and maps the
//! fields to a [`ParticleSet`]:
//!
//! | field | becomes |
//! |---|---|
//! | `blob/path` (a leading `>` marks a project-relative path and is dropped), `blob/idx` (0-based) | [`ImageRef`] |
//! | `blob/psize_A` | [`OpticsGroup::pixel_size`] |
//! | `blob/shape` (`[ny, nx]`) | [`OpticsGroup::image_size`] |
//! | `ctf/accel_kv`, `ctf/cs_mm`, `ctf/amp_contrast` | voltage, Cs, Q0 |
//! | `ctf/df1_A`, `ctf/df2_A` | `_rlnDefocusU`, `_rlnDefocusV` (Å, same convention) |
//! | `ctf/df_angle_rad`, `ctf/phase_shift_rad` | `_rlnDefocusAngle`, `_rlnPhaseShift`, in degrees |
//! | `ctf/bfactor`, `ctf/scale` | `_rlnCtfBfactor`, `_rlnCtfScalefactor` |
//! | `alignments3D/pose`, `alignments3D/shift` | pose and shift, see [`pose_from_cryosparc`] and [`shift_from_cryosparc`] |
//!
//! Required: `ctf/df1_A`, `ctf/accel_kv`, `ctf/cs_mm` (and `blob/idx` when `blob/path` is
//! present). Defaults as for STAR files: `ctf/df2_A` = `ctf/df1_A`; angle, phase shift,
//! B-factor and amplitude contrast 0; scale 1. The pixel size falls back to
//! [`StarOptions::apix`], then to the first stack's MRC header.
//!
//! Particles are grouped into optics groups by their distinct (voltage, Cs, amplitude contrast,
//! pixel size, box), numbered from 1 in order of first appearance.
//!
//! Every other field holding one value per particle (a number or a string: `uid`,
//! `ctf/exp_group_id`, `alignments3D/error`, `alignments2D/pose`, …) is kept in
//! [`ParticleSet::extra`] under the label `_cs/` + field name (`_cs/uid`), so a conversion to
//! STAR keeps it as a column. Fields holding several values per particle (`ctf/shift_A`,
//! `ctf/anisomag`, `alignments2D/shift`, …) and raw-byte fields are not kept: they have no
//! RELION column and are listed in a `tracing` debug event.

mod npy;
#[cfg(test)]
mod tests;

use npy::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mcg_physics::pose::{matrix_from_rotation_vector, transpose};
use mcg_physics::{CtfParams, Pose, Shift};

use crate::particles::{ImageRef, OpticsGroup, Particle, ParticleSet, resolve_path};
use crate::star::{StarOptions, absolute, fallback_pixel_size, stack_edge, stack_path};
use crate::{FormatError, Result};

/// Reads a cryoSPARC `.cs` particle file (see the module documentation for the mapping).
///
/// Relative image paths are resolved against `opts.data_dir` when given (first as written,
/// then by file name alone), else against the `.cs` file's folder.
pub fn read_cs(path: &Path, opts: &StarOptions) -> Result<ParticleSet> {
    let bytes = mcg_fsio::budget::read_whole(path)?;
    let set = particles_from_cs(&bytes, path, opts)?;
    set.validate(path)?;
    Ok(set)
}

/// RELION's pose for a cryoSPARC rotation vector `alignments3D/pose` (axis × angle, radians).
///
/// The conversion follows cryoDRGN, which reads both formats into one rotation-matrix
/// convention:
///
/// - `cryodrgn parse_pose_csparc` (`cryodrgn/commands/parse_pose_csparc.py`) computes
///   `lie_tools.expmap(v)`, which is Rodrigues' formula `R(v) = I + sin θ K + (1 − cos θ) K²`
///   (`K` the cross-product matrix of `v/θ`, θ = |v|), then transposes it:
///   `R_cryodrgn = R(v)ᵀ`.
/// - `cryodrgn parse_pose_star` computes `utils.R_from_relion(rot, tilt, psi)`. Older
///   versions build `Rz(psi)·Ry(−tilt)·Rz(rot)` and negate elements `[0,1]`, `[1,0]`, `[1,2]`,
///   `[2,1]`: conjugation by diag(1, −1, 1), which turns each `Rz(θ)` into `Rz(−θ)` and leaves
///   the `Ry` factor alone, giving `Rz(−psi)·Ry(−tilt)·Rz(−rot)`. Newer versions build
///   `(Rz(rot)·Ry(−tilt)·Rz(psi))ᵀ` and negate `[0,2]`, `[2,0]`, `[1,2]`, `[2,1]`:
///   conjugation by diag(1, 1, −1), which turns `Ry(−tilt)` into `Ry(tilt)`. Both results
///   equal `(Rz(rot)·Ry(tilt)·Rz(psi))ᵀ`, exactly RELION's `A(rot, tilt, psi)`
///   ([`Pose::matrix`]); checked numerically for both versions. (The sign flips describe how
///   cryoDRGN builds its matrix, not a difference between the matrix it stores and `A`.)
///
/// Hence `A = R(v)ᵀ = R(−v)`. pyem's `csparc2star` agrees: its `geom.expmap` returns `R(v)ᵀ`
/// and its `rot2euler` inverts RELION's `A`. The angles returned are canonical (tilt in
/// 0…180°).
pub fn pose_from_cryosparc(rotation_vector: [f64; 3]) -> Pose {
    Pose::from_matrix(&transpose(&matrix_from_rotation_vector(rotation_vector)))
}

/// RELION's origin (Å) for a cryoSPARC shift `alignments3D/shift` (pixels) measured at
/// `pixel_size` Å.
///
/// cryoDRGN divides the cryoSPARC shift in pixels by the box (`parse_pose_csparc`) and the
/// RELION origin in pixels (`_rlnOriginX`, or `_rlnOriginXAngst` / pixel size) by the box
/// (`parse_pose_star`), with no sign change in either, so the two are the same quantity:
/// origin (Å) = shift (px) × pixel size. pyem's `csparc2star` also copies the shift to
/// `_rlnOriginX/Y` unchanged. (cryoDRGN's `--hetrefine` doubles shifts from heterogeneous
/// refinement; here the pixel size is `alignments3D/psize_A`, the one the shifts were measured
/// at, when the file records it.)
pub fn shift_from_cryosparc(shift_px: [f64; 2], pixel_size: f64) -> Shift {
    Shift {
        x: shift_px[0] * pixel_size,
        y: shift_px[1] * pixel_size,
    }
}

/// Maps the bytes of a `.cs` file to particles; `path` locates the file (relative image paths,
/// errors).
pub(crate) fn particles_from_cs(
    bytes: &[u8],
    path: &Path,
    opts: &StarOptions,
) -> Result<ParticleSet> {
    let npy = Npy::parse(bytes, path)?;
    let n = npy.len;
    let mut used: Vec<bool> = vec![false; npy.fields.len()];
    let mut take = |name: &str| -> Option<usize> {
        let i = npy.fields.iter().position(|f| f.name == name)?;
        used[i] = true;
        Some(i)
    };

    let base_dir = match &opts.data_dir {
        Some(d) => absolute(d),
        None => absolute(path.parent().unwrap_or(Path::new(""))),
    };

    // Images.
    let images = match take("blob/path") {
        None => None,
        Some(pf) => {
            let idx = take("blob/idx").ok_or_else(|| {
                npy.missing("blob/idx", "it gives each image's place in its stack")
            })?;
            let idx = npy.numbers(idx, 1)?;
            let mut resolved: HashMap<String, PathBuf> = HashMap::new();
            let mut out = Vec::with_capacity(n);
            for r in 0..n {
                let written = npy.string(pf, r)?;
                let file = written.strip_prefix('>').unwrap_or(&written);
                if file.is_empty() {
                    return Err(npy.bad(pf, r, &written, "a stack path"));
                }
                let p = resolved
                    .entry(file.to_owned())
                    .or_insert_with(|| stack_path(file, opts.data_dir.as_deref()))
                    .clone();
                let index = npy.index(idx[r], "blob/idx", r)?;
                out.push(ImageRef { path: p, index });
            }
            Some(out)
        }
    };
    let first_stack = images
        .as_ref()
        .and_then(|v| v.first())
        .map(|im| resolve_path(&base_dir, &im.path));

    // CTF.
    let required =
        |f: Option<usize>, name: &str| f.ok_or_else(|| npy.missing(name, "it is required"));
    let df1 = npy.finite(required(take("ctf/df1_A"), "ctf/df1_A")?, 1)?;
    let df2 = match take("ctf/df2_A") {
        Some(f) => npy.finite(f, 1)?,
        None => df1.clone(),
    };
    let optional = |f: Option<usize>, default: f64| match f {
        Some(f) => npy.finite(f, 1),
        None => Ok(vec![default; n]),
    };
    let angle = optional(take("ctf/df_angle_rad"), 0.0)?;
    let phase = optional(take("ctf/phase_shift_rad"), 0.0)?;
    let bfactor = optional(take("ctf/bfactor"), 0.0)?;
    let scale = optional(take("ctf/scale"), 1.0)?;
    let kv = npy.finite(required(take("ctf/accel_kv"), "ctf/accel_kv")?, 1)?;
    let cs = npy.finite(required(take("ctf/cs_mm"), "ctf/cs_mm")?, 1)?;
    let q0 = optional(take("ctf/amp_contrast"), 0.0)?;

    // Pixel size and box.
    let psize = match take("blob/psize_A") {
        Some(f) => {
            let p = npy.finite(f, 1)?;
            if let Some(r) = p.iter().position(|&v| v <= 0.0) {
                return Err(npy.bad(f, r, &p[r].to_string(), "a positive pixel size"));
            }
            p
        }
        None => {
            let a = fallback_pixel_size(
                path,
                "blob/psize_A",
                "the field blob/psize_A",
                opts,
                first_stack.clone(),
            )?;
            vec![a; n]
        }
    };
    let boxes: Vec<Option<u32>> = match take("blob/shape") {
        Some(f) => {
            let shapes = npy.finite(f, 2)?;
            shapes
                .chunks(2)
                .enumerate()
                .map(|(r, s)| {
                    if s[0] != s[1] || s[0] < 1.0 || s[0] > u32::MAX as f64 || s[0].fract() != 0.0 {
                        Err(npy.bad(f, r, &format!("{s:?}"), "a square image shape [N, N]"))
                    } else {
                        Ok(Some(s[0] as u32))
                    }
                })
                .collect::<Result<_>>()?
        }
        None => vec![
            first_stack
                .as_deref()
                .and_then(stack_edge)
                .map(|e| e as u32);
            n
        ],
    };

    // Alignments.
    let align_psize = match take("alignments3D/psize_A") {
        Some(f) => Some(npy.finite(f, 1)?),
        None => None,
    };
    let poses = match take("alignments3D/pose") {
        Some(f) => Some(npy.finite(f, 3)?),
        None => None,
    };
    let shifts = match take("alignments3D/shift") {
        Some(f) => Some(npy.finite(f, 2)?),
        None => None,
    };
    if poses.is_none() && shifts.is_none() {
        // Its pixel size then describes nothing we read: keep it as an extra column.
        if let Some(i) = npy
            .fields
            .iter()
            .position(|f| f.name == "alignments3D/psize_A")
        {
            used[i] = false;
        }
    }

    // Optics groups.
    let mut optics: Vec<OpticsGroup> = Vec::new();
    let mut index_of: HashMap<(u64, u64, u64, u64, Option<u32>), usize> = HashMap::new();
    let mut images = images.map(Vec::into_iter);
    let mut particles = Vec::with_capacity(n);
    for r in 0..n {
        let key = (
            kv[r].to_bits(),
            cs[r].to_bits(),
            q0[r].to_bits(),
            psize[r].to_bits(),
            boxes[r],
        );
        let g = *index_of.entry(key).or_insert_with(|| {
            let id = optics.len() as u32 + 1;
            optics.push(OpticsGroup::numbered(
                id,
                psize[r],
                boxes[r].map(|b| b as usize),
                kv[r],
                cs[r],
                q0[r],
            ));
            optics.len() - 1
        });
        let shift_psize = align_psize.as_ref().map_or(psize[r], |p| p[r]);
        particles.push(Particle {
            image: images.as_mut().and_then(Iterator::next),
            optics_group: g,
            pose: poses
                .as_ref()
                .map(|v| pose_from_cryosparc([v[3 * r], v[3 * r + 1], v[3 * r + 2]])),
            shift: shifts.as_ref().map_or(Shift::default(), |s| {
                shift_from_cryosparc([s[2 * r], s[2 * r + 1]], shift_psize)
            }),
            ctf: CtfParams {
                defocus_u: df1[r],
                defocus_v: df2[r],
                defocus_angle: angle[r].to_degrees(),
                voltage: kv[r],
                cs: cs[r],
                amplitude_contrast: q0[r],
                phase_shift: phase[r].to_degrees(),
                bfactor: bfactor[r],
                scale: scale[r],
            },
            class: None,
        });
    }

    // Everything else with one value per particle is kept as text.
    let mut extra = Vec::new();
    let mut dropped = Vec::new();
    for (i, f) in npy.fields.iter().enumerate() {
        if used[i] || f.name.is_empty() {
            continue;
        }
        match npy.texts(i)? {
            Some(values) => extra.push((format!("_cs/{}", f.name), values)),
            None => dropped.push(f.name.as_str()),
        }
    }
    if !dropped.is_empty() {
        tracing::debug!(
            file = %path.display(),
            ?dropped,
            "cryoSPARC fields without a RELION column are not kept"
        );
    }

    Ok(ParticleSet {
        optics,
        particles,
        extra,
        base_dir,
    })
}
