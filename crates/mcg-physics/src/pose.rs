//! Orientations: RELION Euler angles (ZYZ, degrees), rotation matrices, unit quaternions,
//! rotation vectors, and Haar-uniform sampling on SO(3).
//!
//! The matrix of a pose is RELION's `A(rot, tilt, psi) = (Rz(rot)·Ry(tilt)·Rz(psi))ᵀ` with
//! `Rz`, `Ry` the ordinary right-handed (active) rotations. The projection at pose `A` rotates
//! the volume by `A` and integrates along z: `P(x, y) = ∫ V(Aᵀ (x, y, z)ᵀ) dz`.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A 3×3 matrix, row-major: `m[row][column]`.
pub type Mat3 = [[f64; 3]; 3];

/// An orientation as RELION Euler angles in degrees (`_rlnAngleRot`, `_rlnAngleTilt`,
/// `_rlnAnglePsi`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    /// First rotation about z, degrees.
    pub rot: f64,
    /// Rotation about the new y, degrees, in [0, 180] for canonical angles.
    pub tilt: f64,
    /// Last rotation about z, degrees.
    pub psi: f64,
}

impl Pose {
    /// A pose from RELION Euler angles in degrees.
    pub fn new(rot: f64, tilt: f64, psi: f64) -> Self {
        Self { rot, tilt, psi }
    }

    /// RELION's rotation matrix `A = (Rz(rot)·Ry(tilt)·Rz(psi))ᵀ`.
    pub fn matrix(&self) -> Mat3 {
        let (sa, ca) = self.rot.to_radians().sin_cos();
        let (sb, cb) = self.tilt.to_radians().sin_cos();
        let (sg, cg) = self.psi.to_radians().sin_cos();
        let (cc, cs, sc, ss) = (cb * ca, cb * sa, sb * ca, sb * sa);
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    }

    /// The canonical Euler angles of a rotation matrix: tilt in [0, 180], rot and psi in
    /// (−180, 180]. At tilt 0 or 180 (gimbal lock) psi is set to 0.
    ///
    /// `Pose::from_matrix(&p.matrix()).matrix()` equals `p.matrix()` to rounding for every pose.
    pub fn from_matrix(a: &Mat3) -> Self {
        let cos_tilt = a[2][2].clamp(-1.0, 1.0);
        let sin_tilt = (a[2][0] * a[2][0] + a[2][1] * a[2][1]).sqrt();
        if sin_tilt > 1e-9 {
            let tilt = sin_tilt.atan2(cos_tilt);
            let rot = a[2][1].atan2(a[2][0]);
            let psi = a[1][2].atan2(-a[0][2]);
            Self::new(rot.to_degrees(), tilt.to_degrees(), psi.to_degrees())
        } else if cos_tilt > 0.0 {
            // A = Rz(rot)ᵀ: rot = atan2(A01, A00).
            Self::new(a[0][1].atan2(a[0][0]).to_degrees(), 0.0, 0.0)
        } else {
            // A = (Rz(rot)·diag(−1, 1, −1))ᵀ: rot = atan2(−A01, −A00).
            Self::new((-a[0][1]).atan2(-a[0][0]).to_degrees(), 180.0, 0.0)
        }
    }

    /// The unit quaternion `(w, x, y, z)` of the matrix `A`, with `w ≥ 0`.
    pub fn to_quaternion(&self) -> [f64; 4] {
        quaternion_from_matrix(&self.matrix())
    }

    /// The pose whose matrix is the rotation of unit quaternion `(w, x, y, z)`; the quaternion
    /// is normalised first.
    pub fn from_quaternion(q: [f64; 4]) -> Self {
        Self::from_matrix(&matrix_from_quaternion(q))
    }

    /// The rotation vector (axis × angle in radians) of the matrix `A`.
    pub fn to_rotation_vector(&self) -> [f64; 3] {
        let [w, x, y, z] = self.to_quaternion();
        let s = (x * x + y * y + z * z).sqrt();
        if s < 1e-12 {
            return [2.0 * x, 2.0 * y, 2.0 * z];
        }
        let angle = 2.0 * s.atan2(w);
        [x / s * angle, y / s * angle, z / s * angle]
    }

    /// The pose whose matrix `A` is the rotation by `|v|` radians about the axis `v/|v|`
    /// (Rodrigues' formula).
    pub fn from_rotation_vector(v: [f64; 3]) -> Self {
        Self::from_matrix(&matrix_from_rotation_vector(v))
    }

    /// A pose drawn from the Haar (uniform) measure on SO(3): rot, psi ~ U[0, 360),
    /// tilt = arccos(U(−1, 1)).
    pub fn sample_uniform<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let rot = rng.random::<f64>() * 360.0;
        let tilt = (2.0 * rng.random::<f64>() - 1.0).acos().to_degrees();
        let psi = rng.random::<f64>() * 360.0;
        Self::new(rot, tilt, psi)
    }
}

/// The rotation matrix of a rotation vector (axis × angle in radians), by Rodrigues' formula.
pub fn matrix_from_rotation_vector(v: [f64; 3]) -> Mat3 {
    let theta = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    if theta < 1e-12 {
        // First order: I + [v]×.
        return [[1.0, -v[2], v[1]], [v[2], 1.0, -v[0]], [-v[1], v[0], 1.0]];
    }
    let (kx, ky, kz) = (v[0] / theta, v[1] / theta, v[2] / theta);
    let (s, c) = theta.sin_cos();
    let t = 1.0 - c;
    [
        [c + kx * kx * t, kx * ky * t - kz * s, kx * kz * t + ky * s],
        [ky * kx * t + kz * s, c + ky * ky * t, ky * kz * t - kx * s],
        [kz * kx * t - ky * s, kz * ky * t + kx * s, c + kz * kz * t],
    ]
}

/// The rotation matrix of a quaternion `(w, x, y, z)` (normalised first).
pub fn matrix_from_quaternion(q: [f64; 4]) -> Mat3 {
    let n = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]).sqrt();
    let [w, x, y, z] = q.map(|c| c / n);
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// The unit quaternion `(w, x, y, z)`, `w ≥ 0`, of a rotation matrix (Shepperd's method).
pub fn quaternion_from_matrix(m: &Mat3) -> [f64; 4] {
    let trace = m[0][0] + m[1][1] + m[2][2];
    let q = if trace > 0.0 {
        let s = (trace + 1.0).sqrt() * 2.0;
        [
            0.25 * s,
            (m[2][1] - m[1][2]) / s,
            (m[0][2] - m[2][0]) / s,
            (m[1][0] - m[0][1]) / s,
        ]
    } else if m[0][0] > m[1][1] && m[0][0] > m[2][2] {
        let s = (1.0 + m[0][0] - m[1][1] - m[2][2]).sqrt() * 2.0;
        [
            (m[2][1] - m[1][2]) / s,
            0.25 * s,
            (m[0][1] + m[1][0]) / s,
            (m[0][2] + m[2][0]) / s,
        ]
    } else if m[1][1] > m[2][2] {
        let s = (1.0 + m[1][1] - m[0][0] - m[2][2]).sqrt() * 2.0;
        [
            (m[0][2] - m[2][0]) / s,
            (m[0][1] + m[1][0]) / s,
            0.25 * s,
            (m[1][2] + m[2][1]) / s,
        ]
    } else {
        let s = (1.0 + m[2][2] - m[0][0] - m[1][1]).sqrt() * 2.0;
        [
            (m[1][0] - m[0][1]) / s,
            (m[0][2] + m[2][0]) / s,
            (m[1][2] + m[2][1]) / s,
            0.25 * s,
        ]
    };
    let n = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]).sqrt();
    let sign = if q[0] < 0.0 { -1.0 } else { 1.0 };
    q.map(|c| sign * c / n)
}

/// `a · b`.
pub fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    c
}

/// `mᵀ`.
pub fn transpose(m: &Mat3) -> Mat3 {
    let mut t = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            t[i][j] = m[j][i];
        }
    }
    t
}

/// `m · v`.
pub fn mat_vec(m: &Mat3, v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn max_diff(a: &Mat3, b: &Mat3) -> f64 {
        let mut d: f64 = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                d = d.max((a[i][j] - b[i][j]).abs());
            }
        }
        d
    }

    fn rz(a: f64) -> Mat3 {
        let (s, c) = a.to_radians().sin_cos();
        [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    }

    fn ry(a: f64) -> Mat3 {
        let (s, c) = a.to_radians().sin_cos();
        [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    }

    proptest! {
        #[test]
        fn matrix_is_transposed_zyz_product(rot in -360.0..360.0f64, tilt in 0.0..180.0f64, psi in -360.0..360.0f64) {
            let want = transpose(&mat_mul(&mat_mul(&rz(rot), &ry(tilt)), &rz(psi)));
            prop_assert!(max_diff(&Pose::new(rot, tilt, psi).matrix(), &want) < 1e-12);
        }

        #[test]
        fn angles_matrix_angles_round_trip(rot in -720.0..720.0f64, tilt in -360.0..360.0f64, psi in -720.0..720.0f64) {
            let p = Pose::new(rot, tilt, psi);
            let q = Pose::from_matrix(&p.matrix());
            prop_assert!((0.0..=180.0).contains(&q.tilt));
            prop_assert!(max_diff(&p.matrix(), &q.matrix()) < 1e-9);
        }

        #[test]
        fn quaternion_round_trip(rot in -180.0..180.0f64, tilt in 0.0..180.0f64, psi in -180.0..180.0f64) {
            let p = Pose::new(rot, tilt, psi);
            let q = p.to_quaternion();
            prop_assert!((q.iter().map(|c| c * c).sum::<f64>() - 1.0).abs() < 1e-12);
            prop_assert!(max_diff(&matrix_from_quaternion(q), &p.matrix()) < 1e-9);
            prop_assert!(max_diff(&Pose::from_quaternion(q).matrix(), &p.matrix()) < 1e-9);
        }

        #[test]
        fn rotation_vector_round_trip(rot in -180.0..180.0f64, tilt in 0.0..180.0f64, psi in -180.0..180.0f64) {
            let p = Pose::new(rot, tilt, psi);
            let v = p.to_rotation_vector();
            prop_assert!(max_diff(&Pose::from_rotation_vector(v).matrix(), &p.matrix()) < 1e-9);
        }
    }

    #[test]
    fn gimbal_lock_round_trips() {
        for p in [Pose::new(30.0, 0.0, 50.0), Pose::new(-70.0, 180.0, 20.0)] {
            assert!(max_diff(&Pose::from_matrix(&p.matrix()).matrix(), &p.matrix()) < 1e-12);
        }
    }

    #[test]
    fn rotation_vector_about_z_is_rotation_about_z() {
        // 90° about +z maps x to y (active rotation).
        let m = matrix_from_rotation_vector([0.0, 0.0, std::f64::consts::FRAC_PI_2]);
        let v = mat_vec(&m, [1.0, 0.0, 0.0]);
        assert!((v[0]).abs() < 1e-12 && (v[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn uniform_sampling_is_haar() {
        // Under the Haar measure the viewing direction (third row of A) is uniform on the
        // sphere, so its mean is 0 and its second moments are 1/3, and the mean trace of A is 0.
        // A sampler uniform in the three angles fails the first and last checks.
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 200_000;
        let (mut m1, mut m2, mut tr) = ([0.0f64; 3], [0.0f64; 3], 0.0f64);
        for _ in 0..n {
            let a = Pose::sample_uniform(&mut rng).matrix();
            for i in 0..3 {
                m1[i] += a[2][i];
                m2[i] += a[2][i] * a[2][i];
            }
            tr += a[0][0] + a[1][1] + a[2][2];
        }
        let nf = n as f64;
        for i in 0..3 {
            assert!((m1[i] / nf).abs() < 0.01, "mean of viewing direction {i}");
            assert!((m2[i] / nf - 1.0 / 3.0).abs() < 0.01, "second moment {i}");
        }
        // Haar: E[tr A] = 0 (a sampler uniform in the three angles gives about 0.5).
        assert!((tr / nf).abs() < 0.02, "mean trace {}", tr / nf);
    }
}
