//! Rigid alignment of a map to a reference over rotations, both hands and translations.
//!
//! A reconstruction is defined up to rotation, reflection and translation; before it is compared
//! with a ground truth it is aligned to it ([`align`]). The transform ([`Transform`]) maps the
//! map `V` to
//!
//! `aligned(r) = V(F · Rᵀ · (r − t))`
//!
//! for positions `r` (voxels, `[x, y, z]`) relative to the box centre `N/2`: first the mirror
//! `F` (the hand flip `z → −z` about the centre, or the identity), then the rotation by `R`
//! (RELION's sense: the map rotated by a pose matrix `A` is `W(r) = U(Aᵀ r)`, as a projection at
//! that pose rotates it), then the translation by `t`. Voxels are interpolated trilinearly;
//! points outside the box read 0.
//!
//! The search runs on a pyramid of Fourier-cropped copies of both maps:
//!
//! 1. **Global**, on `global_box³` copies: every rotation of a near-uniform grid on SO(3)
//!    (Fibonacci-sphere directions × in-plane angles, `angular_step_deg` apart), for both hands;
//!    for each, the best translation from the FFT cross-correlation. The best few distinct
//!    rotations are kept.
//! 2. **Local**, on copies twice as large at each level up to the full box: Nelder–Mead on the
//!    rotation (a rotation vector composed with the candidate) and the sub-voxel translation,
//!    maximising the normalised correlation of the transformed map with the reference.
//!
//! The score is the normalised (Pearson) correlation over the whole box.

use mcg_physics::fft3::Fft3;
use mcg_physics::pose::{Mat3, mat_mul, matrix_from_rotation_vector, transpose};
use mcg_physics::{Pose, Volume};
use ndarray::{Array3, Axis, Zip};
use rayon::prelude::*;
use rustfft::num_complex::Complex32;

use crate::EvalError;
use crate::fsc::check_pair;

/// The settings of [`align`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlignConfig {
    /// Edge (voxels, even, at least 8) of the Fourier-cropped maps of the global search; the
    /// full box when it is smaller.
    pub global_box: usize,
    /// Spacing of the global rotation grid, degrees (about 15,000 rotations per hand at 10°).
    pub angular_step_deg: f64,
    /// Distinct rotations of the global search refined on the next level.
    pub candidates: usize,
    /// Whether to search the mirror image too (both hands).
    pub allow_flip: bool,
    /// Largest translation searched globally, along each axis, as a fraction of the box edge.
    pub max_shift_fraction: f64,
    /// Where the rotation is known roughly: the global search keeps only the rotations within
    /// this many degrees of this one (and the rotation itself). `None`: all of SO(3).
    pub near: Option<(Mat3, f64)>,
}

impl Default for AlignConfig {
    fn default() -> Self {
        Self {
            global_box: 16,
            angular_step_deg: 10.0,
            candidates: 8,
            allow_flip: true,
            max_shift_fraction: 0.25,
            near: None,
        }
    }
}

/// A rigid transform with an optional hand flip: `aligned(r) = V(F · Rᵀ · (r − t))`, see the
/// module documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// The rotation `R`, row-major, acting on `[x, y, z]` about the box centre; the map is
    /// rotated as a projection at pose [`Transform::pose`] rotates it.
    pub rotation: Mat3,
    /// Whether the map is mirrored (`z → −z` about the box centre) before the rotation.
    pub flipped: bool,
    /// The translation applied last, voxels, `[x, y, z]`: the map moves by `+shift_voxels`.
    pub shift_voxels: [f64; 3],
}

impl Transform {
    /// No rotation, no flip, no shift.
    pub fn identity() -> Self {
        Self {
            rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            flipped: false,
            shift_voxels: [0.0; 3],
        }
    }

    /// The rotation as RELION Euler angles (`R = A(rot, tilt, psi)`).
    pub fn pose(&self) -> Pose {
        Pose::from_matrix(&self.rotation)
    }

    /// The translation in Å for voxels of `apix` Å, `[x, y, z]`.
    pub fn shift_angstrom(&self, apix: f64) -> [f64; 3] {
        self.shift_voxels.map(|s| s * apix)
    }

    /// `volume` transformed: `V(F · Rᵀ · (r − t))`, trilinearly interpolated, 0 outside the box.
    pub fn apply(&self, volume: &Volume) -> Volume {
        let n = volume.box_size();
        let sampler = Sampler::new(self.rotation, self.flipped, self.shift_voxels, n);
        let mut out = Array3::<f32>::zeros((n, n, n));
        let src = volume.data().as_slice().expect("standard layout");
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(z, mut plane)| {
                for (y, mut row) in plane.outer_iter_mut().enumerate() {
                    let row = row.as_slice_mut().expect("contiguous rows");
                    sampler.row(src, z, y, row);
                }
            });
        Volume::new(out, volume.apix()).expect("same box and voxel size as a valid volume")
    }
}

/// The result of [`align`].
#[derive(Debug, Clone)]
pub struct Alignment {
    /// The transform that aligns the map to the reference.
    pub transform: Transform,
    /// Normalised correlation of the untransformed map with the reference.
    pub score_before: f64,
    /// Normalised correlation of [`Alignment::aligned`] with the reference.
    pub score: f64,
    /// The map transformed onto the reference.
    pub aligned: Volume,
}

/// Aligns `volume` to `reference` (same box and voxel size): the rotation, hand and translation
/// that maximise their normalised correlation (see the module documentation for the search).
///
/// Errors: different boxes or voxel sizes, non-finite voxels, a constant map (no correlation is
/// defined), or settings out of range.
pub fn align(
    volume: &Volume,
    reference: &Volume,
    config: &AlignConfig,
) -> Result<Alignment, EvalError> {
    check_pair(volume, reference, "the map", "the reference")?;
    check_config(config)?;
    for (v, name) in [(volume, "the map"), (reference, "the reference")] {
        check_map(v, name)?;
    }
    let n = volume.box_size();
    let start = std::time::Instant::now();
    let levels = pyramid(n, config.global_box);
    tracing::debug!(?levels, "alignment pyramid");

    // Global search on the smallest level.
    let m0 = levels[0];
    let vol0 = fourier_crop(volume.data(), m0);
    let ref0 = centred(&fourier_crop(reference.data(), m0));
    let mut grid = rotation_grid(config.angular_step_deg);
    if let Some((prior, within)) = config.near {
        grid.retain(|r| angle_between(r, &prior) <= within);
        grid.push(prior);
    }
    let hands: &[bool] = if config.allow_flip {
        &[false, true]
    } else {
        &[false]
    };
    let max_shift = (config.max_shift_fraction * m0 as f64).floor() as i64;
    let mut found = global_search(&vol0, &ref0, &grid, hands, max_shift);
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut candidates = distinct(found, config.candidates, 2.0 * config.angular_step_deg);
    tracing::debug!(
        best = candidates.first().map(|c| c.score),
        kept = candidates.len(),
        rotations = grid.len() * hands.len(),
        seconds = start.elapsed().as_secs_f64(),
        "global search done"
    );

    // Local refinement, level by level.
    let mut previous = m0;
    for (level, &m) in levels.iter().enumerate() {
        let scale = m as f64 / previous as f64;
        for c in &mut candidates {
            c.transform.shift_voxels = c.transform.shift_voxels.map(|s| s * scale);
        }
        let vol_l = fourier_crop(volume.data(), m);
        let ref_l = centred(&fourier_crop(reference.data(), m));
        let rotation_step = if level == 0 {
            (config.angular_step_deg / 2.0).to_radians()
        } else {
            (120.0 / m as f64).to_radians()
        };
        candidates = candidates
            .par_iter()
            .map(|c| refine(&vol_l, &ref_l, c.transform, rotation_step))
            .collect();
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
        // The coarsest level can still confuse near-equivalent poses (a pseudo-symmetric
        // molecule): three go on from it; after that the best one is only polished.
        candidates.truncate(if level == 0 { 3 } else { 1 });
        tracing::debug!(
            box_size = m,
            score = candidates[0].score,
            seconds = start.elapsed().as_secs_f64(),
            "refined"
        );
        previous = m;
    }

    let transform = candidates[0].transform;
    let aligned = transform.apply(volume);
    let reference_centred = centred(reference.data());
    Ok(Alignment {
        transform,
        score_before: correlation_with(volume.data(), &reference_centred),
        score: correlation_with(aligned.data(), &reference_centred),
        aligned,
    })
}

/// The normalised (Pearson) correlation of two maps of the same shape, over all voxels; 0 when
/// either is constant.
pub fn correlation(a: &Volume, b: &Volume) -> f64 {
    correlation_with(a.data(), &centred(b.data()))
}

/// Whether a map has some contrast (not every voxel the same): what an alignment needs.
pub fn has_contrast(volume: &Volume) -> bool {
    let mut values = volume.data().iter();
    let first = values.next().copied().unwrap_or(0.0);
    values.any(|&v| v != first)
}

/// The number of directions and of in-plane angles of [`rotation_grid`]`(step_deg)`.
fn grid_size(step_deg: f64) -> (usize, usize) {
    let step = step_deg.to_radians();
    let directions = ((4.0 * std::f64::consts::PI / (step * step)).round() as usize).max(1);
    let psis = ((360.0 / step_deg).round() as usize).max(1);
    (directions, psis)
}

/// Bytes the global search of [`align`] holds with `config`: each rotation of the grid and
/// its score, for each hand.
pub fn search_bytes(config: &AlignConfig) -> f64 {
    let (d, p) = grid_size(config.angular_step_deg);
    let hands = if config.allow_flip { 2.0 } else { 1.0 };
    d as f64
        * p as f64
        * (std::mem::size_of::<Mat3>() as f64 + hands * std::mem::size_of::<Candidate>() as f64)
}

/// A near-uniform grid of rotations on SO(3) with spacing about `step_deg`: `round(4π/step²)`
/// directions on a Fibonacci sphere (the third row of RELION's matrix, i.e. the direction that
/// the rotation brings onto z) times `round(360/step)` in-plane angles psi.
pub fn rotation_grid(step_deg: f64) -> Vec<Mat3> {
    let (directions, psis) = grid_size(step_deg);
    let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    let mut grid = Vec::with_capacity(directions * psis);
    for i in 0..directions {
        let cos_tilt = 1.0 - (2 * i + 1) as f64 / directions as f64;
        let tilt = cos_tilt.clamp(-1.0, 1.0).acos().to_degrees();
        let rot = (i as f64 * golden).to_degrees() % 360.0;
        for j in 0..psis {
            let psi = j as f64 * 360.0 / psis as f64;
            grid.push(Pose::new(rot, tilt, psi).matrix());
        }
    }
    grid
}

/// Whether `m` is a rotation matrix: orthonormal with determinant +1, to 10⁻⁶.
fn is_rotation(m: &Mat3) -> bool {
    let p = mat_mul(m, &transpose(m));
    let orthonormal =
        (0..3).all(|i| (0..3).all(|j| (p[i][j] - f64::from(u8::from(i == j))).abs() < 1e-6));
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    orthonormal && (det - 1.0).abs() < 1e-6
}

/// The rotation of `rotations` with the most of them (itself included) within `within_deg`
/// of it, and that number: the mode of a noisy set of estimates of one rotation (the first of
/// equals). `None` when `rotations` is empty.
pub fn modal_rotation(rotations: &[Mat3], within_deg: f64) -> Option<(Mat3, usize)> {
    let counts: Vec<usize> = rotations
        .par_iter()
        .map(|a| {
            rotations
                .iter()
                .filter(|b| angle_between(a, b) <= within_deg)
                .count()
        })
        .collect();
    let (best, count) =
        counts
            .iter()
            .enumerate()
            .fold(None, |top: Option<(usize, usize)>, (i, &c)| match top {
                Some((_, t)) if c <= t => top,
                _ => Some((i, c)),
            })?;
    Some((rotations[best], count))
}

/// The angle (degrees) of the rotation `A·Bᵀ` that takes rotation `B` to `A`.
pub fn angle_between(a: &Mat3, b: &Mat3) -> f64 {
    let d = mat_mul(a, &transpose(b));
    ((d[0][0] + d[1][1] + d[2][2] - 1.0) / 2.0)
        .clamp(-1.0, 1.0)
        .acos()
        .to_degrees()
}

/// A transform and its score on the current level.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    transform: Transform,
    score: f64,
}

fn check_config(config: &AlignConfig) -> Result<(), EvalError> {
    let bad = |what: &str, problem: String| {
        Err(EvalError::Input {
            what: format!("alignment setting {what}"),
            problem,
        })
    };
    if config.global_box < 8 || !config.global_box.is_multiple_of(2) {
        return bad(
            "global box",
            format!(
                "{}; expected an even edge of at least 8 voxels",
                config.global_box
            ),
        );
    }
    if !(config.angular_step_deg > 0.0 && config.angular_step_deg <= 90.0) {
        return bad(
            "angular step",
            format!("{}°; expected a step in (0°, 90°]", config.angular_step_deg),
        );
    }
    if config.candidates == 0 {
        return bad("candidates", "0; expected at least 1".into());
    }
    if let Some((prior, within)) = config.near {
        if !(within.is_finite() && within > 0.0) {
            return bad(
                "search radius about a known rotation",
                format!("{within}°; expected a positive angle"),
            );
        }
        if !is_rotation(&prior) {
            return bad(
                "known rotation",
                format!("{prior:?}; expected a rotation matrix (orthonormal, determinant +1)"),
            );
        }
    }
    if !(0.0..=0.5).contains(&config.max_shift_fraction) {
        return bad(
            "largest shift",
            format!(
                "{} of the box; expected a fraction in [0, 0.5]",
                config.max_shift_fraction
            ),
        );
    }
    Ok(())
}

fn check_map(volume: &Volume, name: &str) -> Result<(), EvalError> {
    let data = volume.data();
    if data.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::Input {
            what: name.into(),
            problem: "non-finite voxels (NaN or infinity); expected finite densities".into(),
        });
    }
    if !has_contrast(volume) {
        let first = data.iter().next().copied().unwrap_or(0.0);
        return Err(EvalError::Input {
            what: name.into(),
            problem: format!("every voxel is {first}; expected a map with some contrast"),
        });
    }
    Ok(())
}

/// Box edges of the pyramid: `global_box` (or the box when smaller), doubled up to the box.
fn pyramid(n: usize, global_box: usize) -> Vec<usize> {
    let mut levels = Vec::new();
    let mut m = global_box.min(n);
    while m < n {
        levels.push(m);
        m *= 2;
    }
    levels.push(n);
    levels
}

/// `data` (an `n³` box) Fourier-cropped to `m³` (`m ≤ n`, even): the coefficients of
/// frequency below `m/2` in every axis kept, the small box's Nyquist planes dropped, scaled so
/// that densities keep their values. The box centre `n/2` becomes `m/2`.
fn fourier_crop(data: &Array3<f32>, m: usize) -> Array3<f32> {
    let n = data.dim().0;
    if m == n {
        return data.clone();
    }
    let big = Fft3::new(n).forward(data.view());
    let small_fft = Fft3::new(m);
    let half = (m / 2) as i64;
    let mut small = Array3::<Complex32>::zeros((m, m, small_fft.half_width()));
    let scale = (m as f32 / n as f32).powi(3);
    let wrap = |f: i64| f.rem_euclid(n as i64) as usize;
    Zip::indexed(&mut small).for_each(|(kz, ky, kx), v| {
        let fz = mcg_physics::fourier::signed_freq(kz, m);
        let fy = mcg_physics::fourier::signed_freq(ky, m);
        if fz.abs() < half && fy.abs() < half && (kx as i64) < half {
            *v = big[[wrap(fz), wrap(fy), kx]] * scale;
        }
    });
    small_fft.inverse(small)
}

/// `data` minus its mean.
fn centred(data: &Array3<f32>) -> Array3<f32> {
    let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / data.len() as f64;
    data.mapv(|v| (f64::from(v) - mean) as f32)
}

/// Pearson correlation of `a` with `b_centred` (a zero-mean map): `Σ a·b / (‖a − ā‖·‖b‖)`.
fn correlation_with(a: &Array3<f32>, b_centred: &Array3<f32>) -> f64 {
    let (mut sa, mut saa, mut sab, mut sbb) = (0.0, 0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b_centred.iter()) {
        let (x, y) = (f64::from(x), f64::from(y));
        sa += x;
        saa += x * x;
        sab += x * y;
        sbb += y * y;
    }
    let var_a = saa - sa * sa / a.len() as f64;
    let denominator = (var_a.max(0.0) * sbb).sqrt();
    if denominator > 0.0 {
        sab / denominator
    } else {
        0.0
    }
}

/// For every rotation of `grid` and hand: the best translation (within `max_shift` voxels per
/// axis) from the circular cross-correlation with `reference` (zero-mean), and its normalised
/// score.
fn global_search(
    volume: &Array3<f32>,
    reference: &Array3<f32>,
    grid: &[Mat3],
    hands: &[bool],
    max_shift: i64,
) -> Vec<Candidate> {
    let m = volume.dim().0;
    let fft = Fft3::new(m);
    let ref_spec = fft.forward(reference.view());
    let ref_norm = reference
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt();
    let src = volume.as_slice().expect("standard layout");
    let jobs: Vec<(usize, bool)> = hands
        .iter()
        .flat_map(|&h| (0..grid.len()).map(move |i| (i, h)))
        .collect();
    jobs.par_iter()
        .map_init(
            || Array3::<f32>::zeros((m, m, m)),
            |rotated, &(i, flipped)| {
                let sampler = Sampler::new(grid[i], flipped, [0.0; 3], m);
                let voxels = rotated.as_slice_mut().expect("standard layout");
                for (zy, row) in voxels.chunks_mut(m).enumerate() {
                    sampler.row(src, zy / m, zy % m, row);
                }
                let mean = rotated.iter().map(|&v| f64::from(v)).sum::<f64>() / (m * m * m) as f64;
                rotated.mapv_inplace(|v| v - mean as f32);
                let norm = rotated
                    .iter()
                    .map(|&v| f64::from(v).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let mut spec = fft.forward(rotated.view());
                Zip::from(&mut spec)
                    .and(&ref_spec)
                    .for_each(|a, b| *a *= b.conj());
                // cc[s] = Σ_r W(r + s)·Ref(r): the map moved by t = −s matches best.
                let cc = fft.inverse(spec);
                let mut best = (f32::NEG_INFINITY, [0i64; 3]);
                let shifts: Vec<(usize, i64)> = (0..m)
                    .map(|j| (j, mcg_physics::fourier::signed_freq(j, m)))
                    .filter(|(_, s)| s.abs() <= max_shift)
                    .collect();
                for &(z, sz) in &shifts {
                    for &(y, sy) in &shifts {
                        for &(x, sx) in &shifts {
                            let v = cc[[z, y, x]];
                            if v > best.0 {
                                best = (v, [sx, sy, sz]);
                            }
                        }
                    }
                }
                let denominator = norm * ref_norm;
                Candidate {
                    transform: Transform {
                        rotation: grid[i],
                        flipped,
                        shift_voxels: best.1.map(|s| -s as f64),
                    },
                    score: if denominator > 0.0 {
                        f64::from(best.0) / denominator
                    } else {
                        0.0
                    },
                }
            },
        )
        .collect()
}

/// The first `count` candidates of `sorted` (best first) whose rotations are more than
/// `min_angle_deg` apart from every one kept before (or of the other hand).
fn distinct(sorted: Vec<Candidate>, count: usize, min_angle_deg: f64) -> Vec<Candidate> {
    let mut kept: Vec<Candidate> = Vec::with_capacity(count);
    for c in sorted {
        if kept.len() == count {
            break;
        }
        let close = kept.iter().any(|k| {
            k.transform.flipped == c.transform.flipped
                && angle_between(&k.transform.rotation, &c.transform.rotation) <= min_angle_deg
        });
        if !close {
            kept.push(c);
        }
    }
    kept
}

/// Nelder–Mead refinement of `start` on one level: parameters are a rotation vector (radians)
/// composed on the left of the start rotation, and the translation (voxels). Two runs, the
/// second restarted from the first's best with half the initial steps.
fn refine(
    volume: &Array3<f32>,
    reference: &Array3<f32>,
    start: Transform,
    rotation_step: f64,
) -> Candidate {
    let m = volume.dim().0;
    let src = volume.as_slice().expect("standard layout");
    let ref_sq: f64 = reference.iter().map(|&v| f64::from(v).powi(2)).sum();
    let transform_of = |p: &[f64; 6]| Transform {
        rotation: mat_mul(
            &matrix_from_rotation_vector([p[0], p[1], p[2]]),
            &start.rotation,
        ),
        flipped: start.flipped,
        shift_voxels: [
            start.shift_voxels[0] + p[3],
            start.shift_voxels[1] + p[4],
            start.shift_voxels[2] + p[5],
        ],
    };
    let score = |p: &[f64; 6]| {
        let t = transform_of(p);
        transformed_correlation(src, m, &t, reference, ref_sq)
    };
    let mut x = [0.0; 6];
    let mut steps = [rotation_step, rotation_step, rotation_step, 1.0, 1.0, 1.0];
    let mut best = f64::NEG_INFINITY;
    for _ in 0..2 {
        let (bx, fx) = nelder_mead(|p| -score(p), x, steps, 400, 1e-7);
        x = bx;
        best = -fx;
        steps = steps.map(|s| s / 2.0);
    }
    Candidate {
        transform: transform_of(&x),
        score: best,
    }
}

/// Pearson correlation of the transformed `src` (an `m³` box) with the zero-mean `reference`
/// (`ref_sq = Σ reference²`), without storing the transformed map.
fn transformed_correlation(
    src: &[f32],
    m: usize,
    transform: &Transform,
    reference: &Array3<f32>,
    ref_sq: f64,
) -> f64 {
    let sampler = Sampler::new(
        transform.rotation,
        transform.flipped,
        transform.shift_voxels,
        m,
    );
    let plane = |z: usize| {
        let mut row = vec![0.0f32; m];
        let mut sums = [0.0f64; 3];
        for y in 0..m {
            sampler.row(src, z, y, &mut row);
            let r = reference.slice(ndarray::s![z, y, ..]);
            for (&a, &b) in row.iter().zip(r.iter()) {
                let a = f64::from(a);
                sums[0] += a;
                sums[1] += a * a;
                sums[2] += a * f64::from(b);
            }
        }
        sums
    };
    let add = |a: [f64; 3], b: [f64; 3]| [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
    // Small boxes are refined several at a time already; split only large ones across threads.
    // Plane sums are added in order either way, so the score does not depend on the threads.
    let planes: Vec<[f64; 3]> = if m >= 48 {
        (0..m).into_par_iter().map(plane).collect()
    } else {
        (0..m).map(plane).collect()
    };
    let [sa, saa, sab] = planes.into_iter().fold([0.0; 3], add);
    let var = saa - sa * sa / (m * m * m) as f64;
    let denominator = (var.max(0.0) * ref_sq).sqrt();
    if denominator > 0.0 {
        sab / denominator
    } else {
        0.0
    }
}

/// Trilinear sampling of a transformed `n³` map along output rows.
struct Sampler {
    n: usize,
    /// `F·Rᵀ`: output offset from the centre → source offset from the centre.
    inverse: [[f32; 3]; 3],
    /// The translation, voxels.
    shift: [f32; 3],
}

impl Sampler {
    fn new(rotation: Mat3, flipped: bool, shift: [f64; 3], n: usize) -> Self {
        let mut inverse = transpose(&rotation);
        if flipped {
            inverse[2] = inverse[2].map(|v| -v);
        }
        Self {
            n,
            inverse: inverse.map(|row| row.map(|v| v as f32)),
            shift: shift.map(|s| s as f32),
        }
    }

    /// Writes into `out` (`n` values) the output row `(z, y)`.
    fn row(&self, src: &[f32], z: usize, y: usize, out: &mut [f32]) {
        let n = self.n;
        let c = (n / 2) as f32;
        let r = [
            -c - self.shift[0],
            y as f32 - c - self.shift[1],
            z as f32 - c - self.shift[2],
        ];
        let m = &self.inverse;
        // Source index of output voxel x: origin + x·step.
        let origin: [f32; 3] =
            std::array::from_fn(|i| m[i][0] * r[0] + m[i][1] * r[1] + m[i][2] * r[2] + c);
        let step = [m[0][0], m[1][0], m[2][0]];
        let last = (n - 1) as f32;
        for (x, value) in out.iter_mut().enumerate() {
            let xf = x as f32;
            let p = [
                origin[0] + xf * step[0],
                origin[1] + xf * step[1],
                origin[2] + xf * step[2],
            ];
            *value = if p.iter().all(|&q| (0.0..last).contains(&q)) {
                interior(src, n, p)
            } else {
                border(src, n, p)
            };
        }
    }
}

/// Trilinear interpolation at `p` (`[x, y, z]` index units) with all 8 neighbours in the box.
#[inline(always)]
fn interior(src: &[f32], n: usize, p: [f32; 3]) -> f32 {
    let i = p.map(|q| q as usize);
    let t = [p[0] - i[0] as f32, p[1] - i[1] as f32, p[2] - i[2] as f32];
    let base = (i[2] * n + i[1]) * n + i[0];
    let (sy, sz) = (n, n * n);
    let lerp = |a: f32, b: f32, t: f32| a + t * (b - a);
    let row = |o: usize| lerp(src[o], src[o + 1], t[0]);
    let plane = |o: usize| lerp(row(o), row(o + sy), t[1]);
    lerp(plane(base), plane(base + sz), t[2])
}

/// Trilinear interpolation at `p` where some neighbours may lie outside the box (they read 0).
fn border(src: &[f32], n: usize, p: [f32; 3]) -> f32 {
    // Most such points of a rotated box lie a voxel or more outside: all 8 neighbours read 0.
    if p.iter().any(|&q| q <= -1.0 || q >= n as f32) {
        return 0.0;
    }
    mcg_physics::project::sample_zero_padded(src, n, p.map(f64::from)) as f32
}

/// Minimises `f` from `x0` by the Nelder–Mead simplex method (reflection 1, expansion 2,
/// contraction ½, shrink ½), the initial simplex `x0` and `x0 + steps[i]·eᵢ`. Stops after
/// `max_evals` evaluations or when the simplex's values span less than `ftol`.
fn nelder_mead<const D: usize>(
    f: impl Fn(&[f64; D]) -> f64,
    x0: [f64; D],
    steps: [f64; D],
    max_evals: usize,
    ftol: f64,
) -> ([f64; D], f64) {
    let mut simplex: Vec<([f64; D], f64)> = Vec::with_capacity(D + 1);
    simplex.push((x0, f(&x0)));
    for i in 0..D {
        let mut x = x0;
        x[i] += steps[i];
        simplex.push((x, f(&x)));
    }
    let mut evals = D + 1;
    let along = |from: &[f64; D], to: &[f64; D], t: f64| -> [f64; D] {
        std::array::from_fn(|i| from[i] + t * (to[i] - from[i]))
    };
    loop {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, worst) = (simplex[0].1, simplex[D].1);
        if evals >= max_evals || worst - best <= ftol {
            break;
        }
        let centroid: [f64; D] =
            std::array::from_fn(|i| simplex[..D].iter().map(|(x, _)| x[i]).sum::<f64>() / D as f64);
        let worst_x = simplex[D].0;
        let reflected = along(&centroid, &worst_x, -1.0);
        let fr = f(&reflected);
        evals += 1;
        if fr < best {
            let expanded = along(&centroid, &worst_x, -2.0);
            let fe = f(&expanded);
            evals += 1;
            simplex[D] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < simplex[D - 1].1 {
            simplex[D] = (reflected, fr);
        } else {
            let (contracted, fc) = if fr < worst {
                let x = along(&centroid, &reflected, 0.5);
                (x, f(&x))
            } else {
                let x = along(&centroid, &worst_x, 0.5);
                (x, f(&x))
            };
            evals += 1;
            if fc < fr.min(worst) {
                simplex[D] = (contracted, fc);
            } else {
                let best_x = simplex[0].0;
                for point in simplex.iter_mut().skip(1) {
                    let x = along(&best_x, &point.0, 0.5);
                    *point = (x, f(&x));
                    evals += 1;
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nelder_mead_finds_the_minimum_of_a_quadratic() {
        let (x, fx) = nelder_mead(
            |p: &[f64; 3]| (p[0] - 1.0).powi(2) + 2.0 * (p[1] + 0.5).powi(2) + (p[2] - 3.0).powi(2),
            [0.0; 3],
            [0.5; 3],
            2000,
            1e-14,
        );
        assert!(fx < 1e-10, "{fx}");
        assert!(
            (x[0] - 1.0).abs() < 1e-4 && (x[1] + 0.5).abs() < 1e-4 && (x[2] - 3.0).abs() < 1e-4
        );
    }

    #[test]
    fn rotation_grid_covers_so3_within_the_step() {
        let grid = rotation_grid(15.0);
        // Haar-random rotations (from a fixed list of quaternions) are all within ~the step of
        // a grid rotation.
        let mut worst: f64 = 0.0;
        for k in 0..200 {
            let u = |j: usize| ((k * 7919 + j * 104_729) % 1000) as f64 / 1000.0 + 0.0005;
            let q = [u(0) - 0.5, u(1) - 0.5, u(2) - 0.5, u(3) - 0.5];
            let r = mcg_physics::pose::matrix_from_quaternion(q);
            let nearest = grid
                .iter()
                .map(|g| angle_between(g, &r))
                .fold(f64::INFINITY, f64::min);
            worst = worst.max(nearest);
        }
        assert!(worst < 15.0, "worst distance to the grid {worst}°");
    }

    #[test]
    fn fourier_crop_keeps_a_smooth_map_and_its_centre() {
        let n = 32;
        let blob = |x: f64, y: f64, z: f64| (-(x * x + y * y + z * z) / (2.0 * 9.0)).exp();
        let map = |m: usize| {
            let s = n as f64 / m as f64;
            let c = (m / 2) as f64;
            Array3::from_shape_fn((m, m, m), |(z, y, x)| {
                blob(
                    (x as f64 - c) * s - 2.0,
                    (y as f64 - c) * s,
                    (z as f64 - c) * s + 1.0,
                ) as f32
            })
        };
        let cropped = fourier_crop(&map(n), 16);
        let expected = map(16);
        let err = cropped
            .iter()
            .zip(expected.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 2e-3, "largest difference {err}");
    }
}
