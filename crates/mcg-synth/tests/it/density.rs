//! Density maps from atoms against oracles: direct Gaussians where point sampling is exact, a
//! fine grid Fourier-cropped where it is not, and the integral Σ Z.

use mcg_physics::Volume;
use mcg_synth::{AtomicModel, DensityConfig, SynthError, density_map, frame_origin};
use rustfft::FftPlanner;
use rustfft::num_complex::Complex64;

/// A small deterministic generator (xorshift64*), so the tests need no RNG crate.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `count` atoms within ±`extent` Å of the origin, with Z drawn from H, C, N, O, S.
    fn atoms(&mut self, count: usize, extent: f64) -> Vec<([f64; 3], f64)> {
        (0..count)
            .map(|_| {
                let p = [0, 1, 2].map(|_| (2.0 * self.uniform() - 1.0) * extent);
                let z = [1.0, 6.0, 7.0, 8.0, 16.0][(self.uniform() * 5.0) as usize % 5];
                (p, z)
            })
            .collect()
    }
}

/// ρ(r) = Σ Z (2πσ²)^(−3/2) exp(−|r − rⱼ|² / 2σ²) at voxel (iz, iy, ix) of an n-grid of `apix`.
fn direct_gaussians(atoms: &[([f64; 3], f64)], n: usize, apix: f64, sigma: f64) -> Vec<f64> {
    let norm = (2.0 * std::f64::consts::PI * sigma * sigma).powf(-1.5);
    // Separable: per atom, three 1D Gaussians.
    let mut out = vec![0.0; n * n * n];
    for &(p, z) in atoms {
        let g: Vec<Vec<f64>> = (0..3)
            .map(|axis| {
                (0..n)
                    .map(|i| {
                        let d = (i as f64 - (n / 2) as f64) * apix - p[axis];
                        (-d * d / (2.0 * sigma * sigma)).exp()
                    })
                    .collect()
            })
            .collect();
        for iz in 0..n {
            for iy in 0..n {
                let w = z * norm * g[2][iz] * g[1][iy];
                for ix in 0..n {
                    out[(iz * n + iy) * n + ix] += w * g[0][ix];
                }
            }
        }
    }
    out
}

fn max_abs_diff(volume: &Volume, reference: &[f64]) -> (f64, f64) {
    let peak = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = volume
        .data()
        .iter()
        .zip(reference)
        .fold(0.0f64, |m, (&a, &b)| m.max((f64::from(a) - b).abs()));
    (err, peak)
}

#[test]
fn matches_direct_gaussians_when_sigma_spans_voxels() {
    let mut rng = Rng(7);
    let atoms = rng.atoms(25, 3.0);
    // σ = 2 voxels of 1 Å: the Gaussian transform at Nyquist is e^(−2π²σ²/4) ≈ 3e−9, so point
    // sampling is exact and the band-limited map must equal it.
    let cfg = DensityConfig {
        box_size: 32,
        apix: 1.0,
        resolution: 2.0 / 0.225,
    };
    let map = density_map(&atoms, &cfg).unwrap();
    let (err, peak) = max_abs_diff(&map, &direct_gaussians(&atoms, 32, 1.0, cfg.sigma()));
    println!(
        "direct Gaussians: max |error| = {:.2e} of the peak",
        err / peak
    );
    assert!(err < 1e-5 * peak, "max |error| {err} vs peak {peak}");
}

#[test]
fn integrates_to_the_total_atomic_number() {
    let mut rng = Rng(11);
    for (n, apix, resolution, extent) in [
        (16, 5.0, 10.0, 20.0),
        (32, 2.5, 5.0, 20.0),
        (24, 1.0, 1.5, 5.0),
        (32, 5.0, 4.0, 50.0),
    ] {
        let atoms = rng.atoms(200, extent);
        let cfg = DensityConfig {
            box_size: n,
            apix,
            resolution,
        };
        let map = density_map(&atoms, &cfg).unwrap();
        let integral = map.data().iter().map(|&v| f64::from(v)).sum::<f64>() * apix.powi(3);
        let total: f64 = atoms.iter().map(|a| a.1).sum();
        assert!(
            (integral / total - 1.0).abs() < 1e-6,
            "{n}³ at {apix} Å: ∫ρ = {integral}, Σ Z = {total}"
        );
    }
}

#[test]
fn no_aliasing_when_sigma_is_below_a_voxel() {
    // 5 Å voxels, σ = 2.25 Å (the default resolution 10 Å).
    let (n, apix) = (16usize, 5.0);
    let cfg = DensityConfig::new(n, apix);
    assert_eq!(cfg.sigma(), 2.25);
    let mut rng = Rng(3);
    let atoms = rng.atoms(30, 15.0);
    let map = density_map(&atoms, &cfg).unwrap();

    // Oracle: point-sample on a 4× finer grid (1.25 Å, σ = 1.8 fine voxels: the transform at the
    // fine Nyquist is e^(−16)), then keep the target grid's frequencies. At the target Nyquist
    // index −n/2 the fine bins ±n/2 are averaged: that is the real band-limited function.
    let m = 4 * n;
    let fine = direct_gaussians(&atoms, m, apix / 4.0, cfg.sigma());
    let mut spectrum: Vec<Complex64> = fine.iter().map(|&v| Complex64::new(v, 0.0)).collect();
    fft3(&mut spectrum, m, false);
    let half = n as i64 / 2;
    let fine_bins = |j: i64| -> Vec<(usize, f64)> {
        let wrap = |j: i64| j.rem_euclid(m as i64) as usize;
        if j == -half {
            vec![(wrap(-half), 0.5), (wrap(half), 0.5)]
        } else {
            vec![(wrap(j), 1.0)]
        }
    };
    let signed = |j: usize| {
        if j < n / 2 {
            j as i64
        } else {
            j as i64 - n as i64
        }
    };
    let mut cropped = vec![Complex64::new(0.0, 0.0); n * n * n];
    for jz in 0..n {
        for jy in 0..n {
            for jx in 0..n {
                let mut sum = Complex64::new(0.0, 0.0);
                for (fz, wz) in fine_bins(signed(jz)) {
                    for (fy, wy) in fine_bins(signed(jy)) {
                        for (fx, wx) in fine_bins(signed(jx)) {
                            sum += spectrum[(fz * m + fy) * m + fx] * (wz * wy * wx);
                        }
                    }
                }
                cropped[(jz * n + jy) * n + jx] = sum / (m * m * m) as f64;
            }
        }
    }
    fft3(&mut cropped, n, true);
    let imaginary = cropped.iter().fold(0.0f64, |a, v| a.max(v.im.abs()));
    let oracle: Vec<f64> = cropped.iter().map(|v| v.re).collect();
    let (err, peak) = max_abs_diff(&map, &oracle);
    println!(
        "fine grid, cropped: max |error| = {:.2e} of the peak",
        err / peak
    );
    assert!(imaginary < 1e-9 * peak, "oracle not real: {imaginary}");
    assert!(err < 1e-5 * peak, "max |error| {err} vs peak {peak}");

    // The comparison is sensitive: point-sampling the Gaussians at 5 Å is far off.
    let sampled = direct_gaussians(&atoms, n, apix, cfg.sigma());
    let (aliased, _) = max_abs_diff(&map, &sampled);
    assert!(
        aliased > 0.05 * peak,
        "point sampling differs by only {aliased}"
    );
}

#[test]
fn rejects_bad_settings_and_atoms() {
    let atom = [([0.0, 0.0, 0.0], 6.0)];
    for cfg in [
        DensityConfig::new(15, 1.0),
        DensityConfig::new(0, 1.0),
        DensityConfig::new(16, 0.0),
        DensityConfig::new(16, f64::NAN),
        DensityConfig {
            resolution: -1.0,
            ..DensityConfig::new(16, 1.0)
        },
    ] {
        assert!(matches!(
            density_map(&atom, &cfg),
            Err(SynthError::Parameter { .. })
        ));
    }
    let bad = [([0.0, f64::INFINITY, 0.0], 6.0)];
    assert!(matches!(
        density_map(&bad, &DensityConfig::new(16, 1.0)),
        Err(SynthError::BadAtom { index: 0, .. })
    ));
    // No atoms: an empty map, not an error.
    let empty = density_map(&[], &DensityConfig::new(8, 1.0)).unwrap();
    assert!(empty.data().iter().all(|&v| v == 0.0));
}

#[test]
fn frame_origin_is_the_heavy_atom_centroid() {
    let text = "\
ATOM      1  N   ALA A   1       1.000   0.000   0.000
ATOM      2  H   ALA A   1     100.000 100.000 100.000
ATOM      3  CA  ALA A   1       3.000   6.000  -9.000
";
    let model = AtomicModel::parse_pdb(text.as_bytes(), std::path::Path::new("t.pdb")).unwrap();
    assert_eq!(frame_origin(&model).unwrap(), [2.0, 3.0, -4.5]);
    let inputs = model.density_atoms([2.0, 3.0, -4.5]).unwrap();
    assert_eq!(inputs[0], ([-1.0, -3.0, 4.5], 7.0));
    assert_eq!(inputs[1].1, 1.0);
    assert!(matches!(
        frame_origin(&AtomicModel::default()),
        Err(SynthError::NoHeavyAtoms)
    ));
}

/// In-place 3D DFT of an `n³` array `[z][y][x]`; the inverse is unnormalised.
fn fft3(data: &mut [Complex64], n: usize, inverse: bool) {
    let mut planner = FftPlanner::<f64>::new();
    let fft = if inverse {
        planner.plan_fft_inverse(n)
    } else {
        planner.plan_fft_forward(n)
    };
    let mut lane = vec![Complex64::new(0.0, 0.0); n];
    for stride in [1, n, n * n] {
        for start in 0..n * n * n {
            // Each lane starts at an index whose coordinate along this axis is 0.
            if (start / stride) % n != 0 {
                continue;
            }
            for (i, v) in lane.iter_mut().enumerate() {
                *v = data[start + i * stride];
            }
            fft.process(&mut lane);
            for (i, v) in lane.iter().enumerate() {
                data[start + i * stride] = *v;
            }
        }
    }
}
