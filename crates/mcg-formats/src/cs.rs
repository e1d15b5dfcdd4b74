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

// ---------------------------------------------------------------------------------------------
// The `.npy` container.

/// A one-dimensional structured array in `.npy` format, borrowed from the file's bytes.
struct Npy<'a> {
    path: &'a Path,
    /// The records, `len × itemsize` bytes.
    data: &'a [u8],
    len: usize,
    itemsize: usize,
    fields: Vec<Field>,
}

/// One field of the record type.
struct Field {
    name: String,
    /// Byte offset in the record.
    offset: usize,
    dtype: Dtype,
    /// Sub-array shape, as written (`(2,)` for `blob/shape`), empty for a scalar.
    shape: Vec<usize>,
    /// Number of elements (product of `shape`).
    count: usize,
}

/// One element type: its NumPy kind letter, size in bytes and byte order.
#[derive(Clone)]
struct Dtype {
    kind: u8,
    size: usize,
    big_endian: bool,
    /// The descriptor as written (`<f4`), for messages.
    text: String,
}

/// The deepest nesting of brackets accepted in a header (cryoSPARC uses 3).
const MAX_DEPTH: usize = 32;

impl<'a> Npy<'a> {
    fn parse(bytes: &'a [u8], path: &'a Path) -> Result<Self> {
        let bad = |problem: String| FormatError::invalid(path, "npy header", problem);
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad(
                "not a NumPy .npy file (a cryoSPARC .cs file starts with \\x93NUMPY)".into(),
            ));
        }
        let (major, minor) = (bytes[6], bytes[7]);
        let (header_len, start): (usize, usize) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            2 | 3 => return Err(bad("file ends inside the header".into())),
            _ => {
                return Err(bad(format!(
                    "format version {major}.{minor}: expected 1.0, 2.0 or 3.0"
                )));
            }
        };
        let data_start = start
            .checked_add(header_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                bad(format!(
                    "header of {header_len} bytes, but the file holds {}",
                    bytes.len()
                ))
            })?;
        let header = String::from_utf8_lossy(&bytes[start..data_start]);

        let dict = match Lit::parse(&header) {
            Ok(Lit::Dict(d)) => d,
            Ok(_) => return Err(bad("the header is not a dictionary".into())),
            Err(e) => return Err(bad(format!("unreadable header dictionary: {e}"))),
        };
        let get = |key: &str| {
            dict.iter()
                .find(|(k, _)| matches!(k, Lit::Str(s) if s == key))
                .map(|(_, v)| v)
                .ok_or_else(|| bad(format!("the header has no '{key}'")))
        };
        match get("fortran_order")? {
            Lit::Bool(false) => {}
            other => {
                return Err(bad(format!("fortran_order is {other:?}: expected False")));
            }
        }
        let len = match get("shape")? {
            Lit::Tuple(dims) => match dims.as_slice() {
                [Lit::Int(n)] => usize::try_from(*n)
                    .map_err(|_| bad(format!("shape ({n},): expected a record count")))?,
                _ => {
                    return Err(bad(format!(
                        "shape {dims:?}: expected a one-dimensional array of particles"
                    )));
                }
            },
            other => return Err(bad(format!("shape {other:?}: expected a tuple"))),
        };
        let (fields, itemsize) = match get("descr")? {
            Lit::List(items) => parse_fields(items, 0).map_err(bad)?,
            Lit::Str(d) => {
                return Err(bad(format!(
                    "dtype {d:?}: expected a structured array (a list of named fields)"
                )));
            }
            other => return Err(bad(format!("descr {other:?}: expected a list of fields"))),
        };
        if itemsize == 0 {
            return Err(bad("records of zero bytes: expected particle fields".into()));
        }
        let total = len
            .checked_mul(itemsize)
            .ok_or_else(|| bad(format!("{len} records of {itemsize} bytes overflow")))?;
        let available = bytes.len() - data_start;
        if total > available {
            return Err(FormatError::invalid(
                path,
                "npy data",
                format!(
                    "truncated: {len} records of {itemsize} bytes need {total} bytes, \
                     the file holds {available}"
                ),
            ));
        }
        Ok(Self {
            path,
            data: &bytes[data_start..data_start + total],
            len,
            itemsize,
            fields,
        })
    }

    /// All elements of numeric field `f` (which must hold `per_record` of them), record by
    /// record.
    fn numbers(&self, f: usize, per_record: usize) -> Result<Vec<f64>> {
        let field = &self.fields[f];
        if !is_numeric(&field.dtype) || field.count != per_record {
            let shape = if field.shape.is_empty() {
                String::new()
            } else {
                format!(" of shape {:?}", field.shape)
            };
            return Err(FormatError::invalid(
                self.path,
                field.name.clone(),
                format!(
                    "dtype {}{shape}: expected {per_record} number(s) per particle",
                    field.dtype.text
                ),
            ));
        }
        let mut out = Vec::with_capacity(self.len * per_record);
        for r in 0..self.len {
            for e in 0..per_record {
                out.push(self.element(field, r, e));
            }
        }
        Ok(out)
    }

    /// Like [`Self::numbers`], refusing NaN and infinities.
    fn finite(&self, f: usize, per_record: usize) -> Result<Vec<f64>> {
        let v = self.numbers(f, per_record)?;
        match v.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(self.bad(f, i / per_record, &v[i].to_string(), "a finite number")),
            None => Ok(v),
        }
    }

    /// Element `e` of numeric field `field` in record `r` (the caller checked kind and bounds).
    fn element(&self, field: &Field, r: usize, e: usize) -> f64 {
        let raw = self.raw(field, r, e);
        match (field.dtype.kind, field.dtype.size) {
            (b'f', 2) => f64::from(crate::half::f16_to_f32(raw as u16)),
            (b'f', 4) => f64::from(f32::from_bits(raw as u32)),
            (b'f', 8) => f64::from_bits(raw),
            _ => self.integer_of(field, raw) as f64,
        }
    }

    /// Element 0 of integer or boolean field `field` in record `r`, exactly.
    fn integer(&self, field: &Field, r: usize) -> i128 {
        self.integer_of(field, self.raw(field, r, 0))
    }

    fn integer_of(&self, field: &Field, raw: u64) -> i128 {
        if field.dtype.kind == b'i' {
            // Sign-extend from `size` bytes.
            let shift = 64 - 8 * field.dtype.size as u32;
            i128::from((raw << shift) as i64 >> shift)
        } else {
            i128::from(raw)
        }
    }

    /// The bytes of one element as a little-endian u64 (at most 8 bytes; checked by
    /// [`is_numeric`]).
    fn raw(&self, field: &Field, r: usize, e: usize) -> u64 {
        let size = field.dtype.size;
        let at = r * self.itemsize + field.offset + e * size;
        let mut buf = [0u8; 8];
        buf[..size].copy_from_slice(&self.data[at..at + size]);
        if field.dtype.big_endian {
            buf[..size].reverse();
        }
        u64::from_le_bytes(buf)
    }

    /// The string field `f` of record `r`: bytes up to the first NUL (`S`), or UCS-4 (`U`).
    fn string(&self, f: usize, r: usize) -> Result<String> {
        let field = &self.fields[f];
        if !matches!(field.dtype.kind, b'S' | b'U') || field.count != 1 {
            return Err(FormatError::invalid(
                self.path,
                field.name.clone(),
                format!("dtype {}: expected a string", field.dtype.text),
            ));
        }
        let at = r * self.itemsize + field.offset;
        let b = &self.data[at..at + field.dtype.size];
        Ok(decode_string(&field.dtype, b))
    }

    /// Field `f` as one text per record when it holds one number or string per record;
    /// `None` for sub-arrays and raw bytes.
    fn texts(&self, f: usize) -> Result<Option<Vec<String>>> {
        let field = &self.fields[f];
        if field.count != 1 {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.len);
        match field.dtype.kind {
            b'S' | b'U' => {
                for r in 0..self.len {
                    out.push(self.string(f, r)?);
                }
            }
            _ if is_numeric(&field.dtype) => {
                for r in 0..self.len {
                    out.push(match (field.dtype.kind, field.dtype.size) {
                        (b'f', 8) => format!("{:?}", self.element(field, r, 0)),
                        // Shortest text of the stored f32/f16 value, not of its f64 widening.
                        (b'f', _) => format!("{:?}", self.element(field, r, 0) as f32),
                        // Integers exactly (a 64-bit uid does not fit an f64).
                        _ => self.integer(field, r).to_string(),
                    });
                }
            }
            _ => return Ok(None),
        }
        Ok(Some(out))
    }

    /// A 0-based index from a stored number.
    fn index(&self, v: f64, name: &str, r: usize) -> Result<usize> {
        if v >= 0.0 && v.fract() == 0.0 && v <= usize::MAX as f64 {
            return Ok(v as usize);
        }
        Err(FormatError::invalid(
            self.path,
            format!("{name}, record {r}"),
            format!("found {v}, expected a non-negative integer"),
        ))
    }

    fn missing(&self, name: &str, why: &str) -> FormatError {
        FormatError::invalid(
            self.path,
            name.to_owned(),
            format!("field {name} is missing: {why}"),
        )
    }

    fn bad(&self, f: usize, r: usize, found: &str, expected: &str) -> FormatError {
        FormatError::invalid(
            self.path,
            format!("{}, record {r}", self.fields[f].name),
            format!("found {found}, expected {expected}"),
        )
    }
}

fn is_numeric(d: &Dtype) -> bool {
    match d.kind {
        b'f' => matches!(d.size, 2 | 4 | 8),
        b'i' | b'u' => matches!(d.size, 1 | 2 | 4 | 8),
        b'b' => d.size == 1,
        _ => false,
    }
}

fn decode_string(d: &Dtype, b: &[u8]) -> String {
    if d.kind == b'U' {
        let chars = b.chunks_exact(4).map(|c| {
            let mut w = [c[0], c[1], c[2], c[3]];
            if d.big_endian {
                w.reverse();
            }
            u32::from_le_bytes(w)
        });
        chars
            .take_while(|&c| c != 0)
            .map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    } else {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }
}

/// Fields and record size of a structured `descr` list.
fn parse_fields(items: &[Lit], depth: usize) -> std::result::Result<(Vec<Field>, usize), String> {
    if depth > MAX_DEPTH {
        return Err("dtype nested too deeply".into());
    }
    let mut fields = Vec::with_capacity(items.len());
    let mut offset = 0usize;
    for item in items {
        let Lit::Tuple(parts) = item else {
            return Err(format!("field {item:?}: expected (name, dtype[, shape])"));
        };
        let (name, dtype, shape) = match parts.as_slice() {
            [n, d] => (n, d, None),
            [n, d, s] => (n, d, Some(s)),
            _ => return Err(format!("field {item:?}: expected (name, dtype[, shape])")),
        };
        let name = match name {
            Lit::Str(s) => s.clone(),
            // (title, name) pairs.
            Lit::Tuple(t) if matches!(t.as_slice(), [_, Lit::Str(_)]) => match &t[1] {
                Lit::Str(s) => s.clone(),
                _ => unreachable!("matched above"),
            },
            other => return Err(format!("field name {other:?}: expected a string")),
        };
        let dtype = match dtype {
            Lit::Str(s) => parse_dtype(s).map_err(|e| format!("field {name:?}: {e}"))?,
            Lit::List(nested) => {
                let (_, size) = parse_fields(nested, depth + 1)?;
                Dtype {
                    kind: b'V',
                    size,
                    big_endian: false,
                    text: "(nested record)".into(),
                }
            }
            other => return Err(format!("field {name:?}: dtype {other:?} is not a string")),
        };
        let shape: Vec<usize> = match shape {
            None => Vec::new(),
            Some(Lit::Tuple(dims)) => dims
                .iter()
                .map(|d| match d {
                    Lit::Int(k) => usize::try_from(*k).map_err(|_| format!("dimension {k}")),
                    other => Err(format!("dimension {other:?}")),
                })
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("field {name:?}: bad shape: {e}"))?,
            Some(Lit::Int(k)) => {
                vec![usize::try_from(*k).map_err(|_| format!("field {name:?}: shape {k}"))?]
            }
            Some(other) => return Err(format!("field {name:?}: shape {other:?}")),
        };
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("field {name:?}: shape too large"))?;
        let bytes = count
            .checked_mul(dtype.size)
            .ok_or_else(|| format!("field {name:?}: size overflows"))?;
        fields.push(Field {
            name,
            offset,
            dtype,
            shape,
            count,
        });
        offset = offset
            .checked_add(bytes)
            .ok_or_else(|| "record size overflows".to_owned())?;
    }
    Ok((fields, offset))
}

/// A NumPy type descriptor such as `<f4`, `|S63`, `>u8`, `<U10`, `<M8[ns]`.
fn parse_dtype(s: &str) -> std::result::Result<Dtype, String> {
    let b = s.as_bytes();
    let (big_endian, rest) = match b.first() {
        Some(b'<') => (false, &b[1..]),
        Some(b'>' | b'!') => (true, &b[1..]),
        Some(b'=') => (cfg!(target_endian = "big"), &b[1..]),
        Some(b'|') => (false, &b[1..]),
        _ => (cfg!(target_endian = "big"), b),
    };
    let Some((&kind, digits)) = rest.split_first() else {
        return Err(format!("dtype {s:?}: no type letter"));
    };
    if kind == b'O' {
        return Err(format!(
            "dtype {s:?} holds Python objects, stored as a pickle that cannot be read without \
             Python; re-save the array with fixed-width fields"
        ));
    }
    let digits_end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let tail = &digits[digits_end..];
    let n: usize = std::str::from_utf8(&digits[..digits_end])
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| format!("dtype {s:?}: no size"))?;
    if !(tail.is_empty() || (matches!(kind, b'M' | b'm') && tail.starts_with(b"["))) {
        return Err(format!(
            "dtype {s:?}: unexpected {:?}",
            String::from_utf8_lossy(tail)
        ));
    }
    let size = match kind {
        b'U' => n
            .checked_mul(4)
            .ok_or_else(|| format!("dtype {s:?}: too large"))?,
        b'a' | b'S' | b'V' | b'b' | b'i' | b'u' | b'f' | b'c' | b'M' | b'm' => n,
        other => return Err(format!("dtype {s:?}: unknown kind {:?}", other as char)),
    };
    Ok(Dtype {
        kind: if kind == b'a' { b'S' } else { kind },
        size,
        big_endian,
        text: s.to_owned(),
    })
}

/// A Python literal, as found in a `.npy` header.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Lit>),
    List(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

impl Lit {
    /// Parses one literal filling `text` (surrounding whitespace allowed).
    fn parse(text: &str) -> std::result::Result<Lit, String> {
        let mut p = LitParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("unexpected text at byte {}", p.i));
        }
        Ok(v)
    }
}

struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Lit, String> {
        if depth > MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        self.ws();
        let Some(c) = self.peek() else {
            return Err("header ends where a value was expected".into());
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Lit::Dict(items));
                    }
                    let k = self.value(depth + 1)?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(format!("expected ':' at byte {}", self.i));
                    }
                    self.i += 1;
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                    if !self.separator(b'}')? {
                        return Ok(Lit::Dict(items));
                    }
                }
            }
            b'[' | b'(' => {
                let close = if c == b'[' { b']' } else { b')' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(close) {
                        self.i += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    if !self.separator(close)? {
                        break;
                    }
                }
                Ok(if c == b'[' {
                    Lit::List(items)
                } else {
                    Lit::Tuple(items)
                })
            }
            b'\'' | b'"' => self.string(),
            b'u' | b'b' | b'r' if matches!(self.s.get(self.i + 1), Some(b'\'' | b'"')) => {
                self.i += 1;
                self.string()
            }
            b'-' | b'+' | b'0'..=b'9' => {
                let start = self.i;
                self.i += 1;
                while self.peek().is_some_and(|d| d.is_ascii_digit()) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                let v = text
                    .parse::<i128>()
                    .map_err(|_| format!("bad integer {text:?}"))?;
                if matches!(self.peek(), Some(b'L' | b'l')) {
                    self.i += 1; // Python 2 long suffix.
                }
                Ok(Lit::Int(v))
            }
            _ => {
                for (word, lit) in [
                    ("True", Lit::Bool(true)),
                    ("False", Lit::Bool(false)),
                    ("None", Lit::None),
                ] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(lit);
                    }
                }
                Err(format!(
                    "unexpected character {:?} at byte {}",
                    c as char, self.i
                ))
            }
        }
    }

    /// After an item: consumes `,` (returns true: more may follow) or `close` (returns false).
    fn separator(&mut self, close: u8) -> std::result::Result<bool, String> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(format!(
                "expected ',' or '{}' at byte {}",
                close as char, self.i
            )),
        }
    }

    fn string(&mut self) -> std::result::Result<Lit, String> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated string".into());
            };
            self.i += 1;
            match c {
                _ if c == q => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err("unterminated string".into());
                    };
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'0' => out.push(0),
                        b'x' => {
                            let hex = self.s.get(self.i..self.i + 2).and_then(|h| {
                                u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                            });
                            let Some(v) = hex else {
                                return Err("bad \\x escape".into());
                            };
                            out.push(v);
                            self.i += 2;
                        }
                        other => out.push(other),
                    }
                }
                _ => out.push(c),
            }
        }
        Ok(Lit::Str(String::from_utf8_lossy(&out).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcg_physics::pose::mat_mul;
    use proptest::prelude::*;

    /// A `.npy` file with a cryoSPARC-like record type, built without NumPy.
    fn sample(version: u8) -> Vec<u8> {
        let descr = "[('uid', '<u8'), ('blob/path', '|S12'), ('blob/idx', '<u4'), \
                     ('blob/shape', '<u4', (2,)), ('blob/psize_A', '<f4'), \
                     ('ctf/accel_kv', '<f4'), ('ctf/cs_mm', '<f4'), ('ctf/amp_contrast', '<f4'), \
                     ('ctf/df1_A', '<f4'), ('ctf/df2_A', '>f8'), ('ctf/df_angle_rad', '<f4'), \
                     ('ctf/phase_shift_rad', '<f4'), ('ctf/type', '<U3'), \
                     ('alignments3D/shift', '<f4', (2,)), ('alignments3D/pose', '<f4', (3,)), \
                     ('alignments3D/psize_A', '<f4'), ('alignments3D/class', '<i2'), ('', '|V3')]";
        let header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (2,), }}");
        let mut out = b"\x93NUMPY".to_vec();
        out.push(version);
        out.push(0);
        let mut h = header.into_bytes();
        let pre = if version == 1 { 10 } else { 12 };
        while (pre + h.len() + 1) % 64 != 0 {
            h.push(b' ');
        }
        h.push(b'\n');
        if version == 1 {
            out.extend((h.len() as u16).to_le_bytes());
        } else {
            out.extend((h.len() as u32).to_le_bytes());
        }
        out.extend(h);
        for r in 0..2u32 {
            out.extend((1000 + u64::from(r)).to_le_bytes());
            let mut path = *b">J1/s.mrcs\0\0";
            if r == 1 {
                path = *b"t.mrcs\0\0\0\0\0\0";
            }
            out.extend(path);
            out.extend((r + 4).to_le_bytes());
            out.extend(64u32.to_le_bytes());
            out.extend(64u32.to_le_bytes());
            for v in [1.5f32, 300.0, 2.7, 0.1, 12000.0 + r as f32] {
                out.extend(v.to_le_bytes());
            }
            out.extend(11000.5f64.to_be_bytes());
            out.extend(std::f32::consts::FRAC_PI_2.to_le_bytes());
            out.extend(0.0f32.to_le_bytes());
            for c in ['a', 'b', '\0'] {
                out.extend((c as u32).to_le_bytes());
            }
            for v in [2.0f32, -1.0, 0.1, 0.2, 0.3] {
                out.extend(v.to_le_bytes());
            }
            out.extend(3.0f32.to_le_bytes());
            out.extend((-7i16).to_le_bytes());
            out.extend([0u8; 3]);
        }
        out
    }

    fn p() -> &'static Path {
        Path::new("/nowhere/mem.cs")
    }

    #[test]
    fn reads_a_synthetic_cs_in_all_npy_versions() {
        for version in [1, 2, 3] {
            let set = particles_from_cs(&sample(version), p(), &StarOptions::default()).unwrap();
            assert_eq!(set.len(), 2);
            assert_eq!(set.optics.len(), 1);
            let g = &set.optics[0];
            assert_eq!(
                (g.pixel_size, g.image_size, g.voltage),
                (1.5, Some(64), 300.0)
            );
            assert_eq!(g.cs, f64::from(2.7f32));
            let a = &set.particles[0];
            assert_eq!(
                a.image,
                Some(ImageRef {
                    path: "J1/s.mrcs".into(),
                    index: 4
                })
            );
            assert_eq!(
                set.particles[1].image.as_ref().unwrap().path,
                PathBuf::from("t.mrcs")
            );
            assert_eq!(a.ctf.defocus_u, 12000.0);
            assert_eq!(set.particles[1].ctf.defocus_u, 12001.0);
            assert_eq!(a.ctf.defocus_v, 11000.5);
            assert!((a.ctf.defocus_angle - 90.0).abs() < 1e-5);
            assert_eq!((a.ctf.bfactor, a.ctf.scale), (0.0, 1.0));
            // Shifts are measured at alignments3D/psize_A (3 Å), not blob/psize_A.
            assert_eq!((a.shift.x, a.shift.y), (6.0, -3.0));
            let want = transpose(&matrix_from_rotation_vector([
                f64::from(0.1f32),
                f64::from(0.2f32),
                f64::from(0.3f32),
            ]));
            let got = a.pose.unwrap().matrix();
            for i in 0..3 {
                for j in 0..3 {
                    assert!((got[i][j] - want[i][j]).abs() < 1e-12);
                }
            }
            assert_eq!(set.extra_column("_cs/uid").unwrap(), ["1000", "1001"]);
            assert_eq!(set.extra_column("_cs/ctf/type").unwrap(), ["ab", "ab"]);
            assert_eq!(
                set.extra_column("_cs/alignments3D/class").unwrap(),
                ["-7", "-7"]
            );
            assert!(set.extra_column("_cs/blob/shape").is_none());
            assert_eq!(set.extra.len(), 3);
        }
    }

    #[test]
    fn pose_conversion_is_the_transposed_rodrigues_matrix() {
        // 90° about +z: A = R(v)ᵀ = Rz(90°)ᵀ, which is RELION's A(90, 0, 0).
        let pose = pose_from_cryosparc([0.0, 0.0, std::f64::consts::FRAC_PI_2]);
        assert!(
            (pose.rot - 90.0).abs() < 1e-9 && pose.tilt.abs() < 1e-9,
            "{pose:?}"
        );
        // A·R(v) = I for a general vector.
        let v = [0.3, -1.1, 2.0];
        let prod = mat_mul(
            &pose_from_cryosparc(v).matrix(),
            &matrix_from_rotation_vector(v),
        );
        for i in 0..3 {
            for j in 0..3 {
                let id = if i == j { 1.0 } else { 0.0 };
                assert!((prod[i][j] - id).abs() < 1e-9);
            }
        }
        let s = shift_from_cryosparc([2.0, -0.5], 1.5);
        assert_eq!((s.x, s.y), (3.0, -0.75));
    }

    #[test]
    fn header_errors_are_clear() {
        let e = |bytes: &[u8]| {
            particles_from_cs(bytes, p(), &StarOptions::default())
                .unwrap_err()
                .to_string()
        };
        assert!(e(b"hello world, not npy").contains("not a NumPy"));
        let good = sample(1);
        assert!(e(&good[..good.len() - 5]).contains("truncated"));
        let edit = |from: &str, to: &str| {
            assert_eq!(from.len(), to.len());
            let mut b = good.clone();
            let at = b
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            b[at..at + to.len()].copy_from_slice(to.as_bytes());
            b
        };
        assert!(e(&edit("'<f4', (3,)", "'|O', (3,) ")).contains("Python objects"));
        assert!(e(&edit("False", "True ")).contains("fortran_order"));
        let msg = e(&edit("ctf/df1_A", "ctf/dfX_A"));
        assert!(msg.contains("ctf/df1_A") && msg.contains("mem.cs"), "{msg}");
        let mut v9 = good.clone();
        v9[6] = 9;
        assert!(e(&v9).contains("version 9"));
    }

    #[test]
    fn empty_record_type_with_a_huge_count_is_refused() {
        let header = "{'descr': [], 'fortran_order': False, 'shape': (1000000000000000,), }\n";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((header.len() as u16).to_le_bytes());
        b.extend(header.as_bytes());
        let e = particles_from_cs(&b, p(), &StarOptions::default()).unwrap_err();
        assert!(e.to_string().contains("zero bytes"), "{e}");
    }

    #[test]
    fn literal_parser_handles_numpy_headers() {
        let header = "{'descr': [('a', '<f4'), (('t', 'b'), '|S2', (2, 3))], \
                      'shape': (7L,), 'x': None, \"q\\'\": -3,}\n";
        let lit = Lit::parse(header).unwrap();
        let Lit::Dict(d) = lit else { panic!() };
        assert_eq!(d.len(), 4);
        assert_eq!(d[1].1, Lit::Tuple(vec![Lit::Int(7)]));
        let Lit::List(fields) = &d[0].1 else { panic!() };
        let (f, size) = parse_fields(fields, 0).unwrap();
        assert_eq!(
            (f[1].name.as_str(), f[1].count, f[1].offset, size),
            ("b", 6, 4, 16)
        );
    }

    /// A header that declares 10¹² rows in a file of two is an error naming the file, and
    /// nothing is allocated for the rows it does not hold.
    #[test]
    fn a_declared_shape_beyond_the_file_allocates_nothing_for_it() {
        let b = sample(1);
        let text = String::from_utf8_lossy(&b).into_owned();
        let at = text.find("'shape': (2,)").expect("the sample's shape");
        let mut huge = b[..at].to_vec();
        huge.extend_from_slice(b"'shape': (1000000000000,)");
        huge.extend_from_slice(&b[at + "'shape': (2,)".len()..]);
        // Keep the header's length a multiple of 64, as NumPy's is: trim the padding.
        let grown = "'shape': (1000000000000,)".len() - "'shape': (2,)".len();
        let pad_end = huge
            .iter()
            .position(|&c| c == b'\n')
            .expect("the header's end");
        huge.drain(pad_end - grown..pad_end);
        let (result, largest) = mcg_testdata::alloc::measured(|| {
            particles_from_cs(&huge, p(), &StarOptions::default())
        });
        let e = result.unwrap_err().to_string();
        assert!(e.contains(&p().display().to_string()), "{e}");
        assert!(
            largest <= mcg_testdata::alloc::bound(huge.len()),
            "{largest} bytes"
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_truncated_or_mutated_files(
            version in 1u8..4,
            cut in 0usize..2000,
            edits in prop::collection::vec((0usize..2000, any::<u8>()), 0..8),
        ) {
            let mut b = sample(version);
            for (at, v) in edits {
                let at = at % b.len();
                b[at] = v;
            }
            b.truncate(cut.min(b.len()));
            let (_, largest) = mcg_testdata::alloc::measured(|| {
                particles_from_cs(&b, p(), &StarOptions::default())
            });
            prop_assert!(largest <= mcg_testdata::alloc::bound(b.len()), "{largest} bytes");
        }

        #[test]
        fn never_panics_on_mutated_headers(
            edits in prop::collection::vec((0usize..700, prop::sample::select(
                b"()[]{}',:0123456789-LTFN< >|fuiSUOV\\x".to_vec())), 1..6),
        ) {
            let mut b = sample(1);
            for (at, v) in edits {
                let at = 10 + at % 600;
                b[at] = v;
            }
            // A mutated header may declare any shape: the reader must not allocate for rows
            // the file does not hold.
            let (_, largest) = mcg_testdata::alloc::measured(|| {
                particles_from_cs(&b, p(), &StarOptions::default())
            });
            prop_assert!(largest <= mcg_testdata::alloc::bound(b.len()), "{largest} bytes");
        }
    }
}
