//! Alignment: transforms of analytic maps, and recovery of known rotations, flips and shifts.

use mcg_eval::align::{AlignConfig, Transform, align, angle_between, correlation};
use mcg_physics::pose::{mat_vec, transpose};
use mcg_physics::{Pose, Volume};
use ndarray::Array3;

/// An asymmetric, chiral test density: Gaussian blobs (centre in voxels from the box centre,
/// `[x, y, z]`; weight; σ in voxels) of different sizes and weights at non-coplanar positions.
const BLOBS: [([f64; 3], f64, f64); 6] = [
    ([5.0, 0.0, 0.0], 1.0, 2.0),
    ([-3.0, 4.0, 1.0], 0.7, 1.6),
    ([0.0, -2.0, 6.0], 1.3, 2.4),
    ([-4.0, -5.0, -3.0], 0.5, 1.4),
    ([2.0, 3.0, -5.0], 0.9, 1.8),
    ([-6.0, 1.0, 4.0], 0.6, 1.5),
];

fn blobs(p: [f64; 3]) -> f64 {
    BLOBS
        .iter()
        .map(|(c, w, s)| {
            let d2: f64 = (0..3).map(|i| (p[i] - c[i]).powi(2)).sum();
            w * (-d2 / (2.0 * s * s)).exp()
        })
        .sum()
}

/// A map of `n³` voxels of 5 Å whose voxel at offset `q` from the centre holds `f(q)`.
fn sample(n: usize, f: impl Fn([f64; 3]) -> f64) -> Volume {
    let c = (n / 2) as f64;
    let data = Array3::from_shape_fn((n, n, n), |(z, y, x)| {
        f([x as f64 - c, y as f64 - c, z as f64 - c]) as f32
    });
    Volume::new(data, 5.0).unwrap()
}

/// `F·q`: the hand flip z → −z.
fn mirror(q: [f64; 3], flipped: bool) -> [f64; 3] {
    if flipped { [q[0], q[1], -q[2]] } else { q }
}

/// `Transform::apply(V)(r) = V(F·Rᵀ·(r − t))`, in `expected`'s terms: the analytic map at
/// the transformed positions.
fn expected(transform: &Transform, n: usize) -> Volume {
    let rt = transpose(&transform.rotation);
    let t = transform.shift_voxels;
    sample(n, |r| {
        blobs(mirror(
            mat_vec(&rt, [r[0] - t[0], r[1] - t[1], r[2] - t[2]]),
            transform.flipped,
        ))
    })
}

/// A transform that takes grid points to grid points (quarter turns, the flip, whole-voxel
/// shifts) needs no interpolation: where the source position lies in the box, the result is the
/// analytic map to rounding. This pins the conventions exactly: the sense of the rotation, the
/// order of mirror, rotation and shift, the centre N/2 and the sign of the shift.
#[test]
fn transform_applies_mirror_then_rotation_then_shift_exactly_on_the_grid() {
    let n = 32;
    let map = sample(n, blobs);
    for (pose, flipped, shift) in [
        (Pose::new(90.0, 90.0, 0.0), true, [2.0, -1.0, 3.0]),
        (Pose::new(0.0, 90.0, 180.0), false, [-3.0, 0.0, 1.0]),
        (Pose::new(-90.0, 0.0, 0.0), true, [0.0, 4.0, -2.0]),
    ] {
        let transform = Transform {
            rotation: pose.matrix(),
            flipped,
            shift_voxels: shift,
        };
        let moved = transform.apply(&map);
        let want = expected(&transform, n);
        let rt = transpose(&transform.rotation);
        let c = (n / 2) as f64;
        let mut compared = 0;
        for ((z, y, x), &got) in moved.data().indexed_iter() {
            let r = [
                x as f64 - c - shift[0],
                y as f64 - c - shift[1],
                z as f64 - c - shift[2],
            ];
            let q = mirror(mat_vec(&rt, r), flipped);
            if q.iter().all(|&v| v >= -c - 1e-9 && v <= c - 1.0 + 1e-9) {
                let w = want.data()[[z, y, x]];
                assert!(
                    (got - w).abs() < 1e-5,
                    "{pose:?} at ({x}, {y}, {z}): {got} against {w}"
                );
                compared += 1;
            }
        }
        assert!(compared > n * n * n / 2, "{compared}");
    }
}

/// At a general angle the result differs from the analytic map by the trilinear interpolation
/// error, at most (h²/8)·Σ_axes max|∂²f/∂x²| with h = 1 voxel; for a sum of Gaussians
/// |∂²f/∂x²| ≤ Σ w/σ², so the error is at most (3/8)·Σ w/σ².
#[test]
fn transform_at_a_general_angle_is_within_the_trilinear_error_bound() {
    let n = 32;
    let map = sample(n, blobs);
    let transform = Transform {
        rotation: Pose::new(31.0, 67.0, -142.0).matrix(),
        flipped: true,
        shift_voxels: [1.3, -0.6, 2.2],
    };
    let moved = transform.apply(&map);
    let want = expected(&transform, n);
    let bound = 3.0 / 8.0 * BLOBS.iter().map(|(_, w, s)| w / (s * s)).sum::<f64>();
    let err = moved
        .data()
        .iter()
        .zip(want.data().iter())
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    assert!(err < bound, "largest error {err} above the bound {bound}");
    assert!(correlation(&moved, &want) > 0.999);
    let pose = transform.pose();
    assert!(angle_between(&pose.matrix(), &transform.rotation) < 1e-6);
}

/// A map made as `V(q) = blobs(R·F·q + t)` is brought back onto `blobs` by exactly the
/// transform (R, F, t); the aligner must find it within 3° and 0.5 voxel, for both hands.
#[test]
fn recovers_a_known_rotation_flip_and_shift() {
    let n = 32;
    let reference = sample(n, blobs);
    let cases = [
        (Pose::new(37.3, 71.9, -123.4), true, [1.7, -2.3, 0.8]),
        (Pose::new(-158.2, 113.6, 48.7), false, [-0.6, 1.4, -2.9]),
    ];
    for (pose, flipped, shift) in cases {
        let r = pose.matrix();
        let volume = sample(n, |q| {
            let p = mat_vec(&r, mirror(q, flipped));
            blobs([p[0] + shift[0], p[1] + shift[1], p[2] + shift[2]])
        });
        let found = align(&volume, &reference, &AlignConfig::default()).unwrap();
        let t = found.transform;
        assert_eq!(t.flipped, flipped, "hand of {pose:?}");
        let angle = angle_between(&t.rotation, &r);
        assert!(angle < 3.0, "rotation off by {angle}° for {pose:?}");
        let off: f64 = (0..3)
            .map(|i| (t.shift_voxels[i] - shift[i]).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(off < 0.5, "shift {:?} against {shift:?}", t.shift_voxels);
        assert!(
            found.score > 0.99 && found.score > found.score_before,
            "{found:?}"
        );
        assert!((found.score - correlation(&found.aligned, &reference)).abs() < 1e-9);
        let shift_a = t.shift_angstrom(5.0);
        assert!((shift_a[0] - 5.0 * t.shift_voxels[0]).abs() < 1e-12);
    }
}

#[test]
fn a_map_aligned_to_itself_stays_put() {
    let map = sample(32, blobs);
    let found = align(&map, &map, &AlignConfig::default()).unwrap();
    let identity = Transform::identity();
    assert!(!found.transform.flipped);
    assert!(angle_between(&found.transform.rotation, &identity.rotation) < 1.0);
    assert!(found.transform.shift_voxels.iter().all(|s| s.abs() < 0.2));
    assert!(found.score > 0.999);
}

#[test]
fn alignment_refuses_different_boxes_and_flat_maps() {
    let map = sample(32, blobs);
    let small = sample(16, blobs);
    let err = align(&map, &small, &AlignConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("32³") && err.contains("16³"), "{err}");
    let flat = Volume::new(Array3::from_elem((32, 32, 32), 1.0), 5.0).unwrap();
    let err = align(&flat, &map, &AlignConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("the map") && err.contains("contrast"), "{err}");
}

/// With a known rough rotation (`AlignConfig::near`), the search stays near it: a map with a
/// weaker copy of itself turned 180° about z (a pseudo-two-fold) aligns onto itself at the
/// identity when searched everywhere, and at the two-fold when searched within 30° of it.
/// A radius that is not a positive angle, or a prior that is not a rotation, is refused.
#[test]
fn a_known_rough_rotation_chooses_between_pseudo_symmetric_mates() {
    let two_fold = |q: [f64; 3]| [-q[0], -q[1], q[2]];
    let map = sample(32, |q| blobs(q) + 0.8 * blobs(two_fold(q)));
    let identity = Transform::identity().rotation;
    let free = align(&map, &map, &AlignConfig::default()).unwrap();
    assert!(angle_between(&free.transform.rotation, &identity) < 3.0);
    let s = [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]];
    let near_s = Pose::new(0.0, 0.0, 170.0).matrix();
    let config = AlignConfig {
        near: Some((near_s, 30.0)),
        ..AlignConfig::default()
    };
    let mate = align(&map, &map, &config).unwrap();
    let off = angle_between(&mate.transform.rotation, &s);
    assert!(off < 3.0, "{off}° from the two-fold");
    assert!(
        mate.score < free.score && mate.score > 0.5,
        "{} {}",
        mate.score,
        free.score
    );
    for (near, what) in [
        ((near_s, 0.0), "search radius"),
        (
            ([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], 30.0),
            "known rotation",
        ),
    ] {
        let err = align(
            &map,
            &map,
            &AlignConfig {
                near: Some(near),
                ..AlignConfig::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(what), "{err}");
    }
}

/// The mode of noisy estimates of one rotation among outliers: 40 estimates within 4° of a
/// rotation and 60 spread over SO(3); the mode is within 4° of it and counts the 40.
#[test]
fn the_modal_rotation_is_the_densest_estimate() {
    use mcg_eval::align::{modal_rotation, rotation_grid};
    use mcg_physics::pose::{mat_mul, matrix_from_rotation_vector};
    let truth = Pose::new(30.0, 60.0, 90.0).matrix();
    let mut estimates: Vec<_> = (0..40)
        .map(|i| {
            let a = (2.0 + 2.0 * ((i % 5) as f64 / 4.0)).to_radians();
            let t = i as f64 * 0.7;
            let axis = [
                t.cos() * (i as f64).sin(),
                t.sin(),
                t.cos() * (i as f64).cos(),
            ];
            let norm = axis.iter().map(|v| v * v).sum::<f64>().sqrt();
            mat_mul(
                &truth,
                &matrix_from_rotation_vector(axis.map(|v| a * v / norm)),
            )
        })
        .collect();
    let grid = rotation_grid(30.0);
    estimates.extend((0..60).map(|i| grid[i * grid.len() / 60]));
    let (mode, count) = modal_rotation(&estimates, 15.0).unwrap();
    assert!(
        angle_between(&mode, &truth) < 4.0,
        "{}",
        angle_between(&mode, &truth)
    );
    assert!(count >= 40, "{count}");
    assert!(modal_rotation(&[], 15.0).is_none());
}
