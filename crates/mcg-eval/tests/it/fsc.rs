//! FSC, resolution, AreaFSC and FSCCC.

use mcg_eval::fsc::{Binning, FscConfig, FscCurve, Mask, fsc, fsccc};
use mcg_physics::Volume;
use mcg_physics::fft3::Fft3;
use mcg_physics::fourier::signed_freq;
use ndarray::{Array3, Zip};
use rustfft::num_complex::Complex64;

use crate::noise;

fn config(binning: Binning) -> FscConfig {
    FscConfig {
        binning,
        mask: None,
    }
}

#[test]
fn fsc_of_a_map_with_itself_is_one_in_every_shell() {
    let map = noise(24, 1, 0.5);
    for binning in [Binning::Standard, Binning::CryoDrgn] {
        let curve = fsc(&map, &map, &config(binning)).unwrap();
        let points = match binning {
            Binning::Standard => 13,
            Binning::CryoDrgn => 12,
        };
        assert_eq!(curve.fsc.len(), points, "{binning:?}");
        for (i, c) in curve.fsc.iter().enumerate() {
            assert!((c - 1.0).abs() < 1e-12, "{binning:?} point {i}: {c}");
        }
        assert!((curve.area() - 1.0).abs() < 1e-12);
        assert!(curve.resolution(0.143).is_none());
    }
}

/// Independent white noise: in each shell the FSC is a correlation of `voxels` real degrees of
/// freedom (the coefficients of the whole Hermitian transform), with standard deviation
/// `1/√voxels`; every shell must lie within 3 of them.
#[test]
fn independent_noise_maps_have_fsc_near_zero() {
    let (a, b) = (noise(32, 2, 0.0), noise(32, 3, 0.0));
    let curve = fsc(&a, &b, &config(Binning::Standard)).unwrap();
    for i in 1..curve.fsc.len() {
        let bound = 3.0 / (curve.voxels[i] as f64).sqrt();
        assert!(
            curve.fsc[i].abs() < bound,
            "shell {i}: {} beyond ±{bound}",
            curve.fsc[i]
        );
    }
    assert!(curve.area().abs() < 0.05, "area {}", curve.area());
}

/// Half maps of a blurred signal: `a = s + n₁`, `b = s + n₂` with `s = w * g` (white noise `w`
/// of variance σ_w² blurred by the Gaussian `g` of transfer function `G(k)`) and independent white
/// noise `n₁, n₂` of variance σ_n². Per coefficient, E|S|² = N³σ_w²G², E|N|² = N³σ_n², and
/// the cross term's expectation is E|S|². So the expected FSC of a shell is the analytic
/// `Σ G² σ_w² / (Σ G² σ_w² + voxels · σ_n²)`, the sums over the shell's coefficients of the
/// known transfer function: it falls from 1 to 0 as the blur wins. The measured curve must
/// follow it within 3 standard deviations of a correlation of `voxels` degrees of freedom.
#[test]
fn blurred_signal_plus_noise_follows_the_analytic_snr_curve() {
    let n = 32;
    let sigma_blur = 1.5; // voxels
    let (sigma_w, sigma_n) = (4.0f64, 1.0f64);
    let gain = |k2: f64| (-2.0 * std::f64::consts::PI.powi(2) * sigma_blur * sigma_blur * k2).exp();
    let k2_of = |kz: usize, ky: usize, kx: usize| {
        let f = |j: usize| signed_freq(j, n) as f64 / n as f64;
        f(kz).powi(2) + f(ky).powi(2) + f(kx).powi(2)
    };
    let fft = Fft3::new(n);
    let mut spec = fft.forward(noise(n, 4, 0.0).data().view());
    Zip::indexed(&mut spec).for_each(|(kz, ky, kx), v| {
        *v *= (sigma_w * gain(k2_of(kz, ky, kx))) as f32;
    });
    let signal = fft.inverse(spec);
    let half = |seed: u64| {
        let mut data = noise(n, seed, 0.0).into_data();
        data.zip_mut_with(&signal, |v, s| *v = *v * sigma_n as f32 + s);
        Volume::new(data, 2.0).unwrap()
    };
    let curve = fsc(&half(5), &half(6), &config(Binning::Standard)).unwrap();

    // The analytic expectation, shell by shell, over the whole transform.
    let mut signal_power = vec![0.0; n / 2 + 1];
    let mut count = vec![0usize; n / 2 + 1];
    for kz in 0..n {
        for ky in 0..n {
            for kx in 0..n {
                let k2 = k2_of(kz, ky, kx);
                let shell = (k2.sqrt() * n as f64).round() as usize;
                if shell <= n / 2 {
                    signal_power[shell] += (sigma_w * gain(k2)).powi(2);
                    count[shell] += 1;
                }
            }
        }
    }
    let mut crossed = false;
    for i in 1..=n / 2 {
        assert_eq!(curve.voxels[i], count[i], "shell {i} size");
        let expected = signal_power[i] / (signal_power[i] + count[i] as f64 * sigma_n * sigma_n);
        let bound = 3.0 / (count[i] as f64).sqrt();
        assert!(
            (curve.fsc[i] - expected).abs() < bound,
            "shell {i}: FSC {} against the expected {expected} (±{bound})",
            curve.fsc[i]
        );
        crossed |= expected < 0.143;
    }
    assert!(crossed, "the test must span the curve down to 0.143");
}

/// Standard binning against a direct DFT (the full complex transform, O(N⁶) on 8³) and shells
/// by rounding the f64 radius.
#[test]
fn standard_binning_matches_a_direct_dft_on_8_cubed() {
    let n = 8;
    let (a, b) = (noise(n, 7, 0.3), noise(n, 8, -0.2));
    let mut b_data = b.into_data();
    b_data.zip_mut_with(a.data(), |v, x| *v += 0.7 * x);
    let b = Volume::new(b_data, 1.5).unwrap();
    let a = Volume::new(a.into_data(), 1.5).unwrap();

    let dft = |v: &Volume| {
        Array3::from_shape_fn((n, n, n), |(kz, ky, kx)| {
            let mut sum = Complex64::default();
            for ((z, y, x), &value) in v.data().indexed_iter() {
                let phase =
                    -2.0 * std::f64::consts::PI * (kx * x + ky * y + kz * z) as f64 / n as f64;
                sum += Complex64::from_polar(f64::from(value), phase);
            }
            sum
        })
    };
    let (fa, fb) = (dft(&a), dft(&b));
    let shells = n / 2 + 1;
    let (mut cross, mut pa, mut pb, mut count) = (
        vec![0.0; shells],
        vec![0.0; shells],
        vec![0.0; shells],
        vec![0; shells],
    );
    for ((kz, ky, kx), x) in fa.indexed_iter() {
        let f = |j: usize| signed_freq(j, n) as f64;
        let r = (f(kz).powi(2) + f(ky).powi(2) + f(kx).powi(2)).sqrt();
        let shell = r.round() as usize;
        if shell < shells {
            let y = fb[[kz, ky, kx]];
            cross[shell] += (x * y.conj()).re;
            pa[shell] += x.norm_sqr();
            pb[shell] += y.norm_sqr();
            count[shell] += 1;
        }
    }
    let curve = fsc(&a, &b, &config(Binning::Standard)).unwrap();
    assert_eq!(curve.voxels, count);
    for i in 0..shells {
        let expected = cross[i] / (pa[i] * pb[i]).sqrt();
        assert!(
            (curve.fsc[i] - expected).abs() < 1e-5,
            "shell {i}: {} against the direct DFT's {expected}",
            curve.fsc[i]
        );
        let frequency = i as f64 / (n as f64 * 1.5);
        assert!((curve.frequency_per_a[i] - frequency).abs() < 1e-12);
    }
}

/// cryoDRGN's `fsc` (commands_utils/fsc.py, `calculate_fsc`), reimplemented naively: the
/// centred transform `fftshift(fftn(fftshift(vol)))`, distances from index D/2, point 0 = 1 and
/// point i = the voxels with distance < i not in an earlier point, `Re vdot(v1, v2) /
/// √(vdot(v1, v1)·vdot(v2, v2))`, reported at pixres i/D.
fn cryodrgn_fsc(a: &Array3<f32>, b: &Array3<f32>) -> (Vec<f64>, Vec<f64>) {
    let d = a.dim().0;
    let centred_fft = |v: &Array3<f32>| {
        let h = d / 2;
        let shifted = Array3::from_shape_fn((d, d, d), |(z, y, x)| {
            Complex64::new(f64::from(v[[(z + h) % d, (y + h) % d, (x + h) % d]]), 0.0)
        });
        let mut data = shifted;
        let fft = rustfft::FftPlanner::new().plan_fft_forward(d);
        for axis in 0..3 {
            for mut lane in data.lanes_mut(ndarray::Axis(axis)) {
                let mut buf: Vec<_> = lane.iter().copied().collect();
                fft.process(&mut buf);
                lane.iter_mut().zip(buf).for_each(|(l, v)| *l = v);
            }
        }
        Array3::from_shape_fn((d, d, d), |(z, y, x)| {
            data[[(z + h) % d, (y + h) % d, (x + h) % d]]
        })
    };
    let (va, vb) = (centred_fft(a), centred_fft(b));
    let dist = |z: usize, y: usize, x: usize| {
        let c = (d / 2) as f64;
        ((x as f64 - c).powi(2) + (y as f64 - c).powi(2) + (z as f64 - c).powi(2)).sqrt()
    };
    let mut taken = Array3::from_elem((d, d, d), false);
    let mut fsc = vec![1.0];
    for i in 1..d / 2 {
        let (mut cross, mut na, mut nb) = (0.0, 0.0, 0.0);
        for ((z, y, x), t) in taken.indexed_iter_mut() {
            if !*t && dist(z, y, x) < i as f64 {
                *t = true;
                let (p, q) = (va[[z, y, x]], vb[[z, y, x]]);
                cross += (p.conj() * q).re;
                na += p.norm_sqr();
                nb += q.norm_sqr();
            }
        }
        fsc.push(cross / (na * nb).sqrt());
    }
    let pixres = (0..d / 2).map(|i| i as f64 / d as f64).collect();
    (pixres, fsc)
}

#[test]
fn cryodrgn_binning_reproduces_cryodrgn_on_hand_vol() {
    let Some(path) = mcg_testdata::shared("interop/cryodrgn/hand-vol.mrc") else {
        return;
    };
    let map = mcg_formats::mrc::read_volume(&path, None).unwrap();
    let d = map.box_size();
    let scale = {
        let data = map.data();
        let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / data.len() as f64;
        (data
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / data.len() as f64)
            .sqrt() as f32
    };
    let mut noisy = noise(d, 9, 0.0).into_data();
    noisy.zip_mut_with(map.data(), |n, v| *n = v + 2.0 * scale * *n);
    let noisy = Volume::new(noisy, map.apix()).unwrap();

    let curve = fsc(&map, &noisy, &config(Binning::CryoDrgn)).unwrap();
    let (pixres, expected) = cryodrgn_fsc(map.data(), noisy.data());
    assert_eq!(curve.fsc.len(), expected.len());
    let apix = f64::from(map.apix());
    for i in 0..expected.len() {
        assert!(
            (curve.fsc[i] - expected[i]).abs() < 1e-5,
            "point {i}: {} against cryoDRGN's {}",
            curve.fsc[i],
            expected[i]
        );
        assert!((curve.frequency_per_a[i] * apix - pixres[i]).abs() < 1e-12);
    }
    // The noise must make the comparison span the curve, not just its top.
    assert!(expected.iter().any(|&c| c < 0.5), "{expected:?}");
}

#[test]
fn resolution_interpolates_the_first_crossing_and_area_is_the_mean() {
    let curve = FscCurve {
        binning: Binning::Standard,
        box_size: 8,
        apix: 2.0,
        frequency_per_a: (0..5).map(|i| i as f64 / 16.0).collect(),
        fsc: vec![1.0, 0.9, 0.6, 0.4, 0.1],
        voxels: vec![1, 18, 62, 98, 210],
    };
    let r = curve.resolution(0.5).unwrap();
    assert!((r.frequency_per_a - 2.5 / 16.0).abs() < 1e-12);
    assert!((r.angstrom - 6.4).abs() < 1e-12);
    assert!((r.nyquist_fraction - 0.625).abs() < 1e-12);
    let r = curve.resolution(0.143).unwrap();
    let expected = (3.0 + (0.4 - 0.143) / 0.3) / 16.0;
    assert!((r.frequency_per_a - expected).abs() < 1e-12);
    assert!(curve.resolution(0.05).is_none());
    assert!((curve.area() - 0.5).abs() < 1e-12);
    assert_eq!(curve.nyquist_fraction(), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
}

/// The standard-binning FSC of `a` and `b` under `mask`.
fn masked(a: &Volume, b: &Volume, mask: Mask) -> Result<FscCurve, mcg_eval::EvalError> {
    fsc(
        a,
        b,
        &FscConfig {
            binning: Binning::Standard,
            mask: Some(mask),
        },
    )
}

/// A spherical mask, the same mask given as a map, and maps multiplied by it beforehand give
/// the same curve; the mask changes it.
#[test]
fn masks_are_applied_to_both_maps_before_the_transform() {
    let n = 16;
    let (a, b) = (noise(n, 10, 0.1), noise(n, 11, 0.0));
    let mut b_data = b.into_data();
    b_data.zip_mut_with(a.data(), |v, x| *v = 0.5 * *v + x);
    let b = Volume::new(b_data, 2.0).unwrap();
    let radius_a = 11.0; // 5.5 voxels of 2 Å
    let sphere = Array3::from_shape_fn((n, n, n), |(z, y, x)| {
        let d2 = [x, y, z]
            .iter()
            .map(|&i| (i as f64 - 8.0).powi(2))
            .sum::<f64>();
        if d2 <= 5.5f64.powi(2) { 1.0f32 } else { 0.0 }
    });
    let premasked = |v: &Volume| Volume::new(v.data() * &sphere, 2.0).unwrap();
    let plain = fsc(&premasked(&a), &premasked(&b), &FscConfig::default()).unwrap();
    let with = |mask: Mask| masked(&a, &b, mask).unwrap();
    assert_eq!(with(Mask::Sphere { radius_a }), plain);
    assert_eq!(with(Mask::Map(sphere.clone())), plain);
    let unmasked = fsc(&a, &b, &FscConfig::default()).unwrap();
    assert!(
        unmasked
            .fsc
            .iter()
            .zip(&plain.fsc)
            .any(|(u, p)| (u - p).abs() > 0.01)
    );

    let err = fsc(
        &a,
        &b,
        &FscConfig {
            binning: Binning::Standard,
            mask: Some(Mask::Map(Array3::zeros((8, 8, 8)))),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mask") && err.contains("16"), "{err}");
}

/// A mask must keep `8N` voxels (16 per shell out to Nyquist): exactly that many pass, one
/// fewer is refused with both counts; a one-voxel sphere (whose FSC would be 1 in every shell)
/// and a soft mask of one voxel over a faint floor are refused; FSCCC applies the same floor.
#[test]
fn masks_keeping_too_few_voxels_are_refused() {
    let n = 16;
    let needed = 8 * n;
    assert_eq!(mcg_eval::fsc::min_mask_voxels(n), needed);
    let (a, b) = (noise(n, 20, 0.2), noise(n, 21, 0.2));
    let with = |mask: Mask| masked(&a, &b, mask);
    let first = |count: usize, value: f32| {
        let mut m = Array3::<f32>::zeros((n, n, n));
        for v in m.iter_mut().take(count) {
            *v = value;
        }
        m
    };
    // Exactly the floor passes, whatever the mask's scale (the FSC does not see it).
    let at_floor = with(Mask::Map(first(needed, 1.0))).unwrap();
    assert_eq!(
        with(Mask::Map(first(needed, 0.01))).unwrap().fsc.len(),
        at_floor.fsc.len()
    );
    let refused = |mask: Mask, kept: f64| {
        let err = with(mask).unwrap_err();
        let text = err.to_string();
        match err {
            mcg_eval::EvalError::MaskTooSmall {
                kept: k,
                needed: nd,
                box_size,
                shells,
            } => {
                assert!((k - kept).abs() < 0.01, "kept {k}, expected {kept}");
                assert_eq!((nd, box_size, shells), (needed, n, n / 2));
            }
            other => panic!("expected MaskTooSmall, got {other:?}"),
        }
        assert!(
            text.contains(&format!("keeps {} voxel", kept.round())) && text.contains("128"),
            "{text}"
        );
    };
    refused(Mask::Map(first(needed - 1, 1.0)), (needed - 1) as f64);
    refused(Mask::Sphere { radius_a: 0.001 }, 1.0);
    refused(Mask::Map(Array3::zeros((n, n, n))), 0.0);
    // One voxel at 1 over a floor of 10⁻⁴: every voxel is non-zero, yet it keeps about 2.
    let mut faint = Array3::<f32>::from_elem((n, n, n), 1e-4);
    faint[[8, 8, 8]] = 1.0;
    let kept = mcg_eval::fsc::effective_voxels(&faint);
    assert!((kept - 1.99).abs() < 0.01, "{kept}");
    refused(Mask::Map(faint), kept);
    // A ball of radius 3 voxels (123 voxels) is under the floor at N = 16, radius 3.5 (179)
    // above it.
    assert!(
        with(Mask::Sphere {
            radius_a: 3.0 * 2.0
        })
        .is_err()
    );
    assert!(
        with(Mask::Sphere {
            radius_a: 3.5 * 2.0
        })
        .is_ok()
    );
    let err = fsccc(
        &[a.clone(), b.clone()],
        &FscConfig {
            binning: Binning::CryoDrgn,
            mask: Some(Mask::Sphere { radius_a: 0.001 }),
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, mcg_eval::EvalError::MaskTooSmall { .. }),
        "{err}"
    );
}

#[test]
fn maps_of_different_boxes_or_voxel_sizes_are_refused() {
    let a = noise(16, 1, 0.0);
    let err = fsc(&a, &noise(8, 1, 0.0), &FscConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("16³") && err.contains("8³"), "{err}");
    let other = Volume::new(a.data().clone(), 3.0).unwrap();
    let err = fsc(&a, &other, &FscConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("voxel size"), "{err}");
}

/// FSCCC: symmetric, 1 on the diagonal, each entry the AreaFSC of its pair, and a series that
/// drifts away from map 0 gives entries that fall along the first row.
#[test]
fn fsccc_is_symmetric_with_ones_on_the_diagonal() {
    let n = 16;
    let base = noise(n, 20, 0.0);
    let maps: Vec<Volume> = (0..5)
        .map(|m| {
            let mut data = noise(n, 100 + m, 0.0).into_data();
            let w = m as f32 / 4.0;
            data.zip_mut_with(base.data(), |v, b| *v = w * *v + (1.0 - w) * b);
            Volume::new(data, 2.0).unwrap()
        })
        .collect();
    let matrix = fsccc(&maps, &FscConfig::default()).unwrap();
    assert_eq!(matrix.dim(), (5, 5));
    for m in 0..5 {
        assert!((matrix[[m, m]] - 1.0).abs() < 1e-12);
        for k in 0..5 {
            assert_eq!(matrix[[m, k]], matrix[[k, m]]);
            let area = fsc(&maps[m], &maps[k], &FscConfig::default())
                .unwrap()
                .area();
            assert!((matrix[[m, k]] - area).abs() < 1e-12, "({m}, {k})");
        }
    }
    for k in 1..5 {
        assert!(
            matrix[[0, k]] < matrix[[0, k - 1]],
            "row 0: {:?}",
            matrix.row(0)
        );
    }
}
