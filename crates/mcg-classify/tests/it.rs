//! The classification's oracles: the back-projection against the map it came from, and the
//! E-step's matrix products against a brute-force sum of squared residuals.

use mcg_classify::em::{
    Local, Prior, Refinement, RotationGrid, expectation, maximisation, templates, to_tensor,
    to_volume, translate,
};
use mcg_classify::images::{Frequencies, ImageTerms, offset_ramps};
use mcg_classify::init::hard_sums;
use mcg_eval::fsc::{FscConfig, fsc};
use mcg_formats::particles::InMemory;
use mcg_formats::{OpticsGroup, Particle, ParticleSet};
use mcg_forward::forward::ForwardModel;
use mcg_physics::ctf::{CtfGrid, CtfParams};
use mcg_physics::fourier::Fft2;
use mcg_physics::noise::NoiseSpectrum;
use mcg_physics::pose::Pose;
use mcg_physics::rng::{Purpose, stream};
use mcg_physics::shift::translate_spectrum;
use mcg_physics::{Blob, Shift, Volume};
use ndarray::Array3;
use rand::Rng;
use rustfft::num_complex::Complex32;
use tch::{Device, Kind, Tensor};

fn blobs(n: usize, apix: f32, seed: u64) -> Volume {
    let mut rng = stream(seed, Purpose::Other(91), 0);
    let c = n as f64 / 4.0;
    let spots: Vec<Blob> = (0..6)
        .map(|_| Blob {
            centre: [
                rng.random_range(-c..c),
                rng.random_range(-c..c),
                rng.random_range(-c..c),
            ],
            amplitude: rng.random_range(0.5..1.0),
            sigma: rng.random_range(1.6..2.5),
        })
        .collect();
    Volume::gaussian_blobs(n, apix, &spots).unwrap()
}

/// A particle-like map with as much to recover at 0.9 of Nyquist as at low frequency: white
/// noise in a soft sphere of radius `N/3` (as a particle sits in its box), then cut to
/// `fraction` of Nyquist.
fn band_limited(n: usize, apix: f32, fraction: f64) -> Volume {
    tch::manual_seed(5);
    let m = n as i64;
    let opts = (Kind::Float, Device::Cpu);
    let c = (Tensor::arange(m, opts) - (m / 2) as f64).square();
    let radius = (c.view([m, 1, 1]) + c.view([1, m, 1]) + c.view([1, 1, m])).sqrt();
    let edge = ((radius - n as f64 / 3.0) / 3.0).clamp(0.0, 1.0);
    let mask = ((edge * std::f64::consts::PI).cos() + 1.0) * 0.5;
    let noise = Tensor::randn([m, m, m], opts) * mask;
    let k = Tensor::fft_fftfreq(m, 1.0, opts).square();
    let r2 = k.view([m, 1, 1]) + k.view([1, m, 1]) + k.view([1, 1, m]);
    let keep = r2.le((fraction * 0.5).powi(2)).to_kind(Kind::Float);
    let dims = [0i64, 1, 2];
    let spectrum = noise.fft_fftn(None::<&[i64]>, &dims[..], "backward") * keep;
    let v = spectrum
        .fft_ifftn(None::<&[i64]>, &dims[..], "backward")
        .real();
    to_volume(&v, f64::from(apix)).unwrap()
}

/// Fibonacci directions (in-plane angle 0): `count` rotations whose central planes cover
/// Fourier space evenly.
fn directions(count: usize) -> RotationGrid {
    let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    let mut flat = Vec::with_capacity(count * 9);
    for i in 0..count {
        let cos_tilt = 1.0 - (2 * i + 1) as f64 / count as f64;
        let tilt = cos_tilt.acos().to_degrees();
        let rot = (i as f64 * golden).to_degrees() % 360.0;
        for row in Pose::new(rot, tilt, 0.0).matrix() {
            flat.extend(row.iter().map(|&v| v as f32));
        }
    }
    RotationGrid::from_tensor(Tensor::from_slice(&flat).view([count as i64, 3, 3]))
}

/// Exact projections of a band-limited map at known poses, back-projected and divided by
/// their weights, give the map back: FSC > 0.99 at every shell to 0.9 of Nyquist.
#[test]
fn back_projection_of_exact_projections_gives_the_map_back() {
    let n = 32;
    let volume = band_limited(n, 4.0, 0.9);
    let model = ForwardModel::new(n, Device::Cpu);
    let (grid, ft, sums) = noisy_sums(Some(&volume), n, 6000, 0.0);
    let v = to_tensor(&[&volume], Device::Cpu);
    // τ² far above the signal: the plain division.
    let maps = maximisation(&model, &grid, &ft, &sums, Prior::Spectrum(&v, 1e8), 15.0);
    let back = to_volume(&maps.full.get(0), 4.0).unwrap();
    let curve = fsc(&volume, &back, &FscConfig::default()).unwrap();
    for (i, (&c, &nf)) in curve.fsc.iter().zip(&curve.nyquist_fraction()).enumerate() {
        if i >= 1 && nf <= 0.9 + 1e-9 {
            assert!(c > 0.99, "shell {i} ({nf:.2} of Nyquist): FSC {c}");
        }
    }
    // Each half alone, from every other pose, gives the map back too.
    let h1 = to_volume(&maps.halves.get(0).get(0), 4.0).unwrap();
    let c1 = fsc(&volume, &h1, &FscConfig::default()).unwrap();
    assert!(
        c1.fsc[n / 4] > 0.99,
        "half 1 at half Nyquist: {}",
        c1.fsc[n / 4]
    );
}

/// The M-step's sums of `count` projections of `volume` (else pure noise), one per Fibonacci
/// direction, each with complex Gaussian noise of `noise_level` times the projections' RMS
/// per coefficient (0: exact, with weights 1), in alternating half sets, at frequencies up to
/// 15 pixels.
fn noisy_sums(
    volume: Option<&Volume>,
    n: usize,
    count: usize,
    noise_level: f64,
) -> (RotationGrid, Tensor, mcg_classify::em::Expectation) {
    let model = ForwardModel::new(n, Device::Cpu);
    let freqs = Frequencies::new(n, 15.0);
    let f = freqs.len();
    let ft = freqs.tensor(f, Device::Cpu);
    let grid = directions(count);
    let signal = band_limited(n, 4.0, 0.9);
    let v = to_tensor(&[volume.unwrap_or(&signal)], Device::Cpu);
    let t = templates(&model, &v, &grid, &ft); // [R][F]
    let rms = t.abs().square().mean(Kind::Float).sqrt().double_value(&[]);
    tch::manual_seed(11);
    let opts = (Kind::Float, Device::Cpu);
    let shape = [count as i64, f as i64];
    let noise = Tensor::complex(&Tensor::randn(shape, opts), &Tensor::randn(shape, opts))
        * (noise_level * rms / 2f64.sqrt());
    // The likelihood's weights for that noise: λ = 1/σ² per coefficient.
    let lambda = if noise_level > 0.0 {
        1.0 / (noise_level * rms).powi(2)
    } else {
        1.0
    };
    let a = if volume.is_some() { t + noise } else { noise } * lambda;
    let terms = ImageTerms {
        a,
        q: Tensor::ones(shape, opts) * lambda,
        yy: Tensor::zeros(shape, opts),
    };
    let half: Vec<u8> = (0..count).map(|i| (i % 2) as u8).collect();
    let poses: Vec<[usize; 2]> = (0..count).map(|i| [0, i]).collect();
    let ramps = offset_ramps(&[[0.0, 0.0]], n, &freqs, Device::Cpu);
    let sums = hard_sums(
        &terms,
        &half,
        &poses,
        &vec![0; count],
        count,
        1,
        &ramps,
        f as i64,
        None,
    );
    (grid, ft, sums)
}

/// The Wiener term from the half sets recovers every shell the data holds (6,000 images, each
/// coefficient at SNR 1/9), whatever the previous map held: the classes' detail is not lost
/// when the frequency limit rises. A prior from the previous map's spectrum loses it.
#[test]
fn the_half_set_prior_recovers_shells_beyond_the_previous_limit() {
    let n = 32;
    let volume = band_limited(n, 4.0, 0.9);
    let model = ForwardModel::new(n, Device::Cpu);
    let (grid, ft, sums) = noisy_sums(Some(&volume), n, 6000, 3.0);
    let score = |prior: Prior<'_>| {
        let maps = maximisation(&model, &grid, &ft, &sums, prior, 15.0);
        let back = to_volume(&maps.full.get(0), 4.0).unwrap();
        fsc(&volume, &back, &FscConfig::default()).unwrap()
    };
    let curve = score(Prior::HalfSets(1.0));
    for (i, (&c, &nf)) in curve.fsc.iter().zip(&curve.nyquist_fraction()).enumerate() {
        if i >= 1 && nf <= 0.9 + 1e-9 {
            assert!(
                c > 0.9,
                "half-set prior, shell {i} ({nf:.2} of Nyquist): FSC {c}"
            );
        }
    }
    // The previous map's spectrum as the prior, from a map cut at 0.4 of Nyquist (as the
    // classification did until session 9): at this SNR each M-step multiplies the power of
    // the shells beyond by about τ²·weight < 1, and the crop of the padded grid's low shells
    // swamps what is left.
    let mut previous = to_tensor(&[&band_limited(n, 4.0, 0.4)], Device::Cpu);
    for _ in 0..4 {
        let prior = Prior::Spectrum(&previous, 1.0);
        previous = maximisation(&model, &grid, &ft, &sums, prior, 15.0).full;
    }
    let back = to_volume(&previous.get(0), 4.0).unwrap();
    let old = fsc(&volume, &back, &FscConfig::default()).unwrap();
    let at = (0.7 * n as f64 / 2.0).round() as usize;
    assert!(
        old.fsc[at] < 0.5,
        "spectrum prior, shell {at}: FSC {}",
        old.fsc[at]
    );
}

/// Images of pure noise give the half-set prior no signal: the map it makes holds a small
/// part of the plain quotient's power (the division with τ² far above any signal).
#[test]
fn the_half_set_prior_keeps_pure_noise_out_of_the_map() {
    let n = 32;
    let model = ForwardModel::new(n, Device::Cpu);
    let (grid, ft, sums) = noisy_sums(None, n, 6000, 1.0);
    let power = |prior: Prior<'_>| {
        let maps = maximisation(&model, &grid, &ft, &sums, prior, 15.0);
        maps.full.square().sum(Kind::Float).double_value(&[])
    };
    let reference = to_tensor(&[&band_limited(n, 4.0, 0.9)], Device::Cpu);
    let plain = power(Prior::Spectrum(&reference, 1e8));
    let regularised = power(Prior::HalfSets(1.0));
    assert!(
        regularised < 0.05 * plain,
        "power with the half-set prior {regularised}, plain quotient {plain}"
    );
}

/// The E-step's log-likelihood and class posteriors, from matrix products, equal a
/// brute-force sum over every (offset, class, rotation) of `exp(−½ Σ λ|Y − C·r·o·t|²)`, in
/// double precision, on a tiny problem with CTFs, recorded shifts and searched offsets.
#[test]
fn e_step_agrees_with_a_brute_force_sum() {
    let n = 8;
    let apix = 6.0;
    let model = ForwardModel::new(n, Device::Cpu);
    let freqs = Frequencies::new(n, 3.0);
    let f = freqs.len();
    let ft = freqs.tensor(f, Device::Cpu);
    let grid = RotationGrid::new(60.0, Device::Cpu);
    let maps = [blobs(n, apix as f32, 2), blobs(n, apix as f32, 3)];
    let v = to_tensor(&[&maps[0], &maps[1]], Device::Cpu);
    let t = templates(&model, &v, &grid, &ft);
    let offsets = [[0.0, 0.0], [1.0, 0.0], [0.0, -1.0]];
    let ramps = offset_ramps(&offsets, n, &freqs, Device::Cpu);
    let sigma = 0.5;
    let noise = NoiseSpectrum::white(n, sigma);

    let count = 5;
    let mut rng = stream(4, Purpose::Other(92), 0);
    let images = Array3::from_shape_fn((count, n, n), |_| rng.random_range(-1.0f32..1.0));
    let particles: Vec<Particle> = (0..count)
        .map(|i| Particle {
            image: None,
            optics_group: 0,
            pose: None,
            shift: Shift {
                x: i as f64 * 2.0,
                y: -(i as f64),
            },
            ctf: CtfParams {
                defocus_u: 8000.0 + 3000.0 * i as f64,
                defocus_v: 7500.0 + 3000.0 * i as f64,
                defocus_angle: 30.0 * i as f64,
                ..CtfParams::default()
            },
            class: None,
        })
        .collect();
    let set = ParticleSet {
        optics: vec![OpticsGroup::single(apix, Some(n), &CtfParams::default())],
        particles,
        extra: Vec::new(),
        base_dir: ".".into(),
    };
    let source = InMemory::new(images.clone(), apix);
    let terms = ImageTerms::new(&set, &source, &freqs, &noise, true, apix, Device::Cpu).unwrap();
    let pi = [0.3f64, 0.7];
    let log_pi: Vec<f64> = pi.iter().map(|p| p.ln()).collect();
    let half = vec![0u8, 1, 0, 1, 1];
    let exp = expectation(&terms, &half, &t, &log_pi, &ramps, 1e6, None, &|| false);

    // Brute force, independently of the terms a and q.
    let r = grid.len();
    let tv: Vec<f32> = Vec::try_from(&t.view_as_real().flatten(0, -1)).unwrap();
    let template = |k: usize, rr: usize, j: usize| {
        let o = ((k * r + rr) * f + j) * 2;
        num_complex64(tv[o], tv[o + 1])
    };
    let mut fft = Fft2::new(n);
    let mut spec = vec![Complex32::new(0.0, 0.0); fft.spectrum_len()];
    let grid_ctf = CtfGrid::new(n, apix);
    let mut ctf = vec![0.0f32; spec.len()];
    for i in 0..count {
        fft.forward(images.index_axis(ndarray::Axis(0), i), &mut spec);
        grid_ctf.evaluate(&set.particles[i].ctf, &mut ctf);
        let mut recorded = vec![Complex32::new(1.0, 0.0); spec.len()];
        let [tx, ty] = set.particles[i].shift.simulation_translation(apix);
        translate_spectrum(&mut recorded, n, tx, ty);
        let mut terms_ll = Vec::new();
        let mut class_ll = [Vec::new(), Vec::new()];
        for &[ox, oy] in &offsets {
            let mut offset = vec![Complex32::new(1.0, 0.0); spec.len()];
            translate_spectrum(&mut offset, n, ox, oy);
            for k in 0..2 {
                for rr in 0..r {
                    let mut sum = 0.0;
                    for j in 0..f {
                        let idx = freqs.index[j];
                        let lambda = f64::from(freqs.weight[j]) / ((n * n) as f64 * sigma * sigma);
                        let shift = num_complex64(recorded[idx].re, recorded[idx].im)
                            * num_complex64(offset[idx].re, offset[idx].im);
                        let model_value = shift * template(k, rr, j) * f64::from(ctf[idx]);
                        let y = num_complex64(spec[idx].re, spec[idx].im);
                        sum += lambda * (y - model_value).norm_sqr();
                    }
                    let l = pi[k].ln() - ((offsets.len() * r) as f64).ln() - 0.5 * sum;
                    terms_ll.push(l);
                    class_ll[k].push(l);
                }
            }
        }
        let total = log_sum_exp(&terms_ll);
        let got = exp.log_likelihood[i];
        assert!(
            (got - total).abs() < 0.05 + 1e-4 * total.abs(),
            "image {i}: log-likelihood {got} vs brute force {total}"
        );
        for k in 0..2 {
            let want = (log_sum_exp(&class_ll[k]) - total).exp();
            let got = exp.class_posterior[i][k];
            assert!(
                (got - want).abs() < 1e-3,
                "image {i} class {k}: {got} vs {want}"
            );
        }
    }
}

/// The local search, told to refine every coarse candidate, scores every fine rotation once:
/// it equals the exhaustive search of the fine grid (log-likelihoods, class posteriors, the
/// largest posterior and the M-step's sums). (How well a few candidates do is measured on
/// real sets: see docs/results.md.)
#[test]
fn local_search_of_every_coarse_candidate_equals_the_exhaustive_search() {
    let n = 8;
    let apix = 6.0;
    let model = ForwardModel::new(n, Device::Cpu);
    // Frequencies to 3 pixels: the coarse grid's 20° is then an arc of about a pixel at the
    // edge, as the classification's grids are.
    let freqs = Frequencies::new(n, 3.0);
    let ft = freqs.tensor(freqs.len(), Device::Cpu);
    let coarse = RotationGrid::new(20.0, Device::Cpu);
    let fine = RotationGrid::new(10.0, Device::Cpu);
    let refinement = Refinement::new(&coarse, &fine);
    let maps = [blobs(n, apix as f32, 2), blobs(n, apix as f32, 3)];
    let v = to_tensor(&[&maps[0], &maps[1]], Device::Cpu);
    let tc = templates(&model, &v, &coarse, &ft);
    let tf = templates(&model, &v, &fine, &ft);
    let offsets = [[0.0, 0.0], [1.0, 0.0]];
    let ramps = offset_ramps(&offsets, n, &freqs, Device::Cpu);
    // Images: exact templates of class 0 or 1 at fine-grid poses, whitened by λ = 4.
    let count = 12;
    let picks: Vec<(usize, usize)> = (0..count).map(|i| (i % 2, (i * 37) % fine.len())).collect();
    let rows: Vec<i64> = picks
        .iter()
        .map(|&(k, r)| (k * fine.len() + r) as i64)
        .collect();
    let y = tf.index_select(0, &Tensor::from_slice(&rows));
    let lambda = 1.0;
    let terms = ImageTerms {
        a: &y * lambda,
        q: y.abs().ones_like() * lambda,
        yy: y.abs().square() * lambda,
    };
    let half: Vec<u8> = (0..count).map(|i| (i % 2) as u8).collect();
    let log_pi = [0.4f64.ln(), 0.6f64.ln()];
    let exhaustive = expectation(&terms, &half, &tf, &log_pi, &ramps, 1e6, None, &|| false);
    let all = Local {
        fine: &tf,
        refinement: &refinement,
        top: (offsets.len() * 2 * coarse.len()) as i64,
    };
    let local = expectation(
        &terms,
        &half,
        &tc,
        &log_pi,
        &ramps,
        1e6,
        Some(&all),
        &|| false,
    );
    // Float rounding: each log-likelihood is a difference of sums as large as ½Σλ|y|².
    let rounding: Vec<f64> = Vec::try_from(
        (terms
            .yy
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
            * 0.5e-4
            + 1e-4)
            .to_kind(Kind::Double),
    )
    .unwrap();
    for i in 0..count {
        let (a, b) = (exhaustive.log_likelihood[i], local.log_likelihood[i]);
        assert!((a - b).abs() < rounding[i], "image {i}: {a} vs {b}");
        for k in 0..2 {
            let (a, b) = (
                exhaustive.class_posterior[i][k],
                local.class_posterior[i][k],
            );
            assert!((a - b).abs() < 1e-4, "image {i} class {k}: {a} vs {b}");
        }
        let (a, b) = (exhaustive.max_posterior[i], local.max_posterior[i]);
        assert!(
            (a - b).abs() < 1e-4,
            "image {i}: largest posterior {a} vs {b}"
        );
    }
    let close = |a: &Tensor, b: &Tensor| {
        let scale = a.abs().max().double_value(&[]);
        (a - b).abs().max().double_value(&[]) <= 1e-4 * scale
    };
    assert!(close(&exhaustive.num, &local.num) && close(&exhaustive.den, &local.den));
}

/// `translate` moves a map as the physics crate's transform does (`+t` voxels, `[x, y, z]`),
/// without its trilinear blur: the two agree at low frequency.
#[test]
fn translate_moves_a_map_as_the_transform_does() {
    let n = 16;
    let apix = 5.0;
    let volume = blobs(n, apix as f32, 7);
    let v = to_tensor(&[&volume], Device::Cpu);
    let d = [1.6, -2.2, 0.9];
    let moved = to_volume(&translate(&v, d).get(0), apix).unwrap();
    let by_transform = mcg_eval::align::Transform {
        shift_voxels: d,
        ..mcg_eval::align::Transform::identity()
    }
    .apply(&volume);
    let agree = fsc(&moved, &by_transform, &FscConfig::default()).unwrap();
    assert!(
        agree.fsc[n / 8] > 0.99,
        "translate vs Transform: {:?}",
        agree.fsc
    );
    // Moved back, it is the map again below Nyquist (a fractional shift of an even box's
    // Nyquist plane has no real-valued ramp: that plane alone is lost).
    let back = to_volume(&translate(&translate(&v, d), d.map(|x| -x)).get(0), apix).unwrap();
    let again = fsc(&back, &volume, &FscConfig::default()).unwrap();
    for (i, c) in again.fsc.iter().enumerate().take(n / 2).skip(1) {
        assert!(*c > 0.9999, "moved and back, shell {i}: FSC {c}");
    }
}

fn num_complex64(re: f32, im: f32) -> rustfft::num_complex::Complex64 {
    rustfft::num_complex::Complex64::new(f64::from(re), f64::from(im))
}

fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}
