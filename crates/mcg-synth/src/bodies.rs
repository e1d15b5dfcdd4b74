//! Projections of rigid-body conformations without one volume per image (prior art,
//! "Simulators"; conventions, "Hsp90 benchmark").
//!
//! A molecule is a sum of bodies, each with its own density map `V` on the shared grid. A body
//! that turns by a hinge rotation `R` about the pivot `p` (`x′ = R (x − p) + p`) has the density
//! `V_b(r) = V(Rᵀ (r − p) + p)`. With `t = p − R p`,
//! `V_b(Aᵀ r) = V((A R)ᵀ (r − A t))`, so its projection at pose `A` is the projection of the
//! unmoved body at the pose whose RELION matrix is `A·R`, translated in the image plane by the
//! `(x, y)` part of `A t` (content moves by `+(A t)_xy / apix` pixels). Each image is thus one
//! Fourier slice per body, each multiplied by its phase ramp, summed: no volume per
//! conformation. The tests check this against volumes built from moved atoms.
//!
//! Frames: density maps are centred on the frame origin `o` (voxel `N/2` is `o`; atoms enter
//! [`density_map`] as positions relative to `o`), while hinge pivots are given in the molecule's
//! own frame (the PDB frame for Hsp90), so the pivot in the map is `(p − o)/apix` voxels.

use ndarray::{Array2, ArrayViewMut3, s};
use rayon::prelude::*;
use rustfft::num_complex::Complex32;

use mcg_physics::fourier::{Fft2, half_width};
use mcg_physics::pose::{Mat3, Pose, mat_mul, mat_vec, matrix_from_rotation_vector};
use mcg_physics::project::FourierProjector;
use mcg_physics::shift::translate_spectrum;
use mcg_physics::volume::Volume;

use crate::density::{DensityConfig, density_map};
use crate::{AtomicModel, SynthError};

/// A density input atom: (position in Å relative to the frame origin, weight Z), as
/// [`density_map`] takes it.
pub type DensityAtom = ([f64; 3], f64);

/// How one body moves with the conformation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BodyMotion {
    /// The body never moves.
    Fixed,
    /// The body turns rigidly by the conformation's angle (degrees, right-handed about `axis`)
    /// about the line through `pivot` along `axis`: `x′ = R (x − pivot) + pivot`, as
    /// [`crate::motion::hinge_rotate`].
    Hinge {
        /// Direction of the hinge axis (any non-zero length; normalised here).
        axis: [f64; 3],
        /// A point on the axis, Å, in the molecule's frame (not relative to the frame origin).
        pivot: [f64; 3],
    },
}

/// One body: its projector and its motion, the pivot already in voxels of the map's frame.
struct Body {
    projector: FourierProjector,
    /// Unit axis and pivot (voxels relative to the box centre) of a hinge; `None` if fixed.
    hinge: Option<([f64; 3], [f64; 3])>,
}

/// Projects conformations of a molecule made of rigid bodies, one Fourier slice per body
/// (see the module notes).
///
/// Output images follow [`FourierProjector`]: densities summed along z in unit voxel steps
/// (`N × N`, pixels of the maps' voxel size).
pub struct RigidBodyProjector {
    bodies: Vec<Body>,
    n: usize,
    apix: f64,
    origin: [f64; 3],
}

impl std::fmt::Debug for RigidBodyProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RigidBodyProjector")
            .field("bodies", &self.bodies.len())
            .field("moving_bodies", &self.moving_bodies())
            .field("box_size", &self.n)
            .field("apix", &self.apix)
            .field("origin", &self.origin)
            .finish()
    }
}

impl RigidBodyProjector {
    /// Builds the projector from each body's density map (all on one grid: same box size and
    /// voxel size, voxel `N/2` at the frame `origin`, Å in the molecule's frame), with its
    /// motion. The 3D spectra are oversampled `oversampling` times (see
    /// [`FourierProjector::with_oversampling`]; 2 is RELION's choice, 4 is more accurate).
    ///
    /// Fails when there is no body, the maps' grids differ, a hinge axis is zero or not finite,
    /// a pivot or the origin is not finite, or the oversampling is invalid.
    pub fn from_volumes(
        bodies: &[(Volume, BodyMotion)],
        origin: [f64; 3],
        oversampling: usize,
    ) -> Result<Self, SynthError> {
        let Some((first, _)) = bodies.first() else {
            return Err(SynthError::Parameter {
                name: "number of bodies",
                value: 0.0,
                expected: "at least one body",
            });
        };
        let (n, apix) = (first.box_size(), first.apix());
        crate::motion::check_finite_point("frame origin (Å)", origin)?;
        let apix_f64 = f64::from(apix);
        let mut built = Vec::with_capacity(bodies.len());
        for (volume, motion) in bodies {
            if volume.box_size() != n || volume.apix() != apix {
                return Err(SynthError::Parameter {
                    name: "body map box size (voxels)",
                    value: volume.box_size() as f64,
                    expected: "every body's map on the same grid (box size and voxel size)",
                });
            }
            let hinge = match *motion {
                BodyMotion::Fixed => None,
                BodyMotion::Hinge { axis, pivot } => {
                    let unit = crate::motion::unit_axis(axis)?;
                    crate::motion::check_finite_point("hinge pivot (Å)", pivot)?;
                    let pivot_vox = [0, 1, 2].map(|i| (pivot[i] - origin[i]) / apix_f64);
                    Some((unit, pivot_vox))
                }
            };
            let projector = FourierProjector::with_oversampling(volume, oversampling)?;
            built.push(Body { projector, hinge });
        }
        Ok(Self {
            bodies: built,
            n,
            apix: apix_f64,
            origin,
        })
    }

    /// Builds the projector from each body's atoms, given as (position in Å relative to the
    /// frame `origin`, weight Z) like [`density_map`], on the grid of `cfg`; `origin` is in Å
    /// of the molecule's frame, the frame the hinge pivots are given in.
    ///
    /// Fails as [`density_map`] and [`RigidBodyProjector::from_volumes`].
    pub fn from_atoms(
        bodies: &[(&[DensityAtom], BodyMotion)],
        origin: [f64; 3],
        cfg: &DensityConfig,
        oversampling: usize,
    ) -> Result<Self, SynthError> {
        let volumes = bodies
            .iter()
            .map(|&(atoms, motion)| Ok((density_map(atoms, cfg)?, motion)))
            .collect::<Result<Vec<_>, SynthError>>()?;
        Self::from_volumes(&volumes, origin, oversampling)
    }

    /// Builds the projector from atomic models (one per body, positions in Å of the molecule's
    /// frame), their maps centred on `origin` (e.g. [`crate::frame_origin`] of the whole
    /// molecule in its reference conformation).
    ///
    /// Fails on an atom of unknown element, and as [`RigidBodyProjector::from_atoms`].
    pub fn from_models(
        bodies: &[(&AtomicModel, BodyMotion)],
        origin: [f64; 3],
        cfg: &DensityConfig,
        oversampling: usize,
    ) -> Result<Self, SynthError> {
        let atoms = bodies
            .iter()
            .map(|(model, _)| model.density_atoms(origin))
            .collect::<Result<Vec<_>, SynthError>>()?;
        let refs: Vec<_> = atoms
            .iter()
            .zip(bodies)
            .map(|(a, &(_, motion))| (a.as_slice(), motion))
            .collect();
        Self::from_atoms(&refs, origin, cfg, oversampling)
    }

    /// Number of bodies.
    pub fn bodies(&self) -> usize {
        self.bodies.len()
    }

    /// Number of moving ([`BodyMotion::Hinge`]) bodies: the angles each image needs.
    pub fn moving_bodies(&self) -> usize {
        self.bodies.iter().filter(|b| b.hinge.is_some()).count()
    }

    /// Edge `N` of the maps and of the projected images, voxels (pixels).
    pub fn box_size(&self) -> usize {
        self.n
    }

    /// Voxel (pixel) size, Å.
    pub fn apix(&self) -> f64 {
        self.apix
    }

    /// The frame origin, Å in the molecule's frame: the point at voxel `N/2` of every map.
    pub fn origin(&self) -> [f64; 3] {
        self.origin
    }

    /// Writes into `spec` the centred half-plane spectrum of the `2N × 2N` zero-padded
    /// projection at `pose` of the whole molecule with its moving bodies turned by
    /// `angles_deg` (degrees, one per moving body, in the order the bodies were given).
    ///
    /// The layout and meaning are exactly those of [`FourierProjector::slice`] (`m = 2N`,
    /// zero beyond the Nyquist circle), so the result feeds the same CTF, shift and
    /// `Fft2::inverse` + crop steps as a single volume's slice. It is the sum over bodies of
    /// each body's slice at the pose `A·R` (`A` the pose's matrix, `R` the body's hinge
    /// rotation) times the phase ramp of the in-plane translation `(A t)_xy` voxels,
    /// `t = p − R p` (see the module notes), applied by [`mcg_physics::shift::translate_spectrum`]
    /// with its convention at Nyquist. Allocates a scratch spectrum per call when there are two bodies
    /// or more; [`RigidBodyProjector::slice_with_scratch`] does not.
    ///
    /// # Panics
    /// If `spec.len() != 2N · (N + 1)`, `angles_deg.len()` differs from
    /// [`RigidBodyProjector::moving_bodies`], or an angle is not finite.
    pub fn slice(&self, pose: &Pose, angles_deg: &[f64], spec: &mut [Complex32]) {
        let mut scratch = if self.bodies.len() > 1 {
            vec![Complex32::default(); spec.len()]
        } else {
            Vec::new()
        };
        self.slice_with_scratch(pose, angles_deg, spec, &mut scratch);
    }

    /// [`RigidBodyProjector::slice`] with a caller's scratch spectrum (`2N · (N + 1)` long, or
    /// anything when there is a single body); allocates nothing.
    ///
    /// # Panics
    /// As [`RigidBodyProjector::slice`], and if there are two bodies or more and
    /// `scratch.len() != spec.len()`.
    pub fn slice_with_scratch(
        &self,
        pose: &Pose,
        angles_deg: &[f64],
        spec: &mut [Complex32],
        scratch: &mut [Complex32],
    ) {
        let m = 2 * self.n;
        assert_eq!(
            spec.len(),
            m * half_width(m),
            "slice spectrum must be 2N·(N + 1) long"
        );
        assert_eq!(
            angles_deg.len(),
            self.moving_bodies(),
            "one angle per moving body"
        );
        if self.bodies.len() > 1 {
            assert_eq!(scratch.len(), spec.len(), "scratch must be as long as spec");
        }
        let a = pose.matrix();
        let mut angles = angles_deg.iter();
        for (index, body) in self.bodies.iter().enumerate() {
            let (body_pose, shift) = match body.hinge {
                None => (*pose, [0.0, 0.0]),
                Some((axis, pivot)) => {
                    let angle = *angles.next().expect("counted above");
                    assert!(angle.is_finite(), "hinge angle {angle}° is not finite");
                    let r = matrix_from_rotation_vector(axis.map(|v| v * angle.to_radians()));
                    body_pose_and_shift(&a, &r, pivot)
                }
            };
            let target: &mut [Complex32] = if index == 0 { spec } else { scratch };
            body.projector.slice(&body_pose, target);
            if body.hinge.is_some() {
                translate_spectrum(target, m, shift[0], shift[1]);
            }
            if index > 0 {
                for (s, &b) in spec.iter_mut().zip(scratch.iter()) {
                    *s += b;
                }
            }
        }
    }

    /// Projects the molecule at every pose into `out` (`[poses.len()][N][N]`, densities summed
    /// along z in unit voxel steps, as [`FourierProjector::project`]): slice, inverse 2D
    /// transform on the `2N` grid, crop of the central `N × N`. `angles_deg` holds
    /// [`RigidBodyProjector::moving_bodies`] angles (degrees) per pose, pose after pose.
    /// Parallel over poses.
    ///
    /// # Panics
    /// If `out` is not `[poses.len()][N][N]`, `angles_deg.len()` is not
    /// `poses.len() · moving_bodies()`, or an angle is not finite.
    pub fn project(&self, poses: &[Pose], angles_deg: &[f64], mut out: ArrayViewMut3<'_, f32>) {
        let (n, m) = (self.n, 2 * self.n);
        let k = self.moving_bodies();
        assert_eq!(
            out.dim(),
            (poses.len(), n, n),
            "projection output must be [poses][N][N]"
        );
        assert_eq!(
            angles_deg.len(),
            poses.len() * k,
            "angles must hold moving_bodies() angles per pose"
        );
        out.outer_iter_mut()
            .into_par_iter()
            .zip(poses.par_iter())
            .enumerate()
            .for_each_init(
                || {
                    let fft = Fft2::new(m);
                    let spec = vec![Complex32::default(); fft.spectrum_len()];
                    let scratch = spec.clone();
                    (fft, spec, scratch, Array2::<f32>::zeros((m, m)))
                },
                |(fft, spec, scratch, padded), (i, (mut image, pose))| {
                    let angles = &angles_deg[i * k..(i + 1) * k];
                    self.slice_with_scratch(pose, angles, spec, scratch);
                    fft.inverse(spec, padded.view_mut());
                    image.assign(&padded.slice(s![n / 2..n / 2 + n, n / 2..n / 2 + n]));
                },
            );
    }
}

/// The pose at which to slice a body turned by `r` about `pivot` (voxels from the box centre)
/// when the molecule is seen at `a`, and the in-plane translation `(A t)_xy` (pixels, content
/// moves by `+`) with `t = pivot − r·pivot`.
fn body_pose_and_shift(a: &Mat3, r: &Mat3, pivot: [f64; 3]) -> (Pose, [f64; 2]) {
    let composed = mat_mul(a, r);
    let rp = mat_vec(r, pivot);
    let t = [0, 1, 2].map(|i| pivot[i] - rp[i]);
    let at = mat_vec(a, t);
    (Pose::from_matrix(&composed), [at[0], at[1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::motion::hinge_rotate;
    use ndarray::Array3;

    const N: usize = 32;
    const APIX: f64 = 5.0;
    /// The molecule's frame origin in its own (PDB-like) frame, Å: deliberately far from 0.
    const ORIGIN: [f64; 3] = [103.0, -47.0, 31.0];
    const AXIS: [f64; 3] = [0.0, -1.0, 0.0];
    /// Hinge pivot in the molecule's frame, Å.
    const PIVOT: [f64; 3] = [103.0 + 2.0, -47.0 - 6.0, 31.0 + 4.0];

    /// A deterministic uniform number in [0, 1) (splitmix64).
    fn uniform(state: &mut u64) -> f64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Haar-uniform poses from a seed.
    fn poses(seed: u64, count: usize) -> Vec<Pose> {
        let mut st = seed;
        (0..count)
            .map(|_| {
                let rot = uniform(&mut st) * 360.0;
                let tilt = (2.0 * uniform(&mut st) - 1.0).acos().to_degrees();
                let psi = uniform(&mut st) * 360.0;
                Pose::new(rot, tilt, psi)
            })
            .collect()
    }

    /// Two asymmetric blobs of pseudo-atoms, in the molecule's frame (Å): (fixed, moving).
    fn two_bodies() -> (Vec<DensityAtom>, Vec<DensityAtom>) {
        let mut st = 11u64;
        let mut blob = |centre: [f64; 3], radii: [f64; 3], count: usize| {
            (0..count)
                .map(|_| {
                    let p = [0, 1, 2]
                        .map(|i| ORIGIN[i] + centre[i] + radii[i] * (2.0 * uniform(&mut st) - 1.0));
                    (p, 6.0 + 2.0 * (uniform(&mut st) * 2.0).floor())
                })
                .collect::<Vec<_>>()
        };
        let fixed = blob([-14.0, 3.0, -5.0], [12.0, 9.0, 7.0], 60);
        let moving = blob([16.0, -4.0, 8.0], [8.0, 13.0, 6.0], 50);
        (fixed, moving)
    }

    fn relative(atoms: &[DensityAtom]) -> Vec<DensityAtom> {
        atoms
            .iter()
            .map(|&(p, z)| ([0, 1, 2].map(|i| p[i] - ORIGIN[i]), z))
            .collect()
    }

    fn moved(atoms: &[DensityAtom], beta: f64) -> Vec<DensityAtom> {
        let mut out = atoms.to_vec();
        hinge_rotate(out.iter_mut().map(|(p, _)| p), AXIS, PIVOT, beta).unwrap();
        out
    }

    fn rigid(s: usize) -> RigidBodyProjector {
        rigid_at(s, &DensityConfig::new(N, APIX))
    }

    fn rigid_at(s: usize, cfg: &DensityConfig) -> RigidBodyProjector {
        let (fixed, moving) = two_bodies();
        let (f, m) = (relative(&fixed), relative(&moving));
        RigidBodyProjector::from_atoms(
            &[
                (&f, BodyMotion::Fixed),
                (
                    &m,
                    BodyMotion::Hinge {
                        axis: AXIS,
                        pivot: PIVOT,
                    },
                ),
            ],
            ORIGIN,
            cfg,
            s,
        )
        .unwrap()
    }

    fn norm(a: &Array3<f32>) -> f64 {
        a.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt()
    }

    /// Worst per-image relative error ‖rigid − direct‖ / ‖direct‖ over `poses` at `beta`.
    fn worst_error(
        rb: &RigidBodyProjector,
        cfg: &DensityConfig,
        s: usize,
        beta: f64,
        poses: &[Pose],
    ) -> f64 {
        let (fixed, moving) = two_bodies();
        let mut all = fixed.clone();
        all.extend(moved(&moving, beta));
        let volume = density_map(&relative(&all), cfg).unwrap();
        let direct = FourierProjector::with_oversampling(&volume, s).unwrap();
        let mut want = Array3::<f32>::zeros((poses.len(), N, N));
        direct.project(poses, want.view_mut());
        let mut got = Array3::<f32>::zeros((poses.len(), N, N));
        rb.project(poses, &vec![beta; poses.len()], got.view_mut());
        (0..poses.len())
            .map(|i| {
                let w = want.slice(s![i..=i, .., ..]).to_owned();
                let d = &got.slice(s![i..=i, .., ..]) - &w;
                norm(&d) / norm(&w)
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn bodies_match_a_volume_of_the_moved_atoms() {
        // At the default resolution (2·apix) the maps carry much power near Nyquist, where a map
        // of turned atoms and a turned map differ (the grid's band limit does not turn with the
        // body): measured 0.79–0.86 % at s = 2 and 4. With a 20 Å blur that source fades and
        // what is left is the projector's interpolation: 0.09 % at s = 4, 0.44 % at s = 2.
        let poses = poses(5, 40);
        let sharp = DensityConfig::new(N, APIX);
        let smooth = DensityConfig {
            resolution: 20.0,
            ..sharp
        };
        for (cfg, s, bound) in [(sharp, 4, 0.01), (sharp, 2, 0.01), (smooth, 4, 0.003)] {
            let rb = rigid_at(s, &cfg);
            for beta in [0.0, 7.0, 20.0] {
                let err = worst_error(&rb, &cfg, s, beta, &poses);
                eprintln!(
                    "resolution {} Å, oversampling {s}, β = {beta}°: worst relative error {err:.5}",
                    cfg.resolution
                );
                assert!(err < bound, "s = {s}, β = {beta}°: relative error {err}");
            }
        }
    }

    #[test]
    fn hsp90_bodies_match_volumes_of_the_opened_dimer() {
        use crate::motion::{
            HSP90_BODY_RESIDUES, HSP90_FIXED_CHAIN, HSP90_HINGE_AXIS, HSP90_HINGE_PIVOT,
            HSP90_MOVING_CHAIN,
        };
        let Some(dir) = mcg_testdata::shared("structures/hsp90") else {
            return;
        };
        let read = |chain: &str| {
            let file = dir.join(format!("2cg9_chain{chain}_res12-677.pdb"));
            AtomicModel::read_model(&file)
                .unwrap()
                .select(chain, HSP90_BODY_RESIDUES)
        };
        let (moving, fixed) = (read(HSP90_MOVING_CHAIN), read(HSP90_FIXED_CHAIN));
        let mut both = fixed.clone();
        both.extend(&moving);
        let origin = crate::frame_origin(&both).unwrap();
        let cfg = DensityConfig::new(N, APIX);
        let hinge = BodyMotion::Hinge {
            axis: HSP90_HINGE_AXIS,
            pivot: HSP90_HINGE_PIVOT,
        };
        let s = 4;
        let rb = RigidBodyProjector::from_models(
            &[(&fixed, BodyMotion::Fixed), (&moving, hinge)],
            origin,
            &cfg,
            s,
        )
        .unwrap();
        let poses = poses(17, 24);
        for beta in [10.0, 20.0] {
            let mut opened = moving.clone();
            hinge_rotate(
                opened.atoms.iter_mut().map(|a| &mut a.position),
                HSP90_HINGE_AXIS,
                HSP90_HINGE_PIVOT,
                beta,
            )
            .unwrap();
            let mut all = fixed.clone();
            all.extend(&opened);
            let volume = density_map(&all.density_atoms(origin).unwrap(), &cfg).unwrap();
            let direct = FourierProjector::with_oversampling(&volume, s).unwrap();
            let mut want = Array3::<f32>::zeros((poses.len(), N, N));
            direct.project(&poses, want.view_mut());
            let mut got = Array3::<f32>::zeros((poses.len(), N, N));
            rb.project(&poses, &vec![beta; poses.len()], got.view_mut());
            let worst = (0..poses.len())
                .map(|i| {
                    let w = want.slice(s![i..=i, .., ..]).to_owned();
                    norm(&(&got.slice(s![i..=i, .., ..]) - &w)) / norm(&w)
                })
                .fold(0.0, f64::max);
            eprintln!("Hsp90, β = {beta}°: worst relative error {worst:.5}");
            assert!(worst < 0.01, "Hsp90 β = {beta}°: relative error {worst}");
        }
    }

    #[test]
    fn bodies_reject_the_other_composition() {
        // R·A instead of A·R must be far off: the test above really tests the composition.
        let rb = rigid(4);
        let pose = poses(9, 1)[0];
        let a = pose.matrix();
        let r = matrix_from_rotation_vector(AXIS.map(|v| v * 20f64.to_radians()));
        let wrong = Pose::from_matrix(&mat_mul(&r, &a));
        let (right, _) = body_pose_and_shift(&a, &r, [0.0; 3]);
        let body = &rb.bodies[1].projector;
        let m = 2 * N;
        let mut x = vec![Complex32::default(); m * half_width(m)];
        let mut y = x.clone();
        body.slice(&right, &mut x);
        body.slice(&wrong, &mut y);
        let diff: f32 = x.iter().zip(&y).map(|(a, b)| (a - b).norm_sqr()).sum();
        let total: f32 = x.iter().map(|a| a.norm_sqr()).sum();
        assert!(diff / total > 0.05, "compositions agree: {}", diff / total);
    }

    #[test]
    fn zero_angle_is_the_sum_of_the_bodies() {
        let (fixed, moving) = two_bodies();
        let cfg = DensityConfig::new(N, APIX);
        let rb = rigid(2);
        let poses = poses(3, 12);
        let mut want = Array3::<f32>::zeros((poses.len(), N, N));
        for atoms in [&fixed, &moving] {
            let p = FourierProjector::new(&density_map(&relative(atoms), &cfg).unwrap());
            let mut one = Array3::<f32>::zeros((poses.len(), N, N));
            p.project(&poses, one.view_mut());
            want += &one;
        }
        let mut got = Array3::<f32>::zeros((poses.len(), N, N));
        rb.project(&poses, &vec![0.0; poses.len()], got.view_mut());
        let scale = want.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let worst = (&got - &want).iter().fold(0f32, |a, &v| a.max(v.abs()));
        eprintln!(
            "β = 0: max |difference| / max |image| = {:e}",
            worst / scale
        );
        assert!(
            worst <= 1e-5 * scale,
            "β = 0 differs by {worst} (max {scale})"
        );
    }

    #[test]
    fn near_translation_moves_content_the_right_way() {
        // A 0.5° turn about z through a pivot 1000 Å away along −x moves the body by about
        // 1000 Å · sin 0.5° = 8.7 Å (1.75 px) along +y. In the image at pose A the content's
        // centroid moves by (A d)_xy / apix with d the 3D displacement of the body's centroid.
        let (_, moving) = two_bodies();
        let atoms = relative(&moving);
        let axis = [0.0, 0.0, 1.0];
        let pivot = [ORIGIN[0] - 1000.0, ORIGIN[1], ORIGIN[2]];
        let beta = 0.5;
        let rb = RigidBodyProjector::from_atoms(
            &[(&atoms, BodyMotion::Hinge { axis, pivot })],
            ORIGIN,
            &DensityConfig::new(N, APIX),
            2,
        )
        .unwrap();
        let mut centre = [0.0; 3];
        let total: f64 = atoms.iter().map(|a| a.1).sum();
        for (p, z) in &atoms {
            for i in 0..3 {
                centre[i] += p[i] * z / total;
            }
        }
        let mut after = [[
            centre[0] + ORIGIN[0],
            centre[1] + ORIGIN[1],
            centre[2] + ORIGIN[2],
        ]];
        hinge_rotate(after.iter_mut(), axis, pivot, beta).unwrap();
        let d = [0, 1, 2].map(|i| after[0][i] - ORIGIN[i] - centre[i]);
        assert!(d[1] > 8.0, "setup: the body moves along +y");
        let centroid = |img: ndarray::ArrayView2<f32>| {
            let (mut sx, mut sy, mut s) = (0.0, 0.0, 0.0);
            for ((y, x), &v) in img.indexed_iter() {
                let v = f64::from(v);
                sx += v * x as f64;
                sy += v * y as f64;
                s += v;
            }
            [sx / s, sy / s]
        };
        let poses = [Pose::default(), Pose::new(30.0, 70.0, -110.0)];
        for pose in poses {
            let mut img = Array3::<f32>::zeros((2, N, N));
            rb.project(&[pose, pose], &[0.0, beta], img.view_mut());
            let c0 = centroid(img.slice(s![0, .., ..]));
            let c1 = centroid(img.slice(s![1, .., ..]));
            let ad = mat_vec(&pose.matrix(), d);
            for j in 0..2 {
                let want = ad[j] / APIX;
                let got = c1[j] - c0[j];
                assert!(
                    (got - want).abs() < 0.05,
                    "pose {pose:?}, axis {j}: centroid moved {got} px, expected {want} px"
                );
            }
        }
    }

    #[test]
    fn checks_inputs() {
        let (f, _) = two_bodies();
        let f = relative(&f);
        let cfg = DensityConfig::new(N, APIX);
        let zero_axis = BodyMotion::Hinge {
            axis: [0.0; 3],
            pivot: PIVOT,
        };
        assert!(RigidBodyProjector::from_atoms(&[(&f, zero_axis)], ORIGIN, &cfg, 2).is_err());
        assert!(RigidBodyProjector::from_atoms(&[], ORIGIN, &cfg, 2).is_err());
        let rb = rigid(2);
        assert_eq!((rb.bodies(), rb.moving_bodies()), (2, 1));
    }
}
