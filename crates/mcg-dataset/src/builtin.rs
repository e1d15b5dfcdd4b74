//! The built-in test volume: the main job's embedded default on a fresh machine.
//!
//! A chiral cluster of Gaussian blobs (a small "molecule" with no symmetry, so that pose and
//! handedness errors show), band-limited so that every projector renders it faithfully. It is
//! defined in Å, so it looks the same at any box and voxel size that hold it.

use mcg_physics::Volume;
use ndarray::Array3;

/// Blob centres (Å, x y z), amplitudes and widths σ (Å) of the test volume.
const BLOBS: &[([f64; 3], f64, f64)] = &[
    ([0.0, 0.0, 0.0], 1.0, 14.0),
    ([22.0, 4.0, -6.0], 0.8, 10.0),
    ([-14.0, 20.0, 8.0], 0.7, 9.0),
    ([-6.0, -24.0, 12.0], 0.9, 8.0),
    ([10.0, 12.0, 24.0], 0.6, 7.0),
    ([30.0, -18.0, 10.0], 0.5, 6.0),
];

/// The test volume on a `box_size`³ grid of `apix` Å; blob widths are kept at least 1.5 voxels
/// so that the map stays band-limited at coarse sampling.
pub fn test_volume(box_size: usize, apix: f32) -> anyhow::Result<Volume> {
    let a = f64::from(apix);
    let c = (box_size / 2) as f64;
    // Shrink the molecule to the box when the box is small in Å (keep it inside radius N/2 − 3σ).
    let extent = BLOBS
        .iter()
        .map(|(p, _, s)| norm(p) + 3.0 * s)
        .fold(0.0, f64::max);
    let scale = ((c - 1.0) * a / extent).min(1.0);
    let data = Array3::from_shape_fn((box_size, box_size, box_size), |(z, y, x)| {
        let r = [(x as f64 - c) * a, (y as f64 - c) * a, (z as f64 - c) * a];
        BLOBS
            .iter()
            .map(|(p, amp, sigma)| {
                let sigma = (sigma * scale).max(1.5 * a);
                let d2: f64 = (0..3).map(|i| (r[i] - p[i] * scale).powi(2)).sum();
                amp * (-d2 / (2.0 * sigma * sigma)).exp()
            })
            .sum::<f64>() as f32
    });
    Ok(Volume::new(data, apix)?)
}

fn norm(p: &[f64; 3]) -> f64 {
    (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt()
}
